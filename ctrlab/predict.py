"""Score raw rows with a bundle: ``Predictor(bundle).predict(rows) -> float32[N]`` probabilities.

Rows go through the bundle's fitted :class:`~ctrlab.features.pipeline.FeaturePipeline` (the one
implementation of feature encoding, the same object that encoded the training data) and then
through the ONNX graph (onnxruntime) or the torch model::

    from ctrlab.predict import Predictor
    predictor = Predictor("bundles/deepfm", backend="onnx")
    predictor.predict([{"I1": 3, "I2": None, "C1": "05db9164", ...}])       # list of dicts
    predictor.predict([[3, None, ..., "05db9164", ...]])                      # lists in predictor.columns order
    predictor.predict(arrow_table)                                             # canonical columns, as readers give

Raw values: finite numbers, numeric strings, "" or None (missing) for numeric columns (NaN, inf and
values that overflow, such as "1e400", are errors naming the row and field, as in files); strings, integer
ids, "" or None (missing) for categorical ones. A dict may leave a column out (missing) and may
carry ``label``/``id`` (ignored); any other key is an error naming the row and the key.

Files: :func:`score_files` streams any input format that ``prepare`` reads (labelled or not),
overlapping parsing, encoding and inference, and yields the scores chunk by chunk in input order;
``ctrlab predict`` writes them to a TSV file.
"""

from __future__ import annotations

import math
import operator
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .data.readers import (ID, DataError, RowReader, SkipReport, describe, first_line, number_error, parse_number,
                           prefetch, resolve_inputs)
from .export.bundle import PIPELINE, graph_file, load_manifest, onnx_session, torch_model, version_notes
from .features.pipeline import FeaturePipeline, InputError
from .fields import MISSING_ID, OOV_ID
from .fileio import atomic_write
from .schema import LABEL, PRESETS, GenericSchemaConfig, Schema, generic_schema

BACKENDS = ("onnx", "torch")
VARIANTS = ("fp32", "int8")
IGNORED_KEYS = (LABEL, ID)  # canonical non-feature columns a row dict may carry
# rows per inference call when scoring files: cache-sized activations (measured faster than 16k or 64k)
DEFAULT_BATCH_ROWS = 4096


# --------------------------------------------------------------------------------------------
# raw rows (lists / dicts) -> Arrow table of canonical columns
# --------------------------------------------------------------------------------------------

def _bad_value(row: int, col: str, reason: str) -> InputError:
    return InputError(f"row {row}, field {col!r}: {reason}", row=row, field=col, reason=reason)


def _dense_value(value: Any, row: int, col: str) -> float | None:
    kind = type(value)
    if kind is float or kind is int:
        number = float(value) if kind is float or abs(value) < 2**1023 else math.inf
        if not math.isfinite(number):
            raise _bad_value(row, col, f"expected a finite number, got {value!r:.40}")
        return number
    if value is None or value == "":
        return None
    if kind is str:
        number = parse_number(value)  # the readers' rule for numbers in text
        if number is None:
            raise _bad_value(row, col, number_error(value))
        return number
    if isinstance(value, (np.integer, np.floating)) and not isinstance(value, bool):
        return _dense_value(value.item(), row, col)
    raise _bad_value(row, col, f"expected a number, a numeric string or None, got {type(value).__name__} {value!r:.40}")


def _sparse_value(value: Any, row: int, col: str) -> str | None:
    kind = type(value)
    if kind is str:
        return value or None  # "" is missing, as in the readers
    if value is None:
        return None
    if kind is int or isinstance(value, np.integer):  # an integer id: its decimal text, as read from a file
        return str(int(value))
    raise _bad_value(row, col, f"expected a string (or an integer id, or None), got {type(value).__name__} {value!r:.40}")


def rows_to_table(rows: Sequence[Any], dense_columns: Sequence[str], sparse_columns: Sequence[str]) -> pa.Table:
    """A list of dicts (keyed by column name) or of lists (values in ``dense + sparse`` order) ->
    an Arrow table with the canonical types (float64 dense, string sparse; null = missing)."""
    columns = list(dense_columns) + list(sparse_columns)
    n_dense = len(dense_columns)
    n = len(rows)
    if n == 0:
        return pa.table({c: pa.array([], type=pa.float64() if i < n_dense else pa.string())
                         for i, c in enumerate(columns)})
    first = rows[0]
    if isinstance(first, dict):
        known = set(columns).union(IGNORED_KEYS)
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                raise InputError(f"row {i}: expected a dict like row 0, got {type(row).__name__}")
            if not known.issuperset(row):
                unknown = sorted(str(k) for k in row if k not in known)
                raise InputError(f"row {i}: unknown column(s) {unknown}; the bundle's columns are "
                                 f"{_column_list(columns)} (plus optional {', '.join(IGNORED_KEYS)})")
        try:  # every row has every column (the usual case): the values are gathered in C
            by_column = list(zip(*map(operator.itemgetter(*columns), rows))) if len(columns) > 1 else None
        except KeyError:  # some row leaves a column out: missing
            by_column = None
        if by_column is not None:
            dense_flat = [v for col in by_column[:n_dense] for v in col]
            sparse_flat = [v for col in by_column[n_dense:] for v in col]
        else:
            dense_flat = [row.get(c) for c in dense_columns for row in rows]
            sparse_flat = [row.get(c) for c in sparse_columns for row in rows]
    elif isinstance(first, (list, tuple)):
        for i, row in enumerate(rows):
            if not isinstance(row, (list, tuple)):
                raise InputError(f"row {i}: expected a list like row 0, got {type(row).__name__}")
            if len(row) != len(columns):
                raise InputError(f"row {i}: expected {len(columns)} values (in the order {_column_list(columns)}), "
                                 f"got {len(row)}")
        by_column = list(zip(*rows))
        dense_flat = [v for col in by_column[:n_dense] for v in col]
        sparse_flat = [v for col in by_column[n_dense:] for v in col]
    else:
        raise InputError(f"rows must be an Arrow table, a list of dicts or a list of lists; row 0 is a "
                         f"{type(first).__name__}")
    # one Arrow array for all dense values and one for all sparse values (column-major), sliced
    # into columns: two conversions instead of one per column (a single row costs microseconds)
    dense_all = _checked_array(dense_flat, n, list(dense_columns), numeric=True)
    sparse_all = _checked_array(sparse_flat, n, list(sparse_columns), numeric=False)
    arrays = [dense_all.slice(j * n, n) for j in range(n_dense)]
    arrays += [sparse_all.slice(j * n, n) for j in range(len(sparse_columns))]
    return pa.Table.from_arrays(arrays, names=columns)


_NONE = type(None)
_PLAIN_NUMBERS = {float, int, _NONE}
_PLAIN_STRINGS = {str, _NONE}


def _checked_array(flat: list[Any], n: int, names: list[str], numeric: bool) -> pa.Array:
    """Column-major values of ``names`` (n rows each) -> one float64 or string Arrow array.

    Plain values (floats/ints/None; strings/None) convert in one Arrow call; anything else (numeric
    strings, "", numpy scalars, wrong types) goes value by value, and a bad value raises an error
    naming its row and field."""
    kinds = set(map(type, flat))
    if numeric and kinds <= _PLAIN_NUMBERS:
        try:
            array = pa.array(flat, type=pa.float64())
        except (pa.ArrowInvalid, OverflowError):  # an int beyond int64: the careful path says which
            array = None
        if array is not None and (float not in kinds or pc.all(pc.is_finite(array)).as_py() is not False):
            return array
    elif not numeric and kinds <= _PLAIN_STRINGS and "" not in flat:
        return pa.array(flat, type=pa.string())
    convert = _dense_value if numeric else _sparse_value
    values = [convert(v, k % n, names[k // n]) for k, v in enumerate(flat)]
    return pa.array(values, type=pa.float64() if numeric else pa.string())


def _column_list(columns: Sequence[str]) -> str:
    return ", ".join(columns) if len(columns) <= 12 else f"{', '.join(columns[:6])}, ..., {', '.join(columns[-3:])}"


def check_table(table: pa.Table, dense_columns: Sequence[str], sparse_columns: Sequence[str]) -> pa.Table:
    """An Arrow table of raw rows, checked: every input column present, numeric columns numeric,
    categorical columns strings (integer ids are cast to their text)."""
    present = set(table.column_names)
    missing = [c for c in list(dense_columns) + list(sparse_columns) if c not in present]
    if missing:
        need = _column_list(list(dense_columns) + list(sparse_columns))
        raise InputError(f"the table lacks column(s) {missing}; the bundle needs {need}")
    for col in dense_columns:
        kind = table.schema.field(col).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
            raise InputError(f"column {col!r}: expected numbers (float64), got Arrow type {kind}")
        if pa.types.is_floating(kind):  # NaN and inf are bad values (null is missing), as in files
            finite = pc.is_finite(table.column(col)).fill_null(True)
            if pc.all(finite).as_py() is False:
                row = int(np.flatnonzero(~finite.to_numpy(zero_copy_only=False))[0])
                raise _bad_value(row, col, f"expected a finite number, got {table.column(col)[row].as_py()!r}")
    for col in sparse_columns:
        kind = table.schema.field(col).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
                or pa.types.is_null(kind)):
            raise InputError(f"column {col!r}: expected strings, got Arrow type {kind}")
    return table


# --------------------------------------------------------------------------------------------
# Predictor
# --------------------------------------------------------------------------------------------

class InputCounts:
    """Per input field, counted over the rows a predictor encoded: rows, missing values and
    out-of-vocabulary values (OOV for fields encoded to ids only). Thread-safe (a server shares
    one predictor). The rates use prepare's definitions: missing / rows, OOV / present values."""

    def __init__(self, pipeline: FeaturePipeline):
        self._sparse = list(pipeline.sparse_outputs)
        self._dense = list(pipeline.dense_outputs)
        self.fields = self._sparse + self._dense
        self.rows = 0
        self.missing = np.zeros(len(self.fields), dtype=np.int64)
        self.oov = np.zeros(len(self._sparse), dtype=np.int64)
        self._lock = threading.Lock()

    def add(self, table: pa.Table, sparse: np.ndarray) -> None:
        missing = np.concatenate([np.count_nonzero(sparse == MISSING_ID, axis=0),
                                  [table.column(c).null_count for c in self._dense]])
        oov = np.count_nonzero(sparse == OOV_ID, axis=0)
        with self._lock:
            self.rows += table.num_rows
            self.missing += missing.astype(np.int64)
            self.oov += oov

    def snapshot(self) -> dict[str, dict[str, int | None]]:
        """{field: {"rows", "missing", "oov" (None for numeric features)}}."""
        with self._lock:
            oov = list(self.oov.tolist()) + [None] * len(self._dense)
            return {f: {"rows": self.rows, "missing": int(m), "oov": o}
                    for f, m, o in zip(self.fields, self.missing.tolist(), oov)}


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


@dataclass
class Timings:
    """Seconds spent per stage by the last :meth:`Predictor.predict` call."""

    parse: float = 0.0  # rows -> Arrow table
    transform: float = 0.0  # pipeline.transform
    inference: float = 0.0  # model / graph
    postprocess: float = 0.0  # output array


class Predictor:
    """Scores raw rows with a bundle.

    backend: ``onnx`` (onnxruntime, default) or ``torch``. threads: intra-op threads (default:
    the available cores; for torch this sets torch's process-wide thread count). providers:
    onnxruntime execution providers (default CPU). graph_optimization: onnxruntime graph
    optimizations on (default) or off. spinning: onnxruntime's idle threads busy-wait (see
    :func:`~ctrlab.export.bundle.onnx_session`; off by default). variant: ``fp32`` or ``int8`` (the quantized
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
        self.backend = backend
        self.variant = variant
        self.timings = Timings()
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
            import torch

            from .runtime import configure_torch_threads

            if threads is not None:
                configure_torch_threads(threads)
            self._torch = torch
            self._device = torch.device(device)
            self._model = torch_model(self.bundle_dir, self.manifest).to(self._device)

    # layout ----------------------------------------------------------------------------------
    @property
    def dense_columns(self) -> list[str]:
        return list(self.pipeline.dense_inputs)

    @property
    def sparse_columns(self) -> list[str]:
        return list(self.pipeline.sparse_inputs)

    @property
    def columns(self) -> list[str]:
        """The raw input columns, in the order a row given as a list must follow."""
        return self.pipeline.input_columns

    # scoring ---------------------------------------------------------------------------------
    def to_table(self, rows: Any) -> pa.Table:
        """Rows in any accepted form -> a checked Arrow table of raw columns."""
        if isinstance(rows, pa.RecordBatch):
            rows = pa.Table.from_batches([rows])
        if isinstance(rows, pa.Table):
            return check_table(rows, self.dense_columns, self.sparse_columns)
        if isinstance(rows, dict):
            raise InputError("rows must be a list of dicts (one per row), not a single dict; wrap it: [row]")
        if not isinstance(rows, Sequence) or isinstance(rows, (str, bytes)):
            raise InputError(f"rows must be an Arrow table, a list of dicts or a list of lists, "
                             f"got {type(rows).__name__}")
        return rows_to_table(rows, self.dense_columns, self.sparse_columns)

    def transform(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """A checked table -> (dense float32[N, n_dense], sparse int32[N, n_sparse]) via the bundle's
        pipeline, counted in ``input_counts``; a value whose feature is not finite raises InputError."""
        dense, sparse = self.pipeline.transform(table)
        self.input_counts.add(table, sparse)
        return dense, sparse

    def encode(self, rows: Any) -> tuple[np.ndarray, np.ndarray]:
        """Raw rows -> (dense float32[N, n_dense], sparse int32[N, n_sparse]) via the bundle's pipeline."""
        return self.transform(self.to_table(rows))

    def predict_encoded(self, dense: np.ndarray, sparse: np.ndarray) -> np.ndarray:
        """Probabilities float32[N] for encoded features."""
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
            return torch.sigmoid(self._model(dense_t, sparse_t)).float().cpu().numpy()

    def predict(self, rows: Any) -> np.ndarray:
        """Probabilities float32[N] for raw rows (Arrow table, list of dicts, or list of lists);
        per-stage seconds in ``self.timings``."""
        t0 = time.perf_counter()
        table = self.to_table(rows)
        t1 = time.perf_counter()
        dense, sparse = self.transform(table)
        t2 = time.perf_counter()
        probs = self.predict_encoded(dense, sparse) if len(dense) else np.zeros(0, dtype=np.float32)
        t3 = time.perf_counter()
        self.timings = Timings(t1 - t0, t2 - t1, t3 - t2, 0.0)
        return probs

    # files -----------------------------------------------------------------------------------
    def file_schema(self, path: str | os.PathLike, fmt: str = "auto") -> tuple[str, Schema]:
        """The format and schema to read ``path`` with, checked against the bundle's inputs."""
        return input_schema(Path(path), fmt, self.schema, self.pipeline)

    def score_files(self, inputs: str | os.PathLike | Iterable[str | os.PathLike], *, fmt: str = "auto",
                    bad_lines: str = "error", batch_size: int = DEFAULT_BATCH_ROWS) -> "Iterator[ScoredChunk]":
        return score_files(self, inputs, fmt=fmt, bad_lines=bad_lines, batch_size=batch_size)


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------

def input_schema(path: Path, fmt: str, bundle_schema: Schema, pipeline: FeaturePipeline) -> tuple[str, Schema]:
    """How to read one prediction input: the format (detected from the first line when ``auto``)
    and its schema, labelled or not. The file's feature columns must equal the bundle's inputs."""
    from .data.readers import detect_format, schema_for_file

    generic = bundle_schema.name in ("csv", "tsv")
    if fmt == "auto":
        try:
            fmt = detect_format(path)
        except ValueError:
            if not generic:
                raise
            fmt = bundle_schema.name
    if fmt in ("csv", "tsv"):
        schema = _generic_input_schema(path, fmt, bundle_schema)
    elif fmt in PRESETS:
        schema = schema_for_file(path, fmt)
        if fmt == "slot" and not any(tok.startswith("click:") for tok in first_line(path).split()):
            schema = schema.without_label()
    else:
        raise ValueError(f"unknown format {fmt!r}; valid: auto, {', '.join(list(PRESETS) + ['csv', 'tsv'])}")
    if list(schema.dense) != pipeline.dense_inputs or list(schema.sparse) != pipeline.sparse_inputs:
        file_cols = list(schema.dense) + list(schema.sparse)
        need = pipeline.input_columns
        lacking = [c for c in need if c not in file_cols]
        extra = [c for c in file_cols if c not in need]
        detail = f"lacking {lacking}, extra {extra}" if lacking or extra else "same names, other order or kinds"
        raise ValueError(f"{path}: its feature columns ({fmt} layout: dense {list(schema.dense)}, sparse "
                         f"{list(schema.sparse)}) differ from the bundle's inputs (dense {pipeline.dense_inputs}, "
                         f"sparse {pipeline.sparse_inputs}): {detail}")
    return fmt, schema


def _generic_input_schema(path: Path, fmt: str, bundle_schema: Schema) -> Schema:
    """A generic CSV/TSV input read with the bundle's column roles; the label and id columns
    are optional (a label-less file is scored, not evaluated).

    Columns come from the file's header (a bundle trained on a preset layout, or on generic data
    with a header), or, for a bundle trained on header-less generic data, from its schema."""
    generic_bundle = bundle_schema.name in ("csv", "tsv")
    delimiter = bundle_schema.delimiter if bundle_schema.name == fmt else ("\t" if fmt == "tsv" else ",")
    has_header = bundle_schema.header or not generic_bundle
    if has_header:
        header = [h.strip().strip('"') for h in first_line(path).split(delimiter)]
    else:
        fields = first_line(path).split(delimiter)
        header = list(bundle_schema.columns)
        if bundle_schema.label and len(fields) == len(header) - 1:
            header = [c for c in header if c != bundle_schema.label]
    label = bundle_schema.label if bundle_schema.label in header else (LABEL if LABEL in header else None)
    id_column = bundle_schema.id_column if bundle_schema.id_column in header else None
    features = [c for c in header if c not in (label, id_column)]
    need = list(bundle_schema.dense) + list(bundle_schema.sparse)
    if sorted(features) != sorted(need):
        lacking = [c for c in need if c not in features]
        extra = [c for c in features if c not in need]
        raise ValueError(f"{path}: its feature columns ({fmt} header: {_column_list(features)}) differ from the "
                         f"bundle's inputs ({_column_list(need)}): lacking {lacking}, extra {extra}")
    cfg = GenericSchemaConfig(columns=header, label=label, dense=list(bundle_schema.dense),
                              sparse=list(bundle_schema.sparse), id_column=id_column, header=has_header,
                              delimiter=delimiter)
    return generic_schema(cfg, fmt, header)


@dataclass
class ScoredChunk:
    """Scores of consecutive input rows, in input order."""

    probabilities: np.ndarray  # float32[N]
    labels: np.ndarray | None  # float32[N] when the input has labels
    ids: pa.Array | None  # the input's id column (e.g. Kaggle CSV Id), when it has one
    path: str
    rows_before: int  # scored rows before this chunk (all files)
    timings: dict[str, float] = field(default_factory=dict)
    lines: np.ndarray | None = None  # int64[N]: the input line of every scored row
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, why) of skipped lines, in order


@dataclass
class FileScoring:
    """What :func:`score_files` read: per-file formats, row counts and the skip report."""

    formats: dict[str, str] = field(default_factory=dict)
    rows: int = 0
    skipped: SkipReport = field(default_factory=SkipReport)
    has_labels: bool = True
    has_ids: bool = True
    inputs: InputCounts | None = None  # per-field rows / missing / OOV of the scored rows


def score_files(predictor: Predictor, inputs: str | os.PathLike | Iterable[str | os.PathLike], *,
                fmt: str = "auto", bad_lines: str = "error", batch_size: int = DEFAULT_BATCH_ROWS,
                report: FileScoring | None = None) -> Iterator[ScoredChunk]:
    """Stream the rows of input files through the predictor, chunk by chunk, in input order.

    Parsing (Arrow's reader, in its own thread), encoding (a second thread) and inference (this
    thread; onnxruntime and torch release the GIL) overlap. Bad lines follow ``bad_lines``
    (``error`` stops at the first one with file, line and field; ``skip`` counts them in
    ``report.skipped``). Every file's format is detected (or ``fmt``) and its feature columns
    checked against the bundle's before any row is scored.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    report = report if report is not None else FileScoring()
    paths = resolve_inputs(inputs)
    plans = [(path, *predictor.file_schema(path, fmt)) for path in paths]  # all checked up front
    for path, file_fmt, schema in plans:
        report.formats[str(path)] = file_fmt
        report.has_labels &= schema.label is not None
        report.has_ids &= schema.id_column is not None
    if report.inputs is None:
        report.inputs = InputCounts(predictor.pipeline)

    def encoded() -> Iterator[tuple[Any, ...]]:
        for path, _, schema in plans:
            reader = RowReader([path], schema, bad_lines=bad_lines)
            try:
                for chunk in reader:
                    t0 = time.perf_counter()
                    table, dense, sparse = _transform_chunk(predictor, chunk, bad_lines, reader.skipped)
                    elapsed = time.perf_counter() - t0
                    report.inputs.add(table, sparse)  # type: ignore[union-attr]
                    labels = table.column(LABEL).to_numpy().astype(np.float32) if schema.label else None
                    ids = table.column(ID).combine_chunks() if schema.id_column else None
                    yield chunk, dense, sparse, labels, ids, elapsed
            finally:
                report.skipped.merge_from(reader.skipped)

    done = 0
    for chunk, dense, sparse, labels, ids, transform_s in prefetch(encoded(), depth=2):
        n = len(dense)
        t0 = time.perf_counter()
        probs = np.empty(n, dtype=np.float32)
        for lo in range(0, n, batch_size):
            hi = lo + batch_size
            probs[lo:hi] = predictor.predict_encoded(dense[lo:hi], sparse[lo:hi])
        timings = {"transform": transform_s, "inference": time.perf_counter() - t0}
        yield ScoredChunk(probs, labels, ids, chunk.path, done, timings, chunk.lines, chunk.skipped)
        done += n
        report.rows = done


def _transform_chunk(predictor: Predictor, chunk: Any, bad_lines: str,
                     skipped: SkipReport) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """Encode a reader's chunk. A row whose feature is not finite is a bad line: an error naming
    the file, line and field, or (``skip``) a skipped line, counted and listed in the chunk."""
    while True:
        try:
            dense, sparse = predictor.transform(chunk.table)
            return chunk.table, dense, sparse
        except InputError as exc:
            if exc.row is None:
                raise
            line = int(chunk.lines[exc.row])
            if bad_lines == "error":
                raise DataError(chunk.path, line, exc.reason, field=exc.field) from None
            skipped.add("non-finite feature", f"{chunk.path}:{line}")
            chunk.skipped = sorted(chunk.skipped + [(line, describe(exc.reason, exc.field))])
            keep = np.ones(chunk.table.num_rows, dtype=bool)
            keep[exc.row] = False
            chunk.table, chunk.lines = chunk.table.filter(pa.array(keep)), chunk.lines[keep]


# --------------------------------------------------------------------------------------------
# predict_file: the `ctrlab predict` body
# --------------------------------------------------------------------------------------------

@dataclass
class PredictResult:
    rows: int
    seconds: float
    skipped: SkipReport
    formats: dict[str, str]
    metrics: dict[str, float] | None  # exact AUC / logloss over all rows, when the input has labels
    out: str

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else float("nan")


def predict_file(bundle_dir: str | os.PathLike, inputs: str | os.PathLike | Iterable[str | os.PathLike],
                 out: str | os.PathLike, *, fmt: str = "auto", bad_lines: str = "error", backend: str = "onnx",
                 id_column: bool = False, header: bool = False, batch_size: int = DEFAULT_BATCH_ROWS,
                 threads: int | None = None, variant: str = "fp32", predictor: Predictor | None = None,
                 log: Callable[[str], None] = print) -> PredictResult:
    """Score input files and write ``out``, a TSV file with one line per input line (after a
    header line of the input), in input order, so that line k of the output belongs to data
    line k of the input.

    Columns: [``id``] ``probability`` [``skipped``]. ``id_column``: the input's id column (Kaggle
    CSV ``Id``) when every input has one, else the 1-based line number in the input file
    (``file:line`` when there are several input files). With ``bad_lines="skip"`` a bad line
    keeps its place with an empty probability (and an empty id when the ids come from the
    input), and the ``skipped`` column says what was wrong with it (empty on scored lines).
    ``header``: a first line naming the columns. ``variant``: ``int8`` scores with the bundle's
    quantized graph (onnx). ``predictor``: an already loaded Predictor to use (then
    ``bundle_dir``, ``backend``, ``threads`` and ``variant`` are not used).

    Labelled input: exact AUC and logloss over the scored rows in the result (and logged). A
    warning is logged when a field's missing or OOV rate is far above the bundle's training
    rates (the wrong bundle for the data, or a changed upstream).
    """
    import pyarrow.csv as pa_csv

    from .metrics import evaluate_scores

    started = time.perf_counter()
    if predictor is None:
        if threads is None and backend == "torch":
            # parsing and encoding run in two threads beside inference: torch's OpenMP threads
            # stall when they outnumber the free cores (measured on 2 shared cores: 1 thread
            # 42-51k rows/s, 2 threads 9-23k); onnxruntime (spinning off) does not mind
            from .runtime import available_cores

            threads = max(1, available_cores() - 1)
        predictor = Predictor(bundle_dir, backend=backend, threads=threads, variant=variant)
    for note in predictor.version_notes:
        log(f"note: library versions differ from the bundle's export: {note}")
    report = FileScoring()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    labels_parts: list[np.ndarray] = []
    prob_parts: list[np.ndarray] = []
    options = pa_csv.WriteOptions(include_header=False, delimiter="\t", quoting_style="none")
    names = (["id"] if id_column else []) + ["probability"] + (["skipped"] if bad_lines == "skip" else [])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            chunks = score_files(predictor, inputs, fmt=fmt, bad_lines=bad_lines, batch_size=batch_size,
                                 report=report)
            if header:
                fh.write(("\t".join(names) + "\n").encode())
            for chunk in chunks:
                columns = _output_columns(chunk, id_column and report.has_ids, len(report.formats) > 1)
                pa_csv.write_csv(pa.table({n: columns[n] for n in names}), fh, write_options=options)
                prob_parts.append(chunk.probabilities)
                if chunk.labels is not None and report.has_labels:
                    labels_parts.append(chunk.labels)

    atomic_write(out, write)  # the whole output or nothing (a bad line under "error" leaves no file)
    seconds = time.perf_counter() - started
    metrics = None
    if report.has_labels and prob_parts:
        metrics = evaluate_scores(np.concatenate(labels_parts), np.concatenate(prob_parts))
    result = PredictResult(report.rows, seconds, report.skipped, report.formats, metrics, str(out))
    log(f"scored {result.rows:,} rows in {seconds:.2f} s ({result.rows_per_second:,.0f} rows/s) -> {out}")
    if report.skipped.total:
        log(f"skipped {report.skipped.total:,} bad lines:")
        for reason, count in report.skipped.counts.items():
            log(f"  {count:>10,}  {reason}")
        for example in report.skipped.examples[:5]:
            log(f"  e.g. {example}")
    if metrics is not None:
        log(f"AUC {metrics['auc']:.6f}")
        log(f"logloss {metrics['logloss']:.6f}")
    drift = input_drift(report.inputs.snapshot(), predictor.input_rates) if report.inputs else []
    if drift:
        log(f"warning: these inputs differ from the bundle's training data (rate seen here vs at training): "
            f"{', '.join(drift)}; is this the right bundle for these files?")
    return result


def _output_columns(chunk: ScoredChunk, input_ids: bool, several_files: bool) -> dict[str, pa.Array]:
    """A scored chunk's output lines: its scored rows and skipped lines merged in line order."""
    n = len(chunk.probabilities)
    skip_lines = np.array([line for line, _ in chunk.skipped], dtype=np.int64)
    lines = np.concatenate([chunk.lines if chunk.lines is not None else np.zeros(n, np.int64), skip_lines])
    order = pa.array(np.argsort(lines, kind="stable"))
    is_skipped = np.arange(len(lines)) >= n
    probs = np.concatenate([chunk.probabilities.astype(np.float32), np.zeros(len(skip_lines), np.float32)])
    columns = {"probability": pa.array(probs, mask=is_skipped).take(order),
               "skipped": pa.array([None] * n + [" ".join(why.split()) for _, why in chunk.skipped],
                                   type=pa.string()).take(order)}
    if input_ids:
        ids = pa.concat_arrays([chunk.ids.cast(pa.string()), pa.nulls(len(skip_lines), pa.string())])  # type: ignore[union-attr]
        columns["id"] = ids.take(order)
    elif several_files:
        columns["id"] = pa.array([f"{chunk.path}:{line}" for line in np.sort(lines).tolist()], type=pa.string())
    else:
        columns["id"] = pa.array(np.sort(lines))
    return columns
