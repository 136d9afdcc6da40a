"""``ctrlab tune``: hyperparameter search with Optuna, one trial = one ctrlab training run.

Selection and pruning read the validation split only: a trial's value is its best validation AUC
(the epoch early stopping keeps), and the pruner sees the validation AUC after every epoch. The test
split plays no part; a trial's run directory still holds the test metrics that every ctrlab run
records, but nothing here reads them. Layout of OUT::

    OUT/study.db         the Optuna study (SQLite): rerunning the same command resumes it
    OUT/trials/NNNN/     trial NNNN's run directory (config.yaml, epochs.jsonl, checkpoints/, ...)
    OUT/tune.json        base config, search space, every trial, best trial, parameter importances
    OUT/trials.jsonl, trials.csv   one row per trial (number, state, valid AUC, epochs, params)
    OUT/best.yaml        the best trial's complete config: ``ctrlab train -c OUT/best.yaml``
    OUT/report.html      ``ctrlab report OUT``

The search space is :data:`DEFAULT_SPACE` restricted to the parameters the model takes, changed by
an optional space file (``--space FILE``, see :func:`load_space`).
"""

from __future__ import annotations

import copy
import csv
import io
import json
import math
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import yaml

from .. import __version__
from ..config import ConfigError, Overrides, get_dotted, load_yaml, read_config_file, set_dotted, to_dict
from ..data.store import Store
from ..fileio import write_bytes_atomic, write_json_atomic
from ..models import hyperparameter_defaults
from ..train import run as train_run
from ..train.rundir import RunDir
from .core import config_differences, parse_sets, pin_store, validate_config
from .layout import OBJECTIVE, TUNE_MANIFEST, experiment_lock, now, read_tune_manifest
from .report import write_report

STUDY_DB = "study.db"
STUDY_NAME = "ctrlab-tune"
TRIALS_DIR = "trials"

#: what ``ctrlab tune`` searches unless a space file says otherwise (model params a model does not
#: take are left out for it). A list is a choice; low/high a range (log: log-uniform, step: a grid);
#: depth/width a stack of equal hidden layers.
DEFAULT_SPACE: dict[str, Any] = {
    "train.lr": {"low": 1e-4, "high": 1e-2, "log": True},
    "train.batch_size": [256, 512, 1024, 2048, 4096],
    "train.optimizer": ["adam", "adamw", "adagrad"],
    "train.reg": [0.0, 1e-6, 1e-5, 1e-4],  # L2 on the embedding rows
    "train.weight_decay": [0.0, 1e-6, 1e-5, 1e-4],  # L2 on the dense weights
    "model.params.embedding_dim": {"low": 4, "high": 32, "step": 2},
    "model.params.hidden_units": {"depth": [1, 3], "width": [64, 128, 256, 400, 512]},
    "model.params.dropout": {"low": 0.0, "high": 0.5},
}
DEFAULT_PRUNER: dict[str, Any] = {"name": "median", "startup_trials": 3, "warmup_epochs": 1, "percentile": 50.0}
DEFAULT_SAMPLER: dict[str, Any] = {"startup_trials": 5}
PRUNERS = ("median", "percentile", "none")
#: keys a trial may not vary: every trial reads the same store and the seed is the base config's
FIXED_KEYS = ("train.seed", "model.name", "train.monitor")

Log = Callable[[str], None]


def _import_optuna() -> Any:
    try:  # optional and heavy: only ctrlab tune needs it
        import optuna
    except ImportError:
        raise RuntimeError("ctrlab tune needs Optuna: pip install 'ctrlab[tune]' (or pip install optuna)") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna


# --------------------------------------------------------------------------------------------
# the search space
# --------------------------------------------------------------------------------------------

def _number(value: Any, where: str) -> float | int:
    """A YAML number (``1e-4`` is text to YAML 1.1: accepted as a number here)."""
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    return value


def check_dimension(key: str, spec: Any, where: str) -> dict[str, Any]:
    """One entry of a space as ``{"choices": [...]}``, ``{"low", "high", "log", "step", "int"}`` or
    ``{"depth": [lo, hi], "width": [...]}``; ConfigError naming ``where`` and ``key`` otherwise."""
    at = f"{where}: {key}"
    parts = key.split(".")
    if not all(parts) or parts[0] not in ("train", "model") or key in FIXED_KEYS \
            or (parts[0] == "model" and (len(parts) < 3 or parts[1] != "params")):
        raise ConfigError(f"{at}: only train.* keys and model.params.* can be searched (not data, features, "
                          f"run_dir, {', '.join(FIXED_KEYS)}); use --set for a fixed value")
    if isinstance(spec, list):
        if not spec:
            raise ConfigError(f"{at}: an empty list of choices")
        return {"choices": [_number(c, at) if isinstance(c, str) and c[:1].isdigit() else c for c in spec]}
    if not isinstance(spec, dict):
        raise ConfigError(f"{at}: expected a list of choices, {{low, high}} or {{depth, width}}, got {spec!r}; "
                          "use --set for a fixed value")
    if set(spec) >= {"depth", "width"}:
        extra = set(spec) - {"depth", "width"}
        depth, width = spec["depth"], spec["width"]
        if extra or not (isinstance(depth, list) and len(depth) == 2 and all(isinstance(d, int) and d >= 1
                                                                              for d in depth) and depth[0] <= depth[1]):
            raise ConfigError(f"{at}: layers are {{depth: [min, max], width: [w1, w2, ...]}}, got {spec!r}")
        if not (isinstance(width, list) and width and all(isinstance(w, int) and w >= 1 for w in width)):
            raise ConfigError(f"{at}: width must be a list of positive integers, got {width!r}")
        return {"depth": list(depth), "width": list(width)}
    unknown = set(spec) - {"low", "high", "log", "step"}
    if unknown or not {"low", "high"} <= set(spec):
        raise ConfigError(f"{at}: a range is {{low, high, log: false, step: null}}, got {spec!r}")
    low, high = _number(spec["low"], f"{at}.low"), _number(spec["high"], f"{at}.high")
    step = None if spec.get("step") is None else _number(spec["step"], f"{at}.step")
    log = spec.get("log", False)
    if not isinstance(log, bool):
        raise ConfigError(f"{at}.log: expected true or false, got {log!r}")
    if not low < high:
        raise ConfigError(f"{at}: low ({low}) must be below high ({high})")
    if log and (low <= 0 or step is not None):
        raise ConfigError(f"{at}: a log range needs low > 0 and no step (for 0 as well, list the choices)")
    if step is not None and step <= 0:
        raise ConfigError(f"{at}.step: must be positive, got {step}")
    is_int = all(isinstance(v, int) for v in (low, high)) and (step is None or isinstance(step, int))
    return {"low": low, "high": high, "log": log, "step": step, "int": is_int}


def load_space(path: str | Path | None, model: str, notes: list[str]) -> dict[str, Any]:
    """The search space, pruner and sampler settings for ``model``.

    A space file (YAML) may hold::

        space:                        # key -> how to search it; null: not searched (the base value)
          train.lr: {low: 1e-4, high: 1e-2, log: true}
          train.batch_size: [512, 1024, 2048]
          model.params.hidden_units: {depth: [1, 3], width: [128, 256, 400]}
        defaults: true                # false: search only the keys listed under space
        pruner: {name: median, startup_trials: 3, warmup_epochs: 1}   # or percentile (+ percentile: 25), none
        sampler: {startup_trials: 5}  # random trials before TPE models the results

    Default entries for model params the model does not take are left out (a note says so); a
    listed model param the model does not take is an error."""
    raw: dict[str, Any] = load_yaml(path) if path else {}
    where = str(path) if path else "default space"
    unknown = set(raw) - {"space", "defaults", "pruner", "sampler"}
    if unknown:
        raise ConfigError(f"{where}: unknown section(s) {', '.join(sorted(unknown))}; "
                          "valid: space, defaults, pruner, sampler")
    listed = raw.get("space") or {}
    if not isinstance(listed, dict):
        raise ConfigError(f"{where}: space must be a mapping of key -> choices or range")
    if not isinstance(raw.get("defaults", True), bool):
        raise ConfigError(f"{where}: defaults must be true or false")
    accepted = hyperparameter_defaults(model)
    space: dict[str, Any] = {}
    if raw.get("defaults", True):
        for key, spec in DEFAULT_SPACE.items():
            name = key.split(".", 2)[2] if key.startswith("model.params.") else None
            if name is not None and name not in accepted:
                notes.append(f"{model} does not take {name}: not searched")
                continue
            space[key] = check_dimension(key, spec, "default space")
    for key, spec in listed.items():
        if spec is None:
            space.pop(key, None)
            continue
        if key.startswith("model.params.") and key.split(".")[2] not in accepted:
            raise ConfigError(f"{where}: space.{key}: model {model!r} has no hyperparameter "
                              f"{key.split('.')[2]!r}; valid: {', '.join(accepted) or '(none)'}")
        space[key] = check_dimension(key, spec, f"{where}: space")
    if not space:
        raise ConfigError(f"{where}: nothing to search (every key is null or defaults is false with no space)")
    pruner = {**DEFAULT_PRUNER, **_section(raw, "pruner", DEFAULT_PRUNER, where)}
    if pruner["name"] not in PRUNERS:
        raise ConfigError(f"{where}: pruner.name must be one of {', '.join(PRUNERS)}, got {pruner['name']!r}")
    for key in ("startup_trials", "warmup_epochs"):
        if not isinstance(pruner[key], int) or pruner[key] < 0:
            raise ConfigError(f"{where}: pruner.{key} must be an integer >= 0, got {pruner[key]!r}")
    if not 0 < _number(pruner["percentile"], f"{where}: pruner.percentile") < 100:
        raise ConfigError(f"{where}: pruner.percentile must be between 0 and 100, got {pruner['percentile']!r}")
    sampler = {**DEFAULT_SAMPLER, **_section(raw, "sampler", DEFAULT_SAMPLER, where)}
    if not isinstance(sampler["startup_trials"], int) or sampler["startup_trials"] < 0:
        raise ConfigError(f"{where}: sampler.startup_trials must be an integer >= 0")
    return {"space": space, "pruner": pruner, "sampler": sampler}


def _section(raw: dict[str, Any], name: str, defaults: dict[str, Any], where: str) -> dict[str, Any]:
    section = raw.get(name) or {}
    if not isinstance(section, dict) or set(section) - set(defaults):
        raise ConfigError(f"{where}: {name} takes {', '.join(defaults)}, got {section!r}")
    return section


def _choice_value(choice: Any) -> Any:
    """Optuna stores str/int/float/bool/None choices; a list choice is stored as its JSON text."""
    return json.dumps(choice) if isinstance(choice, (list, dict)) else choice


def suggest(trial: Any, key: str, spec: dict[str, Any]) -> Any:
    """The trial's value for one key (Optuna parameter names are the config keys)."""
    if "choices" in spec:
        stored = trial.suggest_categorical(key, [_choice_value(c) for c in spec["choices"]])
        return next(c for c in spec["choices"] if _choice_value(c) == stored)
    if "depth" in spec:
        depth = trial.suggest_int(f"{key}.depth", *spec["depth"])
        width = trial.suggest_categorical(f"{key}.width", spec["width"])
        return [width] * depth
    if spec["int"]:
        return trial.suggest_int(key, spec["low"], spec["high"], step=spec["step"] or 1, log=spec["log"])
    return trial.suggest_float(key, spec["low"], spec["high"], step=spec["step"], log=spec["log"])


def base_params(base: dict[str, Any], space: dict[str, Any]) -> dict[str, Any] | None:
    """The base config (with its defaults filled in) as Optuna parameters, to try it as the first
    trial; None when one of its values lies outside the space."""
    cfg = validate_config(base, "the base config")
    base = to_dict(cfg)
    defaults = {k: list(v) if isinstance(v, tuple) else v for k, v in hyperparameter_defaults(cfg.model.name).items()}
    base["model"]["params"] = {**defaults, **base["model"]["params"]}
    params: dict[str, Any] = {}
    for key, spec in space.items():
        value = get_dotted(base, key)
        if value is None:
            return None
        if "choices" in spec:
            if value not in spec["choices"]:
                return None
            params[key] = _choice_value(value)
        elif "depth" in spec:
            if not (isinstance(value, list) and value and len(set(value)) == 1 and value[0] in spec["width"]
                    and spec["depth"][0] <= len(value) <= spec["depth"][1]):
                return None
            params[f"{key}.depth"], params[f"{key}.width"] = len(value), value[0]
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not spec["low"] <= value <= spec["high"]:
                return None
            params[key] = value
    return params


# --------------------------------------------------------------------------------------------
# the study
# --------------------------------------------------------------------------------------------

def _pruner(optuna: Any, spec: dict[str, Any]) -> Any:
    """startup_trials: trials that are never pruned; warmup_epochs: the first epochs of a trial
    are never pruned (Optuna prunes from step n_warmup_steps on; a step here is an epoch, from 1)."""
    if spec["name"] == "none":
        return optuna.pruners.NopPruner()
    warmup = spec["warmup_epochs"] + 1
    if spec["name"] == "percentile":
        return optuna.pruners.PercentilePruner(float(spec["percentile"]), n_startup_trials=spec["startup_trials"],
                                               n_warmup_steps=warmup)
    return optuna.pruners.MedianPruner(n_startup_trials=spec["startup_trials"], n_warmup_steps=warmup)


def _finished(trial: Any, optuna: Any) -> bool:
    """A trial that counts towards --trials (an interrupted one does not: it is tried again)."""
    states = optuna.trial.TrialState
    return trial.state in (states.COMPLETE, states.PRUNED) or \
        (trial.state == states.FAIL and not trial.user_attrs.get("interrupted"))


def _requeue_interrupted(study: Any, storage: Any, optuna: Any, log: Log) -> None:
    """Trials a killed or interrupted process left behind (RUNNING, or FAIL marked interrupted)
    are marked failed and their parameters queued to be tried again. Called under OUT's lock, so
    no other process is running them."""
    states = optuna.trial.TrialState
    requeued = list(study.user_attrs.get("requeued", []))  # a finished trial's own attributes are frozen
    for t in study.get_trials(deepcopy=False):
        stale = t.state == states.RUNNING or (t.state == states.FAIL and t.user_attrs.get("interrupted"))
        if not stale or t.number in requeued:
            continue
        if t.state == states.RUNNING:
            storage.set_trial_user_attr(t._trial_id, "interrupted", True)
            storage.set_trial_state_values(t._trial_id, states.FAIL)
        if t.params:
            study.enqueue_trial(t.params, skip_if_exists=False)
        requeued.append(t.number)
        study.set_user_attr("requeued", requeued)
        log(f"trial {t.number} was interrupted: its parameters are queued to run again")


def _check_same_study(study: Any, record: dict[str, Any], out: Path) -> None:
    """A study holds trials of one base config and one space; resuming with others would mix them."""
    saved = study.user_attrs.get("setup")
    if saved is None:
        study.set_user_attr("setup", record)
        return
    diffs = config_differences(record["base_config"], saved["base_config"])
    if saved["space"] != record["space"]:
        diffs.append("the search space")
    if saved["pruner"] != record["pruner"]:
        diffs.append("the pruner")
    if diffs:
        raise RuntimeError(f"{out / STUDY_DB} holds a study of another setup ({'; '.join(diffs[:5])}); "
                           "use a new --out, or run the same command again to resume that one")


def plan_trial_config(base: dict[str, Any], values: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    data = copy.deepcopy(base)
    for key, value in values.items():
        set_dotted(data, key, value)
    data["run_dir"] = str(run_dir)
    return data


def tune(config_path: str | Path, out: str | Path, *, trials: int, space_path: str | Path | None = None,
         seed: int = 0, timeout: float | None = None, overrides: Overrides | None = None,
         verbose: bool = False, command: list[str] | None = None, log: Log = print) -> dict[str, Any]:
    """Run (or resume) the search until ``trials`` trials have finished or ``timeout`` seconds
    have passed; returns the manifest (also OUT/tune.json). See the module docstring."""
    optuna = _import_optuna()
    if trials < 1:
        raise ConfigError(f"--trials must be at least 1, got {trials}")
    if timeout is not None and timeout <= 0:
        raise ConfigError(f"--timeout must be positive, got {timeout}")
    out = Path(out)
    base = read_config_file(config_path)
    for key, value in parse_sets(overrides):
        if key.split(".")[0] == "features":
            raise ConfigError(f"--set {key}: every trial reads one prepared store; prepare it with the features "
                              "you want and pass it as data.store")
        set_dotted(base, key, value)
    base.pop("run_dir", None)
    out.mkdir(parents=True, exist_ok=True)
    pin_store(base, out)
    base_cfg = validate_config(base, str(config_path))
    notes: list[str] = []
    setup = load_space(space_path, base_cfg.model.name, notes)
    for note in notes:
        log(f"note: {note}")
    for key in setup["space"]:  # every choice must make a valid config before anything trains
        spec = setup["space"][key]
        examples = spec.get("choices") or ([[w] * spec["depth"][1] for w in spec["width"]] if "depth" in spec
                                           else [spec["low"], spec["high"]])
        for value in examples:
            validate_config(plan_trial_config(base, {key: value}, out), f"space {key}={value!r}")
    # the base config as given (not with every default filled in): a later ctrlab with new config
    # keys can still resume the study
    record = {"base_config": copy.deepcopy(base), **setup}
    with experiment_lock(out):
        store_cfg = copy.deepcopy(base_cfg)
        store_cfg.run_dir = str(out)
        store = train_run.ensure_store(store_cfg, progress=verbose, log=log)
        if not isinstance(store, Store) or not store.has_split("valid"):
            raise ConfigError(f"{store_cfg.data.store}: tuning selects on the validation split and this store has "
                              "none; prepare it with a valid fraction (data.split) or data.valid files")
        storage = optuna.storages.RDBStorage(f"sqlite:///{(out / STUDY_DB).resolve()}")
        study = optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize",
                                    load_if_exists=True, pruner=_pruner(optuna, setup["pruner"]))
        _check_same_study(study, record, out)
        created = study.user_attrs.get("created")
        if created is None:
            created = now()
            study.set_user_attr("created", created)
            first = base_params(base, setup["space"])
            if first is not None:
                study.enqueue_trial(first)
                log("trial 0 is the base config (its values all lie in the space)")
            else:
                log("note: the base config lies outside the search space: it is not tried as a trial")
        _requeue_interrupted(study, storage, optuna, log)
        # a fresh seed per resume point: the same seed again would propose the same first trials again
        study.sampler = optuna.samplers.TPESampler(seed=seed + len(study.trials),
                                                   n_startup_trials=setup["sampler"]["startup_trials"])
        context = {"out": out, "base": base, "setup": setup, "notes": notes, "created": created, "seed": seed,
                   "trials": trials, "command": command or [], "store": str(store.path)}
        _optimize(optuna, study, context, timeout=timeout, verbose=verbose, log=log)
        manifest = write_tune_outputs(study, context)
    path = write_report(out)
    log(f"wrote {out}/: best.yaml, trials.csv, trials.jsonl, {TUNE_MANIFEST}, {path.name}")
    return manifest


def _optimize(optuna: Any, study: Any, context: dict[str, Any], *, timeout: float | None, verbose: bool,
              log: Log) -> None:
    out, space, trials = context["out"], context["setup"]["space"], context["trials"]
    deadline = time.monotonic() + timeout if timeout else None

    def objective(trial: Any) -> float:
        values = {key: suggest(trial, key, spec) for key, spec in space.items()}
        run_dir = out / TRIALS_DIR / f"{trial.number:04d}"
        cfg = validate_config(plan_trial_config(context["base"], values, run_dir), f"trial {trial.number}")
        trial.set_user_attr("run_dir", f"{TRIALS_DIR}/{run_dir.name}")
        trial.set_user_attr("values", values)

        def on_epoch_end(epoch: int, record: dict[str, Any]) -> None:
            value = record.get(OBJECTIVE)  # validation only: the pruner never sees a test metric
            if value is None or not math.isfinite(value):
                return
            trial.report(value, epoch)
            if trial.should_prune():
                trial.set_user_attr("pruned_at_epoch", epoch)
                raise optuna.TrialPruned(f"valid AUC {value:.5f} after epoch {epoch}")

        started = time.perf_counter()
        try:
            summary = train_run.run_training(cfg, resume=False, progress=False, on_epoch_end=on_epoch_end,
                                   log=log if verbose else (lambda _msg: None))
        except KeyboardInterrupt:
            trial.set_user_attr("interrupted", True)
            raise
        except RuntimeError as exc:  # e.g. a diverged run: recorded, and the search goes on
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 1))
        value = summary.get(OBJECTIVE)
        if value is None or not math.isfinite(value):
            raise RuntimeError(f"trial {trial.number}: no validation AUC (got {value!r})")
        for key in ("best_epoch", "epochs_run", "stopped_early"):
            trial.set_user_attr(key, summary.get(key))
        return float(value)

    def progress(study: Any, trial: Any) -> None:
        write_tune_outputs(study, context, importances=False)
        done = sum(_finished(t, optuna) for t in study.get_trials(deepcopy=False))
        log(f"[{done}/{trials}] {describe_trial(trial_record(trial), space)}; {best_line(study, optuna)}")

    while sum(_finished(t, optuna) for t in study.get_trials(deepcopy=False)) < trials:
        if deadline is not None and time.monotonic() >= deadline:
            log("--timeout reached; rerun the command to continue the search")
            break
        study.optimize(objective, n_trials=1, catch=(RuntimeError,), callbacks=[progress])


def best_line(study: Any, optuna: Any) -> str:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        return "no finished trial yet"
    best = max(complete, key=lambda t: t.value)
    return f"best: trial {best.number}, valid AUC {best.value:.5f}"


# --------------------------------------------------------------------------------------------
# outputs
# --------------------------------------------------------------------------------------------

def trial_record(trial: Any) -> dict[str, Any]:
    attrs = trial.user_attrs
    return {"number": trial.number, "state": trial.state.name.lower(), OBJECTIVE: trial.value,
            "best_epoch": attrs.get("best_epoch"), "epochs_run": attrs.get("epochs_run"),
            "pruned_at_epoch": attrs.get("pruned_at_epoch"), "seconds": attrs.get("seconds"),
            "interrupted": bool(attrs.get("interrupted")), "run_dir": attrs.get("run_dir"),
            "values": attrs.get("values") or {}, "params": dict(trial.params),
            "epoch_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
            "error": attrs.get("error")}


def describe_trial(record: dict[str, Any], space: dict[str, Any]) -> str:
    values = ", ".join(f"{k.split('.')[-1]}={_short(v)}" for k, v in record["values"].items())
    head = f"trial {record['number']} ({values})"
    if record["state"] == "complete":
        return (f"{head}: valid AUC {record[OBJECTIVE]:.5f} at epoch {record['best_epoch']} of "
                f"{record['epochs_run']}, {record['seconds']} s")
    if record["state"] == "pruned":
        return f"{head}: pruned after epoch {record['pruned_at_epoch']}, {record['seconds']} s"
    return f"{head}: {'interrupted' if record['interrupted'] else 'FAILED'}"


def _short(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return "-".join(map(str, value))
    return str(value)


def param_importances(study: Any) -> tuple[dict[str, float], str | None]:
    """Optuna's parameter importances (its default evaluator) over the complete trials, or an
    empty dict and the reason when they cannot be computed."""
    optuna = _import_optuna()
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, "parameter importances need at least 2 complete trials"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}, None
    except (ImportError, RuntimeError, ValueError) as exc:
        return {}, f"parameter importances not available: {type(exc).__name__}: {exc}"


def write_tune_outputs(study: Any, context: dict[str, Any], importances: bool = True) -> dict[str, Any]:
    """tune.json, trials.jsonl, trials.csv and best.yaml from the study (each replaced whole).
    Importances (slower) are computed at the end only; per trial the previous ones are kept."""
    out = context["out"]
    records = [trial_record(t) for t in study.get_trials(deepcopy=False)]
    complete = [r for r in records if r["state"] == "complete"]
    best = max(complete, key=lambda r: r[OBJECTIVE]) if complete else None
    previous = read_tune_manifest(out) if (out / TUNE_MANIFEST).is_file() else {}
    found, why = param_importances(study) if importances else (previous.get("importances", {}),
                                                               previous.get("importances_note"))
    best_config = None
    if best is not None:
        best_config = load_yaml(RunDir(out / best["run_dir"]).config)
        best_config["run_dir"] = str(out / "best")
        header = (f"# ctrlab tune: best of {len(complete)} complete trials in {out} (trial {best['number']}, valid AUC "
                  f"{best[OBJECTIVE]:.5f}; selected on the validation split only)\n"
                  f"# train it: ctrlab train -c {out / 'best.yaml'}\n")
        write_bytes_atomic(out / "best.yaml", (header + yaml.safe_dump(best_config, sort_keys=False)).encode())
    manifest = {
        "format": 1, "kind": "tune", "ctrlab_version": __version__, "created": context["created"],
        "updated": now(), "command": context["command"], "store": context["store"],
        "objective": f"{OBJECTIVE} (best epoch; the test split is not used)", "trials_requested": context["trials"],
        "seed": context["seed"], "sampler": {"name": "tpe", **context["setup"]["sampler"]},
        "pruner": context["setup"]["pruner"], "space": context["setup"]["space"], "notes": context["notes"],
        "base_config": context["base"],
        "counts": {s: sum(r["state"] == s for r in records) for s in ("complete", "pruned", "fail", "running")},
        "best": None if best is None else {"number": best["number"], OBJECTIVE: best[OBJECTIVE],
                                           "values": best["values"], "config": best_config},
        "importances": found, "importances_note": why, "trials": records,
    }
    write_json_atomic(out / TUNE_MANIFEST, manifest, indent=1)
    write_bytes_atomic(out / "trials.jsonl", "".join(json.dumps(r) + "\n" for r in records).encode())
    write_bytes_atomic(out / "trials.csv", trials_csv(records, list(context["setup"]["space"])).encode())
    return manifest


TRIAL_COLUMNS = ["number", "state", OBJECTIVE, "best_epoch", "epochs_run", "pruned_at_epoch", "seconds"]


def trials_csv(records: list[dict[str, Any]], keys: list[str]) -> str:
    table = io.StringIO(newline="")
    writer = csv.writer(table)
    writer.writerow(TRIAL_COLUMNS + keys + ["run_dir"])
    for r in records:
        writer.writerow([("" if r[c] is None else r[c]) for c in TRIAL_COLUMNS]
                        + [_csv_value(r["values"].get(k)) for k in keys] + [r["run_dir"] or ""])
    return table.getvalue()


def _csv_value(value: Any) -> str:
    return "" if value is None else value if isinstance(value, str) else json.dumps(value)
