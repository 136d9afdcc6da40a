"""DMR's blocks: matching a behaviour sequence to the target item (User-to-Item, Item-to-Item).

Lyu et al. (2020), "Deep Match to Rank Model for Personalized Click-Through Rate Prediction",
AAAI. Inputs follow :mod:`ctrlab.nn.sequence`: ``seq: float32[B, L, E]`` with ``lengths:
int64[B]``, the valid positions first (oldest to newest), then padding that may hold any
values (it is zeroed before use, so it never changes an output, nor a gradient).

Both networks add a learned position embedding to each step, indexed by recency
(:func:`recency`: newest 1, oldest ``length``, padding 0), so a row's output does not depend
on how much padding follows it (``L <= max_length``). Both score a step against a query
``q`` with an MLP over ``[q, e, q - e, q * e]`` (PaddleRec's ``dm_att`` / ``tg_att`` layers,
sigmoid activations there). A length-0 row gives zeros.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from ctrlab.nn.mlp import MLP
from ctrlab.nn.sequence import MASKED_SCORE, sequence_mask, zero_padding


def recency(lengths: torch.Tensor, steps: int) -> torch.Tensor:
    """Position indices by recency: ``length - t`` at valid step t (newest 1), 0 at padding.

    Shapes: lengths: int64 ``[B]`` -> int64 ``[B, steps]``
    """
    distance = lengths[:, None] - torch.arange(steps, device=lengths.device)
    return torch.where(distance > 0, distance, torch.zeros_like(distance))


class _MatchAttention(nn.Module):
    """The shared parts: position embedding, query projection (Linear + PReLU) and scoring MLP."""

    def __init__(self, item_dim: int, query_dim: int, max_length: int, *, position_dim: int,
                 attention_units: Sequence[int], attention_activation: str) -> None:
        super().__init__()
        self.max_length = int(max_length)
        self.position = nn.Embedding(self.max_length + 1, position_dim)
        self.query = nn.Sequential(nn.Linear(query_dim + position_dim, item_dim), nn.PReLU(init=0.1))
        self.score = MLP(4 * item_dim, attention_units, activation=attention_activation, output_dim=1)

    def scores(self, seq: torch.Tensor, lengths: torch.Tensor, context: torch.Tensor | None = None):
        """(padding-free seq, mask, raw scores ``[B, L]``); ``context``: ``[B, C]`` joins each query."""
        steps = seq.shape[1]
        if steps > self.max_length:
            raise ValueError(f"sequence length {steps} exceeds max_length {self.max_length}")
        mask = sequence_mask(lengths, steps)
        seq = zero_padding(seq, mask)
        query = self.position(recency(lengths, steps))  # [B, L, P]
        if context is not None:
            query = torch.cat([context.unsqueeze(1).expand(-1, steps, -1), query], dim=-1)
        query = self.query(query)  # [B, L, E]
        scores = self.score(torch.cat([query, seq, query - seq, query * seq], dim=-1)).squeeze(-1)
        return seq, mask, scores


class UserToItem(_MatchAttention):
    """DMR's User-to-Item network: causal attention over the behaviours gives a user state per step.

    Step t's state attends over steps ``j <= t`` (softmax of the raw scores a_j, scored against
    the position query alone)::

        u_t = PReLU(W sum_{j <= t} softmax_j(a_j) e_j + b)

    The user representation ``u`` is the state at the newest valid step; DMR's relevance is
    ``<u, v'>`` with ``v'`` the target's *output* embedding, and :func:`u2i_auxiliary_loss`
    trains ``u_t`` to pick the next behaviour's output embedding.

    Shapes:
        seq: float32 ``[B, L, E]``, lengths: int64 ``[B]``
        -> (states: float32 ``[B, L, E]``, 0 at padding; user: float32 ``[B, E]``, 0 for a length-0 row)
    """

    def __init__(self, item_dim: int, max_length: int, *, position_dim: int = 8,
                 attention_units: Sequence[int] = (80, 40), attention_activation: str = "sigmoid") -> None:
        super().__init__(item_dim, 0, max_length, position_dim=position_dim,
                         attention_units=attention_units, attention_activation=attention_activation)
        self.output = nn.Sequential(nn.Linear(item_dim, item_dim), nn.PReLU(init=0.1))

    def forward(self, seq: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        seq, mask, scores = self.scores(seq, lengths)
        steps = seq.shape[1]
        causal = torch.ones(steps, steps, dtype=torch.bool, device=seq.device).tril()  # [t, j]: j <= t
        keys = causal & mask[:, None, :]  # [B, L, L]
        masked = torch.full((), MASKED_SCORE, dtype=scores.dtype, device=scores.device)
        weights = torch.softmax(torch.where(keys, scores[:, None, :].expand_as(keys), masked), dim=-1)
        states = zero_padding(self.output(torch.matmul(weights, seq)), mask)
        last = (lengths - 1).clamp(min=0)[:, None, None].expand(-1, 1, states.shape[-1])
        return states, states.gather(1, last).squeeze(1)


class ItemToItem(_MatchAttention):
    """DMR's Item-to-Item network: target attention over the behaviours, with positions.

    Each step's query is ``PReLU(W [target, p_t] + b)``; the raw scores ``a_t`` give the
    weighted sum ``sum_t softmax_t(a_t) e_t`` over the valid steps and the relevance
    ``sum_t a_t`` (PaddleRec's ``scores_no_softmax`` summed).

    Shapes:
        seq: float32 ``[B, L, E]``, lengths: int64 ``[B]``, target: float32 ``[B, E]``
        -> (weighted sum: float32 ``[B, E]``, relevance: float32 ``[B]``)
    """

    def __init__(self, item_dim: int, max_length: int, *, position_dim: int = 8,
                 attention_units: Sequence[int] = (80, 40), attention_activation: str = "sigmoid") -> None:
        super().__init__(item_dim, item_dim, max_length, position_dim=position_dim,
                         attention_units=attention_units, attention_activation=attention_activation)

    def forward(self, seq: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor):
        seq, mask, scores = self.scores(seq, lengths, target)
        zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
        masked = torch.full((), MASKED_SCORE, dtype=scores.dtype, device=scores.device)
        weights = torch.where(mask, torch.softmax(torch.where(mask, scores, masked), dim=-1), zero)
        return (weights.unsqueeze(-1) * seq).sum(dim=1), torch.where(mask, scores, zero).sum(dim=1)


def u2i_auxiliary_loss(
    states: torch.Tensor,
    items: torch.Tensor,
    lengths: torch.Tensor,
    *,
    num_negatives: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DMR's auxiliary match loss, a sampled softmax: state ``u_t`` must pick the next
    behaviour's output embedding ``v'_{t+1}`` among ``num_negatives`` others.

    Over the ``N`` valid steps ``t < length - 1`` of all rows, the positives are the
    ``v'_{t+1}``; each step's negatives are ``num_negatives`` of those N positives drawn
    uniformly with replacement (``torch.randint(N, (N, K))``, ``generator``; a draw may hit
    its own positive). Returns the mean over the N steps of
    ``-log softmax([<u_t, v'_{t+1}>, <u_t, v'_neg_1>, ...])[0]`` (0 when N is 0). PaddleRec
    predicts the last behaviour only, with a full softmax over the category vocabulary.
    Training only: the valid steps are gathered with a boolean index.

    Shapes:
        states: float32 ``[B, L, E]``, items: float32 ``[B, L, E]`` (output embeddings of the
        behaviours), lengths: int64 ``[B]`` -> float32 scalar
    """
    steps = sequence_mask(lengths - 1, states.shape[1])  # t < length - 1
    users = states[steps]  # [N, E]
    positives = items[:, 1:][steps[:, :-1]]  # v'_{t+1}: [N, E]
    count = positives.shape[0]
    if count == 0:
        return states.new_zeros(())
    draws = torch.randint(count, (count, num_negatives), generator=generator, device=positives.device)
    candidates = torch.cat([positives.unsqueeze(1), positives[draws]], dim=1)  # [N, 1 + K, E]
    logits = (candidates * users.unsqueeze(1)).sum(dim=-1)
    return functional.cross_entropy(logits, torch.zeros(count, dtype=torch.int64, device=logits.device))
