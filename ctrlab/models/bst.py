"""Behaviour Sequence Transformer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import BSTLayer, SequenceInputs, deep_network


@register("bst")
class BST(nn.Module):
    """A transformer layer over each behaviour sequence with the target appended, then an MLP.

    Paper: Chen et al. (2019), "Behavior Sequence Transformer for E-commerce Recommendation in Alibaba", DLP-KDD.

    Dense features: raw values concatenated to the MLP input.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, sparse_width] -> logits float32 [B].
    Each list field of kind "sequence" that shares a single-valued field's table ([B, L, D])
    and that field's embedding (the target, [B, D]) go through one post-norm encoder layer
    (BSTLayer, positions by distance to the target); its output ([B, (L + 1) * D] for
    sequence_output flatten) joins the other fields' embeddings (list fields pooled) and the
    dense values in the MLP. A spec without such a sequence raises ValueError.

    Hyperparameters:
        activation: MLP activation: leaky_relu (the paper's), dice, relu, tanh, sigmoid, gelu, prelu, identity
        attention_heads: heads of the transformer layer (must divide embedding_dim)
        positional: add a learned embedding of each token's distance to the target
        sequence_output: flatten (all tokens, the paper's), mean (over valid tokens) or target (the target token)
        dropout: dropout probability in the transformer layer and after each DNN hidden layer
    """

    needs_sequence = True

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 8,
        hidden_units: Sequence[int] = (1024, 512, 256),
        activation: str = "leaky_relu",
        attention_heads: int = 2,
        positional: bool = True,
        sequence_output: str = "flatten",
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n_dense = spec.n_dense
        self.inputs = SequenceInputs(spec, embedding_dim, model="bst")
        self.transformers = nn.ModuleList(
            BSTLayer(embedding_dim, length, num_heads=attention_heads, dropout=dropout, positional=positional,
                     output=sequence_output)
            for _, length, _ in self.inputs.sequences
        )
        width = self.inputs.num_others * embedding_dim + sum(t.output_dim for t in self.transformers) + spec.n_dense
        self.mlp = deep_network(width, hidden_units, activation=activation, dropout=dropout, batch_norm=batch_norm)

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        others, sequences = self.inputs(dense, sparse)
        parts = [others.flatten(1)] + [
            transformer(seq, lengths, target)
            for transformer, (seq, lengths, target) in zip(self.transformers, sequences)
        ]
        if self.n_dense:
            parts.append(dense[:, : self.n_dense])
        return self.mlp(torch.cat(parts, dim=1)).squeeze(-1)
