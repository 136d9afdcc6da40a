"""The linear baseline that converges (issue 12, item 1): ``train.optimizer: lbfgs``
(ctrlab.train.fullbatch), the ready config of ``lr``.

* at a fixed L2 the full-batch solve reaches scikit-learn's LogisticRegression optimum (weights,
  intercept, scores) on synthetic rows and on the real Criteo rows in ../shared/data;
* the L2 is chosen on the validation split only (the test split is not read while choosing), the
  choice and the iterations are recorded, warm-started path, warnings at the grid's edge and at
  the iteration cap;
* the run is an ordinary run: ``ctrlab eval``, export (ONNX parity) and the Predictor work on it
  and reproduce its test metrics; an interrupted path resumes to the same result;
* minibatch-only settings and bad values are refused by name.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import ctrlab.train.fullbatch as fullbatch
from ctrlab.config import ConfigError, load_config
from ctrlab.config import base_config_for
from ctrlab.data.encode import assign_random_split
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.formats import detect_format, schema_for_file
from ctrlab.data.readers import RowReader
from ctrlab.data.store import SPLITS, Store
from ctrlab.export.bundle import export_bundle
from ctrlab.models import build_model
from ctrlab.inference import Predictor
from ctrlab.train.fullbatch import load_chunks, minimize, one_hot_matrix
from ctrlab.metrics import roc_auc
from ctrlab.train.run import run_eval, run_training
from ctrlab.train.evaluate import predict_split
from ctrlab.train.trainer import load_weights
from conftest import synthetic_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = 3000
GRID = [1e-1, 1e-2, 1e-3, 1e-4]


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("linear")
    raw, _store = synthetic_store(root, ROWS, seed=5)
    return raw, root / "store"


def lr_config(store: Path, run_dir: Path, *overrides: str):
    """The ready config of lr (what `ctrlab train --data STORE --model lr` uses), on one thread."""
    return load_config(None, [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(run_dir))}",
                              "train.threads=1", *overrides], base=base_config_for("lr"))


def fit_at(store: Store, l2: float) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("lr", store.spec, {}).double()
    result = minimize(model, load_chunks(store.split("train"), 4096, torch.device("cpu")), l2,
                      tolerance=1e-7, max_iter=5000)
    assert result["converged"] and result["grad_max"] <= 1e-7 and result["iterations"] > 0
    return model


def objective(x, y, coef: np.ndarray, intercept: float, l2: float) -> float:
    """Mean logloss + l2/2 * ||coef||^2 (the bias unpenalized), in float64."""
    logits = x @ coef + intercept
    return float(np.mean(np.logaddexp(0, logits) - y * logits) + 0.5 * l2 * coef @ coef)


def assert_sklearn_optimum(store: Store, l2: float) -> None:
    """Same objective, same features: the optimum scikit-learn's solver finds (its objective value,
    its weights up to the flatness of the optimum, its scores)."""
    x_train, y_train = one_hot_matrix(store, "train")
    x_test, y_test = one_hot_matrix(store, "test")
    reference = LogisticRegression(C=fullbatch.l2_to_sklearn_c(l2, x_train.shape[0]), tol=1e-10,
                                   max_iter=20_000).fit(x_train, y_train)
    model = fit_at(store, l2)
    first = model.linear
    weights = torch.cat([first.sparse_weight.weight.detach().reshape(-1),
                         first.dense_weight.weight.detach().reshape(-1)]).numpy()
    bias = float(first.bias.detach())
    assert weights.shape == reference.coef_[0].shape
    ours, theirs = (objective(x_train, y_train, w, b, l2)
                    for w, b in ((weights, bias), (reference.coef_[0], float(reference.intercept_[0]))))
    assert ours <= theirs + 1e-8  # f - f* <= |gradient|^2 / (2 l2)
    # a weight is off by about gradient / l2 (both solvers stop near 1e-7; the curvature is >= l2)
    np.testing.assert_allclose(weights, reference.coef_[0], atol=2e-7 / l2, rtol=0)
    assert bias == pytest.approx(float(reference.intercept_[0]), abs=2e-7 / l2)
    probs = predict_split(model.float(), store.split("test"), 1000, torch.device("cpu"))
    np.testing.assert_allclose(probs, reference.predict_proba(x_test)[:, 1], atol=1e-4, rtol=0)
    assert roc_auc(y_test, probs) == pytest.approx(roc_auc_score(y_test, reference.decision_function(x_test)),
                                                   abs=1e-4)


@pytest.mark.parametrize("l2", [1e-2, 1e-4])
def test_fixed_l2_reaches_the_sklearn_optimum_on_synthetic_rows(synth, l2):
    assert_sklearn_optimum(Store(synth[1]), l2)


def test_fixed_l2_reaches_the_sklearn_optimum_on_real_criteo_rows(shared_data, tmp_path):
    prepare(PrepareOptions(train=[str(shared_data["criteo_train"])], format="criteo"), tmp_path / "store",
            progress=False, log=quiet)
    assert_sklearn_optimum(Store(tmp_path / "store"), 3e-3)


def test_l2_penalizes_weights_not_the_bias(synth):
    model = build_model("lr", Store(synth[1]).spec, {})
    names = {name for name, p in model.named_parameters()
             if any(p is q for q in fullbatch.penalized_parameters(model))}
    assert names == {"linear.sparse_weight.weight", "linear.dense_weight.weight"}


# --------------------------------------------------------------------------------------------
# the ready config's run: L2 chosen on valid only, recorded, and an ordinary run afterwards
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lr_run(synth, tmp_path_factory, request):
    """The ready config on the synthetic store, recording which splits are read while choosing L2."""
    raw, store_dir = synth
    run_dir = tmp_path_factory.mktemp("lr_run") / "run"
    read: list[str] = []
    original_split, original_fit = Store.split, fullbatch.FullBatchTrainer.fit
    choosing = {"on": False}

    def split(self, name):
        if choosing["on"]:
            read.append(name)
        return original_split(self, name)

    def fit(self):
        choosing["on"] = True
        try:
            return original_fit(self)
        finally:
            choosing["on"] = False

    patch = pytest.MonkeyPatch()
    patch.setattr(Store, "split", split)
    patch.setattr(fullbatch.FullBatchTrainer, "fit", fit)
    request.addfinalizer(patch.undo)
    logs: list[str] = []
    summary = run_training(lr_config(store_dir, run_dir), resume=False, progress=False, log=logs.append)
    patch.undo()
    history = [json.loads(line) for line in (run_dir / "epochs.jsonl").read_text().splitlines()]
    return {"raw": raw, "store": store_dir, "run": run_dir, "summary": summary, "history": history,
            "read_while_choosing": read, "logs": logs}


def test_l2_is_chosen_on_the_valid_split_only(lr_run):
    assert "valid" in lr_run["read_while_choosing"] and "test" not in lr_run["read_while_choosing"]
    history, summary = lr_run["history"], lr_run["summary"]
    best = max(history, key=lambda h: h["valid_auc"])
    assert summary["best_epoch"] == best["epoch"] and summary["l2"] == best["l2"]
    # each recorded valid AUC is the exact AUC of that L2's checkpoint on the valid split
    store = Store(lr_run["store"])
    labels = np.asarray(store.split("valid").label)
    for record in history:
        model = build_model("lr", store.spec, {})
        model.load_state_dict(load_weights(lr_run["run"] / "checkpoints" / f"epoch_{record['epoch']}.pt"))
        probs = predict_split(model, store.split("valid"), 512, torch.device("cpu"))
        assert record["valid_auc"] == pytest.approx(roc_auc(labels, probs), abs=1e-6)


def test_the_path_runs_strong_to_weak_and_records_l2_and_iterations(lr_run):
    history, summary = lr_run["history"], lr_run["summary"]
    l2s = [h["l2"] for h in history]
    assert l2s == sorted(base_config_for("lr")["train"]["l2_grid"], reverse=True)[: len(l2s)]
    assert all(h["converged"] and h["iterations"] >= 1 and h["grad_max"] <= 1e-6 for h in history)
    # weaker L2 fits the training rows better (warm-started solves of nested problems)
    assert all(a["train_loss"] > b["train_loss"] for a, b in zip(history, history[1:]))
    assert summary["iterations"] == history[summary["best_epoch"] - 1]["iterations"]
    assert summary["converged"] is True and summary["warnings"] == []
    assert any(f"L2 {summary['l2']:g}:" in line and "L-BFGS iterations" in line for line in lr_run["logs"])
    # patience 3: the path ended 3 values after the best, or ran out of values
    assert len(history) == min(summary["best_epoch"] + 3, len(base_config_for("lr")["train"]["l2_grid"]))


def test_the_run_evaluates_exports_and_predicts_like_any_run(lr_run, tmp_path):
    run_dir, summary = lr_run["run"], lr_run["summary"]
    results = run_eval(load_config(run_dir / "config.yaml", [f"eval.epochs={summary['best_epoch']}"]), log=quiet)
    assert results[0]["auc"] == pytest.approx(summary["test_auc"], abs=1e-12)

    manifest = export_bundle(run_dir, tmp_path / "bundle", log=quiet)
    assert manifest["parity"]["max_abs_diff"] <= 1e-5 and manifest["model"]["name"] == "lr"
    # the bundle scores the raw test rows as the run scored the store's test split
    store = Store(lr_run["store"])
    schema = schema_for_file(lr_run["raw"], detect_format(lr_run["raw"]))
    table = pa.concat_tables(c.table for c in RowReader([lr_run["raw"]], schema)).combine_chunks()
    which = assign_random_split(table.num_rows, 0, store.meta["split"]["seed"], store.meta["split"]["ratios"])
    test_rows = table.filter(pa.array(which == SPLITS.index("test")))
    labels = np.asarray(store.split("test").label)
    for backend in ("onnx", "torch"):
        scores = Predictor(tmp_path / "bundle", backend=backend, threads=1).predict(test_rows).scores
        assert scores.shape == labels.shape
        assert roc_auc(labels, scores) == pytest.approx(summary["test_auc"], abs=1e-5)


def test_an_interrupted_path_resumes_to_the_same_result(synth, tmp_path):
    store = synth[1]
    grid = f"train.l2_grid={GRID}"
    whole = run_training(lr_config(store, tmp_path / "whole", grid), progress=False, log=quiet)

    class Stop(Exception):
        pass

    def stop_after_two(epoch, _record):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        run_training(lr_config(store, tmp_path / "cut", grid), progress=False, log=quiet, on_epoch_end=stop_after_two)
    logs: list[str] = []
    resumed = run_training(lr_config(store, tmp_path / "cut", grid), progress=False, log=logs.append)
    assert any("resumed" in line and "after epoch 2" in line for line in logs)
    assert [line for line in logs if line.startswith("L2 ")][0].startswith("L2 0.001:")  # the third value
    for key in ("best_epoch", "l2", "valid_auc", "test_auc", "epochs_run"):
        assert resumed[key] == pytest.approx(whole[key], abs=1e-9), key


def test_resume_refuses_another_grid(synth, tmp_path):
    run_training(lr_config(synth[1], tmp_path / "run", "train.l2_grid=[0.1, 0.01]"), progress=False, log=quiet)
    with pytest.raises(ConfigError, match=r"another train.optimizer or train.l2_grid \(train.l2_grid \[0.1, 0.01\]"):
        run_training(lr_config(synth[1], tmp_path / "run", "train.l2_grid=[0.1, 0.001]"), progress=False, log=quiet)


# --------------------------------------------------------------------------------------------
# warnings and refusals
# --------------------------------------------------------------------------------------------

def test_best_at_the_weakest_l2_warns(synth, tmp_path):
    summary = run_training(lr_config(synth[1], tmp_path / "run", "train.l2_grid=[10, 1]"), progress=False,
                           log=quiet)
    assert summary["best_epoch"] == 2
    assert summary["hit_epoch_cap_while_improving"] is True
    assert any("smallest of train.l2_grid" in w for w in summary["warnings"])


def test_iteration_cap_warns_not_converged(synth, tmp_path):
    summary = run_training(lr_config(synth[1], tmp_path / "run", "train.l2_grid=[1e-4]", "train.lbfgs_max_iter=2"),
                           progress=False, log=quiet)
    assert summary["converged"] is False
    assert any("lbfgs_max_iter=2" in w and "not converged" in w for w in summary["warnings"])


@pytest.mark.parametrize("override, match", [
    ("train.reg=1e-5", "train.reg applies to the minibatch optimizers"),
    ("train.weight_decay=1e-5", "train.weight_decay applies to the minibatch optimizers"),
    ("train.l2_grid=[]", "train.l2_grid: at least one"),
])
def test_full_batch_refuses_settings_it_would_ignore(synth, tmp_path, override, match):
    with pytest.raises(ConfigError, match=match):
        run_training(lr_config(synth[1], tmp_path / "run", override), progress=False, log=quiet)
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before anything was written


@pytest.mark.parametrize("override, match", [
    ("train.l2_grid=[0.1, -1]", r"train.l2_grid\[1\]: -1"),
    ("train.lbfgs_tolerance=0", "train.lbfgs_tolerance: 0"),
    ("train.lbfgs_max_iter=0", "train.lbfgs_max_iter: 0"),
    ("train.optimizer=bfgs", "train.optimizer: 'bfgs' is not one of"),
])
def test_bad_full_batch_values_are_refused_at_load(override, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, [override], base=base_config_for("lr"))


def test_the_ready_lr_config_is_full_batch():
    cfg = load_config(None, [], base=base_config_for("lr"))
    assert cfg.train.optimizer == "lbfgs" and len(cfg.train.l2_grid) > 1


def test_data_too_large_for_memory_is_refused_by_size(synth, tmp_path, monkeypatch):
    monkeypatch.setattr(fullbatch, "available_memory_bytes", lambda: 1_000_000)  # 1 MB free
    with pytest.raises(MemoryError, match=r"holds the train and valid splits in memory: about .* GiB"):
        run_training(lr_config(synth[1], tmp_path / "run"), progress=False, log=quiet)
