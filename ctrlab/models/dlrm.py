"""DLRM."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import MLP, DotInteraction, FeatureEmbedding


@register("dlrm")
class DLRM(nn.Module):
    """Bottom MLP on dense values, dot interaction with the sparse embeddings, top MLP.

    Paper: Naumov et al. (2019), "Deep Learning Recommendation Model for Personalization
    and Recommendation Systems", arXiv:1906.00091.

    Dense features: a bottom MLP (ReLU after every layer, the last of width embedding_dim)
    maps them to one vector that joins the pairwise dot products and is concatenated to
    them as top-MLP input. With no dense columns there is no bottom MLP and the top MLP
    sees the sparse pairs only.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        embedding_dim: size of sparse embeddings and of the bottom MLP output (default
            16, the paper's Criteo Kaggle setting 13-512-256-64-16 / 512-256-1)
        bottom_mlp_units: bottom MLP widths; its output must be embedding_dim wide, so a
            final layer of width embedding_dim is added unless the list ends with it
            (PaddleRec's bot_layer_sizes [512, 256, 64, 16] is 13-512-256-64-16)
        top_mlp_units: top MLP hidden widths (a final logit layer is added)
        dropout: dropout after each top MLP hidden layer
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 16,
        bottom_mlp_units: Sequence[int] = (512, 256, 64),
        top_mlp_units: Sequence[int] = (512, 256),
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=False)
        bottom = tuple(bottom_mlp_units)
        if not bottom or bottom[-1] != embedding_dim:
            bottom += (embedding_dim,)
        self.bottom_inputs = spec.n_dense
        self.bottom = MLP(spec.n_dense, bottom) if spec.n_dense > 0 else None
        num_vectors = self.embedding.num_fields + (1 if self.bottom is not None else 0)
        self.interaction = DotInteraction(num_vectors)
        top_input = self.interaction.output_dim + (embedding_dim if self.bottom is not None else 0)
        self.top = MLP(top_input, top_mlp_units, dropout=dropout, output_dim=1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        embeddings = self.embedding(dense, sparse)  # [B, categorical fields, k]
        if self.bottom is None:
            top_input = self.interaction(embeddings)
        else:
            dense_vector = self.bottom(dense[:, : self.bottom_inputs])  # [B, k] (the numeric columns)
            pairs = self.interaction(torch.cat([dense_vector.unsqueeze(1), embeddings], dim=1))
            top_input = torch.cat([dense_vector, pairs], dim=1)
        return self.top(top_input).squeeze(-1)
