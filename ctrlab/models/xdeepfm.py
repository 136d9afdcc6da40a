"""xDeepFM."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import CIN, MLP, FeatureEmbedding, FirstOrder


@register("xdeepfm")
class XDeepFM(nn.Module):
    """Linear term + Compressed Interaction Network + MLP on one shared embedding.

    Paper: Lian, Zhou, Zhang, Chen, Xie and Sun (2018), "xDeepFM: Combining Explicit and
    Implicit Feature Interactions for Recommender Systems", KDD.

    Dense features: each numeric column is a field with embedding value * v_i, so it
    takes part in the CIN and the MLP, plus a linear weight.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        cin_layer_units: feature maps per CIN layer (default (16, 16, 16): small for CPU
            cost; the paper searched up to 200 maps per layer)
        cin_split_half: send half of each non-final layer's maps to the output, half to
            the next layer (as in the authors' code)
        hidden_units: widths of the MLP hidden layers (empty: no MLP)
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 10,
        cin_layer_units: Sequence[int] = (16, 16, 16),
        cin_split_half: bool = True,
        hidden_units: Sequence[int] = (400, 400, 400),
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.linear = FirstOrder(spec)
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=True)
        self.cin = CIN(self.embedding.num_fields, cin_layer_units, split_half=cin_split_half)
        self.cin_output = nn.Linear(self.cin.output_dim, 1)
        self.mlp = (
            MLP(
                self.embedding.output_dim,
                hidden_units,
                activation=activation,
                dropout=dropout,
                batch_norm=batch_norm,
                output_dim=1,
            )
            if hidden_units
            else None
        )

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        embeddings = self.embedding(dense, sparse)
        logit = self.linear(dense, sparse) + self.cin_output(self.cin(embeddings)).squeeze(-1)
        if self.mlp is not None:
            logit = logit + self.mlp(embeddings.flatten(1)).squeeze(-1)
        return logit
