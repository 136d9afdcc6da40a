"""Exact metrics over a whole evaluated set: ROC AUC (ties handled) and logloss.

Never an average of per-batch values: callers collect every prediction of the set (the last
partial batch included) and call these once. The same functions serve training, ``ctrlab
eval``, ``ctrlab predict`` and distributed evaluation (after gathering all ranks' scores).
"""

from __future__ import annotations

import numpy as np

LOGLOSS_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps] (float32 sigmoid can round to 0/1)


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the probability that a random positive outscores a random
    negative, ties counting one half (the Mann-Whitney U statistic with average ranks).

    Exact, O(n log n). Returns NaN when the labels hold one class only.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != s.shape:
        raise ValueError(f"labels and scores differ in length: {y.shape[0]} vs {s.shape[0]}")
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # average rank (1-based) of each tie group
    boundaries = np.flatnonzero(np.diff(s_sorted)) + 1
    starts = np.concatenate(([0], boundaries))
    ends = np.concatenate((boundaries, [s.size]))
    avg_rank = (starts + ends + 1) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.repeat(avg_rank, ends - starts)
    pos_rank_sum = ranks[y[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def log_loss(labels: np.ndarray, probabilities: np.ndarray, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy of probabilities (clipped to [eps, 1 - eps])."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.clip(np.asarray(probabilities, dtype=np.float64).ravel(), eps, 1.0 - eps)
    if y.shape != p.shape:
        raise ValueError(f"labels and probabilities differ in length: {y.shape[0]} vs {p.shape[0]}")
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def evaluate_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    """The metrics ctrlab reports for a scored set."""
    return {
        "auc": roc_auc(labels, probabilities),
        "logloss": log_loss(labels, probabilities),
        "rows": int(np.asarray(labels).size),
        "positive_rate": float(np.mean(labels)) if np.asarray(labels).size else float("nan"),
    }
