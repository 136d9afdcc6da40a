"""Synthetic Criteo-shaped logs over several days, with churning values and a drifting click model.

:func:`write_daily_synthetic` writes ``day01.tsv``, ``day02.tsv``, ... into a directory, each in
exactly the layout ``ctrlab data synth`` (``--kind criteo``) writes: ``label \\t I1..I13 \\t C1..C26``,
no header, 8-hex-digit categorical values, empty fields for missing values, plain text. Every
Criteo reader / preset reads them. The days are meant for continual training: append a day to a
store, warm-start the next day's training from the previous model, score day t+1 with the model of
day t (progressive validation), and watch embedding tables under eviction.

Value lifetimes (births, fading, deaths)
----------------------------------------
The 13 count columns and the missingness structure are those of :mod:`ctrlab.data.synth`
(:data:`~ctrlab.data.synth.INT_FIELDS`, the same missing groups). Each categorical field belongs
to one group of :data:`DEFAULT_GROUPS` by its cardinality N (:data:`~ctrlab.data.synth.CAT_FIELDS`):

=========  =================  ==========  ========  =========================================
group      fields             half-life   max age   births / field / day (K = ceil(N/(A+1)))
=========  =================  ==========  ========  =========================================
stable     N <= 200 (C6, C9,  --          --        none: the plain Zipf ranks of synth.py,
           C14, C17, C20,                           the same values every day
           C22, C23, C25)
medium     200 < N <= 20k     10 days     30 days   C1: 48, C7: 404, C15: 484, ...
huge       N > 20k (C3, C4,   4 days      14 days   C10: 66,667 ... C3: 26.7M (Criteo-like
           C10, C12, C16,                           support; most are never drawn)
           C21, C24, C26)
=========  =================  ==========  ========  =========================================

A churning field's values are pairs (birth day b, index i < K): every day a cohort of K new values
is born (days before day 1 too, so day 1 already has a full population). On day d a row's value is
drawn as

    age a = d - b  ~  P(a) = q**a (1 - q) / (1 - q**(A+1)),  a = 0..A,   q = 2**(-1/half_life)
    index i        ~  the field's truncated Zipf law (alpha of synth.py) over 1..K

so the popularity of a value decays as ``2**(-age/half_life)`` and after ``A`` days it is never
drawn again (it died). ``(1 - q) / (1 - q**(A+1))`` of a field's traffic comes from values born that
day (medium: ~8%, huge: ~17%), plus old values drawn for the first time. The population alive on
one day is K * (A+1) ~ N for every day (stationary), so the number of distinct values seen per day
stays flat while the number ever seen grows by about the number of new values per day (linearly):
with eviction of values unseen for a while, table sizes stay bounded. The written hex code of
``(b, i)`` is a keyed 32-bit bijection of ``(b + A) * K + i`` (mod 2**32), so the same code means
the same value on every day (codes of different values can collide only after 2**32 / K days).

The drifting click model
------------------------
::

    logit_d = bias_d + sum_f sigma_f * w_f(v, d)                         (26 categorical fields)
                     + sum_(i != T) beta_i * z_i + sum_i gamma_i * missing_i  (synth.py's count effects)
                     + trend_strength * cos(pi * (d - 1) / trend_period) * z_T

    w_f(v, d) = w0(v) + drift * sum_{t = max(b_v, 0) + 1 .. d} eps_f(v, t)

``sigma_f`` are synth.py's main / hashed effect strengths (0.15..0.30), ``w0`` and ``eps`` are
hashed zero-mean unit-variance draws per (value) and per (value, day): each value's weight is a
random walk whose daily step is ``drift`` (default 0.25) times its initial spread, started on its
birth day (on day 1 for stable values and values born before). ``z_i`` is the centred
``log1p(I_i)`` (0 when missing). The trend feature T (default ``I11``; its synth.py slope is
replaced by the trend, its missing effect kept) has an effect that turns
from ``+trend_strength`` (0.6) on day 1 through 0 to ``-trend_strength`` on day
``1 + trend_period`` (14 days) and back (cosine). ``bias_d`` is calibrated per day on a separate
sample so that the positive rate is about 0.25. A model frozen after day 1 therefore falls behind
(the trend flips, old weights walk away, new values are unknown to it) while a model updated daily
keeps up.

Determinism: every draw is a counter-based hash of (seed, stream, day, row index), as in
synth.py, so the files depend only on (seed, days, rows_per_day, parameters), not on chunking;
day d's file does not depend on how many days are written.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv

from ..fileio import atomic_write
from ..hashing import GOLDEN, mix64, uniform53
from .synth import (
    _HASHED_EFFECTS,
    _INT_EFFECTS,
    _MAIN_EFFECTS,
    _TRI_SCALE,
    _WRITE_OPTIONS,
    CAT_FIELDS,
    INT_FIELDS,
    TARGET_POSITIVE_RATE,
    _hash_normalish,
    _hex8,
    _key,
    _perm32,
)

__all__ = ["FieldGroup", "DEFAULT_GROUPS", "field_group", "write_daily_synthetic", "format_day_table"]


@dataclass(frozen=True)
class FieldGroup:
    """Churn of the fields of one group: ``max_cardinality`` is the group's upper bound on N
    (fields go to the first group whose bound they fit); ``half_life`` in days (None = no churn:
    the same values forever); ``max_age`` in days (a value is drawn on days b..b+max_age)."""

    name: str
    max_cardinality: float
    half_life: float | None = None
    max_age: int = 0


DEFAULT_GROUPS: tuple[FieldGroup, ...] = (
    FieldGroup("stable", 200),
    FieldGroup("medium", 20_000, 10.0, 30),
    FieldGroup("huge", math.inf, 4.0, 14),
)

_BLOCK_ROWS = 65_536
_CALIBRATION_ROWS = 20_000
_DAY_SHIFT = 40  # row stream of day d: (d << 40) + row; calibration rows: + (1 << 39)
_BIRTH_OFFSET = 1 << 16  # packed value ids: ((b + offset) << 40) | i


def field_group(cardinality: int, groups: tuple[FieldGroup, ...] = DEFAULT_GROUPS) -> FieldGroup:
    for g in groups:
        if cardinality <= g.max_cardinality:
            return g
    return groups[-1]


class _Field:
    """Sampling parameters of one categorical field."""

    def __init__(self, j: int, group: FieldGroup, seed: int):
        f = CAT_FIELDS[j]
        self.j, self.f, self.group = j, f, group
        self.churn = group.half_life is not None
        if self.churn:
            self.A = int(group.max_age)
            self.q = 2.0 ** (-1.0 / float(group.half_life))
            self.K = int(math.ceil(f.cardinality / (self.A + 1)))
            self.age_c = 1.0 - self.q ** (self.A + 1)
        else:
            self.A, self.q, self.K = 0, 0.0, f.cardinality
        self.zipf_c = 1.0 - (self.K + 1.0) ** -f.alpha
        self.k_age = _key(seed, "days-age", f.name)
        self.k_idx = _key(seed, "days-index", f.name)
        p1, p2 = _key(seed, "days-perm1", f.name), _key(seed, "days-perm2", f.name)
        self.perm = (p1 & 0xFFFFFFFF, p2 & 0xFFFFFFFF)
        self.k_w0 = _key(seed, "days-w0", f.name)
        self.walk_name = f.name
        self.sigma = _MAIN_EFFECTS.get(f.name, _HASHED_EFFECTS.get(f.name, 0.0))


def _uniform(base: np.ndarray, key: int) -> np.ndarray:
    z = np.add(base, np.uint64(key))
    return uniform53(mix64(z, out=z))


class _DailyGenerator:
    def __init__(self, seed: int, groups: tuple[FieldGroup, ...], drift: float, trend_feature: str,
                 trend_strength: float, trend_period: float, target: float):
        self.seed = int(seed)
        self.fields = [_Field(j, field_group(f.cardinality, groups), self.seed) for j, f in enumerate(CAT_FIELDS)]
        self.drift = float(drift)
        names = [f.name for f in INT_FIELDS]
        if trend_feature not in names:
            raise ValueError(f"trend_feature must be one of I1..I13, got {trend_feature!r}")
        self.trend_j = names.index(trend_feature)
        self.trend_strength = float(trend_strength)
        self.trend_period = float(trend_period)
        self.target = float(target)
        s = self.seed
        self.k_int = [_key(s, "days-int", f.name) for f in INT_FIELDS]
        self.k_neg = [_key(s, "days-neg", f.name) for f in INT_FIELDS]
        groups_ = {f.missing_group or f.name for f in CAT_FIELDS + INT_FIELDS}
        self.k_miss = {g: _key(s, "days-missing", g) for g in groups_}
        self.k_label = _key(s, "days-label")
        self._walk_keys: dict[tuple[str, int], int] = {}
        self.int_centre = np.zeros(len(INT_FIELDS))
        _, ints, im = self._sample(0, 1 << 38, _CALIBRATION_ROWS)  # day 0: counts do not drift
        for j in range(len(INT_FIELDS)):
            present = ~im[j]
            if present.any():
                self.int_centre[j] = np.log1p(np.maximum(ints[j][present], 0)).mean()

    def walk_key(self, name: str, t: int) -> int:
        k = self._walk_keys.get((name, t))
        if k is None:
            k = self._walk_keys[(name, t)] = _key(self.seed, "days-walk", name, str(t))
        return k

    def trend_beta(self, day: int) -> float:
        return self.trend_strength * math.cos(math.pi * (day - 1) / self.trend_period)

    # -- sampling ---------------------------------------------------------------------
    def _sample(self, day: int, start: int, n: int):
        """Value ids (packed uint64, 0 = missing) [26, n], birth days [26, n], ints, int_missing."""
        base = np.arange(start, start + n, dtype=np.uint64)
        base += np.uint64(day) << np.uint64(_DAY_SHIFT)
        base *= np.uint64(GOLDEN)
        miss_u: dict[str, np.ndarray] = {}

        def missing(field) -> np.ndarray | None:
            if field.missing <= 0.0:
                return None
            g = field.missing_group or field.name
            if g not in miss_u:
                miss_u[g] = _uniform(base, self.k_miss[g])
            return miss_u[g] < field.missing

        ids = np.zeros((len(CAT_FIELDS), n), dtype=np.uint64)
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            for fd in self.fields:
                u = _uniform(base, fd.k_idx)
                x = np.exp(np.log1p(-u * fd.zipf_c) * (-1.0 / fd.f.alpha))
                rank = np.minimum(x, float(fd.K)).astype(np.uint64)  # 1..K
                if fd.churn:
                    ua = _uniform(base, fd.k_age)
                    age = np.floor(np.log1p(-ua * fd.age_c) / math.log(fd.q))
                    age = np.clip(age, 0, fd.A).astype(np.int64)
                    birth = (day - age + _BIRTH_OFFSET).astype(np.uint64)
                    v = (birth << np.uint64(_DAY_SHIFT)) | (rank - np.uint64(1))
                else:
                    v = rank  # the value is its rank; born "on day 0"
                m = missing(fd.f)
                if m is not None:
                    v[m] = 0
                ids[fd.j] = v
            ints = np.empty((len(INT_FIELDS), n), dtype=np.int64)
            int_missing = np.zeros((len(INT_FIELDS), n), dtype=bool)
            for j, f in enumerate(INT_FIELDS):
                u = _uniform(base, self.k_int[j])
                x = (np.exp(np.log1p(-u) * (-1.0 / f.tail)) - 1.0) * f.scale
                v = ints[j]
                v[...] = np.minimum(x, float(f.cap))
                if f.neg_rate > 0.0:
                    un = _uniform(base, self.k_neg[j])
                    neg = un < f.neg_rate
                    t = un[neg] / f.neg_rate
                    v[neg] = np.where(t < 0.7, -1, np.where(t < 0.9, -2, -3))
                m = missing(f)
                if m is not None:
                    int_missing[j] = m
        return ids, ints, int_missing

    def code(self, fd: _Field, ids: np.ndarray) -> np.ndarray:
        """The 32-bit written code of packed value ids."""
        if not fd.churn:
            return _perm32(ids.astype(np.uint32), *fd.perm)
        birth = (ids >> np.uint64(_DAY_SHIFT)).astype(np.int64) - _BIRTH_OFFSET
        i = (ids & np.uint64((1 << _DAY_SHIFT) - 1)).astype(np.int64)
        lin = ((birth + fd.A) * fd.K + i + 1) & 0xFFFFFFFF
        return _perm32(lin.astype(np.uint32), *fd.perm)

    def weights(self, fd: _Field, ids: np.ndarray, day: int) -> np.ndarray:
        """sigma_f * w_f(v, day) for unique packed ids."""
        w = _hash_normalish(ids, fd.k_w0) * _TRI_SCALE
        if self.drift > 0.0:
            if fd.churn:
                birth = (ids >> np.uint64(_DAY_SHIFT)).astype(np.int64) - _BIRTH_OFFSET
                first = max(1, int(birth.min()) + 1) if birth.size else day + 1
            else:
                birth, first = None, 1
            for t in range(first, day + 1):
                step = _hash_normalish(ids, self.walk_key(fd.walk_name, t)) * (_TRI_SCALE * self.drift)
                if birth is not None:
                    step[birth >= t] = 0.0
                w += step
        return w * fd.sigma

    def logit(self, ids: np.ndarray, ints: np.ndarray, int_missing: np.ndarray, day: int) -> np.ndarray:
        n = ids.shape[1]
        out = np.zeros(n)
        for fd in self.fields:
            if fd.sigma <= 0.0:
                continue
            v = ids[fd.j]
            uniq, inv = np.unique(v, return_inverse=True)
            w = self.weights(fd, uniq, day)
            w[uniq == 0] = 0.0  # missing
            out += w[inv]
        for j, f in enumerate(INT_FIELDS):
            beta, gamma = _INT_EFFECTS.get(f.name, (0.0, 0.0))
            if j == self.trend_j:  # the trend replaces the feature's synth.py slope
                beta = self.trend_beta(day)
            if beta:
                z = np.log1p(np.maximum(ints[j], 0).astype(np.float64)) - self.int_centre[j]
                z[int_missing[j]] = 0.0
                out += beta * z
            if gamma:
                out += gamma * int_missing[j]
        return out

    def bias(self, day: int) -> float:
        ids, ints, im = self._sample(day, 1 << 39, _CALIBRATION_ROWS)
        s = self.logit(ids, ints, im, day)
        b = math.log(self.target / (1.0 - self.target)) - float(np.median(s))
        for _ in range(50):
            p = 1.0 / (1.0 + np.exp(-(b + s)))
            f, df = p.mean() - self.target, (p * (1.0 - p)).mean()
            b -= f / df
            if abs(f) < 1e-10:
                break
        return float(b)

    def table(self, day: int, start: int, n: int, bias: float) -> tuple[pa.Table, np.ndarray, np.ndarray]:
        ids, ints, int_missing = self._sample(day, start, n)
        logit = self.logit(ids, ints, int_missing, day) + bias
        with np.errstate(over="ignore"):
            prob = 1.0 / (1.0 + np.exp(-logit))
        base = (np.arange(start, start + n, dtype=np.uint64) + (np.uint64(day) << np.uint64(_DAY_SHIFT)))
        base *= np.uint64(GOLDEN)
        label = (_uniform(base, self.k_label) < prob).astype(np.int8)
        offsets = pa.py_buffer(np.arange(0, 8 * (n + 1), 8, dtype=np.int32))
        arrays: list[pa.Array] = [pa.array(label, type=pa.int8())]
        for j, f in enumerate(INT_FIELDS):
            m = int_missing[j]
            nulls = int(m.sum())
            validity = pa.py_buffer(np.packbits(~m, bitorder="little")) if nulls else None
            arrays.append(pa.Array.from_buffers(pa.int64(), n, [validity, pa.py_buffer(ints[j])], nulls))
        for fd in self.fields:
            v = ids[fd.j]
            data = pa.py_buffer(_hex8(self.code(fd, v)))
            present = v != 0
            nulls = n - int(present.sum())
            validity = pa.py_buffer(np.packbits(present, bitorder="little")) if nulls else None
            arrays.append(pa.StringArray.from_buffers(n, offsets, data, validity, nulls))
        names = ["label"] + [f.name for f in INT_FIELDS] + [f.name for f in CAT_FIELDS]
        return pa.Table.from_arrays(arrays, names=names), ids, label


class _Tracker:
    """Per field: every value ever seen with the last day it was seen (sorted arrays)."""

    def __init__(self, nfields: int):
        self.seen = [np.empty(0, dtype=np.uint64) for _ in range(nfields)]
        self.last = [np.empty(0, dtype=np.int32) for _ in range(nfields)]
        self.first = [np.empty(0, dtype=np.int32) for _ in range(nfields)]

    def update(self, j: int, today: np.ndarray, day: int) -> tuple[int, int]:
        """Record the distinct values of ``day``; returns (distinct today, new today)."""
        seen, last = self.seen[j], self.last[j]
        pos = np.searchsorted(seen, today)
        known = np.zeros(today.shape[0], dtype=bool)
        inside = pos < seen.shape[0]
        known[inside] = seen[pos[inside]] == today[inside]
        last[pos[known]] = day
        new = today[~known]
        if new.size:
            merged = np.concatenate([seen, new])
            order = np.argsort(merged, kind="stable")
            self.seen[j] = merged[order]
            self.last[j] = np.concatenate([last, np.full(new.size, day, dtype=np.int32)])[order]
            self.first[j] = np.concatenate([self.first[j], np.full(new.size, day, dtype=np.int32)])[order]
        return int(today.shape[0]), int(new.size)


def write_daily_synthetic(
    out_dir: str | os.PathLike,
    days: int,
    rows_per_day: int,
    *,
    seed: int = 0,
    groups: tuple[FieldGroup, ...] = DEFAULT_GROUPS,
    drift: float = 0.25,
    trend_feature: str = "I11",
    trend_strength: float = 0.6,
    trend_period: float = 14.0,
    target_positive_rate: float = TARGET_POSITIVE_RATE,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``days`` files ``dayNN.tsv`` of ``rows_per_day`` Criteo-layout rows into ``out_dir``.

    Parameters as in the module docstring. Each file is written under a temporary name and renamed
    when complete. Returns {out_dir, days, rows_per_day, seed, files, seconds, groups (name ->
    fields), per_day}: per_day[d - 1] = {day, path, rows, positives, positive_rate, trend_beta,
    distinct, new, dead, expired, ever_seen, new_share, by_group}: ``distinct`` values seen that day
    (summed over the 26 fields; "alive"), ``new`` of them never seen on earlier days, ``dead`` values
    seen on an earlier day that never appear again on this day or later (in the written days; rare
    values count too), ``expired`` values seen on an earlier day that are older than their group's
    max age (they can never appear again, whatever the number of days),
    ``ever_seen`` distinct values up to this day, ``new_share`` the fraction of non-missing
    categorical cells of churning fields whose value is new that day; by_group[name] has the same
    counts for the fields of one group.
    """
    days, rows_per_day = int(days), int(rows_per_day)
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if rows_per_day < 0:
        raise ValueError(f"rows_per_day must be >= 0, got {rows_per_day}")
    if drift < 0:
        raise ValueError(f"drift must be >= 0, got {drift}")
    if trend_period <= 0:
        raise ValueError(f"trend_period must be > 0, got {trend_period}")
    for g in groups:
        if g.half_life is not None and (g.half_life <= 0 or g.max_age < 0):
            raise ValueError(f"group {g.name}: half_life must be > 0 and max_age >= 0")
    t0 = time.perf_counter()
    gen = _DailyGenerator(seed, tuple(groups), drift, trend_feature, trend_strength, trend_period,
                          target_positive_rate)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(days)))
    tracker = _Tracker(len(CAT_FIELDS))
    per_day: list[dict[str, Any]] = []
    files: list[str] = []
    distinct_fd = np.zeros((days, len(CAT_FIELDS)), dtype=np.int64)
    new_fd = np.zeros((days, len(CAT_FIELDS)), dtype=np.int64)
    new_cells = np.zeros((days, len(CAT_FIELDS)), dtype=np.int64)  # non-missing cells holding a new value
    cells = np.zeros((days, len(CAT_FIELDS)), dtype=np.int64)
    for day in range(1, days + 1):
        path = out / f"day{day:0{width}d}.tsv"
        bias = gen.bias(day)

        def write(tmp: Path, day=day, bias=bias) -> tuple[int, list[np.ndarray], list[np.ndarray]]:
            positives = 0
            uniq: list[list[np.ndarray]] = [[] for _ in CAT_FIELDS]
            blocks_ids: list[np.ndarray] = []
            with pa.OSFile(str(tmp), "wb") as fh:
                for start in range(0, rows_per_day, _BLOCK_ROWS):
                    n = min(_BLOCK_ROWS, rows_per_day - start)
                    table, ids, label = gen.table(day, start, n, bias)
                    positives += int(label.sum(dtype=np.int64))
                    pcsv.write_csv(table, fh, write_options=_WRITE_OPTIONS)
                    for j in range(len(CAT_FIELDS)):
                        uniq[j].append(np.unique(ids[j]))
                    blocks_ids.append(ids)
            today = [np.unique(np.concatenate(u)) if u else np.empty(0, np.uint64) for u in uniq]
            return positives, [t[t != 0] for t in today], blocks_ids

        positives, today, blocks_ids = atomic_write(path, write)
        files.append(str(path))
        for j, fd in enumerate(gen.fields):
            before = tracker.seen[j]
            distinct_fd[day - 1, j], new_fd[day - 1, j] = tracker.update(j, today[j], day)
            v = np.concatenate([b[j] for b in blocks_ids]) if blocks_ids else np.empty(0, np.uint64)
            v = v[v != 0]
            pos = np.searchsorted(before, v)
            inside = pos < before.shape[0]
            known = np.zeros(v.shape[0], dtype=bool)
            known[inside] = before[pos[inside]] == v[inside]
            new_cells[day - 1, j], cells[day - 1, j] = int((~known).sum()), int(v.shape[0])
        per_day.append({"day": day, "path": str(path), "rows": rows_per_day, "positives": positives,
                        "positive_rate": positives / rows_per_day if rows_per_day else 0.0,
                        "trend_beta": gen.trend_beta(day)})
        if progress:
            print(f"day {day}/{days} written", flush=True)
    # dead / ever-seen counts need the last-seen day of every value (known once all days are drawn)
    used = {fd.group.name for fd in gen.fields}
    group_names = [g.name for g in groups if g.name in used]
    members = {g: [fd.j for fd in gen.fields if fd.group.name == g] for g in group_names}
    first_seen = np.cumsum(new_fd, axis=0)  # ever seen up to day d, per field
    dead_fd = np.zeros((days, len(CAT_FIELDS)), dtype=np.int64)
    expired_fd = np.zeros((days, len(CAT_FIELDS)), dtype=np.int64)
    for j in range(len(CAT_FIELDS)):
        hist = np.bincount(tracker.last[j], minlength=days + 1)  # values by last-seen day
        # dead on day d: last seen on a day < d
        dead_fd[:, j] = np.cumsum(hist)[:days] - hist[0]
        fd = gen.fields[j]
        if fd.churn:  # expired on day d: seen on an earlier day, born before d - A (can never come back)
            birth = (tracker.seen[j] >> np.uint64(_DAY_SHIFT)).astype(np.int64) - _BIRTH_OFFSET
            gone = np.maximum(tracker.first[j], birth + fd.A) + 1  # first day on which it counts
            gone = gone[gone <= days]
            expired_fd[:, j] = np.cumsum(np.bincount(gone, minlength=days + 1))[1:days + 1]
    for d, rec in enumerate(per_day):
        rec["by_group"] = {
            g: {"fields": len(js), "distinct": int(distinct_fd[d, js].sum()), "new": int(new_fd[d, js].sum()),
                "dead": int(dead_fd[d, js].sum()), "expired": int(expired_fd[d, js].sum()),
                "ever_seen": int(first_seen[d, js].sum()),
                "new_share": _share(new_cells[d, js].sum(), cells[d, js].sum())}
            for g, js in members.items()
        }
        rec["distinct"] = int(distinct_fd[d].sum())
        rec["new"] = int(new_fd[d].sum())
        rec["dead"] = int(dead_fd[d].sum())
        rec["expired"] = int(expired_fd[d].sum())
        rec["ever_seen"] = int(first_seen[d].sum())
        churn = [fd.j for fd in gen.fields if fd.churn]
        rec["new_share"] = _share(new_cells[d, churn].sum(), cells[d, churn].sum())
    return {
        "out_dir": str(out), "days": days, "rows_per_day": rows_per_day, "seed": int(seed), "files": files,
        "groups": {g: [CAT_FIELDS[j].name for j in js] for g, js in members.items()},
        "per_day": per_day, "seconds": time.perf_counter() - t0,
    }


def _share(a, b) -> float:
    return float(a) / float(b) if b else 0.0


def format_day_table(result: Mapping[str, Any]) -> str:
    """The per-day table the CLI prints: day, rows, positive rate, new / alive / dead / ever-seen values
    (all 26 fields), and alive per group."""
    groups = list(result["groups"])
    head = (f"{'day':>4} {'rows':>9} {'pos_rate':>8} {'new':>9} {'alive':>9} {'dead':>9} {'ever_seen':>10} "
            f"{'expired':>9} {'new_share':>9} " + " ".join(f"{'alive_' + g:>12}" for g in groups))
    lines = [head]
    for r in result["per_day"]:
        lines.append(f"{r['day']:>4} {r['rows']:>9,} {r['positive_rate']:>8.4f} {r['new']:>9,} {r['distinct']:>9,} "
                     f"{r['dead']:>9,} {r['ever_seen']:>10,} {r['expired']:>9,} {r['new_share']:>9.3f} "
                     + " ".join(f"{r['by_group'][g]['distinct']:>12,}" for g in groups))
    return "\n".join(lines)
