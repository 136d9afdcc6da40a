"""FeaturePipeline: raw columns -> (dense float32[N, dense_width], sparse int32[N, sparse_width]).

The one implementation of feature encoding. Training-data preparation, evaluation, offline
prediction, the exported bundle and the HTTP server all call :meth:`FeaturePipeline.transform`
on the same fitted object (loaded from ``pipeline.json``), so online and offline encodings
agree by construction. ``transform`` has two lanes with the same bytes (tested): the encoders'
vectorized ``transform`` and, for inputs of a few rows, the one-value-at-a-time
:class:`~.online.OnlineEncoder` built from the same fitted state. ``prepare`` streams the fit
through :meth:`FeaturePipeline.accumulators` and turns the provisional codes they hand out into
the fitted encodings with the :class:`CodeFinalizer` that :meth:`FeaturePipeline.finish_fit`
returns.

Output layout: dense features are the numeric columns kept numeric, in schema order; sparse
features are the numeric columns that were bucketized (in schema order) followed by the
categorical columns (in schema order), then, for each list column (``lists``: multi-valued and
sequence columns, issue 15), a block of ``max_length`` columns with its ids (values first, padding
with the missing id 0; :func:`~.lists.list_ids`). A list column encodes through its own
:class:`~.encoders.Vocabulary` or, with ``vocab_of``, through that categorical column's (the same
ids). A weighted list column (``tag:0.7``) also gives a block of ``max_length`` dense columns after
the numeric ones: its weights where its ids are, 0 at padding
(:attr:`~ctrlab.fields.FeatureSpec.weight_columns`). With list columns, :meth:`FeaturePipeline.transform`
of an Arrow table takes the vectorized lane for any number of rows, and
:meth:`FeaturePipeline.transform_columns` (checked request values) the online lane, with the same
bytes.
"""

from __future__ import annotations

import json
import operator
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import pyarrow as pa

from ..fields import FeatureSpec, ListField
from ..fileio import write_bytes_atomic
from ..schema import WEIGHTS_SUFFIX, ListColumn
from .encoders import (Accumulator, BucketizedNumeric, EpochRemaps, Finalize, HashBuckets, NumericTransform, RemapFinalize,
                       BATCHED_VOCAB_ROWS, Vocabulary, column_values, encoder_from_dict, growing_accumulator,
                       stacked_tables, vocabulary_ids)
from .lists import list_ids, list_values, list_weights
from .online import SMALL_INPUT_ROWS, OnlineEncoder

FORMAT_VERSION = 1


class InputError(ValueError):
    """Rows that cannot be scored: names the row (0-based) and the field, and what was expected.

    ``row`` and ``field`` are kept (None when not about one value) so that a file reader can
    name the file and line instead."""

    def __init__(self, message: str, *, row: int | None = None, field: str | None = None, reason: str = ""):
        super().__init__(message)
        self.row = row
        self.field = field
        self.reason = reason or message


@dataclass
class CategoricalOptions:
    """How categorical columns are encoded (the ``features.categorical`` config section)."""

    encoder: str = "vocab"  # vocab | hash
    # values seen once in the training rows share the OOV id: it gets trained, and unseen values at
    # serving time land on a trained embedding rather than an untrained one
    min_count: int = 2
    max_size: int | None = None
    hash_buckets: int = 1_000_000


@dataclass
class NumericOptions:
    """How numeric columns are encoded (the ``features.numeric`` config section)."""

    # log1p_standardize | log1p | minmax | passthrough | log_square_bucket. The default suits any
    # numeric column (fractions, counts, negatives) and ties with log-square buckets on the real
    # Criteo rows (README, feature study); the buckets are a Criteo-count choice, not a general one.
    transform: str = "log1p_standardize"
    fill_value: float = 0.0
    # options for transform: log_square_bucket (its vocabulary over bucket keys)
    min_count: int = 2


def _categorical_encoder(opts: CategoricalOptions):
    if opts.encoder == "vocab":
        return Vocabulary(opts.min_count, opts.max_size)
    if opts.encoder == "hash":
        return HashBuckets(opts.hash_buckets)
    raise ValueError(f"unknown categorical encoder {opts.encoder!r}; valid: vocab, hash")


def _numeric_encoder(opts: NumericOptions):
    if opts.transform == "log_square_bucket":
        return BucketizedNumeric(Vocabulary(opts.min_count))
    return NumericTransform(opts.transform, opts.fill_value)


def _check_list_columns(lists: Sequence[ListColumn], dense_inputs: list[str], sparse_inputs: list[str],
                       encoders: dict[str, Any]) -> None:
    """What the pipeline can encode of list columns: a fixed length, a shared vocabulary only of
    a single-valued categorical column with a Vocabulary."""
    seen: set[str] = set()
    for column in lists:
        where = f"list column {column.name!r}"
        if not isinstance(column, ListColumn):
            raise TypeError(f"lists: expected ListColumn, got {column!r}")
        if column.name in seen or column.name in dense_inputs or column.name in sparse_inputs:
            raise ValueError(f"{where} is declared twice or is also a dense/sparse input")
        seen.add(column.name)
        if column.max_length is None:
            raise ValueError(f"{where} has no max_length: its ids take a fixed block of the sparse matrix; "
                             "give it max_length (the most values a row keeps)")
        if column.vocab_of is not None:
            if column.vocab_of not in sparse_inputs:
                raise ValueError(f"{where}: vocab_of {column.vocab_of!r} is not a single-valued categorical "
                                 f"(sparse) input; those are {list(sparse_inputs)}")
            if type(encoders.get(column.vocab_of)) is not Vocabulary:
                raise ValueError(f"{where}: vocab_of {column.vocab_of!r} is not encoded with a vocabulary "
                                 f"(encoder {type(encoders.get(column.vocab_of)).__name__}); a shared "
                                 "vocabulary needs encoder: vocab")


class FeaturePipeline:
    """Encoders for every input column, fitted on training rows only.

    Build one with :meth:`from_options` (per-column options, defaults for the rest), fit it with
    :meth:`fit` on training tables (or through ``prepare``), then call :meth:`transform`.

    lists: list-valued columns (:class:`~ctrlab.schema.ListColumn`, with ``max_length``), each
    encoded as a block of ``max_length`` sparse columns after the single-valued ones (a weighted
    one's weights as a block of dense columns after the numeric ones); list_encoders: the :class:`~.encoders.Vocabulary` of every list column without
    ``vocab_of`` (one with ``vocab_of`` uses ``encoders[vocab_of]``).
    """

    def __init__(self, dense_inputs: list[str], sparse_inputs: list[str], encoders: dict[str, Any],
                 lists: Sequence[ListColumn] = (), list_encoders: dict[str, Vocabulary] | None = None):
        self.dense_inputs = list(dense_inputs)
        self.sparse_inputs = list(sparse_inputs)
        self.encoders = dict(encoders)
        missing = [c for c in self.dense_inputs + self.sparse_inputs if c not in self.encoders]
        if missing:
            raise ValueError(f"no encoder for columns {missing}")
        self.list_inputs: list[ListColumn] = list(lists)
        self.list_encoders: dict[str, Vocabulary] = dict(list_encoders or {})
        _check_list_columns(self.list_inputs, self.dense_inputs, self.sparse_inputs, self.encoders)
        own = [c.name for c in self.list_inputs if c.vocab_of is None]
        missing = [c for c in own if type(self.list_encoders.get(c)) is not Vocabulary]
        extra = sorted(set(self.list_encoders) - set(own))
        if missing or extra:
            raise ValueError(f"list columns {missing} lack their own Vocabulary"
                             + (f"; list_encoders names columns without one {extra}" if extra else ""))
        self.fitted = False
        self._online: OnlineEncoder | None = None  # the small-input lane, built on first use
        self._stacked: tuple[list[Any], Any] | None = None  # (vocabularies, their stacked tables), ditto

    # construction ----------------------------------------------------------------------------
    @classmethod
    def from_options(cls, dense_inputs: list[str], sparse_inputs: list[str],
                     categorical: CategoricalOptions | None = None, numeric: NumericOptions | None = None,
                     overrides: dict[str, CategoricalOptions | NumericOptions] | None = None,
                     lists: Sequence[ListColumn] | None = None) -> "FeaturePipeline":
        """lists: list-valued columns (see the class); one without ``vocab_of`` gets its own
        :class:`~.encoders.Vocabulary` from ``categorical`` (or its override): min_count and
        max_size (a hash encoder is refused for a list column)."""
        categorical = categorical or CategoricalOptions()
        numeric = numeric or NumericOptions()
        overrides = overrides or {}
        lists = list(lists or ())
        list_names = [c.name for c in lists]
        unknown = set(overrides) - set(dense_inputs) - set(sparse_inputs) - set(list_names)
        if unknown:
            raise ValueError(f"features.columns names unknown columns {sorted(unknown)}; "
                             f"columns are {list(dense_inputs) + list(sparse_inputs) + list_names}")
        encoders: dict[str, Any] = {}
        for col in dense_inputs:
            encoders[col] = _numeric_encoder(overrides.get(col, numeric))  # type: ignore[arg-type]
        for col in sparse_inputs:
            encoders[col] = _categorical_encoder(overrides.get(col, categorical))  # type: ignore[arg-type]
        _check_list_columns(lists, list(dense_inputs), list(sparse_inputs), encoders)
        list_encoders: dict[str, Vocabulary] = {}
        for column in lists:
            if column.vocab_of is not None:
                if column.name in overrides:
                    raise ValueError(f"features.columns.{column.name}: list column {column.name!r} shares the "
                                     f"vocabulary of {column.vocab_of!r}; set the options there")
                continue
            opts = overrides.get(column.name, categorical)
            if not isinstance(opts, CategoricalOptions):
                raise ValueError(f"features.columns.{column.name}: list column {column.name!r} takes categorical "
                                 f"options, got {type(opts).__name__}")
            if opts.encoder != "vocab":
                raise ValueError(f"list column {column.name!r}: encoder {opts.encoder!r} is not supported for list "
                                 "columns; use encoder: vocab (features.columns."
                                 f"{column.name}.encoder)")
            list_encoders[column.name] = Vocabulary(opts.min_count, opts.max_size)
        return cls(dense_inputs, sparse_inputs, encoders, lists, list_encoders)

    # layout ----------------------------------------------------------------------------------
    @property
    def dense_outputs(self) -> list[str]:
        return [c for c in self.dense_inputs if isinstance(self.encoders[c], NumericTransform)]

    @property
    def sparse_outputs(self) -> list[str]:
        bucketized = [c for c in self.dense_inputs if isinstance(self.encoders[c], BucketizedNumeric)]
        return bucketized + list(self.sparse_inputs)

    @property
    def list_names(self) -> list[str]:
        return [c.name for c in self.list_inputs]

    @property
    def weight_inputs(self) -> list[str]:
        """The weights columns of the weighted list columns (``name`` + WEIGHTS_SUFFIX: list<float64>,
        as the readers give them beside ``name``); their weights follow the numeric features in
        the dense matrix (:attr:`~ctrlab.fields.FeatureSpec.weight_columns`)."""
        return [c.name + WEIGHTS_SUFFIX for c in self.list_inputs if c.weight_separator is not None]

    @property
    def input_columns(self) -> list[str]:
        """The raw columns :meth:`transform` reads: dense, sparse, then list columns."""
        return self.dense_inputs + self.sparse_inputs + self.list_names

    def list_vocabulary(self, column: ListColumn) -> Vocabulary:
        """The vocabulary a list column encodes through: its own, or its ``vocab_of`` column's."""
        if column.vocab_of is not None:
            return self.encoders[column.vocab_of]
        return self.list_encoders[column.name]

    @property
    def spec(self) -> FeatureSpec:
        self._check_fitted()
        fields = [ListField(c.name, int(c.max_length), self.list_vocabulary(c).size_,  # type: ignore[arg-type]
                            shares=c.vocab_of, kind=c.kind, pooling=c.pooling,
                            weighted=c.weight_separator is not None) for c in self.list_inputs]
        return FeatureSpec(self.dense_outputs, self.sparse_outputs,
                           [self.encoders[c].size_ for c in self.sparse_outputs], lists=fields)

    def _check_fitted(self) -> None:
        if not self.fitted:
            raise RuntimeError("FeaturePipeline is not fitted: run fit() or load a fitted pipeline.json")

    # fitting ---------------------------------------------------------------------------------
    def accumulators(self) -> dict[str, Accumulator]:
        """Streaming fit state per input column (see encoders.Accumulator): feed each one
        ``column_values(table, col, col in dense_inputs)``, then call :meth:`finish_fit`. A list
        column's entry (by its name) is its own vocabulary's accumulator, or the very object of
        the column whose vocabulary it shares (``vocab_of``): feed it the list's values
        (:func:`~.lists.list_values`), so a shared vocabulary counts both."""
        accs = {col: self.encoders[col].accumulator() for col in self.dense_inputs + self.sparse_inputs}
        for column in self.list_inputs:
            accs[column.name] = (accs[column.vocab_of] if column.vocab_of is not None
                                 else self.list_encoders[column.name].accumulator())
        return accs

    def vocabularies(self) -> dict[str, Vocabulary]:
        """Every distinct vocabulary by the name it is known under in a store's sidecar and id
        changes: a single-valued column's (a bucketized numeric column's inner one too) by the
        column's name, a list column's own by the list's name (a shared one is its column's)."""
        out: dict[str, Vocabulary] = {}
        for col in self.sparse_outputs:
            enc = self.encoders[col]
            if isinstance(enc, BucketizedNumeric):
                out[col] = enc.vocab
            elif isinstance(enc, Vocabulary):
                out[col] = enc
        for column in self.list_inputs:
            if column.vocab_of is None:
                out[column.name] = self.list_encoders[column.name]
        return out

    def vocabulary_of_column(self) -> list[str | None]:
        """Per column of the sparse matrix (list blocks included), the name of its vocabulary in
        :meth:`vocabularies` (None for a hash-bucketed column)."""
        names = set(self.vocabularies())
        out: list[str | None] = [col if col in names else None for col in self.sparse_outputs]
        for column in self.list_inputs:
            out += [column.vocab_of or column.name] * int(column.max_length)  # type: ignore[arg-type]
        return out

    def growing_accumulators(self, states: Mapping[str, Any], version: int,
                             unseen_partitions: int | None = None) -> dict[str, Accumulator]:
        """Like :meth:`accumulators`, for appending a partition to a store (``ctrlab.data.append``):
        each vocabulary grows from its carried-over state (``states[name]``, a
        :class:`~.encoders.VocabState`; absent = empty), numeric transforms stay as fitted (a
        new store's first partition fits them). After :meth:`finish_fit`, each vocabulary's
        accumulator holds its new ``state`` and ``changes``."""
        vocab_name = {id(v): name for name, v in self.vocabularies().items()}
        accs: dict[str, Accumulator] = {}
        for col in self.dense_inputs + self.sparse_inputs:
            enc = self.encoders[col]
            inner = enc.vocab if isinstance(enc, BucketizedNumeric) else enc
            accs[col] = growing_accumulator(enc, states.get(vocab_name.get(id(inner), "")), version, unseen_partitions)
        for column in self.list_inputs:
            if column.vocab_of is not None:
                accs[column.name] = accs[column.vocab_of]
            else:
                accs[column.name] = growing_accumulator(self.list_encoders[column.name], states.get(column.name),
                                                        version, unseen_partitions)
        return accs

    def finish_fit(self, accumulators: dict[str, Accumulator],
                   map_each: Callable[..., Iterable[Any]] = map) -> "CodeFinalizer":
        """Fit every encoder from its accumulator (the pipeline is fitted afterwards) and return
        the finalizer of the codes the accumulators handed out, for the whole sparse matrix (list
        blocks included: a block's codes are its vocabulary's). map_each: ``map`` or a pool's
        ``map``, to finish the columns in parallel."""
        columns = self.sparse_outputs + [c.name for c in self.list_inputs for _ in range(int(c.max_length))]
        return CodeFinalizer(columns, self.dense_outputs, self._finish(accumulators, map_each))

    def _finish(self, accumulators: dict[str, Accumulator], map_each: Callable[..., Iterable[Any]]) -> dict[str, Finalize]:
        distinct = list({id(acc): acc for acc in accumulators.values()}.values())  # (a shared one finishes once)
        done = dict(zip(map(id, distinct), map_each(lambda acc: acc.finish(), distinct)))
        finals = {name: done[id(acc)] for name, acc in accumulators.items()}
        self.fitted = True
        self._online = self._stacked = None  # built from the new state on first use
        return finals

    def fit(self, tables: Iterable[pa.Table]) -> "FeaturePipeline":
        """Fit on training tables (canonical columns, see data.readers; a list column as
        ``list<string>``). A shared vocabulary counts every occurrence of a value in its column
        and in every list column that shares it (:func:`~.lists.fit_shared`); a list column's own
        vocabulary counts its values."""
        accs = {col: self.encoders[col].accumulator() for col in self.dense_inputs + self.sparse_inputs}
        list_accs = {name: vocab.accumulator() for name, vocab in self.list_encoders.items()}
        for table in tables:
            for col, acc in accs.items():
                acc.update(column_values(table, col, col in self.dense_inputs), None)
            for column in self.list_inputs:
                acc = accs[column.vocab_of] if column.vocab_of is not None else list_accs[column.name]
                values = list_values(table.column(column.name))[0]
                if values.type != pa.string():
                    values = values.cast(pa.string())
                acc.update(values, None)
        for acc in list_accs.values():
            acc.finish()
        self._finish(accs, map)
        return self

    # use -------------------------------------------------------------------------------------
    def transform(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """Encode a table of raw rows: dense float32[N, n_dense], sparse int32[N, n_sparse].

        Up to ``SMALL_INPUT_ROWS`` rows take the online lane (:class:`~.online.OnlineEncoder`),
        more take :meth:`encode_vectorized`: the same bytes either way. With list columns the
        sparse matrix is ``int32[N, spec.sparse_width]`` (each list's block after the
        single-valued columns) and every input takes :meth:`encode_vectorized` (no online lane).
        A feature that is not finite raises :class:`InputError`."""
        self._check_fitted()
        present = set(table.column_names)  # (a property that builds a new list on every access)
        missing = [c for c in self.input_columns + self.weight_inputs if c not in present]
        if missing:
            raise ValueError(f"input lacks columns {missing}")
        if table.num_rows <= SMALL_INPUT_ROWS and not self.list_inputs:
            dense, sparse = self._online_encoder().encode(table)
        else:
            dense, sparse = self.encode_vectorized(table)
        check_finite(dense[:, : len(self.dense_outputs)], self.dense_outputs,
                     lambda col, row: table.column(col)[row].as_py())
        return dense, sparse

    def transform_columns(self, columns: Mapping[str, Sequence[Any]], n: int) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`transform` of n rows given as checked Python values, n per input column
        (floats / str, None = missing: :func:`ctrlab.inference.rows.checked_columns`), through the
        online lane with no Arrow table in between (a request of a few rows): the same bytes. A
        list column's values are n lists of str, already cut to its max_length (as
        ``checked_columns`` gives them)."""
        self._check_fitted()
        online = self._online_encoder()
        dense, sparse = online.encode_columns(columns, n)
        check_finite(dense[:, : len(online.dense_outputs)], online.dense_outputs, lambda col, row: columns[col][row])
        return dense, sparse

    def _online_encoder(self) -> OnlineEncoder:
        online = self._online
        if online is None or not online.built_from(self.encoders):  # (an encoder may be replaced)
            online = self._online = OnlineEncoder.from_pipeline(self)
        return online

    def _stacked_tables(self, vocabs: list[Vocabulary]) -> Any:
        """The vocabularies' lookup tables stacked (:func:`~.encoders.stacked_tables`), built once
        for these encoder objects (rebuilt if an encoder is replaced); None when too large."""
        cached = self._stacked
        if cached is None or len(cached[0]) != len(vocabs) or not all(map(operator.is_, cached[0], vocabs)):
            cached = self._stacked = (list(vocabs), stacked_tables(vocabs))
        return cached[1]

    def encode_vectorized(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """The vectorized lane alone, for any number of rows, without :meth:`transform`'s checks:
        dense float32[N, n_dense], sparse int32[N, spec.sparse_width] (n_sparse without list
        columns)."""
        n = table.num_rows
        weighted = [c for c in self.list_inputs if c.weight_separator is not None]
        dense = np.empty((n, len(self.dense_outputs) + sum(int(c.max_length) for c in weighted)),  # type: ignore[misc]
                         dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by check_finite
            for j, col in enumerate(self.dense_outputs):
                dense[:, j] = self.encoders[col].transform(column_values(table, col, True))
        n_sparse = len(self.sparse_outputs)
        sparse = np.empty((n, n_sparse + sum(int(c.max_length) for c in self.list_inputs)),  # type: ignore[misc]
                          dtype=np.int32)
        batched = [j for j, col in enumerate(self.sparse_outputs) if n <= BATCHED_VOCAB_ROWS
                   and type(self.encoders[col]) is Vocabulary and col not in self.dense_inputs]
        if batched:  # string vocabularies of a small input: one hash pass for all of them
            cols = [self.sparse_outputs[j] for j in batched]
            vocabs = [self.encoders[c] for c in cols]
            sparse[:, batched] = vocabulary_ids(vocabs, [column_values(table, c, False) for c in cols],
                                                self._stacked_tables(vocabs))
        for j, col in enumerate(self.sparse_outputs):
            if j not in batched:
                sparse[:, j] = self.encoders[col].transform(column_values(table, col, col in self.dense_inputs))
        start = n_sparse
        for column in self.list_inputs:
            lists = table.column(column.name)
            if not (pa.types.is_list(lists.type) or pa.types.is_large_list(lists.type)):
                raise ValueError(f"list column {column.name!r}: expected a list of strings, got {lists.type}")
            if lists.type.value_type != pa.string():
                lists = lists.cast(pa.list_(pa.string()))
            length = int(column.max_length)  # type: ignore[arg-type]
            sparse[:, start:start + length] = list_ids(self.list_vocabulary(column), lists, length)[0]
            start += length
        start = len(self.dense_outputs)
        for column in weighted:  # (each weight where its value's id is)
            length = int(column.max_length)  # type: ignore[arg-type]
            dense[:, start:start + length] = list_weights(table.column(column.name + WEIGHTS_SUFFIX), length)
            start += length
        return dense, sparse

    # persistence -----------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The fitted state (``pipeline.json``). ``lists`` (the list columns) and
        ``list_encoders`` (their own vocabularies; a shared one is the ``encoders`` entry of its
        column) appear only when there are list columns: a pipeline without them keeps its bytes."""
        self._check_fitted()
        out = {
            "format_version": FORMAT_VERSION,
            "dense_inputs": self.dense_inputs,
            "sparse_inputs": self.sparse_inputs,
            "encoders": {col: self.encoders[col].to_dict() for col in self.dense_inputs + self.sparse_inputs},
        }
        if self.list_inputs:
            out["lists"] = [c.to_dict() for c in self.list_inputs]
            out["list_encoders"] = {name: vocab.to_dict() for name, vocab in self.list_encoders.items()}
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FeaturePipeline":
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(f"pipeline format_version {version!r} is not supported (this ctrlab reads {FORMAT_VERSION})")
        pipe = cls(data["dense_inputs"], data["sparse_inputs"],
                   {col: encoder_from_dict(enc) for col, enc in data["encoders"].items()},
                   [ListColumn(**c) for c in data.get("lists", ())],
                   {col: encoder_from_dict(enc) for col, enc in data.get("list_encoders", {}).items()})
        pipe.fitted = True
        return pipe

    def save(self, path: str | os.PathLike) -> None:
        # one C-encoder call: fast; written whole or not at all, a full disk named by path
        write_bytes_atomic(path, json.dumps(self.to_dict(), separators=(",", ":")).encode())

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FeaturePipeline":
        with open(path, encoding="utf-8") as fh:
            return cls.from_dict(json.load(fh))


def check_finite(dense: np.ndarray, names: list[str], raw_value: Callable[[str, int], Any]) -> None:
    """Raise :class:`InputError` naming the first row and field whose feature is not finite (a
    value whose transform overflows float32, e.g. 1e39 passed through): a model would score NaN.
    raw_value(column, row): the raw input value, for the message."""
    finite = np.isfinite(dense)
    if finite.all():
        return
    row, j = (int(i) for i in np.argwhere(~finite)[0])
    raw = raw_value(names[j], row)
    reason = f"value {raw!r} encodes to a non-finite feature ({dense[row, j]})"
    raise InputError(f"row {row}, field {names[j]!r}: {reason}", row=row, field=names[j], reason=reason)


class CodeFinalizer:
    """Turns the codes a pipeline's accumulators handed out (prepare's pass 1) into the fitted
    encodings (pass 2), with numpy alone: provisional vocabulary codes -> ids, raw numeric values
    -> features. Built by :meth:`FeaturePipeline.finish_fit`; safe to call from several threads
    on disjoint rows.

    sparse_outputs / dense_outputs: the columns of the sparse matrix (a list column's name once
    per column of its block) and the dense outputs; finals: per name, what its accumulator's
    ``finish`` returned.
    """

    def __init__(self, sparse_outputs: list[str], dense_outputs: list[str], finals: dict[str, Finalize]):
        self._args = (sparse_outputs, dense_outputs, finals)
        # vocabularies counted in epochs (spilled, :mod:`.spill`): rows of epoch e take at_epoch(e)
        self.epochs = max((f.epochs for f in finals.values() if isinstance(f, EpochRemaps)), default=0)
        sparse_finals = [finals[c] for c in sparse_outputs]
        self._dense_finals = [finals[c] for c in dense_outputs]
        # vocabulary columns remap through one concatenated lookup array with per-column offsets;
        # columns of one vocabulary (a list's block, a shared one) point at one copy of its table
        self._remapped = [j for j, f in enumerate(sparse_finals) if isinstance(f, RemapFinalize)]
        self._others = [(j, f) for j, f in enumerate(sparse_finals) if not isinstance(f, RemapFinalize)]
        self._all_remapped = len(self._remapped) == len(sparse_finals)
        starts: dict[int, int] = {}
        tables: list[np.ndarray] = []
        offsets = []
        for j in self._remapped:
            final = sparse_finals[j]
            if id(final) not in starts:
                starts[id(final)] = sum(len(t) for t in tables)
                tables.append(final.remap)  # type: ignore[attr-defined]
            offsets.append(starts[id(final)])
        self._flat_remap = np.concatenate(tables) if tables else np.zeros(0, np.int32)
        self._offsets = np.array(offsets, dtype=np.int32)

    def at_epoch(self, epoch: int) -> "CodeFinalizer":
        """The finalizer of the rows of one counting epoch (itself when nothing was spilled)."""
        if not self.epochs:
            return self
        sparse_outputs, dense_outputs, finals = self._args
        loaded: dict[int, Finalize] = {}  # (a shared vocabulary's remap once)
        for final in finals.values():
            if isinstance(final, EpochRemaps) and id(final) not in loaded:
                loaded[id(final)] = final.remap(epoch)
        return CodeFinalizer(sparse_outputs, dense_outputs, {name: loaded.get(id(f), f) for name, f in finals.items()})

    def ids(self, codes: np.ndarray) -> None:
        """int32[N, n_sparse] provisional codes -> final ids, in place (of one epoch's rows: at_epoch)."""
        if self.epochs:
            raise RuntimeError("vocabularies were counted in epochs: finalize each epoch's rows with at_epoch(e)")
        if self._all_remapped:  # one gather, in place (take converts the indices to intp first)
            np.add(codes, self._offsets, out=codes)
            np.take(self._flat_remap, codes, out=codes, mode="clip")  # (codes are in range by construction)
        elif self._remapped:
            codes[:, self._remapped] = self._flat_remap[codes[:, self._remapped] + self._offsets]
        for j, final in self._others:
            codes[:, j] = final(codes[:, j])

    def features(self, raw: np.ndarray, out: np.ndarray) -> None:
        """float64[N, n_dense] raw numeric values -> float32 features written to ``out[N, n_dense]``;
        a finite value whose feature overflows float32 becomes inf there, for the caller to report."""
        # column by column on a transposed copy: each transform then runs over contiguous values
        # that stay in cache, not over a strided column of the whole block (about 2x faster)
        columns = np.ascontiguousarray(raw.T)
        features = np.empty((len(self._dense_finals), len(raw)), dtype=np.float32)
        with np.errstate(over="ignore", invalid="ignore"):
            for k, final in enumerate(self._dense_finals):
                features[k] = final(columns[k])
        out[...] = features.T
