"""Synthetic multi-task logs (click AND conversion per impression) with planted, correlated tasks.

:func:`write_multitask_synthetic` writes a tab-separated file WITH a header line::

    click  conversion  user_id  item_id  cate_id  shop_id  device  hour  price  discount  user_activity
    [p_click  p_cvr]                                                              (only with truth=True)

* ``click``, ``conversion``: the two labels, ``0``/``1``. ``conversion`` is 1 only in rows where
  ``click`` is 1 (a conversion is only observed after a click).
* Categorical features (strings): ``user_id`` (``u17``; 5000 users, Zipf-like activity), ``item_id``
  (``i4321``; 4000 items, Zipf-like popularity), ``cate_id`` (``c8``; 50 categories) and ``shop_id``
  (``s120``; 400 shops) -- both fixed attributes of the item (an item has the same category and shop
  everywhere in the file), ``device`` (4 values: ``app_ios``, ``app_android``, ``web_pc``,
  ``web_mobile``) and ``hour`` (8 three-hour buckets ``h0`` = 00-03h .. ``h7`` = 21-24h, a daily
  traffic curve).
* Numeric features (an empty field = missing): ``price`` (the item's price, log-normal, 2
  decimals, missing in ~5% of the rows), ``discount`` (0.05..0.50 in steps of 0.05, empty -- no
  discount shown -- in ~40% of the rows), ``user_activity`` (the user's sessions per week, log-normal,
  1 decimal, missing in ~10% of the rows).
* ``p_click``, ``p_cvr`` (``truth=True`` only; 6 decimals): the TRUE probabilities
  ``sigmoid(f_click(x))`` and ``sigmoid(f_cvr(x))`` of the planted model below, for calibration
  studies. They are NOT features: a schema must leave the columns ``p_click`` and ``p_cvr`` out
  (:data:`TRUTH_COLUMNS`), or a model would be trained on the answer.

The planted model
-----------------
Every quantity is a function of the written features (no hidden per-row noise), so ``p_click`` and
``p_cvr`` are exactly ``P(click | x)`` and ``P(conversion | click, x)``::

    zp  = z(log price)           (standardised over items; 0 when price is missing)
    za  = z(log user_activity)   (standardised over users; 0 when user_activity is missing)
    d   = discount               (0 when missing)

    f_click = b_click + q_item[item] + k_item[item] + q_cate[cate] + u_click[user]
              + D_CLICK[device] + H_CLICK[hour] - 0.15 * zp + 4.0 * d + 0.25 * za
    f_cvr   = b_cvr   + q_item[item] - k_item[item] + q_cate[cate] + s_shop[shop] + u_cvr[user]
              + D_CVR[device]   + H_CVR[hour]   - 0.50 * zp - 5.0 * d

    click      ~ Bernoulli(sigmoid(f_click))
    conversion = click * Bernoulli(sigmoid(f_cvr))

with per-value effects drawn once per seed::

    q_item ~ N(0, 0.5^2)   item quality        SHARED by both tasks (same sign)
    q_cate ~ N(0, 0.3^2)   category quality    SHARED by both tasks (same sign)
    k_item ~ N(0, 0.3^2)   "clickbait": raises clicks, lowers conversion (opposite signs)
    s_shop ~ N(0, 0.4^2)   shop trust          conversion only
    u_click ~ N(0, 0.3^2), u_cvr ~ N(0, 0.4^2)  independent per-user effects, one per task

and fixed tables (in the order of :data:`DEVICES` / ``h0..h7``)::

    D_CLICK = ( 0.6,  0.6, -0.7,  0.3)      D_CVR = (-1.1, -1.2,  1.2, -0.5)
    H_CLICK = ( 0.6,  0.7, -0.3, -0.2, 0.0, 0.1,  0.3,  0.6)
    H_CVR   = (-1.1, -1.2,  0.4,  0.5, 0.3, 0.1, -0.3, -0.8)

The tasks are correlated (the shared item / category quality: over items the item-level parts of the
two logits correlate at about +0.5) but not the same: app traffic, night hours, discounts and
clickbait items draw clicks that rarely convert, while expensive items and good shops convert better
than their clicks suggest (over single impressions p_click and p_cvr even correlate negatively,
about -0.3). So the clicked impressions are NOT a representative sample of all impressions
(sample-selection bias): the mean of ``p_cvr`` over all impressions is well above its mean over the
clicked ones (by about +40..75% relative, depending on the seed; :func:`write_multitask_synthetic`
reports both). The observed conversions / clicks (~0.14) therefore underestimates the CVR of the
impression space, and a CVR model fitted on clicked rows only is trained on a population shifted
away from the one it is applied to: whatever part of ``f_cvr`` it cannot represent is averaged with
the clicked population's weights, which biases it on the whole impression space (the ESMM setting:
``P(click and conversion | x) = p_click * p_cvr`` is defined, and observed, on every impression).

``b_click`` and ``b_cvr`` are calibrated on a separate sample (same seed) so that the click rate over
impressions is about :data:`TARGET_CLICK_RATE` (0.07) and the conversion rate over impressions,
``mean(p_click * p_cvr)``, about :data:`TARGET_CONVERSION_RATE` (0.01).

Determinism
-----------
The world (popularities, item -> category / shop, prices, users, effects) is drawn from
``SeedSequence([seed, 0])``, the calibration sample from ``SeedSequence([seed, 2])``, and rows come
in blocks of :data:`_BLOCK_ROWS`, block ``k`` from ``SeedSequence([seed, 1, k])``, so the same
(seed, rows) gives byte-identical files (numpy's Generator streams are only promised stable within a
numpy version). The file is written under a temporary name and renamed when complete
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
    "DEVICES",
    "MULTITASK_COLUMNS",
    "TARGET_CLICK_RATE",
    "TARGET_CONVERSION_RATE",
    "TRUTH_COLUMNS",
    "MultitaskWorld",
    "write_multitask_synthetic",
]

LABEL_COLUMNS: tuple[str, ...] = ("click", "conversion")
FEATURE_COLUMNS: tuple[str, ...] = (
    "user_id", "item_id", "cate_id", "shop_id", "device", "hour", "price", "discount", "user_activity",
)
MULTITASK_COLUMNS: tuple[str, ...] = LABEL_COLUMNS + FEATURE_COLUMNS
#: Trailing columns written with ``truth=True``: the true probabilities, never features.
TRUTH_COLUMNS: tuple[str, ...] = ("p_click", "p_cvr")

TARGET_CLICK_RATE = 0.07
TARGET_CONVERSION_RATE = 0.01

N_USERS = 5000
N_ITEMS = 4000
N_CATES = 50
N_SHOPS = 400
DEVICES: tuple[str, ...] = ("app_ios", "app_android", "web_pc", "web_mobile")
N_HOURS = 8

_DEVICE_PMF = (0.35, 0.35, 0.20, 0.10)
_HOUR_PMF = (0.04, 0.02, 0.08, 0.14, 0.16, 0.16, 0.18, 0.22)

# Planted model (see the module docstring).
_Q_ITEM_SIGMA = 0.5
_Q_CATE_SIGMA = 0.3
_K_ITEM_SIGMA = 0.3
_S_SHOP_SIGMA = 0.4
_U_CLICK_SIGMA = 0.3
_U_CVR_SIGMA = 0.4
_D_CLICK = np.array([0.6, 0.6, -0.7, 0.3])
_D_CVR = np.array([-1.1, -1.2, 1.2, -0.5])
_H_CLICK = np.array([0.6, 0.7, -0.3, -0.2, 0.0, 0.1, 0.3, 0.6])
_H_CVR = np.array([-1.1, -1.2, 0.4, 0.5, 0.3, 0.1, -0.3, -0.8])
_PRICE_CLICK = -0.15
_PRICE_CVR = -0.50
_DISCOUNT_CLICK = 4.0
_DISCOUNT_CVR = -5.0
_ACTIVITY_CLICK = 0.25

_PRICE_MISSING = 0.05
_DISCOUNT_MISSING = 0.40
_ACTIVITY_MISSING = 0.10

_BLOCK_ROWS = 65_536
_CALIBRATION_ROWS = 100_000

_HEADER = "\t".join(MULTITASK_COLUMNS) + "\n"
_HEADER_TRUTH = "\t".join(MULTITASK_COLUMNS + TRUTH_COLUMNS) + "\n"


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _cdf(weights: np.ndarray) -> np.ndarray:
    c = np.cumsum(np.asarray(weights, dtype=np.float64) / np.sum(weights))
    c[-1] = 1.0
    return c


def _draw(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    return np.minimum(np.searchsorted(cdf, u, side="right"), cdf.shape[0] - 1)


@dataclass
class _Block:
    user: np.ndarray
    item: np.ndarray
    device: np.ndarray
    hour: np.ndarray
    price_missing: np.ndarray  # bool
    discount: np.ndarray  # int64 steps 1..10 (x 0.05), 0 = missing
    activity_missing: np.ndarray  # bool
    f_click: np.ndarray  # logits without the biases
    f_cvr: np.ndarray
    u_click: np.ndarray  # uniforms drawing the labels
    u_cvr: np.ndarray


class MultitaskWorld:
    """The fixed part of the data set for one seed: items, shops, users, per-value effects, biases."""

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, 0]))
        ranks = rng.permutation(N_ITEMS) + 1
        self._item_cdf = _cdf(ranks.astype(np.float64) ** -0.9)
        cate_w = (np.arange(1, N_CATES + 1, dtype=np.float64) ** -0.7)[rng.permutation(N_CATES)]
        self.item_cate = rng.choice(N_CATES, size=N_ITEMS, p=cate_w / cate_w.sum()).astype(np.int64)
        shop_w = (np.arange(1, N_SHOPS + 1, dtype=np.float64) ** -0.8)[rng.permutation(N_SHOPS)]
        self.item_shop = rng.choice(N_SHOPS, size=N_ITEMS, p=shop_w / shop_w.sum()).astype(np.int64)
        log_price = rng.normal(3.0, 0.9, size=N_ITEMS)
        self.item_price = np.round(np.exp(log_price), 2)
        self.item_price_z = (log_price - log_price.mean()) / log_price.std()
        uw = (np.arange(1, N_USERS + 1, dtype=np.float64) ** -0.6)[rng.permutation(N_USERS)]
        self._user_cdf = _cdf(uw)
        log_act = rng.normal(1.5, 0.7, size=N_USERS)
        self.user_activity = np.round(np.exp(log_act), 1)
        self.user_activity_z = (log_act - log_act.mean()) / log_act.std()
        self._device_cdf = _cdf(np.array(_DEVICE_PMF))
        self._hour_cdf = _cdf(np.array(_HOUR_PMF))
        # Effects.
        self.q_item = rng.normal(0.0, _Q_ITEM_SIGMA, size=N_ITEMS)
        self.q_cate = rng.normal(0.0, _Q_CATE_SIGMA, size=N_CATES)
        self.k_item = rng.normal(0.0, _K_ITEM_SIGMA, size=N_ITEMS)
        self.s_shop = rng.normal(0.0, _S_SHOP_SIGMA, size=N_SHOPS)
        self.u_click = rng.normal(0.0, _U_CLICK_SIGMA, size=N_USERS)
        self.u_cvr = rng.normal(0.0, _U_CVR_SIGMA, size=N_USERS)
        shared = self.q_item + self.q_cate[self.item_cate]
        self.item_click = shared + self.k_item + _PRICE_CLICK * self.item_price_z
        self.item_cvr = shared - self.k_item + self.s_shop[self.item_shop] + _PRICE_CVR * self.item_price_z
        # Strings.
        self.user_str = np.array([f"u{i}" for i in range(N_USERS)], dtype=object)
        self.item_str = np.array([f"i{i}" for i in range(N_ITEMS)], dtype=object)
        self.cate_str = np.array([f"c{i}" for i in range(N_CATES)], dtype=object)
        self.shop_str = np.array([f"s{i}" for i in range(N_SHOPS)], dtype=object)
        self.device_str = np.array(DEVICES, dtype=object)
        self.hour_str = np.array([f"h{i}" for i in range(N_HOURS)], dtype=object)
        self.price_str = np.array([f"{v:.2f}" for v in self.item_price] + [""], dtype=object)  # [-1] = missing
        self.activity_str = np.array([f"{v:.1f}" for v in self.user_activity] + [""], dtype=object)
        self.discount_str = np.array([""] + [f"{k * 0.05:.2f}" for k in range(1, 11)], dtype=object)
        self.b_click = 0.0
        self.b_cvr = 0.0
        self._calibrate()

    def block(self, rng: np.random.Generator, n: int) -> _Block:
        """``n`` impressions drawn from ``rng`` (a fixed sequence of draws, so the output is reproducible)."""
        user = _draw(self._user_cdf, rng.random(n))
        item = _draw(self._item_cdf, rng.random(n))
        device = _draw(self._device_cdf, rng.random(n))
        hour = _draw(self._hour_cdf, rng.random(n))
        price_missing = rng.random(n) < _PRICE_MISSING
        discount = np.where(rng.random(n) < _DISCOUNT_MISSING, 0, rng.integers(1, 11, size=n))
        activity_missing = rng.random(n) < _ACTIVITY_MISSING
        d = discount * 0.05
        zp = np.where(price_missing, 0.0, self.item_price_z[item])
        za = np.where(activity_missing, 0.0, self.user_activity_z[user])
        f_click = (self.item_click[item] - _PRICE_CLICK * (self.item_price_z[item] - zp)
                   + self.u_click[user] + _D_CLICK[device] + _H_CLICK[hour]
                   + _DISCOUNT_CLICK * d + _ACTIVITY_CLICK * za)
        f_cvr = (self.item_cvr[item] - _PRICE_CVR * (self.item_price_z[item] - zp)
                 + self.u_cvr[user] + _D_CVR[device] + _H_CVR[hour] + _DISCOUNT_CVR * d)
        return _Block(user, item, device, hour, price_missing, discount, activity_missing, f_click, f_cvr,
                      rng.random(n), rng.random(n))

    def _calibrate(self) -> None:
        """Newton on mean(p_click) = TARGET_CLICK_RATE, then on mean(p_click * p_cvr) = TARGET_CONVERSION_RATE."""
        blk = self.block(np.random.default_rng(np.random.SeedSequence([self.seed, 2])), _CALIBRATION_ROWS)

        def solve(s: np.ndarray, w: np.ndarray, target: float) -> float:
            t = target / float(w.mean())  # the rate the unweighted mean of p should have
            b = math.log(t / (1.0 - t)) - float(np.median(s))
            for _ in range(100):
                p = _sigmoid(b + s)
                f, df = (w * p).mean() - target, (w * p * (1.0 - p)).mean()
                b -= f / df
                if abs(f) < 1e-12:
                    break
            return float(b)

        self.b_click = solve(blk.f_click, np.ones_like(blk.f_click), TARGET_CLICK_RATE)
        self.b_cvr = solve(blk.f_cvr, _sigmoid(self.b_click + blk.f_click), TARGET_CONVERSION_RATE)

    def labelled_block(self, k: int, n: int) -> tuple[_Block, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Block ``k`` with (p_click, p_cvr, click, conversion) from the planted model."""
        blk = self.block(np.random.default_rng(np.random.SeedSequence([self.seed, 1, k])), n)
        p_click = _sigmoid(self.b_click + blk.f_click)
        p_cvr = _sigmoid(self.b_cvr + blk.f_cvr)
        click = (blk.u_click < p_click).astype(np.int8)
        conversion = (click.astype(bool) & (blk.u_cvr < p_cvr)).astype(np.int8)
        return blk, p_click, p_cvr, click, conversion

    def format(self, blk: _Block, click: np.ndarray, conversion: np.ndarray,
               p_click: np.ndarray | None = None, p_cvr: np.ndarray | None = None) -> str:
        """The block's rows as TSV text (no header); truth columns when ``p_click``/``p_cvr`` are given."""
        cols = [
            click.tolist(), conversion.tolist(),
            self.user_str[blk.user].tolist(), self.item_str[blk.item].tolist(),
            self.cate_str[self.item_cate[blk.item]].tolist(), self.shop_str[self.item_shop[blk.item]].tolist(),
            self.device_str[blk.device].tolist(), self.hour_str[blk.hour].tolist(),
            self.price_str[np.where(blk.price_missing, -1, blk.item)].tolist(),
            self.discount_str[blk.discount].tolist(),
            self.activity_str[np.where(blk.activity_missing, -1, blk.user)].tolist(),
        ]
        if p_click is not None and p_cvr is not None:
            cols.append([f"{v:.6f}" for v in p_click.tolist()])
            cols.append([f"{v:.6f}" for v in p_cvr.tolist()])
        return "".join("\t".join(map(str, row)) + "\n" for row in zip(*cols))


def write_multitask_synthetic(
    path: str | os.PathLike,
    rows: int,
    *,
    seed: int = 0,
    truth: bool = False,
    progress: bool = False,
) -> dict[str, Any]:
    """Write ``rows`` impressions (with a header line) to ``path``; see the module docstring.

    Returns {path, rows, bytes, clicks, conversions, click_rate, conversion_rate (over impressions),
    cvr_given_click (observed: conversions / clicks), mean_p_click, mean_p_cvr_all (the true p_cvr
    averaged over all impressions), mean_p_cvr_clicked (averaged over the clicked ones), truth,
    seconds, rows_per_s, seed}.
    """
    rows = int(rows)
    if rows < 0:
        raise ValueError(f"rows must be >= 0, got {rows}")
    path = os.fspath(path)
    t0 = time.perf_counter()
    world = MultitaskWorld(seed)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)

    def write(tmp: Path) -> dict[str, float]:
        acc = {"clicks": 0, "conversions": 0, "p_click": 0.0, "p_cvr": 0.0, "p_cvr_clicked": 0.0}
        with open(tmp, "w", encoding="ascii", newline="") as fh, \
                tqdm(total=rows, unit="rows", unit_scale=True, disable=not progress,
                     desc=os.path.basename(path), leave=False) as bar:
            fh.write(_HEADER_TRUTH if truth else _HEADER)
            for k, start in enumerate(range(0, rows, _BLOCK_ROWS)):
                n = min(_BLOCK_ROWS, rows - start)
                blk, p_click, p_cvr, click, conversion = world.labelled_block(k, n)
                acc["clicks"] += int(click.sum(dtype=np.int64))
                acc["conversions"] += int(conversion.sum(dtype=np.int64))
                acc["p_click"] += float(p_click.sum())
                acc["p_cvr"] += float(p_cvr.sum())
                acc["p_cvr_clicked"] += float(p_cvr[click.astype(bool)].sum())
                fh.write(world.format(blk, click, conversion, *((p_click, p_cvr) if truth else ())))
                bar.update(n)
        return acc

    acc = atomic_write(path, write)
    seconds = time.perf_counter() - t0
    clicks, conversions = int(acc["clicks"]), int(acc["conversions"])
    return {
        "path": path,
        "rows": rows,
        "bytes": os.path.getsize(path),
        "clicks": clicks,
        "conversions": conversions,
        "click_rate": clicks / rows if rows else 0.0,
        "conversion_rate": conversions / rows if rows else 0.0,
        "cvr_given_click": conversions / clicks if clicks else 0.0,
        "mean_p_click": acc["p_click"] / rows if rows else 0.0,
        "mean_p_cvr_all": acc["p_cvr"] / rows if rows else 0.0,
        "mean_p_cvr_clicked": acc["p_cvr_clicked"] / clicks if clicks else 0.0,
        "truth": bool(truth),
        "seconds": seconds,
        "rows_per_s": rows / seconds if seconds > 0 else float("inf"),
        "seed": int(seed),
    }
