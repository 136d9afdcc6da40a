"""``ctrlab tune`` on a tiny synthetic store (3000 rows, 2-3 epochs, 2-4 trials): best.yaml trains to
the trial's own numbers, an interrupted study resumes without rerunning finished trials, pruning
stops trials on the per-epoch validation AUC, the test split plays no part in the choice, the report
renders, and a bad space is refused by name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

optuna = pytest.importorskip("optuna")

import ctrlab.train.run as run_mod  # noqa: E402
import ctrlab.train.trainer as trainer_mod  # noqa: E402
from ctrlab.cli import main  # noqa: E402
from ctrlab.config import ConfigError, load_config  # noqa: E402
from ctrlab.experiments.tune import load_space, tune  # noqa: E402
from conftest import synthetic_store  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SPACE = {
    "defaults": False,
    "space": {"train.lr": {"low": 1e-3, "high": 1e-2, "log": True}, "train.batch_size": [256, 512],
              "model.params.embedding_dim": {"low": 4, "high": 8, "step": 2},
              "model.params.hidden_units": {"depth": [1, 2], "width": [8, 16]},
              "model.params.dropout": {"low": 0.0, "high": 0.3}},
    "pruner": {"name": "none"},
    "sampler": {"startup_trials": 2},
}


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune_store")
    synthetic_store(root, 3000, seed=3)
    return root / "store"


def write_setup(tmp_path: Path, store: Path, epochs: int = 2, **space_changes) -> tuple[Path, Path]:
    base = {"data": {"store": str(store)},
            "model": {"name": "deepfm", "params": {"embedding_dim": 4, "hidden_units": [16], "dropout": 0.1}},
            "train": {"epochs": epochs, "batch_size": 256, "lr": 0.005, "threads": 1, "log_every": 2,
                      "eval_batch_size": 1000, "early_stopping_patience": 0}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    (tmp_path / "space.yaml").write_text(yaml.safe_dump({**SPACE, **space_changes}))
    return tmp_path / "base.yaml", tmp_path / "space.yaml"


def run_tune(base: Path, space: Path, out: Path, trials: int, **kwargs) -> dict:
    return tune(base, out, trials=trials, space_path=space, seed=1, log=lambda _m: None, **kwargs)


def epoch_aucs(run_dir: Path) -> list[float]:
    return [json.loads(line)["valid_auc"] for line in (run_dir / "epochs.jsonl").read_text().splitlines()]


def test_best_yaml_is_the_best_trial_and_trains_to_its_numbers(store, tmp_path):
    base, space = write_setup(tmp_path, store)
    manifest = run_tune(base, space, tmp_path / "out", trials=3)
    trials = manifest["trials"]
    assert [t["state"] for t in trials] == ["complete"] * 3
    # trial 0 is the base config itself
    assert trials[0]["values"] == {"train.lr": 0.005, "train.batch_size": 256, "model.params.embedding_dim": 4,
                                   "model.params.hidden_units": [16], "model.params.dropout": 0.1}
    for t in trials:  # a trial's value is its best validation AUC, read back from its own run
        assert t["valid_auc"] == pytest.approx(max(epoch_aucs(tmp_path / "out" / t["run_dir"])), abs=1e-12)
    best = max(trials, key=lambda t: t["valid_auc"])
    assert manifest["best"]["number"] == best["number"]

    cfg = load_config(tmp_path / "out" / "best.yaml", [f"run_dir={tmp_path / 'retrain'}"])
    for key, value in best["values"].items():
        section, *rest = key.split(".")
        node = getattr(cfg, section)
        for part in rest[:-1]:
            node = getattr(node, part)
        got = node[rest[-1]] if isinstance(node, dict) else getattr(node, rest[-1])
        assert list(got) == value if isinstance(value, list) else got == value
    summary = run_mod.run_training(cfg, resume=False, progress=False, log=lambda _m: None)
    assert summary["valid_auc"] == pytest.approx(best["valid_auc"], abs=1e-6)

    rows = (tmp_path / "out" / "trials.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("number,state,valid_auc")
    assert len((tmp_path / "out" / "trials.jsonl").read_text().splitlines()) == 3


def test_an_interrupted_study_resumes_without_rerunning_finished_trials(store, tmp_path, monkeypatch):
    base, space = write_setup(tmp_path, store)
    out = tmp_path / "out"
    run_tune(base, space, out, trials=2)
    finished = {p: p.stat().st_mtime_ns for p in out.glob("trials/*/summary.json")}
    assert len(finished) == 2

    calls = []
    real = run_mod.run_training
    epochs_trained = []

    def interrupting_epoch(self):  # the 2nd epoch of the first new trial: Ctrl-C
        epochs_trained.append(self.run.path.name)
        if len(epochs_trained) == 2:
            raise KeyboardInterrupt
        return real_epoch(self)

    real_epoch = trainer_mod.Trainer.train_epoch
    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", interrupting_epoch)
    monkeypatch.setattr(run_mod, "run_training", lambda cfg, **kw: calls.append(cfg.run_dir) or real(cfg, **kw))
    with pytest.raises(KeyboardInterrupt):
        run_tune(base, space, out, trials=4)
    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", real_epoch)
    calls.clear()
    manifest = run_tune(base, space, out, trials=4)

    states = [t["state"] for t in manifest["trials"]]
    assert states.count("complete") == 4 and len(states) == 5  # + the interrupted one, marked failed
    interrupted = next(t for t in manifest["trials"] if t["interrupted"])
    assert interrupted["number"] == 2
    retried = [t for t in manifest["trials"] if t["number"] > 2 and t["values"] == interrupted["values"]]
    assert len(retried) == 1  # its parameters were tried again
    assert len(calls) == 2 and all(Path(c).name not in ("0000", "0001") for c in calls)
    assert {p: p.stat().st_mtime_ns for p in finished} == finished  # the first two were not rerun

    # a finished study: nothing more to train
    calls.clear()
    run_tune(base, space, out, trials=4)
    assert calls == []


def test_pruning_stops_trials_on_the_validation_auc(store, tmp_path):
    # percentile 10: only trials in the top 10% at every epoch go on (maximizing)
    base, space = write_setup(tmp_path, store, epochs=3,
                              pruner={"name": "percentile", "percentile": 10, "startup_trials": 1, "warmup_epochs": 0})
    manifest = run_tune(base, space, tmp_path / "out", trials=4)
    pruned = [t for t in manifest["trials"] if t["state"] == "pruned"]
    assert pruned, [t["state"] for t in manifest["trials"]]
    for t in manifest["trials"]:
        run_dir = tmp_path / "out" / t["run_dir"]
        aucs = epoch_aucs(run_dir)
        # what the pruner saw is the validation AUC of each epoch
        assert [t["epoch_values"][str(e)] for e in range(1, len(aucs) + 1)] == pytest.approx(aucs, abs=1e-12)
        if t["state"] == "pruned":
            assert len(aucs) == t["pruned_at_epoch"] < 3
            assert not (run_dir / "summary.json").exists()


def test_the_test_split_plays_no_part_in_the_choice(store, tmp_path, monkeypatch):
    """Two searches whose test scores are unrelated random numbers choose the same trials."""
    base, space = write_setup(tmp_path, store)
    results = []
    for seed in (0, 1):
        rng = np.random.default_rng(seed)

        def random_test_scores(model, split, batch_size, device, rng=rng):
            return {"auc": float(rng.random()), "logloss": float(rng.random()), "rows": len(split)}

        monkeypatch.setattr(run_mod, "evaluate", random_test_scores)
        manifest = run_tune(base, space, tmp_path / f"out{seed}", trials=3)
        results.append(manifest)
        assert "test" not in json.dumps(manifest["trials"])
    a, b = ([(t["values"], t["valid_auc"], t["state"]) for t in m["trials"]] for m in results)
    assert a == b
    assert results[0]["best"]["number"] == results[1]["best"]["number"]
    test_aucs = [json.loads((tmp_path / f"out{s}" / "trials/0000/summary.json").read_text())["test_auc"]
                 for s in (0, 1)]
    assert test_aucs[0] != test_aucs[1]  # the test scores did differ


def test_report_renders_trials_best_config_and_importances(store, tmp_path, capsys):
    base, space = write_setup(tmp_path, store)
    out = tmp_path / "out"
    assert main(["tune", "-c", str(base), "--space", str(space), "--trials", "3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "[3/3] trial 2" in printed and "best: trial" in printed
    (out / "report.html").unlink()
    assert main(["report", str(out)]) == 0
    page = (out / "report.html").read_text()
    manifest = json.loads((out / "tune.json").read_text())
    assert "<h2>Trials</h2>" in page and "<h2>Best trial</h2>" in page and "<h2>Parameter importances</h2>" in page
    assert manifest["importances"], manifest["importances_note"]
    for name, value in manifest["importances"].items():
        assert f"<td>{name}</td><td class=num>{value:.3f}</td>" in page
    for t in manifest["trials"]:
        assert f"<td>{t['number']}</td><td>complete</td><td class=num>{t['valid_auc']:.5f}</td>" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page


def test_bad_space_and_changed_setup_are_refused_by_name(store, tmp_path, capsys):
    base, space = write_setup(tmp_path, store)
    bad = {
        "data.store": [1, 2],
        "model.params.hidden_size": [8],
        "train.lr": {"low": 0, "high": 1e-2, "log": True},
        "train.dropout": {"low": 0.5, "high": 0.1},
    }
    for key, spec in bad.items():
        path = tmp_path / "bad.yaml"
        path.write_text(yaml.safe_dump({"space": {key: spec}}))
        with pytest.raises(ConfigError, match=rf"bad\.yaml: .*{key}"):
            load_space(path, "deepfm", [])
    assert main(["tune", "-c", str(base), "--space", str(path), "--trials", "1", "--out", str(tmp_path / "x")]) == 2
    assert "bad.yaml: space: train.dropout" in capsys.readouterr().err

    notes: list[str] = []
    setup = load_space(None, "lr", notes)  # default space restricted to what lr takes
    assert not any(k.startswith("model.params.") for k in setup["space"]) and "train.lr" in setup["space"]
    assert any("lr does not take hidden_units" in n for n in notes)

    out = tmp_path / "out"
    run_tune(base, space, out, trials=1)
    space.write_text(yaml.safe_dump({**SPACE, "space": {"train.lr": [0.001, 0.01]}}))
    with pytest.raises(RuntimeError, match="another setup.*search space"):
        run_tune(base, space, out, trials=2)


def test_a_trial_left_running_by_a_killed_process_is_tried_again(store, tmp_path):
    from ctrlab.experiments.tune import STUDY_DB, STUDY_NAME, suggest

    base, space = write_setup(tmp_path, store)
    out = tmp_path / "out"
    run_tune(base, space, out, trials=1)
    # what `kill -9` during a trial leaves: a RUNNING trial with its parameters drawn
    study = optuna.load_study(study_name=STUDY_NAME, storage=f"sqlite:///{out / STUDY_DB}")
    orphan = study.ask()
    values = {k: suggest(orphan, k, spec) for k, spec in load_space(space, "deepfm", [])["space"].items()}
    manifest = run_tune(base, space, out, trials=2)
    states = {t["number"]: (t["state"], t["interrupted"]) for t in manifest["trials"]}
    assert states == {0: ("complete", False), 1: ("fail", True), 2: ("complete", False)}
    assert manifest["trials"][2]["values"] == values
