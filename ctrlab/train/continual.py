"""Continual training: ``ctrlab train --continue PARENT --data STORE --partitions day02`` (issue 17).

A run trained on a partitioned store records its lineage (RUN/lineage.json: the store, the
vocabulary version V it was trained at and the spec's fingerprint, its partitions). Continuing it:

1. the parent: its chosen epoch (summary.json's ``best_epoch``: by validation when it had a
   valid partition, else its last epoch; the epoch ``ctrlab eval`` / ``export`` use). The parent
   must be finished (a summary) and trained on this store's lineage: the store (this one, or a
   copy with more partitions appended) holds version V with the same spec (refused otherwise);
2. progressive validation: the new training partitions are scored by the parent model as it was
   (built for the spec of V; ids it did not know or whose meaning changed since are OOV, as its own
   pipeline would have encoded them), before any update: ``progressive_auc`` /
   ``progressive_logloss`` (``/<task>`` per task) in the run's summary.json and lineage.json;
3. warm start: the model is built for the store's current spec and the parent's weights grown
   into it (:mod:`ctrlab.train.grow`; reset rows: ``Store.id_changes(V)``). The optimizer state
   carries over when the parent's last.pt is its chosen epoch (dense optimizer state as it is, the
   embedding tables' row state grown like the rows); otherwise the optimizer starts fresh (warned).
   Learning rates are this run's config's (not the parent's decayed ones).

Training a partition the parent (or an ancestor recorded in its lineage) already trained on is
allowed with a warning (a second pass); its progressive metrics are then not held out
(``progressive_is_training_data``: true).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import torch

from ..config import Config, ConfigError, load_config, to_dict
from ..data.store import Store
from ..models import build_model
from ..models.registry import multi_task
from .evaluate import evaluate, task_setup
from .grow import grow_sparse_optimizer_state, grow_state_dict
from .partitions import read_partitions, spec_fingerprint
from .rundir import RunDir
from .trainer import load_weights


class Parent:
    """What a continued run needs of its parent run."""

    def __init__(self, path: str, store: Store, cfg: Config):
        run = RunDir(path)
        self.run = run
        if not run.config.is_file():
            raise ConfigError(f"train.continue_from: {path} is not a run directory (no {run.config.name})")
        if cfg.run_dir and Path(cfg.run_dir).resolve() == run.path.resolve():
            raise ConfigError("the continued run needs its own run directory (--out): it is the parent's")
        summary = run.read_summary()
        if summary is None:
            raise ConfigError(f"train.continue_from: {path} is unfinished (no summary.json); finish it first "
                              "(`ctrlab train` resumes it)")
        lineage = run.read_lineage()
        if lineage is None:
            raise ConfigError(f"train.continue_from: {path} was not trained on a partitioned store (no "
                              f"{run.lineage.name}); continual training continues a run of `ctrlab train --partitions`")
        if not store.partitioned:
            raise ConfigError(f"train.continue_from: {store.path} is not a partitioned store; continue onto the parent's "
                              f"store ({lineage['store']}) with partitions appended (`ctrlab prepare --append`)")
        self.version = int(lineage["vocab_version"])
        if not 1 <= self.version <= store.vocab_version:
            raise ConfigError(f"train.continue_from: {path} was trained at vocabulary version {self.version}, and "
                              f"{store.path} has versions 1..{store.vocab_version}: not the parent's store lineage")
        self.old_spec = store.spec_at(self.version)
        if spec_fingerprint(self.old_spec) != lineage["spec_fingerprint"]:
            raise ConfigError(f"train.continue_from: {store.path} is not the parent's store lineage: its vocabulary "
                              f"version {self.version} is not the one {path} was trained at (another pipeline or "
                              f"another store; the parent's store: {lineage['store']})")
        for name in lineage.get("trained_partitions", []):
            if name not in store.partitions:
                raise ConfigError(f"train.continue_from: {store.path} has no partition {name!r}, which {path} trained "
                                  f"on: not the parent's store lineage (the parent's store: {lineage['store']})")
        parent_cfg = load_config(str(run.config))
        if parent_cfg.model.name != cfg.model.name or _params(parent_cfg) != _params(cfg):
            raise ConfigError(f"train.continue_from: the parent is model {parent_cfg.model.name} "
                              f"{_params(parent_cfg)}, this run {cfg.model.name} {_params(cfg)}: a continued run "
                              "keeps the parent's model (leave model.* alone)")
        self.lineage = lineage
        self.epoch = int(summary.get("best_epoch") or run.chosen_epoch())
        self.checkpoint = run.checkpoint(self.epoch)
        if not self.checkpoint.is_file():
            raise ConfigError(f"train.continue_from: {self.checkpoint} is missing (the parent's chosen epoch)")
        self.trained = list(lineage.get("all_trained_partitions", lineage.get("trained_partitions", [])))

    def record(self) -> dict[str, Any]:
        return {"run_dir": str(self.run.path), "epoch": self.epoch, "vocab_version": self.version,
                "checkpoint": str(self.checkpoint)}

    def untrained(self, store: Store) -> list[str]:
        """The store's partitions after the last one the parent's lineage trained on."""
        names = store.partitions
        last = max((names.index(n) for n in self.trained if n in names), default=-1)
        return names[last + 1:]

    def model(self, cfg: Config, store: Store) -> torch.nn.Module:
        """The parent's model as it was (the spec of its vocabulary version, its weights)."""
        params = dict(cfg.model.params)
        if store.multi_task and multi_task(cfg.model.name):
            params.setdefault("num_tasks", len(store.tasks))
        model = build_model(cfg.model.name, self.old_spec, params)
        model.load_state_dict(load_weights(self.checkpoint))
        return model


def _params(cfg: Config) -> dict[str, Any]:
    return {k: v for k, v in to_dict(cfg.model.params).items() if k != "num_tasks"}


def progressive_metrics(parent: Parent, cfg: Config, store: Store, partitions: list[str],
                        device: torch.device) -> dict[str, Any]:
    """The parent model's metrics on ``partitions`` (read as its vocabulary version reads them)."""
    model = parent.model(cfg, store).to(device)
    setup = task_setup(model, store, cfg.train.task)
    split = read_partitions(store, partitions, parent.version)
    res = evaluate(model, split, cfg.train.eval_batch_size, device, setup)
    out: dict[str, Any] = {"progressive_partitions": list(partitions), "progressive_auc": res["auc"],
                           "progressive_logloss": res["logloss"], "progressive_rows": res["rows"]}
    for key, value in res.items():
        if "/" in key and key.split("/")[0] in ("auc", "logloss", "rows"):
            out[f"progressive_{key}"] = value
    out["progressive_is_training_data"] = any(p in parent.trained for p in partitions)
    return out


def warm_start(parent: Parent, trainer: Any, store: Store, cfg: Config, log: Callable[[str], None]) -> dict[str, Any]:
    """Load the parent's weights (and optimizer state) grown to the store's current spec into the
    trainer's model and optimizers; returns what was done (for lineage.json)."""
    model = trainer.model
    reset = store.id_changes(parent.version)
    vocabularies = store.meta.get("column_vocabularies")
    new_spec = store.spec
    grown = grow_state_dict(model, load_weights(parent.checkpoint), parent.old_spec, new_spec, reset,
                            column_vocabularies=vocabularies)
    model.load_state_dict(grown)
    reset_rows = {k: int(len(v)) for k, v in reset.items() if len(v)}
    info: dict[str, Any] = {"reset_ids": reset_rows, "optimizer_state": "fresh"}
    last = parent.run.last_checkpoint
    state = torch.load(last, map_location="cpu", weights_only=True) if last.is_file() else None
    if state is None or int(state.get("epoch", -1)) != parent.epoch:
        trainer.warn(f"the parent's last.pt is not its chosen epoch {parent.epoch}: the optimizer state starts "
                     "fresh (the weights are the chosen epoch's)")
    elif not hasattr(trainer, "sparse_opt"):
        pass
    else:
        trainer.sparse_opt.load_state_dict(grow_sparse_optimizer_state(
            model, state["sparse_opt"], trainer.sparse_opt.state_dict(), parent.old_spec, new_spec, reset,
            column_vocabularies=vocabularies))
        if trainer.dense_opt is not None and state.get("dense_opt"):
            trainer.dense_opt.load_state_dict(state["dense_opt"])
        for group in trainer.dense_opt.param_groups if trainer.dense_opt else []:
            group["lr"] = cfg.train.lr
        trainer.sparse_opt.lr = cfg.train.embedding_lr or cfg.train.lr
        info["optimizer_state"] = "carried"
    grown_sizes = {k: [parent.old_spec.vocab_sizes[i], v] for i, (k, v) in
                   enumerate(zip(new_spec.sparse_names, new_spec.vocab_sizes)) if v != parent.old_spec.vocab_sizes[i]}
    log(f"continuing {parent.run.path} (epoch {parent.epoch}, vocabulary v{parent.version} -> v{store.vocab_version}): "
        f"{len(grown_sizes)} table(s) grown, {sum(reset_rows.values())} row(s) reset, optimizer state "
        f"{info['optimizer_state']}")
    return info
