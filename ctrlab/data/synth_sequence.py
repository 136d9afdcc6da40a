"""Synthetic behaviour-sequence click logs (Taobao/Amazon-shaped) with a planted interest signal.

:func:`write_sequence_synthetic` writes a tab-separated file WITH a header line::

    label  user_id  item_id  cate_id  price  hist_item_id  hist_cate_id  tags

* ``user_id`` / ``item_id`` / ``cate_id``: categorical strings (``u17``, ``i4321``, ``c8``).
  ~2000 users, ~5000 items with a Zipf-like popularity, ~50 categories; every item belongs
  to exactly one category (a fixed item -> category map drawn from the seed), so an item has
  the same category everywhere in the file.
* ``price``: a float with two decimals, an attribute of the item (log-normal), empty (missing)
  in ~5% of the rows.
* ``hist_item_id``: the user's behaviour history, item ids joined by ``|``, OLDEST FIRST,
  0..``max_history`` items (an empty field is an empty history: ~8% of rows; ~18% have exactly
  ``max_history`` at the default 50, more with a smaller cap; longer histories are cut).
  ``hist_cate_id``: the categories of those items, same length, same separator.
* ``tags``: 0..4 distinct tags (``t0``..``t39``, Zipf-like) joined by ``|``; in about half of
  the rows each tag carries a weight, ``t12:0.7`` (weights 0.1..1.0).

Why it looks like this
----------------------
Each user has 2-4 preferred categories with Dirichlet weights, and each row has a *current
interest*: one of the user's preferred categories. History items are drawn mostly from the
user's preferred categories (older positions: 75% preferred / 25% global popularity), and the
last 10 positions lean towards the current interest (60% current interest / 25% other preferred
/ 15% global). The target item is from the current interest (40%), another preferred category
(15%), a copy of one of the last 10 history items (10%) or global popularity (35%). Items inside a
category follow the global (Zipf) popularity.

The planted click model (documented so that experiments can say what a model should find)::

    recent   = the last min(10, len(history)) history items
    frac     = (# items in `recent` whose category == target category) / len(recent)   (0 if empty)
    in_hist  = 1 if the target item appears anywhere in the history else 0
    logit    = bias + 2.5 * frac + 1.0 * in_hist
                    - 0.25 * z(log price)       (0 when price is missing; z = standardised over items)
                    + sum_tags weight_t * w[t]  (w[t] ~ N(0, 0.3^2) per tag; weight 1 when unweighted)
                    + u[user]                   (u ~ N(0, 0.2^2) per user)
                    + N(0, 0.3^2)               (per-row noise)
    label    ~ Bernoulli(sigmoid(logit))

``bias`` is calibrated on a separate sample (same seed and max_history) so that the positive
rate is about :data:`TARGET_POSITIVE_RATE` (0.27). The signal lives in the match between the
target and the RECENT history, so a model that attends over the history with the target as query
(DIN) can find it while one that mean-pools the whole history sees it diluted.

Determinism and speed
---------------------
The world (item popularity, item -> category, prices, user preferences, tag and user effects) is
drawn from ``SeedSequence([seed, 0])``; rows come in blocks of :data:`_BLOCK_ROWS`, block ``k``
drawn from its own ``SeedSequence([seed, 1, k])``, so the same (seed, rows, max_history) gives
byte-identical files (a shorter file is not a prefix of a longer one: the last block's draws depend
on its size; and numpy's Generator streams are only promised stable within a numpy version).
Sampling is vectorised numpy (alias-table draws on the flattened history positions); formatting is
one ``"|".join`` per row and field over pre-built id strings (~100-150k rows/s in all on 2 cores).
The file is written under a temporary name and renamed when complete
(:func:`ctrlab.fileio.atomic_write`).
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from ..fileio import atomic_write

__all__ = [
    "SEQUENCE_COLUMNS",
    "SEQUENCE_SCHEMA_HINT",
    "TARGET_POSITIVE_RATE",
    "SequenceWorld",
    "write_sequence_synthetic",
]

SEQUENCE_COLUMNS: tuple[str, ...] = (
    "label", "user_id", "item_id", "cate_id", "price", "hist_item_id", "hist_cate_id", "tags",
)

#: The layout of the file, column -> description (for the README and for schema inference).
#: ``max_length`` is the default; the real cap is the ``max_history`` the file was written with.
SEQUENCE_SCHEMA_HINT: dict[str, dict[str, Any]] = {
    "label": {"kind": "label"},
    "user_id": {"kind": "categorical"},
    "item_id": {"kind": "categorical"},
    "cate_id": {"kind": "categorical"},
    "price": {"kind": "numeric", "missing": "empty field"},
    "hist_item_id": {"kind": "sequence", "separator": "|", "max_length": 50, "order": "oldest first",
                     "vocabulary_of": "item_id"},
    "hist_cate_id": {"kind": "sequence", "separator": "|", "max_length": 50, "order": "oldest first",
                     "vocabulary_of": "cate_id"},
    "tags": {"kind": "multi_valued", "separator": "|", "weight_separator": ":", "max_values": 4},
}

TARGET_POSITIVE_RATE = 0.27

N_USERS = 2000
N_ITEMS = 5000
N_CATES = 50
N_TAGS = 40
MAX_TAGS = 4
RECENT = 10  # the "recent history" window of the planted signal

# Planted model coefficients (see the module docstring).
_A_RECENT_CATE = 2.5
_B_IN_HISTORY = 1.0
_PRICE_COEF = -0.25
_TAG_SIGMA = 0.3
_USER_SIGMA = 0.2
_NOISE_SIGMA = 0.3

_PRICE_MISSING = 0.05
_EMPTY_HISTORY = 0.08
_WEIGHTED_TAGS = 0.5
_TAG_COUNT_PMF = (0.15, 0.30, 0.25, 0.20, 0.10)  # 0..4 tags

_BLOCK_ROWS = 65_536
_CALIBRATION_ROWS = 50_000

_HEADER = "\t".join(SEQUENCE_COLUMNS) + "\n"


@dataclass
class _Block:
    """One block of rows as arrays; ``hist_offsets[r]:hist_offsets[r + 1]`` slices ``hist_items``."""

    label: np.ndarray  # int8 [n] (zeros until labelled)
    score: np.ndarray  # float64 [n], the logit without the bias
    user: np.ndarray
    item: np.ndarray
    price_missing: np.ndarray  # bool [n]
    hist_offsets: np.ndarray  # int64 [n + 1]
    hist_items: np.ndarray  # int64 [sum of lengths], oldest first per row
    tag_tokens: np.ndarray  # int64 [n, MAX_TAGS]: index into the tag-token table, -1 = no tag
    label_u: np.ndarray  # float64 [n], the uniforms that draw the labels


def _alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker/Vose alias table for drawing index i with probability weights[i] / sum (zeros allowed)."""
    k = weights.shape[0]
    scaled = np.asarray(weights, dtype=np.float64) * (k / weights.sum())
    prob = np.ones(k)
    alias = np.arange(k, dtype=np.int64)
    small = [i for i in range(k) if scaled[i] < 1.0]
    large = [i for i in range(k) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        prob[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return prob, alias  # leftovers (rounding) keep prob 1, alias to themselves


def _alias_draw(prob: np.ndarray, alias: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Indices drawn from an alias table with one uniform in [0, 1) each."""
    x = u * prob.shape[0]
    j = np.minimum(x.astype(np.int64), prob.shape[0] - 1)
    x -= j
    return np.where(x < prob[j], j, alias[j])


class SequenceWorld:
    """The fixed part of the data set for one seed: items, categories, prices, users, effects."""

    def __init__(self, seed: int = 0, max_history: int = 50):
        if max_history < 1:
            raise ValueError(f"max_history must be >= 1, got {max_history}")
        self.seed = int(seed)
        self.max_history = int(max_history)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0]))
        # Items: Zipf popularity over a random ranking; categories with a skewed size distribution,
        # each category owning at least one item.
        ranks = rng.permutation(N_ITEMS) + 1
        pop = ranks.astype(np.float64) ** -0.9
        self.item_pop = pop / pop.sum()
        cate_w = np.arange(1, N_CATES + 1, dtype=np.float64) ** -0.7
        cate_w = cate_w[rng.permutation(N_CATES)]
        item_cate = rng.choice(N_CATES, size=N_ITEMS, p=cate_w / cate_w.sum())
        item_cate[rng.permutation(N_ITEMS)[:N_CATES]] = np.arange(N_CATES)
        self.item_cate = item_cate.astype(np.int64)
        log_price = rng.normal(3.0, 0.8, size=N_ITEMS)
        self.item_price = np.round(np.exp(log_price), 2)
        self.item_price_z = (log_price - log_price.mean()) / log_price.std()
        # Alias tables (O(1) draws): one over all items, and one per category laid end to end over
        # the items sorted by category (alias entries are positions in that order).
        self._global_alias = _alias_table(self.item_pop)
        order = np.argsort(self.item_cate, kind="stable")
        self._cat_items = order
        self._cat_size = np.bincount(self.item_cate, minlength=N_CATES)
        self._cat_start = np.concatenate([[0], np.cumsum(self._cat_size)[:-1]])
        prob = np.empty(N_ITEMS)
        alias = np.empty(N_ITEMS, dtype=np.int64)
        for c in range(N_CATES):
            lo, hi = self._cat_start[c], self._cat_start[c] + self._cat_size[c]
            prob[lo:hi], alias[lo:hi] = _alias_table(self.item_pop[order[lo:hi]])
            alias[lo:hi] += lo
        self._cat_alias = (prob, alias)
        # Users: Zipf-ish activity, 2-4 preferred categories (popular categories more often) with
        # Dirichlet weights; unused preference slots have weight 0.
        uw = np.arange(1, N_USERS + 1, dtype=np.float64) ** -0.6
        uw = uw[rng.permutation(N_USERS)]
        self._user_cdf = np.cumsum(uw / uw.sum())
        self._user_cdf[-1] = 1.0
        gumbel = np.log(cate_w)[None, :] - np.log(-np.log(rng.random((N_USERS, N_CATES)) + 1e-300))
        self.user_prefs = np.argsort(-gumbel, axis=1)[:, :4].astype(np.int64)
        n_prefs = rng.integers(2, 5, size=N_USERS)
        w = rng.dirichlet(np.ones(4), size=N_USERS)
        w[np.arange(4)[None, :] >= n_prefs[:, None]] = 0.0
        self.user_pref_w = w / w.sum(axis=1, keepdims=True)
        pref_alias = [_alias_table(row) for row in self.user_pref_w]
        self._pref_prob = np.stack([a[0] for a in pref_alias])
        self._pref_alias = np.stack([a[1] for a in pref_alias])
        self.n_prefs = n_prefs
        self.user_effect = rng.normal(0.0, _USER_SIGMA, size=N_USERS)
        tag_w = np.arange(1, N_TAGS + 1, dtype=np.float64) ** -0.8
        self._tag_cdf = np.cumsum(tag_w / tag_w.sum())
        self._tag_cdf[-1] = 1.0
        self._tag_count_cdf = np.cumsum(_TAG_COUNT_PMF)
        self._tag_count_cdf[-1] = 1.0
        self.tag_effect = rng.normal(0.0, _TAG_SIGMA, size=N_TAGS)
        # Strings. Tag tokens: index t * 11 + k, k = 0 unweighted, k = 1..10 weight k / 10.
        self.user_str = np.array([f"u{i}" for i in range(N_USERS)], dtype=object)
        self.item_str = np.array([f"i{i}" for i in range(N_ITEMS)], dtype=object)
        self.cate_str = np.array([f"c{i}" for i in range(N_CATES)], dtype=object)
        self.price_str = np.array([f"{v:.2f}" for v in self.item_price] + [""], dtype=object)  # [-1] = missing
        self.tag_token_str = np.array(
            [f"t{t}" if k == 0 else f"t{t}:{k / 10:.1f}" for t in range(N_TAGS) for k in range(11)], dtype=object)
        tok_w = np.array([1.0 if k == 0 else k / 10 for _ in range(N_TAGS) for k in range(11)])
        self.tag_token_effect = np.append(np.repeat(self.tag_effect, 11) * tok_w, 0.0)  # [-1] = no tag
        self.bias = 0.0
        self._calibrate()

    # -- sampling ----------------------------------------------------------------------------
    def _items_in(self, cates: np.ndarray, u: np.ndarray) -> np.ndarray:
        """An item of category ``cates[i]`` by popularity, from uniforms ``u`` in [0, 1)."""
        prob, alias = self._cat_alias
        x = u * self._cat_size[cates]
        j = np.minimum(x.astype(np.int64), self._cat_size[cates] - 1)
        x -= j
        pos = j + self._cat_start[cates]
        return self._cat_items[np.where(x < prob[pos], pos, alias[pos])]

    def _global_items(self, u: np.ndarray) -> np.ndarray:
        """An item by global popularity, from uniforms ``u`` in [0, 1)."""
        return _alias_draw(*self._global_alias, u)

    def _pref_cate(self, users: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A preferred category of each user, by the user's preference weights."""
        x = u * 4
        j = np.minimum(x.astype(np.int64), 3)
        x -= j
        slot = np.where(x < self._pref_prob[users, j], j, self._pref_alias[users, j])
        return self.user_prefs[users, slot]

    def _other_pref_cate(self, users: np.ndarray, current: np.ndarray, u: np.ndarray) -> np.ndarray:
        """A preferred category other than ``current`` (uniform over the others)."""
        prefs = self.user_prefs[users]
        n = self.n_prefs[users]
        pos = (prefs == current[:, None]).argmax(axis=1)
        k = (u * (n - 1)).astype(np.int64)
        k += k >= pos
        return prefs[np.arange(users.shape[0]), np.minimum(k, n - 1)]

    def block(self, rng: np.random.Generator, n: int) -> _Block:
        """``n`` rows drawn from ``rng`` (a fixed sequence of draws, so the output is reproducible)."""
        mh = self.max_history
        user = np.minimum(np.searchsorted(self._user_cdf, rng.random(n), side="right"), N_USERS - 1)
        current = self._pref_cate(user, rng.random(n))
        # History lengths: 8% empty, otherwise 1 + exponential(mean 0.6 * max) capped at max.
        length = np.minimum(1 + np.floor(rng.exponential(0.6 * mh, size=n)), mh).astype(np.int64)
        length[rng.random(n) < _EMPTY_HISTORY] = 0
        offsets = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(length, out=offsets[1:])
        total = int(offsets[-1])
        row = np.repeat(np.arange(n), length)
        from_end = offsets[1:][row] - 1 - np.arange(total)  # 0 = the newest item
        recent = from_end < RECENT
        # History categories: recent -> current 60% / other preferred 25% / global 15%;
        # older -> preferred (by weight) 75% / global 25%.
        u_src = rng.random(total)
        u_cat = rng.random(total)
        u_item = rng.random(total)
        hu = user[row]
        cate = np.where(recent & (u_src < 0.60), current[row], -1)
        other = recent & (u_src >= 0.60) & (u_src < 0.85)
        cate[other] = self._other_pref_cate(hu[other], current[row][other], u_cat[other])
        older = ~recent & (u_src < 0.75)
        cate[older] = self._pref_cate(hu[older], u_cat[older])
        hist = np.empty(total, dtype=np.int64)
        has_cate = cate >= 0
        hist[has_cate] = self._items_in(cate[has_cate], u_item[has_cate])
        hist[~has_cate] = self._global_items(u_item[~has_cate])
        # Target: current 40% / other preferred 15% / copy of a recent history item 10% / global 35%.
        u_t = rng.random(n)
        u_tc = rng.random(n)
        u_ti = rng.random(n)
        n_recent = np.minimum(length, RECENT)
        item = self._global_items(u_ti)
        cur = u_t < 0.40
        item[cur] = self._items_in(current[cur], u_ti[cur])
        oth = (u_t >= 0.40) & (u_t < 0.55)
        item[oth] = self._items_in(self._other_pref_cate(user[oth], current[oth], u_tc[oth]), u_ti[oth])
        copy = (u_t >= 0.55) & (u_t < 0.65) & (n_recent > 0)
        pick = offsets[1:][copy] - 1 - (u_tc[copy] * n_recent[copy]).astype(np.int64)
        item[copy] = hist[pick]
        target_cate = self.item_cate[item]
        # Planted signal.
        match = recent & (self.item_cate[hist] == target_cate[row])
        frac = np.bincount(row, weights=match, minlength=n) / np.maximum(n_recent, 1)
        in_hist = np.bincount(row, weights=hist == item[row], minlength=n) > 0
        price_missing = rng.random(n) < _PRICE_MISSING
        # Tags: a count from _TAG_COUNT_PMF, tags by popularity with repeats inside a row dropped
        # (so a row has at most that many distinct tags), weights in about half of the rows.
        n_tags = np.searchsorted(self._tag_count_cdf, rng.random(n), side="right")
        top = np.minimum(np.searchsorted(self._tag_cdf, rng.random((n, MAX_TAGS)), side="right"), N_TAGS - 1)
        weighted = rng.random(n) < _WEIGHTED_TAGS
        k = np.where(weighted[:, None], rng.integers(1, 11, size=(n, MAX_TAGS)), 0)
        tokens = top * 11 + k
        drop = np.arange(MAX_TAGS)[None, :] >= n_tags[:, None]
        for j in range(1, MAX_TAGS):
            drop[:, j] |= (top[:, :j] == top[:, j:j + 1]).any(axis=1)
        tokens[drop] = -1
        score = (_A_RECENT_CATE * frac + _B_IN_HISTORY * in_hist
                 + np.where(price_missing, 0.0, _PRICE_COEF * self.item_price_z[item])
                 + self.tag_token_effect[tokens].sum(axis=1)
                 + self.user_effect[user]
                 + rng.normal(0.0, _NOISE_SIGMA, size=n))
        return _Block(np.zeros(n, dtype=np.int8), score, user, item, price_missing, offsets, hist, tokens,
                      rng.random(n))

    def _calibrate(self) -> None:
        """Newton on mean(sigmoid(bias + score)) = TARGET_POSITIVE_RATE over a separate sample."""
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 2]))
        s = self.block(rng, _CALIBRATION_ROWS).score
        b = math.log(TARGET_POSITIVE_RATE / (1.0 - TARGET_POSITIVE_RATE)) - float(np.median(s))
        for _ in range(50):
            p = 1.0 / (1.0 + np.exp(-(b + s)))
            f, df = p.mean() - TARGET_POSITIVE_RATE, (p * (1.0 - p)).mean()
            b -= f / df
            if abs(f) < 1e-10:
                break
        self.bias = float(b)

    def labelled_block(self, k: int, n: int) -> _Block:
        """Block ``k`` (rows ``k * _BLOCK_ROWS ..``) with labels drawn from the planted model."""
        blk = self.block(np.random.default_rng(np.random.SeedSequence([self.seed, 1, k])), n)
        prob = 1.0 / (1.0 + np.exp(-(self.bias + blk.score)))
        blk.label = (blk.label_u < prob).astype(np.int8)
        return blk

    # -- formatting --------------------------------------------------------------------------
    def format(self, blk: _Block) -> str:
        """The block's rows as TSV text (no header)."""
        off = blk.hist_offsets.tolist()
        hist_i = self.item_str[blk.hist_items].tolist()
        hist_c = self.cate_str[self.item_cate[blk.hist_items]].tolist()
        n = blk.label.shape[0]
        present = blk.tag_tokens >= 0
        tag_off = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(present.sum(axis=1), out=tag_off[1:])
        tags = self.tag_token_str[blk.tag_tokens[present]].tolist()  # row-major: each row's tags in order
        tag_off = tag_off.tolist()
        price = self.price_str[np.where(blk.price_missing, -1, blk.item)].tolist()
        heads = [
            f"{lab}\t{u}\t{i}\t{c}\t{p}\t"
            for lab, u, i, c, p in zip(blk.label.tolist(), self.user_str[blk.user].tolist(),
                                       self.item_str[blk.item].tolist(),
                                       self.cate_str[self.item_cate[blk.item]].tolist(), price)
        ]
        join = "|".join
        lines = [
            f"{heads[r]}{join(hist_i[off[r]:off[r + 1]])}\t{join(hist_c[off[r]:off[r + 1]])}\t"
            f"{join(tags[tag_off[r]:tag_off[r + 1]])}\n"
            for r in range(n)
        ]
        return "".join(lines)


def write_sequence_synthetic(
    path: str | os.PathLike,
    rows: int,
    *,
    seed: int = 0,
    max_history: int = 50,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``rows`` behaviour-sequence rows (with a header line) to ``path``; see the module docstring.

    The file is written under a temporary name and renamed when complete. Returns {path, rows,
    positives, positive_rate, mean_history_length, max_history, bytes, seconds, rows_per_s, seed}.
    """
    rows = int(rows)
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    max_history = int(max_history)
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    path = os.fspath(path)
    t0 = time.perf_counter()
    world = SequenceWorld(seed, max_history)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(tmp: Path) -> tuple[int, int]:
        positives = hist_total = 0
        with open(tmp, "w", encoding="ascii", newline="") as fh, \
                tqdm(total=rows, unit="rows", unit_scale=True, disable=not progress,
                     desc=os.path.basename(path), leave=False) as bar:
            fh.write(_HEADER)
            for k, start in enumerate(range(0, rows, _BLOCK_ROWS)):
                n = min(_BLOCK_ROWS, rows - start)
                blk = world.labelled_block(k, n)
                positives += int(blk.label.sum(dtype=np.int64))
                hist_total += int(blk.hist_offsets[-1])
                fh.write(world.format(blk))
                bar.update(n)
        return positives, hist_total

    positives, hist_total = atomic_write(path, write)
    seconds = time.perf_counter() - t0
    return {
        "path": path,
        "rows": rows,
        "positives": positives,
        "positive_rate": positives / rows if rows else 0.0,
        "mean_history_length": hist_total / rows if rows else 0.0,
        "max_history": max_history,
        "bytes": os.path.getsize(path),
        "seconds": seconds,
        "rows_per_s": rows / seconds if seconds > 0 else float("inf"),
        "seed": int(seed),
    }
