"""Gating blocks of GateNet: the feature embedding gate and gated hidden layers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.nn.mlp import hidden_layer, make_activation

EMBEDDING_GATE_TYPES = ("vector", "bit")
HIDDEN_GATE_ACTIVATIONS = ("tanh", "sigmoid")


class EmbeddingGate(nn.Module):
    """Field-private feature embedding gate ``e_i' = sigmoid(W_i e_i) * e_i``.

    Huang et al. (2020), "GateNet: Gating-Enhanced Deep Network for Click-Through Rate
    Prediction" (arXiv:2007.03519). ``gate_type="vector"``: ``W_i in R^{1 x k}`` gives one
    scalar gate per field (vector-wise); ``"bit"``: ``W_i in R^{k x k}`` gives one gate per
    embedding element (bit-wise).

    Shapes:
        embeddings: float32 ``[B, F, k]`` -> ``[B, F, k]``
    """

    def __init__(self, num_fields: int, embedding_dim: int, gate_type: str = "vector") -> None:
        super().__init__()
        if gate_type not in EMBEDDING_GATE_TYPES:
            raise ValueError(f"embedding gate_type must be one of {EMBEDDING_GATE_TYPES}, got {gate_type!r}")
        self.gate_type = gate_type
        shape = (num_fields, embedding_dim) if gate_type == "vector" else (num_fields, embedding_dim, embedding_dim)
        self.weight = nn.Parameter(torch.empty(shape))
        nn.init.normal_(self.weight, std=embedding_dim**-0.5)

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        if self.gate_type == "vector":
            logits = (embeddings * self.weight).sum(dim=-1, keepdim=True)  # [B, F, 1]
        else:
            logits = torch.matmul(embeddings.unsqueeze(2), self.weight.transpose(1, 2)).squeeze(2)  # [B, F, k]
        return embeddings * torch.sigmoid(logits)


class GatedMLP(nn.Module):
    """MLP whose hidden layers are gated: ``a = act(BN(W x + b))``, ``a' = a * gate(a U)``.

    GateNet's hidden gate (one bias-free ``U in R^{n x n}`` per hidden layer), applied after
    the activation as in PaddleRec's GateDNN; ``gate_activation`` is ``tanh`` (PaddleRec)
    or ``sigmoid``.

    Shapes:
        x: float32 ``[B, input_dim]`` -> ``[B, hidden_units[-1]]``
    """

    def __init__(
        self,
        input_dim: int,
        hidden_units: Sequence[int],
        *,
        activation: str = "relu",
        dropout: float = 0.0,
        batch_norm: bool = False,
        use_hidden_gate: bool = True,
        gate_activation: str = "tanh",
    ) -> None:
        super().__init__()
        if gate_activation not in HIDDEN_GATE_ACTIVATIONS:
            raise ValueError(
                f"hidden gate activation must be one of {HIDDEN_GATE_ACTIVATIONS}, got {gate_activation!r}"
            )
        if not hidden_units:
            raise ValueError("GatedMLP needs at least one hidden layer")
        self.layers = nn.ModuleList()
        self.gates = nn.ParameterList() if use_hidden_gate else None
        self.gate_activation = make_activation(gate_activation)
        width = input_dim
        for units in hidden_units:
            self.layers.append(nn.Sequential(*hidden_layer(width, units, activation, batch_norm)))
            if self.gates is not None:
                self.gates.append(nn.Parameter(torch.randn(units, units) * units**-0.5))
            width = units
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.out_features = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x)
            if self.gates is not None:
                x = x * self.gate_activation(x @ self.gates[index])
            x = self.dropout(x)
        return x
