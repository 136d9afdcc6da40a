"""AutoInt+ (AutoInt jointly trained with a DNN)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.autoint import _AttentionTower
from ctrlab.models.registry import register
from ctrlab.nn import MLP, FeatureEmbedding


@register("autoint_plus")
class AutoIntPlus(nn.Module):
    """AutoInt's attention tower plus a parallel MLP on the same embeddings; logits summed.

    Paper: Song, Shi, Xiao, Duan, Xu, Zhang and Tang (2019), "AutoInt: Automatic Feature
    Interaction Learning via Self-Attentive Neural Networks", CIKM (AutoInt+, Section 5).

    Dense features: each numeric column is a field with embedding value * v_i, used by
    the attention tower and the MLP.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        embedding_dim: field embedding size (default 16, the paper's d)
        attention_layers: number of interacting layers (paper: 3)
        attention_heads: heads per layer (paper: 2)
        attention_dim: size d' of each head (paper: 32)
        use_residual: add the W_res projection of the layer input, then ReLU
        attention_scale: divide scores by sqrt(d') (the paper uses plain inner products)
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 16,
        attention_layers: int = 3,
        attention_heads: int = 2,
        attention_dim: int = 32,
        use_residual: bool = True,
        attention_scale: bool = False,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=True)
        self.attention = _AttentionTower(
            self.embedding.num_fields,
            embedding_dim,
            attention_layers,
            attention_heads,
            attention_dim,
            use_residual,
            attention_scale,
        )
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
        return self.attention(embeddings) + self.mlp(embeddings.flatten(1)).squeeze(-1)
