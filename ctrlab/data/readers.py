"""Stream raw CTR rows from TSV/CSV/slot files (plain or gzip) as Arrow tables.

Every reader yields :class:`Chunk` objects whose ``table`` has canonical columns:

* ``id`` (string) when the schema has an id column,
* ``label`` (float64, always 0.0 or 1.0) when the schema has a label,
* the dense columns (float64, null = missing),
* the sparse columns (string, null = missing).

Delimited files are parsed by Arrow's multithreaded CSV reader (the fast path). Bad lines
never pass silently: with ``bad_lines="error"`` (the default) the first bad line raises a
:class:`DataError` naming the file, line number, field and what was expected; with
``bad_lines="skip"`` they are counted per reason in a :class:`SkipReport` and listed, line by
line, in the :class:`Chunk` that follows them. When Arrow meets a line it cannot take (a wrong
field count, an empty line, invalid UTF-8, a stray ``\r``, a value it cannot convert), the rest of
that file is re-read by a line-by-line Python parser that applies the same rules, so every line
number is exact.

A line ends at ``\n`` (``\r\n`` is one line end). Numbers are finite: ``nan``, ``inf`` and values
that overflow a float64 (``1e400``) are bad values. A corrupt or truncated gzip stream stops the
read with a :class:`DataError` naming the file, whatever the policy (what follows cannot be read).
"""

from __future__ import annotations

import csv
import functools
import glob
import gzip
import io
import math
import os
import re
import threading
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from ..fileio import sha256_file
from ..runtime import prefetch
from ..schema import LABEL, WEIGHTS_SUFFIX, Schema, task_column

BLOCK_BYTES = 1 << 20  # Arrow's streaming parser is fastest with small (cache-sized) blocks...
CHUNK_ROWS = 1 << 17  # ...which are joined into chunks of this many rows for vectorized work
FALLBACK_ROWS = 65536  # rows per table from the line-by-line parser
ID = "id"

# What the fast path accepts as a number; the fallback parser applies the same rule.
# (ASCII digits only; surrounding blanks are allowed, as Arrow allows them; nan/inf are not numbers)
_NUMBER = re.compile(r"\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*")
# what a broken gzip stream raises while it is read (Python's gzip module)
_DECOMPRESSION_ERRORS = (zlib.error, EOFError, gzip.BadGzipFile)


def parse_number(text: str) -> float | None:
    """The finite float that ``text`` writes, or None when it is not one (the readers' rule for a
    number in text: ``nan``, ``inf`` and ``1e400``, which overflows, are not numbers)."""
    if not _NUMBER.fullmatch(text):
        return None
    value = float(text)
    return value if math.isfinite(value) else None


def number_error(text: str) -> str:
    """What is wrong with a value that :func:`parse_number` refused."""
    finite = "" if not _NUMBER.fullmatch(text) else " (not a finite float64)"
    return f"expected a number, got {text[:40]!r}{finite}"


def describe(message: str, field: str | None) -> str:
    """A bad value's message with its field, as errors and skip lists write it."""
    return f"field {field!r}: {message}" if field else message


class DataError(ValueError):
    """A bad input line: names the file, the line (1-based), the field and what was expected."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str, field: str | None = None,
                 where: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        self.where = where  # a place that is not a line (Parquet: "row group 0, row 3")
        at = f"{self.path}:{line}" if line is not None else self.path
        if where:
            at = f"{at}, {where}"
        super().__init__(f"{at}: {describe(message, field)}")

    def __reduce__(self):  # (pickled whole: the Ray engine's tasks raise it in the driver)
        return DataError, (self.path, self.line, self.reason, self.field, self.where)


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
    """Rows of one file, with the 1-based line number of every row (exact, also when lines were
    skipped) and, under the ``skip`` policy, the lines skipped since the previous chunk of the
    file as (line number, what was wrong). A chunk may hold no rows but skipped lines."""

    table: pa.Table
    path: str
    lines: np.ndarray  # int64[num_rows]
    skipped: list[tuple[int, str]] = field(default_factory=list)
    last_line: int = 0  # the last line this chunk accounts for (a row or a skipped line)

    @property
    def first_line(self) -> int:
        """Line number of the chunk's first row (0 when it has none)."""
        return int(self.lines[0]) if len(self.lines) else 0


@dataclass
class SourceInfo:
    path: str
    bytes: int
    sha256: str | None = None
    rows: int = 0
    skipped: int = 0
    truncated: dict[str, int] = field(default_factory=dict)  # list column -> rows cut to its max_length


# --------------------------------------------------------------------------------------------
# Input resolution and lines (format detection: ctrlab.data.formats)
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
            parquet = [p for p in parts if is_parquet_name(p)]
            if parquet:  # a directory of Parquet parts: its parts, not _SUCCESS or _common_metadata
                parts = parquet
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


PARQUET_SUFFIXES = (".parquet", ".parq", ".parquet.gz", ".parq.gz")


def is_parquet_name(path: str | os.PathLike) -> bool:
    """Whether a file's name says Parquet (``.parquet``/``.parq``, optionally gzipped)."""
    return str(path).lower().endswith(PARQUET_SUFFIXES)


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as fh:
        return fh.read(2) == b"\x1f\x8b"


class MemoryFile:
    """A small file held in memory under a name (an upload): what :func:`iter_lines`,
    :func:`first_line`, format detection and :func:`small_file_rows` read like a path, with no
    file written; messages name it as they name a path."""

    def __init__(self, name: str, data: bytes):
        self.name = name
        self.data = data

    def __str__(self) -> str:
        return self.name


def open_binary(path: str | os.PathLike | MemoryFile) -> Any:
    """Open a plain or gzip file (or a :class:`MemoryFile`) for reading bytes, whatever its
    extension says."""
    if isinstance(path, MemoryFile):
        stream = io.BytesIO(path.data)
        return gzip.GzipFile(fileobj=stream, mode="rb") if path.data[:2] == b"\x1f\x8b" else stream
    path = Path(path)
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def open_text(path: str | os.PathLike) -> io.TextIOBase:
    """Open a plain or gzip file as text (UTF-8), whatever its extension says."""
    return io.TextIOWrapper(open_binary(path), encoding="utf-8-sig", newline="")  # -sig: a byte-order mark is dropped


def iter_lines(path: str | os.PathLike) -> Iterator[tuple[int, str | None, tuple[str, str] | None]]:
    """The physical lines of a plain or gzip file as (1-based number, text, problem), where a
    problem is (reason, message).

    A line ends at ``\n`` (a ``\r\n`` end is one end, and a byte-order mark on line 1 is dropped).
    A line that is not UTF-8 or holds a bare ``\r`` comes with text None and a problem: a bad line,
    numbered like every other. A broken gzip stream raises :class:`DataError` naming the file and
    the last line read whole."""
    line_no = 0
    with open_binary(path) as fh:
        try:
            for raw in fh:
                line_no += 1
                body = raw[:-1] if raw.endswith(b"\n") else raw
                if body.endswith(b"\r"):
                    body = body[:-1]
                if line_no == 1 and body.startswith(b"\xef\xbb\xbf"):
                    body = body[3:]
                try:
                    text = body.decode("utf-8")
                except UnicodeDecodeError as exc:
                    yield line_no, None, ("invalid UTF-8", f"invalid UTF-8 (byte {exc.start + 1} of the line)")
                    continue
                if "\r" in text:
                    yield line_no, None, ("carriage return inside a line", "carriage return (\\r) inside the line")
                    continue
                yield line_no, text, None
        except _DECOMPRESSION_ERRORS as exc:
            raise DataError(path, None, f"corrupt or truncated gzip data after line {line_no} "
                                        f"({type(exc).__name__}: {exc})") from None


def first_line(path: str | os.PathLike) -> str:
    """A file's first line ("" when empty); a bad first line raises DataError."""
    for line_no, text, problem in iter_lines(path):
        if problem is not None:
            raise DataError(path, line_no, problem[1])
        return text  # type: ignore[return-value]
    return ""


# --------------------------------------------------------------------------------------------
# Source hashes, computed beside the parse
# --------------------------------------------------------------------------------------------

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
    types.update({c: pa.float64() for c in schema.labels})
    types.update({c: pa.float64() for c in schema.dense})
    types.update({c: pa.string() for c in schema.sparse})
    types.update({c: pa.string() for c in schema.list_sources})  # made lists by _split_lists
    return types


#: the largest weight of a weighted list value (the store keeps weights as float32)
MAX_WEIGHT = float(np.finfo(np.float32).max)


class _ListValueError(ValueError):
    pass


def split_list_text(raw: pa.Array, separator: str) -> pa.Array | None:
    """Delimited text -> list<string>: the rule for a list field, for files and requests alike
    (null or "" is an empty list); None when some list holds an empty value (``a||b``)."""
    raw = raw.fill_null("")
    parts = pc.split_pattern(raw, separator)
    lengths = np.asarray(pc.list_value_length(parts).fill_null(0), dtype=np.int64)
    empty_field = np.asarray(pc.equal(raw, ""), dtype=bool)
    values = parts.flatten().filter(pa.array(np.repeat(~empty_field, lengths)))  # "" splits into [""]
    if len(values) and pc.any(pc.equal(values, "")).as_py():
        return None
    offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(np.where(empty_field, 0, lengths), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), values.cast(pa.string()))


def columns_to_list(columns: Sequence[pa.Array | pa.ChunkedArray], padding: str | None) -> pa.Array:
    """A block of string columns, oldest to newest -> list<string>: each row's values in column
    order, without the empty (null or "") ones and those equal to ``padding`` (no step)."""
    n, k = len(columns[0]), len(columns)
    if n == 0:
        return pa.array([], type=pa.list_(pa.string()))
    stacked = pa.concat_arrays([c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c for c in columns])
    flat = stacked.cast(pa.string()).take(pa.array((np.arange(k) * n + np.arange(n)[:, None]).ravel()))  # row-major
    keep = pc.and_(pc.is_valid(flat), pc.not_equal(flat, "").fill_null(False))
    if padding is not None:
        keep = pc.and_(keep, pc.not_equal(flat, padding).fill_null(False))
    keep = np.asarray(keep, dtype=bool)
    offsets = np.zeros(n + 1, dtype=np.int32)
    np.cumsum(keep.reshape(n, k).sum(axis=1), out=offsets[1:])
    return pa.ListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))


def keep_last(lists: pa.Array, max_length: int | None) -> tuple[pa.Array, int]:
    """A list array (no nulls) with each list cut to its last (most recent) ``max_length``
    values, and how many lists were cut."""
    offsets = np.asarray(lists.offsets, dtype=np.int64)
    lengths = np.diff(offsets)
    if max_length is None or not (lengths > max_length).any():
        return lists, 0
    kept = np.minimum(lengths, max_length)
    start = offsets[:-1] + (lengths - kept)
    index = np.repeat(start, kept) + (np.arange(int(kept.sum())) - np.repeat(np.cumsum(kept) - kept, kept))
    new_offsets = np.zeros(len(kept) + 1, dtype=np.int32)
    np.cumsum(kept, out=new_offsets[1:])
    cut = pa.ListArray.from_arrays(pa.array(new_offsets), lists.values.take(pa.array(index)))  # (offsets: absolute)
    return cut, int(np.count_nonzero(lengths > max_length))


def _split_lists(table: pa.Table, schema: Schema, info: SourceInfo) -> pa.Table:
    """The list-valued columns (raw text) -> list<string> columns (:func:`split_list_text`),
    plus list<float64> weights (``name`` + WEIGHTS_SUFFIX) where declared; a sequence keeps its
    ``max_length`` most recent values (:func:`keep_last`), the rows cut counted in
    ``info.truncated``. Raises _ListValueError on an empty value inside a list or a weight that
    is not a finite number (the line parser then names the line: :func:`_list_error`). A list
    built from ``columns`` takes their values (:func:`columns_to_list`) and replaces them."""
    for column in schema.lists:
        if column.columns is not None:
            parts = columns_to_list([table.column(c) for c in column.columns], column.padding)
            position = table.column_names.index(column.columns[0])
            table = table.drop_columns(list(column.columns)).add_column(position, column.name, parts)
        else:
            parts = split_list_text(table.column(column.name).combine_chunks(), column.separator)
        if parts is None:
            raise _ListValueError(f"empty value in list column {column.name!r}")
        weights = None
        if column.weight_separator is not None:
            pairs = pc.split_pattern(parts.values, column.weight_separator, max_splits=1, reverse=True)
            has_weight = np.asarray(pc.list_value_length(pairs)) == 2
            texts = pc.list_element(pairs.filter(pa.array(has_weight)), 1)
            weight_values = np.ones(len(pairs), dtype=np.float64)
            try:
                parsed = pc.cast(texts, pa.float64()).to_numpy(zero_copy_only=False)
            except pa.ArrowInvalid as exc:
                raise _ListValueError(str(exc)) from None
            if not (np.abs(parsed) <= MAX_WEIGHT).all():  # (NaN fails too)
                raise _ListValueError(f"a weight in list column {column.name!r} is not a finite float32")
            weight_values[has_weight] = parsed
            weights = pa.ListArray.from_arrays(parts.offsets, pa.array(weight_values, type=pa.float64()))
            parts = pa.ListArray.from_arrays(parts.offsets, pc.list_element(pairs, 0))
            if len(parts.values) and pc.any(pc.equal(parts.values, "")).as_py():  # (":0.7")
                raise _ListValueError(f"a weight without a value in list column {column.name!r}")
            weights, _ = keep_last(weights, column.max_length)  # (the same values as the names below)
        parts, cut = keep_last(parts, column.max_length)
        if cut:
            info.truncated[column.name] = info.truncated.get(column.name, 0) + cut
        table = table.set_column(table.column_names.index(column.name), column.name, parts)
        if weights is not None:
            table = table.append_column(column.name + WEIGHTS_SUFFIX, weights)
    return table


def _list_error(fields: list[str], schema: Schema) -> tuple[str, str, str | None] | None:
    """The line parser's rules for list columns (the same as :func:`_split_lists`)."""
    index = _column_index(tuple(schema.columns))
    for column in schema.lists:
        if column.columns is not None:  # (one value per column: nothing to split)
            continue
        text = fields[index[column.name]]
        if text == "":
            continue
        for value in text.split(column.separator):
            if value == "":
                return "bad list", f"empty value in the list {text[:40]!r}", column.name
            if column.weight_separator is not None and column.weight_separator in value:
                name, weight = value.rsplit(column.weight_separator, 1)
                number = parse_number(weight)
                if number is None or abs(number) > MAX_WEIGHT:
                    return "bad list", f"expected a number (float32) as the weight of {value[:40]!r}", column.name
                if name == "":
                    return "bad list", f"a weight without a value: {value[:40]!r}", column.name
    return None


def _canonical(table: pa.Table, schema: Schema) -> pa.Table:
    """Select and rename to canonical columns: id, label, dense..., sparse..., lists (as text, or
    the source columns of a list built from columns)."""
    names, arrays = [], []
    if schema.id_column:
        names.append(ID)
        arrays.append(table.column(schema.id_column))
    for i, col in enumerate(schema.labels):
        names.append(task_column(i))
        arrays.append(table.column(col))
    for col in schema.dense + schema.sparse + schema.list_sources:
        names.append(col)
        arrays.append(table.column(col))
    return pa.Table.from_arrays(arrays, names=names)


def _check_rows(table: pa.Table, path: str, first_line_no: int, bad_lines: str, report: SkipReport,
                info: SourceInfo, schema: Schema) -> Chunk:
    """What Arrow's parser lets through but ctrlab does not accept, row by row, vectorized: a
    label other than 0/1, a count written as nan or inf (or overflowing, 1e400). Under ``error``
    the first such row raises; under ``skip`` the rows go, counted and listed in the chunk. Line
    numbers are exact: every Arrow row is one line (an empty line, which Arrow makes a row of
    nulls, sends the file to the line parser)."""
    n = table.num_rows
    lines = np.arange(first_line_no, first_line_no + n, dtype=np.int64)
    # a column without nulls rules out empty lines: null counts are metadata, so the usual table
    # skips the per-column masks (40 columns: ~0.5 ms of a 5-line upload's ~2-3 ms in process)
    if all(column.null_count for column in table.columns):
        empty = np.ones(n, dtype=bool)
        for col in table.column_names:
            empty &= np.asarray(table.column(col).is_null())
        if empty.any():
            raise _FallbackNeeded(f"empty line at line {first_line_no + int(np.flatnonzero(empty)[0])}")
    problems: list[tuple[np.ndarray, str, str | None, Callable[[int], str]]] = []
    for k, name in enumerate(schema.labels):
        col = task_column(k)
        if col not in table.column_names:
            continue
        labels = table.column(col).to_numpy()
        bad = ~((labels == 0.0) | (labels == 1.0))  # NaN (missing label) is bad too ...
        if name in schema.optional_labels:
            bad &= np.asarray(table.column(col).is_valid())  # ... unless this label may be missing
        if bad.any():
            def label_reason(i: int, c=col) -> str:
                value = table.column(c)[i].as_py()
                return f"expected a 0/1 label, got {'empty' if value is None else repr(value)}"
            problems.append((bad, "label not 0/1", LABEL if not schema.more_labels else name, label_reason))
    for col in schema.dense:
        values = table.column(col).to_numpy()
        bad = ~np.isfinite(values) & np.asarray(table.column(col).is_valid())
        if bad.any():
            problems.append((bad, "not a number", col,
                             lambda i, c=col: number_error(str(table.column(c)[i].as_py()))))
    last = first_line_no + n - 1
    if schema.lists:
        try:
            table = _split_lists(table, schema, info)
        except _ListValueError as exc:  # the line parser names the line
            raise _FallbackNeeded(str(exc)) from None
    if not problems:
        return Chunk(table, path, lines, [], last)
    if bad_lines == "error":
        idx, col = min((int(np.flatnonzero(mask)[0]), col) for mask, _, col, _ in problems)
        reason_fn = next(fn for mask, _, c, fn in problems if c == col and mask[idx])
        raise DataError(path, first_line_no + idx, reason_fn(idx), field=col)
    drop = np.zeros(n, dtype=bool)
    skipped: list[tuple[int, str]] = []
    for mask, reason, col, reason_fn in problems:
        fresh = mask & ~drop
        if fresh.any():
            rows = np.flatnonzero(fresh)
            report.add(reason, f"{path}:{first_line_no + int(rows[0])}", n=len(rows))
            info.skipped += len(rows)
            skipped += [(first_line_no + int(i), describe(reason_fn(int(i)), col)) for i in rows]
        drop |= mask
    skipped.sort()
    return Chunk(table.filter(pa.array(~drop)), path, lines[~drop], skipped, last)  # (lists split above)


class _FallbackNeeded(Exception):
    pass


def _fast_delimited(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo,
                    block_bytes: int, chunk_rows: int) -> Iterator[Chunk]:
    header_lines = 1 if schema.header else 0
    # a file of one block (a small upload) is read in this thread: starting the hash and prefetch
    # threads costs more than they overlap (5-line upload: 13 -> 4 ms)
    small = info.bytes <= block_bytes
    digest = None if small else _BackgroundHash(path)
    stream: Any = pa.OSFile(str(path))
    if _is_gzip(path):
        stream = pa.CompressedInputStream(stream, "gzip")
    types = _output_types(schema)
    try:
        reader = _open_arrow_csv(stream, schema, header_lines, block_bytes, types)
    except (pa.ArrowInvalid, OSError) as exc:
        raise _FallbackNeeded(str(exc)) from exc
    next_line = header_lines + 1
    batches = _joined_batches(reader, schema, chunk_rows)
    for table in batches if small else prefetch(batches):
        chunk = _check_rows(table, str(path), next_line, bad_lines, report, info, schema)
        next_line += table.num_rows
        info.rows += chunk.table.num_rows
        yield chunk
    info.sha256 = digest.result() if digest else sha256_file(path)
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
        except (pa.ArrowInvalid, OSError) as exc:  # a bad line, bad UTF-8, a broken gzip stream...
            raise _FallbackNeeded(str(exc)) from exc  # ...which the line parser names exactly
        batches.append(batch)
        pending += batch.num_rows
        if pending >= rows:
            yield _canonical(pa.Table.from_batches(batches), schema)
            batches, pending = [], 0
    if batches:
        yield _canonical(pa.Table.from_batches(batches), schema)


def _open_arrow_csv(stream, schema: Schema, header_lines: int, block_bytes: int, types):
    return pa_csv.open_csv(
        stream,
        read_options=pa_csv.ReadOptions(column_names=list(schema.columns), skip_rows=header_lines,
                                        block_size=block_bytes, use_threads=True),
        parse_options=pa_csv.ParseOptions(delimiter=schema.delimiter, quote_char='"' if schema.quoted else False,
                                          ignore_empty_lines=False),  # a bad line: the line parser
        convert_options=pa_csv.ConvertOptions(column_types=types, include_columns=list(types),
                                              null_values=[""], strings_can_be_null=True,
                                              quoted_strings_can_be_null=True),
    )


@functools.lru_cache(maxsize=64)
def _column_index(columns: tuple[str, ...]) -> dict[str, int]:
    return {c: i for i, c in enumerate(columns)}


def _line_error(fields: list[str], schema: Schema) -> tuple[str, str, str | None] | None:
    """Why a split line is bad (reason, message, field), or None. The same rules and reason
    names as the fast path (Arrow's parser + _check_rows)."""
    expected = len(schema.columns)
    if not fields or (len(fields) == 1 and fields[0].strip() == ""):
        return "empty line", "empty line", None
    if len(fields) != expected:
        reason = f"wrong field count (got {len(fields)}, expected {expected})"
        return reason, reason, None
    index = _column_index(tuple(schema.columns))
    for name in schema.labels:
        value = fields[index[name]]
        label = parse_number(value)
        if label not in (0.0, 1.0) and not (value == "" and name in schema.optional_labels):
            # (a number is shown as the fast path shows it: 2 -> 2.0)
            shown = repr(label) if label is not None else repr(value[:40]) if value else "empty"
            return "label not 0/1", f"expected a 0/1 label, got {shown}", name
    for col in schema.dense:
        value = fields[index[col]]
        if value != "" and parse_number(value) is None:
            return "not a number", number_error(value), col
    return None


def _split_line(text: str, schema: Schema) -> list[str]:
    """One physical line's fields (a quoted field does not span lines: one row is one line)."""
    if schema.quoted:
        return next(csv.reader([text], delimiter=schema.delimiter), [])
    return text.split(schema.delimiter)


class _ChunkBuilder:
    """Rows, their line numbers and the skipped lines of the chunk being built (line parsers)."""

    def __init__(self, path: Path, bad_lines: str, report: SkipReport, info: SourceInfo):
        self.path, self.bad_lines, self.report, self.info = path, bad_lines, report, info
        self.lines: list[int] = []
        self.skipped: list[tuple[int, str]] = []
        self.last_line = 0

    def bad(self, line_no: int, reason: str, message: str, col: str | None) -> None:
        """A bad line: raises under ``error``; else counted and listed."""
        if self.bad_lines == "error":
            raise DataError(self.path, line_no, message, field=col)
        self.report.add(reason, f"{self.path}:{line_no}")
        self.info.skipped += 1
        self.skipped.append((line_no, describe(message, col)))
        self.last_line = line_no

    def good(self, line_no: int) -> None:
        self.lines.append(line_no)
        self.last_line = line_no
        self.info.rows += 1

    def take(self, table: pa.Table) -> Chunk:
        chunk = Chunk(table, str(self.path), np.array(self.lines, dtype=np.int64), self.skipped, self.last_line)
        self.lines, self.skipped = [], []
        return chunk

    @property
    def pending(self) -> bool:
        return bool(self.lines or self.skipped)


def _checked_lines(path: Path, schema: Schema, resume_after: int = 0
                   ) -> Iterator[tuple[int, list[str], tuple[str, str, str | None] | None]]:
    """The line parser's rules, line by line after the header (and after line ``resume_after``):
    (line number, fields, None) for a good line, (line number, [], (reason, message, field)) for
    a bad one."""
    header_lines = 1 if schema.header else 0
    for line_no, text, problem in iter_lines(path):
        if line_no <= max(header_lines, resume_after):
            continue
        fields = _split_line(text, schema) if text is not None else []
        error = (*problem, None) if problem is not None else _line_error(fields, schema)
        if error is None and schema.lists:
            error = _list_error(fields, schema)
        yield line_no, fields, error


def _slow_delimited(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo,
                    resume_after: int = 0) -> Iterator[Chunk]:
    """Line-by-line parser: exact line numbers for every row and bad line; used when the fast
    path meets a line it cannot take. Lines up to ``resume_after`` were delivered already."""
    index = {c: i for i, c in enumerate(schema.columns)}
    out_cols = list(_output_types(schema))
    types = _output_types(schema)
    rows: list[list[str]] = []
    builder = _ChunkBuilder(path, bad_lines, report, info)
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
        if schema.lists:  # (every list passed _list_error: this cannot fail)
            table = _split_lists(table, schema, info)
        rows.clear()
        return builder.take(table)

    for line_no, fields, error in _checked_lines(path, schema, resume_after):
        if error is not None:
            builder.bad(line_no, *error)
            continue
        builder.good(line_no)
        rows.append([fields[index[c]] for c in out_cols])
        if len(rows) >= FALLBACK_ROWS:
            yield flush()
    if builder.pending:
        yield flush()


def small_file_rows(path: str | os.PathLike | MemoryFile, schema: Schema, columns: Sequence[str],
                    max_rows: int) -> tuple[list[list[float | str | None]], list[int]] | None:
    """The rows of a small delimited file as values in ``columns`` order (float for the schema's
    dense columns, str for the others, None for missing: what the line parser's tables hold), with
    each row's line number: the line parser's rules, its first bad line raising the
    :class:`DataError` that ``RowReader(bad_lines="error")`` raises. For a request of a few rows
    (a small upload) that goes on to the small-request lane with no Arrow table and no reader
    threads. None when the file is not delimited or holds more than ``max_rows`` rows (then
    :class:`RowReader` reads it)."""
    if schema.format != "delimited" or schema.lists:  # (slot, kv, parquet, libsvm...; list columns: the reader's tables)
        return None
    index = [schema.columns.index(c) for c in columns]
    dense = set(schema.dense)
    numeric = [c in dense for c in columns]
    rows: list[list[float | str | None]] = []
    lines: list[int] = []
    for line_no, fields, error in _checked_lines(path, schema):
        if error is not None:
            raise DataError(path, line_no, error[1], field=error[2])
        if len(rows) == max_rows:
            return None
        values = [fields[i] for i in index]  # (dense values are numbers here: _line_error checked them)
        rows.append([(float(v) if is_number else v) if v != "" else None for v, is_number in zip(values, numeric)])
        lines.append(line_no)
    return rows, lines


def _read_delimited(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo,
                    block_bytes: int, chunk_rows: int) -> Iterator[Chunk]:
    delivered_through = 0  # the last line of the chunks the fast path delivered
    try:
        for chunk in _fast_delimited(path, schema, bad_lines, report, info, block_bytes, chunk_rows):
            delivered_through = chunk.last_line
            yield chunk
        return
    except _FallbackNeeded as exc:
        fast_error = str(exc)
    # The fast path hit a line it cannot take. Re-read the rest of this file line by line: under
    # "error" that names the first bad line exactly; under "skip" it skips exactly the bad lines.
    yield from _slow_delimited(path, schema, bad_lines, report, info, resume_after=delivered_through)
    if bad_lines == "error":  # the line parser found nothing wrong, but Arrow did
        raise DataError(path, None, f"could not parse: {fast_error}")


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
    builder = _ChunkBuilder(path, bad_lines, report, info)
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
                label = parse_number(value)
                if label not in (0.0, 1.0):
                    return f"expected a 0/1 label, got {value[:40]!r}", LABEL
            elif key == "dense_feature":
                number = parse_number(value)
                if number is None:
                    return (number_error(value),
                            schema.dense[min(len(dense), n_dense - 1)] if n_dense else None)
                dense.append(number)
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
        labels.clear(), dense_rows.clear()
        for values in sparse_cols.values():
            values.clear()
        return builder.take(pa.Table.from_arrays(arrays, names=names))

    for line_no, line, problem in iter_lines(path):
        if problem is not None:
            builder.bad(line_no, *problem, None)
            continue
        parsed = parse(line)  # type: ignore[arg-type]
        if len(parsed) == 2:
            message, col = parsed  # type: ignore[misc]
            builder.bad(line_no, message, message, col)
            continue
        label, dense, sparse = parsed  # type: ignore[misc]
        builder.good(line_no)
        if schema.label:
            labels.append(label)  # type: ignore[arg-type]
        dense_rows.append(dense)
        for name in schema.sparse:
            sparse_cols[name].append(sparse.get(name))
        if len(dense_rows) >= FALLBACK_ROWS:
            yield flush()
    if builder.pending:
        yield flush()


def _read_kv(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo) -> Iterator[Chunk]:
    """``key:value`` tokens separated by ``schema.delimiter`` (a space: any run of whitespace), after
    the ``schema.positional`` fields, if any.

    PaddleRec's BST sample: ``userid:3 history:12 history:7 cate:5 cate:5 ... target:9 label:0``.
    Ali-CCP (PaddleRec's esmm/escm2 sample), comma-separated with three positional fields:
    ``sample_id,click,conversion,210:1,210:2,216:4,...,150_14:18,150_14:19,...``.

    A positional field is taken by its position (empty: a missing value); a line with fewer fields
    than the positional ones is bad. A list column's key repeats once per value, in order (a
    sequence or multi column keeps its last ``max_length`` values, cut rows counted); another key at
    most once (nor may it repeat a positional field); an absent key is a missing value or an empty
    list. An unknown or repeated key, a token without ``:`` or with an empty key or value, an empty
    token (``a:1,,b:2``), a label other than 0/1 (or absent, unless optional) or a dense value that
    is not a number is a bad line naming the file, line and field. Without labels (scoring input)
    the lines carry none."""
    lists = {c.name: c for c in schema.lists}
    positional = schema.positional
    singles = {c for c in (*schema.labels, schema.id_column, *schema.dense, *schema.sparse) if c is not None}
    keyed = sorted((singles - set(positional)) | set(lists))
    whitespace = schema.delimiter.strip() == ""
    task_of = {name: task_column(i) for i, name in enumerate(schema.labels)}

    def parse(line: str) -> tuple[dict[str, Any], None] | tuple[str, str | None]:
        row: dict[str, Any] = {c: [] for c in lists}
        fields = line.split() if whitespace else [f.strip() for f in line.split(schema.delimiter)]
        if len(fields) < len(positional):
            return (f"expected {len(positional)} leading fields ({', '.join(positional)}) before the key:value "
                    f"tokens, got {len(fields)}"), None
        for name, value in zip(positional, fields):
            row[name] = value if value != "" else None
        for token in fields[len(positional):]:
            key, sep, value = token.partition(":")
            if not sep or value == "" or key == "":
                return f"expected key:value, got {token[:40]!r}", None
            if key in lists:
                row[key].append(value)
            elif key in singles:
                if key in row:
                    where = "a positional field" if key in positional else "only list columns repeat"
                    return f"key {key!r} appears twice ({where})", key
                row[key] = value
            else:
                shown = ", ".join(keyed[:12]) + (", ..." if len(keyed) > 12 else "")
                return f"unknown key {key!r} (expected {shown})", key
        for name, column in task_of.items():
            label = row.pop(name, None)
            number = None if label is None else parse_number(label)
            if number not in (0.0, 1.0):
                if label is None and name in schema.optional_labels:
                    row[column] = None
                    continue
                return f"expected a 0/1 label, got {'none' if label is None else repr(label[:40])}", name
            row[column] = number
        if schema.id_column:
            row[ID] = row.pop(schema.id_column, None)
        for col in schema.dense:
            if row.get(col) is not None:
                number = parse_number(row[col])
                if number is None:
                    return number_error(row[col]), col
                row[col] = number
        return row, None

    yield from read_token_lines(path, schema, bad_lines, report, info, parse, "bad key:value line")


def read_token_lines(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo,
                     parse: Callable[[str], Any], reason: str) -> Iterator[Chunk]:
    """Lines -> chunks of canonical columns (label, dense, sparse, lists, list weights) through
    ``parse(text)``, which returns (row, None) or (message, field): a dict keyed by the canonical
    columns (id, the labels' task columns, dense, sparse, lists and list weights). Lists keep their
    last ``max_length`` values (the rows cut counted in ``info.truncated``). The one line loop of
    the token formats (kv here; libsvm, libffm and PaddleRec's in their modules)."""
    builder = _ChunkBuilder(path, bad_lines, report, info)
    info.sha256 = sha256_file(path)
    info.bytes = path.stat().st_size
    weighted = [c.name for c in schema.lists if c.weight_separator is not None]
    tasks = [task_column(i) for i in range(len(schema.labels))]
    out_cols = [*([ID] if schema.id_column else []), *tasks, *schema.dense, *schema.sparse, *schema.list_names,
                *(n + WEIGHTS_SUFFIX for n in weighted)]
    types = {ID: pa.string(), **{t: pa.float64() for t in tasks}, **{c: pa.float64() for c in schema.dense},
             **{c: pa.string() for c in schema.sparse},
             **{c: pa.list_(pa.string()) for c in schema.list_names},
             **{n + WEIGHTS_SUFFIX: pa.list_(pa.float64()) for n in weighted}}
    columns: dict[str, list[Any]] = {c: [] for c in out_cols}
    pending = 0

    def flush() -> Chunk:
        arrays = [pa.array(columns[c], type=types[c]) for c in out_cols]
        for c in out_cols:
            columns[c] = []
        return builder.take(pa.Table.from_arrays(arrays, names=out_cols))

    for line_no, text, problem in iter_lines(path):
        if problem is not None:
            builder.bad(line_no, problem[0], problem[1], None)
            continue
        if not text.strip():
            builder.bad(line_no, "empty line", "empty line", None)
            continue
        row, field = parse(text)
        if isinstance(row, str):
            builder.bad(line_no, reason, row, field)
            continue
        for column in schema.lists:
            values = row[column.name]
            if column.max_length is not None and len(values) > column.max_length:
                info.truncated[column.name] = info.truncated.get(column.name, 0) + 1
                row[column.name] = values[-column.max_length:]
                if column.name in weighted:
                    row[column.name + WEIGHTS_SUFFIX] = row[column.name + WEIGHTS_SUFFIX][-column.max_length:]
        builder.good(line_no)
        for c in out_cols:
            columns[c].append(row.get(c))
        pending += 1
        if pending >= FALLBACK_ROWS:
            pending = 0
            yield flush()
    if builder.pending:
        yield flush()



class RowReader:
    """Iterate over the rows of one or more files of one layout, chunk by chunk.

    After iteration, ``sources`` holds per-file sizes, sha256 and row counts and ``skipped``
    the lines dropped under the ``skip`` policy. ``chunk_rows``: rows per chunk of delimited
    files (whole Arrow blocks are joined until at least this many; default ``CHUNK_ROWS``;
    line-parsed and slot files keep their own sizes).
    """

    def __init__(self, paths: Iterable[str | os.PathLike], schema: Schema, *, bad_lines: str = "error",
                 block_bytes: int = BLOCK_BYTES, chunk_rows: int | None = None):
        if bad_lines not in ("error", "skip"):
            raise ValueError(f"bad_lines must be 'error' or 'skip', got {bad_lines!r}")
        self.paths = [Path(p) for p in paths]
        self.schema = schema
        self.bad_lines = bad_lines
        self.block_bytes = block_bytes
        self.chunk_rows = CHUNK_ROWS if chunk_rows is None else chunk_rows
        self.skipped = SkipReport()
        self.sources: list[SourceInfo] = []

    def __iter__(self) -> Iterator[Chunk]:
        for path in self.paths:
            info = SourceInfo(str(path), path.stat().st_size)
            self.sources.append(info)
            if self.schema.format == "slot":
                yield from _read_slot(path, self.schema, self.bad_lines, self.skipped, info)
            elif self.schema.format in _OTHER_READERS:
                yield from _other_reader(self.schema.format)(path, self.schema, self.bad_lines, self.skipped, info)
            elif self.schema.format == "kv":
                yield from _read_kv(path, self.schema, self.bad_lines, self.skipped, info)
            else:
                yield from _read_delimited(path, self.schema, self.bad_lines, self.skipped, info, self.block_bytes,
                                           self.chunk_rows)


# formats with a module of their own (imported when first used): format -> (module, reader function)
_OTHER_READERS = {
    "parquet": ("parquet", "read_parquet"),
    "libsvm": ("libsvm", "read_libsvm"),
    "libffm": ("libsvm", "read_libffm"),
    "feat_idx": ("paddle_formats", "read_feat_idx"),
    "feasign": ("paddle_formats", "read_feasign"),
}


def _other_reader(fmt: str) -> Callable[..., Iterator[Chunk]]:
    import importlib

    module, function = _OTHER_READERS[fmt]
    return getattr(importlib.import_module(f"{__package__}.{module}"), function)
