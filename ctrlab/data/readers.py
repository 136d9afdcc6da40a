"""Stream raw CTR rows from TSV/CSV/slot files (plain or gzip) as Arrow tables.

Every reader yields :class:`Chunk` objects whose ``table`` has canonical columns:

* ``id`` (string) when the schema has an id column,
* ``label`` (float64, always 0.0 or 1.0) when the schema has a label,
* the dense columns (float64, null = missing),
* the sparse columns (string, null = missing).

Delimited files are parsed by Arrow's multithreaded CSV reader (the fast path). Bad lines
never pass silently: with ``bad_lines="error"`` (the default) the first bad line raises a
:class:`DataError` naming the file, line number, field and what was expected; with
``bad_lines="skip"`` they are counted per reason in a :class:`SkipReport`. When a value error
(a non-numeric count, say) turns up under ``skip``, the rest of that file is re-read by a
line-by-line Python parser that applies the same rules and skips exactly the bad lines.
"""

from __future__ import annotations

import csv
import glob
import gzip
import hashlib
import io
import os
import queue
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from ..schema import FORMAT_NAMES, LABEL, PRESETS, Schema

BLOCK_BYTES = 1 << 20  # Arrow's streaming parser is fastest with small (cache-sized) blocks...
CHUNK_ROWS = 1 << 17  # ...which are joined into chunks of this many rows for vectorized work
FALLBACK_ROWS = 65536  # rows per table from the line-by-line parser
ID = "id"

# What the fast path accepts as a number; the fallback parser applies the same rule.
# (ASCII digits only; surrounding blanks are allowed, as Arrow allows them; nan/inf are not numbers)
_NUMBER = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")


class DataError(ValueError):
    """A bad input line: names the file, the line (1-based), the field and what was expected."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str, field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = f"{self.path}:{line}" if line is not None else self.path
        what = f" field {field!r}:" if field else ""
        super().__init__(f"{where}:{what} {message}")


@dataclass
class SkipReport:
    """Lines skipped under the ``skip`` policy, counted per reason, with a few examples."""

    counts: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    max_examples: int = 10

    def add(self, reason: str, where: str, n: int = 1) -> None:
        self.counts[reason] += n
        if len(self.examples) < self.max_examples:
            self.examples.append(f"{where}: {reason}")

    @property
    def total(self) -> int:
        return int(sum(self.counts.values()))

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_reason": dict(self.counts), "examples": list(self.examples)}

    def merge_from(self, other: "SkipReport") -> None:
        self.counts.update(other.counts)
        for ex in other.examples:
            if len(self.examples) < self.max_examples:
                self.examples.append(ex)


@dataclass
class Chunk:
    table: pa.Table
    path: str
    first_line: int  # 1-based line number of the chunk's first row (exact when nothing was skipped)


@dataclass
class SourceInfo:
    path: str
    bytes: int
    sha256: str | None = None
    rows: int = 0
    skipped: int = 0


# --------------------------------------------------------------------------------------------
# Input resolution and format detection
# --------------------------------------------------------------------------------------------

def resolve_inputs(spec: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Expand one path, a glob, a directory of part files, or a list of those, in sorted order."""
    items = [spec] if isinstance(spec, (str, os.PathLike)) else list(spec)
    out: list[Path] = []
    for item in items:
        text = str(item)
        path = Path(text)
        if path.is_dir():
            parts = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
            if not parts:
                raise FileNotFoundError(f"{path}: directory holds no data files")
            out.extend(parts)
        elif any(ch in text for ch in "*?["):
            matches = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
            if not matches:
                raise FileNotFoundError(f"{text}: the pattern matches no file")
            out.extend(matches)
        elif path.is_file():
            out.append(path)
        else:
            raise FileNotFoundError(f"{path}: no such file or directory")
    return out


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a plain or gzip file as text (UTF-8), whatever its extension says."""
    path = Path(path)
    raw: Any = gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")
    return io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")  # -sig: a byte-order mark is dropped


def first_line(path: str | os.PathLike) -> str:
    with open_text(path) as fh:
        return fh.readline().rstrip("\r\n")


def detect_format(path: str | os.PathLike) -> str:
    """Guess the preset of a file from its first line (and extension); raise when unsure."""
    line = first_line(path)
    lowered = line.lower().replace('"', "")
    if lowered.startswith("click:") or " dense_feature:" in line:
        return "slot"
    if lowered.startswith("id,label,") or lowered.startswith("id,i1,"):
        return "criteo_kaggle_csv"
    if lowered.startswith("label,i1,") or lowered.startswith("i1,i2,"):
        return "criteo_csv"
    if "," not in line:
        tabs = line.count("\t")
        if tabs == 39:
            return "criteo"
        if tabs == 38:
            return "criteo_test"
    raise ValueError(
        f"{path}: cannot tell the input format from its first line ({line[:80]!r}). "
        f"Pass --format, one of: {', '.join(FORMAT_NAMES)} (csv/tsv take column names from the header, or from data.schema in the config)"
    )


def schema_for_file(path: str | os.PathLike, fmt: str) -> Schema:
    """The preset schema for ``fmt``, adjusted to the file: a header without the label column
    (e.g. the Kaggle test CSV) gives the label-less variant."""
    schema = PRESETS[fmt]
    if schema.header:
        header = [h.strip().strip('"') for h in first_line(path).split(schema.delimiter)]
        if schema.label is not None and schema.label not in header:
            schema = schema.without_label()
        if header != list(schema.columns):
            raise DataError(path, 1, f"header {header[:6]}... does not match the {fmt} layout {list(schema.columns)[:6]}...")
    return schema


# --------------------------------------------------------------------------------------------
# Source hashes, computed beside the parse
# --------------------------------------------------------------------------------------------

def sha256_file(path: str | os.PathLike) -> str:
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 << 20), b""):
            sha.update(block)  # releases the GIL
    return sha.hexdigest()


class _BackgroundHash:
    """sha256 of a file in a thread (file reads and hashlib release the GIL)."""

    def __init__(self, path: Path):
        self._result: list[str] = []
        self._thread = threading.Thread(target=lambda: self._result.append(sha256_file(path)), daemon=True,
                                        name="ctrlab-sha256")
        self._thread.start()

    def result(self) -> str | None:
        self._thread.join()
        return self._result[0] if self._result else None


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------

def _output_types(schema: Schema) -> dict[str, pa.DataType]:
    types: dict[str, pa.DataType] = {}
    if schema.id_column:
        types[schema.id_column] = pa.string()
    if schema.label:
        types[schema.label] = pa.float64()
    types.update({c: pa.float64() for c in schema.dense})
    types.update({c: pa.string() for c in schema.sparse})
    return types


def _canonical(table: pa.Table, schema: Schema) -> pa.Table:
    """Select and rename to canonical columns: id, label, dense..., sparse..."""
    names, arrays = [], []
    if schema.id_column:
        names.append(ID)
        arrays.append(table.column(schema.id_column))
    if schema.label:
        names.append(LABEL)
        arrays.append(table.column(schema.label))
    for col in schema.dense + schema.sparse:
        names.append(col)
        arrays.append(table.column(col))
    return pa.Table.from_arrays(arrays, names=names)


def _check_rows(table: pa.Table, path: str, first_line_no: int, bad_lines: str, report: SkipReport,
                info: SourceInfo, schema: Schema) -> pa.Table:
    """What Arrow's parser lets through but ctrlab does not accept, row by row, vectorized:
    an empty line (Arrow makes it a row of nulls), a label other than 0/1, a count written as
    nan or inf. Under ``error`` the first such row raises (its line number is exact: nothing
    was skipped before it); under ``skip`` the rows go and are counted."""
    n = table.num_rows
    problems: list[tuple[np.ndarray, str, str | None, Callable[[int], str]]] = []
    empty = np.ones(n, dtype=bool)
    for col in table.column_names:
        empty &= np.asarray(table.column(col).is_null())
    if empty.any():
        problems.append((empty, "empty line", None, lambda i: "empty line"))
    if LABEL in table.column_names:
        labels = table.column(LABEL).to_numpy()
        bad = ~((labels == 0.0) | (labels == 1.0)) & ~empty  # NaN (missing label) is bad too
        if bad.any():
            def label_reason(i: int) -> str:
                value = table.column(LABEL)[i].as_py()
                return f"expected a 0/1 label, got {'empty' if value is None else repr(value)}"
            problems.append((bad, "label not 0/1", LABEL, label_reason))
    for col in schema.dense:
        values = table.column(col).to_numpy()
        bad = ~np.isfinite(values) & np.asarray(table.column(col).is_valid())
        if bad.any():
            problems.append((bad, "not a number", col,
                             lambda i, c=col: f"expected a number, got {table.column(c)[i].as_py()!r}"))
    if not problems:
        return table
    if bad_lines == "error":
        first = min((int(np.flatnonzero(mask)[0]), reason_fn, col) for mask, _, col, reason_fn in problems)
        idx, reason_fn, col = first
        raise DataError(path, first_line_no + idx, reason_fn(idx), field=col)
    drop = np.zeros(n, dtype=bool)
    for mask, reason, _, _ in problems:
        fresh = mask & ~drop
        if fresh.any():
            report.add(reason, f"{path}:{first_line_no + int(np.flatnonzero(fresh)[0])}", n=int(fresh.sum()))
            info.skipped += int(fresh.sum())
        drop |= mask
    return table.filter(pa.array(~drop))


class _FallbackNeeded(Exception):
    pass


def _fast_delimited(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo,
                    block_bytes: int) -> Iterator[Chunk]:
    header_lines = 1 if schema.header else 0
    digest = _BackgroundHash(path)
    stream: Any = pa.OSFile(str(path))
    if _is_gzip(path):
        stream = pa.CompressedInputStream(stream, "gzip")
    expected = len(schema.columns)

    def on_invalid(row) -> str:
        if bad_lines == "error":
            return "error"
        got = row.actual_columns
        reason = "empty line" if (row.text or "").strip() == "" else f"wrong field count (got {got}, expected {expected})"
        where = f"{path}:{row.number}" if row.number is not None else f"{path}: line {(row.text or '')[:30]!r}..."
        report.add(reason, where)
        info.skipped += 1
        return "skip"

    types = _output_types(schema)
    try:
        reader = _open_arrow_csv(stream, schema, header_lines, block_bytes, on_invalid, types)
    except pa.ArrowInvalid as exc:
        raise _FallbackNeeded(str(exc)) from exc
    next_line = header_lines + 1
    for table in prefetch(_joined_batches(reader, schema, CHUNK_ROWS)):
        first = next_line
        next_line += table.num_rows
        table = _check_rows(table, str(path), first, bad_lines, report, info, schema)
        info.rows += table.num_rows
        yield Chunk(table, str(path), first)
    info.sha256 = digest.result()
    info.bytes = path.stat().st_size


def _joined_batches(reader, schema: Schema, rows: int) -> Iterator[pa.Table]:
    """Arrow batches joined into tables of about ``rows`` rows (canonical columns; chunked, not
    copied: the encoders work on chunked columns)."""
    batches: list[pa.RecordBatch] = []
    pending = 0
    while True:
        try:
            batch = reader.read_next_batch()
        except StopIteration:
            break
        except pa.ArrowInvalid as exc:
            raise _FallbackNeeded(str(exc)) from exc
        batches.append(batch)
        pending += batch.num_rows
        if pending >= rows:
            yield _canonical(pa.Table.from_batches(batches), schema)
            batches, pending = [], 0
    if batches:
        yield _canonical(pa.Table.from_batches(batches), schema)


def prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run an iterator in a background thread, ``depth`` items ahead of the consumer.

    Arrow's parser releases the GIL, so parsing the next chunk overlaps the consumer's numpy
    work on this one. Exceptions reach the consumer; closing the consumer stops the producer.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer
            q.put((done, exc))

    thread = threading.Thread(target=produce, name="ctrlab-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)


def _open_arrow_csv(stream, schema: Schema, header_lines: int, block_bytes: int, on_invalid, types):
    return pa_csv.open_csv(
        stream,
        read_options=pa_csv.ReadOptions(column_names=list(schema.columns), skip_rows=header_lines,
                                        block_size=block_bytes, use_threads=True),
        parse_options=pa_csv.ParseOptions(delimiter=schema.delimiter, quote_char='"' if schema.quoted else False,
                                          ignore_empty_lines=False, invalid_row_handler=on_invalid),
        convert_options=pa_csv.ConvertOptions(column_types=types, include_columns=list(types),
                                              null_values=[""], strings_can_be_null=True,
                                              quoted_strings_can_be_null=True),
    )


def _line_error(fields: list[str], schema: Schema) -> tuple[str, str, str | None] | None:
    """Why a split line is bad (reason, message, field), or None. The same rules and reason
    names as the fast path (Arrow's parser + _check_rows)."""
    expected = len(schema.columns)
    if not fields or (len(fields) == 1 and fields[0].strip() == ""):
        return "empty line", "empty line", None
    if len(fields) != expected:
        reason = f"wrong field count (got {len(fields)}, expected {expected})"
        return reason, reason, None
    index = {c: i for i, c in enumerate(schema.columns)}
    if schema.label:
        value = fields[index[schema.label]]
        if not _NUMBER.fullmatch(value) or float(value) not in (0.0, 1.0):
            return "label not 0/1", f"expected a 0/1 label, got {repr(value[:40]) if value else 'empty'}", schema.label
    for col in schema.dense:
        value = fields[index[col]]
        if value != "" and not _NUMBER.fullmatch(value):
            return "not a number", f"expected a number, got {value[:40]!r}", col
    return None


def _split_lines(fh: io.TextIOBase, schema: Schema) -> Iterator[list[str]]:
    if schema.quoted:
        yield from csv.reader(fh, delimiter=schema.delimiter)
    else:
        for line in fh:
            yield line.rstrip("\r\n").split(schema.delimiter)


def _slow_delimited(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo,
                    drop_valid_rows: int = 0) -> Iterator[Chunk]:
    """Line-by-line parser: exact line numbers for errors; used after a fast-path value error."""
    header_lines = 1 if schema.header else 0
    index = {c: i for i, c in enumerate(schema.columns)}
    out_cols = list(_output_types(schema))
    types = _output_types(schema)
    rows: list[list[str]] = []
    first_of_chunk = None
    info.sha256 = sha256_file(path)
    info.bytes = path.stat().st_size

    def flush() -> Chunk:
        columns = list(zip(*rows)) if rows else [[] for _ in out_cols]
        arrays = []
        for col, values in zip(out_cols, columns):
            if types[col] == pa.string():
                arrays.append(pa.array([v if v != "" else None for v in values], type=pa.string()))
            else:
                arrays.append(pa.array([float(v) if v != "" else None for v in values], type=pa.float64()))
        table = _canonical(pa.Table.from_arrays(arrays, names=out_cols), schema)
        return Chunk(table, str(path), first_of_chunk or 0)

    with open_text(path) as fh:
        for _ in range(header_lines):
            fh.readline()
        for line_no, fields in enumerate(_split_lines(fh, schema), start=header_lines + 1):
            problem = _line_error(fields, schema)
            if problem is not None:
                reason, message, col = problem
                if bad_lines == "error":
                    raise DataError(path, line_no, message, field=col)
                report.add(reason, f"{path}:{line_no}")
                info.skipped += 1
                continue
            if drop_valid_rows > 0:  # already delivered by the fast path
                drop_valid_rows -= 1
                continue
            if first_of_chunk is None:
                first_of_chunk = line_no
            rows.append([fields[index[c]] for c in out_cols])
            info.rows += 1
            if len(rows) >= FALLBACK_ROWS:
                yield flush()
                rows, first_of_chunk = [], None
    if rows:
        yield flush()


def _read_delimited(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo,
                    block_bytes: int) -> Iterator[Chunk]:
    local = SkipReport()
    delivered = 0
    try:
        for chunk in _fast_delimited(path, schema, bad_lines, local, info, block_bytes):
            delivered += chunk.table.num_rows
            yield chunk
        report.merge_from(local)
        return
    except _FallbackNeeded as exc:
        fast_error = str(exc)
    # The fast path hit a bad line. Re-read this file line by line: under "error" that names the
    # first bad line exactly; under "skip" it delivers the rows the fast path had not delivered.
    info.rows = 0
    info.skipped = 0
    fresh = SkipReport()
    for chunk in _slow_delimited(path, schema, bad_lines, fresh, info, drop_valid_rows=delivered):
        yield chunk
    info.rows += delivered
    if bad_lines == "error":  # the line parser found nothing wrong, but Arrow did
        raise DataError(path, None, f"could not parse: {fast_error}")
    report.merge_from(fresh)


def _read_slot(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo) -> Iterator[Chunk]:
    """PaddleRec slot lines: ``click:y dense_feature:v ... 1:id ... 26:id`` (space separated).

    A slot that is absent from a line is a missing value. A repeated categorical slot, a dense
    count other than the schema's, an unknown key or a non-numeric value is a bad line.
    """
    slot_of = {str(i + 1): name for i, name in enumerate(schema.sparse)}
    n_dense = len(schema.dense)
    labels: list[float] = []
    dense_rows: list[list[float | None]] = []
    sparse_cols: dict[str, list[str | None]] = {name: [] for name in schema.sparse}
    first_of_chunk = None
    info.sha256 = sha256_file(path)
    info.bytes = path.stat().st_size

    def parse(line: str) -> tuple[float | None, list[float], dict[str, str]] | tuple[str, str | None]:
        label: float | None = None
        dense: list[float] = []
        sparse: dict[str, str] = {}
        for token in line.split():
            key, sep, value = token.partition(":")
            if not sep or value == "":
                return f"expected key:value, got {token[:40]!r}", None
            if key == "click":
                if label is not None:
                    return "click appears twice", LABEL
                if not _NUMBER.fullmatch(value) or float(value) not in (0.0, 1.0):
                    return f"expected a 0/1 label, got {value[:40]!r}", LABEL
                label = float(value)
            elif key == "dense_feature":
                if not _NUMBER.fullmatch(value):
                    return f"expected a number, got {value[:40]!r}", schema.dense[min(len(dense), n_dense - 1)] if n_dense else None
                dense.append(float(value))
            elif key in slot_of:
                name = slot_of[key]
                if name in sparse:
                    return f"slot {key} appears twice (multi-valued slots are not supported)", name
                sparse[name] = value
            else:
                return f"unknown slot {key!r} (expected click, dense_feature or 1..{len(slot_of)})", None
        if schema.label and label is None:
            return "no click:<label> token", LABEL
        if len(dense) != n_dense:
            return f"expected {n_dense} dense_feature values, got {len(dense)}", None
        return label, dense, sparse

    def flush() -> Chunk:
        arrays: list[pa.Array] = []
        names: list[str] = []
        if schema.label:
            names.append(LABEL)
            arrays.append(pa.array(labels, type=pa.float64()))
        dense_matrix = np.array(dense_rows, dtype=np.float64).reshape(len(dense_rows), n_dense)
        for j, name in enumerate(schema.dense):
            names.append(name)
            arrays.append(pa.array(dense_matrix[:, j]))
        for name in schema.sparse:
            names.append(name)
            arrays.append(pa.array(sparse_cols[name], type=pa.string()))
        return Chunk(pa.Table.from_arrays(arrays, names=names), str(path), first_of_chunk or 0)

    with open_text(path) as fh:
        for line_no, line in enumerate(fh, start=1):
            parsed = parse(line)
            if len(parsed) == 2:
                reason, col = parsed  # type: ignore[misc]
                if bad_lines == "error":
                    raise DataError(path, line_no, reason, field=col)
                report.add(reason, f"{path}:{line_no}")
                info.skipped += 1
                continue
            label, dense, sparse = parsed  # type: ignore[misc]
            if first_of_chunk is None:
                first_of_chunk = line_no
            if schema.label:
                labels.append(label)  # type: ignore[arg-type]
            dense_rows.append(dense)
            for name in schema.sparse:
                sparse_cols[name].append(sparse.get(name))
            info.rows += 1
            if len(dense_rows) >= FALLBACK_ROWS:
                yield flush()
                labels.clear(), dense_rows.clear()
                for values in sparse_cols.values():
                    values.clear()
                first_of_chunk = None
    if dense_rows:
        yield flush()


class RowReader:
    """Iterate over the rows of one or more files of one layout, chunk by chunk.

    After iteration, ``sources`` holds per-file sizes, sha256 and row counts and ``skipped``
    the lines dropped under the ``skip`` policy.
    """

    def __init__(self, paths: Iterable[str | os.PathLike], schema: Schema, *, bad_lines: str = "error",
                 block_bytes: int = BLOCK_BYTES):
        if bad_lines not in ("error", "skip"):
            raise ValueError(f"bad_lines must be 'error' or 'skip', got {bad_lines!r}")
        self.paths = [Path(p) for p in paths]
        self.schema = schema
        self.bad_lines = bad_lines
        self.block_bytes = block_bytes
        self.skipped = SkipReport()
        self.sources: list[SourceInfo] = []

    def __iter__(self) -> Iterator[Chunk]:
        for path in self.paths:
            info = SourceInfo(str(path), path.stat().st_size)
            self.sources.append(info)
            if self.schema.format == "slot":
                yield from _read_slot(path, self.schema, self.bad_lines, self.skipped, info)
            else:
                yield from _read_delimited(path, self.schema, self.bad_lines, self.skipped, info, self.block_bytes)
