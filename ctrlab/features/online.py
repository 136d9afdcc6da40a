"""The small-request lane: a few raw rows encoded one value at a time in plain Python.

:meth:`FeaturePipeline.transform <ctrlab.features.pipeline.FeaturePipeline.transform>` sends
inputs of at most :data:`SMALL_INPUT_ROWS` rows here. Serving scores a handful of rows per
request, where the fixed cost of a dozen numpy/Arrow calls per column (uniques, hashes, probes,
gathers) dwarfs the work; this lane is 5-13x faster at 1-5 rows. :class:`OnlineEncoder` is built
from the fitted encoders' state and gives the vectorized path's bytes exactly (tests/features/test_online.py):

* key hashes are :func:`~.keytable.hash_strings` / :func:`~.keytable.hash_ints` computed on
  Python ints (the same polynomial and splitmix64 finalizer, mod 2**64);
* a vocabulary lookup follows the :class:`~.keytable.KeyTable`'s probe sequence over its arrays;
* logarithms are numpy's (numpy on a Python float runs the same loop as on an array;
  ``math.log`` may differ in the last bit); the rest is exact IEEE arithmetic in the order of
  the array expressions, then the same float32 cast.

A value the scalar forms do not mirror (an infinity, a bucket key beyond 2**62) sends its column
through the encoder's own vectorized ``transform``, as does a hash encoder with 2**31 or more
buckets (ids beyond int32).

The encoder remembers the results of recent values, one dictionary per column (requests repeat
values; see :data:`MEMO_VALUES`); a row's 39 values are looked up in their columns' dictionaries
with one ``map`` call rather than one call per column. :meth:`OnlineEncoder.encode_columns` takes checked Python values straight
from request rows (:func:`ctrlab.inference.rows.checked_columns`): a request of a few rows is
encoded with no Arrow table at all; :meth:`OnlineEncoder.encode` takes a table's columns.
"""

from __future__ import annotations

import math
import operator
import threading
from itertools import chain, repeat
from typing import Any, Callable, Collection, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..fields import MISSING_ID, NUM_RESERVED_IDS, OOV_ID
from ..hashing import MASK64, splitmix64_int
from ..schema import WEIGHTS_SUFFIX
from .encoders import BucketizedNumeric, HashBuckets, NumericTransform, Vocabulary, column_values
from .keytable import POLY

#: Inputs of up to this many rows take the online lane; measured crossover on Criteo-shaped
#: rows: ~40 rows.
SMALL_INPUT_ROWS = 32

#: The encoder remembers the results of up to this many distinct recent values per column (a
#: column's all forgotten at once when it is full), strings of up to MEMO_LENGTH characters (requests
#: repeat values: a remembered one skips its hash and lookup or its logarithm, ~1-3 us in Python).
#: At most 4096 * 100 characters per column.
MEMO_VALUES = 1 << 12
MEMO_LENGTH = 100

Lane = Callable[[list], list]  # one column's n raw values (None = missing) -> n encoded values
Ids = Callable[[list], list]  # per-row key hashes (None = missing) -> per-row ids


# --------------------------------------------------------------------------------------------
# key hashes, one key at a time
# --------------------------------------------------------------------------------------------

_POWERS: list[int] = []  # POLY ** i mod 2**64
_POWER_SUMS: list[int] = [0]  # sum of the first i powers, mod 2**64
_POWERS_LOCK = threading.Lock()  # servers encode from several threads


def _powers(n: int) -> tuple[list[int], list[int]]:
    if len(_POWER_SUMS) <= n:  # checked on the sums, appended after the powers
        with _POWERS_LOCK:
            while len(_POWER_SUMS) <= n:
                last = _POWERS[-1] * POLY & MASK64 if _POWERS else 1
                _POWERS.append(last)
                _POWER_SUMS.append((_POWER_SUMS[-1] + last) & MASK64)
    return _POWERS, _POWER_SUMS


def hash_string_one(value: str | None) -> int:
    """:func:`~.keytable.hash_strings` of one string (None hashes like ""), as a Python int."""
    data = value.encode("utf-8") if value else b""
    n = len(data)
    powers, sums = _powers(n)
    # sum over bytes of (byte + 1) * POLY**i = sum(byte * POLY**i) + sum(POLY**i)
    total = (sum(map(int.__mul__, data, powers)) + sums[n]) & MASK64
    return splitmix64_int(total * POLY + n) or 1


def hash_int_one(key: int) -> int:
    """:func:`~.keytable.hash_ints` of one int64 key, as a Python int."""
    return splitmix64_int(key & MASK64) or 1


def log_square_bucket_one(v: float) -> int:
    """:func:`~.encoders.log_square_bucket` of one finite value, bit-identical: the logarithm is
    numpy's, the square, floor and truncation are exact in Python as in numpy."""
    if v > 2:
        log = float(np.log(v))
        return math.floor(log * log)
    return int(v)


# --------------------------------------------------------------------------------------------
# one lane per column, built from its encoder's fitted state
# --------------------------------------------------------------------------------------------

def _numeric_lane(t: NumericTransform) -> Lane:
    """float values (None or NaN = missing) -> features (Python floats, to be cast to float32),
    as :meth:`NumericTransform.transform`."""
    fill = t.fill_value
    logged = t.kind in ("log1p", "log1p_standardize")
    standardize = t.kind == "log1p_standardize"
    minmax = t.kind == "minmax"
    mean, std, low = t.mean_, t.std_, t.min_
    span = ((t.max_ - t.min_) or 1.0) if minmax else 1.0  # type: ignore[operator]

    def one(x: float | None) -> float:
        if x is None or x != x:
            return fill
        v = x
        if logged:
            sign = 1.0 if x > 0 else -1.0 if x < 0 else 0.0  # np.sign (np.sign(-0.0) is 0.0)
            v = sign * float(np.log1p(abs(x)))
        if standardize:
            v = (v - mean) / std  # type: ignore[operator]
        elif minmax:
            v = (v - low) / span  # type: ignore[operator]
            v = 0.0 if v < 0.0 else 1.0 if v > 1.0 else v  # np.clip (keeps -0.0, as np.clip does)
        return v

    def lane(values: list) -> list:
        if not all(v is None or v != v or abs(v) < math.inf for v in values):  # an infinity
            return t.transform(_floats(values)).tolist()
        return [one(v) for v in values]

    return lane


#: the numeric transforms whose features of 0.0 and -0.0 differ (in sign)
SIGNED_ZEROS = ("passthrough", "minmax")


def _floats(values: list) -> np.ndarray:
    """Python floats (None = missing) -> float64[n] with NaN for missing, as ``column_values`` gives."""
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _vocabulary_ids(vocab: Vocabulary) -> Ids:
    """Key hashes -> ids through the vocabulary's KeyTable (its probe sequence, one key at a time)."""
    keys, codes = vocab.lookup_table().slots()
    mask = len(keys) - 1

    def ids(hashes: list) -> list:
        out = []
        for h in hashes:
            if h is None:
                out.append(MISSING_ID)
                continue
            slot = h & mask
            while True:
                k = keys.item(slot)
                if k == h:
                    out.append(codes.item(slot) + NUM_RESERVED_IDS)
                    break
                if k == 0:
                    out.append(OOV_ID)
                    break
                slot = (slot + 1) & mask
        return out

    return ids


def _bucket_ids(buckets: int) -> Ids:
    return lambda hashes: [MISSING_ID if h is None else h % buckets + NUM_RESERVED_IDS for h in hashes]


def _sparse_lane(encoder: Any) -> Lane:
    """A column's values (floats for a bucketized numeric column, str for others; None = missing)
    -> int ids, as ``encoder.transform``."""
    if isinstance(encoder, BucketizedNumeric):
        vocab_ids = _vocabulary_ids(encoder.vocab)

        def bucketized(values: list) -> list:
            if not all(v is None or v != v or abs(v) < 2.0**62 for v in values):  # beyond int64 keys: numpy's cast
                return encoder.transform(_floats(values)).tolist()
            return vocab_ids([None if v is None or v != v else hash_int_one(log_square_bucket_one(v))
                              for v in values])

        return bucketized
    if isinstance(encoder, Vocabulary):
        ids = _vocabulary_ids(encoder)
    elif isinstance(encoder, HashBuckets) and encoder.buckets < 2**31 - NUM_RESERVED_IDS:
        ids = _bucket_ids(encoder.buckets)
    else:
        return lambda values: encoder.transform(pa.array(values, type=pa.string())).tolist()

    def strings(values: list) -> list:
        return ids([None if v is None else hash_string_one(v) for v in values])

    return strings


class OnlineEncoder:
    """A fitted pipeline's encoding, one value at a time: for inputs of a few rows.

    Holds one lane per output column, built from the encoders' fitted state when constructed;
    :meth:`encode` gives what the pipeline's vectorized lane gives, byte for byte. The encoders
    must not change in place afterwards (a pipeline rebuilds its OnlineEncoder when it is fitted
    again or an encoder is replaced: :meth:`built_from`). Safe to share between threads.
    """

    def __init__(self, encoders: Mapping[str, Any], dense_outputs: Sequence[str], sparse_outputs: Sequence[str],
                 numeric_inputs: Collection[str], lists: Sequence[tuple[Any, ...]] = ()):
        self._columns = [*dense_outputs, *sparse_outputs]
        self.dense_outputs = list(dense_outputs)
        self._n_dense = len(dense_outputs)
        self._encoders = [encoders[col] for col in self._columns]
        self._lanes = [_numeric_lane(encoders[col]) for col in dense_outputs]
        self._lanes += [_sparse_lane(encoders[col]) for col in sparse_outputs]
        # 0.0 and -0.0 are one dict key: zeros are not remembered where their results differ in sign
        self._signed_zeros = [encoders[col].kind in SIGNED_ZEROS for col in dense_outputs] + [False] * len(sparse_outputs)
        self._numeric = set(numeric_inputs)  # (each output column is encoded from the input of its name)
        # per column: value -> result, missing (None) from the start (see _fill)
        # list columns (name, max_length, vocabulary, vocab_of[, weighted]): a block of ids each,
        # after the single-valued columns; a shared vocabulary's values take its column's lane (and
        # memory). A weighted one's weights (column name + WEIGHTS_SUFFIX) make a block of the
        # dense matrix, after the numeric columns, in the order of the lists.
        self._lists: list[tuple[str, int, int]] = []
        self._weighted: list[tuple[str, str, int]] = []  # (name, its weights column, max_length)
        for name, length, vocab, owner, *weighted in lists:
            if owner is not None:
                lane = self._columns.index(owner)
            else:
                lane = len(self._lanes)
                self._lanes.append(_sparse_lane(vocab))
                self._signed_zeros.append(False)
            self._lists.append((name, int(length), lane))
            if weighted and weighted[0]:
                self._weighted.append((name, name + WEIGHTS_SUFFIX, int(length)))
        self._missing = [lane([None])[0] for lane in self._lanes]
        self._memos: list[dict[Any, Any]] = [{None: missing} for missing in self._missing]

    @classmethod
    def from_pipeline(cls, pipeline: Any) -> "OnlineEncoder":
        """The lane of a fitted :class:`~ctrlab.features.pipeline.FeaturePipeline` (which builds
        it itself; this module sits below it)."""
        lists = [(c.name, c.max_length, pipeline.list_vocabulary(c), c.vocab_of, c.weight_separator is not None)
                 for c in pipeline.list_inputs]
        return cls(pipeline.encoders, pipeline.dense_outputs, pipeline.sparse_outputs, pipeline.dense_inputs, lists)

    def built_from(self, encoders: Mapping[str, Any]) -> bool:
        """Whether every column's encoder is still the object this lane was built from."""
        return all(map(operator.is_, map(encoders.get, self._columns), self._encoders))

    def encode(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows -> (dense float32[N, dense_width], sparse int32[N, sparse_width]); no checks (the
        pipeline's ``transform`` checks the columns and the features' finiteness). A list column is
        list<string> (null = empty), a weighted one's weights ``name`` + WEIGHTS_SUFFIX list<float64>
        beside it (as the readers give them); each row keeps its last max_length values."""
        columns: dict[str, Any] = {}
        for col in self._columns:
            values = column_values(table, col, col in self._numeric)
            columns[col] = values.tolist() if isinstance(values, np.ndarray) else values.to_pylist()
        for name, length, _ in self._lists:
            columns[name] = [v[-length:] if v else [] for v in table.column(name).to_pylist()]
        for _, weights, length in self._weighted:
            columns[weights] = [v[-length:] if v else [] for v in table.column(weights).to_pylist()]
        return self.encode_columns(columns, table.num_rows)

    def encode_columns(self, columns: Mapping[str, Sequence[Any]], n: int) -> tuple[np.ndarray, np.ndarray]:
        """Checked raw values, one sequence of n per input column (floats for numeric columns, str for
        categorical ones; None = missing: what :func:`ctrlab.inference.rows.checked_columns`
        gives; a list column's n lists of str, already cut to its max_length; a weighted one's
        weights, ``name`` + WEIGHTS_SUFFIX: n lists of float, cut alike) -> (dense
        float32[N, dense_width]: each weighted list's weights after the numeric columns, in its ids'
        positions, 0 at padding; sparse int32[N, sparse_width]: the list blocks after the
        single-valued columns), with no Arrow table in between: the lane of a request of a few rows."""
        values = list(chain.from_iterable(map(columns.__getitem__, self._columns)))  # column-major
        column_memos = self._memos[: len(self._columns)]  # (own list vocabularies' lanes follow)
        memos = column_memos if n == 1 else list(chain.from_iterable(repeat(m, n) for m in column_memos))
        found = list(map(dict.get, memos, values))  # (each value looked up in its column's memory, in C)
        cut = self._n_dense * n
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by check_finite
            if None in found:  # values not seen lately
                self._fill(values, found, lambda i: i // n)
            dense = np.array(found[:cut], dtype=np.float64).reshape(self._n_dense, n)
            dense_out = dense.T.astype(np.float32, order="C")
        sparse_out = np.array(found[cut:], dtype=np.int32).reshape(len(self._columns) - self._n_dense, n)
        if not self._lists:
            return dense_out, np.ascontiguousarray(sparse_out.T)
        blocks = [sparse_out.T]
        for name, length, lane in self._lists:  # each list's ids first, then padding (id 0)
            rows = columns[name]
            flat = list(chain.from_iterable(rows))
            ids = list(map(self._memos[lane].get, flat))
            if None in ids:
                self._fill(flat, ids, lambda _i, j=lane: j)
            block = np.zeros((n, length), dtype=np.int32)
            at = 0
            for r, values in enumerate(rows):
                block[r, :len(values)] = ids[at:at + len(values)]
                at += len(values)
            blocks.append(block)
        sparse_all = np.ascontiguousarray(np.concatenate(blocks, axis=1))
        if not self._weighted:
            return dense_out, sparse_all
        dense_blocks = [dense_out]
        for _, weights, length in self._weighted:  # each row's weights where its ids are, then 0.0
            block = np.zeros((n, length), dtype=np.float32)
            for r, values in enumerate(columns[weights]):
                if values:
                    block[r, :len(values)] = np.array(values, dtype=np.float64)  # (float64 -> float32, rounded)
            dense_blocks.append(block)
        return np.ascontiguousarray(np.concatenate(dense_blocks, axis=1)), sparse_all

    def _fill(self, values: list[Any], found: list[Any], lane_of: Callable[[int], int]) -> None:
        """Compute the results ``found`` lacks (None) with each value's lane (``lane_of(i)``: the
        lane of value i), and remember them.

        Every lane's result for a value depends on that value alone, so a remembered result is the
        one the lane gives. Not remembered: NaN (one key per object), long strings, and zeros of the
        columns whose features of 0.0 and -0.0 differ. A column's memory is forgotten all at once
        when it holds MEMO_VALUES values. Safe to share between threads: each entry is final, and a
        dict's get, set and clear are atomic."""
        todo: dict[int, list[int]] = {}
        for i in [i for i, result in enumerate(found) if result is None]:
            todo.setdefault(lane_of(i), []).append(i)
        for j, where in todo.items():
            memo, signed_zeros = self._memos[j], self._signed_zeros[j]
            if len(memo) > MEMO_VALUES:
                memo.clear()
                memo[None] = self._missing[j]
            for i, result in zip(where, self._lanes[j]([values[i] for i in where])):
                found[i] = result
                value = values[i]
                if value == value and (value or not signed_zeros) and (type(value) is float
                                                                       or len(value) <= MEMO_LENGTH):
                    memo[value] = result
