"""GateNet (GateDNN)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import EmbeddingGate, FeatureEmbedding, GatedMLP, deep_input


@register("gatenet")
class GateNet(nn.Module):
    """DNN with a feature embedding gate and gated hidden layers (PaddleRec's GateDNN).

    Paper: Huang, She, Wang and Zhang (2020), "GateNet: Gating-Enhanced Deep Network for
    Click-Through Rate Prediction", arXiv:2007.03519.

    Dense features: raw values concatenated to the gated sparse embeddings as DNN input
    (as PaddleRec's GateDNN does); the embedding gate applies to sparse fields.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, n_sparse] -> logits float32 [B].

    Hyperparameters:
        use_embedding_gate: gate each field embedding, e * sigmoid(W_i e)
        embedding_gate_type: "vector" (one scalar gate per field, W_i is 1 x k) or "bit"
            (one gate per element, W_i is k x k)
        use_hidden_gate: gate each hidden layer, a * gate(a U)
        hidden_gate_activation: "tanh" (PaddleRec GateDNN) or "sigmoid"
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
        use_embedding_gate: bool = True,
        embedding_gate_type: str = "vector",
        use_hidden_gate: bool = True,
        hidden_gate_activation: str = "tanh",
    ) -> None:
        super().__init__()
        self.n_dense = spec.n_dense
        self.embedding = FeatureEmbedding(spec, embedding_dim, embed_dense=False)
        self.embedding_gate = (
            EmbeddingGate(self.embedding.num_fields, embedding_dim, embedding_gate_type) if use_embedding_gate else None
        )
        self.deep = GatedMLP(
            self.embedding.output_dim + spec.n_dense,
            hidden_units,
            activation=activation,
            dropout=dropout,
            batch_norm=batch_norm,
            use_hidden_gate=use_hidden_gate,
            gate_activation=hidden_gate_activation,
        )
        self.output = nn.Linear(self.deep.out_features, 1)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        embeddings = self.embedding(dense, sparse)
        if self.embedding_gate is not None:
            embeddings = self.embedding_gate(embeddings)
        hidden = self.deep(deep_input(embeddings, dense, self.n_dense))
        return self.output(hidden).squeeze(-1)
