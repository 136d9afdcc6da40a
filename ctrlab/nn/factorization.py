"""Second-order factorization interactions: FM, FFM and FEFM."""

from __future__ import annotations

import torch
from torch import nn

from ctrlab.nn.pairs import num_pairs, projected_pairs


class FMInteraction(nn.Module):
    """Factorization-machine pairwise term ``sum_{i<j} <v_i, v_j>`` in O(F k).

    Rendle (2010), "Factorization Machines", ICDM: uses
    ``sum_{i<j} <v_i, v_j> = 1/2 * sum_k [(sum_i v_ik)^2 - sum_i v_ik^2]``.

    Shapes:
        embeddings: float32 ``[B, F, k]`` (already scaled by feature values) -> ``[B]``
    """

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        square_of_sum = embeddings.sum(dim=1).pow(2)
        sum_of_squares = embeddings.pow(2).sum(dim=1)
        return 0.5 * (square_of_sum - sum_of_squares).sum(dim=1)


class FFMInteraction(nn.Module):
    """Field-aware FM pairwise term ``sum_{i<j} <v_{i, f_j}, v_{j, f_i}>``.

    Juan et al. (2016), "Field-aware Factorization Machines for CTR Prediction", RecSys.
    Each feature has one vector per *other* field; ``embeddings[b, i, j]`` is feature i's
    vector used when it meets field j.

    Shapes:
        embeddings: float32 ``[B, F, F, k]`` -> ``[B]``
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        self.num_fields = num_fields
        self.register_buffer("upper", torch.ones(num_fields, num_fields).triu(diagonal=1), persistent=False)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        # S[b, i, j] = <v_{i, f_j}, v_{j, f_i}> for all (i, j) in one product with the
        # transposed grid, then the strict upper triangle. (Per-pair slices were ~15x
        # slower to train: each slice's backward zero-fills a full [B, F, F, k] gradient.)
        pair_products = (embeddings * embeddings.transpose(1, 2)).sum(dim=-1)  # [B, F, F]
        return (pair_products * self.upper).sum(dim=(1, 2))


class FEFMInteraction(nn.Module):
    """Field-embedded FM pair values ``v_i^T W_{F(i),F(j)} v_j`` for every pair ``i < j``.

    Pande (2020), "Field-Embedded Factorization Machines for Click-through rate
    prediction" (arXiv:2009.09931). Each field pair has a symmetric ``k x k`` matrix,
    parameterised as ``M + M^T``.

    Shapes:
        embeddings: float32 ``[B, F, k]`` -> pair values ``[B, F*(F-1)/2]`` (sum them for
        the FEFM logit term; DeepFEFM also feeds them to its DNN)
    """

    def __init__(self, num_fields: int, embedding_dim: int, *, init_std: float = 0.01) -> None:
        super().__init__()
        self.num_fields = num_fields
        self.field_pair_weight = nn.Parameter(torch.empty(num_pairs(num_fields), embedding_dim, embedding_dim))
        nn.init.normal_(self.field_pair_weight, std=init_std)

    def symmetric_weights(self) -> torch.Tensor:
        """``[P, k, k]`` symmetric field-pair matrices, in :func:`pair_indices` order."""
        return self.field_pair_weight + self.field_pair_weight.transpose(1, 2)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return torch.cat(
            [(left * right).sum(dim=-1) for left, right in projected_pairs(embeddings, self.symmetric_weights())],
            dim=1,
        )

