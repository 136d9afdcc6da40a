"""Parquet input (``data.format: parquet``; detected from ``.parquet``/``.parq`` or the file's
``PAR1`` magic): one file, or a directory of part files (its ``*.parquet``/``*.parq`` files, in
name order). A whole gzip-compressed file (``x.parquet.gz``) is unpacked to a temporary file first.

Column names come from the file; their roles from ``data.schema`` (label(s), id_column, dense,
sparse, lists; sparse defaults to every other column). The file is read one row group at a time
(memory bounded by a row group) and the column types are checked against the roles:

* a label: a numeric or boolean column, every value 0 or 1 (null: bad, unless the label is in
  ``optional_labels``);
* a dense column: numeric or boolean (null = missing), or strings that write numbers (a value that
  does not: a bad row); nan/inf are bad rows;
* a sparse or id column: any scalar type, read as its text (``17``, ``abc``);
* a list column: a Parquet list (list<string>, list<int>, ...; null = empty list, a null element
  a bad row) or a delimited string (``separator``, and weights with ``weight_separator``: the text
  rules of CSV lists). A list column with weights must be a delimited string.

A column of the wrong type is an error naming the file and column; a bad value names the file,
row group and row (both from 0) and column: ``part-0.parquet, row group 1, row 3: field 'label':
expected a 0/1 label, got 2.0``. ``bad_lines: skip`` drops and counts those rows. Chunk line
numbers are row numbers in the file, from 1.
"""

from __future__ import annotations

import gzip
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..fileio import sha256_file
from ..schema import WEIGHTS_SUFFIX, Schema, task_column
from .readers import (ID, MAX_WEIGHT, Chunk, DataError, MemoryFile, SkipReport, SourceInfo, _is_gzip, _split_lists,
                      describe, keep_last, number_error, parse_number)

_NUMBER_RE = r"^\s*[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?\s*$"


class _Opened:
    """A Parquet file opened for reading (a gzip-compressed one unpacked to a temp file; a
    MemoryFile read from its bytes)."""

    def __init__(self, path: str | Path | MemoryFile):
        self.tmp = None
        in_memory = isinstance(path, MemoryFile)
        source: Any = pa.BufferReader(path.data) if in_memory else str(path)
        if not in_memory and _is_gzip(path):
            self.tmp = tempfile.TemporaryFile()
            try:
                with gzip.open(path, "rb") as fh:
                    shutil.copyfileobj(fh, self.tmp)
            except (OSError, EOFError) as exc:
                self.tmp.close()
                raise DataError(path, None, f"corrupt or truncated gzip data ({type(exc).__name__}: {exc})") from None
            self.tmp.seek(0)
            source = self.tmp
        try:
            self.file = pq.ParquetFile(source)
        except (pa.ArrowException, OSError) as exc:
            self.close()
            raise DataError(path, None, f"not a readable Parquet file ({exc})") from None

    def close(self) -> None:
        if self.tmp is not None:
            self.tmp.close()
            self.tmp = None


def parquet_columns(path: str | Path | MemoryFile) -> list[str]:
    """The column names of a Parquet file."""
    opened = _Opened(path)
    try:
        return list(opened.file.schema_arrow.names)
    finally:
        opened.close()


def parquet_rows(path: str | Path | MemoryFile) -> int:
    """The row count of a Parquet file, from its footer (no data read; a DataError when the
    footer cannot be read, a truncated file say)."""
    opened = _Opened(path)
    try:
        return opened.file.metadata.num_rows
    finally:
        opened.close()


def _is_numeric(tp: pa.DataType) -> bool:
    return pa.types.is_integer(tp) or pa.types.is_floating(tp) or pa.types.is_boolean(tp) or pa.types.is_decimal(tp)


def _is_scalar(tp: pa.DataType) -> bool:
    return not (pa.types.is_nested(tp) or pa.types.is_binary(tp) or pa.types.is_large_binary(tp))


def _is_text(tp: pa.DataType) -> bool:
    return pa.types.is_string(tp) or pa.types.is_large_string(tp)


def _is_list(tp: pa.DataType) -> bool:
    return pa.types.is_list(tp) or pa.types.is_large_list(tp) or pa.types.is_fixed_size_list(tp)


def _check_types(path: Path, arrow_schema: pa.Schema, schema: Schema) -> None:
    names = set(arrow_schema.names)
    for col in (*schema.labels, *schema.dense, *schema.sparse, *schema.list_sources,
                *([schema.id_column] if schema.id_column else [])):
        if col not in names:
            raise DataError(path, None, f"no such column (the file's columns: {', '.join(arrow_schema.names)})",
                            field=col)
    kinds = [(c, _is_numeric, "a numeric or boolean column (a 0/1 label)") for c in schema.labels]
    kinds += [(c, lambda t: _is_numeric(t) or _is_text(t), "a numeric column (or numbers as text)")
              for c in schema.dense]
    kinds += [(c, _is_scalar, "a scalar column (categorical)") for c in schema.sparse]
    if schema.id_column:
        kinds.append((schema.id_column, _is_scalar, "a scalar column (the row id)"))
    for column in schema.lists:
        if column.weight_separator is not None:
            kinds.append((column.name, _is_text, "a delimited string column (a list with weights)"))
        else:
            kinds.append((column.name, lambda t: _is_text(t) or (_is_list(t) and _is_scalar(t.value_type)),
                          "a list column (list<string>, list<int>...) or a delimited string"))
    for col, ok, expected in kinds:
        tp = arrow_schema.field(col).type
        if not ok(tp):
            raise DataError(path, None, f"column type {tp}, expected {expected}", field=col)


def _as_text(array: pa.ChunkedArray | pa.Array) -> pa.Array:
    array = array.combine_chunks() if isinstance(array, pa.ChunkedArray) else array
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array if pa.types.is_string(array.type) else pc.cast(array, pa.string())


Problem = tuple[np.ndarray, str, str, Callable[[int], str]]


def _labels(table: pa.Table, schema: Schema, problems: list[Problem]) -> dict[str, pa.Array]:
    out = {}
    for k, name in enumerate(schema.labels):
        col = table.column(name).combine_chunks()
        values = pc.cast(col, pa.float64())
        arr = values.to_numpy(zero_copy_only=False)
        bad = ~((arr == 0.0) | (arr == 1.0))
        if name in schema.optional_labels:
            bad &= np.asarray(values.is_valid())
        if bad.any():
            problems.append((bad, "label not 0/1", name, lambda i, v=values: (
                f"expected a 0/1 label, got {'empty' if v[i].as_py() is None else repr(v[i].as_py())}")))
        out[task_column(k)] = values
    return out


def _dense(table: pa.Table, col: str, problems: list[Problem]) -> pa.Array:
    raw = table.column(col).combine_chunks()
    if _is_text(raw.type):
        text = raw.cast(pa.string())
        ok = pc.match_substring_regex(text, _NUMBER_RE).fill_null(True)
        bad = ~np.asarray(ok, dtype=bool)
        if bad.any():
            problems.append((bad, "not a number", col, lambda i, t=text: number_error(t[i].as_py())))
        values = pc.cast(pc.if_else(ok, text, pa.scalar(None, pa.string())), pa.float64())
    else:
        values = pc.cast(raw, pa.float64())
    arr = values.to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(arr) & np.asarray(values.is_valid())
    if bad.any():
        problems.append((bad, "not a number", col, lambda i, v=values: number_error(str(v[i].as_py()))))
    return values


def _list_text_problems(text: pa.Array, column, problems: list[Problem]) -> None:
    """Rows of a delimited list column that the CSV list rules refuse (an empty value, a bad weight)."""
    bad = np.zeros(len(text), dtype=bool)
    reasons: dict[int, str] = {}
    for i, value in enumerate(text.to_pylist()):
        if not value:
            continue
        for item in value.split(column.separator):
            message = None
            if item == "":
                message = f"empty value in the list {value[:40]!r}"
            elif column.weight_separator is not None and column.weight_separator in item:
                name, weight = item.rsplit(column.weight_separator, 1)
                number = parse_number(weight)
                if number is None or abs(number) > MAX_WEIGHT:
                    message = f"expected a number (float32) as the weight of {item[:40]!r}"
                elif name == "":
                    message = f"a weight without a value: {item[:40]!r}"
            if message:
                bad[i] = True
                reasons[i] = message
                break
    if bad.any():
        problems.append((bad, "bad list", column.name, lambda i: reasons[i]))


def _list_column(table: pa.Table, column, info: SourceInfo, problems: list[Problem]) -> tuple[pa.Array, pa.Array | None]:
    raw = table.column(column.name).combine_chunks()
    if _is_list(raw.type):
        lists = raw.cast(pa.list_(raw.type.value_type)) if not pa.types.is_list(raw.type) else raw
        lists = lists.fill_null(pa.scalar([], type=lists.type)) if lists.null_count else lists
        values = _as_text(lists.flatten())
        if values.null_count:
            owner = np.repeat(np.arange(len(lists)), np.asarray(pc.list_value_length(lists).fill_null(0)))
            bad = np.zeros(len(lists), dtype=bool)
            bad[owner[np.asarray(values.is_null())]] = True
            problems.append((bad, "bad list", column.name, lambda i: "a null value inside the list"))
            values = values.fill_null("")
        offsets = np.asarray(pc.list_value_length(lists), dtype=np.int64)
        starts = np.zeros(len(offsets) + 1, dtype=np.int32)
        np.cumsum(offsets, out=starts[1:])
        parts = pa.ListArray.from_arrays(pa.array(starts), values)
        parts, cut = keep_last(parts, column.max_length)
        if cut:
            info.truncated[column.name] = info.truncated.get(column.name, 0) + cut
        return parts, None
    text = raw.cast(pa.string())
    before = len(problems)
    _list_text_problems(text, column, problems)
    if len(problems) > before:  # blank the bad rows (they are dropped or raise) so the rest splits
        text = pc.if_else(pa.array(~problems[-1][0]), text, pa.scalar(None, pa.string()))
    mini = Schema("parquet", "parquet", (column.name,), None, (), (), lists=(column,))
    split = _split_lists(pa.table({column.name: text}), mini, info)
    weights = split.column(column.name + WEIGHTS_SUFFIX).combine_chunks() if column.weight_separator else None
    return split.column(column.name).combine_chunks(), weights


def read_parquet(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo) -> Iterator[Chunk]:
    opened = _Opened(path)
    try:
        pf = opened.file
        _check_types(path, pf.schema_arrow, schema)
        needed = list(dict.fromkeys(c for c in (*([schema.id_column] if schema.id_column else []), *schema.labels,
                                                *schema.dense, *schema.sparse, *schema.list_sources)))
        row_offset = 0
        for group in range(pf.num_row_groups):
            try:
                table = pf.read_row_group(group, columns=needed)
            except (pa.ArrowException, OSError) as exc:
                raise DataError(path, None, f"cannot read ({exc})", where=f"row group {group}") from None
            yield _chunk(path, table, group, row_offset, schema, bad_lines, report, info)
            row_offset += table.num_rows
    finally:
        opened.close()
    info.sha256 = sha256_file(path)
    info.bytes = path.stat().st_size


def _chunk(path: Path, table: pa.Table, group: int, row_offset: int, schema: Schema, bad_lines: str,
           report: SkipReport, info: SourceInfo) -> Chunk:
    n = table.num_rows
    problems: list[Problem] = []
    names: list[str] = []
    arrays: list[pa.Array] = []
    if schema.id_column:
        names.append(ID)
        arrays.append(_as_text(table.column(schema.id_column)))
    for name, values in _labels(table, schema, problems).items():
        names.append(name)
        arrays.append(values)
    for col in schema.dense:
        names.append(col)
        arrays.append(_dense(table, col, problems))
    for col in schema.sparse:
        names.append(col)
        arrays.append(_as_text(table.column(col)))
    weight_cols: list[tuple[str, pa.Array]] = []
    for column in schema.lists:
        parts, weights = _list_column(table, column, info, problems)
        names.append(column.name)
        arrays.append(parts)
        if weights is not None:
            weight_cols.append((column.name + WEIGHTS_SUFFIX, weights))
    for name, weights in weight_cols:
        names.append(name)
        arrays.append(weights)
    out = pa.Table.from_arrays(arrays, names=names)
    lines = np.arange(row_offset + 1, row_offset + n + 1, dtype=np.int64)
    last = row_offset + n
    if not problems:
        info.rows += n
        return Chunk(out, str(path), lines, [], last)
    if bad_lines == "error":
        row, col = min((int(np.flatnonzero(mask)[0]), col) for mask, _, col, _ in problems)
        message = next(fn for mask, _, c, fn in problems if c == col and mask[row])(row)
        raise DataError(path, None, message, field=col, where=f"row group {group}, row {row}")
    drop = np.zeros(n, dtype=bool)
    skipped: list[tuple[int, str]] = []
    for mask, reason, col, fn in problems:
        fresh = mask & ~drop
        for i in np.flatnonzero(fresh):
            report.add(reason, f"{path}, row group {group}, row {int(i)}")
            skipped.append((row_offset + int(i) + 1, describe(fn(int(i)), col)))
        info.skipped += int(fresh.sum())
        drop |= mask
    skipped.sort()
    info.rows += int((~drop).sum())
    return Chunk(out.filter(pa.array(~drop)), str(path), lines[~drop], skipped, last)
