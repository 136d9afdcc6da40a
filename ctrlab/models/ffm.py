"""Field-aware factorization machine."""

from __future__ import annotations

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import FeatureEmbedding, FFMInteraction, FirstOrder


@register("ffm")
class FFM(nn.Module):
    """Field-aware FM: every feature keeps one latent vector per field it meets.

    Paper: Juan, Zhuang, Chin and Lin (2016), "Field-aware Factorization Machines for CTR
    Prediction", RecSys.

    Dense features: each numeric column is a field, value * v_{i,f} (one vector per
    field), plus a linear weight.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        embedding_dim: latent size k per (feature, field) pair (default 4, as in the paper
            and libffm); the table holds sum(vocab_sizes) * n_fields * k floats
    """

    def __init__(self, spec: FeatureSpec, *, embedding_dim: int = 4) -> None:
        super().__init__()
        num_fields = spec.n_sparse + len(spec.lists) + spec.n_dense  # (a list field is one more field)
        self.embedding_dim = embedding_dim
        self.linear = FirstOrder(spec)
        # One vector per (feature, other field): embed to F*k and view as [F, k].
        self.embedding = FeatureEmbedding(spec, num_fields * embedding_dim, embed_dense=True)
        self.ffm = FFMInteraction(num_fields)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        field_aware = self.embedding(dense, sparse).unflatten(-1, (-1, self.embedding_dim))  # [B, F, F, k]
        return self.linear(dense, sparse) + self.ffm(field_aware)
