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


LIST_KINDS = ("sequence", "multi")
POOLINGS = ("sum", "mean", "max")


@dataclass(frozen=True)
class ListColumn:
    """A categorical column holding several values in one field (issue 15).

    kind: ``sequence`` (ordered oldest to newest; at most ``max_length`` values are kept, the most
        recent, and a longer one is truncated and counted) or ``multi`` (an unordered set, pooled
        with ``pooling``: sum, mean or max).
    separator: between values in the field (``Action|Comedy``); an empty field is an empty list.
    weight_separator: when set, a value may carry a weight (``tag:0.7``; no weight = 1.0); a weight
        that is not a finite number is a bad line naming the file, line and field.
    vocab_of: another categorical column whose vocabulary (and embedding table) this one shares
        (a clicked-items history shares the target ``item_id``'s).
    """

    name: str
    kind: str = "sequence"
    separator: str = "|"
    max_length: int | None = None
    weight_separator: str | None = None
    pooling: str = "mean"
    vocab_of: str | None = None

    def __post_init__(self) -> None:
        where = f"list column {self.name!r}"
        if self.kind not in LIST_KINDS:
            raise ValueError(f"{where}: kind must be one of {', '.join(LIST_KINDS)}, got {self.kind!r}")
        if not self.separator:
            raise ValueError(f"{where}: separator must not be empty")
        if self.kind == "sequence" and (self.max_length is None or self.max_length < 1):
            raise ValueError(f"{where}: a sequence needs max_length >= 1, got {self.max_length!r}")
        if self.max_length is not None and self.max_length < 1:
            raise ValueError(f"{where}: max_length must be >= 1, got {self.max_length}")
        if self.pooling not in POOLINGS:
            raise ValueError(f"{where}: pooling must be one of {', '.join(POOLINGS)}, got {self.pooling!r}")
        if self.weight_separator is not None and (not self.weight_separator or self.weight_separator == self.separator):
            raise ValueError(f"{where}: weight_separator must be non-empty and differ from the separator")

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "separator": self.separator, "max_length": self.max_length,
                "weight_separator": self.weight_separator, "pooling": self.pooling, "vocab_of": self.vocab_of}


@dataclass(frozen=True)
class Schema:
    """How to read one layout of raw rows.

    format: the reader to use: ``delimited`` (TSV/CSV), ``slot`` (PaddleRec slot lines) or ``kv``
        (``key:value`` tokens, a list column's key repeated once per value: PaddleRec's BST sample).
    columns: every column of the file, in file order (delimited formats only); columns that are
        neither label, dense, sparse nor id are read and dropped.
    label: name of the label column in the file, or None (e.g. the Kaggle test file).
    dense / sparse: names of the numeric and categorical columns.
    id_column: a row id column to carry through to predictions (Kaggle ``Id``), or None.
    header: whether the first line is a header row.
    delimiter: field separator for delimited formats.
    quoted: whether fields may be quoted with '"' (CSV) or never (Criteo TSV).
    lists: the list-valued categorical columns (:class:`ListColumn`; not among ``sparse``).
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
    lists: tuple[ListColumn, ...] = ()

    def __post_init__(self) -> None:
        for name in ("columns", "dense", "sparse"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "lists", tuple(c if isinstance(c, ListColumn) else ListColumn(**c) for c in self.lists))
        list_names = [c.name for c in self.lists]
        if self.format == "delimited":
            known = set(self.columns)
            for col in (self.label, self.id_column, *self.dense, *self.sparse, *list_names):
                if col is not None and col not in known:
                    raise ValueError(f"schema {self.name!r}: column {col!r} is not among its columns {list(self.columns)}")
        elif self.lists and self.format != "kv":
            raise ValueError(f"schema {self.name!r}: list-valued columns are read from delimited or key:value "
                             "files only")
        overlap = set(self.dense) & set(self.sparse)
        if overlap:
            raise ValueError(f"schema {self.name!r}: columns both dense and sparse: {sorted(overlap)}")
        twice = (set(self.dense) | set(self.sparse)) & set(list_names)
        if twice or len(set(list_names)) != len(list_names):
            raise ValueError(f"schema {self.name!r}: list columns also declared dense/sparse or twice: "
                             f"{sorted(twice) or list_names}")
        for column in self.lists:
            if column.vocab_of is not None and column.vocab_of not in (*self.sparse, *list_names):
                raise ValueError(f"schema {self.name!r}: list column {column.name!r} takes its vocabulary from "
                                 f"{column.vocab_of!r}, which is not a categorical column")

    @property
    def list_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.lists)

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
            **({"lists": [c.to_dict() for c in self.lists]} if self.lists else {}),
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
FORMAT_NAMES = tuple(PRESETS) + ("csv", "tsv", "kv")


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
    # list-valued columns: name -> {kind: sequence|multi, separator, max_length, weight_separator,
    # pooling, vocab_of} (see ListColumn); they are neither dense nor sparse
    lists: dict[str, dict[str, Any]] = field(default_factory=dict)


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
    taken = {cfg.label, cfg.id_column, *cfg.dense, *cfg.lists}
    sparse = list(cfg.sparse) if cfg.sparse is not None else [c for c in columns if c not in taken]
    lists = []
    for name, options in cfg.lists.items():
        if not isinstance(options, dict):
            raise ValueError(f"data.schema.lists.{name}: expected a mapping of options, got {options!r}")
        unknown = sorted(set(options) - {"kind", "separator", "max_length", "weight_separator", "pooling", "vocab_of"})
        if unknown:
            raise ValueError(f"data.schema.lists.{name}: unknown option(s) {unknown}; valid: kind, separator, "
                             "max_length, weight_separator, pooling, vocab_of")
        lists.append(ListColumn(name=name, **options))
    if fmt == "kv":  # key:value tokens: the columns are the keys; no header, no quoting
        return Schema(name=fmt, format="kv", columns=tuple(columns), label=cfg.label, dense=tuple(cfg.dense),
                      sparse=tuple(sparse), id_column=cfg.id_column, delimiter=" ", lists=tuple(lists))
    return Schema(
        name=fmt, format="delimited", columns=tuple(columns), label=cfg.label, dense=tuple(cfg.dense),
        sparse=tuple(sparse), id_column=cfg.id_column, header=cfg.header, delimiter=delimiter,
        quoted=delimiter == ",", lists=tuple(lists),
    )
