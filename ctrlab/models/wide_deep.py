"""Wide & Deep."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import MLP, FeatureEmbedding, FirstOrder, deep_input


@register("wide_deep")
class WideDeep(nn.Module):
    """Jointly trained wide linear model and deep MLP; their logits are summed.

    Paper: Cheng et al. (2016), "Wide & Deep Learning for Recommender Systems", DLRS.

    Dense features: a linear weight each in the wide part, and raw values concatenated
    to the sparse embeddings in the deep part (as in the paper). The wide part has the raw
    sparse ids only; the paper's hand-made cross-product columns are a feature-pipeline
    matter (add a crossed/hashed sparse column).

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 10,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n_dense = spec.n_dense
        self.wide = FirstOrder(spec)
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=False)
        self.deep = MLP(
            self.embedding.output_dim + spec.n_dense,
            hidden_units,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            output_dim=1,
        )

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        deep = self.deep(deep_input(self.embedding(dense, sparse), dense, self.n_dense)).squeeze(-1)
        return self.wide(dense, sparse) + deep
