"""Multi-task training (issue 16): several labels at once.

On a tiny prepared two-label store (click depends on one feature, conversion on another and only
after a click; conversion missing on most unclicked rows): the masked per-task loss against a
loop-written reference, task weights, per-task exact metrics, ESMM's entire-space labels and CVR
AUC, ``train.task`` (one single-task model per task), the config errors of mismatched model and
store, learning (mmoe, esmm), exact resume and early stopping on ``train.monitor_task``."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

import ctrlab.train.trainer as trainer_mod
from ctrlab.config import ConfigError, load_config
from ctrlab.data.batches import BatchIterator
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.store import MISSING_LABEL, Store
from ctrlab.metrics import click_and_conversion_labels, log_loss, roc_auc
from ctrlab.models import build_model
from ctrlab.schema import GenericSchemaConfig
from ctrlab.train.run import run_eval, run_training
from ctrlab.train.trainer import Trainer, load_weights, multitask_loss
from conftest import Crash, crashing_iterator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = 3000
TASKS = ["click", "conversion"]


def write_tsv(path: Path, rows: int, seed: int, *, multi: bool = True) -> None:
    """click ~ the ad (ads a0..a4: 0.75, a5..a9: 0.08); conversion, after a click only, ~ the shop
    (s0, s1: 0.8, others 0.1); conversion empty (missing) on 70% of the unclicked rows."""
    rng = np.random.default_rng(seed)
    ad = rng.integers(0, 10, rows)
    shop = rng.integers(0, 6, rows)
    user = rng.integers(0, 30, rows)
    price = np.round(rng.uniform(0, 10, rows), 2)
    click = rng.random(rows) < np.where(ad < 5, 0.75, 0.08)
    conversion = click & (rng.random(rows) < np.where(shop < 2, 0.8, 0.1))
    missing = ~click & (rng.random(rows) < 0.7)
    lines = ["click\tconversion\tad\tshop\tuser\tprice" if multi else "click\tad\tshop\tuser\tprice"]
    for i in range(rows):
        conv = "" if missing[i] else str(int(conversion[i]))
        cells = [str(int(click[i]))] + ([conv] if multi else []) + [f"a{ad[i]}", f"s{shop[i]}", f"u{user[i]}",
                                                                   f"{price[i]}"]
        lines.append("\t".join(cells))
    path.write_text("\n".join(lines) + "\n")


def make_store(root: Path, *, multi: bool = True) -> Path:
    raw = root / "mt.tsv"
    write_tsv(raw, ROWS, seed=3, multi=multi)
    schema = GenericSchemaConfig(label=TASKS if multi else "click", dense=["price"],
                                 optional_labels=["conversion"] if multi else [])
    prepare(PrepareOptions(train=[str(raw)], format="tsv", schema=schema), root / "store", progress=False,
            log=lambda _msg: None)
    return root / "store"


@pytest.fixture(scope="module")
def mt_store(tmp_path_factory) -> Path:
    store = make_store(tmp_path_factory.mktemp("mt_store"))
    s = Store(store)
    assert s.tasks == TASKS and s.multi_task and s.split("train").label.shape[1] == 2
    return store


@pytest.fixture(scope="module")
def single_store(tmp_path_factory) -> Path:
    return make_store(tmp_path_factory.mktemp("single_store"), multi=False)


def make_cfg(store: Path, run_dir: Path, *overrides: str, model: str = "mmoe"):
    base = [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(run_dir))}", f"model.name={model}",
            *([] if model == "lr" else ["model.params.embedding_dim=4"]), "train.threads=1", "train.epochs=2",
            "train.batch_size=64", "train.eval_batch_size=100", "train.lr=0.01", "train.log_every=5"]
    small = {"mmoe": ["model.params.expert_units=[16]", "model.params.tower_units=[8]", "model.params.num_experts=2"],
             "esmm": ["model.params.tower_units=[16]"], "dnn": ["model.params.hidden_units=[16]"]}
    return load_config(None, base + small.get(model, []) + list(overrides))


def quiet(_msg: str) -> None:
    pass


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def logits_of(model: torch.nn.Module, store: Store, split: str, cvr: bool = False) -> np.ndarray:
    arrays = store.split(split)
    model.eval()
    with torch.no_grad():
        dense = torch.from_numpy(np.array(arrays.dense))
        sparse = torch.from_numpy(np.array(arrays.sparse).astype(np.int64))
        out = model.cvr_logits(dense, sparse) if cvr else model(dense, sparse)
    return out.double().numpy()


def model_at(run_dir: Path, store: Store, epoch: int | None = None) -> torch.nn.Module:
    cfg = load_config(str(run_dir / "config.yaml"), [])
    model = build_model(cfg.model.name, store.spec, cfg.model.params)
    path = run_dir / "checkpoints" / (f"epoch_{epoch}.pt" if epoch else "last.pt")
    model.load_state_dict(load_weights(path))
    return model


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# --------------------------------------------------------------------------------------------
# batches
# --------------------------------------------------------------------------------------------


def test_batches_of_a_multi_task_split_and_of_a_row_subset(mt_store):
    split = Store(mt_store).split("valid")
    labels = np.asarray(split.label)
    got = torch.cat([y for _, _, y in BatchIterator(split, 64)])
    assert got.dtype == torch.float32 and got.shape == labels.shape
    assert torch.equal(got, torch.from_numpy(labels.astype(np.float32)))  # MISSING_LABEL kept as 255.0
    rows = np.flatnonzero(labels[:, 1] != MISSING_LABEL)
    column = labels[:, 1]
    view = type(split)(split.dense, split.sparse, split.label[:, 1])
    ordered = torch.cat([y for _, _, y in BatchIterator(view, 32, rows=rows)])
    assert torch.equal(ordered, torch.from_numpy(column[rows].astype(np.float32)))
    dense = torch.cat([d for d, _, _ in BatchIterator(view, 32, rows=rows, shuffle=True, seed=1)])
    assert sorted(map(tuple, dense.tolist())) == sorted(map(tuple, np.asarray(split.dense)[rows].tolist()))
    shares = [BatchIterator(view, 8, rows=rows, shuffle=True, rank=r, world_size=2).indices() for r in (0, 1)]
    assert not set(shares[0]) & set(shares[1]) and set(shares[0]) | set(shares[1]) <= set(rows)
    assert len(BatchIterator(view, 32, rows=rows)) == -(-len(rows) // 32)


# --------------------------------------------------------------------------------------------
# loss
# --------------------------------------------------------------------------------------------


def reference_loss(logits: np.ndarray, labels: np.ndarray, weights: list[float]) -> tuple[float, list[float]]:
    per_task = []
    for t in range(labels.shape[1]):
        terms = []
        for i in range(labels.shape[0]):
            y = labels[i, t]
            if y == MISSING_LABEL:
                continue
            p = 1.0 / (1.0 + math.exp(-logits[i, t]))
            terms.append(-(y * math.log(p) + (1 - y) * math.log(1 - p)))
        per_task.append(sum(terms) / len(terms) if terms else 0.0)
    return sum(w * v for w, v in zip(weights, per_task)), per_task


def test_masked_loss_matches_a_loop_reference():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(37, 3))
    labels = rng.integers(0, 2, size=(37, 3)).astype(np.float64)
    labels[rng.random((37, 3)) < 0.4] = MISSING_LABEL
    labels[:, 2] = MISSING_LABEL  # a task without a labelled row in the batch: 0, no NaN
    weights = [1.0, 2.5, 4.0]
    total, per_task = multitask_loss(torch.tensor(logits, requires_grad=True), torch.tensor(labels),
                                     torch.tensor(weights, dtype=torch.float64))
    ref_total, ref_per_task = reference_loss(logits, labels, weights)
    assert float(total.detach()) == pytest.approx(ref_total, rel=1e-12)
    assert per_task.tolist() == pytest.approx(ref_per_task, rel=1e-12)
    assert ref_per_task[2] == 0.0
    # a missing label gets no gradient
    x = torch.tensor(logits, requires_grad=True)
    multitask_loss(x, torch.tensor(labels), torch.tensor(weights, dtype=torch.float64))[0].backward()
    assert torch.all(x.grad[torch.tensor(labels) == MISSING_LABEL] == 0)


@pytest.mark.parametrize("model", ["mmoe", "esmm"])
def test_train_loss_is_the_weighted_masked_loss(mt_store, tmp_path, model):
    """lr 0 and one batch of the whole train split: the epoch's train loss is the weighted sum of
    each task's mean BCE over its labelled rows (ESMM: conversion 0 on every unclicked row)."""
    run_dir = tmp_path / "run"
    store = Store(mt_store)
    rows = len(store.split("train"))
    cfg = make_cfg(mt_store, run_dir, "train.lr=0.0", "train.epochs=1", f"train.batch_size={rows}",
                   "train.task_weights={click: 0.5, conversion: 3}", model=model)
    summary = run_training(cfg, progress=False, log=quiet)
    logits = logits_of(model_at(run_dir, store, 1), store, "train")
    labels = np.asarray(store.split("train").label).astype(np.float64)
    if model == "esmm":
        labels = click_and_conversion_labels(labels)
        assert not (labels[:, 1] == MISSING_LABEL).any()  # conversion is missing on clicked rows nowhere here
    ref_total, ref_per_task = reference_loss(logits, labels, [0.5, 3.0])
    assert summary["train_loss"] == pytest.approx(ref_total, rel=1e-5)
    assert [summary["train_loss/click"], summary["train_loss/conversion"]] == pytest.approx(ref_per_task, rel=1e-5)


def test_task_weights_change_training(mt_store, tmp_path):
    base = run_training(make_cfg(mt_store, tmp_path / "a", "train.epochs=1"), progress=False, log=quiet)
    weighted = run_training(make_cfg(mt_store, tmp_path / "b", "train.epochs=1",
                                     "train.task_weights={conversion: 0}"), progress=False, log=quiet)
    # conversion weight 0: the reported loss is the click loss alone
    assert weighted["train_loss"] == pytest.approx(weighted["train_loss/click"], rel=1e-12)
    assert base["train_loss"] == pytest.approx(base["train_loss/click"] + base["train_loss/conversion"], rel=1e-6)


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mmoe_run(mt_store, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("mmoe") / "run"
    logs: list[str] = []
    summary = run_training(make_cfg(mt_store, run_dir), progress=False, log=logs.append)
    return run_dir, summary, logs


@pytest.fixture(scope="module")
def esmm_run(mt_store, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("esmm") / "run"
    logs: list[str] = []
    summary = run_training(make_cfg(mt_store, run_dir, model="esmm"), progress=False, log=logs.append)
    return run_dir, summary, logs


def test_mmoe_learns_and_reports_per_task_metrics(mmoe_run, mt_store):
    run_dir, summary, logs = mmoe_run
    assert summary["tasks"] == TASKS and summary["valid_auc"] > 0.6
    assert summary["valid_auc/click"] > 0.6 and summary["valid_auc/conversion"] > 0.6
    with open(run_dir / "epochs.csv", newline="") as fh:
        header = next(csv.reader(fh))
    assert header == ["epoch", "train_loss", "valid_auc", "valid_logloss", "train_loss/click",
                      "train_loss/conversion", "valid_auc/click", "valid_logloss/click", "valid_auc/conversion",
                      "valid_logloss/conversion", "lr", "seconds", "samples_per_s", "best_epoch"]
    assert list(read_jsonl(run_dir / "epochs.jsonl")[0]) == header
    # the test metrics: exact, per task over its labelled rows, from the best checkpoint
    store = Store(mt_store)
    probs = sigmoid(logits_of(model_at(run_dir, store, summary["best_epoch"]), store, "test"))
    labels = np.asarray(store.split("test").label)
    for t, name in enumerate(TASKS):
        keep = labels[:, t] != MISSING_LABEL
        assert summary[f"test_auc/{name}"] == pytest.approx(roc_auc(labels[keep, t], probs[keep, t]), abs=1e-9)
        assert summary[f"test_logloss/{name}"] == pytest.approx(log_loss(labels[keep, t], probs[keep, t]), rel=1e-6)
        assert summary[f"test_rows/{name}"] == int(keep.sum())
    assert summary["test_auc"] == pytest.approx((summary["test_auc/click"] + summary["test_auc/conversion"]) / 2)
    assert any(ln.startswith("epoch 2: ") and "valid AUC click " in ln and " conversion " in ln and "(mean " in ln
               for ln in logs)
    assert any(ln.startswith("test AUC click ") for ln in logs)
    assert json.loads((run_dir / "summary.json").read_text())["test_auc/click"] == summary["test_auc/click"]
    assert load_config(str(run_dir / "config.yaml"), []).model.params["num_tasks"] == 2


def test_esmm_learns_with_ctcvr_and_cvr_auc(esmm_run, mt_store):
    run_dir, summary, logs = esmm_run
    assert summary["valid_auc"] > 0.6
    store = Store(mt_store)
    model = model_at(run_dir, store, summary["best_epoch"])
    labels = click_and_conversion_labels(np.asarray(store.split("test").label))
    probs = sigmoid(logits_of(model, store, "test"))
    # the conversion task is CTCVR over all rows (unclicked rows: 0)
    assert summary["test_rows/conversion"] == len(labels)
    assert summary["test_auc/conversion"] == pytest.approx(roc_auc(labels[:, 1], probs[:, 1]), abs=1e-9)
    assert summary["test_ctcvr_auc"] == summary["test_auc/conversion"]
    # CVR AUC: the CVR tower on the clicked rows
    clicked = labels[:, 0] == 1
    cvr = sigmoid(logits_of(model, store, "test", cvr=True))
    assert summary["test_cvr_auc"] == pytest.approx(roc_auc(labels[clicked, 1], cvr[clicked]), abs=1e-9)
    assert summary["test_cvr_rows"] == int(clicked.sum())
    record = read_jsonl(run_dir / "epochs.jsonl")[-1]
    assert {"valid_ctcvr_auc", "valid_cvr_auc", "valid_cvr_logloss"} <= set(record)
    assert any("conversion (CTCVR)" in ln and "CVR AUC" in ln for ln in logs if ln.startswith("epoch 1: "))


def test_run_eval_of_a_multi_task_run(esmm_run, mt_store):
    run_dir, summary, _ = esmm_run
    cfg = load_config(str(run_dir / "config.yaml"), ["eval.split=test", f"eval.epochs={summary['best_epoch']}"])
    (res,) = run_eval(cfg, log=quiet)
    for key in ("auc", "auc/click", "auc/conversion", "cvr_auc", "logloss/conversion"):
        assert res[key] == pytest.approx(summary[f"test_{key}"], abs=1e-6), key  # (another eval batch size)


# --------------------------------------------------------------------------------------------
# train.task: a single-task model on one task of a multi-task store
# --------------------------------------------------------------------------------------------


def test_train_task_trains_on_the_tasks_labelled_rows(mt_store, tmp_path):
    store = Store(mt_store)
    train = np.asarray(store.split("train").label)[:, 1]
    labelled = train != MISSING_LABEL
    cfg = make_cfg(mt_store, tmp_path / "run", "train.task=conversion", "train.lr=0.0", "train.epochs=1",
                   f"train.batch_size={len(train)}", model="dnn")
    summary = run_training(cfg, progress=False, log=quiet)
    assert summary["task"] == "conversion" and summary["tasks"] == ["conversion"]
    model = model_at(tmp_path / "run", store, 1)
    logits = logits_of(model, store, "train")
    assert summary["train_loss"] == pytest.approx(
        reference_loss(logits[labelled, None], train[labelled, None].astype(float), [1.0])[0], rel=1e-5)
    test = np.asarray(store.split("test").label)[:, 1]
    keep = test != MISSING_LABEL
    probs = sigmoid(logits_of(model, store, "test"))
    assert summary["test_rows"] == int(keep.sum())
    assert summary["test_auc"] == pytest.approx(roc_auc(test[keep], probs[keep]), abs=1e-9)
    assert summary["test_auc/conversion"] == summary["test_auc"]


def test_train_task_learns_its_task(mt_store, tmp_path):
    summary = run_training(make_cfg(mt_store, tmp_path / "run", "train.task=click", model="dnn"),
                           progress=False, log=quiet)
    assert summary["valid_auc"] > 0.6 and summary["valid_auc/click"] == summary["valid_auc"]


# --------------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("store_kind, model, overrides, match", [
    ("single", "mmoe", [], "is multi-task .* has one label"),
    ("multi", "dnn", [], "set train.task"),
    ("multi", "mmoe", ["model.params.num_tasks=3"], "num_tasks=3 .* 2 tasks"),
    ("multi", "dnn", ["train.task=purchase"], "'purchase' is not a task"),
    ("multi", "mmoe", ["train.task=click"], "multi-task and trains on every task"),
    ("multi", "mmoe", ["train.task_weights={clicks: 2}"], "unknown task.*'clicks'"),
    ("multi", "mmoe", ["train.monitor_task=clicks"], "monitor_task"),
    ("multi", "lr", ["train.task=click", "train.optimizer=lbfgs"], "lbfgs"),
])
def test_mismatches_are_config_errors(mt_store, single_store, tmp_path, store_kind, model, overrides, match):
    store = mt_store if store_kind == "multi" else single_store
    with pytest.raises(ConfigError, match=match):
        run_training(make_cfg(store, tmp_path / "run", *overrides, model=model), progress=False, log=quiet)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_negative_task_weight_is_rejected_on_loading(mt_store, tmp_path):
    with pytest.raises(ConfigError, match="task_weights.conversion"):
        make_cfg(mt_store, tmp_path / "run", "train.task_weights={conversion: -1}")


# --------------------------------------------------------------------------------------------
# resume, early stopping on monitor_task
# --------------------------------------------------------------------------------------------


def test_resume_of_a_multi_task_run_is_identical(mt_store, tmp_path, monkeypatch):
    extra = ("train.epochs=3", "model.params.dropout=0.3")
    straight = run_training(make_cfg(mt_store, tmp_path / "straight", *extra), progress=False, log=quiet)
    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "BatchIterator", crashing_iterator(epoch_index=1, after_batches=5))
        with pytest.raises(Crash):
            run_training(make_cfg(mt_store, tmp_path / "crashed", *extra), progress=False, log=quiet)
    logs: list[str] = []
    resumed = run_training(make_cfg(mt_store, tmp_path / "crashed", *extra), progress=False, log=logs.append)
    assert any(ln.startswith("resumed from") and "after epoch 1" in ln for ln in logs)
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "crashed" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda hs: [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")} for h in hs]  # noqa: E731
    assert strip(resumed["history"]) == strip(straight["history"])
    for key in ("test_auc", "test_auc/click", "test_auc/conversion", "valid_auc/conversion", "best_epoch"):
        assert resumed[key] == straight[key], key


def scripted(monkeypatch, click: list[float], conversion: list[float]):
    sequence = iter(zip(click, conversion))

    def fake_evaluate(model, split, batch_size, device, setup=None):
        c, v = next(sequence)
        return {"auc": (c + v) / 2, "logloss": 0.5, "rows": len(split), "auc/click": c, "logloss/click": 0.5,
                "auc/conversion": v, "logloss/conversion": 0.5}

    monkeypatch.setattr(trainer_mod, "evaluate", fake_evaluate)


@pytest.mark.parametrize("monitor_task, epochs_run, best", [("conversion", 3, 1), ("click", 5, 5), ("mean", 5, 5)])
def test_early_stopping_watches_monitor_task(mt_store, tmp_path, monkeypatch, monitor_task, epochs_run, best):
    # click improves every epoch, conversion only in the first; the mean improves throughout
    scripted(monkeypatch, [0.6, 0.7, 0.8, 0.9, 0.95], [0.7, 0.69, 0.68, 0.67, 0.66])
    monkeypatch.setattr(Trainer, "train_epoch", lambda self: (0.5, 1000.0))
    cfg = make_cfg(mt_store, tmp_path / "run", "train.epochs=5", "train.early_stopping_patience=2",
                   f"train.monitor_task={monitor_task}")
    summary = run_training(cfg, progress=False, log=quiet)
    assert summary["epochs_run"] == epochs_run and summary["best_epoch"] == best
    assert summary["stopped_early"] == (epochs_run < 5)


# --------------------------------------------------------------------------------------------
# distributed (2 processes, gloo)
# --------------------------------------------------------------------------------------------


def test_two_processes_match_one_on_a_multi_task_run(mt_store, tmp_path):
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    assert len(Store(mt_store).split("train")) % 2 == 0  # no per-epoch remainder dropped by 2 ranks
    extra = ("train.log_every=1", "train.dist_timeout_s=60", "model.params.tower_units=[8]")
    one = run_training(make_cfg(mt_store, tmp_path / "one", *extra, model="esmm"), progress=False, log=quiet)
    cfg_args = [f"data.store={json.dumps(str(mt_store))}", f"run_dir={json.dumps(str(tmp_path / 'two'))}",
                "model.name=esmm", "model.params.embedding_dim=4", "train.epochs=2", "train.batch_size=64",
                "train.eval_batch_size=100", "train.lr=0.01", *extra]
    args = [sys.executable, "-m", "ctrlab", "train", "--quiet", "--nproc", "2", "--no-resume"]
    for item in cfg_args:
        args += ["--set", item]
    proc = subprocess.run(args, cwd=repo, env={**os.environ, "PYTHONPATH": str(repo)}, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    a = load_weights(tmp_path / "one" / "checkpoints" / "last.pt")
    b = load_weights(tmp_path / "two" / "checkpoints" / "last.pt")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-4, msg=name)
    assert two["train_loss"] == pytest.approx(one["train_loss"], rel=1e-4)
    for key in ("test_auc/click", "test_auc/conversion", "test_cvr_auc", "valid_auc"):
        assert abs(two[key] - one[key]) < 0.002, key
    # the gathered evaluation is exact: the summary's test AUC is that of the saved weights
    store = Store(mt_store)
    model = model_at(tmp_path / "two", store, two["best_epoch"])
    probs = sigmoid(logits_of(model, store, "test"))
    labels = click_and_conversion_labels(np.asarray(store.split("test").label))
    assert two["test_auc/conversion"] == pytest.approx(roc_auc(labels[:, 1], probs[:, 1]), abs=1e-9)
