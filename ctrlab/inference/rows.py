"""Request rows (lists or dicts of raw values, or an Arrow table) -> an Arrow table of the bundle's
canonical columns, every value checked (errors name the row and field).

List-valued columns (issue 15: :class:`~ctrlab.schema.ListColumn`) come last, after the dense and
sparse columns, and leave as ``list<string>`` columns, as the readers give them: a row's value
is a list of strings (integer ids become their decimal text) or one string of values split by
the column's separator exactly as the readers split a file's field ("" is an empty list, an
empty value inside, ``a||b``, is an error); None or a left-out key is an empty list; a
sequence longer than ``max_length`` keeps its last (most recent) ``max_length`` values.

A weighted list column (``weight_separator`` set, ``tag:0.7``) also gives a ``list<float64>``
column of its values' weights, ``name`` + WEIGHTS_SUFFIX, right after it (the same lengths, cut
alike). Its value may be delimited text (``"a:0.7|b"``: a value's weight follows the LAST weight
separator, no separator = 1.0, as the readers split a file's field), a list of strings each with
an optional weight suffix (``["a:0.7", "b"]``; an integer id has weight 1.0), or a list of
``[value, weight]`` pairs (``[["a", 0.7], ["b", 1]]``: a string or integer id and a finite number;
the value is taken whole, with no suffix to split), the forms mixed at will within a list. A weight
that is not a finite number (``nan``, ``inf``, a bool, a string in a pair) is an error naming the
row and field, as is a value left empty by its weight (``":0.7"``)."""

from __future__ import annotations

import math
import operator
from itertools import chain
from typing import Any, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..data.formats import column_list
from ..data.readers import ID, MAX_WEIGHT, keep_last, number_error, parse_number, split_list_text
from ..features.pipeline import InputError
from ..schema import LABEL, WEIGHTS_SUFFIX, ListColumn


IGNORED_KEYS = (LABEL, ID)  # canonical non-feature columns a row dict may carry

# --------------------------------------------------------------------------------------------
# raw rows (lists / dicts) -> Arrow table of canonical columns
# --------------------------------------------------------------------------------------------

def _bad_value(row: int, col: str, reason: str) -> InputError:
    return InputError(f"row {row}, field {col!r}: {reason}", row=row, field=col, reason=reason)


def _dense_value(value: Any, row: int, col: str) -> float | None:
    kind = type(value)
    if kind is float or kind is int:
        number = float(value) if kind is float or abs(value) < 2**1023 else math.inf
        if not math.isfinite(number):
            raise _bad_value(row, col, f"expected a finite number, got {value!r:.40}")
        return number
    if value is None or value == "":
        return None
    if kind is str:
        number = parse_number(value)  # the readers' rule for numbers in text
        if number is None:
            raise _bad_value(row, col, number_error(value))
        return number
    if isinstance(value, (np.integer, np.floating)) and not isinstance(value, bool):
        return _dense_value(value.item(), row, col)
    raise _bad_value(row, col, f"expected a number, a numeric string or None, got {type(value).__name__} {value!r:.40}")


def _sparse_value(value: Any, row: int, col: str) -> str | None:
    kind = type(value)
    if kind is str:
        return value or None  # "" is missing, as in the readers
    if isinstance(value, str):  # a subclass (numpy's str_): its text
        return str(value) or None
    if value is None:
        return None
    if kind is int or isinstance(value, np.integer):  # an integer id: its decimal text, as read from a file
        return str(int(value))
    raise _bad_value(row, col, f"expected a string (or an integer id, or None), got {type(value).__name__} {value!r:.40}")


def _raw_columns(rows: Sequence[Any], columns: list[str]) -> list[Sequence[Any]]:
    """A list of dicts (keyed by column name) or of lists (values in ``columns`` order), each row
    checked for its shape -> one sequence of the n raw (unchecked) values per column."""
    if not rows:
        return [() for _ in columns]
    first = rows[0]
    if isinstance(first, dict):
        if set(map(type, rows)) != _DICT:
            _check_dicts(rows, columns)
        by_column = None
        if len(columns) > 1:
            try:  # every row has every column (the usual case): the values are gathered in C
                by_column = list(zip(*map(operator.itemgetter(*columns), rows)))
            except KeyError:  # some row leaves a column out: missing
                pass
        # a row holding every column and no more keys holds no unknown one (checked in C)
        if by_column is None or set(map(len, rows)) != {len(columns)}:
            _check_dicts(rows, columns)
        return by_column or [[row.get(c) for row in rows] for c in columns]
    if isinstance(first, (list, tuple)):
        for i, row in enumerate(rows):
            if not isinstance(row, (list, tuple)):
                raise InputError(f"row {i}: expected a list like row 0, got {type(row).__name__}")
            if len(row) != len(columns):
                raise InputError(f"row {i}: expected {len(columns)} values (in the order {column_list(columns)}), "
                                 f"got {len(row)}")
        return list(zip(*rows))
    raise InputError(f"rows must be an Arrow table, a list of dicts or a list of lists; row 0 is a "
                     f"{type(first).__name__}")


_DICT = {dict}


def _check_dicts(rows: Sequence[Any], columns: list[str]) -> None:
    """Every row a dict whose keys are columns (or ``IGNORED_KEYS``); else an error naming the
    first row that is not, and why."""
    known = set(columns).union(IGNORED_KEYS)
    if all(type(row) is dict for row in rows) and all(map(known.issuperset, rows)):  # (checked in C)
        return
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise InputError(f"row {i}: expected a dict like row 0, got {type(row).__name__}")
        if not known.issuperset(row):
            unknown = sorted(str(k) for k in row if k not in known)
            raise InputError(f"row {i}: unknown column(s) {unknown}; the bundle's columns are "
                             f"{column_list(columns)} (plus optional {', '.join(IGNORED_KEYS)})")


def rows_to_table(rows: Sequence[Any], dense_columns: Sequence[str], sparse_columns: Sequence[str],
                  list_columns: Sequence[ListColumn] = ()) -> pa.Table:
    """A list of dicts (keyed by column name) or of lists (values in ``dense + sparse + lists``
    order) -> an Arrow table with the canonical types (float64 dense, string sparse, list<string>
    for each of ``list_columns``, followed by its list<float64> weights ``name`` + WEIGHTS_SUFFIX
    for a weighted one; null = missing, a missing list is an empty one)."""
    lists = _checked_list_columns(list_columns)
    columns = list(dense_columns) + list(sparse_columns)
    n_dense = len(dense_columns)
    n_flat = len(columns)
    n = len(rows)
    by_column = _raw_columns(rows, columns + [c.name for c in lists])
    # one Arrow array for all dense values and one for all sparse values (column-major), sliced
    # into columns: two conversions instead of one per column (a single row costs microseconds)
    dense_all = _checked_array(list(chain.from_iterable(by_column[:n_dense])), n, list(dense_columns), numeric=True)
    sparse_all = _checked_array(list(chain.from_iterable(by_column[n_dense:n_flat])), n, list(sparse_columns),
                                numeric=False)
    arrays = [dense_all.slice(j * n, n) for j in range(n_dense)]
    arrays += [sparse_all.slice(j * n, n) for j in range(len(sparse_columns))]
    names = list(columns)
    for column, values in zip(lists, by_column[n_flat:]):
        if column.weight_separator is None:
            arrays.append(_list_array(values, column))
            names.append(column.name)
        else:
            arrays += _weighted_list_arrays(values, column)
            names += [column.name, column.name + WEIGHTS_SUFFIX]
    return pa.Table.from_arrays(arrays, names=names)


def checked_columns(rows: Sequence[Any], dense_columns: Sequence[str], sparse_columns: Sequence[str],
                    list_columns: Sequence[ListColumn] = ()) -> dict[str, Sequence[Any]]:
    """Rows as :func:`rows_to_table` takes them -> {column: its n values}, checked as there (the
    same errors, the first bad value in the same order) but as Python values: float or None for
    dense columns, str or None for sparse ones, a list of str (cut to its last max_length) for a
    list column (what the online encoder takes, with no Arrow table in between: the lane of a
    request of a few rows), and for a weighted list column also ``name`` + WEIGHTS_SUFFIX: n lists
    of float, its values' weights, cut alike."""
    lists = _checked_list_columns(list_columns)
    flat = len(dense_columns) + len(sparse_columns)
    by_column = _raw_columns(rows, list(dense_columns) + list(sparse_columns) + [c.name for c in lists])
    checked = _checked_flat(by_column[:flat], dense_columns, sparse_columns)
    for column, values in zip(lists, by_column[flat:]):
        keep = column.max_length
        if column.weight_separator is None:
            checked[column.name] = [_list_value(v, i, column)[-keep:] if keep else _list_value(v, i, column)
                                    for i, v in enumerate(values)]
            continue
        pairs = [_weighted_value(v, i, column) for i, v in enumerate(values)]
        checked[column.name] = [ids[-keep:] if keep else ids for ids, _ in pairs]
        checked[column.name + WEIGHTS_SUFFIX] = [weights[-keep:] if keep else weights for _, weights in pairs]
    return checked


def _checked_flat(by_column: list[Sequence[Any]], dense_columns: Sequence[str],
                  sparse_columns: Sequence[str]) -> dict[str, Sequence[Any]]:
    """:func:`checked_columns` of the single-valued columns, given their raw values per column."""
    n_dense = len(dense_columns)
    dense_flat = list(chain.from_iterable(by_column[:n_dense]))
    sparse_flat = list(chain.from_iterable(by_column[n_dense:]))
    # all plain (finite floats or None; non-empty strings or None): the values pass as they are.
    # (A sum of the floats is finite when each one is, unless it overflows: then the careful path.)
    total = sum(filter(None, dense_flat), 0.0) if set(map(type, dense_flat)) <= _FLOATS else math.nan
    if total - total == 0.0 and set(map(type, sparse_flat)) <= _PLAIN_STRINGS and "" not in sparse_flat:
        return dict(zip([*dense_columns, *sparse_columns], by_column))
    checked: dict[str, Sequence[Any]] = {}
    for col, values in zip(dense_columns, by_column):
        checked[col] = [v if type(v) is float and v - v == 0.0 else _dense_value(v, i, col)
                        for i, v in enumerate(values)]
    for col, values in zip(sparse_columns, by_column[n_dense:]):
        checked[col] = [v if type(v) is str and v else _sparse_value(v, i, col) for i, v in enumerate(values)]
    return checked


_NONE = type(None)
_PLAIN_STRINGS = {str, _NONE}
_FLOATS = {float, _NONE}


def _checked_array(flat: list[Any], n: int, names: list[str], numeric: bool) -> pa.Array:
    """Column-major values of ``names`` (n rows each) -> one float64 or string Arrow array.

    Plain values (floats/ints/None; strings/None) convert in one Arrow call; anything else (numeric
    strings, "", bools, bytes, wrong types) goes value by value, and a bad value raises an error
    naming its row and field. (Strings are told plain by the type Arrow infers, cheaper than a
    Python pass over 26 values a row; numbers by their Python types: Arrow takes a bool after a
    float as 1.0.)"""
    array = None
    if numeric and set(map(type, flat)) <= _PLAIN_NUMBERS:
        try:
            array = pa.array(flat, type=pa.float64())
        except (pa.ArrowInvalid, OverflowError):  # an int beyond int64: the careful path says which
            pass
        if array is not None and array.null_count < len(array) and not pc.all(pc.is_finite(array)).as_py():
            array = None  # NaN or an infinity: the careful path says which
    elif not numeric:
        try:
            array = pa.array(flat)  # str (and None) alone infer string; bytes infer binary
        except (pa.ArrowException, TypeError, ValueError):  # mixed kinds: the careful path
            pass
        if array is not None and not (array.type == pa.null() or array.type == pa.string()
                                      and not pc.any(pc.equal(array, "")).as_py()):
            array = None  # bytes, or "" (missing: the careful path)
    if array is not None:
        return array if numeric else array.cast(pa.string())
    convert = _dense_value if numeric else _sparse_value
    values = [convert(v, k % n, names[k // n]) for k, v in enumerate(flat)]
    return pa.array(values, type=pa.float64() if numeric else pa.string())


_PLAIN_NUMBERS = {float, int, type(None)}


# --------------------------------------------------------------------------------------------
# list-valued columns
# --------------------------------------------------------------------------------------------

LIST_TYPE = pa.list_(pa.string())
_EMPTY_LIST = pa.scalar([], type=LIST_TYPE)
_PLAIN_LISTS = {list, _NONE}


def _checked_list_columns(list_columns: Sequence[ListColumn]) -> list[ListColumn]:
    """The list columns, each one a ListColumn."""
    lists = list(list_columns)
    for column in lists:
        if not isinstance(column, ListColumn):
            raise TypeError(f"list_columns: expected ListColumn, got {column!r}")
    return lists


def _list_array(values: Sequence[Any], column: ListColumn) -> pa.Array:
    """One list column's n raw values -> list<string>[n] (no nulls), each value checked and a
    sequence cut to its last ``max_length`` values. Plain input (all strings/None, or all lists of
    non-empty strings/None) converts in a few Arrow calls; anything else, or a bad value, goes
    value by value, and a bad value raises an error naming its row and field."""
    kinds = set(map(type, values))
    array = None
    if kinds <= _PLAIN_STRINGS:
        array = split_list_text(pa.array(values, type=pa.string()), column.separator)
    elif kinds <= _PLAIN_LISTS:
        flat = list(chain.from_iterable(filter(None, values)))
        if set(map(type, flat)) <= _STR and "" not in flat:
            array = pa.array(values, type=LIST_TYPE).fill_null(_EMPTY_LIST)
    if array is None:
        array = pa.array([_list_value(v, i, column) for i, v in enumerate(values)], type=LIST_TYPE)
    return keep_last(array, column.max_length)[0]


_STR = {str}


def _list_value(value: Any, row: int, column: ListColumn) -> list[str]:
    """One raw list value, checked -> its strings (not yet cut to max_length)."""
    col = column.name
    if value is None:
        return []
    if isinstance(value, str):
        text = str(value)
        if text == "":
            return []
        parts = text.split(column.separator)
        if "" in parts:
            raise _bad_value(row, col, f"empty value in the list {text!r:.40} (separator {column.separator!r})")
        return parts
    if isinstance(value, (list, tuple)):
        out = []
        for k, item in enumerate(value):
            kind = type(item)
            if isinstance(item, str) and item != "":
                out.append(str(item))
            elif kind is int or isinstance(item, np.integer):  # an integer id: its decimal text
                out.append(str(int(item)))
            elif isinstance(item, str):
                raise _bad_value(row, col, f"value {k} of the list is an empty string")
            else:
                raise _bad_value(row, col, f"value {k} of the list: expected a string or an integer id, got "
                                           f"{kind.__name__} {item!r:.40}")
        return out
    raise _bad_value(row, col, f"expected a list of strings, a {column.separator!r}-separated string or None, "
                               f"got {type(value).__name__} {value!r:.40}")


# weighted list columns ---------------------------------------------------------------------

WEIGHTS_TYPE = pa.list_(pa.float64())
# a weight text that Arrow's cast reads as Python's float() does (correctly rounded; no blanks,
# which Python takes and Arrow may not): anything else goes value by value (parse_number)
_PLAIN_WEIGHT = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"


def _suffixed(text: str, k: int, row: int, column: ListColumn) -> tuple[str, float]:
    """One non-empty list value's text -> (value, weight): the weight after the LAST weight
    separator, 1.0 without one (the readers' rule: ``readers._split_lists``)."""
    if column.weight_separator not in text:
        return text, 1.0
    value, weight_text = text.rsplit(column.weight_separator, 1)  # type: ignore[arg-type]
    weight = parse_number(weight_text)
    if weight is None or abs(weight) > MAX_WEIGHT:
        raise _bad_value(row, column.name, f"value {k} of the list: expected a number as the weight of "
                                           f"{text[:40]!r}")
    if value == "":
        raise _bad_value(row, column.name, f"value {k} of the list, {text[:40]!r}, has a weight but no value")
    return value, weight


def _weight(value: Any, k: int, row: int, col: str) -> float:
    """The weight of a ``[value, weight]`` pair: a finite number (not a bool, not a string)."""
    kind = type(value)
    if kind is float or kind is int or isinstance(value, (np.integer, np.floating)) and kind is not np.bool_:
        number = value.item() if isinstance(value, np.generic) else value
        number = float(number) if type(number) is float or abs(number) < 2**1023 else math.inf
        if abs(number) <= MAX_WEIGHT:  # (NaN fails too)
            return number
        raise _bad_value(row, col, f"value {k} of the list: expected a finite float32 weight, got {value!r:.40}")
    raise _bad_value(row, col, f"value {k} of the list: expected a number as the weight, got {kind.__name__} "
                               f"{value!r:.40}")


def _weighted_value(value: Any, row: int, column: ListColumn) -> tuple[list[str], list[float]]:
    """One raw weighted list value, checked -> (its values, their weights), not yet cut to
    max_length: delimited text, or a list of strings (each with an optional weight suffix),
    integer ids (weight 1.0) and ``[value, weight]`` pairs."""
    col = column.name
    if value is None:
        return [], []
    if isinstance(value, str):
        text = str(value)
        if text == "":
            return [], []
        parts = text.split(column.separator)
        if "" in parts:
            raise _bad_value(row, col, f"empty value in the list {text!r:.40} (separator {column.separator!r})")
        pairs = [_suffixed(part, k, row, column) for k, part in enumerate(parts)]
        return [v for v, _ in pairs], [w for _, w in pairs]
    if isinstance(value, (list, tuple)):
        values: list[str] = []
        weights: list[float] = []
        for k, item in enumerate(value):
            kind = type(item)
            if isinstance(item, str) and item != "":
                name, weight = _suffixed(str(item), k, row, column)
            elif kind is int or isinstance(item, np.integer):  # an integer id: its decimal text, weight 1
                name, weight = str(int(item)), 1.0
            elif isinstance(item, (list, tuple)):
                if len(item) != 2:
                    raise _bad_value(row, col, f"value {k} of the list: expected a [value, weight] pair, got "
                                               f"{len(item)} items")
                name = _pair_value(item[0], k, row, col)
                weight = _weight(item[1], k, row, col)
            elif isinstance(item, str):
                raise _bad_value(row, col, f"value {k} of the list is an empty string")
            else:
                raise _bad_value(row, col, f"value {k} of the list: expected a string, an integer id or a "
                                           f"[value, weight] pair, got {kind.__name__} {item!r:.40}")
            values.append(name)
            weights.append(weight)
        return values, weights
    raise _bad_value(row, col, f"expected a list of values (strings, integer ids or [value, weight] pairs), "
                               f"a {column.separator!r}-separated string or None, got {type(value).__name__} "
                               f"{value!r:.40}")


def _pair_value(item: Any, k: int, row: int, col: str) -> str:
    """The value of a ``[value, weight]`` pair: a non-empty string (taken whole) or an integer id."""
    if isinstance(item, str) and item != "":
        return str(item)
    if type(item) is int or isinstance(item, np.integer):
        return str(int(item))
    what = "an empty string" if isinstance(item, str) else f"{type(item).__name__} {item!r:.40}"
    raise _bad_value(row, col, f"value {k} of the list: expected a string or an integer id as the value of "
                               f"the pair, got {what}")


def _split_weights(lists: pa.Array, column: ListColumn) -> tuple[pa.Array, pa.Array] | None:
    """list<string> (no nulls, every value non-empty) -> (values, weights list<float64>) split by
    the readers' rule, in a few Arrow calls; None when some value needs a closer look (a weight that
    is not a plain finite number, or a value left empty): then value by value."""
    bounds = np.asarray(lists.offsets, dtype=np.int64)
    strings = lists.values.slice(bounds[0], bounds[-1] - bounds[0])
    offsets = pa.array((bounds - bounds[0]).astype(np.int32))
    pairs = pc.split_pattern(strings, column.weight_separator, max_splits=1, reverse=True)
    has_weight = np.asarray(pc.list_value_length(pairs)) == 2
    weights = np.ones(len(pairs), dtype=np.float64)
    if has_weight.any():
        texts = pc.list_element(pairs.filter(pa.array(has_weight)), 1)
        if not pc.all(pc.match_substring_regex(texts, _PLAIN_WEIGHT)).as_py():
            return None
        parsed = pc.cast(texts, pa.float64()).to_numpy(zero_copy_only=False)
        if not (np.abs(parsed) <= MAX_WEIGHT).all():
            return None
        weights[has_weight] = parsed
    values = pc.list_element(pairs, 0)
    if len(values) and pc.any(pc.equal(values, "")).as_py():
        return None
    return (pa.ListArray.from_arrays(offsets, values.cast(pa.string())),
            pa.ListArray.from_arrays(offsets, pa.array(weights, type=pa.float64())))


def _weighted_arrays(pairs: list[tuple[list[str], list[float]]]) -> tuple[pa.Array, pa.Array]:
    return (pa.array([values for values, _ in pairs], type=LIST_TYPE),
            pa.array([weights for _, weights in pairs], type=WEIGHTS_TYPE))


def _cut(values: pa.Array, weights: pa.Array, column: ListColumn) -> list[pa.Array]:
    """Both lists cut to their last max_length values (the same ones)."""
    return [keep_last(values, column.max_length)[0], keep_last(weights, column.max_length)[0]]


def _weighted_list_arrays(values: Sequence[Any], column: ListColumn) -> list[pa.Array]:
    """One weighted list column's n raw values -> [list<string>[n], list<float64>[n]] (no nulls,
    cut to max_length). Plain input (all strings/None, or all lists of non-empty strings/None)
    converts in a few Arrow calls; anything else, or a bad value, goes value by value, and a bad
    value raises an error naming its row and field."""
    kinds = set(map(type, values))
    lists = None
    if kinds <= _PLAIN_STRINGS:
        lists = split_list_text(pa.array(values, type=pa.string()), column.separator)
    elif kinds <= _PLAIN_LISTS:
        flat = list(chain.from_iterable(filter(None, values)))
        if set(map(type, flat)) <= _STR and "" not in flat:
            lists = pa.array(values, type=LIST_TYPE).fill_null(_EMPTY_LIST)
    split = _split_weights(lists, column) if lists is not None else None
    if split is None:
        split = _weighted_arrays([_weighted_value(v, i, column) for i, v in enumerate(values)])
    return _cut(*split, column)


def _checked_weighted_table_columns(table: pa.Table, column: ListColumn) -> list[pa.Array]:
    """An Arrow table's weighted list column -> [list<string>, list<float64>] (no nulls, cut to
    max_length). With a ``name`` + WEIGHTS_SUFFIX column (as the readers give it) the values are
    taken whole and the weights from it (numbers, one per value, finite; a null list is empty);
    without one, the weights are split from the values (text or lists of strings) as in rows."""
    weights_name = column.name + WEIGHTS_SUFFIX
    if weights_name not in table.column_names:
        data = table.column(column.name).combine_chunks()
        kind = data.type
        if pa.types.is_list(kind) or pa.types.is_large_list(kind):
            if pa.types.is_integer(kind.value_type) or pa.types.is_null(kind.value_type):
                values = _checked_list_table_column(table, column)  # integer ids: weight 1.0
                return [values, pa.ListArray.from_arrays(values.offsets, pa.array(np.ones(len(values.values)),
                                                                                  type=pa.float64()))]
        lists = _checked_list_table_column(table, _uncut(column))  # (checked; the weights split below)
        split = _split_weights(lists, column)
        if split is None:
            split = _weighted_arrays([_weighted_value(v, i, column) for i, v in enumerate(lists.to_pylist())])
        return _cut(*split, column)
    values = _checked_list_table_column(table, _uncut(column))
    data = table.column(weights_name).combine_chunks()
    kind = data.type
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not (
            pa.types.is_floating(kind.value_type) or pa.types.is_integer(kind.value_type)
            or pa.types.is_null(kind.value_type)):
        raise InputError(f"column {weights_name!r}: expected lists of numbers (the weights of {column.name!r}), "
                         f"got Arrow type {kind}")
    weights = data.cast(WEIGHTS_TYPE).fill_null(pa.scalar([], type=WEIGHTS_TYPE))
    lengths = np.asarray(pc.list_value_length(weights), dtype=np.int64)
    wrong = np.flatnonzero(lengths != np.diff(np.asarray(values.offsets, dtype=np.int64)))
    if len(wrong):
        row = int(wrong[0])
        raise _bad_value(row, weights_name, f"{lengths[row]} weights for the {len(values[row])} values of "
                                            f"{column.name!r}")
    offsets = np.asarray(weights.offsets, dtype=np.int64)
    flat = weights.values.slice(offsets[0], offsets[-1] - offsets[0])
    if len(flat) and not (np.abs(flat.to_numpy(zero_copy_only=False)) <= MAX_WEIGHT).all():  # (NaN, null fail)
        k = int(np.flatnonzero(~(np.abs(flat.to_numpy(zero_copy_only=False)) <= MAX_WEIGHT))[0])
        row = int(np.searchsorted(offsets - offsets[0], k, side="right") - 1)
        raise _bad_value(row, weights_name, f"weight {k - int(offsets[row] - offsets[0])} of the list: expected "
                                            f"a finite float32 number, got {flat[k].as_py()!r}")
    weights = pa.ListArray.from_arrays(pa.array(offsets - offsets[0]), flat)
    return _cut(values, weights, column)


def _uncut(column: ListColumn) -> ListColumn:
    """The column without max_length (cut once, with its weights)."""
    return ListColumn(column.name, kind="multi", separator=column.separator, pooling=column.pooling)


def _checked_list_table_column(table: pa.Table, column: ListColumn) -> pa.Array:
    """An Arrow table's list column -> list<string> (no nulls, cut to max_length), checked: a list
    of strings or integers (or all null), or delimited text split as the readers do; a null or
    empty string inside a list is an error naming the row."""
    data = table.column(column.name).combine_chunks()
    kind = data.type
    if pa.types.is_null(kind):
        return pa.array([[]] * len(data), type=LIST_TYPE)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        array = split_list_text(data.cast(pa.string()), column.separator)
        if array is None:
            array = pa.array([_list_value(v, i, column) for i, v in enumerate(data.to_pylist())], type=LIST_TYPE)
        return keep_last(array, column.max_length)[0]
    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind)) or not (
            pa.types.is_string(kind.value_type) or pa.types.is_large_string(kind.value_type)
            or pa.types.is_integer(kind.value_type) or pa.types.is_null(kind.value_type)):
        raise InputError(f"column {column.name!r}: expected lists of strings (or {column.separator!r}-separated "
                         f"text), got Arrow type {kind}")
    lists = data.cast(LIST_TYPE).fill_null(_EMPTY_LIST)
    offsets = np.asarray(lists.offsets, dtype=np.int64)
    values = lists.values.slice(offsets[0], offsets[-1] - offsets[0])
    bad = pc.or_kleene(pc.is_null(values), pc.equal(values, "")).fill_null(True)
    if len(values) and pc.any(bad).as_py():
        k = int(np.flatnonzero(np.asarray(bad, dtype=bool))[0])
        row = int(np.searchsorted(offsets - offsets[0], k, side="right") - 1)
        what = "null" if values[k].as_py() is None else "an empty string"
        raise _bad_value(row, column.name, f"value {k - int(offsets[row] - offsets[0])} of the list is {what}")
    return keep_last(lists, column.max_length)[0]


def check_table(table: pa.Table, dense_columns: Sequence[str], sparse_columns: Sequence[str],
                list_columns: Sequence[ListColumn] = ()) -> pa.Table:
    """An Arrow table of raw rows, checked: every input column present, numeric columns numeric,
    categorical columns strings (integer ids are cast to their text), list columns (``list_columns``)
    lists of strings or integer ids, or delimited text (each returned as list<string>, as
    :func:`rows_to_table` gives it). A weighted list column gets its ``name`` + WEIGHTS_SUFFIX
    list<float64> column right after it: the table's own (as the readers give it: checked, one
    finite number per value) or, without one, the weights split from the values as in rows."""
    lists = _checked_list_columns(list_columns)
    present = set(table.column_names)
    needed = list(dense_columns) + list(sparse_columns) + [c.name for c in lists]
    missing = [c for c in needed if c not in present]
    if missing:
        raise InputError(f"the table lacks column(s) {missing}; the bundle needs {column_list(needed)}")
    for col in dense_columns:
        kind = table.schema.field(col).type
        if not (pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_null(kind)):
            raise InputError(f"column {col!r}: expected numbers (float64), got Arrow type {kind}")
        if pa.types.is_floating(kind):  # NaN and inf are bad values (null is missing), as in files
            finite = pc.is_finite(table.column(col)).fill_null(True)
            if pc.all(finite).as_py() is False:
                row = int(np.flatnonzero(~finite.to_numpy(zero_copy_only=False))[0])
                raise _bad_value(row, col, f"expected a finite number, got {table.column(col)[row].as_py()!r}")
    for col in sparse_columns:
        kind = table.schema.field(col).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_integer(kind)
                or pa.types.is_null(kind)):
            raise InputError(f"column {col!r}: expected strings, got Arrow type {kind}")
    for column in lists:
        if column.weight_separator is None:
            position = table.column_names.index(column.name)
            table = table.set_column(position, column.name, _checked_list_table_column(table, column))
            continue
        values, weights = _checked_weighted_table_columns(table, column)
        weights_name = column.name + WEIGHTS_SUFFIX
        if weights_name in table.column_names:
            table = table.remove_column(table.column_names.index(weights_name))
        position = table.column_names.index(column.name)
        table = table.set_column(position, column.name, values).add_column(position + 1, weights_name, weights)
    return table
