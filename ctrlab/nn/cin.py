"""Compressed Interaction Network (xDeepFM)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class CIN(nn.Module):
    """Compressed Interaction Network.

    Lian et al. (2018), "xDeepFM: Combining Explicit and Implicit Feature Interactions for
    Recommender Systems", KDD. Layer k computes, for each feature map h,
    ``X^k_h = sum_i sum_j W^k_{h,i,j} (X^{k-1}_i * X^0_j) + b^k_h`` (identity activation,
    the paper's best), i.e. a 1x1 convolution over the ``H_{k-1} * m`` outer-product maps.
    Each layer's maps are sum-pooled over the embedding axis. With ``split_half`` (as in
    the authors' code) half of a non-final layer's maps go to the output and half feed the
    next layer.

    Shapes:
        x0: float32 ``[B, m, D]`` -> ``[B, output_dim]`` (pooled maps of all layers)
    """

    def __init__(self, num_fields: int, layer_units: Sequence[int], *, split_half: bool = True) -> None:
        super().__init__()
        if not layer_units:
            raise ValueError("CIN needs at least one layer")
        self.split_half = split_half
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        self.next_sizes: list[int] = []
        self.output_dim = 0
        prev = num_fields
        for index, units in enumerate(layer_units):
            units = int(units)
            last = index == len(layer_units) - 1
            if units < 1 or (split_half and not last and units < 2):
                raise ValueError(f"CIN layer sizes must be >= 1 (>= 2 when split), got {list(layer_units)}")
            weight = nn.Parameter(torch.empty(units, prev * num_fields))
            nn.init.xavier_uniform_(weight)
            self.weights.append(weight)
            self.biases.append(nn.Parameter(torch.zeros(units, 1)))
            next_size = units // 2 if split_half and not last else units
            self.next_sizes.append(next_size)
            self.output_dim += units - next_size if split_half and not last else units
            prev = next_size

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        hidden = x0
        pooled = []
        num_layers = len(self.weights)
        for index in range(num_layers):
            # Outer product over fields, [B, H, m, D] -> [B, H*m, D]
            outer = (hidden.unsqueeze(2) * x0.unsqueeze(1)).flatten(1, 2)
            maps = torch.matmul(self.weights[index], outer) + self.biases[index]  # [B, H_k, D]
            last = index == num_layers - 1
            if self.split_half and not last:
                next_size = self.next_sizes[index]
                hidden, direct = maps[:, :next_size], maps[:, next_size:]
            else:
                hidden, direct = maps, maps
            pooled.append(direct.sum(dim=-1))
        return torch.cat(pooled, dim=1)
