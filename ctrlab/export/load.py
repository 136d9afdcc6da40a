"""Runtime objects from a checked bundle: an onnxruntime session for a graph, or the torch model.

A predictor uses one of the two, so each imports its own heavy library when it is asked for:
an onnx-backend predictor (and so an onnx server) never imports torch, a torch one never needs
onnxruntime. Callers pass paths and manifests checked by :func:`ctrlab.export.manifest.load_manifest`.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

from ..fields import FeatureSpec
from ..runtime import available_cores
from .manifest import MANIFEST, TORCH_WEIGHTS, BundleError


def onnx_session(path: str | os.PathLike, *, threads: int | None = None, providers: list[str] | None = None,
                 graph_optimization: bool = True, spinning: bool = False):
    """An onnxruntime session for a bundle graph. ``threads``: intra-op threads (default: the
    available cores); ``providers``: e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"].

    ``spinning``: let idle intra-op threads busy-wait for the next call (onnxruntime's default).
    Off by default: when parsing and encoding run beside inference (file scoring, a server),
    spinning threads take their cores (measured: 84k vs 103k rows/s scoring a file on 2 cores).
    """
    import onnxruntime  # heavy; a torch-backend predictor never needs it

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or available_cores())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL if graph_optimization
                                        else onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL)
    available = onnxruntime.get_available_providers()
    chosen = list(providers or ["CPUExecutionProvider"])
    unknown = [p for p in chosen if p not in available]
    if unknown:
        raise ValueError(f"onnxruntime execution provider(s) {unknown} are not available here; available: {available}")
    return onnxruntime.InferenceSession(str(path), options, providers=chosen)


def torch_model(folder: str | os.PathLike, manifest: dict[str, Any]):
    """The bundle's torch model (eval mode), weights loaded with weights_only=True. A multi-task
    bundle's model gives logits ``[B, T]`` (T = len(manifest["tasks"]), column t = task t), as its
    graph does; a single-task bundle's ``[B]`` (or ``[B, 1]`` for a multi-task architecture with
    one task, whose graph squeezes that column: :class:`~ctrlab.inference.Predictor` does too)."""
    # torch, and ctrlab.models (torch modules): only the torch backend pays their import
    import torch

    from ..models import build_model

    spec = FeatureSpec.from_dict(manifest["spec"])
    weights = Path(folder) / TORCH_WEIGHTS
    try:
        params = dict(manifest["model"]["params"])
        if manifest.get("tasks") and "num_tasks" not in params:  # (a multi-task model: one output per task)
            params["num_tasks"] = len(manifest["tasks"])
        model = build_model(manifest["model"]["name"], spec, params)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (ValueError, TypeError, KeyError, RuntimeError, pickle.UnpicklingError) as exc:
        raise BundleError(f"{weights}: does not load as the model {manifest['model']['name']!r} that "
                          f"{MANIFEST} describes: {exc}") from exc
    model.eval()
    return model
