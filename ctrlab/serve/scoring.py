"""Request bodies -> checked rows -> probabilities, for the server's routes.

``/v1/predict``: :func:`parse_predict_body` (JSON ``{"rows": [...]}`` or ``{"columns": {...}}``,
counted on its raw bytes first, :mod:`.limits`) then :func:`score_rows` (:meth:`Predictor.predict`: the one scoring path,
whose stage timings the answer reports; several small requests may share one call,
:mod:`.batching`). ``/upload``: :func:`check_upload` (text, or Parquet by its ``PAR1`` magic) then
:func:`score_upload` (the file scoring of ``ctrlab predict``). Every bad input is a
:class:`~ctrlab.serve.limits.ClientError` (4xx) naming the row and field, never a 500.
"""

from __future__ import annotations

import os
import tempfile
from typing import Any

import numpy as np
import pyarrow as pa

from ..data.parquet import parquet_rows
from ..data.readers import DataError, MemoryFile
from ..inference import IGNORED_KEYS, FileScoring, InputError, score_files
from ..inference.offline import score_small_file
from .limits import ClientError, decode_json, has_surrogate, may_hold_surrogates, too_many
from .model import LoadedModel


def parse_predict_body(body: bytes, max_rows: int, columns: list[str], list_values: int = 0) -> list[Any]:
    """The rows of a /v1/predict JSON body, checked for shape and count (ClientError otherwise):
    ``{"rows": [row, ...]}`` or the columnar ``{"columns": {"I1": [...], "C1": [...]}}`` (turned into
    row dicts here, so that every value is checked, and named by row and field, exactly as a row's).
    ``columns``: the model's input columns (a row holds at most these and IGNORED_KEYS);
    ``list_values``: the values a row's list columns may add (the sum of their max_length: a
    history sent as a JSON list counts one value per item)."""
    payload = decode_json(body, expected='{"rows": [...]}', max_items=max_rows,
                          max_values=max_rows * (len(columns) + len(IGNORED_KEYS) + list_values))
    if not isinstance(payload, dict):
        raise ClientError(422, f'expected a JSON object {{"rows": [...]}}, got {type(payload).__name__}')
    key = "columns" if "columns" in payload and "rows" not in payload else "rows"
    extra = sorted(k for k in payload if k != key)
    if extra:
        raise ClientError(422, f'unknown top-level field(s) {extra}; the body is {{"rows": [...]}} '
                               f'or {{"columns": {{...}}}}')
    if key not in payload:
        raise ClientError(422, 'missing field "rows": send {"rows": [row, ...]}')
    rows = columns_to_rows(payload["columns"], max_rows) if key == "columns" else payload["rows"]
    if not isinstance(rows, list):
        raise ClientError(422, f'"rows" must be a list of rows, got {type(rows).__name__}')
    if not rows:
        raise ClientError(422, '"rows" is empty; send at least one row')
    if len(rows) > max_rows:
        raise too_many(f"{len(rows):,}", max_rows)
    if may_hold_surrogates(body):
        check_text(rows, columns)
    return rows


def columns_to_rows(table: Any, max_rows: int) -> list[dict[str, Any]]:
    """``{"I1": [v0, v1, ...], ...}`` -> ``[{"I1": v0, ...}, {"I1": v1, ...}, ...]``: every column a
    list, all of one length (1..max_rows); ClientError naming the column otherwise."""
    if not isinstance(table, dict) or not table:
        raise ClientError(422, '"columns" must be a non-empty object {"I1": [...], "C1": [...]}')
    lengths = {}
    for name, values in table.items():
        if not isinstance(values, list):
            raise ClientError(422, f'"columns" field {name!r}: expected a list of values, got {type(values).__name__}')
        lengths[name] = len(values)
    n = max(lengths.values())
    if n > max_rows:
        raise too_many(f"{n:,}", max_rows)
    short = [name for name, length in lengths.items() if length != n]
    if short:
        raise ClientError(422, f'"columns" field {short[0]!r} has {lengths[short[0]]:,} values, others {n:,}; '
                               f"every column needs one value per row")
    names = list(table)
    return [dict(zip(names, values)) for values in zip(*table.values())]


def check_text(rows: list[Any], columns: list[str]) -> None:
    """ClientError naming the row and field of the first string with a lone UTF-16 surrogate
    (legal JSON, "\\ud800", but not text: it cannot be encoded, hashed or stored)."""
    for i, row in enumerate(rows):
        fields = row.items() if isinstance(row, dict) else enumerate(row) if isinstance(row, list) else ()
        for key, value in fields:
            name = columns[key] if isinstance(key, int) and key < len(columns) else key
            for text in (key, value):
                if isinstance(text, str) and has_surrogate(text):
                    raise ClientError(422, f"row {i}, field {name!r}: {text[:40]!r} holds a lone UTF-16 surrogate; "
                                           f"send valid Unicode text")


def score_rows(loaded: LoadedModel, rows: list[Any]) -> tuple[np.ndarray, dict[str, float]]:
    """Probabilities float32[N] (a multi-task bundle: [N, T]) and the milliseconds of each stage of
    this call (parse, transform, inference: the Prediction's own timings, safe with threads sharing
    the predictor)."""
    try:
        prediction = loaded.predictor.predict(rows)  # (a value whose feature overflows is the client's)
    except InputError as exc:  # names the row and field
        raise ClientError(422, str(exc)) from None
    except (ValueError, ArithmeticError, UnicodeError) as exc:  # a bad value the checks missed: still a 4xx
        raise ClientError(422, f"the rows hold a value that cannot be encoded: {exc}") from None
    probs = prediction.scores
    bad = np.flatnonzero(~np.isfinite(probs).reshape(len(probs), -1).all(axis=1))
    if len(bad):  # (JSON has no NaN; only extreme inputs get here)
        raise ClientError(422, f"row {bad[0]}: the model gives no finite probability for its values")
    timings = prediction.timings
    return probs, {"parse": timings.parse * 1e3, "transform": timings.transform * 1e3,
                   "inference": timings.inference * 1e3}


#: the first bytes of a Parquet file
PARQUET_MAGIC = b"PAR1"


def check_upload(data: bytes, max_rows: int) -> None:
    """ClientError unless an uploaded file may be scored: a Parquet file (``PAR1``) whose footer
    reads and counts 1..``max_rows`` rows (counted before any data is read), or text
    (:func:`check_upload_text`)."""
    if not data.startswith(PARQUET_MAGIC):
        check_upload_text(data, max_rows)
        return
    try:
        rows = parquet_rows(MemoryFile("upload", data))
    except DataError as exc:  # a truncated or corrupt file
        raise ClientError(422, str(exc)) from None
    if rows == 0:
        raise ClientError(400, "the uploaded Parquet file has no rows")
    if rows > max_rows:
        raise ClientError(413, f"the upload has {rows:,} rows; the limit is {max_rows:,} rows per request")


def check_upload_text(data: bytes, max_rows: int) -> None:
    """ClientError unless an uploaded file is non-empty UTF-8 text of at most ``max_rows`` rows
    (plus a header line); the line and byte of the first bad byte are named."""
    if not data.strip():
        raise ClientError(400, "the uploaded file is empty")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        hint = " (gzip-compressed uploads are not accepted; send plain text)" if data[:2] == b"\x1f\x8b" else ""
        raise ClientError(400, f"upload line {line}, byte {column}: not UTF-8 text{hint}") from None
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if lines > max_rows + 1:  # (+1: a header line)
        raise ClientError(413, f"the upload has {lines:,} lines; the limit is {max_rows:,} rows per request")


#: uploads of up to this many bytes try the small-request lane (at most SMALL_INPUT_ROWS delimited lines)
SMALL_UPLOAD_BYTES = 16 << 10


def score_upload(loaded: LoadedModel, data: bytes) -> tuple[np.ndarray, str]:
    """Score an uploaded file's raw lines with the same readers as ``ctrlab predict`` (format
    detected). A small upload of a few delimited lines is read in memory and scored in the
    small-request lane (:func:`~ctrlab.inference.offline.score_small_file`); any other is written
    to a private temporary file (the name is ours, never the client's) and scored as a file
    (a Parquet upload always: the Parquet reader of ``prepare``, which names a bad value's row
    group, row and column). Returns the probabilities float32[N] (multi-task: [N, T]) and the
    detected format."""
    if len(data) <= SMALL_UPLOAD_BYTES and not data.startswith(PARQUET_MAGIC):
        try:
            small = score_small_file(loaded.predictor, MemoryFile("upload", data))
        except (DataError, InputError, ValueError, UnicodeDecodeError) as exc:
            raise ClientError(422, str(exc)) from None
        if small is not None:
            return small
    fd, name = tempfile.mkstemp(prefix="ctrlab-upload-", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        report = FileScoring()
        try:
            parts = [chunk.probabilities for chunk in score_files(loaded.predictor, name, fmt="auto", report=report)]
        except (DataError, InputError, ValueError, UnicodeDecodeError, pa.ArrowException) as exc:
            # (ArrowException: a Parquet column Arrow cannot convert, the client's file too)
            raise ClientError(422, str(exc).replace(name, "upload")) from None
        probs = np.concatenate(parts) if parts else loaded.predictor.empty_scores(0)
        return probs, report.formats.get(name, "")
    finally:
        try:
            os.unlink(name)
        except OSError:
            pass

