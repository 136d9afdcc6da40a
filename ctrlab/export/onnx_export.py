"""ONNX export of ctrlab models and an onnxruntime parity check.

The exported graph has inputs ``dense: float32[batch, dense_width]`` and
``sparse: int64[batch, n_sparse]`` and outputs ``logits: float32[batch]`` and
``probabilities = sigmoid(logits)``, with a dynamic ``batch`` axis. A multi-task model (logits
``[B, T]``, issue 16) gives ``logits``/``probabilities: float32[batch, T]``: column t is task t,
the task axis a fixed dimension T (only the batch axis is dynamic).

Exporter: torch 2.13 defaults to the torch.export-based ("dynamo") exporter, which needs
the extra ``onnxscript`` package. We use the TorchScript exporter (``dynamo=False``),
which ships with torch, handles every model in the zoo and keeps the graph's input
names exactly as given. It emits a DeprecationWarning in torch 2.13, silenced here.

No dense columns (``n_dense == 0``): the ``dense`` input is still declared, with shape
``[batch, 0]``, so every bundle has the same two-input signature. The model ignores it and
the TorchScript exporter prunes an input that no node reads, so :func:`export_onnx` adds
``dense`` back as a declared (unused) graph input; onnxruntime accepts a ``[B, 0]`` array
for it.
:func:`onnx_runtime_inputs` only feeds the inputs a graph declares, so callers never need
to special-case it either way.

Size: a graph over 2 GB (protobuf's limit; e.g. FFM, whose table is n_fields times wider)
is written by the exporter with its large weights as external data files next to the
``.onnx`` file (checked: a 2.7 GB FFM exports and matches eager); keep that directory
together. Smaller graphs keep their initializers of 1 MiB or more (the embedding tables) in one
page-aligned external data file, ``model.onnx.data``, which onnxruntime memory-maps: server
workers share those pages instead of holding a copy each (:func:`externalize_large_initializers`).
"""

from __future__ import annotations

import mmap
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime
import torch
from onnx import TensorProto, helper
from torch import nn

from ..fields import FeatureSpec

INPUT_NAMES = ("dense", "sparse")
OUTPUT_NAMES = ("logits", "probabilities")
BATCH_AXIS = "batch"
DEFAULT_OPSET = 17


class _LogitsAndProbabilities(nn.Module):
    """Wraps a model so the graph returns both logits and sigmoid(logits).

    ``single_column``: the model gives ``[B, 1]`` (a multi-task architecture with one task) and the
    bundle is single-task: the column is squeezed so the outputs are ``[B]`` like every single-task
    bundle's."""

    def __init__(self, model: nn.Module, single_column: bool = False) -> None:
        super().__init__()
        self.model = model
        self.single_column = single_column

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(dense, sparse)
        if self.single_column:
            logits = logits.reshape(-1)
        return logits, torch.sigmoid(logits)


def output_tasks(model: nn.Module, spec: FeatureSpec) -> int:
    """How many output columns the model gives: 0 for a single-task model (logits ``[B]``), T for
    a model whose logits are ``[B, T]`` (multi-task; T may be 1). Found by running it on 2 zero rows
    (eval mode; the mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(*example_inputs(spec, batch_size=2))
    finally:
        model.train(was_training)
    if logits.dim() == 1:
        return 0
    if logits.dim() == 2:
        return int(logits.shape[1])
    raise ValueError(f"the model's logits have shape {tuple(logits.shape)}; expected [batch] or [batch, tasks]")


def example_inputs(spec: FeatureSpec, batch_size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Valid all-zero inputs for ``spec`` (id 0 = missing is valid in every field)."""
    return (
        torch.zeros(batch_size, spec.dense_width, dtype=torch.float32),
        torch.zeros(batch_size, spec.sparse_width, dtype=torch.int64),
    )


def export_onnx(
    model: nn.Module,
    spec: FeatureSpec,
    path: str | os.PathLike[str],
    opset: int = DEFAULT_OPSET,
    *,
    single_column: bool = False,
) -> Path:
    """Export ``model`` (in eval mode) to ``path``; returns the path.

    Outputs: ``float32[batch]`` for a single-task model; ``float32[batch, T]`` (only the batch axis
    dynamic, the task axis fixed to T) for a model whose logits are ``[B, T]``, unless
    ``single_column`` (a ``[B, 1]`` model exported as a single-task ``[batch]`` graph).
    The model's train/eval mode is restored afterwards. The graph is checked with
    ``onnx.checker``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = 0 if single_column else output_tasks(model, spec)
    was_training = model.training
    model.eval()
    # Batch 2, not 1: a size-1 example invites the tracer to treat the batch as broadcastable.
    dense, sparse = example_inputs(spec, batch_size=2)
    dynamic_axes = {name: {0: BATCH_AXIS} for name in INPUT_NAMES + OUTPUT_NAMES}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.filterwarnings("ignore", category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                _LogitsAndProbabilities(model, single_column),
                (dense, sparse),
                str(path),
                dynamo=False,
                input_names=list(INPUT_NAMES),
                output_names=list(OUTPUT_NAMES),
                dynamic_axes=dynamic_axes,
                opset_version=opset,
                do_constant_folding=True,
            )
    finally:
        model.train(was_training)
    # Weights stay where the exporter put them: over 2 GB (protobuf's limit) they are
    # external data files next to the graph, which a graph-only load/save keeps valid.
    graph = onnx.load(str(path), load_external_data=False)
    changed = False
    if "dense" not in {value.name for value in graph.graph.input}:
        _declare_unused_dense_input(graph, spec)
        changed = True
    if tasks:
        _fix_task_axis(graph, tasks)
        changed = True
    if changed:
        onnx.save(graph, str(path))
    if not any(t.data_location == TensorProto.EXTERNAL for t in graph.graph.initializer):
        externalize_large_initializers(path)
    onnx.checker.check_model(str(path))  # by path: works for models over 2 GB too
    return path


#: initializers of at least this many bytes (embedding tables) go to the external data file
EXTERNAL_MIN_BYTES = 1 << 20


def external_data_name(path: str | os.PathLike[str]) -> str:
    """The external data file of a graph written by :func:`externalize_large_initializers`."""
    return Path(path).name + ".data"


def externalize_large_initializers(path: str | os.PathLike[str], min_bytes: int | None = None) -> bool:
    """Move the graph's initializers of at least ``min_bytes`` into one external data file next to
    it (:func:`external_data_name`), each at an offset aligned to the page size. onnxruntime then
    memory-maps them rather than copying them into its own memory: the embedding tables are
    file-backed pages, shared by every server worker (and every process) that loads the bundle,
    instead of one copy per worker. Returns whether any initializer moved."""
    path = Path(path)
    min_bytes = EXTERNAL_MIN_BYTES if min_bytes is None else min_bytes
    model = onnx.load(str(path))
    large = [t for t in model.graph.initializer if t.HasField("raw_data") and len(t.raw_data) >= min_bytes]
    if not large:
        return False
    name = external_data_name(path)
    page = mmap.ALLOCATIONGRANULARITY
    offset = 0
    with open(path.parent / name, "wb") as fh:
        for tensor in large:
            padding = -offset % page
            fh.write(b"\0" * padding)
            offset += padding
            raw = tensor.raw_data
            fh.write(raw)
            tensor.ClearField("raw_data")
            tensor.data_location = TensorProto.EXTERNAL
            del tensor.external_data[:]
            for key, value in (("location", name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
            offset += len(raw)
    onnx.save(model, str(path))
    return True


def _fix_task_axis(graph, tasks: int) -> None:
    """Declare the outputs ``float32[batch, tasks]``: the exporter names the task axis as a
    symbolic dimension (only the batch axis was declared dynamic); it is the model's fixed T."""
    for output in graph.graph.output:
        if output.name in OUTPUT_NAMES:
            dims = output.type.tensor_type.shape.dim
            if len(dims) != 2:
                raise ValueError(f"onnx output {output.name!r} has {len(dims)} axes; "
                                 "a multi-task model's are [batch, T]")
            dims[1].Clear()
            dims[1].dim_value = tasks


def _declare_unused_dense_input(graph, spec: FeatureSpec) -> None:
    """Put back a pruned ``dense`` input as ``float32[batch, dense_width]`` so the signature is stable."""
    dense_input = helper.make_tensor_value_info("dense", TensorProto.FLOAT, [BATCH_AXIS, spec.dense_width])
    graph.graph.input.insert(0, dense_input)


def onnx_runtime_inputs(session, dense: np.ndarray, sparse: np.ndarray) -> dict[str, np.ndarray]:
    """The feed dict for an onnxruntime session: only the inputs its graph declares."""
    available = {
        "dense": np.ascontiguousarray(dense, dtype=np.float32),
        "sparse": np.ascontiguousarray(sparse, dtype=np.int64),
    }
    return {item.name: available[item.name] for item in session.get_inputs()}


def onnx_parity(
    model: nn.Module,
    path: str | os.PathLike[str],
    dense: torch.Tensor | np.ndarray,
    sparse: torch.Tensor | np.ndarray,
    *,
    single_column: bool = False,
) -> float:
    """Max absolute difference between eager (eval mode) and onnxruntime outputs.

    Compares both ``logits`` and ``probabilities`` (every task column of a multi-task model, same
    shapes required) and returns the larger difference. ``single_column``: as for
    :func:`export_onnx`. The model's train/eval mode is restored afterwards.
    """
    dense_t = torch.as_tensor(dense, dtype=torch.float32)
    sparse_t = torch.as_tensor(sparse, dtype=torch.int64)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = model(dense_t, sparse_t)
    finally:
        model.train(was_training)
    if single_column:
        logits = logits.reshape(-1)
    expected = {"logits": logits.numpy(), "probabilities": torch.sigmoid(logits).numpy()}
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(list(OUTPUT_NAMES), onnx_runtime_inputs(session, dense_t.numpy(), sparse_t.numpy()))
    diffs = []
    for name, got in zip(OUTPUT_NAMES, outputs):
        if got.shape != expected[name].shape:
            raise ValueError(f"onnx output '{name}' has shape {got.shape}, eager has {expected[name].shape}")
        diffs.append(float(np.max(np.abs(got.astype(np.float64) - expected[name].astype(np.float64)), initial=0.0)))
    return max(diffs)
