"""FiBiNET."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import MLP, BilinearInteraction, FeatureEmbedding, FirstOrder, SENet, num_pairs


@register("fibinet")
class FiBiNET(nn.Module):
    """SENET field re-weighting and bilinear interactions feeding an MLP, plus a linear term.

    Paper: Huang, Zhang and Zhang (2019), "FiBiNET: Combining Feature Importance and
    Bilinear feature Interaction for Click-Through Rate Prediction", RecSys.

    Dense features: each numeric column is a field with embedding value * v_i (it is
    re-weighted by SENET and paired bilinearly like the sparse fields), plus a linear
    weight.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        reduction_ratio: SENET squeeze ratio r (paper: 3)
        bilinear_type: "field_all", "field_each" or "field_interaction" (one W per pair)
        hidden_units: widths of the MLP on [bilinear(E), bilinear(SENET(E))]
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 10,
        reduction_ratio: float = 3.0,
        bilinear_type: str = "field_interaction",
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.linear = FirstOrder(spec)
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=True)
        num_fields = self.embedding.num_fields
        if num_fields < 2:
            raise ValueError("FiBiNET needs at least two fields to form pairs")
        self.senet = SENet(num_fields, reduction_ratio)
        self.bilinear = BilinearInteraction(num_fields, embedding_dim, bilinear_type)
        self.senet_bilinear = BilinearInteraction(num_fields, embedding_dim, bilinear_type)
        self.mlp = MLP(
            2 * num_pairs(num_fields) * embedding_dim,
            hidden_units,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            output_dim=1,
        )

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        embeddings = self.embedding(dense, sparse)
        p = self.bilinear(embeddings)
        q = self.senet_bilinear(self.senet(embeddings))
        deep = self.mlp(torch.cat([p.flatten(1), q.flatten(1)], dim=1)).squeeze(-1)
        return self.linear(dense, sparse) + deep
