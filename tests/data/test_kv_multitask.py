"""key:value lines with positional leading fields and several labels (Ali-CCP's layout, PaddleRec's
esmm/escm2 sample): ``sample_id,click,conversion,field:id,...``. The positional fields are taken by
position, the tokens by key; repeated keys make multi-valued lists; bad lines name the file, the
line and the field."""

from __future__ import annotations

import pytest

from ctrlab.data.formats import file_schema
from ctrlab.data.readers import DataError, RowReader
from ctrlab.schema import GenericSchemaConfig, Schema, generic_schema, task_column

LINES = [
    "s1,1,1,101:u1,205:i1,210:a,210:b,210:c,210:d,216:x",
    "s2,0,0,205:i2,101:u2",  # no 210 tokens: an empty list; 216 absent: missing
    "s3,1,0,210:e,101:u1,205:i1,216:y",  # any order
]


def cfg(**overrides) -> GenericSchemaConfig:
    base = dict(columns=["sample_id", "click", "conversion", "101", "205", "210", "216"],
                positional=["sample_id", "click", "conversion"], id_column="sample_id",
                label=["click", "conversion"], sparse=["101", "205", "216"], delimiter=",",
                lists={"210": {"kind": "multi", "max_length": 3, "pooling": "sum"}})
    return GenericSchemaConfig(**{**base, **overrides})


def _read(tmp_path, lines, bad_lines="error", config=None):
    path = tmp_path / "aliccp.txt"
    path.write_text("\n".join(lines) + "\n")
    reader = RowReader([path], file_schema(path, "kv", config or cfg())[1], bad_lines=bad_lines)
    return path, reader, [chunk.table for chunk in reader]


def test_positional_fields_labels_and_multi_values(tmp_path):
    _, reader, tables = _read(tmp_path, LINES)
    table = tables[0]
    assert table.column_names == ["id", task_column(0), task_column(1), "101", "205", "216", "210"]
    assert table.column("id").to_pylist() == ["s1", "s2", "s3"]
    assert table.column("label").to_pylist() == [1.0, 0.0, 1.0]
    assert table.column("label.1").to_pylist() == [1.0, 0.0, 0.0]
    assert table.column("101").to_pylist() == ["u1", "u2", "u1"]
    assert table.column("216").to_pylist() == ["x", None, "y"]
    assert table.column("210").to_pylist() == [["b", "c", "d"], [], ["e"]]  # the last max_length values
    assert reader.sources[0].rows == 3 and reader.sources[0].truncated == {"210": 1}


def test_schema_of_the_layout():
    s = generic_schema(cfg(), "kv", None)
    assert (s.format, s.delimiter, s.positional) == ("kv", ",", ("sample_id", "click", "conversion"))
    assert s.labels == ("click", "conversion") and s.list_names == ("210",)
    assert Schema.from_dict(s.to_dict()) == s
    unlabelled = s.without_label()
    assert unlabelled.positional == ("sample_id",) and unlabelled.labels == ()
    # space-separated kv (PaddleRec's BST layout) stays the default delimiter
    assert generic_schema(cfg(delimiter=None, positional=[]), "kv", None).delimiter == " "


def test_unlabelled_lines_are_read_for_scoring(tmp_path):
    path = tmp_path / "score.txt"
    path.write_text("s9,101:u1,210:a\n")
    schema = generic_schema(cfg(), "kv", None).without_label()
    table = next(iter(RowReader([path], schema))).table
    assert table.column_names == ["id", "101", "205", "216", "210"]
    assert table.column("210").to_pylist() == [["a"]]


def test_optional_label_may_be_empty(tmp_path):
    _, _, tables = _read(tmp_path, ["s1,1,,101:u1", "s2,0,1,101:u2"], config=cfg(optional_labels=["conversion"]))
    assert tables[0].column("label.1").to_pylist() == [None, 1.0]


def test_several_labels_are_accepted_for_kv_and_positional_only_for_kv():
    Schema("x", "kv", ("a", "b", "c"), "a", (), ("c",), more_labels=("b",), positional=("a", "b"))
    with pytest.raises(ValueError, match="key:value format only"):
        Schema("x", "delimited", ("a", "b"), "a", (), ("b",), positional=("a",))
    with pytest.raises(ValueError, match="positional fields"):  # a list is never positional
        Schema("x", "kv", ("a", "b"), "a", (), (), lists=({"name": "b", "kind": "multi", "max_length": 2},),
               positional=("a", "b"))
    with pytest.raises(ValueError, match="positional fields"):
        Schema("x", "kv", ("a", "b"), "a", (), ("b",), positional=("a", "a"))
    with pytest.raises(ValueError, match="kv format only"):
        generic_schema(GenericSchemaConfig(columns=["a", "b"], positional=["a"]), "csv", None)


@pytest.mark.parametrize("line, field, message", [
    ("s9,1", None, "expected 3 leading fields (sample_id, click, conversion) before the key:value tokens, got 2"),
    ("s9,2,0,101:u1", "click", "expected a 0/1 label, got '2'"),
    ("s9,1,,101:u1", "conversion", "expected a 0/1 label, got none"),  # (not optional here)
    ("s9,1,0,999:u1", "999", "unknown key '999'"),
    ("s9,1,0,101:u1,101:u2", "101", "key '101' appears twice (only list columns repeat)"),
    ("s9,1,0,click:1", "click", "key 'click' appears twice (a positional field)"),
    ("s9,1,0,101", None, "expected key:value, got '101'"),
    ("s9,1,0,101:", None, "expected key:value, got '101:'"),
    ("s9,1,0,:u1", None, "expected key:value, got ':u1'"),
    ("s9,1,0,101:u1,,205:i1", None, "expected key:value, got ''"),  # an empty token
])
def test_bad_lines_name_file_line_and_field(tmp_path, line, field, message):
    lines = [LINES[0], line, LINES[1]]
    with pytest.raises(DataError) as info:
        _read(tmp_path, lines)
    err = info.value
    assert err.path.endswith("aliccp.txt") and err.line == 2 and err.field == field, (err.line, err.field, str(err))
    assert message in err.reason, err.reason
    # under skip: the other lines are read, the bad one counted and listed with its line
    _, reader, tables = _read(tmp_path, lines, bad_lines="skip")
    assert sum(t.num_rows for t in tables) == 2 and reader.skipped.total == 1
    assert reader.skipped.examples and "aliccp.txt:2" in reader.skipped.examples[0]


def test_whitespace_delimiter_keeps_positional_fields(tmp_path):
    config = cfg(delimiter=None)
    _, _, tables = _read(tmp_path, ["s1  1 0  101:u1   210:a 210:b"], config=config)
    assert tables[0].column("label.1").to_pylist() == [0.0]
    assert tables[0].column("210").to_pylist() == [["a", "b"]]
