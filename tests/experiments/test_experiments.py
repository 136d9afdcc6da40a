"""Tests for ctrlab.experiments and the compare / sweep / plot / report commands, on a tiny synthetic
store (3000 rows, embedding_dim 4, hidden [16], 1-2 epochs): the results table against the runs'
own summaries, resume after a crash or a lost summary, grid and one-at-a-time expansion, the per-row
scores behind the significance column (the tests themselves: test_significance.py), the charts and the self-contained report (rendered in headless Chromium when installed)."""

from __future__ import annotations

import argparse
import base64
import copy
import csv
import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import yaml

import ctrlab.train.run as run_mod
import ctrlab.train.trainer as trainer_mod
from ctrlab.cli.experiments import add_compare, add_plot, add_report, add_sweep
from ctrlab.config import ConfigError
from ctrlab.data.synth import write_synthetic
from ctrlab.experiments.layout import read_manifest, read_scores
from ctrlab.experiments.sweep import (
    expand_grid,
    expand_one_at_a_time,
    parse_axis,
    parse_grid,
    plan_sweep,
    split_top_level,
)
from ctrlab.train.rundir import RunDir
from ctrlab.train.significance import paired_test
from conftest import synthetic_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TINY = ["--set", "model.params.embedding_dim=4", "--set", "model.params.hidden_units=[16]",
        "--set", "train.batch_size=256", "--set", "train.threads=1", "--set", "train.log_every=2",
        "--set", "train.eval_batch_size=1000"]
CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)


def cli(*argv: str) -> int:
    """Run one of the four commands (as ``ctrlab`` would, minus its error printing)."""
    parser = argparse.ArgumentParser(prog="ctrlab")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_compare, add_sweep, add_plot, add_report):
        add(sub)
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


def compare_argv(store: Path, out: Path, *extra: str) -> list[str]:
    return ["compare", "--data", store, "--models", "fm,dnn", "--seeds", "2", "--epochs", "2", "--out", out,
            "--quiet", *TINY, *extra]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("exp_store")
    synthetic_store(root, 3000, seed=3)
    return root / "store"


@pytest.fixture(scope="module")
def compared(store, tmp_path_factory) -> Path:
    """fm and dnn, 2 seeds each, 2 epochs: a finished comparison."""
    out = tmp_path_factory.mktemp("compare") / "exp"
    assert cli(*compare_argv(store, out)) == 0
    return out


def summaries(exp: Path) -> dict[str, dict]:
    return {p.parent.name: json.loads(p.read_text()) for p in sorted((exp / "runs").glob("*/summary.json"))}


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


# --------------------------------------------------------------------------------------------
# compare: layout and the numbers of the table
# --------------------------------------------------------------------------------------------

def test_compare_layout_and_runs(compared, store):
    manifest = json.loads((compared / "experiment.json").read_text())
    assert manifest["kind"] == "compare" and manifest["seeds"] == 2
    assert [r["name"] for r in manifest["runs"]] == ["fm_seed0", "fm_seed1", "dnn_seed0", "dnn_seed1"]
    assert all(r["status"] == "done" for r in manifest["runs"])
    for name in ("results.md", "results.csv", "runs.csv", "report.html"):
        assert (compared / name).is_file(), name
    configs = {}
    for run in manifest["runs"]:
        run_dir = compared / run["dir"]
        for name in ("config.yaml", "epochs.jsonl", "steps.jsonl", "summary.json"):
            assert (run_dir / name).is_file(), (run["name"], name)
        configs[run["name"]] = yaml.safe_load((run_dir / "config.yaml").read_text())
    # one store, one training budget; seeds 2024 + k; each model its own params
    assert {c["data"]["store"] for c in configs.values()} == {str(store.resolve())}
    trains = [{k: v for k, v in c["train"].items() if k != "seed"} for c in configs.values()]
    assert all(t == trains[0] for t in trains) and trains[0]["epochs"] == 2
    assert [configs[f"fm_seed{k}"]["train"]["seed"] for k in (0, 1)] == [2024, 2025]
    assert configs["dnn_seed0"]["model"] == {"name": "dnn", "params": configs["dnn_seed0"]["model"]["params"]}
    assert configs["dnn_seed0"]["model"]["params"]["hidden_units"] == [16]
    assert "hidden_units" not in configs["fm_seed0"]["model"]["params"]  # fm does not take it: left out
    # per model, what --set applied and what it did not (printed, and recorded in experiment.json)
    assert manifest["overrides"]["fm"]["not_taken"] == ["model.params.hidden_units=[16]"]
    assert "model.params.embedding_dim=4" in manifest["overrides"]["fm"]["applied"]
    assert manifest["overrides"]["dnn"]["not_taken"] == []
    assert {"model.params.hidden_units=[16]", "model.params.embedding_dim=4", "train.epochs=2"} <= set(
        manifest["overrides"]["dnn"]["applied"])
    assert any(n.startswith("--set for fm: applied ") and n.endswith("not taken (no such hyperparameter): "
                                                                    "model.params.hidden_units=[16]")
               for n in manifest["notes"])
    assert any(n.startswith("--set for dnn: applied ") and "hidden_units=[16]" in n for n in manifest["notes"])
    s = summaries(compared)
    assert s["fm_seed0"]["test_auc"] != s["fm_seed1"]["test_auc"]  # the seeds really differ


def test_compare_table_matches_run_summaries(compared):
    s = summaries(compared)
    rows = {r["model"]: r for r in read_csv(compared / "results.csv")}
    assert set(rows) == {"fm", "dnn"}
    md = (compared / "results.md").read_text()
    for model in ("fm", "dnn"):
        runs = [s[f"{model}_seed{k}"] for k in (0, 1)]
        row = rows[model]
        assert row["seeds_done"] == "2" and row["seeds_planned"] == "2"
        for key in ("test_auc", "test_logloss", "valid_auc", "train_loss", "samples_per_s"):
            values = np.array([r[key] for r in runs], dtype=float)
            assert float(row[f"{key}_mean"]) == pytest.approx(values.mean(), rel=1e-12), key
            assert float(row[f"{key}_std"]) == pytest.approx(values.std(ddof=1), rel=1e-9), key
        seconds = [sum(h["seconds"] for h in r["history"]) for r in runs]
        assert float(row["train_seconds_mean"]) == pytest.approx(np.mean(seconds))
        assert int(float(row["parameters_mean"])) == runs[0]["parameters"]
        # the markdown row shows the same numbers, mean ± std with 4 decimals
        auc = np.array([r["test_auc"] for r in runs])
        md_row = next(line for line in md.splitlines() if line.startswith(f"| {model} |"))
        assert f"{auc.mean():.4f} ± {auc.std(ddof=1):.4f}" in md_row
        assert f"| {runs[0]['parameters']:,} |" in md_row
    # sorted by mean test AUC, the first row is "best", the other is judged by the paired test on the
    # runs' own per-row test scores
    order = sorted(rows, key=lambda m: -float(rows[m]["test_auc_mean"]))
    assert [r["model"] for r in read_csv(compared / "results.csv")] == order
    assert rows[order[0]]["vs_best"] == "best" and rows[order[0]]["diff_vs_best"] == ""
    scored = {name: read_scores(compared / "runs" / name, "test", summary) for name, summary in s.items()}
    labels = scored["fm_seed0"][0]
    test = paired_test("auc", labels, [scored[f"{order[1]}_seed{k}"][1] for k in (0, 1)],
                       [scored[f"{order[0]}_seed{k}"][1] for k in (0, 1)])
    assert float(rows[order[1]]["diff_vs_best"]) == pytest.approx(float(rows[order[1]]["test_auc_mean"])
                                                                  - float(rows[order[0]]["test_auc_mean"]))
    assert float(rows[order[1]]["diff_vs_best"]) == pytest.approx(test.diff)
    assert float(rows[order[1]]["p_vs_best"]) == pytest.approx(test.p)
    assert rows[order[1]]["vs_best"] == ("worse" if test.p < 0.05 else "tie")
    assert "DeLong paired test over the rows, seeds pooled (test split, the same 320 rows" in md
    assert f"{test.diff:+.4f} ± {test.se:.4f}" in md
    runs_csv = read_csv(compared / "runs.csv")
    assert [r["run"] for r in runs_csv] == ["fm_seed0", "fm_seed1", "dnn_seed0", "dnn_seed1"]
    assert float(runs_csv[0]["test_auc"]) == s["fm_seed0"]["test_auc"]


# --------------------------------------------------------------------------------------------
# resume
# --------------------------------------------------------------------------------------------

@pytest.fixture
def training_spy(monkeypatch):
    """Records which run directories run_training was called for."""
    calls: list[str] = []
    real = run_mod.run_training

    def spy(cfg, **kwargs):
        calls.append(Path(cfg.run_dir).name)
        return real(cfg, **kwargs)

    monkeypatch.setattr(run_mod, "run_training", spy)
    return calls


def test_resume_after_crash_trains_only_the_missing_run(store, tmp_path, monkeypatch, training_spy, compared):
    out = tmp_path / "exp"
    real_epoch = trainer_mod.Trainer.train_epoch
    state = {"epochs": 0, "crash": True}

    def crashing_epoch(self):  # the 2nd epoch of dnn_seed1 dies (after epoch 1's checkpoint)
        if state["crash"] and self.run.path.name == "dnn_seed1" and self.epoch == 1:
            raise RuntimeError("simulated crash")
        state["epochs"] += 1
        return real_epoch(self)

    monkeypatch.setattr(trainer_mod.Trainer, "train_epoch", crashing_epoch)
    with pytest.raises(RuntimeError, match=r"1 of 4 runs failed \(dnn_seed1\).*Rerun"):
        cli(*compare_argv(store, out))
    manifest = json.loads((out / "experiment.json").read_text())
    failed = [r for r in manifest["runs"] if r["status"] == "failed"]
    assert [r["name"] for r in failed] == ["dnn_seed1"] and "simulated crash" in failed[0]["error"]
    assert not (out / "runs/dnn_seed1/summary.json").exists()
    assert (out / "runs/dnn_seed1/checkpoints/epoch_1.pt").is_file()
    dnn_row = next(r for r in read_csv(out / "results.csv") if r["model"] == "dnn")
    assert dnn_row["seeds_done"] == "1"  # the table is written with what finished
    assert "dnn_seed1" in (out / "results.md").read_text()  # named as unfinished in the footer
    mtimes = {p.parent.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*/summary.json")}

    training_spy.clear()
    state.update(epochs=0, crash=False)
    assert cli(*compare_argv(store, out)) == 0
    assert training_spy == ["dnn_seed1"]  # finished runs are not trained again
    assert state["epochs"] == 1  # resumed after epoch 1: only epoch 2 trained
    for name, mtime in mtimes.items():
        assert (out / "runs" / name / "summary.json").stat().st_mtime_ns == mtime
    manifest = json.loads((out / "experiment.json").read_text())
    assert all(r["status"] == "done" for r in manifest["runs"])
    # the resumed run ends exactly as the uninterrupted one of the same config
    resumed = json.loads((out / "runs/dnn_seed1/summary.json").read_text())
    reference = json.loads((compared / "runs/dnn_seed1/summary.json").read_text())
    assert resumed["test_auc"] == pytest.approx(reference["test_auc"], abs=1e-9)
    assert next(r for r in read_csv(out / "results.csv") if r["model"] == "dnn")["seeds_done"] == "2"


def test_resume_after_lost_summary(compared, store, tmp_path, training_spy):
    out = tmp_path / "copy"
    shutil.copytree(compared, out)
    before = json.loads((out / "runs/fm_seed1/summary.json").read_text())
    (out / "runs/fm_seed1/summary.json").unlink()
    assert cli(*compare_argv(store, out)) == 0
    assert training_spy == ["fm_seed1"]
    after = json.loads((out / "runs/fm_seed1/summary.json").read_text())
    assert after["test_auc"] == before["test_auc"] and after["epochs_run"] == 2


def test_changed_config_is_refused_and_dry_run_reports_state(compared, store, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(compared, out)
    with pytest.raises(RuntimeError, match=r"(?s)different config.*train\.epochs: 2 in the run, 3 planned"):
        cli(*compare_argv(store, out, "--set", "train.epochs=3"))
    shutil.rmtree(out / "runs/dnn_seed0")
    assert cli(*compare_argv(store, out, "--dry-run")) == 0
    text = capsys.readouterr().out
    assert "2 point(s) x 2 seed(s) = 4 run(s)" in text
    assert re.search(r"fm_seed0 .*finished \(kept\)", text) and re.search(r"dnn_seed0 .*to train", text)


def test_a_setting_newer_than_a_run_at_its_default_is_no_difference():
    """Runs recorded by an older ctrlab lack newer keys: planned at their defaults they resume; set
    to something else they are a difference."""
    from ctrlab.config import load_config, to_dict
    from ctrlab.experiments.core import config_differences

    planned = to_dict(load_config(None, []))
    saved = copy.deepcopy(planned)
    del saved["train"]["min_epochs"]
    assert config_differences(planned, saved) == []
    planned["train"]["min_epochs"] = 3
    assert config_differences(planned, saved) == ["train.min_epochs: None in the run, 3 planned"]


def test_a_second_process_on_the_same_experiment_is_refused(compared, store, tmp_path, training_spy):
    fcntl = pytest.importorskip("fcntl")
    out = tmp_path / "copy"
    shutil.copytree(compared, out)
    with open(out / ".lock", "w") as held:  # another process holds the experiment
        held.write("pid 12345, since earlier")
        held.flush()
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(RuntimeError, match=r"in use by another ctrlab compare/sweep \(pid 12345"):
            cli(*compare_argv(store, out))
    assert training_spy == []
    assert cli(*compare_argv(store, out)) == 0  # released: runs normally (nothing left to train)
    assert training_spy == []


def test_compare_errors(store, tmp_path):
    with pytest.raises(ConfigError, match="give -c CONFIG"):
        cli("compare", "--models", "fm", "--out", tmp_path / "x")
    with pytest.raises(ValueError, match="Unknown model 'deepfn'.*deepfm"):
        cli("compare", "--data", store, "--models", "fm,deepfn", "--out", tmp_path / "x")
    with pytest.raises(ConfigError, match="hiden_units.*hidden_units"):
        cli("compare", "--data", store, "--models", "fm,dnn", "--set", "model.params.hiden_units=[4]",
            "--out", tmp_path / "x")
    with pytest.raises(FileNotFoundError, match="not a ctrlab store"):
        cli("compare", "--data", tmp_path, "--models", "fm", "--out", tmp_path / "x")
    with pytest.raises(ConfigError, match="run_dir"):
        cli("compare", "--data", store, "--models", "fm", "--set", "run_dir=x", "--out", tmp_path / "x")


def test_compare_with_config_file_shares_params(store, tmp_path):
    """-c: the base model keeps its params; another model gets its ready params + the shared ones."""
    from ctrlab.experiments.compare import plan_compare

    base = {"data": {"store": str(store)}, "model": {"name": "deepfm", "params": {
        "embedding_dim": 6, "hidden_units": [32], "dropout": 0.1, "batch_norm": True}},
        "train": {"epochs": 3, "batch_size": 512}, "run_dir": "somewhere"}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    plan = plan_compare(tmp_path / "exp", "deepfm,fm,dcn", config_path=str(path))
    params = {p.name: p.config["model"]["params"] for p in plan.points}
    assert params["deepfm"] == base["model"]["params"]
    assert params["fm"] == {"embedding_dim": 6}
    assert params["dcn"]["embedding_dim"] == 6 and params["dcn"]["hidden_units"] == [32]
    assert params["dcn"]["cross_layers"] == 3  # from the dcn ready config
    assert all(p.config["train"] == {"epochs": 3, "batch_size": 512} for p in plan.points)
    assert all("run_dir" not in p.config for p in plan.points)


def test_compare_keeps_the_linear_baselines_solver(store, tmp_path):
    """-c with a minibatch budget: lr still trains to convergence with its ready solver (it would
    otherwise be ranked undertrained), said in a note; --set train.optimizer makes it equal again."""
    from ctrlab.experiments.compare import plan_compare

    base = {"data": {"store": str(store)}, "model": {"name": "deepfm", "params": {"embedding_dim": 6}},
            "train": {"epochs": 3, "batch_size": 512, "optimizer": "adam"}}
    path = tmp_path / "base.yaml"
    path.write_text(yaml.safe_dump(base))
    plan = plan_compare(tmp_path / "exp", "deepfm,lr", config_path=str(path))
    train = {p.name: p.config["train"] for p in plan.points}
    assert train["deepfm"] == base["train"]
    assert train["lr"]["optimizer"] == "lbfgs" and len(train["lr"]["l2_grid"]) > 1
    assert any("lr trains with its ready config's solver" in note for note in plan.notes)
    same = plan_compare(tmp_path / "exp2", "deepfm,lr", config_path=str(path), overrides=["train.optimizer=adam"])
    assert all(p.config["train"]["optimizer"] == "adam" for p in same.points)


# --------------------------------------------------------------------------------------------
# sweep expansion
# --------------------------------------------------------------------------------------------

def test_split_top_level_and_axis_values():
    assert split_top_level("1,2, 3") == ["1", "2", "3"]
    assert split_top_level("[400,400,400],[512,256,128]") == ["[400,400,400]", "[512,256,128]"]
    assert split_top_level("{a: 1, b: [2,3]},'x,y',\"p,q\"") == ["{a: 1, b: [2,3]}", "'x,y'", '"p,q"']
    for bad in ("[1,2", "1,2]", "[1,(2]", "'abc"):
        with pytest.raises(ConfigError):
            split_top_level(bad)
    assert parse_axis("train.lr=1e-2,1e-3,1e-4") == ("train.lr", [0.01, 0.001, 0.0001])
    assert parse_axis("train.optimizer=adam,sgd,adagrad") == ("train.optimizer", ["adam", "sgd", "adagrad"])
    key, values = parse_axis("model.params.hidden_units=[400,400,400],[512,256,128],[1024,1024,1024]")
    assert key == "model.params.hidden_units"
    assert values == [[400, 400, 400], [512, 256, 128], [1024, 1024, 1024]]
    assert parse_axis("model.params.batch_norm=true,false")[1] == [True, False]
    for bad, message in (("train.lr", "KEY=V1"), ("train.lr=1e-3,", "empty value"), ("train.lr=1,1.0", "twice"),
                         ("data.seed=1,2", "same prepared store"), ("features.numeric.transform=log1p,minmax",
                                                                      "same prepared store"),
                         ("train.seed=1,2", "--seeds")):
        with pytest.raises(ConfigError, match=message):
            parse_axis(bad)
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid(["train.lr=1,2", "train.lr=3"])


def test_grid_and_one_at_a_time_expansion():
    axes = {"train.epochs": [1, 4, 10], "train.batch_size": [256, 512, 1024],
            "train.optimizer": ["adam", "sgd", "adagrad"],
            "train.lr": [1e-2, 1e-3, 1e-4], "model.params.hidden_units": [[400] * 3, [512, 256, 128], [1024] * 3]}
    grid = expand_grid(axes)
    assert len(grid) == 3 ** 5
    assert grid[0] == {"train.epochs": 1, "train.batch_size": 256, "train.optimizer": "adam", "train.lr": 1e-2,
                       "model.params.hidden_units": [400, 400, 400]}
    assert grid[1]["model.params.hidden_units"] == [512, 256, 128]  # the last axis varies fastest
    assert len({json.dumps(p, sort_keys=True) for p in grid}) == len(grid)
    base = {"train.epochs": 4, "train.batch_size": 4096, "train.optimizer": "adam", "train.lr": 0.001,
            "model.params.hidden_units": (400, 400, 400)}
    oat = expand_one_at_a_time(axes, base)
    assert oat[0] == {}  # the base point first
    # 15 values, 4 of them equal to the base's (epochs 4, adam, lr 1e-3, [400,400,400]): 11 + base
    assert len(oat) == 12
    assert {"train.lr": 1e-2} in oat and {"train.lr": 1e-3} not in oat
    assert {"model.params.hidden_units": [400, 400, 400]} not in oat
    assert all(len(p) == 1 for p in oat[1:])


def test_plan_sweep_points(store, tmp_path):
    plan = plan_sweep(tmp_path / "e", ["train.lr=1e-2,1e-3", "model.params.hidden_units=[16,8],[32]"],
                      store=str(store), model="dnn", overrides=["train.epochs=1"])
    assert len(plan.points) == 4 and plan.mode == "grid" and plan.metric == "valid_auc"
    assert [p.name for p in plan.points] == ["lr=0.01, hidden_units=[16,8]", "lr=0.01, hidden_units=[32]",
                                             "lr=0.001, hidden_units=[16,8]", "lr=0.001, hidden_units=[32]"]
    assert all(re.fullmatch(r"[A-Za-z0-9._=+-]+", p.slug) for p in plan.points)
    assert len({p.slug for p in plan.points}) == 4
    first = plan.points[0].config
    assert first["train"]["lr"] == 0.01 and first["model"]["params"]["hidden_units"] == [16, 8]
    assert first["train"]["epochs"] == 1 and first["data"]["store"] == str(store.resolve())

    oat = plan_sweep(tmp_path / "e", ["train.lr=1e-2,1e-3", "train.optimizer=adam,sgd"], store=str(store),
                     model="dnn", mode="one-at-a-time")
    assert [p.name for p in oat.points] == ["base", "lr=0.01", "optimizer=sgd"]  # ready config: adam, 1e-3
    assert oat.base_settings == {"train.lr": 0.001, "train.optimizer": "adam"}
    assert oat.points[2].config["train"]["lr"] == 0.001

    with pytest.raises(ConfigError, match="hiden"):
        plan_sweep(tmp_path / "e", ["model.params.hiden_units=[4],[8]"], store=str(store), model="dnn")
    with pytest.raises(ConfigError, match="train.optimiser"):
        plan_sweep(tmp_path / "e", ["train.optimiser=adam,sgd"], store=str(store), model="dnn")
    with pytest.raises(ConfigError, match="not one of"):
        plan_sweep(tmp_path / "e", ["train.optimizer=adam,rmsprop"], store=str(store), model="dnn")
    with pytest.raises(ConfigError, match="--model"):
        plan_sweep(tmp_path / "e", ["train.lr=1,2"], store=str(store))


def test_set_and_axes_say_per_model_what_was_applied(store, tmp_path):
    """A model parameter some models of a sweep or comparison do not take: applied to the others,
    and a note per model says what was applied and what not (also in experiment.json)."""
    from ctrlab.experiments.compare import plan_compare
    from ctrlab.experiments.core import describe_plan

    plan = plan_sweep(tmp_path / "e", ["model.name=fm,dnn"], store=str(store), model="dnn",
                      overrides=["model.params.hidden_units=[8]", "model.params.embedding_dim=4"])
    params = {p.name: p.config["model"]["params"] for p in plan.points}
    assert params["name=fm"]["embedding_dim"] == 4 and "hidden_units" not in params["name=fm"]
    assert params["name=dnn"]["hidden_units"] == [8] and params["name=dnn"]["embedding_dim"] == 4
    assert plan.overrides == {
        "dnn": {"applied": ["model.params.hidden_units=[8]", "model.params.embedding_dim=4"], "not_taken": []},
        "fm": {"applied": ["model.params.embedding_dim=4"], "not_taken": ["model.params.hidden_units=[8]"]}}
    dry_run = describe_plan(plan, tmp_path / "e")
    assert ("note: --set for fm: applied model.params.embedding_dim=4; not taken (no such hyperparameter): "
            "model.params.hidden_units=[8]") in dry_run
    assert "note: --set for dnn: applied model.params.hidden_units=[8], model.params.embedding_dim=4" in dry_run
    # a grid axis on a parameter one of the models lacks: said, not silently dropped
    grid = plan_sweep(tmp_path / "g", ["model.name=fm,dnn", "model.params.hidden_units=[8],[16]"], store=str(store),
                      model="dnn")
    assert any(n.startswith("fm does not take model.params.hidden_units=[8]: left out") for n in grid.notes)
    # every override taken by every model: no per-model notes, still recorded
    same = plan_compare(tmp_path / "c", "fm,dnn", store=str(store), overrides=["model.params.embedding_dim=4"])
    assert not any(n.startswith("--set for") for n in same.notes)
    assert same.overrides["fm"] == {"applied": ["model.params.embedding_dim=4"], "not_taken": []}


def test_sweep_one_at_a_time_trains_table_and_axis_chart(store, tmp_path):
    out = tmp_path / "sweep"
    assert cli("sweep", "--data", store, "--model", "dnn", "--mode", "one-at-a-time", "--grid",
               "model.params.hidden_units=[16],[8,8]", "--seeds", "2", "--epochs", "1", "--out", out, "--quiet",
               *TINY) == 0
    rows = read_csv(out / "results.csv")
    assert sorted(r["setting"] for r in rows) == ["base", "hidden_units=[8,8]"]  # [16] is the base
    assert rows[0]["vs_best"] == "best" and rows[1]["vs_best"] in ("tie", "worse")
    assert float(rows[1]["p_vs_best"]) >= 0 and float(rows[1]["se_seeds_vs_best"]) > 0
    assert float(rows[0]["valid_auc_mean"]) >= float(rows[1]["valid_auc_mean"])
    md = (out / "results.md").read_text()
    assert "| setting |" in md and "chosen on the validation split" in md and "base config (model.params" in md
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["base_seed0", "base_seed1", "hidden_units=8-8_seed0",
                                                               "hidden_units=8-8_seed1"]
    chart = out / "plots" / "sweep_model.params.hidden_units.png"
    assert chart.is_file() and chart.read_bytes()[:8] == PNG_SIGNATURE


def test_sweep_grid_table_has_a_column_per_axis(store, tmp_path):
    out = tmp_path / "grid"
    assert cli("sweep", "--data", store, "--model", "fm", "--grid", "train.lr=1e-2,1e-3", "--grid",
               "train.batch_size=256,512", "--epochs", "1", "--out", out, "--quiet",
               "--set", "model.params.embedding_dim=4", "--set", "train.threads=1") == 0
    rows = read_csv(out / "results.csv")
    assert {(r["train.lr"], r["train.batch_size"]) for r in rows} == {("0.01", "256"), ("0.01", "512"),
                                                                     ("0.001", "256"), ("0.001", "512")}
    # one seed: the rows' sampling error only; a tie or an unclear difference, never "worse"
    assert rows[0]["vs_best"] == "best"
    assert all(r["vs_best"] in ("tie (1 seed)", "unclear (1 seed)") and r["se_seeds_vs_best"] == "" for r in rows[1:])
    assert "DeLong paired test" in (out / "results.md").read_text()  # valid_auc ranks: the valid split's rows
    assert "| train.lr | train.batch_size |" in (out / "results.md").read_text()
    assert (out / "plots" / "sweep_train.lr.png").is_file() and (out / "plots" / "sweep_train.batch_size.png").is_file()


def test_compare_from_config_prepares_one_store(tmp_path):
    """-c with raw data and no data.store: the store is prepared once, in EXP_DIR/store."""
    raw = tmp_path / "raw.tsv"
    write_synthetic(raw, 1500, seed=5, progress=False)
    config = {"data": {"train": [str(raw)], "split": [0.8, 0.1, 0.1]},
              "model": {"name": "fm", "params": {"embedding_dim": 4}},
              "train": {"epochs": 1, "batch_size": 256, "threads": 1}}
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config))
    out = tmp_path / "exp"
    assert cli("compare", "-c", tmp_path / "base.yaml", "--models", "fm,lr", "--out", out, "--quiet") == 0
    assert (out / "store" / "meta.json").is_file()
    for name in ("fm_seed0", "lr_seed0"):
        saved = yaml.safe_load((out / "runs" / name / "config.yaml").read_text())
        assert saved["data"]["store"] == str((out / "store").resolve()) and saved["train"]["epochs"] == 1
    assert len(read_csv(out / "results.csv")) == 2


# --------------------------------------------------------------------------------------------
# per-row scores of the runs (what the paired tests read)
# --------------------------------------------------------------------------------------------

def test_runs_save_their_per_row_scores_and_reading_verifies_them(compared, tmp_path):
    """Each run's scores_<split>.npz reproduces its summary's AUC; a file from another run, a
    truncated one or a missing one is refused or reported by name, never used silently."""
    from ctrlab.experiments.results import experiment_results

    s = summaries(compared)
    for name, summary in s.items():
        for split in ("valid", "test"):  # read_scores checks the AUC against the summary's
            labels, scores = read_scores(compared / "runs" / name, split, summary)
            assert scores.dtype == np.float32 and labels.shape == scores.shape
        assert labels.size == summary["test_rows"]
    exp = tmp_path / "copy"
    shutil.copytree(compared, exp)
    fm0, fm1 = exp / "runs" / "fm_seed0", exp / "runs" / "fm_seed1"
    shutil.copy(RunDir(fm1).scores("test"), RunDir(fm0).scores("test"))  # another run's scores
    with pytest.raises(ValueError, match=r"fm_seed0/scores_test.npz: AUC .* summary.json says"):
        read_scores(fm0, "test", s["fm_seed0"])
    table = experiment_results(exp, read_manifest(exp))
    assert any("fm: " in line and "fm_seed0/scores_test.npz" in line for line in table.footer)
    fm_row = next(r for r in table.rows if r.name == "fm")
    dnn_row = next(r for r in table.rows if r.name == "dnn")
    assert fm_row.scores is None and "-" in (fm_row.vs_best, dnn_row.vs_best)  # no test without fm's scores
    RunDir(fm0).scores("test").write_bytes(b"PK\x03\x04 torn")
    with pytest.raises(ValueError, match="unreadable scores file"):
        read_scores(fm0, "test", s["fm_seed0"])
    RunDir(fm0).scores("test").unlink()
    assert read_scores(fm0, "test", s["fm_seed0"]) is None


def test_rerun_scores_runs_finished_without_scores(compared, store, tmp_path, training_spy):
    """Runs finished by an older ctrlab (no scores files) are scored on the next run of the
    command, without training again."""
    exp = tmp_path / "copy"
    shutil.copytree(compared, exp)
    for path in (exp / "runs").glob("*/scores_*.npz"):
        path.unlink()
    assert cli(*compare_argv(store, exp)) == 0
    assert training_spy == []
    assert len(list((exp / "runs").glob("*/scores_*.npz"))) == 8
    assert all(r["vs_best"] != "-" for r in read_csv(exp / "results.csv"))


# --------------------------------------------------------------------------------------------
# plots and report
# --------------------------------------------------------------------------------------------

def test_plot_png_and_svg(compared, tmp_path, capsys):
    out = tmp_path / "plots"
    assert cli("plot", compared, "--out", out, "--format", "png,svg") == 0
    printed = capsys.readouterr().out.split()
    stems = {"test_auc", "valid_auc", "train_loss", "throughput"}
    assert {p.name for p in out.iterdir()} == {f"{s}.{f}" for s in stems for f in ("png", "svg")}
    assert sorted(printed) == sorted(str(p) for p in out.iterdir())
    for stem in stems:
        png = (out / f"{stem}.png").read_bytes()
        assert png[:8] == PNG_SIGNATURE and len(png) > 5000
        width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
        assert width >= 600 and height >= 250
        root = ET.parse(out / f"{stem}.svg").getroot()
        assert root.tag.endswith("svg") and (out / f"{stem}.svg").stat().st_size > 5000
    svg = (out / "train_loss.svg").read_text()  # text is drawn as paths, with the string in a comment
    assert "<!-- fm (2 seeds) -->" in svg and "<!-- Training loss per step -->" in svg


def test_plot_run_dirs_and_errors(compared, tmp_path):
    out = tmp_path / "p"
    paths = cli("plot", compared / "runs" / "fm_seed0", compared / "runs" / "dnn_seed0", "--out", out)
    assert paths == 0 and (out / "valid_auc.png").is_file() and (out / "test_auc.png").is_file()
    assert cli("plot", compared / "runs", "--out", tmp_path / "q") == 0  # a folder of run directories
    assert (tmp_path / "q" / "throughput.png").is_file()
    with pytest.raises(ValueError, match="--out"):
        cli("plot", compared / "runs" / "fm_seed0", compared / "runs" / "dnn_seed0")
    with pytest.raises(ValueError, match="pdf"):
        cli("plot", compared, "--format", "pdf")
    with pytest.raises(FileNotFoundError, match="neither an experiment"):
        cli("plot", tmp_path / "p")


def report_images(text: str) -> list[str]:
    return re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)


def test_report_is_self_contained(compared, tmp_path):
    out = tmp_path / "r.html"
    assert cli("report", compared, "--out", out) == 0
    text = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:|//|file:)""", text, re.I)
    assert "<script" not in text.lower() and "<link" not in text.lower() and "@import" not in text
    assert "url(" not in text
    images = report_images(text)
    assert len(images) == 4
    for data in images:
        assert base64.b64decode(data)[:8] == PNG_SIGNATURE
    # the results table, with the same cells as results.md
    md_rows = [line for line in (compared / "results.md").read_text().splitlines() if line.startswith("| fm |")]
    cells = [c.strip() for c in md_rows[0].strip("|").split("|")]
    assert "<table>" in text and "<td>fm</td>" in text
    for cell in cells[1:-2]:
        assert f">{cell}</td>" in text
    assert "fm_seed1" in text and "dnn_seed0" in text  # the runs table
    assert (compared / "report.html").is_file()  # compare wrote one too


def test_without_matplotlib_tables_and_report_still_written(compared, tmp_path, monkeypatch):
    import ctrlab.experiments.plots as plots_mod
    from ctrlab.experiments.core import write_outputs

    monkeypatch.setattr(plots_mod, "have_matplotlib", lambda: False)
    out = tmp_path / "copy"
    shutil.copytree(compared, out, ignore=shutil.ignore_patterns("plots", "report.html", "results.*"))
    logs: list[str] = []
    write_outputs(out, read_manifest(out), log=logs.append)
    assert (out / "results.md").is_file() and not (out / "plots").exists()
    text = (out / "report.html").read_text()
    assert "<img" not in text and "No charts" in text and "<td>fm</td>" in text
    assert any("pip install matplotlib" in line for line in logs)
    with pytest.raises(RuntimeError, match="pip install matplotlib"):
        cli("plot", out)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(compared, tmp_path):
    page = tmp_path / "report.html"
    text = (compared / "report.html").read_text(encoding="utf-8")
    # test-only probe: after load, record each image's decoded size in the DOM that --dump-dom prints
    probe = ("<script>window.addEventListener('load', () => { for (const img of document.images) {"
             " img.setAttribute('data-natural', img.naturalWidth + 'x' + img.naturalHeight);"
             " img.setAttribute('data-shown', img.getBoundingClientRect().width + 'x' +"
             " img.getBoundingClientRect().height); } });</script>")
    page.write_text(text.replace("</body>", probe + "</body>"), encoding="utf-8")
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1280,2000",
             "--virtual-time-budget=5000"]
    dom = subprocess.run(flags + [f"--user-data-dir={tmp_path / 'profile1'}", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=90)
    assert dom.returncode == 0, dom.stderr[-2000:]
    sizes = re.findall(r'<img src="data:image/png;base64,[^"]+"[^>]*data-natural="(\d+)x(\d+)"'
                       r'[^>]*data-shown="([\d.]+)x([\d.]+)"', dom.stdout)
    assert len(sizes) == len(report_images(text)) == 4
    assert all(int(w) > 0 and int(h) > 0 and float(sw) > 0 and float(sh) > 0 for w, h, sw, sh in sizes)

    shot = tmp_path / "shot.png"
    res = subprocess.run(flags + [f"--user-data-dir={tmp_path / 'profile2'}", f"--screenshot={shot}",
                                  (compared / "report.html").as_uri()], capture_output=True, text=True, timeout=90)
    assert res.returncode == 0 and shot.is_file(), res.stderr[-2000:]
    assert shot.read_bytes()[:8] == PNG_SIGNATURE
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (2000, 1280)
    colours = np.unique((pixels[..., :3] * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 100  # tables and charts, not a blank page


def test_help_texts():
    for command in ("compare", "sweep", "plot", "report"):
        with pytest.raises(SystemExit) as exc:
            cli(command, "--help")
        assert exc.value.code == 0
