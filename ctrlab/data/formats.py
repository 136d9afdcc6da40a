"""Input formats: which layout a raw file has and the :class:`~ctrlab.schema.Schema` to read it
with. The one home of format detection, for ``prepare`` (training input: :func:`file_schema`) and
for prediction (:func:`input_schema`: labelled or not, and its feature columns must be the
bundle's inputs).

A format is a preset name (``criteo``, ``criteo_test``, ``criteo_kaggle_csv``, ``criteo_csv``,
``slot``; :data:`~ctrlab.schema.PRESETS`) or ``csv``/``tsv`` (generic: columns from the header or
from a declared schema). ``auto`` detects it from the file's first line (:func:`detect_format`).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Sequence

import re

from ..schema import (FORMAT_NAMES, LABEL, PRESETS, SELF_DESCRIBING_FORMATS, GenericSchemaConfig, Schema,
                      generic_schema, self_describing_schema)
from .readers import DataError, first_line, is_parquet_name, open_binary

GENERIC_FORMATS = ("csv", "tsv", "kv", *SELF_DESCRIBING_FORMATS)

_LIBSVM_LINE = re.compile(r"[+-]?[0-9.]+(\s+[0-9]+:\S+)+\s*")
_LIBFFM_LINE = re.compile(r"[+-]?[0-9.]+(\s+[0-9]+:[0-9]+:\S+)+\s*")
_FEASIGN_LINE = re.compile(r"[0-9]+:[0-9]+(\s+[0-9]+:[0-9]+)*\s*")


def _is_parquet(path: str | os.PathLike) -> bool:
    """A Parquet file: by name (``.parquet``/``.parq``), or by its ``PAR1`` magic."""
    if is_parquet_name(path):
        return True
    try:
        with open_binary(path) as fh:
            return fh.read(4) == b"PAR1"
    except (OSError, EOFError):
        return False


def detect_self_describing(path: str | os.PathLike) -> str | None:
    """``parquet``, ``libffm``, ``libsvm`` or ``feasign`` when the file (its name or first line)
    says so, else None. A first line of ``a:b`` integer pairs only is feasign (slot_dnn: no label
    token); ``y i:v ...`` libsvm, ``y f:i:v ...`` libffm. (PaddleRec's ``feat_idx`` lines are not
    detected: name the format, ``data.format: feat_idx``; a bundle trained on them reads them.)"""
    if _is_parquet(path):
        return "parquet"
    line = first_line(path)
    if _LIBFFM_LINE.fullmatch(line):
        return "libffm"
    if _LIBSVM_LINE.fullmatch(line):
        return "libsvm"
    if _FEASIGN_LINE.fullmatch(line):
        return "feasign"
    return None


def detect_format(path: str | os.PathLike) -> str:
    """Guess the preset of a file from its first line (and extension); raise when unsure."""
    found = detect_self_describing(path)
    if found is not None:
        return found
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


def header_columns(path: str | os.PathLike, delimiter: str) -> list[str]:
    """The column names on a delimited file's first line (quotes and spaces around them removed)."""
    return [h.strip().strip('"') for h in first_line(path).split(delimiter)]


def schema_for_file(path: str | os.PathLike, fmt: str) -> Schema:
    """The preset schema for ``fmt``, adjusted to the file: a header without the label column
    (e.g. the Kaggle test CSV) gives the label-less variant."""
    schema = PRESETS[fmt]
    if schema.header:
        header = header_columns(path, schema.delimiter)
        if schema.label is not None and schema.label not in header:
            schema = schema.without_label()
        if header != list(schema.columns):
            raise DataError(path, 1, f"header {header[:6]}... does not match the {fmt} layout {list(schema.columns)[:6]}...")
    return schema


# --------------------------------------------------------------------------------------------
# training input (prepare)
# --------------------------------------------------------------------------------------------

def file_schema(path: Path, fmt: str, generic: GenericSchemaConfig | None) -> tuple[str, Schema]:
    """The format name and schema of one ``prepare`` input file. ``generic``: the declared
    ``data.schema`` (then ``auto`` means csv or tsv, whichever delimiter the first line has more of)."""
    if fmt == "auto":
        if generic is not None:
            fmt = detect_self_describing(path) or (
                "tsv" if first_line(path).count("\t") > first_line(path).count(",") else "csv")
        else:
            fmt = detect_format(path)
    if fmt in SELF_DESCRIBING_FORMATS:
        return fmt, self_describing_schema(generic or GenericSchemaConfig(), fmt, _file_columns(path, fmt, generic))
    if fmt in GENERIC_FORMATS:
        cfg = generic or GenericSchemaConfig()
        if cfg.header == "auto" and fmt != "kv":
            cfg = dataclasses.replace(cfg, header=_has_header(path, cfg, fmt))
        header = None
        if cfg.header and fmt != "kv":
            header = header_columns(path, cfg.delimiter or ("\t" if fmt == "tsv" else ","))
        return fmt, generic_schema(cfg, fmt, header)
    return fmt, schema_for_file(path, fmt)


def _file_columns(path: Path, fmt: str, generic: GenericSchemaConfig | None) -> list[str] | None:
    """The columns a self-describing file has: parquet's column names; libffm's / feasign's
    fields found in the file when data.schema.fields does not name them."""
    if fmt == "parquet":
        from .parquet import parquet_columns

        return parquet_columns(path)
    if fmt in ("libffm", "feasign") and not (generic and generic.fields):
        from .libsvm import scan_fields

        return scan_fields(path, fmt)
    return None


def _has_header(path: Path, cfg: GenericSchemaConfig, fmt: str) -> bool:
    """``data.schema.header: auto``: whether this file's first line is a header, i.e. names the
    declared columns (a data set whose files differ: PaddleRec's aitm ``train.csv`` has a header,
    its ``test.csv`` none)."""
    if not cfg.columns:
        raise ValueError("data.schema.header: auto needs data.schema.columns (a file's first line is its "
                         "header when it names them)")
    return header_columns(path, cfg.delimiter or ("\t" if fmt == "tsv" else ",")) == list(cfg.columns)


# --------------------------------------------------------------------------------------------
# prediction input (a bundle's raw rows, labelled or not)
# --------------------------------------------------------------------------------------------

def input_schema(path: Path, fmt: str, bundle_schema: Schema, dense_inputs: Sequence[str],
                 sparse_inputs: Sequence[str]) -> tuple[str, Schema]:
    """How to read one prediction input: the format (detected from the first line when ``auto``;
    a bundle trained on generic csv/tsv falls back to its own format) and its schema, labelled or
    not. The file's feature columns must equal the bundle's inputs ``dense_inputs`` and
    ``sparse_inputs`` (its pipeline's), in that order; a ValueError names the difference."""
    generic = bundle_schema.name in GENERIC_FORMATS or bundle_schema.name == "feat_idx"  # (not detected)
    if fmt == "auto":
        try:
            fmt = detect_format(path)
        except ValueError:
            if not generic:
                raise
            fmt = bundle_schema.name
    if fmt == "kv" or (fmt in GENERIC_FORMATS and bundle_schema.format == "kv"):
        schema = bundle_schema  # key:value tokens name their columns; a line without the label is scored
    elif fmt in SELF_DESCRIBING_FORMATS or (fmt in GENERIC_FORMATS and bundle_schema.format in SELF_DESCRIBING_FORMATS):
        schema = _self_describing_input(path, fmt, bundle_schema)
    elif fmt in GENERIC_FORMATS:
        schema = _generic_input_schema(path, fmt, bundle_schema)
    elif fmt in PRESETS:
        schema = schema_for_file(path, fmt)
        if fmt == "slot" and not any(tok.startswith("click:") for tok in first_line(path).split()):
            schema = schema.without_label()
        if fmt == "feat_idx" and not any(tok.startswith("label:") for tok in first_line(path).split()):
            schema = schema.without_label()
    else:
        raise ValueError(f"unknown format {fmt!r}; valid: auto, {', '.join(FORMAT_NAMES)}")
    dense_inputs, sparse_inputs = list(dense_inputs), list(sparse_inputs)
    if list(schema.dense) != dense_inputs or list(schema.sparse) != sparse_inputs:
        file_cols = list(schema.dense) + list(schema.sparse)
        need = dense_inputs + sparse_inputs
        lacking = [c for c in need if c not in file_cols]
        extra = [c for c in file_cols if c not in need]
        detail = f"lacking {lacking}, extra {extra}" if lacking or extra else "same names, other order or kinds"
        raise ValueError(f"{path}: its feature columns ({fmt} layout: dense {list(schema.dense)}, sparse "
                         f"{list(schema.sparse)}) differ from the bundle's inputs (dense {dense_inputs}, "
                         f"sparse {sparse_inputs}): {detail}")
    return fmt, schema


def _self_describing_input(path: Path, fmt: str, bundle_schema: Schema) -> Schema:
    """A parquet / libsvm / libffm / feasign input read with the bundle's column roles.

    Parquet: any bundle (trained on CSV, TSV, Parquet...) reads its dense, sparse and list columns
    by name; a file without all the bundle's label columns is scored, not evaluated. libsvm,
    libffm and feasign: the bundle must have been trained on that format (its field map)."""
    if fmt in GENERIC_FORMATS and fmt not in SELF_DESCRIBING_FORMATS:
        fmt = bundle_schema.format  # (csv/tsv/kv named for a bundle of a self-describing format)
    if fmt != "parquet":
        if bundle_schema.format != fmt:
            raise ValueError(f"{path}: a {fmt} file, but the bundle was trained on {bundle_schema.format} input "
                             f"({fmt} columns come from the training data's field map)")
        return bundle_schema
    from .parquet import parquet_columns

    columns = parquet_columns(path)
    if any(c.columns is not None for c in bundle_schema.lists):
        raise ValueError(f"{path}: the bundle builds lists from blocks of columns; score it with delimited input")
    labels = list(bundle_schema.labels) if all(c in columns for c in bundle_schema.labels) else []
    id_column = bundle_schema.id_column if bundle_schema.id_column in columns else None
    return Schema(name="parquet", format="parquet", columns=tuple(columns), label=labels[0] if labels else None,
                  more_labels=tuple(labels[1:]), dense=bundle_schema.dense, sparse=bundle_schema.sparse,
                  id_column=id_column, lists=bundle_schema.lists,
                  optional_labels=tuple(c for c in bundle_schema.optional_labels if c in labels))


def _generic_input_schema(path: Path, fmt: str, bundle_schema: Schema) -> Schema:
    """A generic CSV/TSV input read with the bundle's column roles; the label and id columns
    are optional (a label-less file is scored, not evaluated).

    Columns come from the file's header (a bundle trained on a preset layout, or on generic data
    with a header), or, for a bundle trained on header-less generic data, from its schema. A
    column the training data had and its schema left out (read and dropped: not declared dense,
    sparse or list) is dropped here too, so the training file itself can be scored.

    Several labels (a multi-task bundle): every one of the bundle's label columns that the file
    has is read, in the bundle's task order (canonical ``label``, ``label.1``, ...: the file
    schema's ``labels`` name them), with the bundle's optional labels optional; a header-less file
    either has all of them or none."""
    generic_bundle = bundle_schema.name in GENERIC_FORMATS
    delimiter = bundle_schema.delimiter if bundle_schema.name == fmt else ("\t" if fmt == "tsv" else ",")
    has_header = bundle_schema.header or not generic_bundle
    all_labels = list(bundle_schema.labels)
    if has_header:
        header = header_columns(path, delimiter)
    else:
        fields = first_line(path).split(delimiter)
        header = list(bundle_schema.columns)
        if all_labels and len(fields) == len(header) - len(all_labels):
            header = [c for c in header if c not in all_labels]
    labels = [c for c in all_labels if c in header] or ([LABEL] if LABEL in header else [])
    id_column = bundle_schema.id_column if bundle_schema.id_column in header else None
    need = list(bundle_schema.dense) + list(bundle_schema.sparse) + list(bundle_schema.list_sources)
    dropped = set(bundle_schema.columns) - {*all_labels, bundle_schema.id_column} - set(need)
    features = [c for c in header if c not in labels and c != id_column and c not in dropped]
    if sorted(features) != sorted(need):
        lacking = [c for c in need if c not in features]
        extra = [c for c in features if c not in need]
        raise ValueError(f"{path}: its feature columns ({fmt} header: {column_list(features)}) differ from the "
                         f"bundle's inputs ({column_list(need)}): lacking {lacking}, extra {extra}")
    lists = {c.name: {k: v for k, v in c.to_dict().items() if k != "name"} for c in bundle_schema.lists}
    label = labels if len(labels) > 1 else (labels[0] if labels else None)
    cfg = GenericSchemaConfig(columns=header, label=label, dense=list(bundle_schema.dense),
                              sparse=list(bundle_schema.sparse), id_column=id_column, header=has_header,
                              delimiter=delimiter, lists=lists,
                              optional_labels=[c for c in bundle_schema.optional_labels if c in labels])
    return generic_schema(cfg, fmt, header)


def column_list(columns: Sequence[str]) -> str:
    """Column names for a message: all of them up to 12, else the first six and the last three."""
    return ", ".join(columns) if len(columns) <= 12 else f"{', '.join(columns[:6])}, ..., {', '.join(columns[-3:])}"
