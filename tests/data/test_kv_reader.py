"""key:value lines (PaddleRec's BST sample layout): a list column's key repeats once per value,
other keys at most once; bad lines named by file, line and key; sequences cut and counted."""

from __future__ import annotations

import pytest

from ctrlab.data.formats import file_schema
from ctrlab.data.readers import DataError, RowReader
from ctrlab.schema import GenericSchemaConfig

LINES = [
    "userid:7 history:i1 history:i2 history:i3 cate:c1 cate:c2 cate:c1 target:i4 target_cate:c2 label:1",
    "userid:8 target:i5 target_cate:c1 label:0",  # no history: empty lists
    "label:1 target:i2 history:i9 cate:c9",  # any order; userid and target_cate absent: missing
]
CFG = GenericSchemaConfig(columns=["userid", "history", "cate", "target", "target_cate", "label"],
                          sparse=["userid", "target", "target_cate"],
                          lists={"history": {"max_length": 2, "vocab_of": "target"},
                                 "cate": {"max_length": 2, "vocab_of": "target_cate"}})


def _read(tmp_path, lines, bad_lines="error"):
    path = tmp_path / "kv.txt"
    path.write_text("\n".join(lines) + "\n")
    reader = RowReader([path], file_schema(path, "kv", CFG)[1], bad_lines=bad_lines)
    return path, reader, [chunk.table for chunk in reader]


def test_key_value_lines_give_lists_and_single_values(tmp_path):
    _, reader, tables = _read(tmp_path, LINES)
    table = tables[0]
    assert table.column("history").to_pylist() == [["i2", "i3"], [], ["i9"]]  # the most recent 2
    assert table.column("cate").to_pylist() == [["c2", "c1"], [], ["c9"]]
    assert table.column("userid").to_pylist() == ["7", "8", None]
    assert table.column("target_cate").to_pylist() == ["c2", "c1", None]
    assert table.column("label").to_pylist() == [1.0, 0.0, 1.0]
    assert reader.sources[0].truncated == {"history": 1, "cate": 1}


@pytest.mark.parametrize("bad, field, words", [
    ("userid:1 userid:2 target:i1 label:0", "userid", "appears twice"),
    ("userid:1 colour:red target:i1 label:0", "colour", "unknown key 'colour'"),
    ("userid:1 target: label:0", None, "expected key:value"),
    ("userid:1 target:i1 label:3", "label", "0/1 label"),
    ("userid:1 target:i1", "label", "0/1 label, got none"),
])
def test_bad_lines_name_file_line_and_key(tmp_path, bad, field, words):
    lines = [LINES[0], bad, LINES[1]]
    with pytest.raises(DataError) as error:
        _read(tmp_path, lines)
    assert error.value.line == 2 and error.value.field == field and words in str(error.value)
    _, reader, tables = _read(tmp_path, lines, bad_lines="skip")
    assert sum(t.num_rows for t in tables) == 2 and reader.skipped.total == 1
