"""Experiment and tune directories on disk, and their readers: what the results table, the charts
and the report read without training anything (no torch here). Each run inside is an ordinary run
directory (:class:`ctrlab.train.rundir.RunDir`)::

    EXP_DIR/experiment.json     the plan and the status of every run (``ctrlab compare`` / ``sweep``)
    EXP_DIR/runs/<run>/         the run directories
    EXP_DIR/store/              the one store, when prepared from ``data.train`` (no ``data.store``)
    EXP_DIR/.lock               held (flock) while a process works on the experiment
    OUT/tune.json               ``ctrlab tune``: base config, space, every trial, the best one
    OUT/store/                  as EXP_DIR/store
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import zipfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from ..fileio import write_bytes_atomic
from ..metrics import MISSING_LABEL, finite_mean, roc_auc
from ..train.rundir import RunDir

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: experiments are not locked
    fcntl = None

MANIFEST = "experiment.json"
LOCK = ".lock"
RUNS_DIR = "runs"
STORE_DIR = "store"
TUNE_MANIFEST = "tune.json"
#: what a tune trial is selected on; its records in tune.json carry the value under this key
OBJECTIVE = "valid_auc"
#: a scores file must reproduce its run's AUC to this precision: the same weights and function as
#: the run's test AUC, but a full-batch (L-BFGS) run's validation AUC is computed in float64, and a
#: float32 rescoring can reorder near-ties (3e-5 seen on 290 rows); another run's file is off by more
SCORES_AUC_TOLERANCE = 1e-3


def now() -> str:
    """The local time as ISO 8601 text (manifests' created / updated)."""
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def slugify(text: str) -> str:
    """A directory- and file-safe name: ``hidden_units=[400, 400]`` -> ``hidden_units=400-400``."""
    text = re.sub(r"[\[\]{}()'\"]", "", text)
    text = re.sub(r"[,\s:/\\]+", "-", text)
    text = re.sub(r"[^A-Za-z0-9._=+-]", "-", text).strip("-.")
    if len(text) > 120:
        text = text[:110] + "-" + hashlib.sha1(text.encode()).hexdigest()[:8]
    return text or "point"


# --------------------------------------------------------------------------------------------
# experiment.json and the runs it lists
# --------------------------------------------------------------------------------------------

def read_manifest(exp_dir: str | Path) -> dict[str, Any]:
    path = Path(exp_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{exp_dir}: not an experiment directory (no {MANIFEST}); "
                                "run `ctrlab compare` or `ctrlab sweep` with --out there first")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def write_manifest(exp_dir: Path, manifest: dict[str, Any]) -> None:
    """experiment.json, replaced whole (values YAML may parse into, such as dates, as text)."""
    write_bytes_atomic(exp_dir / MANIFEST, (json.dumps(manifest, indent=1, default=str) + "\n").encode())


def load_experiment_runs(exp_dir: Path, manifest: dict[str, Any]) -> list[dict[str, Any]]:
    """The manifest's runs with their directory (``path``) and summary (None while unfinished)."""
    out = []
    for run in manifest["runs"]:
        run_dir = exp_dir / run["dir"]
        out.append({**run, "path": run_dir, "summary": RunDir(run_dir).read_summary()})
    return out


def read_scores(run_dir: Path, split: str, summary: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels uint8[n], scores f32[n]) of a finished run on a split, or ``[n, T]`` both for a
    multi-task run (MISSING_LABEL where a row has no label for a task), verified against its
    summary; None when the run has no scores file. Raises ValueError naming the file when it does
    not belong to the run."""
    run = RunDir(run_dir)
    path = run.scores(split)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            labels, scores = data["labels"], data["scores"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{path}: unreadable scores file ({type(exc).__name__}: {exc})") from None
    if labels.ndim not in (1, 2) or labels.shape != scores.shape:
        raise ValueError(f"{path}: labels {labels.shape} and scores {scores.shape} differ in shape")
    rows = summary.get(f"{split}_rows")
    labelled = int((labels != MISSING_LABEL).sum()) if labels.ndim == 1 else len(labels)
    if rows is not None and rows not in (len(labels), labelled):  # (train.task: its labelled rows)
        raise ValueError(f"{path}: {len(labels)} rows, but the run's {run.summary.name} says {rows}")
    expected, got = summary.get(f"{split}_auc"), scores_auc(labels, scores)
    if expected is None or not abs(got - expected) <= SCORES_AUC_TOLERANCE:
        raise ValueError(f"{path}: AUC {got:.6f}, but the run's {run.summary.name} says {expected}: the file is "
                         "not this run's; delete it and run the command again to rescore")
    return labels, scores


def task_columns(labels: np.ndarray, scores: np.ndarray, task: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One task's labelled rows: (labels, scores) of column ``task`` (None: a one-label file)."""
    y, s = (labels, scores) if task is None else (labels[:, task], scores[:, task])
    keep = y != MISSING_LABEL
    return y[keep], s[keep]


def scores_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """The AUC a run reports for its scores: over the labelled rows; the mean over the tasks of a
    multi-task run (as its ``auc``: :func:`ctrlab.metrics.finite_mean`)."""
    if labels.ndim == 1:
        return roc_auc(*task_columns(labels, scores))
    return finite_mean([roc_auc(*task_columns(labels, scores, t)) for t in range(labels.shape[1])])


@contextlib.contextmanager
def experiment_lock(exp_dir: Path) -> Iterator[None]:
    """One process at a time per experiment directory: two would train the same runs into the
    same directories. The lock is an flock on EXP_DIR/.lock, released by the OS if the process dies."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fh = open(exp_dir / LOCK, "a+", encoding="utf-8")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            holder = fh.read().strip() or "another process"
            raise RuntimeError(f"{exp_dir} is in use by another ctrlab compare/sweep ({holder}); wait for it "
                               "to finish or stop it, then run again (finished runs are kept)") from None
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, since {now()}\n")
        fh.flush()
        yield
    finally:
        fh.close()  # closing releases the flock


# --------------------------------------------------------------------------------------------
# tune.json
# --------------------------------------------------------------------------------------------

def read_tune_manifest(out: str | Path) -> dict[str, Any]:
    path = Path(out) / TUNE_MANIFEST
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except ValueError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); rerun `ctrlab tune` with the same --out to rewrite it")
    if not isinstance(data, dict) or data.get("kind") != "tune" or not isinstance(data.get("trials"), list):
        raise ValueError(f"{path}: not a ctrlab tune manifest (kind 'tune' with a trials list)")
    return data
