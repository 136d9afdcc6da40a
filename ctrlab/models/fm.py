"""Factorization machine."""

from __future__ import annotations

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import FeatureEmbedding, FirstOrder, FMInteraction


@register("fm")
class FM(nn.Module):
    """Factorization machine: linear term plus factorized pairwise interactions.

    Paper: Rendle (2010), "Factorization Machines", ICDM.

    Dense features: as in the FM model for real-valued x_i, each numeric column is a field
    with latent vector value * v_i (and a linear weight); it interacts with all fields.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        embedding_dim: latent size k (default 10, the BARS Criteo setting)
    """

    def __init__(self, spec: FeatureSpec, *, embedding_dim: int = 10) -> None:
        super().__init__()
        self.linear = FirstOrder(spec)
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=True)
        self.fm = FMInteraction()

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.linear(dense, sparse) + self.fm(self.embedding(dense, sparse))
