"""Multi-head self-attention over fields (AutoInt's interacting layer)."""

from __future__ import annotations

import torch
from torch import nn


class MultiHeadSelfAttention(nn.Module):
    """AutoInt interacting layer.

    Song et al. (2019), "AutoInt: Automatic Feature Interaction Learning via
    Self-Attentive Neural Networks", CIKM. Per head h:
    ``alpha = softmax_k(<W_Q e_m, W_K e_k>)``, ``out_m^h = sum_k alpha_mk W_V e_k``; heads
    are concatenated and, with ``use_residual``, ``ReLU(out + W_Res e)``. The paper uses the
    plain inner product; ``use_scale`` divides it by ``sqrt(attention_dim)``.

    Shapes:
        x: float32 ``[B, F, input_dim]`` -> ``[B, F, attention_dim * num_heads]``
    """

    def __init__(
        self,
        input_dim: int,
        attention_dim: int,
        num_heads: int,
        *,
        use_residual: bool = True,
        use_scale: bool = False,
    ) -> None:
        super().__init__()
        self.attention_dim = attention_dim
        self.num_heads = num_heads
        self.output_dim = attention_dim * num_heads
        self.use_scale = use_scale
        self.query = nn.Linear(input_dim, self.output_dim, bias=False)
        self.key = nn.Linear(input_dim, self.output_dim, bias=False)
        self.value = nn.Linear(input_dim, self.output_dim, bias=False)
        self.residual = nn.Linear(input_dim, self.output_dim, bias=False) if use_residual else None

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # [B, F, H*d] -> [B, H, F, d]
        return x.unflatten(-1, (self.num_heads, self.attention_dim)).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        query = self._split_heads(self.query(x))
        key = self._split_heads(self.key(x))
        value = self._split_heads(self.value(x))
        scores = torch.matmul(query, key.transpose(-1, -2))  # [B, H, F, F]
        if self.use_scale:
            scores = scores / self.attention_dim**0.5
        attended = torch.matmul(torch.softmax(scores, dim=-1), value)  # [B, H, F, d]
        out = attended.transpose(1, 2).flatten(2)  # [B, F, H*d]
        if self.residual is not None:
            out = torch.relu(out + self.residual(x))
        return out
