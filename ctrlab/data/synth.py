"""Synthetic Criteo-shaped click logs.

:func:`write_synthetic` writes rows in exactly the layout of the Criteo Kaggle
``train.txt``: ``label \\t I1..I13 \\t C1..C26``, no header, 40 tab-separated fields,
an empty field meaning "missing". With ``label=False`` it writes the 39-column
``test.txt`` layout (no label column).

What the data looks like
------------------------
* ``C1..C26`` are 8-lowercase-hex-digit strings (``05db9164``-style). Every field draws a
  rank from a truncated, discretised power law (Zipf-like: ``P(rank >= k) ~ k**-alpha``)
  and maps the rank to a hex string through a keyed 32-bit bijection that differs per
  field (and per seed), so the strings look random and the same rank gives different
  strings in different fields. Cardinalities follow the real data: tiny fields
  (C9: 3, C20: 4, C17: 10, ...), medium ones (hundreds to ~15k) and eight huge fields
  (C3, C4, C10, C12, C16, C21, C24, C26) whose support is 1e6..4e8 values so their
  distinct count keeps growing with the number of rows (millions at 10M rows for
  C3/C12/C21/C16/C4). Missing values come in groups like in Criteo: C3/C4/C12/C16/C21/C24
  are missing together (~3.4%), C19/C20/C25/C26 together (~44%), C6 ~12%, C22 ~76%.
* ``I1..I13`` are heavy-tailed non-negative counts (a discretised Lomax / Pareto-II
  distribution, capped per field; I5 reaches the tens of millions), ``I2`` is
  sometimes -1/-2/-3, and each field has its own missing rate (I1/I10 ~45%, I12 ~77%).
* Labels come from a planted logistic model::

      logit = bias + sum_f main_f[value_f]                  (18 small/medium fields, tables)
                   + sum_f hashed_f(value_f)                (8 huge fields, per-value hash weights)
                   + sum_(f,g) pair_fg[value_f, value_g]    (4 field pairs)
                   + slope[C17] * (log1p(I7) - mean)        (a count x category interaction)
                   + sum_i beta_i * (log1p(I_i) - mean_i) + gamma_i * missing_i

  The pair tables (and the slope table) are *double-centred* against the marginal value
  distributions, so their additive projection is zero: a model without crosses cannot
  recover any of that signal. ``bias`` is calibrated (on a fixed calibration sample)
  so that the positive rate is about 0.25 (Criteo: ~0.256).

Determinism and speed
---------------------
Every random quantity is a counter-based hash (splitmix64) of ``(seed, stream, global
row index)``, so the output depends only on the seed and the row index: any chunk size
gives the same bytes. Generation is fully vectorised numpy; columns become pyarrow
string arrays straight from buffers (a 65536-entry table turns uint32 codes into hex)
and ``pyarrow.csv`` writes them. Chunks are generated on the calling thread while a
second thread formats/compresses/writes the previous chunk, so memory stays bounded
by about two chunks whatever ``rows`` is. (Transcendental numpy functions may differ in
the last ulp between CPU types, so byte equality is only guaranteed on one machine;
across machines a handful of values in 10M rows may differ.)
"""

from __future__ import annotations

import math
import os
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
from tqdm.auto import tqdm

from ..fileio import atomic_write
from ..hashing import GOLDEN, MASK64, mix64, splitmix64_int, uniform53

__all__ = [
    "CatField",
    "IntField",
    "CAT_FIELDS",
    "INT_FIELDS",
    "COLUMNS",
    "TARGET_POSITIVE_RATE",
    "SynthBatch",
    "SynthGenerator",
    "write_synthetic",
]

# --------------------------------------------------------------------------------------
# Field design
# --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CatField:
    """A categorical column.

    cardinality: support size N (ranks 1..N; rank 0 = missing).
    alpha: tail exponent; ``P(rank >= k) ~ k**-alpha`` (pmf ~ k**-(1+alpha)).
        Small alpha with a huge N makes the distinct count grow with the row count.
    missing: probability that the value is empty.
    missing_group: fields sharing a group share one missingness draw, so with equal
        rates they are missing together (as in Criteo). None = independent.
    """

    name: str
    cardinality: int
    alpha: float
    missing: float = 0.0
    missing_group: str | None = None


@dataclass(frozen=True)
class IntField:
    """A count column: ``floor(scale * ((1-u)**(-1/tail) - 1))`` capped at ``cap``.

    neg_rate: probability of a negative value (-1, -2 or -3, I2 only in Criteo).
    """

    name: str
    scale: float
    tail: float
    cap: int
    missing: float = 0.0
    missing_group: str | None = None
    neg_rate: float = 0.0


#: The 26 categorical fields. Cardinalities of the bounded fields follow Criteo Kaggle;
#: the eight "huge" fields have supports of 1e6..4e8 and grow with the row count
#: (expected distinct values at 2M / 10M / 45M rows: C3 0.68M / 2.7M / 9.5M,
#: C12 0.59M / 2.3M / 8.0M, C21 0.52M / 2.0M / 6.9M, C16 0.44M / 1.7M / 5.6M,
#: C4 0.34M / 1.3M / 4.1M, C24 75k / 237k / 668k, C26 31k / 91k / 241k,
#: C10 25k / 68k / 169k).
CAT_FIELDS: tuple[CatField, ...] = (
    CatField("C1", 1460, 0.8),
    CatField("C2", 583, 0.7),
    CatField("C3", 400_000_000, 0.04, 0.034, "ads"),
    CatField("C4", 100_000_000, 0.13, 0.034, "ads"),
    CatField("C5", 305, 1.0),
    CatField("C6", 24, 1.2, 0.12),
    CatField("C7", 12_517, 0.6),
    CatField("C8", 633, 1.1),
    CatField("C9", 3, 2.5),
    CatField("C10", 1_000_000, 0.5),
    CatField("C11", 5_683, 0.7),
    CatField("C12", 300_000_000, 0.06, 0.034, "ads"),
    CatField("C13", 3_194, 0.7),
    CatField("C14", 27, 1.0),
    CatField("C15", 14_992, 0.6),
    CatField("C16", 200_000_000, 0.1, 0.034, "ads"),
    CatField("C17", 10, 1.0),
    CatField("C18", 5_652, 0.8),
    CatField("C19", 2_173, 0.9, 0.44, "ctx"),
    CatField("C20", 4, 0.8, 0.44, "ctx"),
    CatField("C21", 300_000_000, 0.08, 0.034, "ads"),
    CatField("C22", 18, 1.3, 0.76),
    CatField("C23", 15, 0.9),
    CatField("C24", 10_000_000, 0.33, 0.034, "ads"),
    CatField("C25", 105, 1.0, 0.44, "ctx"),
    CatField("C26", 2_000_000, 0.4, 0.44, "ctx"),
)

#: The 13 count fields (missing rates follow Criteo Kaggle).
INT_FIELDS: tuple[IntField, ...] = (
    IntField("I1", 1.5, 1.3, 1_500, 0.45, "i1"),
    IntField("I2", 3.0, 0.9, 25_000, 0.0, None, neg_rate=0.05),
    IntField("I3", 8.0, 1.1, 65_535, 0.21, "i3"),
    IntField("I4", 8.0, 2.0, 1_000, 0.22, "i3"),
    IntField("I5", 3_000.0, 0.9, 25_000_000, 0.026),
    IntField("I6", 40.0, 1.1, 400_000, 0.22, "i3"),
    IntField("I7", 4.0, 1.0, 50_000, 0.043, "i7"),
    IntField("I8", 15.0, 2.5, 5_000, 0.0005),
    IntField("I9", 40.0, 1.2, 50_000, 0.043, "i7"),
    IntField("I10", 0.5, 2.0, 10, 0.45, "i1"),
    IntField("I11", 1.5, 1.3, 250, 0.043, "i7"),
    IntField("I12", 0.3, 1.2, 1_000, 0.77),
    IntField("I13", 5.0, 1.5, 5_000, 0.22, "i3"),
)

COLUMNS: tuple[str, ...] = ("label",) + tuple(f.name for f in INT_FIELDS) + tuple(f.name for f in CAT_FIELDS)

TARGET_POSITIVE_RATE = 0.25

# Planted model. Strengths are standard deviations of each term's contribution to the logit.
_MAIN_EFFECTS: dict[str, float] = {
    "C1": 0.30, "C2": 0.30, "C5": 0.25, "C6": 0.30, "C7": 0.15, "C8": 0.20,
    "C9": 0.30, "C11": 0.20, "C13": 0.20, "C14": 0.25, "C15": 0.15, "C17": 0.30,
    "C18": 0.15, "C19": 0.15, "C20": 0.25, "C22": 0.20, "C23": 0.25, "C25": 0.20,
}  # fmt: skip
_HASHED_EFFECTS: dict[str, float] = {
    "C3": 0.30, "C4": 0.20, "C10": 0.20, "C12": 0.20, "C16": 0.20, "C21": 0.20,
    "C24": 0.30, "C26": 0.20,
}  # fmt: skip
_PAIR_EFFECTS: dict[tuple[str, str], float] = {
    ("C6", "C14"): 0.50,
    ("C17", "C23"): 0.40,
    ("C9", "C20"): 0.35,
    ("C5", "C25"): 0.30,
}
_SLOPE_EFFECT: tuple[str, str, float] = ("C17", "I7", 0.15)  # slope[C17] * centred log1p(I7)
_INT_EFFECTS: dict[str, tuple[float, float]] = {  # name -> (beta on centred log1p, missing effect)
    "I1": (0.15, -0.10), "I3": (-0.05, 0.0), "I5": (-0.05, 0.0), "I6": (0.05, 0.05),
    "I7": (0.15, 0.0), "I8": (0.10, 0.0), "I10": (0.10, 0.0), "I11": (0.20, 0.0),
    "I12": (0.0, 0.10), "I13": (-0.10, 0.0),
}  # fmt: skip

_CALIBRATION_START = 1 << 52  # row indices used only to calibrate (disjoint from real rows)
_CALIBRATION_ROWS = 200_000

# --------------------------------------------------------------------------------------
# Hashing
# --------------------------------------------------------------------------------------

def _key(seed: int, *tags: str) -> int:
    """A 64-bit stream key from the seed and some names (stable across processes)."""
    h = splitmix64_int((int(seed) & MASK64) ^ 0x5EED5EED5EED5EED)
    for tag in tags:
        h = splitmix64_int(h ^ zlib.crc32(tag.encode()) ^ (len(tag) << 40))
    return h


def _hash_values(values: np.ndarray, key: int) -> np.ndarray:
    """64-bit hash of each value (any integer dtype) under ``key``."""
    z = values.astype(np.uint64)
    np.multiply(z, np.uint64(GOLDEN), out=z)
    np.add(z, np.uint64(key), out=z)
    return mix64(z, out=z)


def _hash_normalish(values: np.ndarray, key: int) -> np.ndarray:
    """Zero-mean triangular weight on (-1, 1) per value, from its hash (variance 1/6)."""
    z = _hash_values(values, key)
    a = (z >> np.uint64(32)).astype(np.float64)
    b = (z & np.uint64(0xFFFFFFFF)).astype(np.float64)
    return (a + b) * (2.0**-32) - 1.0 + 2.0**-32  # in (-1, 1); times _TRI_SCALE -> variance 1


_TRI_SCALE = math.sqrt(6.0)  # triangular on (-1, 1) has variance 1/6


def _perm32(ranks: np.ndarray, k1: int, k2: int) -> np.ndarray:
    """Keyed bijection on uint32 (xor, xorshift-multiply rounds, add): rank -> code."""
    x = ranks.astype(np.uint32, copy=True)
    x ^= np.uint32(k1)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    x += np.uint32(k2)
    return x


_HEX16 = np.frombuffer(b"".join(b"%04x" % v for v in range(65536)), dtype="<u4")


def _hex8(codes: np.ndarray) -> np.ndarray:
    """uint32 codes -> uint8 buffer of n * 8 lowercase hex digits (big-endian digit order)."""
    n = codes.shape[0]
    out = np.empty((n, 2), dtype="<u4")
    np.take(_HEX16, codes >> np.uint32(16), out=out[:, 0])
    np.take(_HEX16, codes & np.uint32(0xFFFF), out=out[:, 1])
    return out.reshape(-1).view(np.uint8)


# --------------------------------------------------------------------------------------
# Generator
# --------------------------------------------------------------------------------------


def _rank_pmf(f: CatField) -> np.ndarray:
    """Probability of each index 0..N (0 = missing) for a bounded field."""
    k = np.arange(1, f.cardinality + 2, dtype=np.float64)
    cdf = (1.0 - k ** -f.alpha) / (1.0 - (f.cardinality + 1.0) ** -f.alpha)
    pmf = np.empty(f.cardinality + 1)
    pmf[0] = f.missing
    pmf[1:] = np.diff(cdf) * (1.0 - f.missing)
    pmf[1] += 1.0 - pmf.sum()  # absorb rounding
    return pmf


@dataclass
class SynthBatch:
    """Rows ``start .. start + n - 1`` of a synthetic data set, as numpy arrays.

    cat_ranks: uint32 [26, n], Zipf rank per field (0 = missing; rank 1 most frequent).
    cat_codes: uint32 [26, n], the value written as 8 hex digits (meaningless where missing).
    ints: int64 [13, n] (meaningless where missing); int_missing: bool [13, n].
    logit_additive / logit_interaction: float64 [n], the planted logit split into its
        additive part (bias included) and its non-additive part (pairs + slope).
    prob: sigmoid of the full logit; label: int8 [n].
    """

    start: int
    cat_ranks: np.ndarray
    cat_codes: np.ndarray
    ints: np.ndarray
    int_missing: np.ndarray
    logit_additive: np.ndarray
    logit_interaction: np.ndarray
    prob: np.ndarray
    label: np.ndarray

    @property
    def n(self) -> int:
        return int(self.label.shape[0])

    @property
    def cat_missing(self) -> np.ndarray:
        return self.cat_ranks == 0


class SynthGenerator:
    """Deterministic generator of synthetic rows for one seed (see the module docstring)."""

    def __init__(self, seed: int = 0, target_positive_rate: float = TARGET_POSITIVE_RATE):
        self.seed = int(seed)
        self._cat_index = {f.name: j for j, f in enumerate(CAT_FIELDS)}
        self._int_index = {f.name: j for j, f in enumerate(INT_FIELDS)}
        s = self.seed
        self._value_keys = [_key(s, "value", f.name) for f in CAT_FIELDS]
        self._perm_keys = [
            (_key(s, "perm1", f.name) & 0xFFFFFFFF, _key(s, "perm2", f.name) & 0xFFFFFFFF) for f in CAT_FIELDS
        ]
        self._int_keys = [_key(s, "int", f.name) for f in INT_FIELDS]
        self._neg_keys = [_key(s, "neg", f.name) for f in INT_FIELDS]
        groups = {f.missing_group or f.name for f in CAT_FIELDS + INT_FIELDS}
        self._miss_keys = {g: _key(s, "missing", g) for g in groups}
        self._label_key = _key(s, "label")
        # Constant per-field sampling parameters.
        self._cat_c = [1.0 - (f.cardinality + 1.0) ** -f.alpha for f in CAT_FIELDS]
        self._build_tables()
        self._int_centre = np.zeros(len(INT_FIELDS))
        self.bias = 0.0
        self._calibrate(target_positive_rate)

    # -- planted model tables ---------------------------------------------------------
    def _centred_table(self, name: str, pmf: np.ndarray, sigma: float, key: int) -> np.ndarray:
        w = _hash_normalish(np.arange(pmf.shape[0]), key) * _TRI_SCALE
        w -= pmf @ w
        w *= sigma / math.sqrt(max(pmf @ (w * w), 1e-300))
        return w

    def _build_tables(self) -> None:
        s = self.seed
        pmfs: dict[str, np.ndarray] = {}

        def pmf(name: str) -> np.ndarray:
            if name not in pmfs:
                pmfs[name] = _rank_pmf(CAT_FIELDS[self._cat_index[name]])
            return pmfs[name]

        self._main = {
            name: self._centred_table(name, pmf(name), sigma, _key(s, "main", name))
            for name, sigma in _MAIN_EFFECTS.items()
        }
        self._hashed = {name: (_key(s, "hashed", name), sigma) for name, sigma in _HASHED_EFFECTS.items()}
        self._pairs = {}
        for (a, b), sigma in _PAIR_EFFECTS.items():
            p, q = pmf(a), pmf(b)
            na, nb = p.shape[0], q.shape[0]
            t = _hash_normalish(np.arange(na * nb), _key(s, "pair", a, b)).reshape(na, nb) * _TRI_SCALE
            # Double-centre against the (independent) marginals: zero additive projection.
            t -= (t @ q)[:, None]
            t -= (p @ t)[None, :]
            var = p @ (t * t) @ q
            t *= sigma / math.sqrt(max(var, 1e-300))
            self._pairs[(a, b)] = t.reshape(-1)
        cat, num, sigma = _SLOPE_EFFECT
        self._slope = self._centred_table(cat, pmf(cat), sigma, _key(s, "slope", cat, num))

    # -- per-row sampling -------------------------------------------------------------
    def _uniform(self, base: np.ndarray, key: int, tmp: np.ndarray) -> np.ndarray:
        z = np.add(base, np.uint64(key))
        return uniform53(mix64(z, out=z, scratch=tmp))

    def _sample(self, start: int, n: int):
        base = np.arange(start, start + n, dtype=np.uint64)
        base *= np.uint64(GOLDEN)
        tmp = np.empty(n, dtype=np.uint64)
        miss_u: dict[str, np.ndarray] = {}

        def missing(field) -> np.ndarray | None:
            if field.missing <= 0.0:
                return None
            g = field.missing_group or field.name
            if g not in miss_u:
                miss_u[g] = self._uniform(base, self._miss_keys[g], tmp)
            return miss_u[g] < field.missing

        ranks = np.empty((len(CAT_FIELDS), n), dtype=np.uint32)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            for j, f in enumerate(CAT_FIELDS):
                u = self._uniform(base, self._value_keys[j], tmp)
                # inverse CDF of the truncated power law on [1, N+1): x = (1 - u c)^(-1/alpha)
                u *= -self._cat_c[j]
                u += 1.0
                np.log(u, out=u)
                u *= -1.0 / f.alpha
                np.exp(u, out=u)
                np.minimum(u, float(f.cardinality), out=u)
                r = ranks[j]
                r[...] = u  # float -> uint32 truncates (values are >= 1)
                m = missing(f)
                if m is not None:
                    r[m] = 0
            ints = np.empty((len(INT_FIELDS), n), dtype=np.int64)
            int_missing = np.zeros((len(INT_FIELDS), n), dtype=bool)
            for j, f in enumerate(INT_FIELDS):
                u = self._uniform(base, self._int_keys[j], tmp)
                np.subtract(1.0, u, out=u)
                np.log(u, out=u)
                u *= -1.0 / f.tail
                np.exp(u, out=u)
                u -= 1.0
                u *= f.scale
                np.minimum(u, float(f.cap), out=u)
                v = ints[j]
                v[...] = u  # truncation = floor for non-negative values
                if f.neg_rate > 0.0:
                    un = self._uniform(base, self._neg_keys[j], tmp)
                    neg = un < f.neg_rate
                    # -1 (70%), -2 (20%), -3 (10%) inside the negative slice
                    t = un[neg] / f.neg_rate
                    v[neg] = np.where(t < 0.7, -1, np.where(t < 0.9, -2, -3))
                m = missing(f)
                if m is not None:
                    int_missing[j] = m
        return base, tmp, ranks, ints, int_missing

    def _logit(self, ranks: np.ndarray, ints: np.ndarray, int_missing: np.ndarray):
        n = ranks.shape[1]
        add = np.zeros(n)
        for name, table in self._main.items():
            add += table[ranks[self._cat_index[name]]]
        for name, (key, sigma) in self._hashed.items():
            add += _hash_normalish(ranks[self._cat_index[name]], key) * (sigma * _TRI_SCALE)
        logs = {}
        for name in set(_INT_EFFECTS) | {_SLOPE_EFFECT[1]}:
            j = self._int_index[name]
            g = np.log1p(np.maximum(ints[j], 0).astype(np.float64))
            g -= self._int_centre[j]
            g[int_missing[j]] = 0.0
            logs[name] = g
        for name, (beta, gamma) in _INT_EFFECTS.items():
            if beta:
                add += beta * logs[name]
            if gamma:
                add += gamma * int_missing[self._int_index[name]]
        inter = np.zeros(n)
        for (a, b), table in self._pairs.items():
            nb = CAT_FIELDS[self._cat_index[b]].cardinality + 1
            idx = ranks[self._cat_index[a]].astype(np.int64) * nb + ranks[self._cat_index[b]]
            inter += table[idx]
        cat, num, _ = _SLOPE_EFFECT
        inter += self._slope[ranks[self._cat_index[cat]]] * logs[num]
        return add, inter

    def _calibrate(self, target: float) -> None:
        _, _, ranks, ints, int_missing = self._sample(_CALIBRATION_START, _CALIBRATION_ROWS)
        for j in range(len(INT_FIELDS)):
            present = ~int_missing[j]
            if present.any():
                self._int_centre[j] = np.log1p(np.maximum(ints[j][present], 0)).mean()
        add, inter = self._logit(ranks, ints, int_missing)
        s = add + inter
        b = math.log(target / (1.0 - target)) - float(np.median(s))
        for _ in range(50):  # Newton on mean(sigmoid(b + s)) = target
            p = 1.0 / (1.0 + np.exp(-(b + s)))
            f, df = p.mean() - target, (p * (1.0 - p)).mean()
            b -= f / df
            if abs(f) < 1e-10:
                break
        self.bias = float(b)

    def batch(self, start: int, n: int) -> SynthBatch:
        """Rows ``start .. start + n - 1`` (the same rows whatever else is generated)."""
        if start < 0 or n < 0 or start + n >= _CALIBRATION_START:
            raise ValueError(f"row range [{start}, {start + n}) out of bounds")
        base, tmp, ranks, ints, int_missing = self._sample(start, n)
        add, inter = self._logit(ranks, ints, int_missing)
        add += self.bias
        with np.errstate(over="ignore"):
            prob = 1.0 / (1.0 + np.exp(-(add + inter)))
        label = (self._uniform(base, self._label_key, tmp) < prob).astype(np.int8)
        codes = np.empty_like(ranks)
        for j in range(len(CAT_FIELDS)):
            codes[j] = _perm32(ranks[j], *self._perm_keys[j])
        return SynthBatch(start, ranks, codes, ints, int_missing, add, inter, prob, label)

    def table(self, batch: SynthBatch, label: bool = True) -> pa.Table:
        """The batch as a pyarrow Table in the raw Criteo layout (nulls = empty fields)."""
        n = batch.n
        offsets = pa.py_buffer(np.arange(0, 8 * (n + 1), 8, dtype=np.int32))
        arrays: list[pa.Array] = []
        names: list[str] = []
        if label:
            arrays.append(pa.array(batch.label, type=pa.int8()))
            names.append("label")
        for j, f in enumerate(INT_FIELDS):
            m = batch.int_missing[j]
            nulls = int(m.sum()) if f.missing > 0.0 else 0
            validity = pa.py_buffer(np.packbits(~m, bitorder="little")) if nulls else None
            arrays.append(pa.Array.from_buffers(pa.int64(), n, [validity, pa.py_buffer(batch.ints[j])], nulls))
            names.append(f.name)
        for j, f in enumerate(CAT_FIELDS):
            data = pa.py_buffer(_hex8(batch.cat_codes[j]))
            validity, nulls = None, 0
            if f.missing > 0.0:
                present = batch.cat_ranks[j] != 0
                nulls = n - int(present.sum())
                if nulls:
                    validity = pa.py_buffer(np.packbits(present, bitorder="little"))
            arrays.append(pa.StringArray.from_buffers(n, offsets, data, validity, nulls))
            names.append(f.name)
        return pa.Table.from_arrays(arrays, names=names)


# --------------------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------------------

_BLOCK_ROWS = 65_536  # rows generated at a time (keeps numpy temporaries in cache)
_WRITE_OPTIONS = pcsv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")


def write_synthetic(
    path: str | os.PathLike,
    rows: int,
    *,
    seed: int = 0,
    chunk_rows: int = 500_000,
    progress: bool = True,
    label: bool = True,
    gzip_level: int = 1,
) -> dict[str, Any]:
    """Write ``rows`` synthetic Criteo rows to ``path`` (gzip when it ends in ``.gz``).

    label=False writes the Kaggle ``test.txt`` layout (39 columns, no label); the
    feature columns are the same as with label=True for the same seed.
    gzip_level: zlib level for ``.gz`` output (1 = fast; the content does not depend
    on it). The file is written under a temporary name and renamed when complete.

    Returns {path, rows, positives, positive_rate, bytes (file size), raw_bytes
    (uncompressed), seconds, rows_per_s, seed, label}. positives counts the planted
    labels, also when they are not written.
    """
    rows = int(rows)
    chunk_rows = int(chunk_rows)
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be > 0, got {chunk_rows}")
    path = os.fspath(path)
    t0 = time.perf_counter()
    gen = SynthGenerator(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with tqdm(total=rows, unit="rows", unit_scale=True, disable=not progress, desc=os.path.basename(path),
              leave=False) as bar:
        positives, raw_bytes = atomic_write(path, lambda tmp: _write_rows(
            tmp, gen, rows, chunk_rows, label=label, gzip_level=gzip_level if path.endswith(".gz") else None, bar=bar))

    seconds = time.perf_counter() - t0
    return {
        "path": path,
        "rows": rows,
        "positives": positives,
        "positive_rate": positives / rows if rows else 0.0,
        "bytes": os.path.getsize(path),
        "raw_bytes": raw_bytes,
        "seconds": seconds,
        "rows_per_s": rows / seconds if seconds > 0 else float("inf"),
        "seed": int(seed),
        "label": bool(label),
    }


def _write_rows(tmp: Path, gen: SynthGenerator, rows: int, chunk_rows: int, *, label: bool,
                gzip_level: int | None, bar: tqdm) -> tuple[int, int]:
    """Write rows ``0 .. rows - 1`` of ``gen`` to ``tmp`` (gzip at ``gzip_level`` unless None);
    returns (positives, uncompressed bytes). Chunks of ``chunk_rows`` are generated on this thread
    while one writer thread formats (and compresses) and writes the previous chunk."""
    compressor = None if gzip_level is None else zlib.compressobj(gzip_level, zlib.DEFLATED, 31)  # 31: gzip
    positives = raw_bytes = 0
    # pyarrow writes plain text straight to the file; gzip output goes through zlib
    with (pa.OSFile(str(tmp), "wb") if compressor is None else open(tmp, "wb")) as out:

        def write(table: pa.Table) -> int:
            """Runs on the writer thread; returns the uncompressed byte count."""
            if compressor is None:
                before = out.tell()
                pcsv.write_csv(table, out, write_options=_WRITE_OPTIONS)
                return out.tell() - before
            buf_stream = pa.BufferOutputStream()
            pcsv.write_csv(table, buf_stream, write_options=_WRITE_OPTIONS)
            buf = buf_stream.getvalue()
            out.write(compressor.compress(buf))
            return buf.size

        with ThreadPoolExecutor(max_workers=1) as pool:
            pending = None
            pending_rows = 0
            for start in range(0, rows, chunk_rows):
                n = min(chunk_rows, rows - start)
                # Generate in cache-sized blocks (much faster than one big batch) and let
                # the writer see them as one multi-chunk table.
                parts = []
                for s in range(start, start + n, _BLOCK_ROWS):
                    b = gen.batch(s, min(_BLOCK_ROWS, start + n - s))
                    positives += int(b.label.sum(dtype=np.int64))
                    parts.append(gen.table(b, label=label))
                    del b
                table = pa.concat_tables(parts)
                del parts
                if pending is not None:
                    raw_bytes += pending.result()
                    bar.update(pending_rows)
                pending, pending_rows = pool.submit(write, table), n
                del table
            if pending is not None:
                raw_bytes += pending.result()
                bar.update(pending_rows)
        if compressor is not None:
            out.write(compressor.flush())
    return positives, raw_bytes


def split_off_tail(path: str | os.PathLike, tail_path: str | os.PathLike, tail_rows: int) -> None:
    """Move the last ``tail_rows`` lines of text file ``path`` into ``tail_path`` (replaced).

    One generated stream (whose planted model depends on the seed) becomes training rows plus
    held-out rows of the same distribution that ``prepare`` never sees (the demo does this)."""
    with open(path, "rb") as fh:
        lines = fh.readlines()
    with open(tail_path, "wb") as fh:
        fh.writelines(lines[-tail_rows:])
    with open(path, "wb") as fh:
        fh.writelines(lines[:-tail_rows])
