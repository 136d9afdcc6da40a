"""Deep Interest Network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import SequenceInputs, TargetAttention, deep_network


@register("din")
class DIN(nn.Module):
    """Target attention over behaviour sequences, then an MLP with Dice activations.

    Paper: Zhou et al. (2018), "Deep Interest Network for Click-Through Rate Prediction", KDD.

    Dense features: raw values concatenated to the MLP input.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, sparse_width] -> logits float32 [B].
    Each list field of kind "sequence" that shares a single-valued field's table ([B, L, D])
    is pooled by DIN's local activation unit against that target field's embedding ([B, D])
    into one interest vector (raw attention scores, no softmax, as the paper); the MLP takes
    the other fields' embeddings (list fields pooled), the interest vectors and the dense
    values. A spec without such a sequence raises ValueError.

    Hyperparameters:
        activation: MLP activation: dice (the paper's) or relu, tanh, sigmoid, gelu, leaky_relu, prelu, identity
        attention_units: hidden widths of the local activation unit's MLP
        attention_activation: activation of the local activation unit: dice or a DNN activation name
        attention_softmax: normalise attention scores with a softmax over the valid positions
    """

    needs_sequence = True

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 10,
        hidden_units: Sequence[int] = (200, 80),
        activation: str = "dice",
        attention_units: Sequence[int] = (80, 40),
        attention_activation: str = "dice",
        attention_softmax: bool = False,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n_dense = spec.n_dense
        self.inputs = SequenceInputs(spec, embedding_dim, model="din")
        self.attentions = nn.ModuleList(
            TargetAttention(embedding_dim, attention_units, activation=attention_activation, softmax=attention_softmax)
            for _ in self.inputs.sequences
        )
        width = (self.inputs.num_others + len(self.attentions)) * embedding_dim + spec.n_dense
        self.mlp = deep_network(width, hidden_units, activation=activation, dropout=dropout, batch_norm=batch_norm)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        others, sequences = self.inputs(dense, sparse)
        parts = [others.flatten(1)] + [
            attention(seq, lengths, target) for attention, (seq, lengths, target) in zip(self.attentions, sequences)
        ]
        if self.n_dense:
            parts.append(dense[:, : self.n_dense])
        return self.mlp(torch.cat(parts, dim=1)).squeeze(-1)
