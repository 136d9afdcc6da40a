"""FinalMLP."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import MLP, FeatureEmbedding, FeatureSelection, InteractionAggregation


@register("finalmlp")
class FinalMLP(nn.Module):
    """Two MLP streams with stream-specific feature gating, fused by multi-head bilinear pooling.

    Paper: Mao, Zhu, Wang, Dai, Dong and He (2023), "FinalMLP: An Enhanced Two-Stream MLP
    Model for CTR Prediction", AAAI.

    Dense features: each numeric column is a field with embedding value * v_i (FuxiCTR /
    BARS convention) and can be named as gating context.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        mlp1_hidden_units: hidden widths of stream 1
        mlp2_hidden_units: hidden widths of stream 2
        use_feature_selection: gate each stream's input by its context
        fs_hidden_units: hidden widths of the gate MLPs
        fs1_context: field names (sparse or dense) used as stream-1 gate context; empty
            means a learned context vector
        fs2_context: same for stream 2
        fusion_heads: heads of the bilinear fusion (must divide both stream widths)
        activation: activation of both streams
        dropout: dropout of both streams
        batch_norm: BatchNorm in both streams
    """

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 10,
        mlp1_hidden_units: Sequence[int] = (400, 400, 400),
        mlp2_hidden_units: Sequence[int] = (800,),
        use_feature_selection: bool = True,
        fs_hidden_units: Sequence[int] = (800,),
        fs1_context: Sequence[str] = (),
        fs2_context: Sequence[str] = (),
        fusion_heads: int = 10,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        if not mlp1_hidden_units or not mlp2_hidden_units:
            raise ValueError("both FinalMLP streams need at least one hidden layer")
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=True)
        num_fields = self.embedding.num_fields
        if use_feature_selection:
            self.select1 = FeatureSelection(
                num_fields, embedding_dim, self._field_indices(fs1_context, "fs1_context"), fs_hidden_units
            )
            self.select2 = FeatureSelection(
                num_fields, embedding_dim, self._field_indices(fs2_context, "fs2_context"), fs_hidden_units
            )
        else:
            self.select1 = self.select2 = None
        stream = dict(activation=activation, dropout=dropout, batch_norm=batch_norm)
        self.mlp1 = MLP(self.embedding.output_dim, mlp1_hidden_units, **stream)
        self.mlp2 = MLP(self.embedding.output_dim, mlp2_hidden_units, **stream)
        self.fusion = InteractionAggregation(self.mlp1.out_features, self.mlp2.out_features, fusion_heads)

    def _field_indices(self, names: Sequence[str], option: str) -> list[int]:
        positions = {name: index for index, name in enumerate(self.embedding.field_names)}
        unknown = [name for name in names if name not in positions]
        if unknown:
            raise ValueError(f"{option}: unknown field(s) {unknown}; valid fields: {', '.join(positions)}")
        return [positions[name] for name in names]

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        embeddings = self.embedding(dense, sparse)
        if self.select1 is None:
            x1 = x2 = embeddings.flatten(1)
        else:
            x1, x2 = self.select1(embeddings), self.select2(embeddings)
        return self.fusion(self.mlp1(x1), self.mlp2(x2))
