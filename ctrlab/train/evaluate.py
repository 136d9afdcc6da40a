"""Scoring a stored split with a torch model: the probabilities and the exact metrics every
training, evaluation and experiment path reports (AUC and logloss over every row, see
:mod:`ctrlab.metrics`). Used by the trainer, ``ctrlab eval``, the distributed evaluation (each
rank scores its block) and the experiments' per-row scores.

Several labels (a multi-task store, label.npy ``uint8[N, T]``), described by a :class:`TaskSetup`:

- a multi-task model (logits ``[B, T]``): every task scored over its labelled rows (``auc/<task>``,
  ``logloss/<task>``, ``rows/<task>``, ``positive_rate/<task>``), ``auc`` and ``logloss`` the mean
  over the tasks. ESMM and AITM (task 1 = click AND conversion over all impressions): task 1's
  label is 0 wherever click is 0 (:func:`ctrlab.metrics.click_and_conversion_labels`), so its AUC
  is the CTCVR AUC over all rows (also written as ``ctcvr_auc``); a model with ``cvr_logits``
  (ESMM) adds ``cvr_auc`` / ``cvr_logloss`` / ``cvr_rows``: its CVR tower on the clicked rows with a
  conversion label, as the ESMM paper reports them.
- ``train.task`` (a single-task model on one task's column): that column's labelled rows;
  ``auc``, ``logloss`` and also ``auc/<task>``, ``logloss/<task>``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..data.batches import BatchIterator
from ..data.store import SplitArrays, Store
from ..metrics import (click_and_conversion_labels, evaluate_scores, evaluate_task_scores, labelled_rows,
                       log_loss, roc_auc)

#: models whose task 1 is "click AND conversion" over the entire impression space (task 0: click)
CLICK_AND_CONVERSION_MODELS = ("esmm", "aitm")


@dataclass(frozen=True)
class TaskSetup:
    """How a run's model meets its store's labels (None for a single-label store and model)."""

    tasks: tuple[str, ...]  # the store's tasks, in label.npy column order
    task: int | None = None  # train.task: the column a single-task model trains on
    click_and_conversion: bool = False  # ESMM / AITM labels (task 1 = click and conversion)
    cvr: bool = False  # the model has cvr_logits: also score its CVR tower (one more column)

    @property
    def multi(self) -> bool:
        return self.task is None

    @property
    def names(self) -> list[str]:
        """The tasks this run reports (train.task: that one)."""
        return list(self.tasks) if self.task is None else [self.tasks[self.task]]


def task_setup(model: torch.nn.Module, store: Store, task: str | None) -> TaskSetup | None:
    """The run's :class:`TaskSetup`; None for a single-task model on a single-label store (checked
    against each other by :func:`ctrlab.train.run.check_tasks`)."""
    tasks = tuple(store.tasks)
    if not store.multi_task:
        return None
    if task is not None:
        return TaskSetup(tasks, task=tasks.index(task))
    name = getattr(model, "model_name", "")
    return TaskSetup(tasks, click_and_conversion=name in CLICK_AND_CONVERSION_MODELS and len(tasks) == 2,
                     cvr=callable(getattr(model, "cvr_logits", None)))


def split_labels(split: SplitArrays, setup: TaskSetup | None) -> np.ndarray:
    """The labels a run's metrics and loss see: uint8[n] (single label, or train.task's column,
    MISSING_LABEL kept) or uint8[n, T] (ESMM / AITM: click-and-conversion labels)."""
    labels = np.asarray(split.label)
    if setup is None:
        return labels
    if setup.task is not None:
        return labels[:, setup.task]
    return click_and_conversion_labels(labels) if setup.click_and_conversion else labels


def _scores(model: torch.nn.Module, dense: torch.Tensor, sparse: torch.Tensor, cvr: bool) -> torch.Tensor:
    logits = model(dense, sparse)
    if cvr:
        logits = torch.cat([logits, model.cvr_logits(dense, sparse).reshape(-1, 1)], dim=1)
    return logits


@torch.no_grad()
def predict_split(model: torch.nn.Module, split: SplitArrays, batch_size: int,
                  device: torch.device, *, cvr: bool = False) -> np.ndarray:
    """Probabilities for every row of a split, in stored order (last partial batch included):
    f32[n] for a single-task model, f32[n, T] for a multi-task one (one column per task; with
    ``cvr``, one more column: the CVR tower's pCVR, ESMM)."""
    was_training = model.training
    model.eval()
    out: np.ndarray | None = None
    pos = 0
    for dense, sparse, _ in BatchIterator(split, batch_size, shuffle=False, device=device):
        p = torch.sigmoid(_scores(model, dense, sparse, cvr)).float().cpu().numpy()
        if out is None:
            out = np.empty((len(split),) + p.shape[1:], dtype=np.float32)
        out[pos: pos + len(p)] = p
        pos += len(p)
    if pos != len(split):  # a broken iterator must not pass silently
        raise RuntimeError(f"evaluated {pos} rows of {len(split)}")
    model.train(was_training)
    assert out is not None
    return out


def score_split(labels: np.ndarray, probs: np.ndarray, setup: TaskSetup | None) -> dict[str, float]:
    """The metrics of a scored split (``labels`` as :func:`split_labels` gives them, ``probs`` as
    :func:`predict_split` with ``cvr=setup.cvr``)."""
    if setup is None:
        return evaluate_scores(labels, probs)
    if setup.task is not None:
        keep = labelled_rows(labels)
        res = evaluate_scores(labels[keep], probs[keep])
        name = setup.tasks[setup.task]
        res[f"auc/{name}"], res[f"logloss/{name}"] = res["auc"], res["logloss"]
        return res
    width = len(setup.tasks)
    res = evaluate_task_scores(labels, probs[:, :width], list(setup.tasks))
    if setup.click_and_conversion:
        res["ctcvr_auc"] = res[f"auc/{setup.tasks[1]}"]
    if setup.cvr:
        clicked = (labels[:, 0] == 1) & labelled_rows(labels[:, 1])
        y, p = labels[clicked, 1], probs[clicked, width]
        res["cvr_auc"], res["cvr_logloss"], res["cvr_rows"] = roc_auc(y, p), log_loss(y, p), int(clicked.sum())
    return res


def evaluate(model: torch.nn.Module, split: SplitArrays, batch_size: int, device: torch.device,
             setup: TaskSetup | None = None) -> dict[str, float]:
    """Exact metrics of a split (``auc``, ``logloss``, ``rows``, ...: :func:`ctrlab.metrics.evaluate_scores`;
    per task with a ``setup``: :func:`score_split`)."""
    probs = predict_split(model, split, batch_size, device, cvr=bool(setup and setup.cvr))
    return score_split(split_labels(split, setup), probs, setup)
