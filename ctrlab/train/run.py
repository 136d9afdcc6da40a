"""``ctrlab train`` and ``ctrlab eval``: config -> store -> model -> trainer -> metrics."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..config import Config, ConfigError, dump_config, fitted_features, parse_epoch_range_text, to_dict
from ..data.prepare import format_summary, prepare
from ..data.store import Store
from ..runtime import configure_torch_threads
from ..metrics import evaluate_scores
from ..models import build_model, check_params
from ..models.registry import list_models, multi_task
from . import distributed as distrib
from . import fullbatch
from .continual import Parent, progressive_metrics, warm_start
from .partitions import PartitionedStore, partition_view, read_partitions, spec_fingerprint
from .rundir import RunDir
from .store_config import prepare_options
from .evaluate import evaluate, predict_split, score_split, split_labels, task_setup
from .trainer import Trainer, format_task_metrics, load_weights, monitor_key, set_seed, task_weight_vector


def ensure_store(cfg: Config, *, progress: bool = True, log: Callable[[str], None] = print) -> Store:
    """The config's store; prepared first from ``data.train`` when it does not exist yet."""
    if not cfg.data.store:
        if not cfg.data.train:
            raise ConfigError("no data: set data.store (a prepared store) or data.train (raw files), "
                              "or pass --data STORE")
        if not cfg.run_dir:
            raise ConfigError("set run_dir (or --out) so the store can be prepared inside it")
        cfg.data.store = str(RunDir(cfg.run_dir).store)
    store_dir = Path(cfg.data.store)
    if (store_dir / "meta.json").is_file():
        return Store(store_dir)
    if not cfg.data.train:
        raise FileNotFoundError(f"{store_dir}: no store there and no data.train to prepare one from")
    log(f"preparing {store_dir} from {cfg.data.train}")
    # config.yaml goes in before the swap: the store and the config that made it arrive together
    store = prepare(prepare_options(cfg), store_dir, progress=progress,
                    before_swap=lambda build: dump_config(cfg, build / "config.yaml"))
    log(format_summary(store.meta))
    return store


def check_run_config(cfg: Config) -> None:
    """What loading could not check without the model registry: the model name and its
    parameters (names, types, ranges). Runs before any data is read."""
    check_params(cfg.model.name, cfg.model.params)
    if cfg.train.optimizer == "lbfgs":
        fullbatch.check_full_batch_config(cfg.train)


def check_tasks(cfg: Config, store: Store) -> None:
    """The model, the store's labels and the train section's task settings fit together; a
    multi-task model gets ``model.params.num_tasks`` = the store's task count (recorded in the run's
    config.yaml). ConfigError saying what to do otherwise."""
    name, tasks, t = cfg.model.name, list(store.tasks), cfg.train
    is_multi = multi_task(name)
    multi_models = ", ".join(m for m in list_models() if multi_task(m))
    if t.task is not None:
        if is_multi:
            raise ConfigError(f"train.task={t.task!r} trains a single-task model on one task of the store, but model "
                              f"{name} is multi-task and trains on every task ({', '.join(tasks)}): remove train.task "
                              "or choose a single-task model")
        if t.task not in tasks:
            raise ConfigError(f"train.task: {t.task!r} is not a task of the store {store.path}; its tasks are "
                              f"{', '.join(tasks)}")
    elif store.multi_task and not is_multi:
        raise ConfigError(f"the store {store.path} has several labels ({', '.join(tasks)}) and model {name} predicts "
                          f"one: set train.task to the one to train on (e.g. train.task={tasks[0]}), or use a "
                          f"multi-task model ({multi_models})")
    if is_multi and not store.multi_task:
        raise ConfigError(f"model {name} is multi-task (one logit per task) but the store {store.path} has one label "
                          f"({tasks[0]}): prepare a store with several labels (data.schema.label: [click, conversion]) "
                          "or choose a single-task model")
    if is_multi:
        declared = cfg.model.params.get("num_tasks")
        if declared is not None and declared != len(tasks):
            raise ConfigError(f"model.params.num_tasks={declared} but the store {store.path} has {len(tasks)} tasks "
                              f"({', '.join(tasks)}): remove model.params.num_tasks (it is set from the store)")
        cfg.model.params["num_tasks"] = len(tasks)
    if store.multi_task and t.optimizer == "lbfgs":
        raise ConfigError("train.optimizer lbfgs fits one label of a single-label store; this store has several "
                          f"({', '.join(tasks)}): use another optimizer")
    task_weight_vector(t.task_weights, tasks)
    monitor_key(t, [t.task] if t.task is not None else tasks)


def record_fitted_features(cfg: Config, store: Store, log: Callable[[str], None]) -> None:
    """Make ``cfg.features`` say what the store's pipeline.json was fitted with (the truth), so the
    run's config.yaml re-creates that pipeline; says so when the config had asked for other settings."""
    fitted = fitted_features(store.pipeline, cfg.features)
    if to_dict(fitted) != to_dict(cfg.features):
        log(f"features: the store {store.path} was prepared with other settings than this config's features "
            f"section; the run records the store's: {to_dict(fitted)}")
    cfg.features = fitted


def schedule(cfg: Config, store: Store) -> dict[str, Any]:
    """What the run will do beyond its epochs: validation, early stopping, learning-rate decay."""
    rows = len(store.split("valid")) if store.has_split("valid") else 0
    t = cfg.train
    if t.optimizer == "lbfgs":
        return fullbatch.schedule(t, rows)
    watched = monitor_key(t, [t.task] if t.task is not None else list(store.tasks))
    if store.multi_task and watched == t.monitor and t.task is None:
        watched = f"{t.monitor} (mean over the tasks)"
    return {
        "epochs": t.epochs,
        "validation": (f"{rows:,} rows ({'partition ' + store.valid_partition if isinstance(store, PartitionedStore) else 'valid split'})"
                       if rows else "none"),
        "early_stopping": (f"after {t.early_stopping_patience} epochs without valid {watched} improvement"
                           if rows and t.early_stopping_patience else "off"),
        "lr_decay": (f"x{t.lr_decay_factor:g} per epoch without valid {watched} improvement"
                     if rows and t.lr_decay_factor != 1.0 else "off"),
    }


def format_schedule(plan: dict[str, Any]) -> str:
    return (f"epochs: {plan['epochs']}; validation: {plan['validation']}; early stopping: {plan['early_stopping']}; "
            f"lr decay: {plan['lr_decay']}")


def train_test_overlap(meta: dict[str, Any]) -> list[str]:
    """Test source files that are also training source files (same resolved path or same
    sha256): a test score on them is no held-out score. PaddleRec's sample configs do this."""
    train = meta.get("sources", {}).get("train", [])
    paths = {str(Path(s["path"]).resolve()) for s in train}
    hashes = {s.get("sha256") for s in train} - {None}
    return [s["path"] for s in meta.get("sources", {}).get("test", [])
            if str(Path(s["path"]).resolve()) in paths or s.get("sha256") in hashes]


def overlap_warning(shared: list[str]) -> str:
    return (f"  <- WARNING: the test data IS the training data ({', '.join(shared)}): "
            "this is not a held-out score") if shared else ""


def build_model_for(cfg: Config, store: Store) -> torch.nn.Module:
    """The config's model for the store's spec (a multi-task model: one output per store task,
    unless model.params.num_tasks says otherwise, which :func:`check_tasks` refuses)."""
    params = dict(cfg.model.params)
    if store.multi_task and multi_task(cfg.model.name):
        params.setdefault("num_tasks", len(store.tasks))
    return build_model(cfg.model.name, store.spec, params)


def run_training(cfg: Config, *, resume: bool = True, progress: bool = True,
                 log: Callable[[str], None] = print,
                 on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Train per the config; returns the summary (also written to the run's summary.json).

    ``on_epoch_end(epoch, record)`` is called after every epoch (see :class:`Trainer`); an
    exception it raises ends the run there, without a summary.

    Started by torchrun (``WORLD_SIZE`` > 1 in the environment), every process joins the process
    group and trains its share (:mod:`ctrlab.train.distributed`); only rank 0 writes."""
    if not cfg.run_dir:
        raise ConfigError("where should the run go? pass --out RUN_DIR or set run_dir in the config")
    check_run_config(cfg)
    ctx = distrib.init_from_env(cfg.train.device, cfg.train.dist_timeout_s)
    if ctx is None:
        return _run_training(cfg, None, resume=resume, progress=progress, log=log, on_epoch_end=on_epoch_end)
    try:
        summary = _run_training(cfg, ctx, resume=resume, progress=progress and ctx.is_main,
                                log=log if ctx.is_main else (lambda _msg: None), on_epoch_end=on_epoch_end)
    except Exception as exc:  # every rank says which one it is and why it stopped
        distrib.shutdown(clean=False)
        raise RuntimeError(f"distributed training failed on rank {ctx.rank}/{ctx.world_size}: {exc}") from exc
    distrib.shutdown()
    return summary


def _run_training(cfg: Config, ctx: distrib.DistContext | None, *, resume: bool, progress: bool,
                  log: Callable[[str], None],
                  on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    run = RunDir(cfg.run_dir)
    if ctx is not None:
        # preparing a store in every process would race; `ctrlab train --nproc` prepares it first
        store_dir = Path(cfg.data.store) if cfg.data.store else run.store
        if not (store_dir / "meta.json").is_file():
            raise ConfigError(f"distributed training reads a prepared store, and {store_dir} is none: run "
                              "`ctrlab prepare` first (or launch with `ctrlab train --nproc N`, which prepares it)")
        cfg.data.store = str(store_dir)
    raw_store = ensure_store(cfg, progress=progress, log=log)
    record_fitted_features(cfg, raw_store, log)
    parent = None
    if cfg.train.continue_from:
        if cfg.train.init_from:
            raise ConfigError("train.continue_from and train.init_from both warm-start a run: set one")
        if cfg.train.optimizer == "lbfgs":
            raise ConfigError("train.continue_from continues a run of a row-sparse optimizer; lbfgs solves from "
                              "scratch (use train.init_from)")
        parent = Parent(cfg.train.continue_from, raw_store, cfg)
    store = partition_view(raw_store, cfg.data, parent.untrained(raw_store) if parent else None)
    check_tasks(cfg, store)
    if resume and isinstance(store, PartitionedStore):
        _check_resumable(run, store)
    is_main = ctx is None or ctx.is_main
    if is_main:
        _reset_run_dir(cfg, run, resume)
    distrib.barrier(ctx)  # nobody looks for last.pt before rank 0 has cleared an old run
    set_seed(cfg.train.seed)
    model = build_model_for(cfg, store)
    trainer_class = fullbatch.FullBatchTrainer if cfg.train.optimizer == "lbfgs" else Trainer
    trainer = trainer_class(model, store, cfg.train, run.path, progress=progress, log=log, dist=ctx,
                            on_epoch_end=on_epoch_end)
    resumed = resume and trainer.try_resume()
    if not resumed and cfg.train.init_from:
        model.load_state_dict(load_weights(cfg.train.init_from))
        log(f"warm start from {cfg.train.init_from}")
    if isinstance(store, PartitionedStore):
        lineage = _lineage(cfg, store, parent, trainer, run, resumed, log)
        if is_main:
            run.write_lineage(lineage)
        trainer.lineage = lineage
    if ctx is not None:
        distrib.agree(ctx, (bool(resumed), trainer.epoch, trainer.step), "the resumed epoch and step")
        distrib.broadcast_parameters(model)
        log(f"distributed: {ctx.world_size} processes ({torch.distributed.get_backend()}), global batch "
            f"{cfg.train.batch_size} = {ctx.world_size} x {cfg.train.batch_size // ctx.world_size}")
    return _train_and_summarize(cfg, store, model, trainer, log, is_main)


def _check_resumable(run: RunDir, store: PartitionedStore) -> None:
    """A run on a partitioned store resumes only at the vocabulary version it started at."""
    previous = run.read_lineage()
    if run.last_checkpoint.is_file() and previous is not None and previous.get("vocab_version") != store.vocab_version:
        raise ConfigError(f"{run.path} was started at vocabulary version {previous.get('vocab_version')} of "
                          f"{store.path}, which is now at version {store.vocab_version} (a partition was appended "
                          "since): its checkpoints do not fit the store any more; continue it into a new run instead "
                          f"(--continue {run.path} --out NEW_RUN) or start over (--no-resume)")


def _lineage(cfg: Config, store: PartitionedStore, parent: Parent | None, trainer: Trainer, run: RunDir,
             resumed: bool, log: Callable[[str], None]) -> dict[str, Any]:
    """RUN/lineage.json of a run on a partitioned store; a continued run first scores its training
    partitions with the parent (progressive validation), then warm-starts from it (not when it
    resumes: then its recorded lineage stands)."""
    previous = run.read_lineage() if resumed else None
    ancestors = list(parent.trained) if parent else []
    record: dict[str, Any] = {
        "store": str(store.path), "vocab_version": store.vocab_version, "spec_fingerprint": spec_fingerprint(store.spec),
        "trained_partitions": store.train_partitions,
        "all_trained_partitions": ancestors + [p for p in store.train_partitions if p not in ancestors],
        "valid_partition": store.valid_partition, "test_partition": store.test_partition,
    }
    if parent is None:
        return record
    record["parent"] = parent.record()
    again = [p for p in store.train_partitions if p in parent.trained]
    if again:
        trainer.warn(f"partition(s) {', '.join(again)} were already trained on by the parent {parent.run.path} (or "
                     "its ancestors): training on them again; their progressive metrics are not held out")
    if previous is not None and "progressive" in previous:
        record.update({k: previous[k] for k in ("progressive", "warm_start") if k in previous})
        return record
    progressive = progressive_metrics(parent, cfg, store.store, store.train_partitions, trainer.device)
    record["progressive"] = progressive
    names = ", ".join(store.train_partitions)
    if trainer.setup is not None and trainer.setup.multi:
        log(f"progressive validation (parent on {names}, before training): "
            f"{format_task_metrics({k.removeprefix('progressive_'): v for k, v in progressive.items()}, trainer.setup)}")
    else:
        log(f"progressive validation (parent on {names}, before training): AUC {progressive['progressive_auc']:.5f} "
            f"logloss {progressive['progressive_logloss']:.5f} ({progressive['progressive_rows']:,} rows)")
    record["warm_start"] = warm_start(parent, trainer, store.store, cfg, log)
    return record


def _reset_run_dir(cfg: Config, run: RunDir, resume: bool) -> None:
    run.path.mkdir(parents=True, exist_ok=True)
    if not resume:  # start over: nothing of an earlier run may be mistaken for this one's
        run.clear_training_outputs()
    dump_config(cfg, run.config)


def _train_and_summarize(cfg: Config, store: Store, model: torch.nn.Module, trainer: Trainer,
                         log: Callable[[str], None], is_main: bool) -> dict[str, Any]:
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model {cfg.model.name}: {n_params:,} parameters; train rows {len(store.split('train')):,}; "
        f"device {trainer.device}; torch threads {torch.get_num_threads()}")
    plan = schedule(cfg, store)
    log(format_schedule(plan))
    started = time.perf_counter()
    history = trainer.fit()
    summary: dict[str, Any] = {
        "model": cfg.model.name, "parameters": n_params, "epochs_run": trainer.epoch,
        "best_epoch": trainer.best["epoch"], "stopped_early": trainer.stopped_early,
        "hit_epoch_cap_while_improving": trainer.capped_while_improving, "warnings": trainer.warnings,
        "train_seconds": round(time.perf_counter() - started, 3), "schedule": plan, "history": history,
    }
    lineage = getattr(trainer, "lineage", None)
    if lineage is not None:  # a partitioned store: what was trained on, the parent, progressive validation
        summary.update({k: lineage[k] for k in ("store", "vocab_version", "trained_partitions", "valid_partition",
                                                 "test_partition")})
        if "parent" in lineage:
            summary["parent"] = lineage["parent"]
            summary.update(lineage.get("progressive", {}))
    best_epoch = trainer.best["epoch"] or trainer.epoch
    best = next((h for h in history if h["epoch"] == best_epoch), None)
    setup = trainer.setup
    if setup is not None:  # several labels: which tasks, and the per-task metrics below
        summary["tasks"] = setup.names
        if cfg.train.task is not None:
            summary["task"] = cfg.train.task
    if best:
        summary["valid_auc"], summary["valid_logloss"] = best["valid_auc"], best["valid_logloss"]
        summary.update({k: v for k, v in best.items() if k.startswith("valid_") and k not in summary})
        summary["train_loss"] = best["train_loss"]
        summary.update({k: v for k, v in best.items() if k.startswith("train_loss/")})
        summary.update({k: best[k] for k in ("l2", "iterations", "converged") if k in best})  # lbfgs: the chosen L2
        summary["samples_per_s"] = float(np.mean([h["samples_per_s"] for h in history]))
    if store.has_split("test"):
        model.load_state_dict(load_weights(trainer.best_checkpoint()))
        if trainer.dist:
            test = trainer.evaluate_split(store.split("test"))
        elif setup is None:
            test = evaluate(model, store.split("test"), cfg.train.eval_batch_size, trainer.device)
        else:
            test = evaluate(model, store.split("test"), cfg.train.eval_batch_size, trainer.device, setup)
        summary["test_auc"], summary["test_logloss"], summary["test_rows"] = test["auc"], test["logloss"], test["rows"]
        if setup is not None:
            summary.update({f"test_{k}": v for k, v in test.items() if k not in ("auc", "logloss", "rows")})
        shared = train_test_overlap(store.meta)
        summary["test_is_training_data"] = bool(shared)
        chosen = f"by valid {trainer.monitor}" if store.has_split("valid") else "the last: no validation split"
        log(f"best epoch {best_epoch} ({chosen}); test rows {test['rows']:,}")
        if setup is not None and setup.multi:
            log(f"test {format_task_metrics(test, setup)}{overlap_warning(shared)}")
        else:
            log(f"test AUC {test['auc']:.5f}{overlap_warning(shared)}")
            log(f"test logloss {test['logloss']:.5f}{overlap_warning(shared)}")
    if is_main:
        trainer.run.write_summary(summary)
    log(format_history(history, best_epoch, setup.names if setup is not None and setup.multi else None))
    return summary


def format_history(history: list[dict[str, Any]], best_epoch: int | None = None,
                   tasks: list[str] | None = None) -> str:
    """The epoch table; with ``tasks`` (a multi-task run) the valid AUC and logloss columns are the
    means over the tasks and one AUC column per task follows them."""
    full_batch = bool(history) and "l2" in history[0]  # lbfgs: each epoch is one L2 value, solved
    step, work = ("l2", "iterations") if full_batch else ("lr", "samples_per_s")
    tasks = tasks or []
    widths = [max(9, len(f"AUC {t}")) for t in tasks]
    task_heads = "".join(f" {'AUC ' + t:>{w}}" for t, w in zip(tasks, widths))
    lines = [f"{'epoch':>5} {'train loss':>10} {'valid AUC':>9} {'valid logloss':>13}{task_heads} {step:>9} "
             f"{'iterations' if full_batch else 'samples/s':>10} {'s':>7}"]
    for h in history:
        va = f"{h['valid_auc']:.5f}" if h["valid_auc"] is not None else "-"
        vl = f"{h['valid_logloss']:.5f}" if h["valid_logloss"] is not None else "-"
        cells = "".join(f" {_cell(h.get(f'valid_auc/{t}')):>{w}}" for t, w in zip(tasks, widths))
        mark = " <- best" if best_epoch == h["epoch"] else ""
        lines.append(f"{h['epoch']:>5} {h['train_loss']:>10.5f} {va:>9} {vl:>13}{cells} {h[step]:>9.2e} "
                     f"{h[work]:>10,.0f} {h['seconds']:>7.1f}{mark}")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return "-" if value is None else f"{value:.5f}"


def parse_epoch_range(text: str | None, available: list[int]) -> list[int]:
    """'1:4' -> the saved epochs 1..4 (inclusive); None -> all saved epochs."""
    if text is None:
        return available
    lo, hi = parse_epoch_range_text(text, "--epochs")
    lo = min(available, default=0) if lo is None else lo
    hi = max(available, default=0) if hi is None else hi
    chosen = [e for e in available if lo <= e <= hi]
    if not chosen:
        raise ConfigError(f"no saved epoch in {lo}..{hi}; saved epochs: {available}")
    return chosen


def run_eval(cfg: Config, *, log: Callable[[str], None] = print, partition: str | None = None) -> list[dict[str, Any]]:
    """Evaluate every saved epoch in ``eval.epochs`` on ``eval.split`` (exact AUC/logloss).

    A run on a partitioned store: ``partition`` (or the run's train / valid / test partitions
    for ``eval.split``), read as the run's vocabulary version reads it (ids added or changed since
    are OOV), with the model built for that version's spec: any partition, appended later or not."""
    if not cfg.run_dir:
        raise ConfigError("which run? pass RUN_DIR or set run_dir in the config")
    check_run_config(cfg)
    run = RunDir(cfg.run_dir)
    available = run.saved_epochs()
    if not available:
        raise FileNotFoundError(f"{run.checkpoints}: no saved epochs (train first)")
    epochs = parse_epoch_range(cfg.eval.epochs, available)
    store = ensure_store(cfg, progress=False, log=log)
    check_tasks(cfg, store)
    configure_torch_threads(cfg.train.threads)
    device = torch.device(cfg.train.device)
    where = cfg.eval.split
    if store.partitioned:
        lineage = run.read_lineage() or {}
        version = int(lineage.get("vocab_version") or store.vocab_version)
        if partition is None:
            view = partition_view(store, cfg.data, lineage.get("trained_partitions"))
            names = view.partitions_of[cfg.eval.split]
            if not names:
                raise ConfigError(f"{run.path} has no {cfg.eval.split} partition (data.{cfg.eval.split}_partition); "
                                  "name one with --partition NAME")
        else:
            names = [partition]
        split = read_partitions(store, names, version)
        where = f"partition {', '.join(names)}"
        params = dict(cfg.model.params)
        if store.multi_task and multi_task(cfg.model.name):
            params.setdefault("num_tasks", len(store.tasks))
        model = build_model(cfg.model.name, store.spec_at(version), params).to(device)
    else:
        if partition is not None:
            raise ConfigError(f"--partition: {store.path} is not a partitioned store (use --split)")
        split = store.split(cfg.eval.split)
        model = build_model_for(cfg, store).to(device)
    setup = task_setup(model, store, cfg.train.task)
    results = []
    labels = split_labels(split, setup)
    warning = overlap_warning(train_test_overlap(store.meta)) if cfg.eval.split == "test" and not store.partitioned else ""
    for epoch in epochs:
        model.load_state_dict(load_weights(run.checkpoint(epoch)))
        probs = predict_split(model, split, cfg.eval.batch_size, device, cvr=bool(setup and setup.cvr))
        res = {"epoch": epoch, "split": cfg.eval.split, **({"partitions": names} if store.partitioned else {}),
               **(evaluate_scores(labels, probs) if setup is None else score_split(labels, probs, setup))}
        results.append(res)
        if setup is not None and setup.multi:
            log(f"epoch {epoch}: {where} {format_task_metrics(res, setup)}  rows {res['rows']:,}{warning}")
        else:
            log(f"epoch {epoch}: {where} AUC {res['auc']:.5f}  logloss {res['logloss']:.5f}  "
                f"rows {res['rows']:,}{warning}")
    return results
