"""List-valued columns -> padded id blocks (issue 15: multi-valued and sequence fields).

A list column (``Action|Comedy``, a clicked-items history) is encoded value by value through a
:class:`~.encoders.Vocabulary`, its own or the one it shares with another column (``vocab_of:
item_id``: a history item and the target item then get the same id, so one embedding table
serves both), and laid out as the sequence blocks take it (:mod:`ctrlab.nn.sequence`):
``ids int32[N, L]`` with each row's values first, oldest to newest, then padding with the
missing id 0, and ``lengths int32[N]``. A list longer than ``L`` keeps its last (most recent)
``L`` values, as the readers cut sequences. Weights (``tag:0.7``) come as ``float32[N, L]``
with 0 at padding.

This is the encoding step only; prepare, the store, batches, models and the bundle take it up
next (see the issue notes).
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import pyarrow as pa

from ..fields import MISSING_ID
from .encoders import Vocabulary


def list_values(lists: pa.Array | pa.ChunkedArray) -> tuple[pa.Array, np.ndarray]:
    """A list array -> (its values, offsets int64[N + 1] into them); null lists are empty."""
    if isinstance(lists, pa.ChunkedArray):
        lists = lists.combine_chunks()
    lists = lists.fill_null(pa.scalar([], type=lists.type))
    offsets = np.asarray(lists.offsets, dtype=np.int64)
    values = lists.values.slice(offsets[0], offsets[-1] - offsets[0])
    return values, offsets - offsets[0]


def padded(flat: np.ndarray, offsets: np.ndarray, max_length: int, fill=MISSING_ID) -> tuple[np.ndarray, np.ndarray]:
    """Ragged values (``flat[offsets[i]:offsets[i + 1]]`` for row i) -> (block [N, max_length] with
    each row's last ``max_length`` values first and ``fill`` after them, lengths int32[N])."""
    if max_length < 1:
        raise ValueError(f"max_length must be >= 1, got {max_length}")
    lengths = np.diff(offsets)
    kept = np.minimum(lengths, max_length)
    start = offsets[:-1] + (lengths - kept)  # the most recent values
    block = np.full((len(lengths), max_length), fill, dtype=flat.dtype)
    rows = np.repeat(np.arange(len(lengths)), kept)
    position = np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept)
    block[rows, position] = flat[np.repeat(start, kept) + position]
    return block, kept.astype(np.int32)


def list_ids(vocab: Vocabulary, lists: pa.Array | pa.ChunkedArray, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """A list<string> column through ``vocab`` -> (ids int32[N, max_length], lengths int32[N]):
    kept values get their ids (2..), unseen ones the OOV id, padding the missing id."""
    values, offsets = list_values(lists)
    ids = vocab.transform(values) if len(values) else np.zeros(0, dtype=np.int32)
    return padded(ids.astype(np.int32, copy=False), offsets, max_length)


def list_weights(weights: pa.Array | pa.ChunkedArray, max_length: int) -> np.ndarray:
    """A list<float64> weights column -> float32[N, max_length], aligned with :func:`list_ids`
    (the same values kept), 0 at padding."""
    values, offsets = list_values(weights)
    flat = values.to_numpy(zero_copy_only=False).astype(np.float32)
    return padded(flat, offsets, max_length, fill=0.0)[0]


def fit_shared(vocab: Vocabulary, columns: Iterable[pa.Array | pa.ChunkedArray]) -> Vocabulary:
    """Fit one vocabulary on the values of several columns (single-valued strings and list
    columns alike: a target ``item_id`` and the histories that share its vocabulary), each value
    counted wherever it occurs."""
    accumulator = vocab.accumulator()
    for column in columns:
        is_list = pa.types.is_list(column.type) or pa.types.is_large_list(column.type)
        accumulator.update(list_values(column)[0] if is_list else column, None)
    accumulator.finish()
    return vocab
