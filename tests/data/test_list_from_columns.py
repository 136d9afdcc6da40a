"""A list column built from a block of the file's columns (``ListColumn.columns``, ``padding``):
a fixed-width, 0-padded history (PaddleRec's dmr sample, FuxiCTR's click_sequence) read as one
list<string> column named anew, its source columns consumed, padded and empty steps dropped, a
sequence cut to its most recent max_length values (counted); bad lines still name file, line and
field; the declaration is checked clearly."""

from __future__ import annotations

import pytest

from ctrlab.data.readers import DataError, RowReader, SkipReport, SourceInfo, _slow_delimited
from ctrlab.schema import LIST_OPTIONS, GenericSchemaConfig, ListColumn, Schema, generic_schema

COLUMNS = ["user", "h0", "h1", "h2", "h3", "price", "label"]
ROWS = [
    "u1,0,0,5,7,1.5,1",  # right-aligned: two padded steps
    "u2,3,0,4,9,2.0,0",  # a padding value anywhere is no step
    "u3,0,0,0,0,,1",  # no step at all: an empty list
    "u4,1,2,3,4,0.5,0",  # four steps, max_length 3: cut to the last three, counted
    "u5,,8,,6,1,1",  # empty fields are no steps either
]
HISTORY = {"kind": "sequence", "max_length": 3, "columns": ["h0", "h1", "h2", "h3"], "padding": "0"}


def _schema(**history) -> Schema:
    cfg = GenericSchemaConfig(columns=COLUMNS, header=False, dense=["price"], lists={"hist": {**HISTORY, **history}})
    return generic_schema(cfg, "csv", None)


def _write(tmp_path, lines: list[str]):
    path = tmp_path / "rows.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_block_becomes_one_list_column(tmp_path):
    schema = _schema()
    # the source columns are neither sparse by default nor features of their own
    assert schema.sparse == ("user",) and schema.list_names == ("hist",)
    assert schema.list_sources == ("h0", "h1", "h2", "h3")
    reader = RowReader([_write(tmp_path, ROWS)], schema)
    table = next(iter(reader)).table
    assert table.column_names == ["label", "price", "user", "hist"]
    assert table.column("hist").to_pylist() == [["5", "7"], ["3", "4", "9"], [], ["2", "3", "4"], ["8", "6"]]
    assert table.column("user").to_pylist() == ["u1", "u2", "u3", "u4", "u5"]  # rows stay joined
    assert reader.sources[0].truncated == {"hist": 1} and reader.sources[0].rows == 5


def test_without_padding_only_empty_fields_are_dropped(tmp_path):
    table = next(iter(RowReader([_write(tmp_path, ROWS)], _schema(padding=None, max_length=4)))).table
    assert table.column("hist").to_pylist() == [["0", "0", "5", "7"], ["3", "0", "4", "9"], ["0"] * 4,
                                                ["1", "2", "3", "4"], ["8", "6"]]


def test_line_parser_builds_the_same_table(tmp_path):
    path, schema = _write(tmp_path, ROWS), _schema()
    fast = next(iter(RowReader([path], schema))).table
    info = SourceInfo(str(path), path.stat().st_size)
    slow = next(_slow_delimited(path, schema, "error", SkipReport(), info)).table
    assert slow.equals(fast) and info.truncated == {"hist": 1}


@pytest.mark.parametrize("bad, field, words", [
    ("u9,1,2,3,4,abc,1", "price", "expected a number"),
    ("u9,1,2,3,4,1,7", "label", "0/1 label"),
    ("u9,1,2,3,1,1", None, "wrong field count"),
])
def test_bad_lines_name_file_line_and_field(tmp_path, bad, field, words):
    path = _write(tmp_path, ROWS[:2] + [bad] + ROWS[2:])
    with pytest.raises(DataError) as err:
        list(RowReader([path], _schema()))
    assert (err.value.path, err.value.line, err.value.field) == (str(path), 3, field)
    assert words in str(err.value) and str(path) in str(err.value)
    reader = RowReader([path], _schema(), bad_lines="skip")  # skipped: the other rows keep their lists
    chunks = list(reader)
    assert [line for c in chunks for line, _ in c.skipped] == [3]
    assert [list(c.lines) for c in chunks if len(c.lines)] == [[1, 2, 4, 5, 6]]
    assert [v for c in chunks for v in c.table.column("hist").to_pylist()][:2] == [["5", "7"], ["3", "4", "9"]]


def test_round_trip_through_to_dict():
    schema = _schema()
    again = Schema.from_dict(schema.to_dict())
    assert again == schema and again.lists[0].columns == ("h0", "h1", "h2", "h3")
    assert again.without_label().lists == schema.lists
    plain = ListColumn("tags", kind="multi")
    assert "columns" not in plain.to_dict() and plain.sources == ("tags",)  # other lists: as before


@pytest.mark.parametrize("options, words", [
    ({"columns": ["h0", "nope"]}, "column 'nope' is not among its columns"),
    ({"columns": ["h0", "price"]}, "also used otherwise"),
    ({"columns": ["h0", "h0"]}, "each once"),
    ({"columns": []}, "at least one column"),
    ({"columns": "h0"}, "must be a list of column names"),
    ({"separator": ","}, "separator and weight_separator do not apply"),
    ({"weight_separator": ":"}, "separator and weight_separator do not apply"),
    ({"padding": ""}, "padding must be a non-empty string"),
])
def test_declaration_errors(options, words):
    with pytest.raises(ValueError, match=words):
        _schema(**options)


def test_more_declaration_errors():
    with pytest.raises(ValueError, match="padding applies to a list built from columns only"):
        ListColumn("tags", kind="multi", padding="0")
    with pytest.raises(ValueError, match="needs a new name"):
        ListColumn("h0", max_length=2, columns=("h0", "h1"))
    with pytest.raises(ValueError, match="its name must be new"):  # a file column of that name exists
        Schema("csv", "delimited", COLUMNS, "label", ("price",), (),
               lists=(ListColumn("user", max_length=2, columns=("h0", "h1")),))
    with pytest.raises(ValueError, match="also used otherwise"):  # two lists from one column
        Schema("csv", "delimited", COLUMNS, "label", ("price",), ("user",),
               lists=(ListColumn("a", max_length=2, columns=("h0", "h1")),
                      ListColumn("b", max_length=2, columns=("h1", "h2"))))
    with pytest.raises(ValueError, match="delimited files only"):
        Schema("kv", "kv", COLUMNS, "label", (), ("user",), lists=(ListColumn("a", max_length=2, columns=("h0",)),))
    cfg = GenericSchemaConfig(columns=COLUMNS, header=False, lists={"hist": {**HISTORY, "pad": "0"}})
    with pytest.raises(ValueError, match="unknown option.*'pad'.*columns, padding"):
        generic_schema(cfg, "csv", None)
    assert LIST_OPTIONS[-2:] == ("columns", "padding")
