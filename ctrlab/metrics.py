"""Exact metrics over a whole evaluated set: ROC AUC (ties handled) and logloss.

Never an average of per-batch values: callers collect every prediction of the set (the last
partial batch included) and call these once. The same functions serve training, ``ctrlab
eval``, ``ctrlab predict`` and distributed evaluation (after gathering all ranks' scores).
"""

from __future__ import annotations

import numpy as np

LOGLOSS_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] (float32 sigmoid can round to 0/1)


def midranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` with ties given their average rank (f64[n]), O(n log n)."""
    x = np.asarray(values, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    x_sorted = x[order]
    boundaries = np.flatnonzero(np.diff(x_sorted)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [x.size]))
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # mean of ranks starts+1 .. ends
    return ranks


def auc_placements(labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """DeLong's structural components (placement values) of the ROC AUC.

    Returns ``(v10, v01)``: ``v10[i]`` (f64[n_pos]) is the fraction of negatives that positive i
    outscores, ``v01[j]`` (f64[n_neg]) the fraction of positives that outscore negative j, ties
    counting one half. The AUC is the mean of either. Exact, O(n log n) with midranks (DeLong,
    DeLong & Clarke-Pearson 1988; Sun & Xu 2014). Empty arrays when a class is missing.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return np.empty(0), np.empty(0)
    ranks = midranks(s)
    # a positive's rank among all rows minus its rank among the positives = negatives below it
    v10 = (ranks[y] - midranks(s[y])) / n_neg
    v01 = 1.0 - (ranks[~y] - midranks(s[~y])) / n_pos
    return v10, v01


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative, ties counting one half (the Mann-Whitney U statistic with average ranks).

    Exact, O(n log n). Returns NaN when the labels hold one class only.
    """
    v10, _ = auc_placements(labels, scores)
    return float(v10.mean()) if v10.size else float("nan")


def row_log_losses(labels: np.ndarray, probabilities: np.ndarray, eps: float = LOGLOSS_EPS) -> np.ndarray:
    """Binary cross-entropy of every row (f64[n]), probabilities clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.shape[0]} vs {p.shape[0]}")
    return -(y * np.log(p) + (1.0 - y) * np.log1p(-p))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1 - eps])."""
    losses = row_log_losses(labels, probabilities, eps)
    return float(losses.mean()) if losses.size else float("nan")


def evaluate_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """The metrics ctrlab reports for a scored set."""
    return {
        "auc": roc_auc(labels, probabilities),
        "logloss": log_loss(labels, probabilities),
        "rows": int(np.asarray(labels).size),
        "positive_rate": float(np.mean(labels)) if np.asarray(labels).size else float("nan"),
    }
