"""Files in, scores out: :func:`score_files` streams any input format that ``prepare`` reads
(labelled or not; the layout from :func:`ctrlab.data.formats.input_schema`), overlapping parsing,
encoding and inference, and yields the scores chunk by chunk in input order; :func:`predict_file`
writes them to a TSV file (``ctrlab predict``).

Files take :meth:`Predictor.predict`'s stages (``transform``, ``predict_encoded``) one by one
rather than ``predict`` itself: a reader already yields checked tables (no ``to_table``), the
stages run in different threads so they overlap, and a bad line's error must name the file and
line rather than the row of a chunk.

Several tasks (a multi-task bundle, issue 16): the scores are float32[N, T] (column t = task t of
``Predictor.tasks``), a labelled file's labels float32[N, T] (NaN where a row has no label for a
task, or the file has no column for it), and ``ctrlab predict`` writes one probability column per
task, in task order (:func:`predict_file`), and reports AUC / logloss per task.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from ..data.formats import input_schema
from ..data.readers import (BLOCK_BYTES, ID, DataError, MemoryFile, RowReader, SkipReport, describe, resolve_inputs,
                            small_file_rows)
from ..features.online import SMALL_INPUT_ROWS
from ..features.pipeline import InputError
from ..fileio import atomic_write
from ..export.manifest import task_labels
from ..metrics import MISSING_LABEL, evaluate_scores, evaluate_task_scores
from ..runtime import available_cores, prefetch
from ..schema import LABEL, Schema, task_column
from .predictor import InputCounts, Predictor, Timings, input_drift


# rows per inference call when scoring files: cache-sized activations (measured faster than 16k or 64k)
DEFAULT_BATCH_ROWS = 4096
# rows per reader chunk when scoring files (prepare reads 128k): inference waits for the first chunk
# to be parsed and encoded, so a smaller one starts it sooner; transform's per-call cost stays small
READ_CHUNK_ROWS = 32768


@dataclass
class ScoredChunk:
    """Scores of consecutive input rows, in input order."""

    probabilities: np.ndarray  # float32[N]; a multi-task bundle: [N, T]
    labels: np.ndarray | None  # float32[N] when the input has labels; multi-task: [N, T], NaN = no label
    ids: pa.Array | None  # the input's id column (e.g. Kaggle CSV Id), when it has one
    path: str
    rows_before: int  # scored rows before this chunk (all files)
    timings: Timings = Timings()  # seconds: transform and inference of this chunk (parsing overlaps them)
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
    pipeline = predictor.pipeline
    plans = [(path, *input_schema(path, fmt, predictor.schema, pipeline.dense_inputs, pipeline.sparse_inputs))
             for path in paths]  # all checked up front
    for path, file_fmt, schema in plans:
        report.formats[str(path)] = file_fmt
        report.has_labels &= schema.label is not None
        report.has_ids &= schema.id_column is not None
    if report.inputs is None:
        report.inputs = InputCounts(predictor.pipeline)
    columns = (len(predictor.tasks),) if predictor.multi_task else ()

    def encoded() -> Iterator[_Encoded]:
        for path, _, schema in plans:
            reader = RowReader([path], schema, bad_lines=bad_lines, chunk_rows=READ_CHUNK_ROWS)
            try:
                for chunk in reader:
                    t0 = time.perf_counter()
                    table, dense, sparse = _transform_chunk(predictor, chunk, bad_lines, reader.skipped)
                    elapsed = time.perf_counter() - t0
                    report.inputs.add(table, sparse)  # type: ignore[union-attr]
                    labels = _labels(table, schema, predictor) if schema.label else None
                    ids = table.column(ID).combine_chunks() if schema.id_column else None
                    yield _Encoded(chunk, dense, sparse, labels, ids, elapsed, columns)
            finally:
                report.skipped.merge_from(reader.skipped)

    done = 0
    # inputs of one block (a small upload) are encoded in this thread: a thread costs more than it overlaps
    small = sum(os.path.getsize(path) for path in paths) <= BLOCK_BYTES
    for item in _scored(predictor, encoded() if small else prefetch(encoded(), depth=2), batch_size):
        chunk = item.chunk
        timings = Timings(transform=item.transform_s, inference=item.inference_s)
        yield ScoredChunk(item.probs, item.labels, item.ids, chunk.path, done, timings, chunk.lines, chunk.skipped)
        done += len(item.probs)
        report.rows = done


def score_small_file(predictor: Predictor, path: str | os.PathLike | MemoryFile,
                     fmt: str = "auto") -> tuple[np.ndarray, str] | None:
    """The scores and format of a file of at most ``SMALL_INPUT_ROWS`` delimited rows (a small
    upload) through the small-request lane: its lines split by the readers' line parser and
    scored by one :meth:`Predictor.predict` call on the rows (no Arrow reader, no threads). The
    same scores as :func:`score_files` (one inference batch either way; tested) and the same
    errors for its first bad line (``bad_lines="error"``). None for any other file."""
    pipeline = predictor.pipeline
    source = path if isinstance(path, MemoryFile) else Path(path)  # (an upload: no file written)
    file_fmt, schema = input_schema(source, fmt, predictor.schema, pipeline.dense_inputs, pipeline.sparse_inputs)
    read = small_file_rows(source, schema, pipeline.input_columns, SMALL_INPUT_ROWS)
    if read is None:
        return None
    rows, lines = read
    if not rows:
        return predictor.empty_scores(0), file_fmt
    try:
        return predictor.predict(rows).scores, file_fmt
    except InputError as exc:  # (a feature that overflows float32): the file's line
        if exc.row is None:
            raise
        raise DataError(path, lines[exc.row], exc.reason, field=exc.field) from None


def _labels(table: pa.Table, schema: Schema, predictor: Predictor) -> np.ndarray:
    """A labelled chunk's labels: float32[N] (single-task: the first label), or for a multi-task
    bundle float32[N, T] in the bundle's task order, NaN where a row's label is missing (an optional
    label left empty) or the file has no column for that task."""
    tasks = predictor.tasks
    if not predictor.multi_task:
        if len(schema.labels) > 1 or (tasks[0] not in schema.labels and tasks[0] in predictor.schema.labels[1:]):
            # a single-task bundle trained on one task of several (train.task): its task's column
            if tasks[0] not in schema.labels:
                return np.full(table.num_rows, np.nan, dtype=np.float32)
            column = task_column(schema.labels.index(tasks[0]))
            return np.asarray(table.column(column).to_numpy(zero_copy_only=False), dtype=np.float32)
        return table.column(LABEL).to_numpy(zero_copy_only=False).astype(np.float32)
    out = np.full((table.num_rows, len(tasks)), np.nan, dtype=np.float32)
    for k, name in enumerate(schema.labels):
        t = tasks.index(name) if name in tasks else k  # (a file's column named "label": task 0)
        if t < len(tasks):
            values = table.column(task_column(k)).to_numpy(zero_copy_only=False)
            out[:, t] = np.asarray(values, dtype=np.float32)
    return out


def task_metrics(predictor: Predictor, labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC and logloss per task of a multi-task bundle's scored labelled rows (labels float32[N, T],
    NaN = no label), with training's keys (:func:`ctrlab.metrics.evaluate_task_scores`):
    ``auc/<task>``, ``logloss/<task>``, ``rows/<task>`` (labelled rows), ``positive_rate/<task>``,
    ``auc`` / ``logloss`` the means over the tasks, ``rows`` all rows. Each task is scored over its
    labelled rows (ESMM / AITM: task 1 = click AND conversion, 0 wherever click is 0, as training
    scores it); a task without a labelled row (no column in the file) is left out."""
    present = [t for t in range(labels.shape[1]) if np.isfinite(labels[:, t]).any()]  # (before ESMM's zeros)
    y = task_labels(predictor.manifest["model"]["name"], labels)
    coded = np.where(np.isnan(y[:, present]), MISSING_LABEL, y[:, present]).astype(np.uint8)
    return evaluate_task_scores(coded, probs[:, present], [predictor.tasks[t] for t in present])


@dataclass
class _Encoded:
    """A reader's chunk encoded (dense float32[N, d], sparse int32[N, s]), its scores as they come."""

    chunk: Any
    dense: np.ndarray
    sparse: np.ndarray
    labels: np.ndarray | None
    ids: pa.Array | None
    transform_s: float
    columns: tuple[int, ...] = ()  # (T,) for a multi-task bundle
    probs: np.ndarray = field(init=False)  # float32[N], or [N, T]
    unscored: int = field(init=False)
    inference_s: float = 0.0  # this chunk's share of the inference calls its rows were in

    def __post_init__(self) -> None:
        self.probs = np.empty((len(self.dense), *self.columns), dtype=np.float32)
        self.unscored = len(self.dense)


def _scored(predictor: Predictor, items: Iterable[_Encoded], batch_size: int) -> Iterator[_Encoded]:
    """Encoded chunks in, the same chunks scored out, in order. Inference runs on batches of
    ``batch_size`` rows counted from each file's first row, a batch spanning chunks where it falls
    so: the scores do not depend on where the reader cut the chunks (onnxruntime's results differ
    in the last bit with a batch's rows). A chunk comes out once all its rows are scored."""
    waiting: deque[_Encoded] = deque()  # chunks with rows not yet scored, in order
    batch: list[tuple[_Encoded, int, int]] = []  # the next batch: (chunk, lo, hi) row slices
    queued = 0

    def run() -> None:
        nonlocal batch, queued
        dense = [item.dense[lo:hi] for item, lo, hi in batch]
        sparse = [item.sparse[lo:hi] for item, lo, hi in batch]
        t0 = time.perf_counter()
        if len(batch) == 1:  # (the usual case: a slice of one chunk, no copy)
            probs = predictor.predict_encoded(dense[0], sparse[0])
        else:
            probs = predictor.predict_encoded(np.concatenate(dense), np.concatenate(sparse))
        seconds = time.perf_counter() - t0
        at = 0
        for item, lo, hi in batch:
            item.probs[lo:hi] = probs[at:at + hi - lo]
            item.unscored -= hi - lo
            item.inference_s += seconds * (hi - lo) / queued
            at += hi - lo
        batch, queued = [], 0

    path = None
    for item in items:
        if item.chunk.path != path and batch:  # a file's rows start a batch
            run()
        path = item.chunk.path
        waiting.append(item)
        lo, n = 0, len(item.dense)
        while lo < n:
            hi = min(n, lo + batch_size - queued)
            batch.append((item, lo, hi))
            queued += hi - lo
            lo = hi
            if queued == batch_size:
                run()
        while waiting and not waiting[0].unscored:
            yield waiting.popleft()
    if batch:
        run()
    yield from waiting


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
    # (a multi-task bundle: per task, :func:`task_metrics`' keys: auc/<task>, logloss/<task>, ...)
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

    Columns: [``id``] ``probability`` [``skipped``]; a multi-task bundle (several tasks): one
    probability column per task, in task order, named ``probability.<task>`` in the header
    (``[id] probability.click probability.conversion [skipped]``). There is no header line unless
    ``header`` (for either kind), so that line k stays data line k of the input (joinable line by
    line, e.g. ``paste``) and every line is data. ``id_column``: the input's id column (Kaggle
    CSV ``Id``) when every input has one, else the 1-based line number in the input file
    (``file:line`` when there are several input files). With ``bad_lines="skip"`` a bad line
    keeps its place with an empty probability (and an empty id when the ids come from the
    input), and the ``skipped`` column says what was wrong with it (empty on scored lines).
    ``header``: a first line naming the columns. ``variant``: ``int8`` scores with the bundle's
    quantized graph (onnx). ``predictor``: an already loaded Predictor to use (then
    ``bundle_dir``, ``backend``, ``threads`` and ``variant`` are not used).

    Labelled input: exact AUC and logloss over the scored rows in the result (and logged); a
    multi-task bundle: per task over its labelled rows (:func:`task_metrics`, logged per task). A
    warning is logged when a field's missing or OOV rate is far above the bundle's training
    rates (the wrong bundle for the data, or a changed upstream).
    """
    started = time.perf_counter()
    if predictor is None:
        if threads is None and backend == "torch":
            # parsing and encoding run in two threads beside inference: torch's OpenMP threads
            # stall when they outnumber the free cores (measured on 2 shared cores: 1 thread
            # 42-51k rows/s, 2 threads 9-23k); onnxruntime (spinning off) does not mind
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
    prob_names = probability_columns(predictor)
    names = (["id"] if id_column else []) + prob_names + (["skipped"] if bad_lines == "skip" else [])

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            chunks = score_files(predictor, inputs, fmt=fmt, bad_lines=bad_lines, batch_size=batch_size,
                                 report=report)
            if header:
                fh.write(("\t".join(names) + "\n").encode())
            for chunk in chunks:
                columns = _output_columns(chunk, id_column and report.has_ids, len(report.formats) > 1, prob_names)
                pa_csv.write_csv(pa.table({n: columns[n] for n in names}), fh, write_options=options)
                prob_parts.append(chunk.probabilities)
                if chunk.labels is not None and report.has_labels:
                    labels_parts.append(chunk.labels)

    atomic_write(out, write)  # the whole output or nothing (a bad line under "error" leaves no file)
    seconds = time.perf_counter() - started
    metrics = None
    if report.has_labels and prob_parts:
        labels, probs = np.concatenate(labels_parts), np.concatenate(prob_parts)
        if predictor.multi_task:
            metrics = task_metrics(predictor, labels, probs)
        else:
            keep = ~np.isnan(labels)  # (a single-task bundle of one task of several: its labelled rows)
            if keep.all():
                metrics = evaluate_scores(labels, probs)
            else:
                metrics = evaluate_scores(labels[keep], probs[keep]) if keep.any() else None
    result = PredictResult(report.rows, seconds, report.skipped, report.formats, metrics, str(out))
    log(f"scored {result.rows:,} rows in {seconds:.2f} s ({result.rows_per_second:,.0f} rows/s) -> {out}")
    if report.skipped.total:
        log(f"skipped {report.skipped.total:,} bad lines:")
        for reason, count in report.skipped.counts.items():
            log(f"  {count:>10,}  {reason}")
        for example in report.skipped.examples[:5]:
            log(f"  e.g. {example}")
    if metrics is not None and predictor.multi_task:
        for task in predictor.tasks:
            if f"auc/{task}" in metrics:
                log(f"{task}: AUC {metrics[f'auc/{task}']:.6f}  logloss {metrics[f'logloss/{task}']:.6f}  "
                    f"({metrics[f'rows/{task}']:,} labelled rows)")
    elif metrics is not None:
        log(f"AUC {metrics['auc']:.6f}")
        log(f"logloss {metrics['logloss']:.6f}")
    drift = input_drift(report.inputs.snapshot(), predictor.input_rates) if report.inputs else []
    if drift:
        log(f"warning: these inputs differ from the bundle's training data (rate seen here vs at training): "
            f"{', '.join(drift)}; is this the right bundle for these files?")
    return result


def probability_columns(predictor: Predictor) -> list[str]:
    """The probability columns of a predict file: ``probability``, or for a multi-task bundle
    ``probability.<task>`` per task, in task order."""
    return [f"probability.{task}" for task in predictor.tasks] if predictor.multi_task else ["probability"]


def _output_columns(chunk: ScoredChunk, input_ids: bool, several_files: bool,
                    prob_names: list[str] = ["probability"]) -> dict[str, pa.Array]:  # noqa: B006 (read only)
    """A scored chunk's output lines: its scored rows and skipped lines merged in line order
    (``prob_names``: one per score column)."""
    n = len(chunk.probabilities)
    skip_lines = np.array([line for line, _ in chunk.skipped], dtype=np.int64)
    lines = np.concatenate([chunk.lines if chunk.lines is not None else np.zeros(n, np.int64), skip_lines])
    order = pa.array(np.argsort(lines, kind="stable"))
    is_skipped = np.arange(len(lines)) >= n
    scores = chunk.probabilities.astype(np.float32).reshape(n, -1)
    columns = {name: pa.array(np.concatenate([scores[:, t], np.zeros(len(skip_lines), np.float32)]),
                              mask=is_skipped).take(order) for t, name in enumerate(prob_names)}
    columns["skipped"] = pa.array([None] * n + [" ".join(why.split()) for _, why in chunk.skipped],
                                  type=pa.string()).take(order)
    if input_ids:
        ids = pa.concat_arrays([chunk.ids.cast(pa.string()), pa.nulls(len(skip_lines), pa.string())])  # type: ignore[union-attr]
        columns["id"] = ids.take(order)
    elif several_files:
        columns["id"] = pa.array([f"{chunk.path}:{line}" for line in np.sort(lines).tolist()], type=pa.string())
    else:
        columns["id"] = pa.array(np.sort(lines))
    return columns
