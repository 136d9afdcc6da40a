"""List-valued categorical columns (issue 15, first step): declared in the generic schema, read by
RowReader as list<string> (plus list<float64> weights), sequences cut to their most recent
max_length values and counted, bad lists named by file, line and field; prepare refuses them
clearly until it can encode them."""

from __future__ import annotations

import pytest

from ctrlab.data.formats import file_schema
from ctrlab.data.readers import WEIGHTS_SUFFIX, DataError, RowReader, _slow_delimited, SkipReport, SourceInfo
from ctrlab.schema import GenericSchemaConfig, ListColumn, Schema

HEADER = "label\tuser\tprice\thist\ttags"
ROWS = [
    "1\tu1\t3.5\ti1|i2|i3|i4|i5\tcomedy:0.5|drama",
    "0\tu2\t\t\t",
    "1\tu3\t1\ti9\taction:2",
    "0\tu1\t2\ti2|i3\tdrama|comedy|news",
]
LISTS = {"hist": {"kind": "sequence", "separator": "|", "max_length": 3},
         "tags": {"kind": "multi", "separator": "|", "weight_separator": ":", "pooling": "sum"}}


def _schema(tmp_path, lines: list[str]) -> tuple:
    path = tmp_path / "rows.tsv"
    path.write_text("\n".join([HEADER, *lines]) + "\n")
    cfg = GenericSchemaConfig(dense=["price"], sparse=["user"], lists=LISTS)
    return path, file_schema(path, "tsv", cfg)[1]


def test_lists_are_read_split_truncated_and_weighted(tmp_path):
    path, schema = _schema(tmp_path, ROWS)
    assert schema.list_names == ("hist", "tags") and schema.sparse == ("user",)
    reader = RowReader([path], schema)
    table = next(iter(reader)).table
    assert table.column("hist").to_pylist() == [["i3", "i4", "i5"], [], ["i9"], ["i2", "i3"]]  # most recent 3
    assert table.column("tags").to_pylist() == [["comedy", "drama"], [], ["action"], ["drama", "comedy", "news"]]
    assert table.column("tags" + WEIGHTS_SUFFIX).to_pylist() == [[0.5, 1.0], [], [2.0], [1.0, 1.0, 1.0]]
    assert reader.sources[0].truncated == {"hist": 1}
    assert table.column("user").to_pylist() == ["u1", "u2", "u3", "u1"]


def test_line_parser_reads_lists_like_the_fast_path(tmp_path):
    path, schema = _schema(tmp_path, ROWS)
    fast = next(iter(RowReader([path], schema))).table
    info = SourceInfo(str(path), path.stat().st_size)
    slow = next(_slow_delimited(path, schema, "error", SkipReport(), info)).table
    assert slow.equals(fast)
    assert info.truncated == {"hist": 1}


@pytest.mark.parametrize("bad, field, words", [
    ("1\tu4\t1\ti1||i2\tnews", "hist", "empty value"),
    ("1\tu4\t1\ti1\tnews:lots", "tags", "weight of 'news:lots'"),
    ("1\tu4\t1\ti1\tnews:inf", "tags", "weight"),
])
def test_bad_lists_name_file_line_and_field(tmp_path, bad, field, words):
    path, schema = _schema(tmp_path, ROWS[:2] + [bad] + ROWS[2:])
    with pytest.raises(DataError) as error:
        list(RowReader([path], schema))
    assert error.value.line == 4 and error.value.field == field and words in str(error.value)
    assert str(path) in str(error.value)
    reader = RowReader([path], schema, bad_lines="skip")
    rows = sum(chunk.table.num_rows for chunk in reader)
    assert rows == len(ROWS) and reader.skipped.total == 1


def test_list_declarations_are_checked():
    with pytest.raises(ValueError, match="needs max_length"):
        ListColumn("hist", kind="sequence")
    with pytest.raises(ValueError, match="pooling"):
        ListColumn("tags", kind="multi", pooling="median")
    with pytest.raises(ValueError, match="not a categorical column"):
        Schema("tsv", "delimited", ("label", "item", "hist"), "label", (), ("item",),
               lists=(ListColumn("hist", max_length=5, vocab_of="nope"),))
    with pytest.raises(ValueError, match="also declared"):
        Schema("tsv", "delimited", ("label", "hist"), "label", (), ("hist",), lists=(ListColumn("hist", max_length=5),))
    shared = Schema("tsv", "delimited", ("label", "item", "hist"), "label", (), ("item",),
                    lists=(ListColumn("hist", max_length=5, vocab_of="item"),))
    assert Schema.from_dict(shared.to_dict()) == shared


def test_generated_behaviour_rows_read_with_their_list_schema(tmp_path):
    """`ctrlab data synth --kind sequence` rows through the declared schema: histories of at most
    max_length items, categories aligned with their items, weighted tags."""
    from ctrlab.data.synth_sequence import write_sequence_synthetic

    path = tmp_path / "seq.tsv"
    write_sequence_synthetic(path, 3000, seed=4, max_history=20)
    lists = {"hist_item_id": {"kind": "sequence", "max_length": 8, "vocab_of": "item_id"},
             "hist_cate_id": {"kind": "sequence", "max_length": 8, "vocab_of": "cate_id"},
             "tags": {"kind": "multi", "weight_separator": ":"}}
    schema = file_schema(path, "tsv", GenericSchemaConfig(dense=["price"], lists=lists))[1]
    assert schema.sparse == ("user_id", "item_id", "cate_id")
    reader = RowReader([path], schema)
    tables = [chunk.table for chunk in reader]
    rows = sum(t.num_rows for t in tables)
    assert rows == 3000
    items = [x for t in tables for x in t.column("hist_item_id").to_pylist()]
    cates = [x for t in tables for x in t.column("hist_cate_id").to_pylist()]
    assert max(map(len, items)) == 8 and min(map(len, items)) == 0
    assert [len(a) for a in items] == [len(c) for c in cates]
    assert reader.sources[0].truncated["hist_item_id"] == reader.sources[0].truncated["hist_cate_id"] > 0
    weights = [w for t in tables for row in t.column("tags" + WEIGHTS_SUFFIX).to_pylist() for w in row]
    assert weights and any(w != 1.0 for w in weights) and all(w > 0 for w in weights)


def test_paddlerec_din_sample_reads_with_a_declared_schema(shared_data):
    """PaddleRec's DIN sample (``hist items;hist cates;item;cate;label``, space-separated lists)
    through the generic schema: every line read, histories aligned with their categories."""
    path = shared_data["paddle_din"]
    lines = [line for line in path.read_text().splitlines() if line]
    cfg = GenericSchemaConfig(columns=["hist_item", "hist_cate", "item", "cate", "label"], header=False,
                              delimiter=";", sparse=["item", "cate"],
                              lists={"hist_item": {"separator": " ", "max_length": 50, "vocab_of": "item"},
                                     "hist_cate": {"separator": " ", "max_length": 50, "vocab_of": "cate"}})
    schema = file_schema(path, "csv", cfg)[1]
    reader = RowReader([path], schema)
    tables = [chunk.table for chunk in reader]
    assert sum(t.num_rows for t in tables) == len(lines)
    items = [x for t in tables for x in t.column("hist_item").to_pylist()]
    cates = [x for t in tables for x in t.column("hist_cate").to_pylist()]
    assert [len(a) for a in items] == [len(c) for c in cates] and min(map(len, items)) >= 1
    first = lines[0].split(";")
    assert items[0] == first[0].split(" ")[-50:] and tables[0].column("item")[0].as_py() == first[2]
    labels = [x for t in tables for x in t.column("label").to_pylist()]
    assert set(labels) <= {0.0, 1.0} and 0 < sum(labels) < len(labels)


def test_prediction_input_drops_what_the_training_schema_dropped(tmp_path):
    """A generic file scored by a bundle: a column the training schema read and dropped (not
    declared dense, sparse or list) is dropped again, so the training file itself scores; a
    column the training data never had is still an error naming it."""
    from ctrlab.data.formats import input_schema

    path = tmp_path / "rows.tsv"
    path.write_text("\n".join([HEADER, *ROWS]) + "\n")
    trained = file_schema(path, "tsv", GenericSchemaConfig(dense=["price"], sparse=["user"],
                                                           lists={"hist": LISTS["hist"]}))[1]
    assert "tags" in trained.columns and "tags" not in trained.sparse  # read and dropped
    fmt, schema = input_schema(path, "tsv", trained, ["price"], ["user"])
    assert fmt == "tsv" and schema.list_names == ("hist",) and schema.sparse == ("user",)
    table = next(iter(RowReader([path], schema))).table
    assert "tags" not in table.column_names and table.num_rows == len(ROWS)
    other = tmp_path / "other.tsv"
    other.write_text(HEADER + "\tcolour\n" + "\n".join(r + "\tred" for r in ROWS) + "\n")
    with pytest.raises(ValueError, match=r"extra \['colour'\]"):
        input_schema(other, "tsv", trained, ["price"], ["user"])
