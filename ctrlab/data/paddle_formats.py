"""PaddleRec's ``feat_idx`` lines (logistic_regression's criteo_lr_reader) and slot_dnn's
``feasign:slot`` lines (its queuedataset_reader), plain or gzip.

**feat_idx** (``data.format: feat_idx``, a preset: Criteo's I1..I13, C1..C26):
``feat_idx:i`` x39, ``feat_value:v`` x39, ``label:y`` (space-separated, any order; the k-th
feat_idx goes with the k-th feat_value). Position k is the schema's k-th feature column: a dense
position (I1..I13) takes ``feat_value`` as its number; a categorical one (C1..C26) takes
``feat_idx`` as its id and needs ``feat_value`` 1. ``feat_idx:0`` is PaddleRec's padding (written
with value 0): a missing value. PaddleRec's LR sums w[idx] * value over the 39; ctrlab's ``lr``
gives each dense column a weight and each id of a categorical column one: the same model with
per-field tables. A wrong token count, a non-0/1 label, an idx that is not an integer >= 0, a
value that is not a number or a categorical value other than 1 is a bad line naming the column.

**feasign** (``data.format: feasign``): tokens ``feasign:slot``, value first, slot second. Slot 1
holds the click label (feasign 0/1); each other slot is a multi-valued categorical field (every
feasign of that slot in the line, sum-pooled like PaddleRec's ``sequence_pool``), named ``s<slot>``
or by ``data.schema.fields: {name: slot, ...}``; a missing slot is an empty list. Without a field
map the slots are those found in the file's first 1000 lines. Each slot keeps at most
``FEASIGN_MAX_LENGTH`` (32) feasigns (the last ones, rows cut counted), or its own
``data.schema.lists.<name>.max_length``. A slot declared in ``data.schema.sparse`` is single-valued
(two feasigns: a bad line); one in ``data.schema.dense`` takes its feasign as a number.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from ..schema import LABEL, Schema
from .libsvm import FieldRoles, _uint
from .readers import Chunk, SkipReport, SourceInfo, number_error, parse_number, read_token_lines


def read_feat_idx(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo) -> Iterator[Chunk]:
    positions = [*schema.dense, *schema.sparse]
    dense = set(schema.dense)
    n = len(positions)

    def parse(text: str) -> Any:
        idx: list[str] = []
        values: list[str] = []
        label: str | None = None
        for token in text.split():
            key, sep, value = token.partition(":")
            if key == "feat_idx" and value:
                idx.append(value)
            elif key == "feat_value" and value:
                values.append(value)
            elif key == "label" and value:
                if label is not None:
                    return "label appears twice", LABEL
                label = value
            else:
                return f"expected feat_idx:i, feat_value:v or label:y, got {token[:40]!r}", None
        if len(idx) != n or len(values) != n:
            return f"expected {n} feat_idx and {n} feat_value tokens, got {len(idx)} and {len(values)}", None
        row: dict[str, Any] = {}
        if schema.label:
            number = None if label is None else parse_number(label)
            if number not in (0.0, 1.0):
                return f"expected a 0/1 label, got {'none' if label is None else repr(label[:40])}", LABEL
            row[LABEL] = number
        for name, ident, value in zip(positions, idx, values):
            index = _uint(ident)
            if index is None:
                return f"expected feat_idx to be an integer >= 0, got {ident[:40]!r}", name
            number = parse_number(value)
            if number is None:
                return number_error(value), name
            if index == 0:  # PaddleRec's padding: a missing value
                continue
            if name in dense:
                row[name] = number
            elif number != 1.0:
                return f"feat_value {value} of the categorical position {name}: expected 1 (0 with feat_idx:0)", name
            else:
                row[name] = str(index)
        return row, None

    return read_token_lines(path, schema, bad_lines, report, info, parse, "bad feat_idx line")


def read_feasign(path: Path, schema: Schema, bad_lines: str, report: SkipReport, info: SourceInfo) -> Iterator[Chunk]:
    roles = FieldRoles(schema)
    name_of = {lo: name for name, lo, _ in schema.field_map}
    features = {*schema.dense, *schema.sparse, *schema.list_names}
    label_slot = next((lo for name, lo, _ in schema.field_map if name not in features), 1)  # (scored input too)
    shown = ", ".join(str(k) for k in sorted(name_of)[:12]) + (", ..." if len(name_of) > 12 else "")

    def parse(text: str) -> Any:
        row = roles.empty_row()
        label: str | None = None
        for token in text.split():
            feasign, sep, slot_text = token.rpartition(":")
            slot = _uint(slot_text)
            if not sep or slot is None or _uint(feasign) is None:
                return f"expected feasign:slot (two integers >= 0), got {token[:40]!r}", None
            if slot == label_slot:
                if label is not None:
                    return f"the label slot {slot} appears twice", LABEL
                label = feasign
                continue
            name = name_of.get(slot)
            if name is None:
                return f"unknown slot {slot} (the schema's slots: {shown})", None
            problem = roles.add(row, name, str(int(feasign)), None, f"feasign {feasign}")
            if problem:
                return problem
        if schema.label:
            if label not in ("0", "1"):
                return f"expected a 0/1 click in slot {label_slot}, got {'none' if label is None else repr(label)}", LABEL
            row[LABEL] = float(label)
        return row, None

    return read_token_lines(path, schema, bad_lines, report, info, parse, "bad feasign line")
