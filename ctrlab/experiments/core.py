"""Experiments: many training runs on one prepared split, one directory, resumable.

An experiment is a list of *points* (a model, or a setting of a sweep), each trained once per
seed. ``compare`` and ``sweep`` only differ in how they make the points; everything after that
(manifest, resume, execution, results, plots, report) is here and shared::

    EXP_DIR/experiment.json        the plan and the status of every run (rewritten after each run;
                                   see ``layout.py``)
    EXP_DIR/runs/<point>_seed<k>/  ordinary run directories (:class:`ctrlab.train.rundir.RunDir`), plus
                                   the chosen epoch's per-row scores on valid and test, for the
                                   paired significance tests of the results table
    EXP_DIR/results.md, .csv       mean and std over seeds per point (see ``results.py``)
    EXP_DIR/runs.csv               one row per finished run
    EXP_DIR/plots/                 charts (see ``plots.py``)
    EXP_DIR/report.html            one self-contained page (see ``report.py``)

Resume: a run with a summary is finished and kept; any other run is (re)started with
``run_training(resume=True)``, which continues from its last complete epoch. A run whose saved
config differs from the planned one is never silently mixed in: that is an error unless
``restart`` is set.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import io
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .. import __version__
from ..config import (Config, ConfigError, Overrides, base_config_for, get_dotted, load_config, load_yaml,
                      override_items, set_dotted, to_dict)
from ..data.store import Store
from ..fileio import write_bytes_atomic
from ..models import hyperparameter_defaults
from ..train import run as train_run
from ..train.rundir import RunDir
from ..train.evaluate import predict_split, split_labels, task_setup
from ..train.trainer import load_weights
from . import plots
from .layout import MANIFEST, RUNS_DIR, STORE_DIR, experiment_lock, now, read_manifest, write_manifest
from .report import write_report
from .results import RANKING_METRICS, experiment_results, format_value, markdown, one_line, write_results

#: config keys that may differ between a finished run and the plan (they do not change results)
# features: a run records what its store was fitted with (pipeline.json, the truth); the store
# itself is compared as data.store
RESUME_IGNORED = ("run_dir", "train.threads", "train.device", "train.tensorboard", "features")
#: sections a point may not vary: every run of an experiment reads the same prepared store
SHARED_SECTIONS = ("data", "features", "run_dir")

Log = Callable[[str], None]


@dataclass
class Point:
    """One setting of an experiment, trained once per seed.

    ``name`` is for tables and legends ("deepfm", "lr=0.01", "base"); ``slug`` names the run
    directories (letters, digits, ``._=-``); ``settings`` are what distinguishes the point
    (``{"model.name": "deepfm"}``, ``{"train.lr": 0.01}``); ``config`` is the full config data
    with the base training seed and no run_dir."""

    name: str
    slug: str
    settings: dict[str, Any]
    config: dict[str, Any]


@dataclass
class Plan:
    kind: str  # compare | sweep
    points: list[Point]
    seeds: int
    metric: str  # the column that ranks the points; its split is the one the paired test reads
    store: str
    title: str
    axes: dict[str, list[Any]] = field(default_factory=dict)  # sweep axes (key -> values)
    mode: str | None = None  # sweep: grid | one-at-a-time
    base_settings: dict[str, Any] = field(default_factory=dict)  # one-at-a-time: the base value per axis
    base_config: dict[str, Any] | None = None  # sweep: the config the points vary
    notes: list[str] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    #: per model, the --set overrides applied to it and those it does not take (see override_record)
    overrides: dict[str, dict[str, list[str]]] = field(default_factory=dict)


@dataclass
class RunSpec:
    name: str  # <slug>_seed<k>; also the directory name under runs/
    point: str  # Point.name
    seed_index: int
    seed: int
    config: dict[str, Any]


# --------------------------------------------------------------------------------------------
# small helpers for config data
# --------------------------------------------------------------------------------------------

def parse_sets(overrides: Overrides | None) -> list[tuple[str, Any]]:
    """``--set`` overrides (texts or a mapping, see :func:`ctrlab.config.override_items`) ->
    [(dotted key, value)]; rejects keys a point may not vary."""
    sets = override_items(overrides)
    if any(key == "run_dir" for key, _ in sets):
        raise ConfigError("--set run_dir: every run's directory is EXP_DIR/runs/<point>_seed<k>; use --out")
    return sets


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(data, dict) and data:
        out: dict[str, Any] = {}
        for key, value in data.items():
            out.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: data}


def config_differences(planned: dict[str, Any], saved: dict[str, Any]) -> list[str]:
    a, b = flatten(planned), flatten(saved)
    defaults = flatten(to_dict(load_config(None, [])))
    diffs = []
    for key in sorted(set(a) | set(b)):
        if key in RESUME_IGNORED or any(key.startswith(k + ".") for k in RESUME_IGNORED):
            continue
        if key not in b and key in defaults and _normalize(a.get(key)) == _normalize(defaults[key]):
            continue  # a setting newer than the run, planned at its default: the run trained with that behaviour
        if _normalize(a.get(key)) != _normalize(b.get(key)):
            diffs.append(f"{key}: {b.get(key)!r} in the run, {a.get(key)!r} planned")
    return diffs


def _normalize(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_normalize(v) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def validate_config(data: dict[str, Any], where: str) -> Config:
    """Typed config from data; model params checked against the model's constructor."""
    try:
        cfg = load_config(None, [], base=copy.deepcopy(data))
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    accepted = hyperparameter_defaults(cfg.model.name)  # ValueError naming the registered models
    unknown = [k for k in cfg.model.params if k not in accepted]
    if unknown:
        raise ConfigError(f"{where}: model {cfg.model.name!r} has no hyperparameter(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(accepted) or '(none)'}")
    return cfg


def unique_slugs(points: list[Point]) -> None:
    """Make slugs unique (different values can slug alike: "[1,2]" and "1-2")."""
    seen: dict[str, int] = {}
    for p in points:
        seen[p.slug] = seen.get(p.slug, 0) + 1
    for p in points:
        if seen[p.slug] > 1:
            p.slug = f"{p.slug}-{hashlib.sha1(p.name.encode()).hexdigest()[:6]}"


def pin_store(base: dict[str, Any], exp_dir: Path) -> str:
    """The store every run reads: ``data.store`` (absolute), or EXP_DIR/store when unset (prepared
    once from ``data.train`` before the first run)."""
    store = get_dotted(base, "data.store")
    if not store:
        if not get_dotted(base, "data.train"):
            raise ConfigError("no data: give --data STORE, or a config with data.store or data.train")
        store = str(exp_dir / STORE_DIR)
    store = str(Path(store).resolve())
    set_dotted(base, "data.store", store)
    return store


# --------------------------------------------------------------------------------------------
# model-aware point configs
# --------------------------------------------------------------------------------------------

def config_for_model(base: dict[str, Any], model: str, sets: list[tuple[str, Any]],
                     notes: list[str]) -> dict[str, Any]:
    """The base config with ``model.name = model`` and the overrides applied.

    For the base config's own model, its params are used as they are. For another model, the
    model's ready params (the ready config, ctrlab/config/presets/<model>.yaml) come first and the base's params that the model
    takes go over them (so shared settings such as embedding_dim, dropout or batch_norm stay the
    same across a comparison). Params a model does not take (from the base or from ``sets``)
    are left out for that model, with a note."""
    data = copy.deepcopy(base)
    section = data.get("model") or {}
    base_model = section.get("name")
    base_params = dict(section.get("params") or {})
    accepted = hyperparameter_defaults(model)
    if base_model == model:
        params = base_params
    else:
        ready = dict((base_config_for(model).get("model") or {}).get("params") or {})
        params = {**ready, **{k: v for k, v in base_params.items() if k in accepted}}
        skipped = sorted(k for k in base_params if k not in accepted)
        if skipped:
            notes.append(f"{model} does not take {', '.join(skipped)} (from the base config's {base_model} params): "
                         "left out for it")
    data["model"] = {**section, "name": model, "params": params}
    ready_train = (base_config_for(model).get("train") or {}) if base_model != model else {}
    if ready_train.get("optimizer") == "lbfgs" and not any(key == "train.optimizer" for key, _ in sets):
        # a model whose ready config solves it to convergence (full-batch L-BFGS, L2 chosen on valid)
        # keeps that solver: the base's minibatch budget would leave it undertrained and rank it wrongly
        data["train"] = {**(data.get("train") or {}), **ready_train}
        notes.append(f"{model} trains with its ready config's solver (train.optimizer lbfgs, L2 path "
                     f"{ready_train.get('l2_grid')}), to convergence, not the base config's minibatch budget")
    for key, value in sets:
        if key == "model.name":
            continue  # chosen per point
        if model_takes(model, key):
            set_dotted(data, key, value)
    return data


def model_takes(model: str, key: str) -> bool:
    """Whether an override applies to a model: ``model.params.X`` only if the model has X."""
    if not key.startswith("model.params."):
        return True
    return key.split(".", 2)[2].split(".")[0] in hyperparameter_defaults(model)


def override_record(sets: list[tuple[str, Any]], models: list[str],
                    notes: list[str]) -> dict[str, dict[str, list[str]]]:
    """Per model, which ``--set`` overrides it takes and which it does not (``KEY=VALUE`` texts).
    When some override is not taken by every model, one note per model says both."""
    record = {}
    for model in models:
        texts = [(f"{key}={format_value(value)}", model_takes(model, key)) for key, value in sets
                 if key != "model.name"]
        record[model] = {"applied": [t for t, taken in texts if taken], "not_taken": [t for t, taken in texts
                                                                                      if not taken]}
    if any(r["not_taken"] for r in record.values()):
        for model, r in record.items():
            notes.append(f"--set for {model}: applied {', '.join(r['applied']) or 'none'}; "
                         f"not taken (no such hyperparameter): {', '.join(r['not_taken']) or 'none'}")
    return record


def check_params_used(sets: list[tuple[str, Any]], models: list[str], what: str = "--set") -> None:
    """A ``model.params.X`` override that no model of the experiment takes is a typo: error."""
    for key, _ in sets:
        if key.startswith("model.params."):
            name = key.split(".", 2)[2].split(".")[0]
            if not any(model_takes(m, key) for m in models):
                valid = sorted({p for m in models for p in hyperparameter_defaults(m)})
                close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"{what} {key}: no model here ({', '.join(models)}) takes {name!r}{hint}")


# --------------------------------------------------------------------------------------------
# runs, manifest, execution
# --------------------------------------------------------------------------------------------

def plan_runs(plan: Plan, exp_dir: Path) -> list[RunSpec]:
    runs = []
    for point in plan.points:
        base_seed = int(get_dotted(point.config, "train.seed", 2024))
        for k in range(plan.seeds):
            name = f"{point.slug}_seed{k}"
            cfg = copy.deepcopy(point.config)
            set_dotted(cfg, "train.seed", base_seed + k)
            cfg["run_dir"] = str(exp_dir / RUNS_DIR / name)
            runs.append(RunSpec(name, point.name, k, base_seed + k, cfg))
    return runs


def manifest_for(plan: Plan, runs: list[RunSpec], status: dict[str, dict[str, Any]],
                 created: str) -> dict[str, Any]:
    return {
        "format": 1, "ctrlab_version": __version__, "kind": plan.kind, "title": plan.title,
        "created": created, "updated": now(), "command": plan.command,
        "store": plan.store, "seeds": plan.seeds, "metric": plan.metric, "mode": plan.mode,
        "axes": plan.axes, "base_settings": plan.base_settings, "base_config": plan.base_config,
        "notes": plan.notes, "overrides": plan.overrides,
        "points": [{"name": p.name, "slug": p.slug, "settings": p.settings, "config": p.config} for p in plan.points],
        "runs": [{"name": r.name, "point": r.point, "seed_index": r.seed_index, "seed": r.seed,
                  "dir": f"{RUNS_DIR}/{r.name}", **status.get(r.name, {"status": "pending"})} for r in runs],
    }


def score_run(cfg: Config, summary: dict[str, Any]) -> list[Path]:
    """Write the run's scores files (``labels`` uint8[n], ``scores`` f32[n] in stored row order) for
    the valid and test splits: the probabilities of the run's chosen epoch, the weights and function
    its summary's metrics came from. The paired tests of the results table need them per row."""
    run = RunDir(cfg.run_dir)
    store = Store(cfg.data.store)
    epoch = summary.get("best_epoch") or summary["epochs_run"]
    device = torch.device(cfg.train.device)
    model = train_run.build_model_for(cfg, store)
    model.load_state_dict(load_weights(run.checkpoint(epoch)))
    model.to(device)
    paths = []
    for split in ("valid", "test"):
        if summary.get(f"{split}_auc") is None or not store.has_split(split):
            continue
        rows = store.split(split)
        setup = task_setup(model, store, cfg.train.task)  # (several labels: what the run's metrics saw)
        buf = io.BytesIO()
        np.savez(buf, labels=np.asarray(split_labels(rows, setup), dtype=np.uint8),
                 scores=predict_split(model, rows, cfg.train.eval_batch_size, device))
        write_bytes_atomic(run.scores(split), buf.getvalue())
        paths.append(run.scores(split))
    return paths


def check_resumable(runs: list[RunSpec], configs: dict[str, Config], restart: bool) -> None:
    """Before training anything: every existing run directory must belong to this plan."""
    if restart:
        return
    problems = []
    for run in runs:
        saved = RunDir(run.config["run_dir"]).config
        if saved.is_file():
            diffs = config_differences(to_dict(configs[run.name]), load_yaml(saved))
            if diffs:
                problems.append(f"{run.name}: " + "; ".join(diffs[:4]) + (" ..." if len(diffs) > 4 else ""))
    if problems:
        raise RuntimeError("these runs already exist with a different config:\n  " + "\n  ".join(problems[:10])
                           + "\nuse a new --out directory, or --restart to train every run of this one again")


def execute(plan: Plan, exp_dir: str | Path, *, restart: bool = False, progress: bool = True,
            verbose: bool = True, log: Log = print) -> dict[str, Any]:
    """Train every run of the plan that is not finished; write the manifest, results, plots and
    report. Returns the manifest. Raises RuntimeError naming the failed runs (after writing the
    results of the others); rerunning retries only those. Holds EXP_DIR/.lock while it works."""
    exp_dir = Path(exp_dir)
    runs = plan_runs(plan, exp_dir)
    configs = {r.name: validate_config(r.config, r.name) for r in runs}
    exp_dir.mkdir(parents=True, exist_ok=True)
    with experiment_lock(exp_dir):
        check_resumable(runs, configs, restart)
        return _execute_locked(plan, exp_dir, runs, configs, restart=restart, progress=progress,
                               verbose=verbose, log=log)


def _execute_locked(plan: Plan, exp_dir: Path, runs: list[RunSpec], configs: dict[str, Config], *,
                    restart: bool, progress: bool, verbose: bool, log: Log) -> dict[str, Any]:
    (exp_dir / RUNS_DIR).mkdir(exist_ok=True)
    created = now()  # when the experiment was first started: kept across reruns
    if (exp_dir / MANIFEST).is_file():
        try:
            created = read_manifest(exp_dir).get("created") or created
        except (OSError, ValueError):
            pass
    status: dict[str, dict[str, Any]] = {}

    def save_manifest() -> dict[str, Any]:
        manifest = manifest_for(plan, runs, status, created)
        write_manifest(exp_dir, manifest)
        return manifest

    for note in plan.notes:
        log(f"note: {note}")
    # the one store of the experiment: prepared now (once) if it does not exist yet
    train_run.ensure_store(configs[runs[0].name], progress=progress, log=log)
    save_manifest()

    failed = []
    for i, run in enumerate(runs, 1):
        run_dir = RunDir(run.config["run_dir"])
        if restart and run_dir.path.exists():
            shutil.rmtree(run_dir.path)
        summary = run_dir.read_summary()
        if summary is not None:
            status[run.name] = {"status": "done", "kept": True}
            log(f"[{i}/{len(runs)}] {run.name}: finished earlier (kept)")
            if unscored(run_dir, summary):  # finished by an older ctrlab, or killed before scoring
                _score(configs[run.name], summary, status[run.name], log)
            continue
        resuming = run_dir.last_checkpoint.is_file()
        log(f"[{i}/{len(runs)}] {run.name}: {'resuming' if resuming else 'training'}")
        status[run.name] = {"status": "running", "started": now()}
        save_manifest()
        started = time.perf_counter()
        try:
            summary = train_run.run_training(configs[run.name], resume=True, progress=progress,
                                             log=log if verbose else (lambda _msg: None))
        except Exception as exc:  # one failed run must not lose the others: report all at the end
            status[run.name] = {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            failed.append(run.name)
            log(f"[{i}/{len(runs)}] {run.name}: FAILED: {type(exc).__name__}: {exc}")
        else:
            status[run.name] = {"status": "done", "seconds": round(time.perf_counter() - started, 1)}
            log(f"[{i}/{len(runs)}] {run.name}: {one_line(summary)}")
            _score(configs[run.name], summary, status[run.name], log)
        save_manifest()

    manifest = save_manifest()
    write_outputs(exp_dir, manifest, log=log)
    if failed:
        raise RuntimeError(f"{len(failed)} of {len(runs)} runs failed ({', '.join(failed)}); see "
                           f"{exp_dir / MANIFEST} for the errors. Rerun the same command to retry them "
                           "(finished runs are kept)")
    return manifest


def unscored(run_dir: RunDir, summary: dict[str, Any]) -> list[str]:
    """The splits a finished run has metrics for but no scores file."""
    return [split for split in ("valid", "test")
            if summary.get(f"{split}_auc") is not None and not run_dir.scores(split).is_file()]


def _score(cfg: Config, summary: dict[str, Any], run_status: dict[str, Any], log: Log) -> None:
    """score_run; a failure is recorded and reported, not fatal: the run's own results stand, only
    the paired tests that need its scores are left out (the results table says so)."""
    try:
        score_run(cfg, summary)
    except Exception as exc:  # noqa: BLE001 - reported in the manifest and the table
        run_status["scores_error"] = f"{type(exc).__name__}: {exc}"
        log(f"note: {Path(cfg.run_dir).name}: could not save its per-row scores ({run_status['scores_error']})")


def write_outputs(exp_dir: Path, manifest: dict[str, Any], log: Log = print) -> None:
    """results.md/.csv, runs.csv, plots/ and report.html of an experiment directory."""
    table = experiment_results(exp_dir, manifest)
    paths = write_results(exp_dir, table, manifest)
    log("")
    log(markdown(table))
    log("")
    charts: list[Path] = []
    if plots.have_matplotlib():
        charts = plots.plot_experiment(exp_dir, exp_dir / "plots", formats=("png",))
    else:
        log("note: no charts: they need matplotlib (pip install matplotlib)")
    paths += charts
    paths.append(write_report(exp_dir, charts=charts))
    log(f"wrote {exp_dir}/: " + ", ".join(str(p.relative_to(exp_dir)) for p in paths))


def finish_plan(plan: Plan) -> Plan:
    """Checks shared by compare and sweep, before anything trains: unique run names, valid
    configs (keys, values, model hyperparameters), one store for every point."""
    unique_slugs(plan.points)
    names = [p.name for p in plan.points]
    if len(set(names)) != len(names):
        dupes = sorted({n for n in names if names.count(n) > 1})
        raise ConfigError(f"the same point twice: {', '.join(dupes)}")
    if plan.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {plan.seeds}")
    if plan.metric not in RANKING_METRICS:
        raise ConfigError(f"--metric: {plan.metric!r} is not one of {', '.join(RANKING_METRICS)}")
    stores = {get_dotted(p.config, "data.store") for p in plan.points}
    if len(stores) != 1:
        raise ConfigError(f"every point must read the same store, got {sorted(map(str, stores))}")
    for point in plan.points:
        point.config.pop("run_dir", None)
        validate_config(point.config, point.name)
    plan.notes = list(dict.fromkeys(plan.notes))  # once each, in order
    return plan


def describe_plan(plan: Plan, exp_dir: str | Path) -> str:
    """What a run of the plan would do (``--dry-run``)."""
    exp_dir = Path(exp_dir)
    runs = plan_runs(plan, exp_dir)
    lines = [plan.title, f"store: {plan.store}",
             f"{len(plan.points)} point(s) x {plan.seeds} seed(s) = {len(runs)} run(s) in {exp_dir / RUNS_DIR}"]
    lines += [f"note: {n}" for n in plan.notes]
    for run in runs:
        run_dir = RunDir(run.config["run_dir"])
        planned = to_dict(validate_config(run.config, run.name))
        if run_dir.config.is_file() and config_differences(planned, load_yaml(run_dir.config)):
            state = "DIFFERENT CONFIG (refused)"
        elif run_dir.summary.is_file():
            state = "finished (kept)"
        elif run_dir.last_checkpoint.is_file():
            state = "resumes from its checkpoint"
        else:
            state = "to train"
        point = next(p for p in plan.points if p.name == run.point)
        what = ", ".join(f"{k}={format_value(v)}" for k, v in point.settings.items()) or "the base config"
        lines.append(f"  {run.name:<32} {state:<28} train.seed={run.seed} {what}")
    return "\n".join(lines)


def store_label(store: str) -> str:
    parts = Path(store).parts
    return "/".join(parts[-2:]) if len(parts) >= 2 else store
