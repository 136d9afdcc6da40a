"""Cross networks of DCN (v1) and DCN-V2."""

from __future__ import annotations

import torch
from torch import nn


def _xavier_per_matrix(tensor: torch.Tensor) -> None:
    """Xavier-uniform init of each trailing 2-D matrix of a stacked parameter."""
    with torch.no_grad():
        for matrix in tensor.view(-1, *tensor.shape[-2:]):
            nn.init.xavier_uniform_(matrix)


class CrossNet(nn.Module):
    """DCN cross network: ``x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l``.

    Wang et al. (2017), "Deep & Cross Network for Ad Click Predictions", ADKDD.

    Shapes:
        x0: float32 ``[B, D]`` -> ``[B, D]``
    """

    def __init__(self, input_dim: int, num_layers: int) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.weight = nn.Parameter(torch.empty(num_layers, input_dim))
        self.bias = nn.Parameter(torch.zeros(num_layers, input_dim))
        nn.init.normal_(self.weight, std=input_dim**-0.5)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in range(self.num_layers):
            scalar = (x * self.weight[layer]).sum(dim=1, keepdim=True)  # x_l^T w_l, [B, 1]
            x = x0 * scalar + self.bias[layer] + x
        return x


class CrossNetV2(nn.Module):
    """DCN-V2 cross network, full-rank or mixture of low-rank experts.

    Wang et al. (2021), "DCN V2: Improved Deep & Cross Network and Practical Lessons for
    Web-scale Learning to Rank Systems", WWW.

    Full rank (``low_rank=None``): ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``.

    Mixture of low-rank experts (``low_rank=r``)::

        E_i(x_l) = x_0 * (U_i tanh(C_i tanh(V_i^T x_l)) + b_l)
        x_{l+1}  = sum_i softmax_i(g_i^T x_l) E_i(x_l) + x_l

    with ``U_i, V_i in R^{D x r}``, ``C_i in R^{r x r}`` and a linear gate ``g_i`` per
    expert (the paper's "DCN-Mix"; tanh is the nonlinearity).

    Shapes:
        x0: float32 ``[B, D]`` -> ``[B, D]``
    """

    def __init__(self, input_dim: int, num_layers: int, *, low_rank: int | None = None, num_experts: int = 4) -> None:
        super().__init__()
        self.num_layers = num_layers
        self.low_rank = low_rank
        self.bias = nn.Parameter(torch.zeros(num_layers, input_dim))
        if low_rank is None:
            self.weight = nn.Parameter(torch.empty(num_layers, input_dim, input_dim))
            _xavier_per_matrix(self.weight)
        else:
            if low_rank < 1 or num_experts < 1:
                raise ValueError(f"low_rank and num_experts must be >= 1, got {low_rank}, {num_experts}")
            shape_uv = (num_layers, num_experts, input_dim, low_rank)
            self.u = nn.Parameter(torch.empty(shape_uv))
            self.v = nn.Parameter(torch.empty(shape_uv))
            self.c = nn.Parameter(torch.empty(num_layers, num_experts, low_rank, low_rank))
            self.gate = nn.Parameter(torch.empty(num_layers, input_dim, num_experts))
            for tensor in (self.u, self.v, self.c, self.gate):
                _xavier_per_matrix(tensor)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in range(self.num_layers):
            if self.low_rank is None:
                x = x0 * (x @ self.weight[layer].T + self.bias[layer]) + x
            else:
                x = self._mixture_layer(x0, x, layer)
        return x

    def _mixture_layer(self, x0: torch.Tensor, x: torch.Tensor, layer: int) -> torch.Tensor:
        # Experts in one batched matmul: [E, B, D] @ [E, D, r] -> [E, B, r].
        num_experts = self.u.shape[1]
        x_e = x.unsqueeze(0).expand(num_experts, -1, -1)
        low = torch.tanh(torch.bmm(x_e, self.v[layer]))  # V_i^T x_l
        low = torch.tanh(torch.bmm(low, self.c[layer].transpose(1, 2)))  # C_i (.)
        up = torch.bmm(low, self.u[layer].transpose(1, 2))  # U_i (.), [E, B, D]
        experts = x0.unsqueeze(0) * (up + self.bias[layer])  # [E, B, D]
        gates = torch.softmax(x @ self.gate[layer], dim=1)  # [B, E]
        mixed = (experts * gates.T.unsqueeze(-1)).sum(dim=0)  # [B, D]
        return mixed + x
