"""Feature encoders: categorical vocabularies, hash buckets and numeric transforms.

scikit-learn style: hyperparameters in the constructor, learned state only after fitting
(names with a trailing underscore), ``transform`` is pure, and every encoder saves to and
loads from plain JSON (``to_dict`` / ``from_dict``), never pickle.

Fitting streams: ``accumulator()`` returns an object whose ``update(values, train_mask)`` sees
one chunk at a time (only rows where ``train_mask`` is set count towards the fit: no leakage
from validation or test rows) and returns per-row *codes*; ``finish()`` fits the encoder and
returns a function turning those codes into the final encoded values. ``prepare`` uses this
(through :meth:`FeaturePipeline.finish_fit`) to parse the raw data only once; the result equals
``transform`` on the raw values (tested).

``transform`` is vectorized (numpy / Arrow) for any number of rows; the pipeline sends inputs of
a few rows to its one-value-at-a-time twin in ``online.py`` instead, built from these encoders'
fitted state.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..fields import MISSING_ID, NUM_RESERVED_IDS, OOV_ID
from .spill import epoch_remap, merge_epochs, write_epoch
from .keytable import STACK_MAX_SLOTS, KeyTable, StackedTables, hash_ints, hash_strings

Values = Any  # a pyarrow string Array/ChunkedArray, or a float64 numpy array (NaN = missing)
Finalize = Callable[[np.ndarray], np.ndarray]


class Accumulator(Protocol):
    def update(self, values: Values, train_mask: np.ndarray | None) -> np.ndarray: ...

    @property
    def distinct_seen(self) -> int:
        """Distinct keys counted so far (0 for numeric columns): a column's share of the work."""
        ...

    def finish(self) -> Finalize: ...


def column_values(table: pa.Table, col: str, numeric: bool) -> Values:
    """A column as the encoders take it: float64 numpy (NaN = missing) or an Arrow string array."""
    column = table.column(col)
    if numeric:
        return column.to_numpy().astype(np.float64, copy=False)  # nulls become NaN
    if column.type != pa.string():
        column = column.cast(pa.string())
    return column


# --------------------------------------------------------------------------------------------
# Categorical keys: uniques + inverse, for Arrow strings and for bucketized numbers
# --------------------------------------------------------------------------------------------

_MISSING_KEY = np.iinfo(np.int64).min

Keys = Any  # an Arrow string array, or an int64 numpy array


def unique_inverse(values: Values) -> tuple[Keys, np.ndarray]:
    """Distinct non-missing keys and, per row, the index of its key (-1 where missing).

    Arrow strings use Arrow's hash-based dictionary encoding; integer numpy arrays (bucket keys,
    with ``np.iinfo(int64).min`` marking missing) use ``np.unique``.
    """
    if isinstance(values, np.ndarray):
        missing = values == _MISSING_KEY
        uniques, inverse = np.unique(values[~missing], return_inverse=True)
        codes = np.full(len(values), -1, dtype=np.int64)
        codes[~missing] = inverse
        return uniques, codes
    if isinstance(values, pa.ChunkedArray):
        # one array (a cheap copy): encoding one is faster than encoding a chunk at a time, and
        # its dictionary is in the same first-seen order
        values = values.combine_chunks()
    encoded = pc.dictionary_encode(values)
    indices = encoded.indices
    if indices.null_count:
        indices = pc.fill_null(indices, -1)
    return encoded.dictionary, indices.to_numpy()  # (int32: gathers and counts take it as it is)


def hash_keys(keys: Keys) -> np.ndarray:
    return hash_ints(keys) if isinstance(keys, np.ndarray) else hash_strings(keys)


def _take(keys: Keys, positions: np.ndarray) -> Keys:
    return keys[positions] if isinstance(keys, np.ndarray) else keys.take(pa.array(positions, type=pa.int64()))


def _concat(chunks: list[Keys], like_ints: bool) -> Keys:
    if like_ints:
        return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
    return pa.concat_arrays(chunks) if chunks else pa.array([], type=pa.string())


def _ids_from_codes(codes: np.ndarray, inverse: np.ndarray) -> np.ndarray:
    """Per-unique vocabulary codes (-1 = unknown) + per-row inverse -> per-row ids."""
    ids = np.where(codes >= 0, codes + NUM_RESERVED_IDS, OOV_ID).astype(np.int32)
    return np.append(ids, np.int32(MISSING_ID))[inverse]  # inverse -1 (missing) -> last entry


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

class Vocabulary:
    """Maps category keys to ids: 0 = missing, 1 = out-of-vocabulary, 2.. = kept keys.

    min_count: keys seen fewer times than this in the training rows map to the OOV id.
    max_size: keep at most this many keys (the most frequent; ties broken by the key's hash).
    Keys are strings, or integers for bucketized numeric columns.
    """

    kind = "vocab"

    def __init__(self, min_count: int = 1, max_size: int | None = None):
        if min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {min_count}")
        if max_size is not None and max_size < 0:
            raise ValueError(f"max_size must be >= 0 or null, got {max_size}")
        self.min_count = int(min_count)
        self.max_size = None if max_size is None else int(max_size)
        self.keys_: Keys | None = None
        self.seen_: int | None = None  # distinct values in the training rows at the last fit (not saved)
        self._table: KeyTable | None = None

    # fitting ---------------------------------------------------------------------------------
    def accumulator(self) -> "_VocabAccumulator":
        return _VocabAccumulator(self)

    def fit(self, values: Values) -> "Vocabulary":
        acc = self.accumulator()
        acc.update(values, None)
        acc.finish()
        return self

    def _set_keys(self, keys: Keys) -> None:
        self.keys_ = keys
        self._table = None  # built on first use: prepare never needs it

    def lookup_table(self) -> KeyTable:
        """The fitted keys' hashes -> their codes (code i = ``keys_[i]``, id = code + 2); built on
        first use."""
        self._check_fitted()
        if self._table is None:
            table = KeyTable(2 * len(self.keys_) + 16)  # type: ignore[arg-type]
            table.insert(hash_keys(self.keys_))  # code i = position i
            self._table = table
        return self._table

    # use -------------------------------------------------------------------------------------
    @property
    def size_(self) -> int:
        """Number of ids (reserved ids included)."""
        self._check_fitted()
        return NUM_RESERVED_IDS + len(self.keys_)  # type: ignore[arg-type]

    def _check_fitted(self) -> None:
        if self.keys_ is None:
            raise RuntimeError("Vocabulary is not fitted")

    def transform(self, values: Values) -> np.ndarray:
        self._check_fitted()
        uniques, inverse = unique_inverse(values)
        return _ids_from_codes(self.lookup_table().lookup(hash_keys(uniques)), inverse)

    def to_dict(self) -> dict[str, Any]:
        self._check_fitted()
        out = {"kind": self.kind, "min_count": self.min_count, "max_size": self.max_size}
        return {**out, **keys_to_json(self.keys_)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Vocabulary":
        vocab = cls(data["min_count"], data["max_size"])
        vocab._set_keys(keys_from_json(data))
        return vocab


#: inputs of at most this many rows take :func:`vocabulary_ids` (above it, deduplicating each
#: column first, as ``Vocabulary.transform`` does, saves more than the per-column fixed costs)
BATCHED_VOCAB_ROWS = 4096


def vocabulary_ids(vocabs: list[Vocabulary], columns: list[Values], stacked: StackedTables | None = None) -> np.ndarray:
    """ids int32[N, k] of k >= 1 Arrow string columns of N rows through their vocabularies: column j
    equals ``vocabs[j].transform(columns[j])`` (tested), with one hash pass over all k*N values
    instead of one dictionary encoding and hash pass per column: a request of a thousand rows
    pays numpy's and Arrow's fixed costs once, not k times (nulls are missing; other values,
    "" included, are looked up as in ``transform``). ``stacked``: the vocabularies' lookup tables
    as one (:func:`stacked_tables`), to look all columns up in one pass too."""
    n, k = len(columns[0]), len(columns)
    chunks = [chunk for col in columns for chunk in (col.chunks if isinstance(col, pa.ChunkedArray) else [col])]
    joined = pa.chunked_array(chunks, type=pa.string()).combine_chunks()
    hashes = hash_strings(joined)  # column-major: column j's values at [j*n, (j+1)*n)
    if stacked is not None:
        codes = stacked.lookup(hashes.reshape(k, n))
        ids = np.where(codes >= 0, codes + NUM_RESERVED_IDS, OOV_ID).astype(np.int32, copy=False)
    else:
        ids = np.empty((k, n), dtype=np.int32)
        for j, vocab in enumerate(vocabs):
            codes = vocab.lookup_table().lookup(hashes[j * n:(j + 1) * n])
            ids[j] = np.where(codes >= 0, codes + NUM_RESERVED_IDS, OOV_ID)
    if joined.null_count:
        ids[~np.asarray(joined.is_valid()).reshape(k, n)] = MISSING_ID
    return ids.T


def stacked_tables(vocabs: list[Vocabulary]) -> StackedTables | None:
    """The vocabularies' lookup tables stacked for :func:`vocabulary_ids`, or None when they hold
    more than STACK_MAX_SLOTS slots (the copy would cost more memory than it saves time)."""
    tables = [vocab.lookup_table() for vocab in vocabs]
    if sum(t.capacity for t in tables) > STACK_MAX_SLOTS:
        return None
    return StackedTables(tables)


_JOIN_MIN_KEYS = 1000  # below this a vocabulary is saved as a readable JSON list


def keys_to_json(keys: Keys) -> dict[str, Any]:
    """Keys as JSON data. Large string vocabularies become one newline-joined string (built and
    split by Arrow, with no Python object per key), unless a key contains a newline."""
    if isinstance(keys, np.ndarray):
        return {"key_type": "int", "keys": keys.tolist()}
    if len(keys) >= _JOIN_MIN_KEYS and not pc.any(pc.match_substring(keys, "\n")).as_py():
        listed = pa.ListArray.from_arrays(pa.array([0, len(keys)], type=pa.int32()), keys)
        return {"key_type": "string", "keys_joined": pc.binary_join(listed, "\n")[0].as_py()}
    return {"key_type": "string", "keys": keys.to_pylist()}


def keys_from_json(data: dict[str, Any]) -> Keys:
    if data["key_type"] == "int":
        return np.array(data["keys"], dtype=np.int64)
    if "keys_joined" in data:
        parts = pc.split_pattern(pa.array([data["keys_joined"]], type=pa.string()), "\n")
        return parts.flatten()
    return pa.array(data["keys"], type=pa.string())


class RemapFinalize:
    """Provisional codes -> ids through a lookup array (``remap[code]``)."""

    def __init__(self, remap: np.ndarray):
        self.remap = remap

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        return self.remap[codes]


class EpochRemaps:
    """The finalize of a vocabulary counted in several epochs (:mod:`.spill`): epoch e's row codes
    go through epoch e's own remap, loaded on demand (:meth:`CodeFinalizer.at_epoch`)."""

    def __init__(self, paths: list[Path]):
        self.paths = paths

    @property
    def epochs(self) -> int:
        return len(self.paths)

    def remap(self, epoch: int) -> RemapFinalize:
        return RemapFinalize(epoch_remap(self.paths[epoch]))


class _VocabAccumulator:
    """Gives every distinct key a provisional code (first-seen order) and counts training rows;
    ``finish`` orders the vocabulary by training count, then by the key's hash.

    ``spill(directory)`` writes the state counted so far to ``directory`` and starts a new epoch
    whose codes restart at 0 (:mod:`.spill`: how prepare keeps its memory bounded); ``finish``
    then merges the epochs exactly and returns an :class:`EpochRemaps`."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.int_keys = False
        self.spilled: list[Path] = []  # epoch files written so far
        self._new_epoch()

    def _new_epoch(self) -> None:
        self.table = KeyTable()
        self.key_chunks: list[Keys] = []
        self.counts = np.zeros(1024, dtype=np.int64)

    @property
    def distinct_seen(self) -> int:
        return self.table.size

    def nbytes(self) -> int:
        """Memory held by this epoch's counting state."""
        keys = sum(k.nbytes for k in self.key_chunks)
        return self.table.nbytes() + self.counts.nbytes + keys

    def spill(self, directory: Path) -> None:
        directory.mkdir(exist_ok=True)
        path = directory / f"epoch-{len(self.spilled):05d}.arrow"
        n = self.table.size
        write_epoch(path, self.table.hashes(), self.counts[1: n + 1], _concat(self.key_chunks, self.int_keys))
        self.spilled.append(path)
        self._new_epoch()

    def absorb(self, other: "_VocabAccumulator") -> None:
        """Take over another accumulator's spilled epochs, after this one's (the Ray engine: each
        shard's task counts its rows and spills them; the driver merges them all in shard order)."""
        if self.table.size or other.table.size:
            raise RuntimeError("only spilled counts can be combined: spill both accumulators first")
        self.spilled.extend(other.spilled)
        self.int_keys = self.int_keys or other.int_keys

    def update(self, values: Values, train_mask: np.ndarray | None) -> np.ndarray:
        uniques, inverse = unique_inverse(values)
        self.int_keys = isinstance(uniques, np.ndarray)
        before = self.table.size
        hashes = hash_keys(uniques)
        # most keys of a chunk are known already: a (read-only, cheaper) lookup finds them, and
        # only the new ones are inserted (numbered in their order, as inserting all would)
        codes = self.table.lookup(hashes)
        absent = np.flatnonzero(codes < 0)
        if absent.size:
            codes[absent] = self.table.insert(hashes[absent])
        new = np.flatnonzero(codes >= before)
        if new.size:
            self.key_chunks.append(_take(uniques, new[np.argsort(codes[new])]))
        # row code = provisional code + 1, with 0 for missing
        row_codes = np.append(codes + 1, np.int32(0))[inverse]
        n = self.table.size
        if n + 1 > len(self.counts):
            grown = np.zeros(max(2 * len(self.counts), n + 1), dtype=np.int64)
            grown[: len(self.counts)] = self.counts
            self.counts = grown
        # count per distinct key of this chunk (O(chunk), not O(table)), then add at their codes
        counted = inverse if train_mask is None else inverse[train_mask]
        per_unique = np.bincount(counted + 1, minlength=len(codes) + 1)  # slot 0: missing
        self.counts[codes.astype(np.int64) + 1] += per_unique[1:]
        self.counts[0] += per_unique[0]
        return row_codes

    def finish(self) -> Finalize:
        if self.spilled:  # the last epoch too, then the external merge
            directory = self.spilled[0].parent
            self.spill(directory)
            remaps = [path.with_suffix(".remap.npy") for path in self.spilled]
            keys, self.vocab.seen_ = merge_epochs(self.spilled, remaps, self.vocab.min_count, self.vocab.max_size,
                                                  self.int_keys)
            self.vocab._set_keys(keys)
            return EpochRemaps(remaps)
        n = self.table.size
        counts = self.counts[1 : n + 1]
        self.vocab.seen_ = int(np.count_nonzero(counts))
        eligible = np.flatnonzero(counts >= self.vocab.min_count)
        all_keys = _concat(self.key_chunks, self.int_keys)
        # most frequent first, ties by the key's hash: the vocabulary depends on the training
        # rows' values and counts alone, not on their order nor on the other splits
        hashes = self.table.hashes()
        order = eligible[np.lexsort((hashes[eligible], -counts[eligible]))]
        if self.vocab.max_size is not None:
            order = order[: self.vocab.max_size]
        self.vocab._set_keys(_take(all_keys, order))
        remap = np.full(n + 1, OOV_ID, dtype=np.int32)
        remap[0] = MISSING_ID
        remap[order + 1] = np.arange(NUM_RESERVED_IDS, NUM_RESERVED_IDS + len(order), dtype=np.int32)
        self._new_epoch()  # free the provisional state
        return RemapFinalize(remap)


# --------------------------------------------------------------------------------------------
# Hash buckets
# --------------------------------------------------------------------------------------------

class HashBuckets:
    """One-pass alternative to a vocabulary: id = 2 + hash64(key) mod buckets; 0 = missing.

    Needs no fitting and no memory per key; distinct keys may share an id.
    """

    kind = "hash"

    def __init__(self, buckets: int = 1_000_000):
        if buckets < 1:
            raise ValueError(f"hash buckets must be >= 1, got {buckets}")
        self.buckets = int(buckets)

    @property
    def size_(self) -> int:
        return NUM_RESERVED_IDS + self.buckets

    def transform(self, values: Values) -> np.ndarray:
        uniques, inverse = unique_inverse(values)
        codes = (hash_keys(uniques) % np.uint64(self.buckets)).astype(np.int32)
        return _ids_from_codes(codes, inverse)

    def accumulator(self) -> "_StatelessAccumulator":
        return _StatelessAccumulator(self.transform)

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "buckets": self.buckets}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HashBuckets":
        return cls(data["buckets"])


class _StatelessAccumulator:
    """For encoders that need no fitting: codes are the final values."""

    def __init__(self, transform: Callable[[Values], np.ndarray]):
        self._transform = transform

    distinct_seen = 0

    def update(self, values: Values, train_mask: np.ndarray | None) -> np.ndarray:
        return self._transform(values)

    def absorb(self, other: "_StatelessAccumulator") -> None:
        pass  # nothing was counted

    def finish(self) -> Finalize:
        return lambda codes: codes


# --------------------------------------------------------------------------------------------
# Numeric transforms
# --------------------------------------------------------------------------------------------

def signed_log1p(x: np.ndarray) -> np.ndarray:
    """sign(x) * ln(1 + |x|): a log that keeps the (rare) negative counts finite and ordered."""
    out = np.abs(x)
    np.log1p(out, out=out)
    out *= np.sign(x)  # (in place: the same values as sign(x) * log1p(|x|), one array fewer)
    return out


def log_square_bucket(x: np.ndarray) -> np.ndarray:
    """The Criteo Kaggle-winner bucketing: v > 2 -> floor(ln(v)^2), else int(v); missing stays missing.

    Returns int64 keys with ``np.iinfo(int64).min`` for missing (NaN) values.
    """
    out = np.full(x.shape, _MISSING_KEY, dtype=np.int64)
    present = ~np.isnan(x)
    v = x[present]
    big = v > 2
    keys = np.trunc(v).astype(np.int64)
    with np.errstate(divide="ignore", invalid="ignore"):
        keys[big] = np.floor(np.log(v[big]) ** 2).astype(np.int64)
    out[present] = keys
    return out


class NumericTransform:
    """A dense numeric column -> float32 feature.

    kind:
      ``passthrough``        the raw value;
      ``log1p``              sign(x) * ln(1 + |x|);
      ``log1p_standardize``  log1p as above, then (v - mean) / std with mean and std fitted on
                             the training rows;
      ``minmax``             (x - min) / (max - min) fitted on the training rows, clipped to [0, 1].
    fill_value: the output for a missing value (after the transform; 0.0 = the training mean
      for ``log1p_standardize``).
    """

    KINDS = ("passthrough", "log1p", "log1p_standardize", "minmax")

    def __init__(self, kind: str = "log1p_standardize", fill_value: float = 0.0):
        if kind not in self.KINDS:
            raise ValueError(f"unknown numeric transform {kind!r}; valid: {', '.join(self.KINDS + ('log_square_bucket',))}")
        self.kind = kind
        self.fill_value = float(fill_value)
        self.mean_: float | None = None
        self.std_: float | None = None
        self.min_: float | None = None
        self.max_: float | None = None

    @property
    def needs_fit(self) -> bool:
        return self.kind in ("log1p_standardize", "minmax")

    def _pre(self, x: np.ndarray) -> np.ndarray:
        return signed_log1p(x) if self.kind in ("log1p", "log1p_standardize") else x

    def transform(self, x: np.ndarray) -> np.ndarray:
        """float64 raw values (NaN = missing) -> float32 features."""
        x = np.asarray(x, dtype=np.float64)
        v = self._pre(x)
        if self.kind == "log1p_standardize":
            v -= self.mean_  # (v is the new array _pre made: updated in place)
            v /= self.std_
        elif self.kind == "minmax":
            span = (self.max_ - self.min_) or 1.0  # type: ignore[operator]
            v = np.clip((v - self.min_) / span, 0.0, 1.0)
        out = v.astype(np.float32)
        missing = np.isnan(x)
        if missing.any():
            out[missing] = np.float32(self.fill_value)
        return out

    def accumulator(self) -> "_NumericAccumulator":
        return _NumericAccumulator(self)

    def fit(self, x: np.ndarray) -> "NumericTransform":
        acc = self.accumulator()
        acc.update(x, None)
        acc.finish()
        return self

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "fill_value": self.fill_value, "mean": self.mean_, "std": self.std_,
                "min": self.min_, "max": self.max_}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "NumericTransform":
        t = cls(data["kind"], data["fill_value"])
        t.mean_, t.std_, t.min_, t.max_ = data["mean"], data["std"], data["min"], data["max"]
        return t


class _NumericAccumulator:
    """Streams count, mean, sum of squared deviations (combined per chunk, Chan et al., so a
    constant column has exactly zero spread), min and max of the (pre-transformed) training
    values; codes are the raw float64 values themselves."""

    def __init__(self, transform: NumericTransform):
        self.t = transform
        self.n = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.lo = math.inf
        self.hi = -math.inf

    distinct_seen = 0

    def update(self, values: np.ndarray, train_mask: np.ndarray | None) -> np.ndarray:
        x = np.asarray(values, dtype=np.float64)
        if self.t.needs_fit:
            v = x if train_mask is None else x[train_mask]
            v = self.t._pre(v[~np.isnan(v)])  # (the transforms keep every non-NaN value non-NaN)
            if v.size:
                mean_b = float(v.mean())
                self._combine(v.size, mean_b, float(np.square(v - mean_b).sum()), float(v.min()), float(v.max()))
        return x

    def _combine(self, n_b: int, mean_b: float, m2_b: float, lo: float, hi: float) -> None:
        n_a = self.n
        delta = mean_b - self.mean
        total = n_a + n_b
        self.mean += delta * n_b / total
        self.m2 += m2_b + delta * delta * n_a * n_b / total
        self.n = total
        self.lo = min(self.lo, lo)
        self.hi = max(self.hi, hi)

    def absorb(self, other: "_NumericAccumulator") -> None:
        """Add another accumulator's statistics (of other rows): the same fit as one accumulator
        over all the rows, up to the last bits that ``finish`` rounds away."""
        if other.n:
            self._combine(other.n, other.mean, other.m2, other.lo, other.hi)

    def finish(self) -> Finalize:
        t = self.t
        if t.needs_fit:
            if self.n:
                std = math.sqrt(self.m2 / self.n)
                # rounded to 12 significant digits: the fitted values do not depend on how the
                # rows were chunked (float sums differ in the last bits)
                t.mean_ = _round_sig(self.mean)
                t.std_ = _round_sig(std) if std > 1e-12 * max(1.0, abs(self.mean)) else 1.0
                t.min_, t.max_ = self.lo, self.hi
            else:  # no training value at all: the feature is constant fill_value
                t.mean_, t.std_, t.min_, t.max_ = 0.0, 1.0, 0.0, 1.0
        return t.transform


def _round_sig(x: float, digits: int = 12) -> float:
    return float(f"{x:.{digits - 1}e}")


class BucketizedNumeric:
    """A numeric column turned into a categorical one: log-square bucket keys + a vocabulary."""

    kind = "log_square_bucket"

    def __init__(self, vocab: Vocabulary | None = None):
        self.vocab = vocab or Vocabulary()

    @property
    def size_(self) -> int:
        return self.vocab.size_

    def transform(self, x: np.ndarray) -> np.ndarray:
        return self.vocab.transform(log_square_bucket(np.asarray(x, dtype=np.float64)))

    def accumulator(self) -> "_BucketAccumulator":
        return _BucketAccumulator(self.vocab.accumulator())

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "vocab": self.vocab.to_dict()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "BucketizedNumeric":
        return cls(Vocabulary.from_dict(data["vocab"]))


class _BucketAccumulator:
    def __init__(self, inner: _VocabAccumulator):
        self.inner = inner

    @property
    def distinct_seen(self) -> int:
        return self.inner.distinct_seen

    def update(self, values: np.ndarray, train_mask: np.ndarray | None) -> np.ndarray:
        return self.inner.update(log_square_bucket(np.asarray(values, dtype=np.float64)), train_mask)

    def nbytes(self) -> int:
        return self.inner.nbytes()

    def spill(self, directory: Path) -> None:
        self.inner.spill(directory)

    def absorb(self, other: "_BucketAccumulator") -> None:
        self.inner.absorb(other.inner)

    def finish(self) -> Finalize:
        return self.inner.finish()


def encoder_from_dict(data: dict[str, Any]):
    kinds = {"vocab": Vocabulary, "hash": HashBuckets, "log_square_bucket": BucketizedNumeric}
    if data["kind"] in kinds:
        return kinds[data["kind"]].from_dict(data)
    return NumericTransform.from_dict(data)


# --------------------------------------------------------------------------------------------
# Growing vocabularies (``ctrlab prepare --append``: one partition after another)
# --------------------------------------------------------------------------------------------

#: a retired id's slot in ``Vocabulary.keys_`` holds a placeholder no real value equals (a string
#: key beginning with NUL, or an int bucket key far below any log-square bucket), so that the
#: value it held maps to OOV everywhere a fitted vocabulary is used (bundle, server, online lane)
RETIRED_PREFIX = "\x00ctrlab-retired:"
_RETIRED_INT_BASE = np.iinfo(np.int64).min + 1


def retired_placeholders(ids: np.ndarray, like_ints: bool) -> Keys:
    """The placeholder keys of retired ids (one per id: distinct, never a real value)."""
    ids = np.asarray(ids, dtype=np.int64)
    if like_ints:
        return _RETIRED_INT_BASE + ids
    return pa.array([f"{RETIRED_PREFIX}{int(i)}" for i in ids], type=pa.string())


class VocabState:
    """What a growing vocabulary remembers between partitions (the store's sidecar, not
    pipeline.json): per tracked value (kept ones and candidates below min_count) its key hash,
    cumulative count, the vocabulary version it was last seen in and its id (0 = a candidate);
    and the free list of retired ids waiting for reuse."""

    FIELDS = ("hashes", "counts", "last_seen", "ids", "free")

    def __init__(self, hashes: np.ndarray | None = None, counts: np.ndarray | None = None,
                 last_seen: np.ndarray | None = None, ids: np.ndarray | None = None, free: np.ndarray | None = None):
        self.hashes = np.zeros(0, np.uint64) if hashes is None else np.asarray(hashes, np.uint64)
        self.counts = np.zeros(0, np.int64) if counts is None else np.asarray(counts, np.int64)
        self.last_seen = np.zeros(0, np.int32) if last_seen is None else np.asarray(last_seen, np.int32)
        self.ids = np.zeros(0, np.int32) if ids is None else np.asarray(ids, np.int32)
        self.free = np.zeros(0, np.int32) if free is None else np.asarray(free, np.int32)
        if not len(self.hashes) == len(self.counts) == len(self.last_seen) == len(self.ids):
            raise ValueError("vocabulary state: its arrays differ in length")

    def __len__(self) -> int:
        return len(self.hashes)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}::{name}": getattr(self, name) for name in self.FIELDS}

    @classmethod
    def from_arrays(cls, data: Any, prefix: str) -> "VocabState":
        return cls(*(data[f"{prefix}::{name}"] for name in cls.FIELDS))


class _GrowAccumulator:
    """Streams a new partition's values like :class:`_VocabAccumulator` (provisional codes,
    counts), then ``finish`` extends the vocabulary instead of refitting it: counts add to the
    carried-over ones, ids unseen for ``unseen_partitions`` versions are retired (their slot goes
    to the free list, their key becomes a placeholder), candidates reaching ``min_count`` are
    admitted (most frequent first, ties by hash) into freed slots, lowest first, then at the end
    of the id range; existing ids never move. After ``finish``: ``state`` (the new sidecar part)
    and ``changes`` ({retired, reused: int32 ids, added: count})."""

    def __init__(self, vocab: Vocabulary, state: VocabState, version: int, unseen_partitions: int | None,
                 int_keys: bool):
        self.vocab = vocab
        self.state = state
        self.version = int(version)
        self.unseen_partitions = unseen_partitions
        self.inner = _VocabAccumulator(vocab)
        self.inner.int_keys = int_keys
        self.changes: dict[str, Any] = {}

    @property
    def distinct_seen(self) -> int:
        return self.inner.distinct_seen

    def update(self, values: Values, train_mask: np.ndarray | None) -> np.ndarray:
        return self.inner.update(values, train_mask)

    def finish(self) -> Finalize:
        inner, st, v, vocab = self.inner, self.state, self.version, self.vocab
        n = inner.table.size
        new_counts = inner.counts[1: n + 1]
        new_hashes = inner.table.hashes().copy()
        new_keys = _concat(inner.key_chunks, inner.int_keys)
        old_keys = vocab.keys_ if vocab.keys_ is not None else _concat([], inner.int_keys)
        k = len(st)
        # the partition's values in the carried-over state (O(distinct values), numpy only)
        known = KeyTable(2 * k + 16)
        known.insert(st.hashes)
        pos = known.lookup(new_hashes).astype(np.int64) if n else np.zeros(0, np.int64)
        seen = pos >= 0
        fresh = np.flatnonzero(~seen)
        counts = np.concatenate([st.counts, new_counts[fresh]])
        counts[pos[seen]] += new_counts[seen]
        last = np.concatenate([st.last_seen, np.full(len(fresh), v, np.int32)])
        last[pos[seen]] = v
        ids = np.concatenate([st.ids, np.zeros(len(fresh), np.int32)])
        hashes = np.concatenate([st.hashes, new_hashes[fresh]])
        row_of_code = np.empty(n, np.int64)
        row_of_code[seen] = pos[seen]
        row_of_code[fresh] = k + np.arange(len(fresh))
        # eviction: values (kept or candidates) unseen in the last `unseen_partitions` versions
        if self.unseen_partitions:
            drop = last <= v - int(self.unseen_partitions)
        else:
            drop = np.zeros(len(hashes), bool)
        retired = np.sort(ids[drop & (ids > 0)])
        free = np.union1d(st.free, retired).astype(np.int32)
        # admission: candidates seen now whose cumulative count reaches min_count
        live = int(np.count_nonzero((ids > 0) & ~drop))
        cand = np.flatnonzero((ids == 0) & ~drop & (last == v) & (counts >= vocab.min_count))
        cand = cand[np.lexsort((hashes[cand], -counts[cand]))]
        if vocab.max_size is not None:
            cand = cand[: max(0, vocab.max_size - live)]
        reuse = min(len(free), len(cand))
        appended = len(cand) - reuse
        slots = np.concatenate([free[:reuse], NUM_RESERVED_IDS + len(old_keys) + np.arange(appended)]).astype(np.int32)
        ids[cand] = slots
        code_of_row = np.full(len(hashes), -1, np.int64)
        code_of_row[row_of_code] = np.arange(n)
        cand_keys = _take(new_keys, code_of_row[cand])
        # the new key list: placeholders where ids retired, new keys in reused slots, then appended
        keys = _replace_keys(old_keys, retired, retired_placeholders(retired, inner.int_keys), inner.int_keys)
        keys = _replace_keys(keys, slots[:reuse], _take(cand_keys, np.arange(reuse)), inner.int_keys)
        keys = _concat([keys, _take(cand_keys, np.arange(reuse, len(cand)))], inner.int_keys)
        vocab._set_keys(keys)
        keep = ~drop
        self.state = VocabState(hashes[keep], counts[keep], last[keep], ids[keep], free[reuse:])
        self.changes = {"retired": retired.astype(np.int32), "reused": np.sort(slots[:reuse]).astype(np.int32),
                        "added": int(appended)}
        remap = np.full(n + 1, OOV_ID, dtype=np.int32)
        remap[0] = MISSING_ID
        row_ids = ids[row_of_code]
        remap[1:] = np.where(row_ids > 0, row_ids, OOV_ID)
        inner.table, inner.key_chunks = KeyTable(), []
        return RemapFinalize(remap)


def _replace_keys(keys: Keys, ids: np.ndarray, values: Keys, like_ints: bool) -> Keys:
    """``keys`` with the entries of ``ids`` (ids, i.e. position + 2; ascending) set to ``values``."""
    if len(ids) == 0:
        return keys
    positions = np.asarray(ids, np.int64) - NUM_RESERVED_IDS
    if like_ints:
        out = np.array(keys, dtype=np.int64, copy=True)
        out[positions] = values
        return out
    order = np.argsort(positions, kind="stable")
    mask = np.zeros(len(keys), bool)
    mask[positions] = True
    values = values.take(pa.array(order, type=pa.int64())) if isinstance(values, pa.Array) else values
    return pc.replace_with_mask(keys, pa.array(mask), values)


def vocab_state_of(vocab: Vocabulary, version: int) -> VocabState:
    """The state of a vocabulary fitted in one go (a store prepared before growing ones): every
    kept key with count min_count (its true count is not recorded), last seen at ``version``."""
    keys = vocab.keys_
    n = 0 if keys is None else len(keys)
    hashes = hash_keys(keys) if n else np.zeros(0, np.uint64)
    return VocabState(hashes, np.full(n, vocab.min_count, np.int64), np.full(n, version, np.int32),
                      NUM_RESERVED_IDS + np.arange(n, dtype=np.int32))


class _FrozenAccumulator:
    """A fitted numeric transform kept as it is while a partition is appended: codes are the raw
    values, ``finish`` returns the existing transform (no refit: the features of rows already
    stored keep their meaning)."""

    def __init__(self, transform: NumericTransform):
        self.t = transform

    distinct_seen = 0

    def update(self, values: np.ndarray, train_mask: np.ndarray | None) -> np.ndarray:
        return np.asarray(values, dtype=np.float64)

    def finish(self) -> Finalize:
        return self.t.transform


def growing_accumulator(encoder: Any, state: VocabState | None, version: int,
                        unseen_partitions: int | None) -> Accumulator:
    """The accumulator that appends a partition through ``encoder``: a vocabulary (or a bucketized
    column's) grows from ``state``; hash buckets need nothing; a numeric transform stays fitted."""
    if isinstance(encoder, Vocabulary):
        return _GrowAccumulator(encoder, state or VocabState(), version, unseen_partitions,
                                int_keys=isinstance(encoder.keys_, np.ndarray))
    if isinstance(encoder, BucketizedNumeric):
        return _BucketAccumulator(_GrowAccumulator(encoder.vocab, state or VocabState(), version, unseen_partitions,
                                                   int_keys=True))  # type: ignore[arg-type]
    if isinstance(encoder, HashBuckets):
        return encoder.accumulator()
    if encoder.mean_ is None and encoder.needs_fit:  # a new store's first partition fits it
        return encoder.accumulator()
    return _FrozenAccumulator(encoder)
