"""Plain deep neural network over embeddings."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import MLP, FeatureEmbedding, deep_input


@register("dnn")
class DNN(nn.Module):
    """MLP over concatenated field embeddings and dense values (the deep half of Wide&Deep).

    Paper: no single source; the embedding + MLP baseline of Covington, Adams and Sargin
    (2016), "Deep Neural Networks for YouTube Recommendations", RecSys, and of the BARS
    benchmark, Zhu et al. (2022), "BARS: Towards Open Benchmarking for Recommender
    Systems", SIGIR.

    Dense features: raw values concatenated to the flattened sparse embeddings.

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
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=False)
        self.mlp = MLP(
            self.embedding.output_dim + spec.n_dense,
            hidden_units,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            output_dim=1,
        )

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        x = deep_input(self.embedding(dense, sparse), dense, self.n_dense)
        return self.mlp(x).squeeze(-1)
