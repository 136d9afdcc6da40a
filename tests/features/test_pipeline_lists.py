"""FeaturePipeline with list columns (issue 15): each list's block of ids after the single-valued
columns, against a loop-written encoding; shared vocabularies (the union counts); persistence
(a pipeline without lists keeps its bytes); the refusals; and real rows from the sequence
synthetic file through RowReader."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from ctrlab.data.formats import file_schema
from ctrlab.data.readers import RowReader
from ctrlab.data.synth_sequence import write_sequence_synthetic
from ctrlab.features.encoders import Vocabulary
from ctrlab.features.pipeline import FORMAT_VERSION, CategoricalOptions, FeaturePipeline, NumericOptions
from ctrlab.fields import MISSING_ID, NUM_RESERVED_IDS, OOV_ID
from ctrlab.schema import GenericSchemaConfig, ListColumn

STRINGS = pa.list_(pa.string())


def _table(n_repeat: int = 1) -> pa.Table:
    """A small hand-made table: a price, item/cate targets, a history sharing item_id's
    vocabulary (empty, null, exactly max_length = 4 long, unseen items) and genres with their
    own vocabulary."""
    price = [1.5, None, 3.0, 10.0, 0.5, 2.0, 7.0, 1.0]
    item = ["i1", "i2", "i3", "i1", None, "i2", "i9", "i1"]
    cate = ["c1", "c2", "c1", "c1", "c2", None, "c3", "c1"]
    hist = [["i2", "i1"], [], None, ["i4", "i4", "i2", "i1"], ["i4"], ["i8", "i2"], ["i1"], ["i5", "i4"]]
    genres = [["Action", "Comedy"], ["Drama"], [], None, ["Action"], ["Comedy", "Action", "Noir"], ["Action"],
              ["Drama", "Comedy"]]
    k = n_repeat
    return pa.table({
        "price": pa.array(price * k, pa.float64()), "item_id": pa.array(item * k), "cate_id": pa.array(cate * k),
        "hist": pa.array(hist * k, STRINGS), "genres": pa.array(genres * k, STRINGS),
    })


LISTS = [ListColumn("hist", kind="sequence", max_length=4, vocab_of="item_id"),
         ListColumn("genres", kind="multi", max_length=3, pooling="sum")]


def _pipeline(lists=LISTS, **kwargs) -> FeaturePipeline:
    return FeaturePipeline.from_options(["price"], ["item_id", "cate_id"], lists=lists, **kwargs)


def _keys(vocab: Vocabulary) -> dict[str, int]:
    return {k: i + NUM_RESERVED_IDS for i, k in enumerate(vocab.keys_.to_pylist())}


def _loop_block(index: dict[str, int], rows: list, max_length: int) -> list[list[int]]:
    out = []
    for row in rows:
        ids = [index.get(v, OOV_ID) for v in (row or [])[-max_length:]]
        out.append(ids + [MISSING_ID] * (max_length - len(ids)))
    return out


@pytest.mark.parametrize("n_repeat", [1, 100])  # a few rows (the online lane's size) and more
def test_transform_equals_a_loop_written_encoding(n_repeat):
    table = _table(n_repeat)
    pipe = _pipeline(categorical=CategoricalOptions(min_count=1)).fit([table])
    dense, sparse = pipe.transform(table)
    spec = pipe.spec
    assert spec.sparse_width == 2 + 4 + 3 and sparse.shape == (table.num_rows, spec.sparse_width)
    assert sparse.dtype == np.int32 and dense.shape == (table.num_rows, 1)

    # the single-valued columns: exactly what a pipeline without lists gives
    flat = FeaturePipeline.from_options(["price"], ["item_id", "cate_id"],
                                        categorical=CategoricalOptions(min_count=1))
    flat.fit([table.select(["price", "item_id", "cate_id"])])
    flat_dense, flat_sparse = flat.transform(table)
    assert dense.tobytes() == flat_dense.tobytes()
    # cate_id is shared by no list: the same ids (item_id's vocabulary also counts the histories)
    assert sparse[:, 1].tolist() == flat_sparse[:, 1].tolist()

    # the history block through item_id's vocabulary, the genres block through their own
    item_index = _keys(pipe.encoders["item_id"])
    genre_index = _keys(pipe.list_encoders["genres"])
    hist = table.column("hist").to_pylist()
    genres = table.column("genres").to_pylist()
    assert sparse[:, 2:6].tolist() == _loop_block(item_index, hist, 4)
    assert sparse[:, 6:9].tolist() == _loop_block(genre_index, genres, 3)
    items = table.column("item_id").to_pylist()
    assert sparse[:, 0].tolist() == [MISSING_ID if v is None else item_index.get(v, OOV_ID) for v in items]
    # the exactly-max_length history is kept whole, the empty and null ones are all padding
    assert sparse[3, 2:6].tolist() == [item_index[v] for v in ["i4", "i4", "i2", "i1"]]
    assert sparse[1, 2:6].tolist() == [0, 0, 0, 0] and sparse[2, 2:6].tolist() == [0, 0, 0, 0]
    assert sorted(genre_index) == ["Action", "Comedy", "Drama", "Noir"]

    # unseen values at transform time: OOV, padding untouched
    unseen = table.slice(0, 2).set_column(3, "hist", pa.array([["zz", "i1"], ["yy"]], STRINGS))
    unseen = unseen.set_column(4, "genres", pa.array([["Western"], None], STRINGS))
    _, s = pipe.transform(unseen)
    assert s[:, 2:6].tolist() == [[OOV_ID, item_index["i1"], 0, 0], [OOV_ID, 0, 0, 0]]
    assert s[:, 6:9].tolist() == [[OOV_ID, 0, 0], [0, 0, 0]]


def test_single_valued_columns_equal_a_pipeline_without_lists():
    """With a list column that has its own vocabulary, the single-valued part is byte-identical
    to the pipeline without lists (a shared vocabulary legitimately renumbers its column)."""
    table = _table(3)
    pipe = _pipeline(lists=[LISTS[1]]).fit([table])
    flat = FeaturePipeline.from_options(["price"], ["item_id", "cate_id"]).fit([table])
    dense, sparse = pipe.transform(table)
    flat_dense, flat_sparse = flat.transform(table)
    assert dense.tobytes() == flat_dense.tobytes()
    assert np.ascontiguousarray(sparse[:, :2]).tobytes() == flat_sparse.tobytes()
    assert pipe.spec.vocab_sizes == flat.spec.vocab_sizes


def test_shared_vocabulary_gives_history_items_the_target_ids():
    table = _table()
    pipe = _pipeline(categorical=CategoricalOptions(min_count=1)).fit([table])
    _, sparse = pipe.transform(table)
    target_id = {}
    for item, i in zip(table.column("item_id").to_pylist(), sparse[:, 0].tolist()):
        if item is not None:
            target_id[item] = i
    for row, history in enumerate(table.column("hist").to_pylist()):
        for pos, item in enumerate(history or []):
            if item in target_id:
                assert sparse[row, 2 + pos] == target_id[item]
    spec = pipe.spec
    hist_field, genre_field = spec.lists
    assert hist_field.name == "hist" and hist_field.shares == "item_id" and hist_field.length == 4
    assert hist_field.vocab_size == spec.vocab_sizes[spec.sparse_names.index("item_id")]
    assert hist_field.kind == "sequence" and hist_field.pooling == "mean"
    assert genre_field.shares is None and genre_field.kind == "multi" and genre_field.pooling == "sum"
    assert genre_field.vocab_size == NUM_RESERVED_IDS + 4
    # the shared vocabulary holds the items seen only in histories too (i4, i5, i8)
    assert {"i4", "i5", "i8"} <= set(pipe.encoders["item_id"].keys_.to_pylist())


def test_min_count_counts_the_union_of_target_and_histories():
    table = pa.table({
        "item_id": pa.array(["a", "a", "b", "c"]),
        "hist": pa.array([["h", "b"], ["h"], [], ["h", "c", "x"]], STRINGS),
    })
    pipe = FeaturePipeline.from_options([], ["item_id"], categorical=CategoricalOptions(min_count=2),
                                        lists=[ListColumn("hist", max_length=3, vocab_of="item_id")]).fit([table])
    keys = pipe.encoders["item_id"].keys_.to_pylist()
    # h: 3 times in histories only; b and c once as target + once in a history; x once: OOV
    assert sorted(keys) == ["a", "b", "c", "h"]
    assert keys[0] == "h"  # the most frequent (counted over the union) comes first
    _, sparse = pipe.transform(table)
    assert sparse[3, 1:].tolist()[:3] == [NUM_RESERVED_IDS + keys.index("h"), sparse[3, 0], OOV_ID]
    # an own-vocabulary list with the same rows: only its own counts
    own = FeaturePipeline.from_options([], ["item_id"], categorical=CategoricalOptions(min_count=2),
                                       lists=[ListColumn("hist", max_length=3)]).fit([table])
    assert own.list_encoders["hist"].keys_.to_pylist() == ["h"]
    assert sorted(own.encoders["item_id"].keys_.to_pylist()) == ["a"]
    # an override by the list column's name applies to its own vocabulary
    low = FeaturePipeline.from_options([], ["item_id"], categorical=CategoricalOptions(min_count=2),
                                       overrides={"hist": CategoricalOptions(min_count=1)},
                                       lists=[ListColumn("hist", max_length=3)]).fit([table])
    assert sorted(low.list_encoders["hist"].keys_.to_pylist()) == ["b", "c", "h", "x"]


def test_fit_on_several_tables_equals_one():
    table = _table(5)
    one = _pipeline().fit([table])
    parts = _pipeline().fit([table.slice(0, 13), table.slice(13, 20), table.slice(33)])
    assert json.dumps(one.to_dict()) == json.dumps(parts.to_dict())


def test_round_trip_gives_identical_transforms(tmp_path):
    table = _table(50)
    pipe = _pipeline(overrides={"price": NumericOptions(transform="log_square_bucket", min_count=1)}).fit([table])
    pipe.save(tmp_path / "pipeline.json")
    loaded = FeaturePipeline.load(tmp_path / "pipeline.json")
    assert loaded.list_inputs == LISTS and loaded.spec == pipe.spec
    for part in (table, table.slice(0, 3)):
        for a, b in zip(pipe.transform(part), loaded.transform(part)):
            assert a.tobytes() == b.tobytes()
    data = pipe.to_dict()
    assert list(data) == ["format_version", "dense_inputs", "sparse_inputs", "encoders", "lists", "list_encoders"]
    assert data["lists"] == [c.to_dict() for c in LISTS]
    assert list(data["list_encoders"]) == ["genres"]  # the shared vocabulary is item_id's entry, not repeated
    assert list(data["encoders"]) == ["price", "item_id", "cate_id"]
    assert json.dumps(loaded.to_dict()) == json.dumps(data)


def test_pipeline_without_lists_keeps_its_dict():
    table = _table(2).select(["price", "item_id", "cate_id"])
    for lists in (None, []):
        pipe = FeaturePipeline.from_options(["price"], ["item_id", "cate_id"], lists=lists).fit([table])
        data = pipe.to_dict()
        expected = {  # the dict written before list columns existed, key order included
            "format_version": FORMAT_VERSION,
            "dense_inputs": ["price"],
            "sparse_inputs": ["item_id", "cate_id"],
            "encoders": {col: pipe.encoders[col].to_dict() for col in ["price", "item_id", "cate_id"]},
        }
        assert json.dumps(data) == json.dumps(expected)
        assert list(data) == ["format_version", "dense_inputs", "sparse_inputs", "encoders"]
        assert pipe.spec.lists == () and "lists" not in pipe.spec.to_dict()
        assert pipe.input_columns == ["price", "item_id", "cate_id"]
        loaded = FeaturePipeline.from_dict(json.loads(json.dumps(data)))
        assert loaded.list_inputs == [] and json.dumps(loaded.to_dict()) == json.dumps(data)


def test_list_column_errors():
    with pytest.raises(ValueError, match=r"'genres'.*give it max_length"):
        _pipeline(lists=[ListColumn("genres", kind="multi")])
    with pytest.raises(ValueError, match=r"'hist'.*vocab_of 'user_id'"):
        _pipeline(lists=[ListColumn("hist", max_length=4, vocab_of="user_id")])
    with pytest.raises(ValueError, match=r"vocab_of 'price'"):  # a dense column has no vocabulary
        _pipeline(lists=[ListColumn("hist", max_length=4, vocab_of="price")])
    with pytest.raises(ValueError, match=r"vocab_of 'item_id' is not encoded with a vocabulary"):
        _pipeline(overrides={"item_id": CategoricalOptions(encoder="hash")})
    with pytest.raises(ValueError, match=r"'genres'.*encoder 'hash'"):
        _pipeline(categorical=CategoricalOptions(encoder="hash"), lists=[LISTS[1]])
    with pytest.raises(ValueError, match=r"declared twice"):
        _pipeline(lists=[ListColumn("item_id", max_length=2)])

    pipe = _pipeline()
    table = _table()
    pipe.fit([table])
    with pytest.raises(ValueError, match=r"input lacks columns \['genres'\]"):
        pipe.transform(table.drop_columns(["genres"]))


def test_sequence_synthetic_rows_end_to_end(tmp_path):
    path = tmp_path / "seq.tsv"
    write_sequence_synthetic(path, 2000, seed=1, max_history=20)
    cfg = GenericSchemaConfig(dense=["price"], lists={
        "hist_item_id": {"kind": "sequence", "max_length": 20, "vocab_of": "item_id"},
        "hist_cate_id": {"kind": "sequence", "max_length": 20, "vocab_of": "cate_id"}})
    _, schema = file_schema(path, "tsv", cfg)
    tables = [chunk.table for chunk in RowReader([path], schema, chunk_rows=500)]
    assert sum(t.num_rows for t in tables) == 2000
    sparse_cols = list(schema.sparse)
    assert sparse_cols == ["user_id", "item_id", "cate_id", "tags"]
    pipe = FeaturePipeline.from_options(list(schema.dense), sparse_cols, lists=schema.lists).fit(tables)
    table = pa.concat_tables(tables)
    dense, sparse = pipe.transform(table)
    spec = pipe.spec
    assert spec.sparse_width == 4 + 40 and sparse.shape == (2000, 44) and dense.shape == (2000, 1)
    assert [f.shares for f in spec.lists] == ["item_id", "cate_id"]

    items = table.column("item_id").to_pylist()
    item_vocab = pipe.encoders["item_id"]
    hist_items = table.column("hist_item_id").to_pylist()
    hist_cates = table.column("hist_cate_id").to_pylist()
    lengths = np.array([len(h or []) for h in hist_items])
    assert lengths.max() == 20 and (lengths == 0).any()
    positions = np.arange(20)
    for start in (4, 24):  # padding exactly where each history ends, ids (>= 1) before it
        block = sparse[:, start:start + 20]
        assert ((block == MISSING_ID) == (positions[None, :] >= lengths[:, None])).all()
    # every history id is the id the target column gives the same string (one lookup for both)
    flat = [v for h in hist_items for v in (h or [])]
    ids_of = dict(zip(flat, item_vocab.transform(pa.array(flat)).tolist()))
    ids_of.update(zip(items, sparse[:, 1].tolist()))
    for row in range(2000):
        for pos, item in enumerate(hist_items[row] or []):
            assert sparse[row, 4 + pos] == ids_of[item]
    # and where a history holds the row's own target item, the two ids are equal in the matrix
    matches = [(r, p) for r in range(2000) for p, v in enumerate(hist_items[r] or []) if v == items[r]]
    assert matches and all(sparse[r, 4 + p] == sparse[r, 1] for r, p in matches)
    cate_matches = [(r, p) for r in range(2000) for p, v in enumerate(hist_cates[r] or [])
                    if v == table.column("cate_id")[r].as_py()]
    assert cate_matches and all(sparse[r, 24 + p] == sparse[r, 2] for r, p in cate_matches)
    # the vectorized lane for a few rows gives the rows of the whole
    assert pipe.transform(table.slice(7, 3))[1].tolist() == sparse[7:10].tolist()


def test_streaming_fit_equals_fit_and_transform():
    """prepare's path (accumulators' provisional codes, list blocks padded with code 0, then the
    finalizer) gives fit()+transform()'s vocabularies and bytes, shared vocabularies included."""
    import numpy as np

    from ctrlab.features.encoders import column_values
    from ctrlab.features.lists import list_values, padded

    table = _table()
    reference = _pipeline()
    reference.fit([table])
    streaming = _pipeline()
    accs = streaming.accumulators()
    assert accs["hist"] is accs["item_id"]  # a shared vocabulary: one accumulator
    blocks = [np.stack([accs[c].update(column_values(table, c, c in streaming.dense_inputs), None)
                        for c in streaming.sparse_outputs], axis=1)]
    for column in streaming.list_inputs:
        values, offsets = list_values(table.column(column.name))
        codes = accs[column.name].update(values, None)
        blocks.append(padded(codes.astype(np.int32), offsets, column.max_length, fill=0)[0])
    codes = np.concatenate(blocks, axis=1).astype(np.int32)
    raw = np.stack([accs[c].update(column_values(table, c, True), None) for c in streaming.dense_outputs], axis=1)
    finalizer = streaming.finish_fit(accs)
    finalizer.ids(codes)
    dense = np.empty((table.num_rows, len(streaming.dense_outputs)), dtype=np.float32)
    finalizer.features(raw, dense)
    expected_dense, expected_sparse = reference.transform(table)
    assert streaming.to_dict() == reference.to_dict()
    assert codes.tolist() == expected_sparse.tolist() and dense.tobytes() == expected_dense.tobytes()


@pytest.mark.parametrize("rows", [1, 3, 32])
def test_online_lane_encodes_lists_like_the_table_path(rows):
    """transform_columns (the small-request lane: per-column memories, a shared vocabulary's
    values through its column's lane) gives transform's bytes, list blocks included, and again
    once its memories hold the values."""
    from ctrlab.inference.rows import checked_columns

    table = _table(4)
    pipe = _pipeline()
    pipe.fit([table])
    part = table.slice(0, rows)
    expected = pipe.transform(part)
    names = pipe.dense_inputs + pipe.sparse_inputs + pipe.list_names
    dicts = [{c: row[c] for c in names} for row in part.to_pylist()]
    for _ in range(2):  # cold, then remembered
        columns = checked_columns(dicts, pipe.dense_inputs, pipe.sparse_inputs, pipe.list_inputs)
        dense, sparse = pipe.transform_columns(columns, len(dicts))
        assert dense.tobytes() == expected[0].tobytes() and sparse.tobytes() == expected[1].tobytes()
