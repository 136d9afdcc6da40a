"""Exact metrics over a whole evaluated set: ROC AUC (ties handled) and logloss.

Never an average of per-batch values: callers collect every prediction of the set (the last
partial batch included) and call these once. The same functions serve training, ``ctrlab
eval``, ``ctrlab predict`` and distributed evaluation (after gathering all ranks' scores).
"""

from __future__ import annotations

import math

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


# --------------------------------------------------------------------------------------------
# several tasks (a multi-task store's label.npy is uint8[N, T]; MISSING_LABEL = no label)
# --------------------------------------------------------------------------------------------

MISSING_LABEL = 255  # the same value as ctrlab.data.store.MISSING_LABEL (a row's label is missing)


def labelled_rows(labels: np.ndarray) -> np.ndarray:
    """bool[n]: the rows of one task's label column that carry a label (not MISSING_LABEL)."""
    return np.asarray(labels) != MISSING_LABEL


def finite_mean(values: list[float]) -> float:
    """The mean of the finite values (a task whose AUC is undefined on a split, e.g. no positive
    there, does not make the mean NaN); NaN when none is finite."""
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def evaluate_task_scores(labels: np.ndarray, probabilities: np.ndarray, tasks: list[str]) -> dict[str, float]:
    """Exact per-task metrics of a multi-task scored set.

    ``labels`` uint8/float ``[n, T]`` (MISSING_LABEL where a row has no label for a task),
    ``probabilities`` ``[n, T]``. Each task is scored over its labelled rows only. Keys:
    ``auc/<task>``, ``logloss/<task>``, ``rows/<task>`` (labelled rows), ``positive_rate/<task>``,
    and ``auc``, ``logloss``: the mean over the tasks (:func:`finite_mean`); ``rows``: all rows."""
    y = np.asarray(labels)
    p = np.asarray(probabilities)
    if y.ndim != 2 or y.shape != p.shape or y.shape[1] != len(tasks):
        raise ValueError(f"labels {y.shape} and probabilities {p.shape} do not match {len(tasks)} tasks")
    out: dict[str, float] = {}
    for t, name in enumerate(tasks):
        keep = labelled_rows(y[:, t])
        scores = evaluate_scores(y[keep, t], p[keep, t])
        out[f"auc/{name}"], out[f"logloss/{name}"] = scores["auc"], scores["logloss"]
        out[f"rows/{name}"], out[f"positive_rate/{name}"] = scores["rows"], scores["positive_rate"]
    out["auc"] = finite_mean([out[f"auc/{name}"] for name in tasks])
    out["logloss"] = finite_mean([out[f"logloss/{name}"] for name in tasks])
    out["rows"] = int(y.shape[0])
    return out


def click_and_conversion_labels(labels: np.ndarray) -> np.ndarray:
    """ESMM / AITM labels ``[n, 2]``: task 0 the click, task 1 "click AND conversion" over the
    entire impression space: 0 wherever click is 0 (a missing conversion of an unclicked row is a
    known 0), the conversion label where click is 1 (MISSING_LABEL stays missing there)."""
    y = np.array(labels, copy=True)
    y[y[:, 0] == 0, 1] = 0
    return y
