"""Blocks over behaviour sequences (DIN, DIEN, BST).

Every block takes a padded, already embedded sequence ``seq: float32[B, L, D]`` with
``lengths: int64[B]`` (``0 <= length <= L``): the valid positions of row b are the first
``lengths[b]`` ones, oldest to newest; later positions are padding and may hold any values
(huge, inf or NaN). Each block replaces padding by zeros (``torch.where``, so nothing of it
leaks, not even into gradients) before computing, so outputs at valid rows and positions do
not depend on it, and a length-0 row gives the output of an empty history, never NaN.

All blocks export to ONNX (``dynamo=False``, opset 17) with a dynamic batch axis; masks are
``arange(L) < lengths[:, None]`` and there is no Python control flow on tensor values in
eval mode. ``L`` is the field's fixed maximum length; :class:`AUGRU` loops over it in Python,
so its exported graph is specific to that ``L``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional

from ctrlab.nn.mlp import MLP, make_activation

POOL_MODES = ("sum", "mean", "max")
GRU_GATES = ("gru", "agru", "augru")
BST_OUTPUTS = ("flatten", "mean", "target")

#: the score given to masked keys before a softmax: exp underflows to exactly 0, without -inf
MASKED_SCORE = -1e9


def sequence_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """``bool[B, max_length]``: True at the valid positions ``t < lengths[b]``.

    Shapes:
        lengths: int64 ``[B]`` -> bool ``[B, max_length]``
    """
    return torch.arange(max_length, device=lengths.device) < lengths[:, None]


def zero_padding(seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``seq`` with the positions where ``mask`` is False set to 0 (also drops inf/NaN there).

    Shapes:
        seq: ``[B, L, ...]``, mask: bool ``[B, L]`` -> ``[B, L, ...]``
    """
    while mask.dim() < seq.dim():
        mask = mask.unsqueeze(-1)
    return torch.where(mask, seq, torch.zeros((), dtype=seq.dtype, device=seq.device))


def masked_pool(
    seq: torch.Tensor,
    lengths: torch.Tensor,
    mode: str = "sum",
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pool the valid positions of a padded sequence.

    ``mode``: ``"sum"``; ``"mean"`` (the sum divided by ``max(length, 1)``); ``"max"`` (the
    element-wise maximum over valid positions, 0 for a length-0 row). ``weights`` (optional,
    one per position) multiply the values before pooling; their padded entries are ignored.

    Shapes:
        seq: float32 ``[B, L, D]``, lengths: int64 ``[B]``, weights: float32 ``[B, L]``
        -> float32 ``[B, D]``
    """
    if mode not in POOL_MODES:
        raise ValueError(f"unknown pooling mode {mode!r}; valid: {', '.join(POOL_MODES)}")
    mask = sequence_mask(lengths, seq.shape[1])
    values = zero_padding(seq, mask)
    if weights is not None:
        values = values * zero_padding(weights, mask).unsqueeze(-1)
    if mode == "sum":
        return values.sum(dim=1)
    if mode == "mean":
        counts = lengths.to(values.dtype).clamp(min=1.0)
        return values.sum(dim=1) / counts.unsqueeze(-1)
    lowest = torch.full((), float("-inf"), dtype=values.dtype, device=values.device)
    pooled = torch.where(mask.unsqueeze(-1), values, lowest).amax(dim=1)
    nonempty = (lengths > 0).unsqueeze(-1)
    return torch.where(nonempty, pooled, torch.zeros((), dtype=values.dtype, device=values.device))


class Dice(nn.Module):
    """DIN's data-adaptive activation.

    Zhou et al. (2018), "Deep Interest Network for Click-Through Rate Prediction", KDD:
    ``p = sigmoid((x - E[x]) / sqrt(Var[x] + eps))``, ``f(x) = p * x + (1 - p) * alpha * x``
    with ``alpha`` learned per feature (initialised to 0) and ``E``, ``Var`` batch-norm
    statistics per feature (``nn.BatchNorm1d`` without affine: batch statistics in training,
    running averages in eval).

    On ``[B, L, F]`` every position is normalised feature-wise with statistics pooled over
    batch and positions; with ``mask`` (bool ``[B, L]``) training statistics use the valid
    positions only (a batch with fewer than 2 valid positions uses the running statistics and
    does not update them). In eval mode the mask changes nothing.

    Shapes:
        x: float32 ``[B, F]`` or ``[B, L, F]`` -> same shape
    """

    def __init__(self, num_features: int, *, eps: float = 1e-8, momentum: float = 0.1) -> None:
        super().__init__()
        self.batch_norm = nn.BatchNorm1d(num_features, eps=eps, momentum=momentum, affine=False)
        self.alpha = nn.Parameter(torch.zeros(num_features))

    def _running_normalize(self, x: torch.Tensor) -> torch.Tensor:
        # What BatchNorm1d does in eval, written out: exports for any rank and channel count.
        bn = self.batch_norm
        return (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)

    def _normalize_valid(self, flat: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        valid = flat[keep]
        normed = self.batch_norm(valid) if valid.shape[0] > 1 else self._running_normalize(valid)
        return torch.zeros_like(flat).index_put((keep,), normed)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.dim() not in (2, 3):
            raise ValueError(f"Dice expects [B, F] or [B, L, F], got shape {tuple(x.shape)}")
        if mask is not None and x.dim() != 3:
            raise ValueError("Dice: mask applies to [B, L, F] inputs only")
        if not self.training or (x.dim() == 2 and x.shape[0] < 2):  # (one row has no batch statistics)
            normed = self._running_normalize(x)
        elif x.dim() == 2:
            normed = self.batch_norm(x)
        else:
            flat = x.reshape(-1, x.shape[-1])
            normed = self.batch_norm(flat) if mask is None else self._normalize_valid(flat, mask.reshape(-1))
            normed = normed.reshape(x.shape)
        p = torch.sigmoid(normed)
        return p * x + (1 - p) * self.alpha * x


class TargetAttention(nn.Module):
    """DIN's local activation unit: target-aware weighted pooling of a behaviour sequence.

    Zhou et al. (2018), "Deep Interest Network for Click-Through Rate Prediction", KDD. For
    each position ``s_t``: ``a_t = MLP(concat(t, s_t, t - s_t, t * s_t))`` (``hidden_units``
    with ``activation``, then a linear scalar). DIN does not normalise: the output is
    ``sum_{t < length} a_t s_t`` with raw scores. ``softmax=True`` instead normalises the
    scores with a softmax over the valid positions (a length-0 row gives zeros).
    ``activation`` is ``"dice"`` or any name :func:`make_activation` knows.

    Computed as written, but faster: the first layer's weight splits into the parts that
    multiply ``t``, ``s_t``, ``t - s_t`` and ``t * s_t``, so the target's part is computed once
    per row (``(W_t + W_d) t + (W_s - W_d) s_t + W_p (t * s_t)``), and in training only the
    valid positions are computed (packed; Dice's statistics are those of the valid positions,
    as with a mask). Eval and export compute every position, padding zeroed.

    Shapes:
        seq: float32 ``[B, L, D]``, lengths: int64 ``[B]``, target: float32 ``[B, D]``
        -> float32 ``[B, D]``
    """

    def __init__(
        self,
        embedding_dim: int,
        hidden_units: Sequence[int] = (80, 40),
        *,
        activation: str = "dice",
        softmax: bool = False,
        dice_eps: float = 1e-8,
    ) -> None:
        super().__init__()
        self.softmax = softmax
        self.linears = nn.ModuleList()
        self.activations = nn.ModuleList()
        width = 4 * int(embedding_dim)
        for units in hidden_units:
            units = int(units)
            self.linears.append(nn.Linear(width, units))
            self.activations.append(Dice(units, eps=dice_eps) if activation == "dice" else make_activation(activation))
            width = units
        self.score = nn.Linear(width, 1)

    def attention_weights(self, seq: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The weight of each position, 0 at padding: raw scores, or the masked softmax.

        Shapes: -> float32 ``[B, L]``
        """
        mask = sequence_mask(lengths, seq.shape[1])
        first = self.linears[0] if self.linears else None
        if first is None:  # (no hidden layer: the score reads the 4D input itself)
            first = self.score
        w_t, w_s, w_d, w_p = first.weight.split(seq.shape[-1], dim=1)
        target_part = functional.linear(target, w_t + w_d, first.bias)  # [B, units], once per row
        per_position = torch.cat([w_s - w_d, w_p], dim=1)
        if self.training and not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            rows, cols = mask.nonzero(as_tuple=True)  # the valid positions, packed
            keys = seq[rows, cols]
            hidden = target_part[rows] + functional.linear(torch.cat([keys, target[rows] * keys], dim=-1), per_position)
            valid = self._hidden_scores(hidden, first)
            scores = torch.zeros(mask.shape, dtype=valid.dtype, device=valid.device).index_put((rows, cols), valid)
        else:
            keys = zero_padding(seq, mask)
            inputs = torch.cat([keys, target.unsqueeze(1) * keys], dim=-1)
            hidden = target_part.unsqueeze(1) + functional.linear(inputs, per_position)  # [B, L, units]
            scores = self._hidden_scores(hidden, first, mask)
        zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
        if self.softmax:
            masked = torch.where(mask, scores, torch.full((), MASKED_SCORE, dtype=scores.dtype, device=scores.device))
            scores = torch.softmax(masked, dim=-1)
        return torch.where(mask, scores, zero)

    def _hidden_scores(self, hidden: torch.Tensor, first: nn.Linear, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The first layer's output (``[..., units]``) through the rest of the unit -> scores ``[...]``."""
        if first is self.score:
            return hidden.squeeze(-1)
        layers = list(zip([None, *self.linears[1:]], self.activations))
        for linear, activation in layers:
            if linear is not None:
                hidden = linear(hidden)
            hidden = activation(hidden, mask) if isinstance(activation, Dice) and hidden.dim() == 3 else activation(hidden)
        return self.score(hidden).squeeze(-1)

    def forward(self, seq: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        weights = self.attention_weights(seq, lengths, target)
        return masked_pool(seq, lengths, "sum", weights)


class AUGRU(nn.Module):
    """DIEN's interest extractor / evolution GRU, with the attention gating its update gate.

    Zhou et al. (2019), "Deep Interest Evolution Network for Click-Through Rate Prediction",
    AAAI. Per step, from input ``i_t`` and state ``h_{t-1}`` (``h_0 = 0``)::

        u_t = sigmoid(W_u i_t + U_u h_{t-1} + b_u)          (update gate)
        r_t = sigmoid(W_r i_t + U_r h_{t-1} + b_r)          (reset gate)
        c_t = tanh(W_h i_t + r_t * (U_h h_{t-1}) + b_h)    (candidate)
        h_t = (1 - u'_t) * h_{t-1} + u'_t * c_t

    with ``u'_t = u_t`` (``gate="gru"``, the interest extractor), ``u'_t = a_t * u_t``
    (``"augru"``) or ``u'_t = a_t`` (``"agru"``), ``a_t`` in [0, 1] the attention score of
    step t (e.g. ``TargetAttention(softmax=True).attention_weights``). Padded steps keep the
    state (``h_t = h_{t-1}`` for ``t >= length``). ``W = input_linear.weight`` and
    ``U = hidden_linear.weight`` stack the gates in the order (u, r, h).

    Shapes:
        seq: float32 ``[B, L, input_dim]``, lengths: int64 ``[B]``, attention: float32 ``[B, L]``
        -> (states: float32 ``[B, L, hidden_dim]``, 0 at padded steps;
            final: float32 ``[B, hidden_dim]``, the state after each row's last valid step)
    """

    def __init__(self, input_dim: int, hidden_dim: int, *, gate: str = "augru") -> None:
        super().__init__()
        if gate not in GRU_GATES:
            raise ValueError(f"unknown gate {gate!r}; valid: {', '.join(GRU_GATES)}")
        self.gate = gate
        self.hidden_dim = int(hidden_dim)
        self.input_linear = nn.Linear(input_dim, 3 * self.hidden_dim)
        self.hidden_linear = nn.Linear(self.hidden_dim, 3 * self.hidden_dim, bias=False)

    def forward(
        self,
        seq: torch.Tensor,
        lengths: torch.Tensor,
        attention: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        if (attention is None) != (self.gate == "gru"):
            raise ValueError(f"gate {self.gate!r}: attention must be {'None' if self.gate == 'gru' else 'given'}")
        steps = seq.shape[1]
        mask = sequence_mask(lengths, steps)
        projected = self.input_linear(zero_padding(seq, mask))  # [B, L, 3H]
        if steps == 0:
            states = projected[..., : self.hidden_dim]
            return states, torch.zeros_like(states.sum(dim=1))
        if attention is not None:
            attention = zero_padding(attention, mask).unsqueeze(-1)  # [B, L, 1]
        state = torch.zeros_like(projected[:, 0, : self.hidden_dim])  # [B, H], batch stays dynamic
        zero = torch.zeros((), dtype=state.dtype, device=state.device)
        states = []
        for t in range(steps):
            x_u, x_r, x_h = projected[:, t].chunk(3, dim=-1)
            h_u, h_r, h_h = self.hidden_linear(state).chunk(3, dim=-1)
            update = torch.sigmoid(x_u + h_u)
            reset = torch.sigmoid(x_r + h_r)
            candidate = torch.tanh(x_h + reset * h_h)
            if self.gate == "augru":
                update = attention[:, t] * update
            elif self.gate == "agru":
                update = attention[:, t]
            valid = mask[:, t : t + 1]
            state = torch.where(valid, (1 - update) * state + update * candidate, state)
            states.append(torch.where(valid, state, zero))
        return torch.stack(states, dim=1), state


def dien_auxiliary_loss(
    hidden: torch.Tensor,
    next_clicked: torch.Tensor,
    next_negative: torch.Tensor,
    lengths: torch.Tensor,
    mlp: nn.Module,
) -> torch.Tensor:
    """DIEN's auxiliary loss: the interest state ``h_t`` must tell the next clicked item from
    a sampled negative.

    Zhou et al. (2019), DIEN, AAAI. ``next_clicked[:, t]`` is ``e_{t+1}``, the embedding of
    the item clicked after step t (e.g. ``seq`` shifted left by one), ``next_negative[:, t]``
    a sampled negative for that step. ``mlp`` maps ``concat(h_t, e)`` (``[N, H + D]``) to a
    logit (``[N, 1]`` or ``[N]``); it sees the valid steps only. Returns
    ``sum_t [BCE(mlp(h_t, e_{t+1}), 1) + BCE(mlp(h_t, e^-_{t+1}), 0)] / max(N, 1)`` over the
    ``N`` valid steps ``t < length - 1`` of all rows (0 when there are none). Training only:
    the valid steps are gathered with a boolean index.

    Shapes:
        hidden: float32 ``[B, L, H]``, next_clicked / next_negative: float32 ``[B, L, D]``,
        lengths: int64 ``[B]`` -> float32 scalar
    """
    steps = sequence_mask(lengths - 1, hidden.shape[1])  # t < length - 1
    states = hidden[steps]  # [N, H]
    positive = mlp(torch.cat([states, next_clicked[steps]], dim=-1)).reshape(-1)
    negative = mlp(torch.cat([states, next_negative[steps]], dim=-1)).reshape(-1)
    loss = functional.binary_cross_entropy_with_logits(
        positive, torch.ones_like(positive), reduction="sum"
    ) + functional.binary_cross_entropy_with_logits(negative, torch.zeros_like(negative), reduction="sum")
    return loss / steps.sum().clamp(min=1).to(loss.dtype)


class BSTLayer(nn.Module):
    """Behaviour Sequence Transformer: one encoder layer over the history plus the target.

    Chen et al. (2019), "Behavior Sequence Transformer for E-commerce Recommendation in
    Alibaba", DLP-KDD. The target is appended as token ``L`` (tokens ``[B, L + 1, D]``);
    with ``positional`` a learned position embedding is added, indexed by the distance to the
    target (target 0, newest item 1, ..., oldest ``length``: independent of the padding;
    needs ``L <= max_length``). One post-norm encoder layer::

        S' = LayerNorm(E + Dropout(MultiHead(E)))
        F  = LayerNorm(S' + Dropout(W_2 LeakyReLU(W_1 S' + b_1) + b_2))

    ``MultiHead`` is scaled dot-product attention over ``num_heads`` heads with an output
    projection, where padded tokens are never keys (masked to -1e9 before the softmax; the
    target is always a valid key, so no row is empty). Padded tokens' outputs are 0.
    ``output``: ``"flatten"`` (all tokens, ``[B, (L + 1) * D]``, the paper's concatenation;
    ``output_dim`` assumes ``L == max_length``), ``"mean"`` (the mean over the valid tokens
    and the target, ``[B, D]``) or ``"target"`` (the target token, ``[B, D]``).

    Shapes:
        seq: float32 ``[B, L, D]``, lengths: int64 ``[B]``, target: float32 ``[B, D]``
        -> float32 ``[B, output_dim]``
    """

    def __init__(
        self,
        embedding_dim: int,
        max_length: int,
        *,
        num_heads: int = 2,
        ff_dim: int | None = None,
        dropout: float = 0.0,
        positional: bool = True,
        output: str = "flatten",
        layer_norm_eps: float = 1e-5,
    ) -> None:
        super().__init__()
        if embedding_dim % num_heads:
            raise ValueError(f"embedding_dim {embedding_dim} must divide into num_heads {num_heads}")
        if output not in BST_OUTPUTS:
            raise ValueError(f"unknown output {output!r}; valid: {', '.join(BST_OUTPUTS)}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.embedding_dim = int(embedding_dim)
        self.max_length = int(max_length)
        self.num_heads = int(num_heads)
        self.head_dim = self.embedding_dim // self.num_heads
        self.output = output
        self.output_dim = self.embedding_dim * (self.max_length + 1 if output == "flatten" else 1)
        ff_dim = 4 * self.embedding_dim if ff_dim is None else int(ff_dim)
        self.position = nn.Embedding(self.max_length + 1, self.embedding_dim) if positional else None
        self.query = nn.Linear(self.embedding_dim, self.embedding_dim)
        self.key = nn.Linear(self.embedding_dim, self.embedding_dim)
        self.value = nn.Linear(self.embedding_dim, self.embedding_dim)
        self.attention_output = nn.Linear(self.embedding_dim, self.embedding_dim)
        self.norm1 = nn.LayerNorm(self.embedding_dim, eps=layer_norm_eps)
        self.feed_forward = nn.Sequential(
            nn.Linear(self.embedding_dim, ff_dim), nn.LeakyReLU(), nn.Linear(ff_dim, self.embedding_dim)
        )
        self.norm2 = nn.LayerNorm(self.embedding_dim, eps=layer_norm_eps)
        self.dropout = nn.Dropout(dropout)

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        # [B, T, D] -> [B, heads, T, head_dim]
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def encode(
        self, seq: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The encoded tokens (0 at padding) and their mask.

        Shapes: -> (float32 ``[B, L + 1, D]``, bool ``[B, L + 1]``; token ``L`` is the target)
        """
        steps = seq.shape[1]
        if steps > self.max_length:
            raise ValueError(f"sequence length {steps} exceeds max_length {self.max_length}")
        mask = sequence_mask(lengths, steps)
        tokens = torch.cat([zero_padding(seq, mask), target.unsqueeze(1)], dim=1)  # [B, T, D]
        token_mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)  # [B, T]
        if self.position is not None:
            distance = lengths[:, None] - torch.arange(steps, device=lengths.device)  # newest: 1
            distance = torch.where(mask, distance, torch.zeros_like(distance))
            distance = torch.cat([distance, torch.zeros_like(distance[:, :1])], dim=1)  # target: 0
            tokens = tokens + self.position(distance)
        query = self._split_heads(self.query(tokens))
        key = self._split_heads(self.key(tokens))
        value = self._split_heads(self.value(tokens))
        scores = torch.matmul(query, key.transpose(-1, -2)) / self.head_dim**0.5  # [B, h, T, T]
        masked = torch.full((), MASKED_SCORE, dtype=scores.dtype, device=scores.device)
        scores = torch.where(token_mask[:, None, None, :], scores, masked)
        attended = torch.matmul(torch.softmax(scores, dim=-1), value).transpose(1, 2).flatten(2)
        hidden = self.norm1(tokens + self.dropout(self.attention_output(attended)))
        hidden = self.norm2(hidden + self.dropout(self.feed_forward(hidden)))
        return zero_padding(hidden, token_mask), token_mask

    def forward(self, seq: torch.Tensor, lengths: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        encoded, token_mask = self.encode(seq, lengths, target)
        if self.output == "flatten":
            return encoded.flatten(1)
        if self.output == "target":
            return encoded[:, -1]
        return encoded.sum(dim=1) / (lengths.to(encoded.dtype) + 1).unsqueeze(-1)


def deep_network(
    input_dim: int, hidden_units: Sequence[int], *, activation: str, dropout: float, batch_norm: bool
) -> nn.Module:
    """The output MLP ``[B, input_dim] -> [B, 1]``: :class:`MLP`, or with ``activation="dice"``
    the same layers with :class:`Dice` as the activation."""
    if activation != "dice":
        return MLP(input_dim, hidden_units, activation=activation, dropout=dropout, batch_norm=batch_norm,
                   output_dim=1)
    layers: list[nn.Module] = []
    width = int(input_dim)
    for units in hidden_units:
        layers.append(nn.Linear(width, int(units), bias=not batch_norm))
        layers += [nn.BatchNorm1d(int(units))] if batch_norm else []
        layers.append(Dice(int(units)))
        layers += [nn.Dropout(dropout)] if dropout > 0 else []
        width = int(units)
    return nn.Sequential(*layers, nn.Linear(width, 1))
