"""Request rows with list-valued columns (issue 15) reach the pipeline: JSON lists and delimited
strings give the table (and the encoding) of pyarrow list arrays built by hand, cut to the last
max_length values; every bad value is an InputError naming its row and field; a Predictor whose
pipeline has lists sends every request, a 1-row one included, through the table path; and
pipelines without lists are unchanged.

No bundle holds list columns yet (prepare refuses them), so the Predictor is checked without one:
``Predictor.__new__`` plus the two attributes its encoding reads (``pipeline`` and
``input_counts``), then its real ``encode`` / ``_encode_timed`` / ``to_table`` / ``transform``."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ctrlab.features.online import SMALL_INPUT_ROWS
from ctrlab.features.pipeline import CategoricalOptions, FeaturePipeline, InputError
from ctrlab.fields import MISSING_ID
from ctrlab.inference.predictor import InputCounts, Predictor
from ctrlab.inference.rows import check_table, checked_columns, rows_to_table
from ctrlab.schema import ListColumn

STRINGS = pa.list_(pa.string())
DENSE = ["price"]
SPARSE = ["item_id", "cate_id"]
HIST = ListColumn("hist", kind="sequence", max_length=3, vocab_of="item_id")
GENRES = ListColumn("genres", kind="multi", max_length=4, separator=",", pooling="sum")
LISTS = [HIST, GENRES]
COLUMNS = DENSE + SPARSE + ["hist", "genres"]

# the rows as dicts with JSON lists, the same rows with delimited strings, and the table they must give
JSON_ROWS = [
    {"price": 1.5, "item_id": "i1", "cate_id": "c1", "hist": ["i2", "i1"], "genres": ["Action", "Comedy"]},
    {"price": None, "item_id": "i2", "cate_id": "c2", "hist": [], "genres": None},
    {"price": 3.0, "item_id": "i3", "hist": ["i4", "i5", "i2", "i1", "i3"], "genres": ["Drama"]},  # cut to 3
    {"price": 2.0, "item_id": 7, "cate_id": "c1", "hist": [7, "i9"], "genres": ["Noir", 12, "Action"]},  # ints
    {"price": 0.5, "item_id": "i1", "cate_id": "c3"},  # both lists left out: empty
]
TEXT_ROWS = [
    {"price": 1.5, "item_id": "i1", "cate_id": "c1", "hist": "i2|i1", "genres": "Action,Comedy"},
    {"price": None, "item_id": "i2", "cate_id": "c2", "hist": "", "genres": None},
    {"price": 3.0, "item_id": "i3", "hist": "i4|i5|i2|i1|i3", "genres": "Drama"},
    {"price": 2.0, "item_id": 7, "cate_id": "c1", "hist": "7|i9", "genres": "Noir,12,Action"},
    {"price": 0.5, "item_id": "i1", "cate_id": "c3"},
]
EXPECTED = pa.table({
    "price": pa.array([1.5, None, 3.0, 2.0, 0.5], pa.float64()),
    "item_id": pa.array(["i1", "i2", "i3", "7", "i1"]),
    "cate_id": pa.array(["c1", "c2", None, "c1", "c3"]),
    "hist": pa.array([["i2", "i1"], [], ["i2", "i1", "i3"], ["7", "i9"], []], STRINGS),
    "genres": pa.array([["Action", "Comedy"], [], ["Drama"], ["Noir", "12", "Action"], []], STRINGS),
})


def _fitted() -> FeaturePipeline:
    train = pa.table({
        "price": pa.array([1.0, 2.0, None, 4.0, 5.0, 6.0], pa.float64()),
        "item_id": pa.array(["i1", "i2", "i3", "i1", "7", None]),
        "cate_id": pa.array(["c1", "c2", "c1", None, "c3", "c1"]),
        "hist": pa.array([["i2"], ["i1", "i4"], [], None, ["i9", "i5", "i1"], ["i2"]], STRINGS),
        "genres": pa.array([["Action"], ["Comedy", "Drama"], ["12"], [], None, ["Noir"]], STRINGS),
    })
    return FeaturePipeline.from_options(DENSE, SPARSE, categorical=CategoricalOptions(min_count=1),
                                        lists=LISTS).fit([train])


@pytest.fixture(scope="module")
def pipeline() -> FeaturePipeline:
    return _fitted()


def _as_lists(rows: list[dict]) -> list[list]:
    return [[row.get(c) for c in COLUMNS] for row in rows]


def _encoded(pipeline: FeaturePipeline, table: pa.Table) -> tuple[bytes, bytes]:
    dense, sparse = pipeline.transform(table)
    return dense.tobytes(), sparse.tobytes()


# --------------------------------------------------------------------------------------------
# rows -> table
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [JSON_ROWS, TEXT_ROWS, _as_lists(JSON_ROWS), _as_lists(TEXT_ROWS)],
                         ids=["json-dicts", "text-dicts", "json-lists", "text-lists"])
def test_list_values_give_the_hand_built_table_and_encoding(pipeline, rows):
    table = rows_to_table(rows, DENSE, SPARSE, LISTS)
    assert table.schema == EXPECTED.schema
    assert table.equals(EXPECTED)
    assert table.column("hist").to_pylist()[2] == ["i2", "i1", "i3"]  # the last max_length (3), in order
    assert table.column("hist").null_count == 0 and table.column("genres").null_count == 0
    assert _encoded(pipeline, table) == _encoded(pipeline, EXPECTED)
    # and the encoding is what the ids say: the history block after the single-valued columns
    _, sparse = pipeline.transform(table)
    assert sparse.shape == (5, 2 + 3 + 4)
    assert sparse[1, 2:].tolist() == [MISSING_ID] * 7  # empty lists: padding only
    assert sparse[4, 2:].tolist() == [MISSING_ID] * 7  # left-out keys: empty lists
    assert sparse[0, 2:4].tolist() == [sparse[1, 0], sparse[0, 0]]  # hist shares item_id's vocabulary


def test_mixed_kinds_and_truncation_of_each_kind():
    rows = [{"hist": "a|b|c|d", "genres": ["g1", "g2", "g3", "g4", "g5", "g6"]},  # both too long
            {"hist": ("x", np.int64(5)), "genres": "g1,g2"},  # a tuple with a numpy integer
            {"hist": None, "genres": ""}]
    table = rows_to_table(rows, [], [], LISTS)
    assert table.column("hist").to_pylist() == [["b", "c", "d"], ["x", "5"], []]
    assert table.column("genres").to_pylist() == [["g3", "g4", "g5", "g6"], ["g1", "g2"], []]
    assert table.column("hist").type == STRINGS


def test_many_rows_take_the_same_conversion(pipeline):
    """100 rows of each kind (the plain fast paths) give the 5 rows' table repeated."""
    for rows in (JSON_ROWS, TEXT_ROWS):
        table = rows_to_table(rows * 20, DENSE, SPARSE, LISTS)
        assert table.equals(pa.concat_tables([EXPECTED] * 20).combine_chunks())


def test_plain_lists_and_the_value_by_value_path_agree():
    """All lists of non-empty strings convert in one Arrow call; one odd value (a tuple) sends
    the column value by value: the same lists either way, cut alike."""
    plain = [{"hist": ["a", "b", "c", "d", "e"]}, {"hist": []}, {"hist": None}, {}, {"hist": ["x"]}] * 3
    fast = rows_to_table(plain, [], [], [HIST])
    careful = rows_to_table(plain + [{"hist": ("y",)}], [], [], [HIST])
    assert fast.column("hist").to_pylist()[:5] == [["c", "d", "e"], [], [], [], ["x"]]
    assert careful.slice(0, len(plain)).column("hist").to_pylist() == fast.column("hist").to_pylist()
    assert careful.column("hist").to_pylist()[-1] == ["y"]


def test_a_multi_character_separator_splits_as_python_does():
    column = ListColumn("tags", kind="multi", max_length=5, separator="::")
    texts = ["a::b:c::d", "x:::y"]
    fast = rows_to_table([{"tags": t} for t in texts], [], [], [column])  # all strings: Arrow's split
    careful = rows_to_table([{"tags": t} for t in texts] + [{"tags": ["z"]}], [], [], [column])  # mixed: Python's
    assert fast.column("tags").to_pylist() == [t.split("::") for t in texts] == [["a", "b:c", "d"], ["x", ":y"]]
    assert careful.column("tags").to_pylist()[:2] == fast.column("tags").to_pylist()


BAD = [
    ({"hist": 3}, "hist", r"expected a list of strings.*got int 3"),
    ({"hist": 2.5}, "hist", r"got float 2.5"),
    ({"hist": True}, "hist", r"got bool"),
    ({"genres": {"a": 1}}, "genres", r"got dict"),
    ({"hist": b"i1|i2"}, "hist", r"got bytes"),
    ({"hist": ["i1", 2.5]}, "hist", r"value 1 of the list: expected a string or an integer id, got float"),
    ({"hist": ["i1", None]}, "hist", r"value 1 of the list: .*got NoneType"),
    ({"hist": [["i1"]]}, "hist", r"value 0 of the list: .*got list"),
    ({"hist": ["i1", True]}, "hist", r"value 1 of the list: .*got bool"),
    ({"hist": [b"i1"]}, "hist", r"value 0 of the list: .*got bytes"),
    ({"genres": ["Action", ""]}, "genres", r"value 1 of the list is an empty string"),
    ({"hist": "i1||i2"}, "hist", r"empty value in the list 'i1\|\|i2'"),
    ({"hist": "i1|"}, "hist", r"empty value in the list"),
    ({"genres": ",Drama"}, "genres", r"empty value in the list"),
]


@pytest.mark.parametrize("bad,field,message", BAD)
@pytest.mark.parametrize("row", [0, 3])
@pytest.mark.parametrize("as_lists", [False, True])
def test_every_bad_list_value_names_its_row_and_field(bad, field, message, row, as_lists):
    # the good rows around the bad one are of the bad value's kind (the fast path's inputs)
    good = JSON_ROWS[0] if isinstance(bad[field], (list, dict)) else TEXT_ROWS[0]
    rows = [dict(good) for _ in range(5)]
    rows[row] = {**good, **bad}
    if as_lists:
        rows = _as_lists(rows)
    with pytest.raises(InputError, match=message) as info:
        rows_to_table(rows, DENSE, SPARSE, LISTS)
    assert info.value.row == row and info.value.field == field
    assert str(info.value).startswith(f"row {row}, field {field!r}: ")
    with pytest.raises(InputError) as lane:  # the small-request lane: the same error
        checked_columns(rows, DENSE, SPARSE, LISTS)
    assert str(lane.value) == str(info.value)


def test_unknown_keys_and_short_rows_still_count_the_list_columns():
    with pytest.raises(InputError, match=r"row 1: unknown column\(s\) \['histt'\]"):
        rows_to_table([{"hist": []}, {"histt": []}], DENSE, SPARSE, LISTS)
    with pytest.raises(InputError, match=r"row 0: expected 5 values \(in the order price, item_id, cate_id, "
                                         r"hist, genres\), got 4"):
        rows_to_table([[1.0, "i1", "c1", []]], DENSE, SPARSE, LISTS)


# --------------------------------------------------------------------------------------------
# Arrow tables
# --------------------------------------------------------------------------------------------

def test_check_table_takes_lists_ints_text_and_cuts_sequences(pipeline):
    given = EXPECTED.set_column(3, "hist", pa.array([["i2", "i1"], None, ["i4", "i5", "i2", "i1", "i3"],
                                                      ["7", "i9"], []], STRINGS))
    checked = check_table(given, DENSE, SPARSE, LISTS)
    assert checked.equals(EXPECTED)  # null -> [], cut to the last 3
    as_text = given.set_column(4, "genres", pa.array(["Action,Comedy", None, "Drama", "Noir,12,Action", ""]))
    assert check_table(as_text, DENSE, SPARSE, LISTS).equals(EXPECTED)
    ints = pa.table({"hist": pa.array([[1, 2], None], pa.list_(pa.int64())),
                     "genres": pa.array([[], ["x"]], pa.large_list(pa.large_string()))})
    out = check_table(ints, [], [], LISTS)
    assert out.column("hist").to_pylist() == [["1", "2"], []] and out.column("hist").type == STRINGS
    assert out.column("genres").type == STRINGS
    assert _encoded(pipeline, check_table(given, DENSE, SPARSE, LISTS)) == _encoded(pipeline, EXPECTED)


def test_check_table_errors():
    with pytest.raises(InputError, match=r"lacks column\(s\) \['genres'\]"):
        check_table(EXPECTED.drop_columns(["genres"]), DENSE, SPARSE, LISTS)
    with pytest.raises(InputError, match=r"column 'hist': expected lists of strings.*list<item: double>"):
        check_table(EXPECTED.set_column(3, "hist", pa.array([[1.0]] * 5, pa.list_(pa.float64()))),
                    DENSE, SPARSE, LISTS)
    with pytest.raises(InputError, match=r"column 'hist': expected lists.*got Arrow type int64"):
        check_table(EXPECTED.set_column(3, "hist", pa.array([1] * 5)), DENSE, SPARSE, LISTS)
    cases = [(pa.array([["a"], [], ["b", None]], STRINGS), 2, "value 1 of the list is null"),
             (pa.array([["a"], ["", "b"], []], STRINGS), 1, "value 0 of the list is an empty string"),
             (pa.array(["a", "b", "c||d"]), 2, "empty value in the list")]
    for column, row, message in cases:
        with pytest.raises(InputError, match=message) as info:
            check_table(pa.table({"hist": column, "genres": pa.array([[]] * 3, STRINGS)}), [], [], LISTS)
        assert info.value.row == row and info.value.field == "hist"


# --------------------------------------------------------------------------------------------
# the Predictor's routing
# --------------------------------------------------------------------------------------------

def _predictor(pipeline: FeaturePipeline) -> Predictor:
    """A Predictor without a bundle: the attributes its encoding reads, its own methods."""
    predictor = Predictor.__new__(Predictor)
    predictor.pipeline = pipeline
    predictor.input_counts = InputCounts(pipeline)
    return predictor


def test_with_lists_small_requests_take_the_lane_with_the_table_paths_bytes(pipeline, monkeypatch):
    """Up to SMALL_INPUT_ROWS rows with list values take the small-request lane (no Arrow
    table) and give the bytes of the table path; larger inputs and Arrow tables take the table."""
    predictor = _predictor(pipeline)
    assert predictor.columns == COLUMNS and predictor.list_columns == LISTS
    tables = []
    to_table = Predictor.to_table

    def spy(self, rows):
        table = to_table(self, rows)
        tables.append(table)
        return table

    monkeypatch.setattr(Predictor, "to_table", spy)

    many = [JSON_ROWS[k % 5] for k in range(100)]
    dense_many, sparse_many = predictor.encode(many)
    assert len(tables) == 1 and tables[-1].num_rows == 100
    for k in range(5):
        for rows in ([JSON_ROWS[k]], [TEXT_ROWS[k]], _as_lists([JSON_ROWS[k]])):
            dense, sparse = predictor.encode(rows)
            assert dense.tobytes() == dense_many[k:k + 1].tobytes()
            assert sparse.tobytes() == sparse_many[k:k + 1].tobytes()
    assert len(tables) == 1  # the single rows took the lane
    small = [JSON_ROWS[k % 5] for k in range(SMALL_INPUT_ROWS)]
    _, lane_sparse, (parse, transform) = predictor._encode_timed(small)
    assert len(tables) == 1 and parse >= 0 and transform >= 0
    assert lane_sparse.tobytes() == sparse_many[:SMALL_INPUT_ROWS].tobytes()
    # an Arrow table is checked with the list columns too
    given = EXPECTED.set_column(3, "hist", pa.array(["i2|i1", None, "i4|i5|i2|i1|i3", "7|i9", ""]))
    assert predictor.encode(given)[1].tobytes() == sparse_many[:5].tobytes()
    # bad list values: the request's row and field
    with pytest.raises(InputError, match=r"row 0, field 'hist'"):
        predictor.encode([{**JSON_ROWS[0], "hist": "a||b"}])
    # the counts: single-valued fields only, over the 100 + 15 + 32 + 5 rows
    counts = predictor.input_counts.snapshot()
    assert list(counts) == ["item_id", "cate_id", "price"]
    rows = 100 + 15 + SMALL_INPUT_ROWS + 5
    assert {c["rows"] for c in counts.values()} == {rows}
    # JSON_ROWS[2] leaves cate_id out: 20 of 100, 3 singles, 6 of the 32, 1 in the table
    missing_cate = 20 + 3 + sum(1 for k in range(SMALL_INPUT_ROWS) if k % 5 == 2) + 1
    assert counts["cate_id"]["missing"] == missing_cate


def test_input_counts_take_the_single_valued_columns(pipeline):
    counts = InputCounts(pipeline)
    table = EXPECTED
    _, sparse = pipeline.transform(table)
    counts.add(table, sparse)
    snapshot = counts.snapshot()
    assert snapshot["cate_id"] == {"rows": 5, "missing": 1, "oov": 0}
    assert snapshot["price"] == {"rows": 5, "missing": 1, "oov": None}
    assert "hist" not in snapshot and len(counts.missing) == 3 and len(counts.oov) == 2


# --------------------------------------------------------------------------------------------
# pipelines without lists: unchanged
# --------------------------------------------------------------------------------------------

def test_without_lists_the_tables_are_unchanged():
    flat_rows = [{k: v for k, v in row.items() if k not in ("hist", "genres")} for row in JSON_ROWS]
    flat_rows.append({"price": "2.5", "item_id": "", "cate_id": np.int32(4)})
    for rows in (flat_rows, [[row.get(c) for c in DENSE + SPARSE] for row in flat_rows]):
        before = rows_to_table(rows, DENSE, SPARSE)
        for lists in ((), []):
            after = rows_to_table(rows, DENSE, SPARSE, lists)
            assert after.equals(before) and after.schema == before.schema
    assert before.column_names == DENSE + SPARSE
    assert before.column("cate_id").to_pylist()[-1] == "4" and before.column("item_id").to_pylist()[-1] is None
    table = before
    assert check_table(table, DENSE, SPARSE, ()) is check_table(table, DENSE, SPARSE) is table
    # the small lane's columns take no list argument and are what they were
    assert checked_columns(flat_rows, DENSE, SPARSE)["cate_id"][-1] == "4"
    with pytest.raises(InputError, match=r"unknown column\(s\) \['hist'\]"):
        rows_to_table([{"hist": []}], DENSE, SPARSE)
