"""AutoInt."""

from __future__ import annotations

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import FeatureEmbedding, MultiHeadSelfAttention


class _AttentionTower(nn.Module):
    """Stacked interacting layers and the output projection: ``[B, F, k] -> [B]``."""

    def __init__(
        self, num_fields: int, embedding_dim: int, layers: int, heads: int, dim: int, residual: bool, scale: bool
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"attention_layers must be >= 1, got {layers}")
        blocks = []
        width = embedding_dim
        for _ in range(layers):
            blocks.append(MultiHeadSelfAttention(width, dim, heads, use_residual=residual, use_scale=scale))
            width = dim * heads
        self.blocks = nn.Sequential(*blocks)
        self.output = nn.Linear(num_fields * width, 1)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.output(self.blocks(embeddings).flatten(1)).squeeze(-1)


@register("autoint")
class AutoInt(nn.Module):
    """Stacked multi-head self-attention over field embeddings, then a linear output.

    Paper: Song, Shi, Xiao, Duan, Xu, Zhang and Tang (2019), "AutoInt: Automatic Feature
    Interaction Learning via Self-Attentive Neural Networks", CIKM.

    Dense features: each numeric column is a field with embedding value * v_i, exactly as
    in the paper, and attends with the sparse fields.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        embedding_dim: field embedding size (default 16, the paper's d)
        attention_layers: number of interacting layers (paper: 3)
        attention_heads: heads per layer (paper: 2)
        attention_dim: size d' of each head (paper: 32); a layer outputs heads * d'
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

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        return self.attention(self.embedding(dense, sparse))
