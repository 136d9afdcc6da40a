"""Deep Match to Rank."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models.registry import register
from ctrlab.nn.embedding import FieldEmbedding, SequenceInputs
from ctrlab.nn.match import ItemToItem, UserToItem, u2i_auxiliary_loss
from ctrlab.nn.sequence import deep_network, masked_pool, sequence_mask, zero_padding


@register("dmr")
class DMR(nn.Module):
    """User-to-Item and Item-to-Item relevance of the target to the behaviours, then an MLP.

    Paper: Lyu et al. (2020), "Deep Match to Rank Model for Personalized Click-Through Rate Prediction", AAAI.

    Dense features: raw values concatenated to the MLP input.

    Shapes: dense float32 [B, n_dense], sparse int64 [B, sparse_width] -> logits float32 [B].
    The list fields of kind "sequence" that share a single-valued field's table are the
    behaviours; those of equal length form one stream whose step vector is the concatenation
    of their embeddings ([B, L, S*D], like PaddleRec's cate_his + brand_his; each zeroed at its
    own padding, the stream's length their longest), its target the concatenation of their
    targets' embeddings ([B, S*D]). Per stream the User-to-Item network (nn.match.UserToItem)
    gives the user vector u and the relevance <u, v'> to the target's output embedding v' (a
    second table), the Item-to-Item network (nn.match.ItemToItem) the attention-weighted sum
    of the behaviours and the relevance (sum of raw scores). The MLP takes the other fields'
    embeddings (list fields pooled, targets included), per stream the behaviours' sum, target *
    that sum, both relevances and the weighted sum, and the dense values. A spec without such a
    sequence raises ValueError. auxiliary_loss(dense, sparse) gives the User-to-Item network's
    next-behaviour loss; training adds it, as click loss + train.auxiliary_loss_weight * it.

    Hyperparameters:
        activation: MLP activation: prelu (PaddleRec's) or dice, relu, tanh, sigmoid, gelu, leaky_relu, identity
        position_dim: size of the position embeddings (by recency) of both networks
        attention_units: hidden widths of both networks' attention MLPs
        attention_activation: activation of the attention MLPs: sigmoid (PaddleRec's) or a DNN activation name
        auxiliary_negatives: sampled negatives per step of the auxiliary loss (other steps' next behaviours)
    """

    needs_sequence = True

    def __init__(
        self,
        spec: FeatureSpec,
        *,
        embedding_dim: int = 10,
        hidden_units: Sequence[int] = (512, 256, 128),
        activation: str = "prelu",
        position_dim: int = 8,
        attention_units: Sequence[int] = (80, 40),
        attention_activation: str = "sigmoid",
        auxiliary_negatives: int = 20,
        dropout: float = 0.0,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        self.n_dense, self.negatives = spec.n_dense, auxiliary_negatives
        self.inputs = SequenceInputs(spec, embedding_dim, model="dmr")
        lengths = [length for _, length, _ in self.inputs.sequences]
        self.streams = [[i for i, n in enumerate(lengths) if n == length] for length in dict.fromkeys(lengths)]
        # output embeddings v': per sequence a table of its target's ids, read by target + history columns
        columns = [c for start, n, target in self.inputs.sequences for c in [target, *range(start, start + n)]]
        self.register_buffer("output_columns", torch.tensor(columns), persistent=False)
        self.output = FieldEmbedding([spec.vocab_sizes[t] for _, _, t in self.inputs.sequences], embedding_dim,
                                     validate_ids=False,  # (the same columns as self.inputs, checked there)
                                     columns=[i for i, (_, n, _) in enumerate(self.inputs.sequences)
                                              for _ in range(n + 1)])
        options = dict(position_dim=position_dim, attention_units=attention_units,
                       attention_activation=attention_activation)
        widths = [len(stream) * embedding_dim for stream in self.streams]
        steps = [lengths[stream[0]] for stream in self.streams]
        self.user_to_item = nn.ModuleList(UserToItem(w, n, **options) for w, n in zip(widths, steps))
        self.item_to_item = nn.ModuleList(ItemToItem(w, n, **options) for w, n in zip(widths, steps))
        width = self.inputs.num_others * embedding_dim + sum(3 * w + 2 for w in widths) + spec.n_dense
        self.mlp = deep_network(width, hidden_units, activation=activation, dropout=dropout, batch_norm=batch_norm)

    def _streams(self, dense: torch.Tensor, sparse: torch.Tensor):
        """(others [B, F, D], per stream: seq [B, L, E], lengths [B], target [B, E], and the
        output embeddings v' of seq [B, L, E] and of target [B, E])."""
        others, sequences = self.inputs(dense, sparse)
        output = self.output(sparse.index_select(1, self.output_columns))  # per sequence: target, history
        outputs, start = [], 0
        for seq, _, _ in sequences:
            outputs.append((output[:, start + 1:start + 1 + seq.shape[1]], output[:, start]))
            start += 1 + seq.shape[1]
        streams = []
        for stream in self.streams:
            parts = [(*sequences[i], *outputs[i], sequence_mask(sequences[i][1], sequences[i][0].shape[1]))
                     for i in stream]  # (seq, lengths, target, seq's v', target's v', mask)
            streams.append((
                torch.cat([zero_padding(seq, mask) for seq, *_, mask in parts], dim=-1),
                torch.stack([lengths for _, lengths, *_ in parts]).amax(dim=0),
                torch.cat([part[2] for part in parts], dim=-1),
                torch.cat([zero_padding(part[3], part[5]) for part in parts], dim=-1),
                torch.cat([part[4] for part in parts], dim=-1),
            ))
        return others, streams

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        others, streams = self._streams(dense, sparse)
        parts = [others.flatten(1)]
        for u2i, i2i, (seq, lengths, target, _, target_output) in zip(self.user_to_item, self.item_to_item, streams):
            _, user = u2i(seq, lengths)
            weighted, relevance = i2i(seq, lengths, target)
            total = masked_pool(seq, lengths, "sum")
            parts += [total, target * total, (user * target_output).sum(-1, keepdim=True), relevance[:, None], weighted]
        if self.n_dense:
            parts.append(dense[:, :self.n_dense])
        return self.mlp(torch.cat(parts, dim=1)).squeeze(-1)

    def auxiliary_loss(
        self, dense: torch.Tensor, sparse: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The User-to-Item network's auxiliary match loss (summed over the streams; a scalar,
        training only): each step's user state ``u_t`` must pick the next behaviour's output
        embedding among ``auxiliary_negatives`` in-batch negatives (sampled softmax, see
        :func:`ctrlab.nn.match.u2i_auxiliary_loss`; ``generator`` draws them). Training adds
        it to the click loss, weighted by ``train.auxiliary_loss_weight`` (PaddleRec: 0.1).
        """
        _, streams = self._streams(dense, sparse)
        total = torch.zeros((), dtype=dense.dtype, device=dense.device)
        for u2i, (seq, lengths, _, items, _) in zip(self.user_to_item, streams):
            states, _ = u2i(seq, lengths)
            total = total + u2i_auxiliary_loss(states, items, lengths, num_negatives=self.negatives,
                                               generator=generator)
        return total
