"""FinalMLP blocks: stream-specific feature selection and multi-head bilinear fusion."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.nn.embedding import EMBEDDING_INIT_STD
from ctrlab.nn.mlp import MLP


class FeatureSelection(nn.Module):
    """Context-aware feature gating ``x' = x * 2 sigmoid(MLP(context))``.

    Mao et al. (2023), "FinalMLP: An Enhanced Two-Stream MLP Model for CTR Prediction",
    AAAI. The context is the concatenated embeddings of ``context_fields`` (indices into
    the field axis) or, when empty, a learned vector of size ``k`` (the paper's
    "no context" option). The gate MLP outputs one weight per element of the flattened
    embedding.

    Shapes:
        embeddings: float32 ``[B, F, k]`` -> gated flat input ``[B, F*k]``
    """

    def __init__(
        self,
        num_fields: int,
        embedding_dim: int,
        context_fields: Sequence[int],
        hidden_units: Sequence[int],
    ) -> None:
        super().__init__()
        self.context_fields = [int(i) for i in context_fields]
        if self.context_fields:
            index = torch.tensor(self.context_fields, dtype=torch.int64)
            self.register_buffer("context_index", index, persistent=False)
            self.context_bias = None
            context_dim = len(self.context_fields) * embedding_dim
        else:
            # Random, not zero: a zero context would give the gate's first layer no gradient.
            self.context_bias = nn.Parameter(torch.empty(1, embedding_dim))
            nn.init.normal_(self.context_bias, std=EMBEDDING_INIT_STD)
            context_dim = embedding_dim
        self.gate = MLP(context_dim, hidden_units, output_dim=num_fields * embedding_dim)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        flat = embeddings.flatten(1)
        if self.context_bias is None:
            context = embeddings.index_select(1, self.context_index).flatten(1)
        else:
            # A constant context gives the same gate for every row: compute it once, [1, F*k].
            context = self.context_bias
        return flat * (2.0 * torch.sigmoid(self.gate(context)))


class InteractionAggregation(nn.Module):
    """Multi-head bilinear fusion of two streams (FinalMLP).

    ``y = b + w_x^T x + w_y^T y + sum_h x_h^T W_h y_h`` where ``x, y`` are split into
    ``num_heads`` equal chunks.

    Shapes:
        x: float32 ``[B, x_dim]``, y: ``[B, y_dim]`` -> ``[B]``
    """

    def __init__(self, x_dim: int, y_dim: int, num_heads: int = 1) -> None:
        super().__init__()
        if num_heads < 1 or x_dim % num_heads or y_dim % num_heads:
            raise ValueError(
                f"fusion heads ({num_heads}) must divide both stream output sizes ({x_dim}, {y_dim})"
            )
        self.num_heads = num_heads
        self.x_linear = nn.Linear(x_dim, 1)
        self.y_linear = nn.Linear(y_dim, 1, bias=False)
        self.bilinear = nn.Parameter(torch.empty(num_heads, x_dim // num_heads, y_dim // num_heads))
        nn.init.xavier_normal_(self.bilinear)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_heads = x.unflatten(1, (self.num_heads, -1)).transpose(0, 1)  # [H, B, x_dim/H]
        y_heads = y.unflatten(1, (self.num_heads, -1)).transpose(0, 1)  # [H, B, y_dim/H]
        bilinear = (torch.bmm(x_heads, self.bilinear) * y_heads).sum(dim=(0, 2))  # [B]
        return self.x_linear(x).squeeze(-1) + self.y_linear(y).squeeze(-1) + bilinear
