"""Trainer: binary cross-entropy on logits, sparse embedding updates, early stopping,
learning-rate reduction on plateau, atomic per-epoch checkpoints and exact resume.

The run directory's files (checkpoints, epoch and step logs, TensorBoard events) are named by
:class:`ctrlab.train.rundir.RunDir`.

Distributed (``dist`` given, see :mod:`ctrlab.train.distributed`): every rank trains on its share of
each global batch with synchronised gradients and evaluates its block of a split; only rank 0 writes
the run directory. A sharded train split (:mod:`ctrlab.data.shards`): each rank reads (and checks the
ids of) its own shards only; valid and test are read whole, as one split.

Several labels (a multi-task store, labels ``float32[B, T]`` with MISSING_LABEL = 255 where a row
has no label for a task): the loss is :func:`multitask_loss`, each task's binary cross-entropy
averaged over its labelled rows, combined with ``train.task_weights``; ESMM and AITM see task 1
as "click AND conversion" (0 wherever click is 0, :mod:`ctrlab.train.evaluate`). ``train.task``
trains a single-task model on one task's column, over the rows that carry that label.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from tqdm import tqdm

from ..config import ConfigError, TrainConfig
from ..data.batches import BatchIterator
from ..data.shards import rank_ranges
from ..data.store import SplitArrays, Store
from ..features.encoders import NumericTransform
from ..fileio import atomic_write, disk_errors, remove_stale_temporaries
from ..metrics import MISSING_LABEL
from ..nn.embedding import DenseFieldEmbedding, FieldEmbedding
from ..runtime import configure_torch_threads, prefetch
from . import distributed as distrib
from .evaluate import TaskSetup, evaluate, split_labels, score_split, task_setup
from .optim import RowSparseOptimizer, dense_optimizer
from .rundir import RunDir


def task_weight_vector(weights: dict[str, float], tasks: list[str]) -> list[float]:
    """``train.task_weights`` as one weight per task (1 for a task not named); an unknown task name
    is a ConfigError."""
    unknown = [name for name in weights if name not in tasks]
    if unknown:
        raise ConfigError(f"train.task_weights: unknown task(s) {', '.join(map(repr, unknown))}; the store's tasks "
                          f"are {', '.join(tasks)}")
    return [float(weights.get(name, 1.0)) for name in tasks]


def monitor_key(cfg: TrainConfig, tasks: list[str]) -> str:
    """The key of the validation metric early stopping watches: ``auc`` / ``logloss`` (the mean over
    the tasks of a multi-task run; the one task otherwise) or ``auc/<task>`` / ``logloss/<task>``."""
    if cfg.monitor_task == "mean" or (len(tasks) == 1 and cfg.monitor_task == tasks[0]):
        return cfg.monitor
    if cfg.monitor_task not in tasks:
        raise ConfigError(f"train.monitor_task: {cfg.monitor_task!r} is not a task of this run; use mean or one of "
                          f"{', '.join(tasks)}")
    return f"{cfg.monitor}/{cfg.monitor_task}"


def click_and_conversion_batch(label: torch.Tensor) -> torch.Tensor:
    """ESMM / AITM batch labels ``[B, 2]``: task 1 is 0 wherever click (task 0) is 0."""
    return torch.stack([label[:, 0], torch.where(label[:, 0] == 0, torch.zeros_like(label[:, 1]), label[:, 1])],
                       dim=1)


def multitask_loss(logits: torch.Tensor, label: torch.Tensor, weights: torch.Tensor,
                   dist: "distrib.DistContext | None" = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum_t weights[t] * loss_t, loss [T])``: ``loss_t`` is task t's binary cross-entropy on the
    logits ``[B, T]``, averaged over the rows whose label ``[B, T]`` is not MISSING_LABEL (0 when a
    batch has none). Distributed: averaged over the labelled rows of the GLOBAL batch (the counts
    are all-reduced; each rank's value is scaled so that the ranks' averaged gradient is that mean's)."""
    mask = label != MISSING_LABEL
    target = torch.where(mask, label, torch.zeros_like(label))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target, reduction="none")
    sums = (bce * mask).sum(dim=0)
    counts = mask.sum(dim=0).to(sums.dtype)
    if dist is not None:
        counts = counts.detach().clone()
        torch.distributed.all_reduce(counts, op=torch.distributed.ReduceOp.SUM)
        sums = sums * dist.world_size
    per_task = sums / counts.clamp(min=1)
    return (per_task * weights).sum(), per_task


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def embedding_parameters(model: torch.nn.Module, *, ids_checked: bool = False) -> list[torch.nn.Parameter]:
    """The embedding tables of a model (updated row-sparsely), switching them to sparse grads.

    ids_checked: the training data's ids were checked against the vocabulary sizes up front
    (:func:`check_store_ids`), so the per-batch range check can be skipped."""
    params = []
    for module in model.modules():
        if isinstance(module, FieldEmbedding):
            module.sparse_grad = True
            if ids_checked:
                module.validate_ids = False
            params.append(module.weight)
    return params


def check_store_ids(store: Store, split: str = "train", rank: int = 0, world_size: int = 1) -> None:
    """Every sparse id of a split within its field's vocabulary (once, instead of per batch). A
    sharded split in a distributed run: each rank checks the shards it trains on (all ranks together
    check every row)."""
    arrays = store.split(split)
    sizes = np.asarray(store.spec.column_vocab_sizes)
    if arrays.sparse.shape[1] != len(sizes):
        raise ValueError(f"{store.path}: {split} has {arrays.sparse.shape[1]} sparse columns, the spec {len(sizes)}")
    ranges = rank_ranges(arrays.shards, rank, world_size) if arrays.shards and world_size > 1 else [(0, len(arrays))]
    blocks = ((lo, min(lo + (1 << 20), stop)) for start, stop in ranges for lo in range(start, stop, 1 << 20))
    for lo, hi in blocks:
        block = np.asarray(arrays.sparse[lo:hi])
        if block.size and (block.min() < 0 or (block.max(axis=0) >= sizes).any()):
            col = int(np.flatnonzero((block.max(axis=0) >= sizes) | (block.min(axis=0) < 0))[0])
            raise ValueError(f"{store.path}: {split} ids of field {store.spec.column_names[col]!r} fall outside "
                             f"0..{sizes[col] - 1}: the store does not match its pipeline")


def dense_scale_warning(model: torch.nn.Module, pipeline: Any) -> str | None:
    """Why this model may train badly on these dense columns, or None.

    Models that embed a dense value as ``value * vector`` (DeepFM, xDeepFM, AutoInt, FM, ...)
    put it into products with other fields; an unscaled column (``passthrough``, ``log1p``:
    Criteo counts reach ~14 after log1p) multiplies those terms and the effective step size of
    its vector, which cost DeepFM 3-9 standard errors of test AUC on the Criteo rows (README)."""
    if not any(isinstance(m, DenseFieldEmbedding) for m in model.modules()):
        return None
    unscaled = {col: enc.kind for col, enc in pipeline.encoders.items()
                if col in pipeline.dense_inputs and isinstance(enc, NumericTransform) and not enc.needs_fit}
    if not unscaled:
        return None
    kinds = ", ".join(sorted(set(unscaled.values())))
    return (f"model {getattr(model, 'model_name', type(model).__name__)} embeds dense values into its feature "
            f"interactions (value * vector), and {len(unscaled)} dense column(s) are not scaled "
            f"({kinds}: {', '.join(list(unscaled)[:5])}{', ...' if len(unscaled) > 5 else ''}): large values "
            f"blow up those products and can cost accuracy; prepare the store with "
            f"features.numeric.transform log1p_standardize (or minmax / log_square_bucket)")


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` whole or not at all; a full disk is a DiskFullError naming ``path`` (torch
    itself says "[enforce fail at inline_container.cc] unexpected pos")."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            torch.save(obj, fh)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def load_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Model weights from an epoch checkpoint, a last.pt or a bundle's model.pt."""
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data["model"] if isinstance(data, dict) and "model" in data else data


class Trainer:
    """Train ``model`` on a store's train split, validating on its valid split each epoch."""

    def __init__(self, model: torch.nn.Module, store: Store, cfg: TrainConfig, run_dir: str | os.PathLike,
                 *, progress: bool = True, log: Callable[[str], None] = print,
                 dist: "distrib.DistContext | None" = None,
                 on_epoch_end: Callable[[int, dict[str, Any]], None] | None = None):
        self.cfg = cfg
        self.dist = dist
        # called after each epoch's checkpoint and logs are written, with the epoch's record; an
        # exception it raises ends training there (ctrlab tune prunes a trial this way)
        self.on_epoch_end = on_epoch_end
        self.is_main = dist is None or dist.is_main
        self.store = store
        self.run = RunDir(run_dir)
        self.progress = progress and self.is_main
        self.log = log if self.is_main else (lambda _msg: None)
        self.device = torch.device(distrib.local_device(cfg.device, dist))
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("train.device is cuda but no CUDA device is available (use --device cpu)")
        configure_torch_threads(distrib.default_threads(cfg.threads, dist))
        self.model = model.to(self.device)
        check_store_ids(store, rank=dist.rank if dist else 0, world_size=dist.world_size if dist else 1)
        sparse_params = embedding_parameters(self.model, ids_checked=True)
        sparse_ids = {id(p) for p in sparse_params}
        dense_params = [p for p in self.model.parameters() if id(p) not in sparse_ids and p.requires_grad]
        self.dense_params = dense_params
        self.sparse_params = sparse_params
        self.sparse_opt = RowSparseOptimizer(sparse_params, cfg.optimizer, lr=cfg.embedding_lr or cfg.lr,
                                             momentum=cfg.momentum, reg=cfg.reg)
        self.dense_opt = dense_optimizer(dense_params, cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.momentum) \
            if dense_params else None
        self.loss_fn = torch.nn.BCEWithLogitsLoss()
        is_multi = bool(getattr(model, "multi_task", False))
        if is_multi != (store.multi_task and cfg.task is None):  # (run_training says more: check_tasks)
            raise ConfigError(f"model {getattr(model, 'model_name', type(model).__name__)} "
                              f"({'multi' if is_multi else 'single'}-task) does not fit the store {store.path} "
                              f"(tasks {', '.join(store.tasks)}; train.task {cfg.task})")
        self.setup: TaskSetup | None = task_setup(self.model, store, cfg.task)
        self.tasks = self.setup.names if self.setup else list(store.tasks)
        self.monitor = monitor_key(cfg, self.tasks)
        weights = dict(zip(store.tasks, task_weight_vector(cfg.task_weights, list(store.tasks))))
        self.task_weights = torch.tensor([weights[name] for name in self.tasks], dtype=torch.float32,
                                         device=self.device)
        self.train_task_losses: list[float] | None = None  # the last epoch's per-task means (multi-task)
        self.epoch = 0  # epochs completed
        self.step = 0
        self.best: dict[str, Any] = {"epoch": None, "metric": None}
        self.bad_epochs = 0
        self.history: list[dict[str, Any]] = []
        self.stopped_early = False
        self._tb = None
        if cfg.min_epochs > cfg.epochs:
            raise ConfigError(f"train.min_epochs ({cfg.min_epochs}) is more than train.epochs ({cfg.epochs})")
        #: what this run's summary should warn about (also logged)
        self.warnings: list[str] = []
        scale = dense_scale_warning(self.model, store.pipeline)
        if scale:
            self.warn(scale)

    def warn(self, message: str) -> None:
        if message not in self.warnings:
            self.warnings.append(message)
        self.log(f"WARNING: {message}")

    # ----------------------------------------------------------------------------------------
    def _lrs(self) -> tuple[float, float]:
        dense = self.dense_opt.param_groups[0]["lr"] if self.dense_opt else self.cfg.lr
        return dense, self.sparse_opt.lr

    def _scale_lr(self, factor: float) -> None:
        if self.dense_opt:
            for group in self.dense_opt.param_groups:
                group["lr"] *= factor
        self.sparse_opt.lr *= factor

    def _better(self, value: float) -> bool:
        best = self.best["metric"]
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return False
        if best is None:
            return True
        return value > best if self.cfg.monitor == "auc" else value < best

    def train_split(self) -> tuple[SplitArrays, np.ndarray | None]:
        """The split training iterates over and its rows (None: all): train.task trains on its
        column's labelled rows."""
        split = self.store.split("train")
        if self.setup is None or self.setup.task is None:
            return split, None
        column = split.label[:, self.setup.task]
        rows = np.flatnonzero(np.asarray(column) != MISSING_LABEL)
        if rows.size == 0:
            raise ValueError(f"{split.where}: no row has a {self.tasks[0]!r} label: nothing to train train.task on")
        return dataclasses.replace(split, label=column, where=f"{split.where} ({self.tasks[0]} rows)"), rows

    # ----------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "dense_opt": self.dense_opt.state_dict() if self.dense_opt else None,
            "sparse_opt": self.sparse_opt.state_dict(),
            "epoch": self.epoch, "step": self.step, "best": self.best, "bad_epochs": self.bad_epochs,
            "history": self.history, "stopped_early": self.stopped_early,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }

    def load_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        if self.dense_opt and state["dense_opt"]:
            self.dense_opt.load_state_dict(state["dense_opt"])
        self.sparse_opt.load_state_dict(state["sparse_opt"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
        self.history, self.stopped_early = state["history"], state["stopped_early"]
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def try_resume(self) -> bool:
        last = self.run.last_checkpoint
        if not last.is_file():
            return False
        self.load_state(torch.load(last, map_location=self.device, weights_only=True))
        self.log(f"resumed from {last} after epoch {self.epoch}")
        return True

    def _align_records(self) -> None:
        """Make the run's logs say what the state training starts from covers: step records up to
        ``self.step`` (an interrupted epoch re-runs, a run killed before its first checkpoint starts
        afresh) and the epoch records of ``self.history``; temporaries of killed writers go."""
        for folder in (self.run.path, self.run.checkpoints):
            if folder.is_dir():
                remove_stale_temporaries(folder)
        if self.run.steps.is_file():
            self.run.write_steps([r for r in self.run.step_records() if r["step"] <= self.step])
        self.run.write_epoch_logs(self.history)

    def evaluate_split(self, split: SplitArrays) -> dict[str, float]:
        """Exact metrics over a whole split (distributed: gathered from every rank's block)."""
        if self.dist is None:
            if self.setup is None:  # (the single-label call, as tests script it)
                return evaluate(self.model, split, self.cfg.eval_batch_size, self.device)
            return evaluate(self.model, split, self.cfg.eval_batch_size, self.device, self.setup)
        cvr = bool(self.setup and self.setup.cvr)
        probs = distrib.predict_split_distributed(self.dist, self.model, split, self.cfg.eval_batch_size,
                                                  self.device, cvr=cvr)
        return score_split(split_labels(split, self.setup), probs, self.setup)

    def save_checkpoint(self) -> None:
        self.run.checkpoints.mkdir(parents=True, exist_ok=True)
        save_torch({"model": self.model.state_dict(), "epoch": self.epoch}, self.run.checkpoint(self.epoch))
        save_torch(self.state(), self.run.last_checkpoint)

    # ----------------------------------------------------------------------------------------
    def train_epoch(self) -> tuple[float, float]:
        """One pass over the training split; returns (mean loss, samples/s)."""
        cfg = self.cfg
        split, rows = self.train_split()
        rank, world = (self.dist.rank, self.dist.world_size) if self.dist else (0, 1)
        batches = BatchIterator(split, distrib.local_batch_size(cfg.batch_size, self.dist), shuffle=cfg.shuffle,
                                seed=cfg.seed, rank=rank, world_size=world, device=self.device, rows=rows)
        multi = self.setup is not None and self.setup.multi
        both = multi and self.setup.click_and_conversion
        task_totals = torch.zeros(len(self.tasks), dtype=torch.float64, device=self.device)
        batches.set_epoch(self.epoch)
        self.model.train()
        total_loss = torch.zeros((), dtype=torch.float64, device=self.device)
        seen = 0
        window_loss, window_rows = 0.0, 0
        started = time.perf_counter()
        bar = tqdm(total=batches.rows_total, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit=" rows", unit_scale=True,
                   disable=not self.progress, mininterval=1.0, leave=False)
        steps_path = self.run.steps
        with disk_errors(steps_path):
            steps_file = open(steps_path, "a", encoding="utf-8") if self.is_main else None
        try:
            # the next batch is gathered in a thread while this one trains (numpy gathers release
            # the GIL)
            auxiliary = getattr(self.model, "auxiliary_loss", None) if cfg.auxiliary_loss_weight > 0 else None
            calibration = getattr(self.model, "calibration_loss", None) if multi else None
            for dense, sparse, label in prefetch(iter(batches), depth=2):
                logits = self.model(dense, sparse)
                if multi:
                    if both:
                        label = click_and_conversion_batch(label)
                    loss, per_task = multitask_loss(logits, label, self.task_weights, self.dist)
                    task_totals += per_task.detach().double() * label.shape[0]
                else:
                    loss = self.loss_fn(logits, label)
                self.sparse_opt.zero_grad()
                if self.dense_opt:
                    self.dense_opt.zero_grad(set_to_none=True)
                extra = None
                if auxiliary is not None:  # (DIEN: the click loss is still what is reported)
                    extra = cfg.auxiliary_loss_weight * auxiliary(dense, sparse)
                if calibration is not None:  # (AITM: the tasks' weighted loss is still what is reported)
                    extra = calibration(logits) if extra is None else extra + calibration(logits)
                if extra is not None:
                    (loss + extra).backward()
                else:
                    loss.backward()
                if self.dist:  # average over the global batch before clipping and stepping
                    distrib.sync_gradients(self.dist, self.dense_params, self.sparse_params)
                if cfg.grad_clip and self.dense_params:
                    torch.nn.utils.clip_grad_norm_(self.dense_params, cfg.grad_clip)
                if self.dense_opt:
                    self.dense_opt.step()
                self.sparse_opt.step()
                n = label.shape[0]
                detached = loss.detach()
                total_loss += detached.double() * n
                seen += n
                self.step += 1
                if self.dist:
                    distrib.maybe_die_for_test(self.dist, self.step)
                if self.step % cfg.log_every == 0:
                    value = float(detached)
                    if self.dist:  # the global batch's loss (equal shares: the mean of the ranks' means)
                        value = distrib.all_reduce_sum([value], self.device)[0] / world
                    window_loss += value * n
                    window_rows += n
                    rate = seen * world / (time.perf_counter() - started)
                    if steps_file is not None:
                        with disk_errors(steps_path):
                            steps_file.write(json.dumps({"step": self.step, "epoch": self.epoch + 1, "loss": value,
                                                         "samples_per_s": round(rate, 1)}) + "\n")
                    bar.set_postfix(loss=f"{value:.4f}", rate=f"{rate:,.0f}/s")
                    if self._tb:
                        self._tb.add_scalar("train/loss", value, self.step)
                bar.update(n * world)
        finally:
            bar.close()
            if steps_file is not None:
                with disk_errors(steps_path):
                    steps_file.close()
        elapsed = time.perf_counter() - started
        task_sums = task_totals.tolist()
        if self.dist:  # every rank's rows: the exact mean loss and the global rate
            loss_sum, seen, *task_sums = distrib.all_reduce_sum([float(total_loss), seen, *task_sums], self.device)
            total_loss = torch.tensor(loss_sum, dtype=torch.float64)
            seen = int(seen)
        mean_loss = float(total_loss) / max(seen, 1)
        self.train_task_losses = [v / max(seen, 1) for v in task_sums] if multi else None
        if not math.isfinite(mean_loss):
            raise RuntimeError(f"training diverged in epoch {self.epoch + 1} (loss {mean_loss}); lower train.lr")
        return mean_loss, seen / elapsed if elapsed > 0 else float("nan")

    def fit(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        self.run.path.mkdir(parents=True, exist_ok=True)
        if self.is_main:
            self._align_records()
        if cfg.tensorboard and self.is_main:
            try:  # optional: only runs with train.tensorboard need the tensorboard package
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # pragma: no cover - depends on the environment
                raise RuntimeError("train.tensorboard needs the tensorboard package: pip install tensorboard") from exc
            self._tb = SummaryWriter(str(self.run.tensorboard))
        has_valid = self.store.has_split("valid")
        while self.epoch < cfg.epochs and not self.stopped_early:
            started = time.perf_counter()
            train_loss, rate = self.train_epoch()
            valid = self.evaluate_split(self.store.split("valid")) if has_valid else None
            self.epoch += 1
            lr_dense, _ = self._lrs()
            record = {"epoch": self.epoch, "train_loss": train_loss,
                      "valid_auc": valid["auc"] if valid else None,
                      "valid_logloss": valid["logloss"] if valid else None}
            record.update(self.task_record(train_loss, valid))
            record.update({"lr": lr_dense, "seconds": round(time.perf_counter() - started, 3),
                           "samples_per_s": round(rate, 1)})
            if valid:
                value = valid[self.monitor]
                if self._better(value):
                    self.best = {"epoch": self.epoch, "metric": value}
                    self.bad_epochs = 0
                else:
                    self.bad_epochs += 1
                    self._scale_lr(cfg.lr_decay_factor)
                    if (cfg.early_stopping_patience and self.bad_epochs >= cfg.early_stopping_patience  # 0: off
                            and self.epoch >= cfg.min_epochs):
                        self.stopped_early = True
            else:  # no validation data: the last epoch is the one to use
                self.best = {"epoch": self.epoch, "metric": None}
            record["best_epoch"] = self.best["epoch"]
            self.history.append(record)
            if self.dist:
                distrib.check_replicas_in_sync(self.dist, self.model)
            if self.is_main:
                self.save_checkpoint()
                self.run.write_epoch_logs(self.history)
            distrib.barrier(self.dist)  # the other ranks may read this epoch's files next
            if self._tb and valid:
                self._tb.add_scalar("valid/auc", valid["auc"], self.epoch)
                self._tb.add_scalar("valid/logloss", valid["logloss"], self.epoch)
                for key in self.task_metric_keys():
                    if valid.get(key) is not None:
                        self._tb.add_scalar(f"valid/{key}", valid[key], self.epoch)
            msg = f"epoch {self.epoch}: train loss {train_loss:.5f}, {rate:,.0f} samples/s"
            if valid and self.setup is not None and self.setup.multi:
                msg += f", valid {format_task_metrics(valid, self.setup)}"
            elif valid:
                msg += f", valid AUC {valid['auc']:.5f} logloss {valid['logloss']:.5f}"
            if self.stopped_early:
                msg += f" (no improvement for {self.bad_epochs} epochs: stopping)"
            self.log(msg)
            if self.on_epoch_end is not None:
                self.on_epoch_end(self.epoch, record)
        if self._tb:
            self._tb.close()
        if self.capped_while_improving:
            self.warn(f"training hit its epoch cap (train.epochs={cfg.epochs}) while valid {self.monitor} was "
                      f"still improving (best at the last epoch): the model is likely undertrained; raise "
                      f"train.epochs and let early stopping decide")
        return self.history

    def task_metric_keys(self) -> list[str]:
        """The per-task metric keys of this run's evaluations (none for a single-label run):
        ``auc/<task>``, ``logloss/<task>`` per task, then ESMM's / AITM's ``ctcvr_auc`` and ESMM's
        ``cvr_auc``, ``cvr_logloss``."""
        return task_metric_keys(self.setup)

    def task_record(self, train_loss: float, valid: dict[str, Any] | None) -> dict[str, Any]:
        """An epoch record's per-task columns (after ``valid_logloss``; none for a single-label run):
        ``train_loss/<task>`` (multi-task), ``valid_auc/<task>``, ``valid_logloss/<task>``, ..."""
        out: dict[str, Any] = {}
        if self.setup is None:
            return out
        if self.setup.multi and self.train_task_losses is not None:
            out.update({f"train_loss/{name}": v for name, v in zip(self.tasks, self.train_task_losses)})
        out.update({f"valid_{key}": (valid.get(key) if valid else None) for key in self.task_metric_keys()})
        return out

    @property
    def capped_while_improving(self) -> bool:
        """The run ended at ``train.epochs`` with its best validation epoch the last one."""
        return (not self.stopped_early and self.epoch >= self.cfg.epochs and self.store.has_split("valid")
                and self.best["epoch"] == self.epoch and self.best["metric"] is not None)

    def best_checkpoint(self) -> Path:
        return self.run.checkpoint(self.best["epoch"] or self.epoch)


def task_metric_keys(setup: TaskSetup | None) -> list[str]:
    """See :meth:`Trainer.task_metric_keys`."""
    if setup is None:
        return []
    keys = [f"{metric}/{name}" for name in setup.names for metric in ("auc", "logloss")]
    if setup.click_and_conversion:
        keys.append("ctcvr_auc")
    if setup.cvr:
        keys += ["cvr_auc", "cvr_logloss"]
    return keys


def _number(value: Any) -> str:
    return "-" if value is None else f"{value:.5f}"


def format_task_metrics(metrics: dict[str, Any], setup: TaskSetup, prefix: str = "") -> str:
    """``AUC click 0.71000 conversion 0.65000 (mean 0.68000), logloss click ... (mean ...)`` of a
    multi-task evaluation (keys ``[prefix]auc/<task>``, ...); ESMM / AITM name task 1's AUC the CTCVR
    AUC (all rows) and ESMM adds the CVR AUC (clicked rows)."""
    parts = []
    for metric, title in (("auc", "AUC"), ("logloss", "logloss")):
        cells = []
        for t, name in enumerate(setup.names):
            label = f"{name} (CTCVR)" if setup.click_and_conversion and t == 1 else name
            cells.append(f"{label} {_number(metrics.get(f'{prefix}{metric}/{name}'))}")
        parts.append(f"{title} {' '.join(cells)} (mean {_number(metrics.get(prefix + metric))})")
    text = ", ".join(parts)
    if setup.cvr:
        text += f", CVR AUC {_number(metrics.get(prefix + 'cvr_auc'))} (clicked rows)"
    return text
