"""The optional int8 variant of a bundle's graph (``ctrlab export --quantize``).

Dynamic quantization: the weights of MatMul/Gemm nodes are stored as int8 and activations are
quantized on the fly, so no calibration data is needed. What that costs in quality is measured
at export (AUC and logloss of both graphs on the store's valid split, else test) and recorded in
the manifest's ``int8`` section, which predictors and the server read to offer the variant.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable

import numpy as np
from onnxruntime.quantization import QuantType, quantize_dynamic

from ..data.store import Store
from ..metrics import evaluate_scores, finite_mean, labelled_rows
from .load import onnx_session
from .manifest import ONNX_INT8, ONNX_MODEL, task_labels
from .onnx_export import onnx_runtime_inputs

QUANTIZED_OPS = ["MatMul", "Gemm"]
_SCORE_BATCH = 16384  # rows per onnxruntime call while measuring


def quantize_bundle_model(folder: Path, store: Store, *, log: Callable[[str], None] = print,
                          max_rows: int = 200_000, tasks: list[str] | None = None,
                          model_name: str = "") -> dict[str, Any]:
    """Write ``folder``/model.int8.onnx from ``folder``/model.onnx and measure both graphs' AUC on
    the first ``max_rows`` rows of the store's valid split (else test); returns the manifest's
    ``int8`` section (without the measurement when the store has neither split).

    A multi-task graph (``tasks``: outputs ``[batch, T]``): each task is measured over its labelled
    rows (ESMM / AITM: task 1 as click AND conversion, :func:`~.manifest.task_labels`); the section
    holds ``tasks: {name: {auc_fp32, auc_int8, auc_change, logloss_fp32, logloss_int8, rows}}`` and
    its top-level ``auc_*``/``logloss_*`` are the means over the tasks (as training's ``auc``)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice through the root logger
    try:
        quantize_dynamic(str(folder / ONNX_MODEL), str(folder / ONNX_INT8), weight_type=QuantType.QInt8,
                         op_types_to_quantize=QUANTIZED_OPS)
    finally:
        root.setLevel(level)
    split_name = next((s for s in ("valid", "test") if store.has_split(s)), None)
    result: dict[str, Any] = {"file": ONNX_INT8, "weight_type": "int8", "method": "onnxruntime quantize_dynamic",
                              "ops": list(QUANTIZED_OPS)}
    if split_name is None:
        log("int8: no valid/test split to measure the AUC change on")
        return result
    split = store.split(split_name)
    n = min(len(split), max_rows)
    labels = np.asarray(split.label[:n])
    if tasks:
        return _measure_tasks(folder, split, n, task_labels(model_name, labels), tasks, split_name, result, log)
    scores = {}
    for name in (ONNX_MODEL, ONNX_INT8):
        probs = _probabilities(folder / name, split, n, ())
        scores[name] = evaluate_scores(labels, probs)
    fp32, int8 = scores[ONNX_MODEL], scores[ONNX_INT8]
    result.update({"split": split_name, "rows": int(n), "auc_fp32": fp32["auc"], "auc_int8": int8["auc"],
                   "auc_change": int8["auc"] - fp32["auc"], "logloss_fp32": fp32["logloss"],
                   "logloss_int8": int8["logloss"]})
    log(f"int8: {split_name} AUC {int8['auc']:.5f} vs fp32 {fp32['auc']:.5f} (change {result['auc_change']:+.5f})")
    return result


def _probabilities(graph: Path, split: Any, n: int, columns: tuple[int, ...]) -> np.ndarray:
    """The graph's probabilities for the split's first ``n`` rows: float32[n], or [n, T]."""
    session = onnx_session(graph, threads=None)
    probs = np.empty((n, *columns), dtype=np.float32)
    for lo in range(0, n, _SCORE_BATCH):
        dense = np.asarray(split.dense[lo: lo + _SCORE_BATCH], dtype=np.float32)
        sparse = np.asarray(split.sparse[lo: lo + _SCORE_BATCH]).astype(np.int64)
        probs[lo: lo + len(dense)] = session.run(["probabilities"], onnx_runtime_inputs(session, dense, sparse))[0]
    return probs


def _measure_tasks(folder: Path, split: Any, n: int, labels: np.ndarray, tasks: list[str], split_name: str,
                   result: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """The int8 section of a multi-task graph: per task over its labelled rows, and the means."""
    probs = {name: _probabilities(folder / name, split, n, (len(tasks),)) for name in (ONNX_MODEL, ONNX_INT8)}
    per_task: dict[str, dict[str, Any]] = {}
    for t, task in enumerate(tasks):
        keep = labelled_rows(labels[:, t])
        fp32 = evaluate_scores(labels[keep, t], probs[ONNX_MODEL][keep, t])
        int8 = evaluate_scores(labels[keep, t], probs[ONNX_INT8][keep, t])
        per_task[task] = {"auc_fp32": fp32["auc"], "auc_int8": int8["auc"], "auc_change": int8["auc"] - fp32["auc"],
                          "logloss_fp32": fp32["logloss"], "logloss_int8": int8["logloss"], "rows": int(keep.sum())}
    mean = {key: finite_mean([per_task[t][key] for t in tasks])
            for key in ("auc_fp32", "auc_int8", "auc_change", "logloss_fp32", "logloss_int8")}
    result.update({"split": split_name, "rows": int(n), **mean, "tasks": per_task})
    for task in tasks:
        r = per_task[task]
        log(f"int8: {split_name} {task} AUC {r['auc_int8']:.5f} vs fp32 {r['auc_fp32']:.5f} "
            f"(change {r['auc_change']:+.5f})")
    return result
