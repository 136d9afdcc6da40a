"""Dataset schemas as plain data: which raw columns exist and what each one is.

Every reader turns its input into an Arrow table with *canonical* column names: the label
column (if any) is called ``label``; dense and sparse columns keep the schema's names. So a
model trained on the Criteo TSV can score the Kaggle CSV layout or the label-less test file:
the names (I1..I13, C1..C26) are the same.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

LABEL = "label"


def task_column(index: int) -> str:
    """The canonical column of label (task) ``index`` in a reader's table: ``label`` for the
    first, ``label.1``, ``label.2``, ... for the further ones (several labels: issue 16)."""
    return LABEL if index == 0 else f"{LABEL}.{index}"

CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
CRITEO_SPARSE = tuple(f"C{i}" for i in range(1, 27))


LIST_KINDS = ("sequence", "multi")
#: the formats whose readers emit list columns
LIST_FORMATS = ("kv", "parquet", "libsvm", "libffm", "feasign")
#: formats whose lines or files name their own columns (no header, no column order); their
#: schema comes from ``data.schema`` (and, for parquet, the file's column names)
SELF_DESCRIBING_FORMATS = ("parquet", "libsvm", "libffm", "feasign")
#: libsvm without ``data.schema.fields``: every ``idx:val`` goes to this one weighted list
LIBSVM_FEATURES = "features"
#: a list column with weights has them in a column of this suffix: list<float64>, one per value
WEIGHTS_SUFFIX = ".weights"
#: the options of a ``data.schema.lists`` entry (:class:`ListColumn`'s fields but its name)
LIST_OPTIONS = ("kind", "separator", "max_length", "weight_separator", "pooling", "vocab_of", "columns", "padding")
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
    columns: when set, the list is not one field but a block of the file's columns, one value per
        column, oldest to newest (a fixed-width history: ``hist_0 .. hist_49``); ``name`` is then a
        new name, not a column of the file, and the source columns are consumed (no feature of their
        own). An empty field is no step; ``separator`` and ``weight_separator`` do not apply.
    padding: with ``columns``: a source value that means "no step" (``"0"`` in a 0-padded history),
        dropped like an empty field.
    """

    name: str
    kind: str = "sequence"
    separator: str = "|"
    max_length: int | None = None
    weight_separator: str | None = None
    pooling: str = "mean"
    vocab_of: str | None = None
    columns: tuple[str, ...] | None = None
    padding: str | None = None

    def __post_init__(self) -> None:
        where = f"list column {self.name!r}"
        if self.columns is not None:
            if isinstance(self.columns, str) or not all(isinstance(c, str) and c for c in self.columns):
                raise ValueError(f"{where}: columns must be a list of column names, got {self.columns!r}")
            object.__setattr__(self, "columns", tuple(self.columns))
            if not self.columns or len(set(self.columns)) != len(self.columns):
                raise ValueError(f"{where}: columns must name at least one column, each once, got {list(self.columns)}")
            if self.name in self.columns:
                raise ValueError(f"{where}: a list built from columns needs a new name, not one of its columns")
            if self.separator != "|" or self.weight_separator is not None:
                raise ValueError(f"{where}: separator and weight_separator do not apply to a list built from "
                                 "columns (one value per column)")
        if self.padding is not None:
            if self.columns is None:
                raise ValueError(f"{where}: padding applies to a list built from columns only")
            if not isinstance(self.padding, str) or not self.padding:
                raise ValueError(f"{where}: padding must be a non-empty string (a value as the file writes it), "
                                 f"got {self.padding!r}")
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

    @property
    def sources(self) -> tuple[str, ...]:
        """The file columns this list is read from: its ``columns``, or its own name."""
        return self.columns if self.columns is not None else (self.name,)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "kind": self.kind, "separator": self.separator, "max_length": self.max_length,
                "weight_separator": self.weight_separator, "pooling": self.pooling, "vocab_of": self.vocab_of,
                **({"columns": list(self.columns), "padding": self.padding} if self.columns is not None else {})}


@dataclass(frozen=True)
class Schema:
    """How to read one layout of raw rows.

    format: the reader to use: ``delimited`` (TSV/CSV), ``slot`` (PaddleRec slot lines) or ``kv``
        (``key:value`` tokens separated by ``delimiter``, a list column's key repeated once per
        value: PaddleRec's BST sample; after the ``positional`` fields, if any: Ali-CCP's
        ``id,click,conversion,field:id,...``), ``parquet`` (:mod:`ctrlab.data.parquet`), ``libsvm`` /
        ``libffm`` (:mod:`ctrlab.data.libsvm`), ``feat_idx`` / ``feasign`` (PaddleRec's
        logistic_regression and slot_dnn lines: :mod:`ctrlab.data.paddle_formats`).
    columns: every column of the file, in file order (delimited formats only); columns that are
        neither label, dense, sparse nor id are read and dropped. For ``kv``: the positional
        fields and the keys.
    label: name of the label column in the file, or None (e.g. the Kaggle test file).
    dense / sparse: names of the numeric and categorical columns.
    id_column: a row id column to carry through to predictions (Kaggle ``Id``), or None.
    header: whether the first line is a header row.
    delimiter: field separator for delimited formats.
    quoted: whether fields may be quoted with '"' (CSV) or never (Criteo TSV).
    lists: the list-valued categorical columns (:class:`ListColumn`; not among ``sparse``).
    more_labels: further label columns (several tasks: click, conversion, ...), after ``label``;
        task i is canonical column :func:`task_column` (i). Delimited formats only.
    optional_labels: label columns whose value may be empty in a row (the label is missing
        there: the row does not count for that task); any other empty or non-0/1 label is bad.
    positional: ``kv`` only: the leading fields of every line, by position, before its
        ``key:value`` tokens (``[sample_id, click, conversion]``); each is the id, a label, a
        dense or a sparse column (an empty field is a missing value).
    field_map: ``libsvm``: (field, first index, last index) per field; ``libffm``: (field, field
        number, same); ``feasign``: (field, slot, same), the label's slot too.
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
    more_labels: tuple[str, ...] = ()
    optional_labels: tuple[str, ...] = ()
    positional: tuple[str, ...] = ()
    field_map: tuple[tuple[str, int, int], ...] = ()

    def __post_init__(self) -> None:
        for name in ("columns", "dense", "sparse", "more_labels", "optional_labels", "positional"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        object.__setattr__(self, "field_map", tuple((str(n), int(lo), int(hi)) for n, lo, hi in self.field_map))
        object.__setattr__(self, "lists", tuple(c if isinstance(c, ListColumn) else ListColumn(**c) for c in self.lists))
        list_names = [c.name for c in self.lists]
        if self.more_labels and (self.label is None or self.format not in ("delimited", "kv", "parquet")):
            raise ValueError(f"schema {self.name!r}: several labels need a first label and a delimited format "
                             "(or key:value)")
        if self.positional:
            singles = {*self.labels, self.id_column, *self.dense, *self.sparse}
            if self.format != "kv":
                raise ValueError(f"schema {self.name!r}: positional fields apply to the key:value format only")
            wrong = [c for c in self.positional if c not in singles]
            if wrong or len(set(self.positional)) != len(self.positional):
                raise ValueError(f"schema {self.name!r}: positional fields {list(self.positional)} must each be "
                                 f"the id, a label, a dense or a sparse column, once (not: {wrong or 'repeated'})")
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"schema {self.name!r}: a label column is named twice: {list(self.labels)}")
        if set(self.optional_labels) - set(self.labels):
            raise ValueError(f"schema {self.name!r}: optional_labels {sorted(set(self.optional_labels) - set(self.labels))} "
                             f"are not label columns {list(self.labels)}")
        if self.format == "delimited":
            known = set(self.columns)
            for col in (*self.labels, self.id_column, *self.dense, *self.sparse, *self.list_sources):
                if col is not None and col not in known:
                    raise ValueError(f"schema {self.name!r}: column {col!r} is not among its columns {list(self.columns)}")
            for column in self.lists:
                if column.columns is not None and column.name in known:
                    raise ValueError(f"schema {self.name!r}: list column {column.name!r} is built from columns, "
                                     "so its name must be new, not a column of the file")
            uses = Counter(c for c in (*self.labels, self.id_column, *self.dense, *self.sparse, *self.list_sources)
                           if c is not None)
            twice_used = sorted(c for c in self.labels if uses[c] > 1)
            if twice_used:
                raise ValueError(f"schema {self.name!r}: label column(s) {twice_used} are also used as a feature or id")
            reused = sorted(c for column in self.lists if column.columns for c in column.columns if uses[c] > 1)
            if reused:
                raise ValueError(f"schema {self.name!r}: column(s) {reused} are the source of a list built from "
                                 "columns and also used otherwise (label, id, dense, sparse or another list)")
        elif any(c.columns is not None for c in self.lists):
            raise ValueError(f"schema {self.name!r}: lists built from columns are read from delimited files only")
        elif self.lists and self.format not in LIST_FORMATS:
            raise ValueError(f"schema {self.name!r}: list-valued columns are read from delimited, key:value, "
                             "parquet, libsvm, libffm or feasign files only")
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
    def labels(self) -> tuple[str, ...]:
        """Every label column in task order (empty without a label)."""
        return (self.label, *self.more_labels) if self.label is not None else ()

    @property
    def list_sources(self) -> tuple[str, ...]:
        """The file columns the lists are read from, in list order (:attr:`ListColumn.sources`)."""
        return tuple(c for column in self.lists for c in column.sources)

    @property
    def feature_columns(self) -> tuple[str, ...]:
        return self.dense + self.sparse

    def without_label(self) -> "Schema":
        """The same layout with the label columns absent (prediction input)."""
        if self.label is None:
            return self
        plain = {"label": None, "more_labels": (), "optional_labels": ()}
        if self.format in ("slot", "feat_idx"):
            return Schema(**{**self.to_dict(), "name": self.name, **plain})
        columns = tuple(c for c in self.columns if c not in self.labels)
        positional = tuple(c for c in self.positional if c not in self.labels)
        return Schema(**{**self.to_dict(), "columns": columns, "positional": positional, **plain})

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
            **({"more_labels": list(self.more_labels)} if self.more_labels else {}),
            **({"optional_labels": list(self.optional_labels)} if self.optional_labels else {}),
            **({"positional": list(self.positional)} if self.positional else {}),
            **({"field_map": [list(f) for f in self.field_map]} if self.field_map else {}),
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


def _feat_idx() -> Schema:
    # PaddleRec's criteo_lr_reader (logistic_regression): "feat_idx:i (x39) feat_value:v (x39) label:y";
    # position k of the 39 is I{k} (k <= 13: the value is the number) or C{k-13} (the idx is the id)
    return Schema("feat_idx", "feat_idx", (LABEL, *CRITEO_DENSE, *CRITEO_SPARSE), LABEL, CRITEO_DENSE,
                  CRITEO_SPARSE, delimiter=" ")


def _slot() -> Schema:
    # PaddleRec: "click:0 dense_feature:v (x13) 1:id ... 26:id". Slot k maps to C{k}.
    return Schema("slot", "slot", (), LABEL, CRITEO_DENSE, CRITEO_SPARSE, delimiter=" ")


PRESETS: dict[str, Schema] = {
    s.name: s for s in (_criteo_tsv(), _criteo_test_tsv(), _criteo_kaggle_csv(), _criteo_csv(), _slot(), _feat_idx())
}

#: Names accepted by ``--format``: the presets plus ``csv``/``tsv`` (generic, schema from config).
#: ``parquet``, ``libsvm``, ``libffm`` and ``feasign`` (PaddleRec slot_dnn) take their roles from data.schema.
FORMAT_NAMES = tuple(PRESETS) + ("csv", "tsv", "kv") + SELF_DESCRIBING_FORMATS


@dataclass
class GenericSchemaConfig:
    """A declared schema for generic CSV/TSV input (the ``data.schema`` config section)."""

    columns: list[str] = field(default_factory=list)
    # the label column, or a list of them (several tasks: [click, conversion]; the first is task 0)
    label: str | list[str] | None = LABEL
    dense: list[str] = field(default_factory=list)
    sparse: list[str] | None = None
    id_column: str | None = None
    # true, false, or "auto": a file's first line is its header when it names the declared
    # ``columns`` (files with and without a header line in one data set: PaddleRec's aitm sample)
    header: bool | str = True
    delimiter: str | None = None
    # kv only: the leading fields of every line, by position, before the key:value tokens
    # (Ali-CCP: [sample_id, click, conversion]); see Schema.positional
    positional: list[str] = field(default_factory=list)
    # list-valued columns: name -> {kind: sequence|multi, separator, max_length, weight_separator,
    # pooling, vocab_of, columns, padding} (see ListColumn); they are neither dense nor sparse (nor
    # are the source columns of a list built from ``columns``)
    lists: dict[str, dict[str, Any]] = field(default_factory=dict)
    # label columns whose value may be empty (that row does not count for that task)
    optional_labels: list[str] = field(default_factory=list)
    # libsvm: field name -> [first, last] index (inclusive); libffm: field name -> field number;
    # feasign: field name -> slot number (see ctrlab.data.libsvm / ctrlab.data.paddle_formats)
    fields: dict[str, Any] = field(default_factory=dict)

    @property
    def labels(self) -> list[str]:
        """The label columns, in task order."""
        return [] if self.label is None else [self.label] if isinstance(self.label, str) else list(self.label)


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
    labels = cfg.labels
    if not isinstance(cfg.label, (str, list, tuple, type(None))) or not all(isinstance(c, str) and c for c in labels) \
            or (cfg.label is not None and not labels):
        raise ValueError(f"data.schema.label: expected a column name or a list of them, got {cfg.label!r}")
    label, more_labels = (labels[0], tuple(labels[1:])) if labels else (None, ())
    taken = {*labels, cfg.id_column, *cfg.dense, *cfg.lists}
    for options in cfg.lists.values():
        if isinstance(options, dict) and isinstance(options.get("columns"), (list, tuple)):
            taken.update(options["columns"])
    sparse = list(cfg.sparse) if cfg.sparse is not None else [c for c in columns if c not in taken]
    lists = []
    for name, options in cfg.lists.items():
        if not isinstance(options, dict):
            raise ValueError(f"data.schema.lists.{name}: expected a mapping of options, got {options!r}")
        unknown = sorted(set(options) - set(LIST_OPTIONS))
        if unknown:
            raise ValueError(f"data.schema.lists.{name}: unknown option(s) {unknown}; valid: {', '.join(LIST_OPTIONS)}")
        lists.append(ListColumn(name=name, **options))
    if fmt == "kv":  # key:value tokens (after the positional fields): the columns are their names; no header
        return Schema(name=fmt, format="kv", columns=tuple(columns), label=label, dense=tuple(cfg.dense),
                      sparse=tuple(sparse), id_column=cfg.id_column, delimiter=cfg.delimiter or " ",
                      lists=tuple(lists), more_labels=more_labels, optional_labels=tuple(cfg.optional_labels),
                      positional=tuple(cfg.positional))
    if cfg.positional:
        raise ValueError("data.schema.positional applies to the kv format only")
    if not isinstance(cfg.header, bool):
        raise ValueError(f"data.schema.header: expected true, false or auto, got {cfg.header!r}")
    return Schema(
        name=fmt, format="delimited", columns=tuple(columns), label=label, dense=tuple(cfg.dense),
        sparse=tuple(sparse), id_column=cfg.id_column, header=cfg.header, delimiter=delimiter,
        quoted=delimiter == ",", lists=tuple(lists), more_labels=more_labels,
        optional_labels=tuple(cfg.optional_labels),
    )


#: feasign (PaddleRec slot_dnn) slots are multi-valued lists; ids kept per slot unless its
#: ``data.schema.lists`` entry sets max_length
FEASIGN_MAX_LENGTH = 32


def _int_pair(name: str, value: Any, fmt: str) -> tuple[int, int]:
    if fmt == "libsvm":
        if isinstance(value, int) and not isinstance(value, bool):
            value = [value, value]
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in value) and value[0] <= value[1]
        if not ok:
            raise ValueError(f"data.schema.fields.{name}: expected [first, last] feature indices (integers >= 0, "
                             f"first <= last) or one index, got {value!r}")
        return int(value[0]), int(value[1])
    what = "field number" if fmt == "libffm" else "slot number"
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"data.schema.fields.{name}: expected a {what} (an integer >= 0), got {value!r}")
    return value, value


def self_describing_schema(cfg: GenericSchemaConfig, fmt: str, file_columns: list[str] | None) -> Schema:
    """The Schema of a ``parquet``, ``libsvm``, ``libffm`` or ``feasign`` input from ``data.schema``.

    ``file_columns``: parquet: the file's column names; libffm / feasign without
    ``data.schema.fields``: the fields / slots found in the file (``f<field>`` / ``s<slot>``)."""
    labels = cfg.labels
    label, more = (labels[0], tuple(labels[1:])) if labels else (None, ())
    options = {}
    for name, opts in cfg.lists.items():
        if not isinstance(opts, dict):
            raise ValueError(f"data.schema.lists.{name}: expected a mapping of options, got {opts!r}")
        unknown = sorted(set(opts) - set(LIST_OPTIONS))
        if unknown:
            raise ValueError(f"data.schema.lists.{name}: unknown option(s) {unknown}; valid: {', '.join(LIST_OPTIONS)}")
        options[name] = dict(opts)
    if fmt == "parquet":
        if cfg.fields or cfg.positional:
            raise ValueError("data.schema.fields and positional do not apply to parquet (its columns have names)")
        columns = list(file_columns or [])
        taken = {*labels, cfg.id_column, *cfg.dense, *cfg.lists}
        sparse = list(cfg.sparse) if cfg.sparse is not None else [c for c in columns if c not in taken]
        missing = [c for c in (*labels, cfg.id_column, *cfg.dense, *sparse, *cfg.lists) if c and c not in columns]
        if missing:
            raise ValueError(f"parquet input lacks the declared column(s) {missing} (its columns: {columns})")
        lists = tuple(ListColumn(name=n, **o) for n, o in options.items())
        return Schema(name=fmt, format="parquet", columns=tuple(columns), label=label, dense=tuple(cfg.dense),
                      sparse=tuple(sparse), id_column=cfg.id_column, lists=lists, more_labels=more,
                      optional_labels=tuple(cfg.optional_labels))
    if more or cfg.id_column or cfg.positional or cfg.optional_labels:
        raise ValueError(f"{fmt} input has one label, first on each line (libsvm, libffm) or in slot 1 "
                         "(feasign): data.schema.label must be one name; id_column, positional and "
                         "optional_labels do not apply")
    if label is None:
        label = LABEL
    if fmt == "libsvm" and not cfg.fields:  # one weighted multi-valued field: ids = indices, weights = values
        extra = [c for c in (*cfg.dense, *(cfg.sparse or []), *cfg.lists) if c != LIBSVM_FEATURES]
        if extra or LIBSVM_FEATURES not in options or options[LIBSVM_FEATURES].get("max_length") is None:
            raise ValueError(f"libsvm without data.schema.fields reads every idx:val of a line as one weighted "
                             f"list {LIBSVM_FEATURES!r}: declare data.schema.lists.{LIBSVM_FEATURES}: {{max_length: N}} "
                             f"(and nothing else), or map index ranges to fields with data.schema.fields"
                             + (f" (not: {extra})" if extra else ""))
        opts = {"kind": "multi", "pooling": "sum", "weight_separator": ":", **options[LIBSVM_FEATURES]}
        return Schema(name=fmt, format="libsvm", columns=(label, LIBSVM_FEATURES), label=label, dense=(), sparse=(),
                      lists=(ListColumn(name=LIBSVM_FEATURES, **opts),), delimiter=" ")
    if cfg.fields:
        field_map = [(str(n), *_int_pair(str(n), v, fmt)) for n, v in cfg.fields.items()]
    elif fmt in ("libffm", "feasign"):
        prefix = "f" if fmt == "libffm" else "s"
        field_map = [(c, int(c[1:]), int(c[1:])) for c in (file_columns or [])]
        if fmt == "feasign":
            field_map = [(label if n == "s1" else n, lo, hi) for n, lo, hi in field_map if n != label]
            if not any(lo == 1 for _, lo, _ in field_map):
                field_map.insert(0, (label, 1, 1))
        if not field_map:
            raise ValueError(f"{fmt} input: no {prefix}<n> fields found; declare data.schema.fields")
    else:
        raise ValueError(f"{fmt} input needs data.schema.fields")
    names = [n for n, _, _ in field_map]
    if len(set(names)) != len(names):
        raise ValueError(f"data.schema.fields: a name is used twice: {names}")
    ordered = sorted(field_map, key=lambda f: f[1])
    for (a, _, a_hi), (b, b_lo, _) in zip(ordered, ordered[1:]):
        if b_lo <= a_hi:
            raise ValueError(f"data.schema.fields: {a!r} and {b!r} overlap (each index, field or slot belongs to "
                             "one field)")
    if fmt == "feasign":
        if label not in names:
            raise ValueError(f"feasign input: data.schema.fields must map the label {label!r} to its slot (1)")
        features = [n for n in names if n != label]
        field_map = [f for f in field_map if f[0] != label] + [f for f in field_map if f[0] == label]
    else:
        if label in names:
            raise ValueError(f"{fmt} input: the label {label!r} is the first token of a line, not a field")
        features = names
    unknown = [c for c in (*cfg.dense, *cfg.lists, *(cfg.sparse or [])) if c not in features]
    if unknown:
        raise ValueError(f"data.schema: {unknown} are not fields of data.schema.fields ({features})")
    spans = {n: (lo, hi) for n, lo, hi in field_map}
    wide = [c for c in cfg.dense if fmt == "libsvm" and spans[c][0] != spans[c][1]]
    if wide:
        raise ValueError(f"libsvm dense field(s) {wide} must be one index ([i, i]): its value is the number")
    if fmt == "feasign":  # every slot but the declared single-valued (sparse) or dense ones is a list
        singles = set(cfg.sparse or []) | set(cfg.dense)
        for name in features:
            if name not in singles:
                options[name] = {"kind": "multi", "pooling": "sum", "max_length": FEASIGN_MAX_LENGTH,
                                 **options.get(name, {})}
    lists = tuple(ListColumn(name=n, **options[n]) for n in features if n in options)
    sparse = [n for n in features if n not in cfg.dense and n not in options]
    return Schema(name=fmt, format=fmt, columns=(label, *features), label=label, dense=tuple(cfg.dense),
                  sparse=tuple(sparse), lists=lists, delimiter=" ", field_map=tuple(field_map))
