"""FiBiNET blocks: squeeze-excitation over fields and bilinear interaction."""

from __future__ import annotations

import torch
from torch import nn

from ctrlab.nn.pairs import num_pairs, projected_pairs

BILINEAR_TYPES = ("field_all", "field_each", "field_interaction")


class SENet(nn.Module):
    """Squeeze-and-excitation field re-weighting.

    Huang et al. (2019), "FiBiNET: Combining Feature Importance and Bilinear feature
    Interaction for Click-Through Rate Prediction", RecSys. ``z = mean_k E``,
    ``a = ReLU(W2 ReLU(W1 z))`` with ``W1: F -> max(1, F // reduction_ratio)``;
    returns ``E * a``.

    Shapes:
        embeddings: float32 ``[B, F, k]`` -> ``[B, F, k]``
    """

    def __init__(self, num_fields: int, reduction_ratio: float = 3) -> None:
        super().__init__()
        reduced = max(1, int(num_fields // reduction_ratio))
        self.excitation = nn.Sequential(
            nn.Linear(num_fields, reduced, bias=False),
            nn.ReLU(),
            nn.Linear(reduced, num_fields, bias=False),
            nn.ReLU(),
        )

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        weights = self.excitation(embeddings.mean(dim=-1))  # [B, F]
        return embeddings * weights.unsqueeze(-1)


class BilinearInteraction(nn.Module):
    """Bilinear pair vectors ``p_ij = (v_i W) * v_j`` for every pair ``i < j``.

    FiBiNET's three variants: ``field_all`` (one shared W), ``field_each`` (W_i per field
    i), ``field_interaction`` (W_ij per pair).

    Shapes:
        embeddings: float32 ``[B, F, k]`` -> ``[B, F*(F-1)/2, k]``
    """

    def __init__(self, num_fields: int, embedding_dim: int, bilinear_type: str = "field_interaction") -> None:
        super().__init__()
        if bilinear_type not in BILINEAR_TYPES:
            raise ValueError(f"bilinear_type must be one of {BILINEAR_TYPES}, got {bilinear_type!r}")
        self.bilinear_type = bilinear_type
        self.num_fields = num_fields
        count = {"field_all": 1, "field_each": num_fields, "field_interaction": num_pairs(num_fields)}[bilinear_type]
        self.weight = nn.Parameter(torch.empty(count, embedding_dim, embedding_dim))
        with torch.no_grad():
            for matrix in self.weight:
                nn.init.xavier_uniform_(matrix)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.bilinear_type == "field_interaction":
            pairs = [left * right for left, right in projected_pairs(embeddings, self.weight)]
        else:
            if self.bilinear_type == "field_all":
                projected = embeddings @ self.weight[0]  # v_i W for every field, [B, F, k]
            else:  # field_each: v_i W_i, one [B, k] x [k, k] per field
                projected = torch.bmm(embeddings.transpose(0, 1), self.weight).transpose(0, 1)
            # Grouped by the left field i (pair order of pair_indices), slices only.
            pairs = [projected[:, i : i + 1] * embeddings[:, i + 1 :] for i in range(self.num_fields - 1)]
        return torch.cat(pairs, dim=1)
