"""DeepFM."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import MLP, FeatureEmbedding, FirstOrder, FMInteraction


@register("deepfm")
class DeepFM(nn.Module):
    """FM (linear + pairwise) and an MLP sharing one embedding; logits are summed.

    Paper: Guo, Tang, Ye, Li and He (2017), "DeepFM: A Factorization-Machine based Neural
    Network for CTR Prediction", IJCAI.

    Dense features: each numeric column is a field with embedding value * v_i (the FM
    treatment of real-valued features), used by both the FM and the MLP, plus a linear
    weight.

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
        self.linear = FirstOrder(spec)
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=True)
        self.fm = FMInteraction()
        self.mlp = MLP(
            self.embedding.output_dim,
            hidden_units,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            output_dim=1,
        )

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        embeddings = self.embedding(dense, sparse)
        deep = self.mlp(embeddings.flatten(1)).squeeze(-1)
        return self.linear(dense, sparse) + self.fm(embeddings) + deep
