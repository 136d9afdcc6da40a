"""Score raw rows with a bundle: ``Predictor(bundle).predict(rows) -> Prediction`` (probabilities
float32[N] in ``.scores``, the seconds per stage in ``.timings``).

Several tasks (a multi-task bundle, issue 16): ``.scores`` is float32[N, T], column t the
probability of task t, named by ``Predictor.tasks[t]`` (the manifest's ``tasks``, e.g. ["click",
"conversion"]; ESMM / AITM: column 1 is P(click and conversion)). ``Predictor.multi_task`` says
which; a single-task bundle's ``tasks`` is its one label's name and its scores stay float32[N].

Rows go through the bundle's fitted :class:`~ctrlab.features.pipeline.FeaturePipeline` (the one
implementation of feature encoding, the same object that encoded the training data) and then
through the ONNX graph (onnxruntime) or the torch model::

    from ctrlab.inference import Predictor
    predictor = Predictor("bundles/deepfm", backend="onnx")
    predictor.predict([{"I1": 3, "I2": None, "C1": "05db9164", ...}]).scores  # list of dicts
    predictor.predict([[3, None, ..., "05db9164", ...]]).scores                # lists in predictor.columns order
    predictor.predict(arrow_table).scores                                      # canonical columns, as readers give

The server, the inference benchmark and offline scoring all score through :meth:`Predictor.predict`
(files through the same stages, chunk by chunk: :func:`ctrlab.inference.offline.score_files`), so
every path reports the same stage timings of the same code.

Raw values: finite numbers, numeric strings, "" or None (missing) for numeric columns (NaN, inf and
values that overflow, such as "1e400", are errors naming the row and field, as in files); strings, integer
ids, "" or None (missing) for categorical ones. A dict may leave a column out (missing) and may
carry ``label``/``id`` (ignored); any other key is an error naming the row and the key.

Files: :func:`ctrlab.inference.offline.score_files` streams any input format that ``prepare`` reads (labelled or not),
overlapping parsing, encoding and inference, and yields the scores chunk by chunk in input order;
``ctrlab predict`` writes them to a TSV file.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pyarrow as pa

from ..export.load import onnx_session, torch_model
from ..export.manifest import PIPELINE, graph_file, load_manifest, manifest_tasks, version_notes
from ..features.online import SMALL_INPUT_ROWS
from ..features.pipeline import FeaturePipeline, InputError
from ..fields import MISSING_ID, OOV_ID
from ..runtime import configure_torch_threads
from ..schema import ListColumn, Schema
from .rows import check_table, checked_columns, rows_to_table

BACKENDS = ("onnx", "torch")
VARIANTS = ("fp32", "int8")


# --------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------

class InputCounts:
    """Per input field, counted over the rows a predictor encoded: rows, missing values and
    out-of-vocabulary values (OOV for fields encoded to ids only). Thread-safe (a server shares
    one predictor). The rates use prepare's definitions: missing / rows, OOV / present values.

    Only the single-valued fields are counted: with list columns the sparse matrix holds each
    list's block of ids after the single-valued columns, and those blocks (padding, not missing
    values) are left out: the counts take the first ``len(pipeline.sparse_outputs)`` columns."""

    def __init__(self, pipeline: FeaturePipeline):
        self._sparse = list(pipeline.sparse_outputs)
        self._dense = list(pipeline.dense_outputs)
        self.fields = self._sparse + self._dense
        self._rows = 0
        self._missing = np.zeros(len(self.fields), dtype=np.int64)
        self._oov = np.zeros(len(self._sparse), dtype=np.int64)
        self._lock = threading.Lock()
        # small inputs, counted together later: (ids int32[n, n_sparse], the dense columns' values)
        self._pending: list[tuple[np.ndarray, list[Sequence[Any]]]] = []
        self._pending_rows = 0

    @property
    def rows(self) -> int:
        return self._counted()[0]

    @property
    def missing(self) -> np.ndarray:
        return self._counted()[1]

    @property
    def oov(self) -> np.ndarray:
        return self._counted()[2]

    def add(self, table: pa.Table, sparse: np.ndarray) -> None:
        """Count a checked table's rows, given their encoded ids sparse int32[N, n_sparse] (with list
        columns, int32[N, spec.sparse_width]: the list blocks after n_sparse are not counted)."""
        if sparse.shape[1] != len(self._sparse):
            sparse = sparse[:, :len(self._sparse)]
        missing = np.count_nonzero(sparse == MISSING_ID, axis=0).tolist()
        self._add(table.num_rows, missing + [table.column(c).null_count for c in self._dense],
                  np.count_nonzero(sparse == OOV_ID, axis=0))

    def add_columns(self, columns: dict[str, Sequence[Any]], sparse: np.ndarray) -> None:
        """:meth:`add` for a few rows given as checked columns (:func:`~.rows.checked_columns`):
        kept and counted together with others later (at PENDING_ROWS rows, or when read), a
        single row costing a list append rather than a dozen numpy calls."""
        with self._lock:
            self._pending.append((sparse, [columns[c] for c in self._dense]))
            self._pending_rows += len(sparse)
            full = self._pending_rows >= PENDING_ROWS
        if full:
            self._counted()

    def _counted(self) -> tuple[int, np.ndarray, np.ndarray]:
        """The counts with the pending small inputs added (rows, missing, oov)."""
        with self._lock:
            pending, self._pending, self._pending_rows = self._pending, [], 0
            if pending:
                ids = np.concatenate([sparse for sparse, _ in pending])
                dense_missing = [sum(values[k].count(None) for _, values in pending) for k in range(len(self._dense))]
                self._rows += len(ids)
                self._missing += np.array(np.count_nonzero(ids == MISSING_ID, axis=0).tolist() + dense_missing,
                                          dtype=np.int64)
                self._oov += np.count_nonzero(ids == OOV_ID, axis=0)
            return self._rows, self._missing.copy(), self._oov.copy()

    def _add(self, rows: int, missing: list[int], oov: Any) -> None:
        """missing: per field (sparse, then dense); oov: per sparse field."""
        missing_array, oov_array = np.array(missing, dtype=np.int64), np.asarray(oov, dtype=np.int64)
        with self._lock:
            self._rows += rows
            self._missing += missing_array
            self._oov += oov_array

    def snapshot(self) -> dict[str, dict[str, int | None]]:
        """{field: {"rows", "missing", "oov" (None for numeric features)}}."""
        rows, missing, oov_counts = self._counted()
        oov = list(oov_counts.tolist()) + [None] * len(self._dense)
        return {f: {"rows": rows, "missing": int(m), "oov": o} for f, m, o in zip(self.fields, missing.tolist(), oov)}


#: small inputs' counts are kept until this many rows are pending, then counted in one go
PENDING_ROWS = 1024

#: an input's rate is "far above" the training rate when it exceeds it by this much and twice over
DRIFT_MARGIN = 0.2
DRIFT_MIN_ROWS = 20


def input_drift(seen: dict[str, dict[str, int | None]], trained: dict[str, dict[str, float | None]]) -> list[str]:
    """The fields whose missing or OOV rate in ``seen`` (:meth:`InputCounts.snapshot`) is far above
    the bundle's training rates (``Predictor.input_rates``), as "C1 OOV 98% (trained 2%)"."""
    found = []
    for name, counts in seen.items():
        rows, missing = counts["rows"], counts["missing"]
        present = rows - missing  # type: ignore[operator]
        observed = {"missing": missing / rows if rows >= DRIFT_MIN_ROWS else None,  # type: ignore[operator]
                    "oov": counts["oov"] / present if counts["oov"] is not None and present >= DRIFT_MIN_ROWS
                    else None}
        for kind, rate in observed.items():
            base = trained.get(name, {}).get(kind)
            if rate is not None and base is not None and rate > base + DRIFT_MARGIN and rate > 2 * base:
                found.append(f"{name} {'OOV' if kind == 'oov' else kind} {rate:.0%} (trained {base:.0%})")
    return found


@dataclass(frozen=True)
class Timings:
    """Seconds spent per stage by one :meth:`Predictor.predict` call."""

    parse: float = 0.0  # rows -> checked Arrow table (or checked columns: a small request)
    transform: float = 0.0  # pipeline.transform (+ the input counts)
    inference: float = 0.0  # model / graph
    postprocess: float = 0.0  # the backend's output -> the float32[N] scores array


@dataclass(frozen=True)
class Prediction:
    """What :meth:`Predictor.predict` returns: a value, so that threads sharing one predictor (a
    server) each get their own call's timings."""

    scores: np.ndarray  # float32[N]: the probability of a click per row, in input order; [N, T]: per task
    timings: Timings


class Predictor:
    """Scores raw rows with a bundle.

    backend: ``onnx`` (onnxruntime, default) or ``torch``. threads: intra-op threads (default:
    the available cores; for torch this sets torch's process-wide thread count). providers:
    onnxruntime execution providers (default CPU). graph_optimization: onnxruntime graph
    optimizations on (default) or off. spinning: onnxruntime's idle threads busy-wait (see
    :func:`~ctrlab.export.load.onnx_session`; off by default). variant: ``fp32`` or ``int8`` (the quantized
    graph, when the bundle has one; onnx only). device: torch device (``cpu``, ``cuda``). verify: check the
    files' sha256 against the manifest (default on).
    """

    def __init__(self, bundle_dir: str | os.PathLike, backend: str = "onnx", threads: int | None = None, *,
                 providers: list[str] | None = None, graph_optimization: bool = True, variant: str = "fp32",
                 device: str = "cpu", spinning: bool = False, verify: bool = True):
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if variant not in VARIANTS:
            raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
        self.bundle_dir = Path(bundle_dir)
        self.manifest = load_manifest(self.bundle_dir, verify=verify)
        self.version_notes = version_notes(self.manifest)
        self.pipeline = FeaturePipeline.load(self.bundle_dir / PIPELINE)
        # per field: the training data's missing rate and the held-out OOV rate (absent in
        # bundles exported before ctrlab wrote them), and what this predictor has seen since
        self.input_rates: dict[str, dict[str, float | None]] = self.manifest.get("input_rates") or {}
        self.input_counts = InputCounts(self.pipeline)
        self.schema = Schema.from_dict(self.manifest["schema"])
        self._tasks = manifest_tasks(self.manifest)
        self.backend = backend
        self.variant = variant
        self._session = None
        self._model = None
        if backend == "onnx":
            graph = graph_file(self.bundle_dir, self.manifest, variant)  # only a listed (checked) graph
            self._session = onnx_session(graph, threads=threads, providers=providers,
                                         graph_optimization=graph_optimization, spinning=spinning)
            self._feeds = {i.name for i in self._session.get_inputs()}
        else:
            if variant != "fp32":
                raise ValueError("the int8 variant is an ONNX graph: use backend='onnx'")
            import torch  # only for the torch backend: an onnx server never pays torch's import

            if threads is not None:
                configure_torch_threads(threads)
            self._torch = torch
            self._device = torch.device(device)
            self._model = torch_model(self.bundle_dir, self.manifest).to(self._device)

    # layout ----------------------------------------------------------------------------------
    @property
    def multi_task(self) -> bool:
        """Whether the bundle gives one probability per task (scores float32[N, T])."""
        return self._tasks is not None

    @property
    def tasks(self) -> list[str]:
        """The names of the score columns: a multi-task bundle's tasks in column order; for a
        single-task bundle, its one label's name: the manifest's ``task`` (a model trained on one
        task of a multi-task store), else its schema's label (``label`` when it has none)."""
        if self._tasks is not None:
            return list(self._tasks)
        task = self.manifest.get("task")  # (a single-task model trained on one task of several: train.task)
        return [task if isinstance(task, str) and task else self.schema.label or "label"]

    @property
    def dense_columns(self) -> list[str]:
        return list(self.pipeline.dense_inputs)

    @property
    def sparse_columns(self) -> list[str]:
        return list(self.pipeline.sparse_inputs)

    @property
    def columns(self) -> list[str]:
        """The raw input columns, in the order a row given as a list must follow (dense, sparse,
        then the list columns)."""
        return self.pipeline.input_columns

    # scoring ---------------------------------------------------------------------------------
    def empty_scores(self, rows: int = 0) -> np.ndarray:
        """An uninitialised scores array of ``rows`` rows: float32[rows], or [rows, T] (multi-task)."""
        return np.empty((rows, len(self._tasks)) if self._tasks is not None else rows, dtype=np.float32)

    @property
    def list_columns(self) -> list[ListColumn]:
        """The list-valued input columns (issue 15), last in :attr:`columns`."""
        return list(self.pipeline.list_inputs)

    def to_table(self, rows: Any) -> pa.Table:
        """Rows in any accepted form -> a checked Arrow table of raw columns (list columns as
        list<string>: :func:`~.rows.rows_to_table`)."""
        lists = self.pipeline.list_inputs
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        if isinstance(rows, pa.Table):
            return check_table(rows, self.dense_columns, self.sparse_columns, lists)
        if isinstance(rows, dict):
            raise InputError("rows must be a list of dicts (one per row), not a single dict; wrap it: [row]")
        if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
            raise InputError(f"rows must be an Arrow table, a list of dicts or a list of lists, "
                             f"got {type(rows).__name__}")
        return rows_to_table(rows, self.dense_columns, self.sparse_columns, lists)

    def transform(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """A checked table -> (dense float32[N, n_dense], sparse int32[N, n_sparse]) via the bundle's
        pipeline, counted in ``input_counts``; a value whose feature is not finite raises InputError."""
        dense, sparse = self.pipeline.transform(table)
        self.input_counts.add(table, sparse)
        return dense, sparse

    def encode(self, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows -> (dense float32[N, n_dense], sparse int32[N, n_sparse]) via the bundle's pipeline."""
        dense, sparse, _ = self._encode_timed(rows)
        return dense, sparse

    def _encode_timed(self, rows: Any) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """:meth:`encode` and the seconds of its two stages (parse, transform). A list of at most
        SMALL_INPUT_ROWS rows takes the small-request lane: checked Python columns straight into
        the online encoder, with no Arrow table (the same checks and bytes; tested), list columns
        included."""
        t0 = time.perf_counter()
        small = isinstance(rows, (list, tuple)) and 0 < len(rows) <= SMALL_INPUT_ROWS
        if small:
            columns = checked_columns(rows, self.pipeline.dense_inputs, self.pipeline.sparse_inputs,
                                      self.pipeline.list_inputs)
            t1 = time.perf_counter()
            dense, sparse = self.pipeline.transform_columns(columns, len(rows))
            self.input_counts.add_columns(columns, sparse[:, : len(self.pipeline.sparse_outputs)])
        else:
            table = self.to_table(rows)
            t1 = time.perf_counter()
            dense, sparse = self.transform(table)
        return dense, sparse, (t1 - t0, time.perf_counter() - t1)

    def predict_encoded(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """Probabilities float32[N] (multi-task: [N, T]) for encoded features."""
        if self._session is not None:
            feed = {}
            if "dense" in self._feeds:
                feed["dense"] = np.ascontiguousarray(dense, dtype=np.float32)
            if "sparse" in self._feeds:
                feed["sparse"] = np.ascontiguousarray(sparse, dtype=np.int64)
            return self._session.run(["probabilities"], feed)[0]
        torch = self._torch
        with torch.inference_mode():
            dense_t = torch.from_numpy(np.ascontiguousarray(dense, dtype=np.float32)).to(self._device)
            sparse_t = torch.from_numpy(np.ascontiguousarray(sparse, dtype=np.int64)).to(self._device)
            probs = torch.sigmoid(self._model(dense_t, sparse_t)).float().cpu().numpy()
        # (a [B, 1] model in a single-task bundle: its graph squeezes the column, and so does this)
        return probs if self._tasks is not None or probs.ndim == 1 else probs.reshape(len(probs))

    def predict(self, rows: Any) -> Prediction:
        """Probabilities float32[N] (multi-task: [N, T]) for raw rows (Arrow table, list of dicts, or
        list of lists) and the seconds each stage took. Bad input raises :class:`InputError` naming
        the row and field."""
        dense, sparse, (parse, transform) = self._encode_timed(rows)
        t2 = time.perf_counter()
        output = self.predict_encoded(dense, sparse) if len(dense) else self.empty_scores()
        t3 = time.perf_counter()
        scores = np.ascontiguousarray(output, dtype=np.float32)  # (no copy for the backends' float32 output)
        t4 = time.perf_counter()
        return Prediction(scores, Timings(parse, transform, t3 - t2, t4 - t3))
