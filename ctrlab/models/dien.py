"""Deep Interest Evolution Network."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn import AUGRU, MLP, SequenceInputs, TargetAttention, deep_network, dien_auxiliary_loss


@register("dien")
class DIEN(nn.Module):
    """Interest extractor GRU, target attention and AUGRU interest evolution, then an MLP.

    Paper: Zhou et al. (2019), "Deep Interest Evolution Network for Click-Through Rate Prediction", AAAI.

    Dense features: raw values concatenated to the MLP input.

    Shapes: dense float32 [B, dense_width], sparse int64 [B, sparse_width] -> logits float32 [B].
    Each list field of kind "sequence" that shares a single-valued field's table ([B, L, D])
    goes through a GRU (the interest extractor, states [B, L, D]); a softmax target attention
    of those states against the target field's embedding ([B, D]) gates the interest
    evolution GRU (gate), whose final state ([B, D]) joins the other fields' embeddings (list
    fields pooled) and the dense values in the MLP. A spec without such a sequence raises
    ValueError. auxiliary_loss(dense, sparse) gives DIEN's auxiliary loss on the extractor
    states; training adds it, as click loss + train.auxiliary_loss_weight * auxiliary loss.

    Hyperparameters:
        activation: MLP activation: dice or relu, tanh, sigmoid, gelu, leaky_relu, prelu, identity
        gate: interest evolution GRU: augru (the paper's best), agru or gru (plain, attention unused)
        attention_units: hidden widths of the attention unit's MLP
        attention_activation: activation of the attention unit: dice or a DNN activation name
        auxiliary_units: hidden widths of the auxiliary loss's MLP (on concat(state, item))
    """

    needs_sequence = True

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 10,
        hidden_units: Sequence[int] = (200, 80),
        activation: str = "dice",
        gate: str = "augru",
        attention_units: Sequence[int] = (80, 40),
        attention_activation: str = "dice",
        auxiliary_units: Sequence[int] = (100, 50),
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n_dense = spec.n_dense
        self.inputs = SequenceInputs(spec, embedding_dim, model="dien")
        count = len(self.inputs.sequences)
        self.extractors = nn.ModuleList(AUGRU(embedding_dim, embedding_dim, gate="gru") for _ in range(count))
        self.attentions = nn.ModuleList(
            TargetAttention(embedding_dim, attention_units, activation=attention_activation, softmax=True)
            for _ in range(count)
        ) if gate != "gru" else None
        self.evolutions = nn.ModuleList(AUGRU(embedding_dim, embedding_dim, gate=gate) for _ in range(count))
        self.auxiliary = nn.ModuleList(
            MLP(2 * embedding_dim, auxiliary_units, activation="sigmoid", output_dim=1) for _ in range(count)
        )
        width = (self.inputs.num_others + count) * embedding_dim + spec.n_dense
        self.mlp = deep_network(width, hidden_units, activation=activation, dropout=dropout, batch_norm=batch_norm)

    def _interests(self, sequences):
        """Per sequence: (extractor states [B, L, D], final evolved interest [B, D])."""
        out = []
        for i, (seq, lengths, target) in enumerate(sequences):
            states, _ = self.extractors[i](seq, lengths)
            attention = (None if self.attentions is None
                         else self.attentions[i].attention_weights(states, lengths, target))
            _, final = self.evolutions[i](states, lengths, attention)
            out.append((states, final))
        return out

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        others, sequences = self.inputs(dense, sparse)
        parts = [others.flatten(1)] + [final for _, final in self._interests(sequences)]
        if self.n_dense:
            parts.append(dense[:, : self.n_dense])
        return self.mlp(torch.cat(parts, dim=1)).squeeze(-1)

    def auxiliary_loss(
        self, dense: torch.Tensor, sparse: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """DIEN's auxiliary loss (summed over the sequences; a scalar, training only).

        Extractor state ``h_t`` must tell the next clicked item ``e_{t+1}`` (positive) from a
        negative: the negatives are a random permutation (``torch.randperm``, ``generator``) of
        all of the batch's positives, i.e. next items of other steps and rows (a negative can
        coincide with its positive by chance; the paper samples from the item pool instead).
        See :func:`ctrlab.nn.dien_auxiliary_loss`. Training adds it to the click loss, weighted by
        ``train.auxiliary_loss_weight`` (default 1, as the paper's alpha).
        """
        _, sequences = self.inputs(dense, sparse)
        total = torch.zeros((), dtype=dense.dtype, device=dense.device)
        for extractor, mlp, (seq, lengths, _) in zip(self.extractors, self.auxiliary, sequences):
            states, _ = extractor(seq, lengths)
            next_clicked = torch.cat([seq[:, 1:], torch.zeros_like(seq[:, :1])], dim=1)
            steps = torch.arange(seq.shape[1], device=seq.device) < (lengths - 1)[:, None]
            positives = next_clicked[steps]
            order = torch.randperm(positives.shape[0], generator=generator, device=positives.device)
            next_negative = next_clicked.index_put((steps,), positives[order])
            total = total + dien_auxiliary_loss(states, next_clicked, next_negative, lengths, mlp)
        return total
