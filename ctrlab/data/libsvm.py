"""libsvm / libFM (``label idx:val ...``) and libffm (``label field:idx:val ...``) readers.

Both are space-separated, plain or gzip, one row a line; the first token is the label: 0 or 1
(``-1`` and ``+1`` are read as 0 and 1: libFM's and NFM's convention).

**libsvm** (``data.format: libsvm``), two ways:

* with a field map, ``data.schema.fields: {user: [0, 99], item: [100, 5099], ...}``: which
  (inclusive) index ranges form which field. A field is by default a single-valued categorical
  column: its value is the index (``"117"``), it appears at most once a line, and its ``val`` must
  be 1 (one-hot). A field declared in ``data.schema.lists`` is multi-valued (every index of its range
  in the line, in line order; ``max_length`` keeps the last ones); with ``weight_separator`` set
  (``":"``) the vals are kept as its weights, else they must be 1. A field declared in
  ``data.schema.dense`` is one index (``[i, i]``) whose val is the number. An index in no range,
  a field twice, a categorical val other than 1 are bad lines naming the field. A field absent
  from a line is a missing value (an empty list).
* without a field map: every ``idx:val`` of a line goes to ONE weighted multi-valued field
  ``features`` (ids = indices, weights = vals); it needs
  ``data.schema.lists.features: {max_length: N}`` (kind multi, sum pooling and weights are the
  defaults; a longer line keeps its last N, counted as truncated).

**libffm** (``data.format: libffm``): the fields are given by the line. Field ``k`` is the column
``f<k>`` (or a name from ``data.schema.fields: {user: 0, item: 1, ...}``: name -> field number);
without a map the fields are those found in the file's first 1000 lines. The id of a field is its
``idx``; vals follow the libsvm rules (1 for a categorical field, weights of a weighted list, the
number of a dense field).

Bad lines name the file, line and field; ``bad_lines: skip`` counts them.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any, Iterator

from ..schema import LABEL, WEIGHTS_SUFFIX, Schema
from .readers import MAX_WEIGHT, Chunk, SkipReport, SourceInfo, iter_lines, number_error, parse_number, read_token_lines


def parse_label(text: str) -> float | None:
    """A libsvm label: 0/1 (-1 is 0, +1 is 1); None when it is not one."""
    number = parse_number(text)
    if number == -1.0:
        return 0.0
    return number if number in (0.0, 1.0) else None


def _uint(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


class FieldRoles:
    """What each field of a schema is: dense, a (weighted) list or single categorical, and how a
    token's value is stored in a row (shared by the libsvm, libffm and feasign parsers)."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.dense = set(schema.dense)
        self.lists = {c.name: c for c in schema.lists}
        self.weighted = {c.name for c in schema.lists if c.weight_separator is not None}

    def empty_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {name: [] for name in self.lists}
        row.update({name + WEIGHTS_SUFFIX: [] for name in self.weighted})
        return row

    def add(self, row: dict[str, Any], name: str, ident: str, value_text: str | None,
            what: str) -> tuple[str, str | None] | None:
        """Store one token (the id ``ident`` with its value ``value_text``; None for feasign, which
        has none) of field ``name``; the problem (message, field) when it is bad."""
        if name in self.dense:
            text = ident if value_text is None else value_text
            number = parse_number(text)
            if number is None:
                return number_error(text), name
            if name in row:
                return f"appears twice in the line ({what})", name
            row[name] = number
            return None
        value = 1.0
        if value_text is not None:
            value = parse_number(value_text)  # type: ignore[assignment]
            if value is None:
                return number_error(value_text), name
        if name in self.lists:
            if name in self.weighted:
                if abs(value) > MAX_WEIGHT:
                    return f"weight {value_text!r} of {what} is not a finite float32", name
                row[name + WEIGHTS_SUFFIX].append(value)
            elif value != 1.0:
                return (f"value {value_text} of {what}: a list field without weights takes 1 (set "
                        f"weight_separator in data.schema.lists.{name} to keep values as weights)"), name
            row[name].append(ident)
            return None
        if value != 1.0:
            return (f"value {value_text} of {what}: a categorical field takes 1 (declare {name!r} in "
                    "data.schema.lists with weight_separator to keep values as weights)"), name
        if name in row:
            return (f"appears twice in the line ({what}); declare it in data.schema.lists for a "
                    "multi-valued field"), name
        row[name] = ident
        return None


def _label(tokens: list[str], schema: Schema, row: dict[str, Any]) -> tuple[str, str | None] | None:
    if not tokens:
        return "empty line", None
    label = parse_label(tokens[0])
    if label is None:
        return f"expected a 0/1 (or -1/+1) label first, got {tokens[0][:40]!r}", LABEL
    row[LABEL] = label
    return None


def read_libsvm(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo) -> Iterator[Chunk]:
    """``label idx:val idx:val ...`` (see the module docstring)."""
    roles = FieldRoles(schema)
    ranges = sorted((lo, hi, name) for name, lo, hi in schema.field_map)
    starts = [lo for lo, _, _ in ranges]
    single = schema.list_names[0] if not schema.field_map else None

    def parse(text: str) -> Any:
        tokens = text.split()
        row = roles.empty_row()
        bad = _label(tokens, schema, row)
        if bad:
            return bad
        for token in tokens[1:]:
            idx, sep, val = token.partition(":")
            index = _uint(idx)
            if not sep or index is None or val == "":
                return f"expected idx:val (a feature index >= 0, a value), got {token[:40]!r}", single
            if single is not None:
                problem = roles.add(row, single, str(index), val, f"index {index}")
            else:
                k = bisect.bisect_right(starts, index) - 1
                if k < 0 or index > ranges[k][1]:
                    return f"index {index} is in no field of data.schema.fields", None
                problem = roles.add(row, ranges[k][2], str(index), val, f"index {index}")
            if problem:
                return problem
        return row, None

    return read_token_lines(path, schema, bad_lines, report, info, parse, "bad libsvm line")


def read_libffm(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo) -> Iterator[Chunk]:
    """``label field:idx:val ...`` (see the module docstring)."""
    roles = FieldRoles(schema)
    name_of = {lo: name for name, lo, _ in schema.field_map}

    def parse(text: str) -> Any:
        tokens = text.split()
        row = roles.empty_row()
        bad = _label(tokens, schema, row)
        if bad:
            return bad
        for token in tokens[1:]:
            parts = token.split(":")
            if len(parts) != 3 or _uint(parts[0]) is None or _uint(parts[1]) is None or parts[2] == "":
                return f"expected field:idx:val (field and index integers >= 0), got {token[:40]!r}", None
            name = name_of.get(int(parts[0]))
            if name is None:
                known = ", ".join(str(k) for k in sorted(name_of)[:12])
                return f"unknown field {int(parts[0])} (the schema's fields: {known})", None
            problem = roles.add(row, name, str(int(parts[1])), parts[2], f"index {int(parts[1])}")
            if problem:
                return problem
        return row, None

    return read_token_lines(path, schema, bad_lines, report, info, parse, "bad libffm line")


def scan_fields(path: Path | str, fmt: str, max_lines: int = 1000) -> list[str]:
    """The columns of a libffm (``f<field>``) or feasign (``s<slot>``) file without a field map: the
    fields / slots found in its first ``max_lines`` good lines, by number."""
    found: set[int] = set()
    seen = 0
    for _, text, problem in iter_lines(path):
        if problem is not None or not text or not text.strip():
            continue
        tokens = text.split()[1:] if fmt == "libffm" else text.split()
        for token in tokens:
            part = token.split(":")[0] if fmt == "libffm" else token.rpartition(":")[2]
            number = _uint(part)
            if number is not None:
                found.add(number)
        seen += 1
        if seen >= max_lines:
            break
    prefix = "f" if fmt == "libffm" else "s"
    return [f"{prefix}{k}" for k in sorted(found)]
