"""Tests for ctrlab.train (Trainer, run_training, run_eval) and the ``ctrlab train`` / ``ctrlab eval``
commands, on a small synthetic store: run-directory layout, exact test metrics from the best
checkpoint, learning on a planted signal, exact resume after a crash, seeds, early stopping with
learning-rate reduction, evaluation over epoch ranges and CLI exit codes."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

import ctrlab.train.trainer as trainer_mod
from ctrlab.cli import main
from ctrlab.config import Config, ConfigError, load_config, to_dict
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.store import Store
from ctrlab.data.synth import write_synthetic
from ctrlab.models import build_model, list_models
from ctrlab.metrics import LOGLOSS_EPS
from ctrlab.train.run import parse_epoch_range, run_eval, run_training
from ctrlab.train.trainer import Trainer, load_weights
from conftest import Crash, crashing_iterator


pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = 6000
EVAL_BATCH = 100  # the test split (613 rows) is not a multiple of it: a last partial batch
TINY = ["model.params.embedding_dim=4"]
TINY_DNN = ["model.name=dnn", "model.params.embedding_dim=4", "model.params.hidden_units=[16]"]


@pytest.fixture(scope="session")
def synth_store(tmp_path_factory) -> Path:
    """A store of 6000 synthetic Criteo-shaped rows (planted logistic signal), split 8:1:1."""
    root = tmp_path_factory.mktemp("train_store")
    raw = root / "synth.tsv"
    write_synthetic(raw, ROWS, seed=1, progress=False)
    prepare(PrepareOptions(train=[str(raw)]), root / "store", progress=False, log=lambda _: None)
    return root / "store"


def make_cfg(store: Path, run_dir: Path, *overrides: str, model: str = "fm") -> Config:
    base = [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(run_dir))}", f"model.name={model}",
            "model.params.embedding_dim=4", "train.threads=1", "train.epochs=2", "train.batch_size=256",
            f"train.eval_batch_size={EVAL_BATCH}", f"eval.batch_size={EVAL_BATCH}", "train.lr=0.01",
            "train.log_every=5"]
    return load_config(None, base + list(overrides))


def quiet(_msg: str) -> None:
    pass


def predict_all(model: torch.nn.Module, store: Store, split: str, batch: int = EVAL_BATCH) -> np.ndarray:
    """Probabilities for every row of a split, computed here (not with the library's loop)."""
    arrays = store.split(split)
    model.eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(arrays), batch):
            dense = torch.from_numpy(np.array(arrays.dense[lo: lo + batch], dtype=np.float32))
            sparse = torch.from_numpy(np.array(arrays.sparse[lo: lo + batch]).astype(np.int64))
            out.append(torch.sigmoid(model(dense, sparse)).numpy())
    probs = np.concatenate(out)
    assert probs.shape == (len(arrays),)
    return probs


def model_from_checkpoint(cfg: Config, store: Store, path: Path) -> torch.nn.Module:
    model = build_model(cfg.model.name, store.spec, cfg.model.params)
    model.load_state_dict(load_weights(path))
    return model


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


METRIC_KEYS = ("valid_auc", "valid_logloss", "train_loss", "test_auc", "test_logloss", "test_rows",
               "best_epoch", "epochs_run", "stopped_early")


# --------------------------------------------------------------------------------------------
# run layout, exact test metrics, learning
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fm_run(synth_store, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("fm_run") / "run"
    cfg = make_cfg(synth_store, run_dir)
    logs: list[str] = []
    summary = run_training(cfg, progress=False, log=logs.append)
    return cfg, run_dir, summary, logs


def test_run_directory_layout(fm_run, synth_store):
    cfg, run_dir, summary, _ = fm_run
    for name in ("epochs.jsonl", "epochs.csv", "steps.jsonl", "summary.json", "config.yaml"):
        assert (run_dir / name).is_file(), name
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").iterdir())
    assert ckpts == ["epoch_1.pt", "epoch_2.pt", "last.pt"]  # no leftover .tmp files
    for epoch in (1, 2):
        data = torch.load(run_dir / "checkpoints" / f"epoch_{epoch}.pt", weights_only=True)
        assert data["epoch"] == epoch and set(data["model"]) == set(load_weights(run_dir / "checkpoints" / "last.pt"))
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 2
    assert_same_weights(last["model"], load_weights(run_dir / "checkpoints" / "epoch_2.pt"))

    epochs = read_jsonl(run_dir / "epochs.jsonl")
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert epochs == summary["history"]
    with open(run_dir / "epochs.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["valid_auc"]) for r in rows] == pytest.approx([e["valid_auc"] for e in epochs], rel=1e-12)
    assert set(rows[0]) == set(epochs[0])

    # one record every log_every=5 steps: ceil(train rows / 256) steps per epoch
    train_rows = len(Store(synth_store).split("train"))
    steps_per_epoch = -(-train_rows // 256)
    steps = read_jsonl(run_dir / "steps.jsonl")
    assert [s["step"] for s in steps] == list(range(5, 2 * steps_per_epoch + 1, 5))
    assert all(math.isfinite(s["loss"]) and s["epoch"] in (1, 2) for s in steps)

    on_disk = json.loads((run_dir / "summary.json").read_text())
    assert on_disk["test_auc"] == summary["test_auc"] and on_disk["test_logloss"] == summary["test_logloss"]
    assert on_disk["epochs_run"] == 2 and on_disk["model"] == "fm"
    # config.yaml is the resolved config, loadable again
    assert to_dict(load_config(run_dir / "config.yaml")) == to_dict(cfg)


def test_test_metrics_are_exact_over_every_row_of_the_best_checkpoint(fm_run, synth_store):
    cfg, run_dir, summary, _ = fm_run
    store = Store(synth_store)
    n_test = len(store.split("test"))
    assert n_test % EVAL_BATCH != 0  # the last batch is partial
    assert summary["test_rows"] == n_test
    best = summary["best_epoch"]
    assert best in (1, 2)
    assert best == max(summary["history"], key=lambda h: h["valid_auc"])["epoch"]
    probs = predict_all(model_from_checkpoint(cfg, store, run_dir / "checkpoints" / f"epoch_{best}.pt"), store, "test")
    labels = np.asarray(store.split("test").label)
    assert summary["test_auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
    clipped = np.clip(probs.astype(np.float64), LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    assert summary["test_logloss"] == pytest.approx(sk_log_loss(labels, clipped, labels=[0, 1]), rel=1e-9)
    # dropping the last partial batch would give a different value
    cut = n_test - n_test % EVAL_BATCH
    assert roc_auc_score(labels[:cut], probs[:cut]) != pytest.approx(summary["test_auc"], abs=1e-12)


def test_valid_metrics_in_history_are_exact(fm_run, synth_store):
    cfg, run_dir, summary, _ = fm_run
    store = Store(synth_store)
    labels = np.asarray(store.split("valid").label)
    for h in summary["history"]:
        probs = predict_all(model_from_checkpoint(cfg, store, run_dir / "checkpoints" / f"epoch_{h['epoch']}.pt"),
                            store, "valid")
        assert h["valid_auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)


def test_planted_signal_is_learned(fm_run):
    _, _, summary, _ = fm_run
    history = summary["history"]
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["valid_auc"] > 0.6
    assert summary["valid_auc"] > 0.62 and summary["test_auc"] > 0.6
    assert 0.3 < summary["valid_logloss"] < 0.6  # better than the base-rate logloss (~0.56 at 25%)


def test_log_output_lines(fm_run):
    _, _, summary, logs = fm_run
    lines = "\n".join(logs).splitlines()
    auc_lines = [ln for ln in lines if ln.startswith("test AUC")]
    ll_lines = [ln for ln in lines if ln.startswith("test logloss")]
    assert len(auc_lines) == 1 and len(ll_lines) == 1
    assert float(auc_lines[0].split()[-1]) == pytest.approx(summary["test_auc"], abs=1e-5)
    assert float(ll_lines[0].split()[-1]) == pytest.approx(summary["test_logloss"], abs=1e-5)
    assert any(ln.startswith("epoch 1: train loss") for ln in lines)
    assert any(ln.startswith("epoch 2: train loss") for ln in lines)


def test_default_log_prints(synth_store, tmp_path, capsys):
    run_training(make_cfg(synth_store, tmp_path / "run", "train.epochs=1"), progress=False)
    out = capsys.readouterr().out
    assert any(ln.startswith("test AUC ") for ln in out.splitlines())
    assert any(ln.startswith("test logloss ") for ln in out.splitlines())


def test_store_without_valid_split_uses_last_epoch(tmp_path):
    raw = tmp_path / "synth.tsv"
    write_synthetic(raw, 1500, seed=3, progress=False)
    store_dir = tmp_path / "store"
    prepare(PrepareOptions(train=[str(raw)], split=(0.8, 0.0, 0.2)), store_dir, progress=False, log=quiet)
    assert not Store(store_dir).has_split("valid")
    summary = run_training(make_cfg(store_dir, tmp_path / "run"), progress=False, log=quiet)
    assert [h["valid_auc"] for h in summary["history"]] == [None, None]
    assert summary["best_epoch"] == 2 and summary["epochs_run"] == 2 and not summary["stopped_early"]
    store = Store(store_dir)
    cfg = make_cfg(store_dir, tmp_path / "run")
    probs = predict_all(model_from_checkpoint(cfg, store, tmp_path / "run" / "checkpoints" / "epoch_2.pt"), store, "test")
    assert summary["test_auc"] == pytest.approx(roc_auc_score(np.asarray(store.split("test").label), probs), abs=1e-12)


# --------------------------------------------------------------------------------------------
# resume and seeds
# --------------------------------------------------------------------------------------------


RESUME_OVERRIDES = (*TINY_DNN, "model.params.dropout=0.3", "train.epochs=3")  # dropout: the torch RNG matters


def test_resume_after_crash_is_bit_identical(synth_store, tmp_path, monkeypatch):
    straight_dir, crashed_dir = tmp_path / "straight", tmp_path / "crashed"
    straight = run_training(make_cfg(synth_store, straight_dir, *RESUME_OVERRIDES), progress=False, log=quiet)

    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "BatchIterator", crashing_iterator(epoch_index=1, after_batches=6))
        with pytest.raises(Crash):
            run_training(make_cfg(synth_store, crashed_dir, *RESUME_OVERRIDES), progress=False, log=quiet)
    # epoch 1 was checkpointed; epoch 2 was not
    assert sorted(p.name for p in (crashed_dir / "checkpoints").iterdir()) == ["epoch_1.pt", "last.pt"]
    assert torch.load(crashed_dir / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert_same_weights(load_weights(crashed_dir / "checkpoints" / "epoch_1.pt"),
                        load_weights(straight_dir / "checkpoints" / "epoch_1.pt"))

    calls = []
    original_train_epoch = Trainer.train_epoch

    def counting_train_epoch(self):
        calls.append(self.epoch + 1)
        return original_train_epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", counting_train_epoch)
    logs: list[str] = []
    resumed = run_training(make_cfg(synth_store, crashed_dir, *RESUME_OVERRIDES), progress=False, log=logs.append)
    assert any(ln.startswith("resumed from") and "after epoch 1" in ln for ln in logs)
    assert calls == [2, 3]  # epoch 1 is not trained again

    assert_same_weights(final_weights(straight_dir), final_weights(crashed_dir))
    for epoch in (2, 3):
        assert_same_weights(load_weights(straight_dir / "checkpoints" / f"epoch_{epoch}.pt"),
                            load_weights(crashed_dir / "checkpoints" / f"epoch_{epoch}.pt"))
    for key in METRIC_KEYS:
        assert resumed[key] == straight[key], key
    strip = lambda hs: [{k: v for k, v in h.items() if k not in ("seconds", "samples_per_s")} for h in hs]  # noqa: E731
    assert strip(resumed["history"]) == strip(straight["history"])
    assert strip(read_jsonl(crashed_dir / "epochs.jsonl")) == strip(read_jsonl(straight_dir / "epochs.jsonl"))


def test_steps_log_has_each_step_once_after_resume(synth_store, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "BatchIterator", crashing_iterator(epoch_index=1, after_batches=12))
        with pytest.raises(Crash):
            run_training(make_cfg(synth_store, run_dir, *TINY_DNN), progress=False, log=quiet)
    run_training(make_cfg(synth_store, run_dir, *TINY_DNN), progress=False, log=quiet)
    steps = [s["step"] for s in read_jsonl(run_dir / "steps.jsonl")]
    assert steps == sorted(set(steps))


def test_resume_of_a_finished_run_trains_nothing(fm_run, synth_store, monkeypatch):
    cfg, run_dir, summary, _ = fm_run
    before = final_weights(run_dir)

    def no_training(self):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(Trainer, "train_epoch", no_training)
    logs: list[str] = []
    again = run_training(make_cfg(synth_store, run_dir), progress=False, log=logs.append)
    assert any("after epoch 2" in ln for ln in logs if ln.startswith("resumed from"))
    assert_same_weights(before, final_weights(run_dir))
    for key in METRIC_KEYS:
        assert again[key] == summary[key], key


def test_no_resume_starts_over(synth_store, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    first = run_training(make_cfg(synth_store, run_dir), progress=False, log=quiet)
    calls = []
    original_train_epoch = Trainer.train_epoch

    def counting_train_epoch(self):
        calls.append(self.epoch + 1)
        return original_train_epoch(self)

    monkeypatch.setattr(Trainer, "train_epoch", counting_train_epoch)
    logs: list[str] = []
    second = run_training(make_cfg(synth_store, run_dir), resume=False, progress=False, log=logs.append)
    assert calls == [1, 2]
    assert not any(ln.startswith("resumed") for ln in logs)
    assert [h["epoch"] for h in second["history"]] == [1, 2]
    for key in METRIC_KEYS:  # same seed, same data: the same run again
        assert second[key] == first[key], key


def test_no_resume_does_not_mix_in_the_old_runs_epochs(synth_store, tmp_path):
    run_dir = tmp_path / "run"
    run_training(make_cfg(synth_store, run_dir, "train.epochs=3"), progress=False, log=quiet)
    cfg = make_cfg(synth_store, run_dir, "train.epochs=1")
    run_training(cfg, resume=False, progress=False, log=quiet)
    assert [r["epoch"] for r in run_eval(cfg, log=quiet)] == [1]


def test_same_seed_same_weights_different_seed_differs(synth_store, tmp_path):
    overrides = (*TINY_DNN, "model.params.dropout=0.2", "train.epochs=1")
    a = run_training(make_cfg(synth_store, tmp_path / "a", *overrides), progress=False, log=quiet)
    b = run_training(make_cfg(synth_store, tmp_path / "b", *overrides), progress=False, log=quiet)
    c = run_training(make_cfg(synth_store, tmp_path / "c", *overrides, "train.seed=7"), progress=False, log=quiet)
    assert_same_weights(final_weights(tmp_path / "a"), final_weights(tmp_path / "b"))
    assert a["test_auc"] == b["test_auc"] and a["train_loss"] == b["train_loss"]
    wa, wc = final_weights(tmp_path / "a"), final_weights(tmp_path / "c")
    assert wa.keys() == wc.keys()
    assert all(not torch.equal(wa[k], wc[k]) for k in wa)
    assert a["train_loss"] != c["train_loss"]


# --------------------------------------------------------------------------------------------
# early stopping and learning-rate reduction
# --------------------------------------------------------------------------------------------


def test_zero_lr_stops_after_patience(synth_store, tmp_path):
    run_dir = tmp_path / "run"
    cfg = make_cfg(synth_store, run_dir, "train.lr=0.0", "train.epochs=6", "train.early_stopping_patience=2",
                   "train.lr_decay_factor=0.5")
    summary = run_training(cfg, progress=False, log=quiet)
    history = read_jsonl(run_dir / "epochs.jsonl")
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert summary["stopped_early"] and summary["epochs_run"] == 3 and summary["best_epoch"] == 1
    assert len({h["valid_auc"] for h in history}) == 1  # nothing can change with lr 0
    # the same model every epoch; only the batch order (float summation order) differs
    assert [h["train_loss"] for h in history] == pytest.approx([history[0]["train_loss"]] * 3, rel=1e-6)
    assert [h["lr"] for h in history] == [0.0, 0.0, 0.0]
    assert not (run_dir / "checkpoints" / "epoch_4.pt").exists()
    # train loss is the row-weighted mean over every training row (last partial batch included)
    store = Store(synth_store)
    model = model_from_checkpoint(cfg, store, run_dir / "checkpoints" / "epoch_1.pt")
    arrays = store.split("train")
    with torch.no_grad():
        logits = model(torch.from_numpy(np.array(arrays.dense)), torch.from_numpy(np.array(arrays.sparse).astype(np.int64)))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            logits.double(), torch.from_numpy(np.array(arrays.label)).double())
    assert history[0]["train_loss"] == pytest.approx(float(loss), rel=1e-5)


def _scripted_validation(monkeypatch, values: list[float], metric: str = "auc"):
    """Make Trainer.fit see the given validation metric sequence (test evaluation stays real)."""
    sequence = iter(values)
    seen = []

    def fake_evaluate(model, split, batch_size, device):
        value = next(sequence)
        seen.append(value)
        other = "logloss" if metric == "auc" else "auc"
        return {metric: value, other: 0.5, "rows": len(split), "positive_rate": 0.25}

    monkeypatch.setattr(trainer_mod, "evaluate", fake_evaluate)
    return seen


def test_early_stopping_counter_resets_and_lr_decays_each_bad_epoch(synth_store, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    _scripted_validation(monkeypatch, [0.60, 0.55, 0.70, 0.65, 0.69, 0.99, 0.99])
    cfg = make_cfg(synth_store, run_dir, "train.epochs=10", "train.early_stopping_patience=2",
                   "train.lr_decay_factor=0.5", "train.lr=0.01", "train.embedding_lr=0.02")
    logs: list[str] = []
    summary = run_training(cfg, progress=False, log=logs.append)
    history = read_jsonl(run_dir / "epochs.jsonl")
    # epoch 2 bad (1), epoch 3 improves (reset), epochs 4 and 5 bad (2 = patience): stop
    assert [h["epoch"] for h in history] == [1, 2, 3, 4, 5]
    assert [h["best_epoch"] for h in history] == [1, 1, 3, 3, 3]
    assert summary["stopped_early"] and summary["best_epoch"] == 3 and summary["valid_auc"] == 0.70
    # the lr column is the rate used in that epoch; every bad epoch halves it afterwards
    assert [h["lr"] for h in history] == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.0025], rel=1e-12)
    with open(run_dir / "epochs.csv", newline="") as fh:
        assert [float(r["lr"]) for r in csv.DictReader(fh)] == pytest.approx([h["lr"] for h in history])
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["bad_epochs"] == 2 and last["stopped_early"]
    assert last["sparse_opt"]["lr"] == pytest.approx(0.02 * 0.5 ** 3, rel=1e-12)  # the embedding lr too
    assert all(g["lr"] == pytest.approx(0.01 * 0.5 ** 3, rel=1e-12) for g in last["dense_opt"]["param_groups"])
    assert any("no improvement for 2 epochs: stopping" in ln for ln in logs)
    # the test metrics come from the best epoch (3), not the last
    store = Store(synth_store)
    probs = predict_all(model_from_checkpoint(cfg, store, run_dir / "checkpoints" / "epoch_3.pt"), store, "test")
    assert summary["test_auc"] == pytest.approx(roc_auc_score(np.asarray(store.split("test").label), probs), abs=1e-12)


def test_early_stopping_on_logloss_lower_is_better(synth_store, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    seen = _scripted_validation(monkeypatch, [0.50, 0.40, 0.45, 0.40, 0.1], metric="logloss")
    cfg = make_cfg(synth_store, run_dir, "train.monitor=logloss", "train.epochs=10",
                   "train.early_stopping_patience=2", "train.lr_decay_factor=0.1")
    summary = run_training(cfg, progress=False, log=quiet)
    assert seen == [0.50, 0.40, 0.45, 0.40]  # an equal value is no improvement
    assert summary["best_epoch"] == 2 and summary["stopped_early"] and summary["epochs_run"] == 4
    assert [h["lr"] for h in summary["history"]] == pytest.approx([0.01, 0.01, 0.01, 0.001], rel=1e-12)


# --------------------------------------------------------------------------------------------
# run_eval and epoch ranges
# --------------------------------------------------------------------------------------------


def test_run_eval_epoch_range_matches_sklearn(fm_run, synth_store):
    cfg, run_dir, summary, _ = fm_run
    eval_cfg = make_cfg(synth_store, run_dir, "eval.epochs='1:2'")
    logs: list[str] = []
    results = run_eval(eval_cfg, log=logs.append)
    assert [r["epoch"] for r in results] == [1, 2]
    store = Store(synth_store)
    labels = np.asarray(store.split("test").label)
    for res in results:
        probs = predict_all(model_from_checkpoint(cfg, store, run_dir / "checkpoints" / f"epoch_{res['epoch']}.pt"),
                            store, "test")
        assert res["split"] == "test" and res["rows"] == len(labels)
        assert res["auc"] == pytest.approx(roc_auc_score(labels, probs), abs=1e-12)
        clipped = np.clip(probs.astype(np.float64), LOGLOSS_EPS, 1 - LOGLOSS_EPS)
        assert res["logloss"] == pytest.approx(sk_log_loss(labels, clipped, labels=[0, 1]), rel=1e-9)
    assert results[0]["auc"] != results[1]["auc"]
    best = results[summary["best_epoch"] - 1]
    assert best["auc"] == pytest.approx(summary["test_auc"], abs=1e-12)
    assert [ln.split(":")[0] for ln in logs] == ["epoch 1", "epoch 2"]

    valid = run_eval(make_cfg(synth_store, run_dir, "eval.epochs='2'", "eval.split=valid"), log=quiet)
    assert [r["epoch"] for r in valid] == [2] and valid[0]["split"] == "valid"
    assert valid[0]["auc"] == pytest.approx(summary["history"][1]["valid_auc"], abs=1e-12)


def test_run_eval_errors(fm_run, synth_store, tmp_path):
    _, run_dir, _, _ = fm_run
    with pytest.raises(ConfigError, match=r"no saved epoch in 5\.\.7; saved epochs: \[1, 2\]"):
        run_eval(make_cfg(synth_store, run_dir, "eval.epochs='5:7'"), log=quiet)
    with pytest.raises(FileNotFoundError, match="no saved epochs"):
        run_eval(make_cfg(synth_store, tmp_path / "empty_run"), log=quiet)
    with pytest.raises(ConfigError, match="which run"):
        run_eval(load_config(None, [f"data.store={json.dumps(str(synth_store))}"]), log=quiet)


@pytest.mark.parametrize("text, expected", [
    (None, [1, 2, 3, 5]),
    ("1:4", [1, 2, 3]),
    ("2:5", [2, 3, 5]),
    (":2", [1, 2]),
    ("3:", [3, 5]),
    (":", [1, 2, 3, 5]),
    (" 2 : 3 ", [2, 3]),
    ("5", [5]),
    (" 1 ", [1]),
    ("0:100", [1, 2, 3, 5]),
])
def test_parse_epoch_range(text, expected):
    assert parse_epoch_range(text, [1, 2, 3, 5]) == expected


@pytest.mark.parametrize("text, match", [
    ("4", r"no saved epoch in 4\.\.4"),
    ("6:9", "no saved epoch"),
    ("3:1", "no saved epoch"),
    ("1-3", "expects START:END or N"),
    ("a:b", "expects START:END or N"),
    ("-1", "expects START:END or N"),
    ("1:2:3", "expects START:END or N"),
])
def test_parse_epoch_range_errors(text, match):
    with pytest.raises(ConfigError, match=match):
        parse_epoch_range(text, [1, 2, 3, 5])


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def test_cli_train_and_eval(synth_store, tmp_path, capsys):
    run_dir = tmp_path / "run"
    rc = main(["train", "--data", str(synth_store), "--model", "fm", "--out", str(run_dir), "--epochs", "1",
               "--quiet", "--set", "model.params.embedding_dim=4", "--set", "train.threads=1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    lines = captured.out.splitlines()
    auc_line = next(ln for ln in lines if ln.startswith("test AUC"))
    assert any(ln.startswith("test logloss") for ln in lines)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_run"] == 1 and summary["model"] == "fm"
    assert float(auc_line.split()[-1]) == pytest.approx(summary["test_auc"], abs=1e-5)
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved["model"]["name"] == "fm" and saved["model"]["params"]["embedding_dim"] == 4
    assert saved["train"]["epochs"] == 1 and saved["data"]["store"] == str(synth_store)

    rc = main(["eval", str(run_dir), "--epochs", "1:1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert any(ln.startswith("epoch 1: test AUC") for ln in captured.out.splitlines())

    rc = main(["eval", str(run_dir), "--epochs", "1", "--json"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    results = json.loads(captured.out.strip().splitlines()[-1])
    assert [r["epoch"] for r in results] == [1]
    # same weights, same split, every row: the same number as training's test evaluation
    assert results[0]["auc"] == pytest.approx(summary["test_auc"], abs=1e-9)

    rc = main(["eval", str(run_dir), "--epochs", "3:4"])
    captured = capsys.readouterr()
    assert rc == 2 and "no saved epoch" in captured.err

    # a second train resumes; --no-resume starts over
    rc = main(["train", "--data", str(synth_store), "--model", "fm", "--out", str(run_dir), "--epochs", "1",
               "--quiet", "--set", "model.params.embedding_dim=4", "--set", "train.threads=1"])
    assert rc == 0 and "resumed from" in capsys.readouterr().out
    rc = main(["train", "--data", str(synth_store), "--model", "fm", "--out", str(run_dir), "--epochs", "1",
               "--quiet", "--no-resume", "--set", "model.params.embedding_dim=4", "--set", "train.threads=1"])
    out = capsys.readouterr().out
    assert rc == 0 and "resumed from" not in out and "epoch 1: train loss" in out


def test_cli_unknown_model_lists_valid_names(synth_store, tmp_path, capsys):
    rc = main(["train", "--data", str(synth_store), "--model", "deepfn", "--out", str(tmp_path / "run"),
               "--epochs", "1", "--quiet", "--set", "train.threads=1"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "ctrlab train: error:" in err and "Unknown model 'deepfn'" in err and "Did you mean 'deepfm'" in err
    for name in list_models():
        assert name in err
    assert "fm" in list_models() and "wide_deep" in list_models()


def test_cli_unknown_config_key_suggests(synth_store, tmp_path, capsys):
    rc = main(["train", "--data", str(synth_store), "--model", "fm", "--out", str(tmp_path / "run"),
               "--epochs", "1", "--quiet", "--set", "train.optimiser=adam"])
    err = capsys.readouterr().err
    assert rc == 2
    assert "train.optimiser" in err and "did you mean 'optimizer'" in err
    assert not (tmp_path / "run").exists()  # nothing was started


def test_cli_bad_values_exit_2(synth_store, tmp_path, capsys):
    rc = main(["train", "--data", str(synth_store), "--model", "fm", "--out", str(tmp_path / "run"),
               "--quiet", "--set", "train.optimizer=rmsprop"])
    assert rc == 2 and "train.optimizer" in capsys.readouterr().err
    rc = main(["train", "--data", str(synth_store), "--model", "fm", "--out", str(tmp_path / "run"),
               "--quiet", "--set", "model.params.embedding_dimm=4", "--set", "train.threads=1"])
    err = capsys.readouterr().err
    assert rc == 2 and "embedding_dimm" in err and "did you mean 'embedding_dim'" in err
    rc = main(["train", "--model", "fm", "--out", str(tmp_path / "run2"), "--quiet"])
    assert rc == 2 and "no data" in capsys.readouterr().err
    rc = main(["eval", str(tmp_path / "nothing_here")])
    assert rc == 2 and "config" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA error")
def test_cli_cuda_without_cuda_exit_2(synth_store, tmp_path, capsys):
    rc = main(["train", "--data", str(synth_store), "--model", "fm", "--out", str(tmp_path / "run"),
               "--quiet", "--device", "cuda", "--set", "model.params.embedding_dim=4", "--set", "train.threads=1"])
    assert rc == 2 and "no CUDA device" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# defaults that hold: the epoch-cap warning and train.min_epochs (issue 12)
# --------------------------------------------------------------------------------------------


def test_hitting_the_cap_while_improving_warns(synth_store, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [0.60, 0.65, 0.70])
    logs: list[str] = []
    summary = run_training(make_cfg(synth_store, tmp_path / "run", "train.epochs=3"), progress=False, log=logs.append)
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 3
    assert summary["hit_epoch_cap_while_improving"] is True
    assert any("epoch cap (train.epochs=3)" in w and "still improving" in w for w in summary["warnings"])
    assert any(ln.startswith("WARNING: training hit its epoch cap") for ln in logs)
    saved = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert saved["hit_epoch_cap_while_improving"] is True and saved["warnings"] == summary["warnings"]


@pytest.mark.parametrize("values", [[0.60, 0.70, 0.65], [0.60, 0.70, 0.70]])
def test_cap_reached_after_the_best_epoch_does_not_warn(synth_store, tmp_path, monkeypatch, values):
    _scripted_validation(monkeypatch, values)
    logs: list[str] = []
    summary = run_training(make_cfg(synth_store, tmp_path / "run", "train.epochs=3"), progress=False, log=logs.append)
    assert summary["epochs_run"] == 3 and summary["best_epoch"] == 2
    assert summary["hit_epoch_cap_while_improving"] is False and summary["warnings"] == []
    assert not any("WARNING" in ln for ln in logs)


def test_early_stop_is_no_cap_warning(synth_store, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [0.60, 0.55, 0.50])
    summary = run_training(make_cfg(synth_store, tmp_path / "run", "train.epochs=3", "train.early_stopping_patience=2"),
                           progress=False, log=quiet)
    assert summary["stopped_early"] and summary["hit_epoch_cap_while_improving"] is False


def test_min_epochs_holds_early_stopping_back(synth_store, tmp_path, monkeypatch):
    values = [0.90, 0.50, 0.50, 0.50, 0.50, 0.95, 0.96]
    _scripted_validation(monkeypatch, values)
    stopped = run_training(make_cfg(synth_store, tmp_path / "a", "train.epochs=7", "train.early_stopping_patience=2"),
                           progress=False, log=quiet)
    assert stopped["epochs_run"] == 3  # without a minimum: 2 bad epochs after epoch 1
    _scripted_validation(monkeypatch, values)
    held = run_training(make_cfg(synth_store, tmp_path / "b", "train.epochs=7", "train.early_stopping_patience=2",
                                 "train.min_epochs=5"), progress=False, log=quiet)
    # epochs 2-5 are bad, but it may not stop before epoch 5; it stops after epoch 5, not before
    assert held["epochs_run"] == 5 and held["stopped_early"] and held["best_epoch"] == 1


def test_min_epochs_checked(synth_store, tmp_path):
    with pytest.raises(ConfigError, match=r"train\.min_epochs: 0 is out of range"):
        make_cfg(synth_store, tmp_path / "run", "train.min_epochs=0")
    with pytest.raises(ConfigError, match=r"train\.min_epochs \(5\) is more than train\.epochs \(2\)"):
        run_training(make_cfg(synth_store, tmp_path / "run", "train.min_epochs=5"), progress=False, log=quiet)
