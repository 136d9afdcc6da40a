"""Deep & Cross Network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import MLP, CrossNet, FeatureEmbedding, deep_input


@register("dcn")
class DCN(nn.Module):
    """Cross network and MLP in parallel on x0; their outputs are concatenated into a logit.

    Paper: Wang, Fu, Fu and Wang (2017), "Deep & Cross Network for Ad Click Predictions",
    ADKDD.

    Dense features: raw (normalised) values concatenated to the flattened sparse
    embeddings to form x0, as in the paper.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        cross_layers: number of cross layers
        hidden_units: widths of the deep hidden layers (empty: cross network only)
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 10,
        cross_layers: int = 3,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n_dense = spec.n_dense
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=False)
        input_dim = self.embedding.output_dim + spec.n_dense
        self.cross = CrossNet(input_dim, cross_layers)
        self.deep = (
            MLP(input_dim, hidden_units, activation=activation, dropout=dropout, batch_norm=batch_norm)
            if hidden_units
            else None
        )
        self.output = nn.Linear(input_dim + (self.deep.out_features if self.deep else 0), 1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x0 = deep_input(self.embedding(dense, sparse), dense, self.n_dense)
        parts = [self.cross(x0)] + ([self.deep(x0)] if self.deep is not None else [])
        return self.output(torch.cat(parts, dim=1)).squeeze(-1)
