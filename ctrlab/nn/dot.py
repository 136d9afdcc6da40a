"""Dot-product interaction (DLRM)."""

from __future__ import annotations

import torch
from torch import nn

from ctrlab.nn.pairs import num_pairs, pair_indices


class DotInteraction(nn.Module):
    """Pairwise dot products ``<v_i, v_j>`` for ``i < j`` (the strict upper triangle of V V^T).

    Naumov et al. (2019), "Deep Learning Recommendation Model for Personalization and
    Recommendation Systems" (arXiv:1906.00091).

    Shapes:
        vectors: float32 ``[B, F, k]`` -> ``[B, F*(F-1)/2]`` in :func:`pair_indices` order
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        rows, cols = pair_indices(num_fields)
        self.output_dim = num_pairs(num_fields)
        self.register_buffer("flat_index", rows * num_fields + cols, persistent=False)

    def forward(self, vectors: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(vectors, vectors.transpose(1, 2))  # [B, F, F]
        return gram.flatten(1).index_select(1, self.flat_index)
