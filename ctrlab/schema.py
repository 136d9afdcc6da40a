"""Dataset schemas as plain data: which raw columns exist and what each one is.

Every reader turns its input into an Arrow table with *canonical* column names: the label
column (if any) is called ``label``; dense and sparse columns keep the schema's names. So a
model trained on the Criteo TSV can score the Kaggle CSV layout or the label-less test file:
the names (I1..I13, C1..C26) are the same.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

LABEL = "label"

CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
CRITEO_SPARSE = tuple(f"C{i}" for i in range(1, 27))


@dataclass(frozen=True)
class Schema:
    """How to read one layout of raw rows.

    format: the reader to use: ``delimited`` (TSV/CSV) or ``slot`` (PaddleRec slot lines).
    columns: every column of the file, in file order (delimited formats only); columns that are
        neither label, dense, sparse nor id are read and dropped.
    label: name of the label column in the file, or None (e.g. the Kaggle test file).
    dense / sparse: names of the numeric and categorical columns.
    id_column: a row id column to carry through to predictions (Kaggle ``Id``), or None.
    header: whether the first line is a header row.
    delimiter: field separator for delimited formats.
    quoted: whether fields may be quoted with '"' (CSV) or never (Criteo TSV).
    """

    name: str
    format: str
    columns: tuple[str, ...]
    label: str | None
    dense: tuple[str, ...]
    sparse: tuple[str, ...]
    id_column: str | None = None
    header: bool = False
    delimiter: str = "\t"
    quoted: bool = False

    def __post_init__(self) -> None:
        for name in ("columns", "dense", "sparse"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.format == "delimited":
            known = set(self.columns)
            for col in (self.label, self.id_column, *self.dense, *self.sparse):
                if col is not None and col not in known:
                    raise ValueError(f"schema {self.name!r}: column {col!r} is not among its columns {list(self.columns)}")
        overlap = set(self.dense) & set(self.sparse)
        if overlap:
            raise ValueError(f"schema {self.name!r}: columns both dense and sparse: {sorted(overlap)}")

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return self.dense + self.sparse

    def without_label(self) -> "Schema":
        """The same layout with the label column absent (prediction input)."""
        if self.label is None:
            return self
        if self.format == "slot":
            return Schema(**{**self.to_dict(), "name": self.name, "label": None})
        columns = tuple(c for c in self.columns if c != self.label)
        return Schema(**{**self.to_dict(), "columns": columns, "label": None})

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "format": self.format,
            "columns": list(self.columns),
            "label": self.label,
            "dense": list(self.dense),
            "sparse": list(self.sparse),
            "id_column": self.id_column,
            "header": self.header,
            "delimiter": self.delimiter,
            "quoted": self.quoted,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Schema":
        return cls(**data)


def _criteo_tsv() -> Schema:
    return Schema("criteo", "delimited", (LABEL, *CRITEO_DENSE, *CRITEO_SPARSE), LABEL, CRITEO_DENSE, CRITEO_SPARSE)


def _criteo_test_tsv() -> Schema:
    return Schema("criteo_test", "delimited", (*CRITEO_DENSE, *CRITEO_SPARSE), None, CRITEO_DENSE, CRITEO_SPARSE)


def _criteo_kaggle_csv() -> Schema:
    return Schema(
        "criteo_kaggle_csv", "delimited", ("Id", "Label", *CRITEO_DENSE, *CRITEO_SPARSE), "Label",
        CRITEO_DENSE, CRITEO_SPARSE, id_column="Id", header=True, delimiter=",", quoted=True,
    )


def _criteo_csv() -> Schema:
    return Schema(
        "criteo_csv", "delimited", (LABEL, *CRITEO_DENSE, *CRITEO_SPARSE), LABEL, CRITEO_DENSE, CRITEO_SPARSE,
        header=True, delimiter=",", quoted=True,
    )


def _slot() -> Schema:
    # PaddleRec: "click:0 dense_feature:v (x13) 1:id ... 26:id". Slot k maps to C{k}.
    return Schema("slot", "slot", (), LABEL, CRITEO_DENSE, CRITEO_SPARSE, delimiter=" ")


PRESETS: dict[str, Schema] = {
    s.name: s for s in (_criteo_tsv(), _criteo_test_tsv(), _criteo_kaggle_csv(), _criteo_csv(), _slot())
}

#: Names accepted by ``--format``: the presets plus ``csv``/``tsv`` (generic, schema from config).
FORMAT_NAMES = tuple(PRESETS) + ("csv", "tsv")


@dataclass
class GenericSchemaConfig:
    """A declared schema for generic CSV/TSV input (the ``data.schema`` config section)."""

    columns: list[str] = field(default_factory=list)
    label: str | None = LABEL
    dense: list[str] = field(default_factory=list)
    sparse: list[str] | None = None
    id_column: str | None = None
    header: bool = True
    delimiter: str | None = None


def generic_schema(cfg: GenericSchemaConfig, fmt: str, header_columns: list[str] | None) -> Schema:
    """Build a Schema for generic CSV/TSV from the declared config and the file's header.

    Columns come from ``cfg.columns`` or, when the file has a header, from the header. When
    ``sparse`` is not given, every column that is not the label, id or dense is categorical.
    """
    delimiter = cfg.delimiter or ("\t" if fmt == "tsv" else ",")
    columns = list(cfg.columns) or list(header_columns or [])
    if not columns:
        raise ValueError(
            f"generic {fmt} input needs its columns: set data.schema.columns, or data.schema.header: true "
            "for a file whose first line names them"
        )
    taken = {cfg.label, cfg.id_column, *cfg.dense}
    sparse = list(cfg.sparse) if cfg.sparse is not None else [c for c in columns if c not in taken]
    return Schema(
        name=fmt, format="delimited", columns=tuple(columns), label=cfg.label, dense=tuple(cfg.dense),
        sparse=tuple(sparse), id_column=cfg.id_column, header=cfg.header, delimiter=delimiter,
        quoted=delimiter == ",",
    )
