"""DeepFEFM."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import MLP, FeatureEmbedding, FEFMInteraction, FirstOrder, num_pairs


@register("deepfefm")
class DeepFEFM(nn.Module):
    """Field-embedded FM (symmetric field-pair matrices) plus a DNN on its pair values.

    Paper: Pande (2020), "Field-Embedded Factorization Machines for Click-through rate
    prediction", arXiv:2009.09931.

    Dense features: each numeric column is a field with embedding value * v_i (it gets
    its own field-pair matrices), plus a linear weight; the DNN takes the dense values
    themselves beside the sparse embeddings (PaddleRec's DeepFEFM layout).

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        hidden_units: widths of the DNN, whose input is the F*(F-1)/2 FEFM pair values
            (F = n_sparse + n_dense), the flattened sparse embeddings and the dense values
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
        self.linear = FirstOrder(spec)
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=True)
        self.fefm = FEFMInteraction(self.embedding.num_fields, embedding_dim)
        self.mlp = MLP(
            num_pairs(self.embedding.num_fields) + self.embedding.categorical_fields * embedding_dim + spec.n_dense,
            hidden_units,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            output_dim=1,
        )

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        embeddings = self.embedding(dense, sparse)
        pair_values = self.fefm(embeddings)  # [B, P]
        sparse_flat = embeddings[:, : self.embedding.categorical_fields].flatten(1)
        deep = self.mlp(torch.cat([pair_values, sparse_flat, dense[:, : self.n_dense]], dim=1)).squeeze(-1)
        return self.linear(dense, sparse) + pair_values.sum(dim=1) + deep
