"""Per-task exact metrics of several labels (ctrlab.metrics): each task over its labelled rows,
the mean over the tasks, ESMM / AITM click-and-conversion labels."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctrlab.data.store import MISSING_LABEL
from ctrlab.metrics import MISSING_LABEL as METRICS_MISSING_LABEL
from ctrlab.metrics import click_and_conversion_labels, evaluate_task_scores, finite_mean, log_loss, roc_auc

TASKS = ["click", "conversion"]


def test_missing_label_is_the_stores():
    assert METRICS_MISSING_LABEL == MISSING_LABEL


def test_evaluate_task_scores_per_task_on_labelled_rows():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=(200, 2)).astype(np.uint8)
    labels[rng.random(200) < 0.5, 1] = MISSING_LABEL
    probs = rng.random((200, 2))
    res = evaluate_task_scores(labels, probs, TASKS)
    for t, name in enumerate(TASKS):
        keep = labels[:, t] != MISSING_LABEL
        assert res[f"auc/{name}"] == roc_auc(labels[keep, t], probs[keep, t])
        assert res[f"logloss/{name}"] == log_loss(labels[keep, t], probs[keep, t])
        assert res[f"rows/{name}"] == int(keep.sum())
    assert res["auc"] == pytest.approx((res["auc/click"] + res["auc/conversion"]) / 2, rel=1e-15)
    assert res["logloss"] == pytest.approx((res["logloss/click"] + res["logloss/conversion"]) / 2, rel=1e-15)
    assert res["rows"] == 200
    labels[:, 1] = np.where(labels[:, 1] == MISSING_LABEL, MISSING_LABEL, 0)  # one class: NaN, left out of the mean
    res = evaluate_task_scores(labels, probs, TASKS)
    assert math.isnan(res["auc/conversion"]) and res["auc"] == res["auc/click"]


def test_evaluate_task_scores_checks_shapes():
    with pytest.raises(ValueError, match="tasks"):
        evaluate_task_scores(np.zeros((4, 2)), np.zeros((4, 3)), TASKS)
    with pytest.raises(ValueError, match="tasks"):
        evaluate_task_scores(np.zeros((4, 2)), np.zeros((4, 2)), ["click"])


def test_click_and_conversion_labels():
    labels = np.array([[0, MISSING_LABEL], [0, 1], [0, 0], [1, MISSING_LABEL], [1, 1], [1, 0]], dtype=np.uint8)
    out = click_and_conversion_labels(labels)
    assert out.tolist() == [[0, 0], [0, 0], [0, 0], [1, MISSING_LABEL], [1, 1], [1, 0]]
    assert labels[0, 1] == MISSING_LABEL  # the input is not changed


def test_finite_mean():
    assert finite_mean([0.5, float("nan"), 0.7]) == pytest.approx(0.6)
    assert math.isnan(finite_mean([float("nan")]))
