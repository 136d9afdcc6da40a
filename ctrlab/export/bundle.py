"""Writing a bundle: one epoch of a training run, exported and checked (``ctrlab export``).

:func:`export_bundle` writes the files :mod:`ctrlab.export.manifest` describes into a temporary
directory next to the target and renames it into place only after the ONNX graph matched the torch
model on a golden batch of real rows (the store's valid or test split): a bundle that exists passed
its parity check. A full disk during export is a DiskFullError naming the bundle file; the
temporary folder is removed.

Exporting needs torch, onnx and the training run's code; reading a bundle needs none of it
(:mod:`ctrlab.export.manifest`, :mod:`ctrlab.export.load`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ..config import Config, dump_config, fitted_features, load_config, to_dict
from ..data.store import Store
from ..features.pipeline import FeaturePipeline
from ..fileio import DiskFullError, disk_errors, replace_dir, short_of_space, stale_siblings, write_json_atomic
from ..models import build_model, multi_task
from ..train.rundir import RunDir
from ..train.trainer import load_weights
from .manifest import (CONFIG, FORMAT_VERSION, MANIFEST, ONNX_INT8, ONNX_MODEL, PIPELINE, TORCH_WEIGHTS,
                       file_entries, library_versions)
from .onnx_export import BATCH_AXIS, DEFAULT_OPSET, export_onnx, onnx_parity, output_tasks
from .quantize import quantize_bundle_model

PARITY_TOLERANCE = 1e-5
GOLDEN_ROWS = 256


# --------------------------------------------------------------------------------------------
# the run to export
# --------------------------------------------------------------------------------------------

def epoch_metrics(run: RunDir, epoch: int) -> dict[str, Any]:
    """Metrics of one epoch: its epoch record; the test metrics from the run's summary when that
    epoch is the best one (the test split is evaluated on the best epoch only).

    Several tasks (issue 16): the per-task ``valid_*``/``test_*`` entries of the record/summary
    (:func:`_per_task_entries`: ``valid_auc/click``, ``test_ctcvr_auc``, an object per task) are
    copied as they are; a run without them (or without epoch records or a summary at all) exports
    with what there is."""
    metrics: dict[str, Any] = {"epoch": epoch}
    record = next((r for r in run.epoch_records() if r.get("epoch") == epoch), None)
    if record:
        for key in ("valid_auc", "valid_logloss", "train_loss"):
            if record.get(key) is not None:
                metrics[key] = record[key]
        metrics.update(_per_task_entries(record, "valid_"))
    summary = run.read_summary()
    if summary is not None:
        metrics["best_epoch"] = summary.get("best_epoch")
        if summary.get("best_epoch") == epoch:
            for key in ("test_auc", "test_logloss", "test_rows"):
                if summary.get(key) is not None:
                    metrics[key] = summary[key]
            metrics.update(_per_task_entries(summary, "test_"))
    return metrics


def _per_task_entries(record: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The per-task entries of ``record``: named ``prefix``* with a value that is an object, or
    named ``prefix``*``/``* (``valid_auc/click``) or ``prefix``c[t]cvr_* (ESMM's) with a value."""
    return {k: v for k, v in record.items() if k.startswith(prefix) and v is not None and (
        isinstance(v, dict) or "/" in k or k[len(prefix):].startswith(("ctcvr_", "cvr_")))}


def model_params(name: str, params: Any, store: Store) -> dict[str, Any]:
    """The run's model hyperparameters as the bundle records them: a multi-task model's
    ``num_tasks`` is the store's task count (as training builds it) unless the config sets it, so
    that the manifest alone rebuilds the model (:func:`ctrlab.export.load.torch_model`)."""
    params = dict(to_dict(params) if not isinstance(params, dict) else params)
    if multi_task(name) and "num_tasks" not in params:
        params["num_tasks"] = len(store.tasks)
    return params


def bundle_tasks(model: torch.nn.Module, store: Store) -> tuple[list[str] | None, bool]:
    """(the task names of a multi-task bundle, else None; whether a ``[B, 1]`` model's column is
    squeezed to a single-task ``[batch]`` output). A model with logits ``[B, T]`` on a store of T
    >= 2 labels gives a multi-task bundle (outputs ``[batch, T]``, the store's task names); a
    ``[B]`` model, or a ``[B, 1]`` one on a single-label store, a single-task bundle. Any other
    pairing is a ValueError."""
    columns = output_tasks(model, store.spec)
    tasks = store.tasks
    if columns == 0:
        return None, False
    if columns == 1 and not store.multi_task:
        return None, True
    if store.multi_task and columns == len(tasks):
        return list(tasks), False
    raise ValueError(f"the model gives {columns} output column(s) but its store {store.path} has "
                     f"{len(tasks)} task(s) {tasks}; train it with num_tasks={len(tasks)}")


def _run_store(cfg: Config, run: RunDir) -> Store:
    """The store the run trained on (data.store, absolute or relative to the run folder)."""
    if not cfg.data.store:
        raise FileNotFoundError(f"{run.config} names no data.store: the bundle needs the store's pipeline")
    store_dir = Path(cfg.data.store)
    candidates = [store_dir] if store_dir.is_absolute() else [store_dir, run.path / store_dir]
    for candidate in candidates:
        if (candidate / "meta.json").is_file():
            return Store(candidate)
    raise FileNotFoundError(f"the run's store {cfg.data.store} (data.store in {run.config}) is not there; "
                            "the bundle copies its pipeline.json and checks parity on its rows")


def golden_batch(store: Store, rows: int = GOLDEN_ROWS) -> tuple[str, np.ndarray, np.ndarray]:
    """Real encoded rows for the parity check: the first ``rows`` of valid (else test, else train)."""
    for name in ("valid", "test", "train"):
        if store.has_split(name):
            split = store.split(name)
            n = min(rows, len(split))
            return name, np.array(split.dense[:n], dtype=np.float32), np.array(split.sparse[:n], dtype=np.int64)
    raise ValueError(f"{store.path}: the store has no rows for a parity check")


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------

def export_bundle(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, epoch: int | None = None,
                  golden_rows: int = GOLDEN_ROWS, quantize: bool = False, force: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export one epoch of a training run as a bundle; returns the manifest.

    ``epoch``: default the run's best epoch. ``force``: replace an existing bundle at ``out_dir``.
    ``quantize``: also write an int8 dynamically quantized ONNX variant and record its AUC change
    on the store's validation split. Raises RuntimeError (and writes nothing) when the ONNX graph
    and the torch model differ by more than 1e-5 on the golden batch.
    """
    run = RunDir(run_dir)
    out = Path(out_dir)
    if not run.config.is_file():
        raise FileNotFoundError(f"{run.path}: not a training run (no {run.config.name})")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    cfg = load_config(run.config)
    store = _run_store(cfg, run)
    epoch = run.chosen_epoch() if epoch is None else int(epoch)
    checkpoint = run.checkpoint(epoch)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint; saved epochs: {run.saved_epochs() or 'none'}")
    spec = store.spec
    cfg.model.params = model_params(cfg.model.name, cfg.model.params, store)
    model = build_model(cfg.model.name, spec, cfg.model.params)
    model.load_state_dict(load_weights(checkpoint))
    model.eval()
    tasks, single_column = bundle_tasks(model, store)

    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_siblings(out, "tmp"):  # left by a killed export
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)

    def writing(name: str):
        return _writing(out, name)

    try:
        with writing(""):
            tmp.mkdir()
        with writing(PIPELINE), open(store.path / PIPELINE, "rb") as src, open(tmp / PIPELINE, "wb") as dst:
            shutil.copyfileobj(src, dst)
        with writing(CONFIG):
            cfg.features = fitted_features(store.pipeline, cfg.features)  # pipeline.json is the truth
            dump_config(cfg, tmp / CONFIG)
        with writing(TORCH_WEIGHTS):
            torch.save(model.state_dict(), tmp / TORCH_WEIGHTS)
        with writing(ONNX_MODEL):
            export_onnx(model, spec, tmp / ONNX_MODEL, single_column=single_column)

        # parity on real rows, with the model rebuilt from the files as a loader will see them
        split_name, dense, sparse = golden_batch(store, golden_rows)
        reloaded = build_model(cfg.model.name, spec, cfg.model.params)
        reloaded.load_state_dict(torch.load(tmp / TORCH_WEIGHTS, map_location="cpu", weights_only=True))
        reloaded.eval()
        diff = onnx_parity(reloaded, tmp / ONNX_MODEL, dense, sparse, single_column=single_column)
        if not diff <= PARITY_TOLERANCE:  # (NaN fails too)
            raise RuntimeError(f"export refused: model.onnx differs from the torch model by {diff:.3g} "
                               f"(> {PARITY_TOLERANCE:g}) on {len(dense)} rows of the store's {split_name} split; "
                               "no bundle was written")
        log(f"parity: onnxruntime vs torch max |diff| {diff:.2e} on {len(dense)} {split_name} rows")

        with writing(ONNX_INT8):
            quantized = quantize_bundle_model(tmp, store, log=log, tasks=tasks,
                                                  model_name=cfg.model.name) if quantize else None

        manifest = build_manifest(cfg, store, run, epoch, checkpoint, reloaded, tmp, tasks=tasks,
                                  task=getattr(cfg.train, "task", None) if tasks is None and store.multi_task else None,
                                  parity={"rows": int(len(dense)), "split": split_name, "max_abs_diff": diff,
                                          "tolerance": PARITY_TOLERANCE},
                                  quantized=quantized)
        with writing(MANIFEST):
            write_json_atomic(tmp / MANIFEST, manifest, indent=1)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


@contextlib.contextmanager
def _writing(out: Path, name: str) -> Iterator[None]:
    """Writing the bundle file ``name`` (into the temporary folder): a full disk is a DiskFullError
    naming ``out/name``. onnx's C++ writers do not check their writes (their truncated file fails
    to parse a step later), so any failure on an almost full disk counts as one."""
    path = out / name
    try:
        with disk_errors(path):
            yield
    except DiskFullError as exc:
        raise DiskFullError(path) from exc  # (a nested writer named its temporary file)
    except Exception as exc:
        if short_of_space(out.parent):
            raise DiskFullError(path, f"{type(exc).__name__}: {exc}") from exc
        raise


def input_rates(meta: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per field, from a store's meta.json: the training split's missing rate and the held-out
    (valid, else test, else train) OOV rate (None for numeric features), which predict and the
    server compare their inputs against."""
    rates: dict[str, dict[str, float | None]] = {}
    for name, f in meta.get("fields", {}).items():
        missing = f.get("missing_rate", {})
        oov = f.get("oov_rate", {})
        rates[name] = {"missing": missing.get("train", next(iter(missing.values()), None)),
                       "oov": next((oov[s] for s in ("valid", "test", "train") if s in oov), None)}
    return rates


def build_manifest(cfg: Config, store: Store, run: RunDir, epoch: int, checkpoint: Path, model: torch.nn.Module,
                   folder: Path, *, parity: dict[str, Any], quantized: dict[str, Any] | None,
                   tasks: list[str] | None = None, task: str | None = None) -> dict[str, Any]:
    """The manifest of the bundle files written to ``folder`` (see :mod:`ctrlab.export.manifest`).
    ``tasks``: a multi-task bundle's task names (the top-level ``tasks``; outputs ``[batch, T]``).
    ``task``: a single-task model trained on one task of a multi-task store (``train.task``): the
    top-level ``task``, the label its probability is for."""
    pipeline = FeaturePipeline.load(folder / PIPELINE)
    spec = store.spec
    if pipeline.spec != spec:  # the model's layout must be what this pipeline produces
        raise RuntimeError(f"{store.path}: pipeline.json's feature layout {pipeline.spec.to_dict()} differs from the "
                           f"store's spec {spec.to_dict()} in meta.json; re-run prepare")
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": library_versions(),
        "model": {"name": cfg.model.name, "params": to_dict(cfg.model.params),
                  "parameters": int(sum(p.numel() for p in model.parameters()))},
        **({"tasks": list(tasks)} if tasks else {}),
        **({"task": task} if task else {}),
        "schema": store.meta["schema"],
        "pipeline": {"dense_inputs": pipeline.dense_inputs, "sparse_inputs": pipeline.sparse_inputs,
                     **({"list_inputs": [c.to_dict() for c in pipeline.list_inputs]} if pipeline.list_inputs else {})},
        "inputs": {
            # (weighted list fields: their weights follow the numeric columns, 0 at padding)
            "dense": {"dtype": "float32", "shape": [BATCH_AXIS, spec.dense_width], "names": list(spec.dense_column_names)},
            # (list fields: their blocks of columns follow the single-valued ones, padded with id 0)
            "sparse": {"dtype": "int64", "shape": [BATCH_AXIS, spec.sparse_width], "names": list(spec.sparse_names),
                       "vocab_sizes": list(spec.vocab_sizes),
                       **({"lists": [f.to_dict() for f in spec.lists]} if spec.lists else {})},
        },
        "outputs": {  # (several tasks: [batch, T], column t = tasks[t])
            "logits": {"dtype": "float32", "shape": [BATCH_AXIS, *([len(tasks)] if tasks else [])]},
            "probabilities": {"dtype": "float32", "shape": [BATCH_AXIS, *([len(tasks)] if tasks else [])]},
        },
        "onnx": {"opset": DEFAULT_OPSET, "file": ONNX_MODEL},
        "spec": spec.to_dict(),
        "metrics": epoch_metrics(run, epoch),
        "input_rates": input_rates(store.meta),
        "source": {"run_dir": str(run.path.resolve()), "epoch": epoch, "checkpoint": str(checkpoint.resolve()),
                   "store": str(Path(store.path).resolve())},
        "parity": parity,
        "files": file_entries(folder),
    }
    if quantized:
        manifest["int8"] = quantized
    return manifest
