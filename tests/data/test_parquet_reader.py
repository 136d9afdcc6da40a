"""Parquet input: column names from the file, roles from data.schema, types checked, row groups
streamed, a directory of parts, nulls, list columns (Parquet lists or delimited strings, weights),
bad values named by file, row group, row and column, gzip, detection, and a prepare -> predict
round trip. The files are generated here with pyarrow (FuxiCTR's tiny_parquet is not in
../shared/data)."""

from __future__ import annotations

import gzip

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ctrlab.data.formats import detect_format, file_schema
from ctrlab.data.readers import WEIGHTS_SUFFIX, DataError, RowReader, resolve_inputs
from ctrlab.schema import GenericSchemaConfig


def _table(n: int = 6, seed: int = 0, **override) -> pa.Table:
    rng = np.random.default_rng(seed)
    cols = {
        "click": pa.array(rng.integers(0, 2, n), type=pa.int8()),
        "age": pa.array([None if i % 4 == 3 else float(20 + i) for i in range(n)], type=pa.float64()),
        "user": pa.array([f"u{rng.integers(0, 5)}" for _ in range(n)]),
        "item": pa.array(rng.integers(100, 110, n), type=pa.int64()),
        "genres": pa.array([["a", "b"] if i % 3 == 0 else None if i % 3 == 1 else ["c"] for i in range(n)],
                           type=pa.list_(pa.string())),
        "hist": pa.array([[int(i), int(i) + 1, int(i) + 2] for i in range(n)], type=pa.list_(pa.int32())),
        "tags": pa.array(["x:0.5|y" if i % 2 == 0 else "" for i in range(n)]),
    }
    cols.update(override)
    return pa.table(cols)


def _cfg(**extra) -> GenericSchemaConfig:
    return GenericSchemaConfig(label="click", dense=["age"], lists={
        "genres": {"kind": "multi", "max_length": 3},
        "hist": {"kind": "sequence", "max_length": 2},
        "tags": {"kind": "multi", "max_length": 4, "weight_separator": ":"}}, **extra)


def _read(paths, cfg, bad_lines="error", fmt="auto"):
    files = resolve_inputs(paths)
    _, schema = file_schema(files[0], fmt, cfg)
    reader = RowReader(files, schema, bad_lines=bad_lines)
    chunks = list(reader)
    return schema, [r for c in chunks for r in c.table.to_pylist()], reader, chunks


def test_columns_types_nulls_and_lists(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(_table(), path, row_group_size=4)
    assert detect_format(path) == "parquet"
    schema, rows, reader, chunks = _read(path, _cfg())
    assert schema.format == "parquet" and schema.sparse == ("user", "item")
    assert len(chunks) == 2 and [len(c.lines) for c in chunks] == [4, 2]  # one chunk per row group
    assert list(chunks[1].lines) == [5, 6]
    first = rows[0]
    assert first["item"].isdigit() and first["genres"] == ["a", "b"] and first["hist"] == ["1", "2"]
    assert first["tags"] == ["x", "y"] and first["tags" + WEIGHTS_SUFFIX] == [0.5, 1.0]
    assert rows[1]["genres"] == [] and rows[1]["tags"] == [] and rows[3]["age"] is None
    assert reader.sources[0].truncated == {"hist": 6} and reader.sources[0].rows == 6


def test_directory_of_parts_and_gzip(tmp_path):
    parts = tmp_path / "parts"
    parts.mkdir()
    pq.write_table(_table(5, seed=1), parts / "part-0.parquet")
    pq.write_table(_table(3, seed=2), parts / "part-1.parq", compression="gzip")
    (parts / "_SUCCESS").write_text("")
    packed = tmp_path / "packed.parquet.gz"
    plain = tmp_path / "plain.parquet"
    pq.write_table(_table(4, seed=3), plain)
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    schema, rows, reader, _ = _read(parts, _cfg())
    assert len(rows) == 8 and [s.rows for s in reader.sources] == [5, 3]
    _, gz_rows, _, _ = _read(packed, _cfg())
    _, plain_rows, _, _ = _read(plain, _cfg())
    assert gz_rows == plain_rows and len(gz_rows) == 4


@pytest.mark.parametrize("override, field, words", [
    ({"click": pa.array([0, 1, 2, 0, 1, 0], type=pa.int64())}, "click", "got 2.0"),
    ({"click": pa.array([0, 1, None, 0, 1, 0], type=pa.float64())}, "click", "got empty"),
    ({"age": pa.array(["1", "2.5", "abc", None, "3", "4"])}, "age", "expected a number"),
    ({"age": pa.array([1.0, 2.0, float("inf"), 1.0, 1.0, 1.0])}, "age", "expected a number"),
    ({"genres": pa.array([["a"], ["b"], ["c", None], [], [], []], type=pa.list_(pa.string()))}, "genres", "null"),
    ({"tags": pa.array(["a", "b", "x:abc", "", "", ""])}, "tags", "weight"),
])
def test_bad_values_name_file_row_group_row_and_column(tmp_path, override, field, words):
    path = tmp_path / "bad.parquet"
    pq.write_table(_table(**override), path, row_group_size=2)
    with pytest.raises(DataError) as err:
        _read(path, _cfg())
    assert str(err.value).startswith(f"{path}, row group 1, row 0: field {field!r}") and words in str(err.value)
    _, rows, reader, chunks = _read(path, _cfg(), bad_lines="skip")
    assert len(rows) == 5 and reader.skipped.total == 1 and chunks[1].skipped[0][0] == 3
    assert reader.skipped.examples[0].startswith(f"{path}, row group 1, row 0")


@pytest.mark.parametrize("override, field, words", [
    ({"click": pa.array(["0", "1", "0", "1", "0", "1"])}, "click", "expected a numeric"),
    ({"user": pa.array([["a"]] * 6)}, "user", "expected a scalar"),
    ({"tags": pa.array([["a"]] * 6)}, "tags", "delimited string"),
])
def test_wrong_column_types_name_the_column(tmp_path, override, field, words):
    path = tmp_path / "typed.parquet"
    pq.write_table(_table(**override), path)
    with pytest.raises(DataError) as err:
        _read(path, _cfg())
    assert err.value.field == field and words in str(err.value)


def test_declared_columns_must_exist(tmp_path):
    path = tmp_path / "a.parquet"
    pq.write_table(_table(), path)
    with pytest.raises(ValueError, match="lacks the declared column"):
        file_schema(path, "parquet", GenericSchemaConfig(label="clicked"))


@pytest.mark.usefixtures("one_torch_thread")
def test_prepare_then_predict(tmp_path):
    from ctrlab.config import load_config
    from ctrlab.export.bundle import export_bundle
    from ctrlab.inference import Predictor, score_files
    from ctrlab.train.run import run_training

    parts = tmp_path / "train"
    parts.mkdir()
    pq.write_table(_table(60, seed=1), parts / "part-0.parquet", row_group_size=16)
    pq.write_table(_table(60, seed=2), parts / "part-1.parquet")
    score = tmp_path / "score.parquet"
    pq.write_table(_table(5, seed=3).drop_columns(["click"]), score)  # label-less: scored
    cfg = load_config(None, {
        "data.train": [str(parts)], "data.format": "parquet",
        "data.schema": {"label": "click", "dense": ["age"], "lists": {
            "genres": {"kind": "multi", "max_length": 3}, "hist": {"kind": "sequence", "max_length": 2},
            "tags": {"kind": "multi", "max_length": 4, "weight_separator": ":"}}},
        "data.split": [0.8, 0.2, 0.0], "run_dir": str(tmp_path / "run"), "model.name": "lr", "train.threads": 1,
        "train.epochs": 1, "train.batch_size": 16, "train.log_every": 1000})
    run_training(cfg, progress=False, log=lambda _m: None)
    export_bundle(tmp_path / "run", tmp_path / "bundle", epoch=1, log=lambda _m: None)
    predictor = Predictor(tmp_path / "bundle", threads=1)
    probs = np.concatenate([c.probabilities for c in score_files(predictor, score)])
    assert probs.shape == (5,) and np.isfinite(probs).all()
    labelled = np.concatenate([c.probabilities for c in score_files(predictor, parts / "part-1.parquet")])
    assert labelled.shape == (60,)


@pytest.mark.usefixtures("one_torch_thread")
def test_a_csv_bundle_scores_parquet_like_csv(tmp_path):
    """A bundle trained on CSV reads a Parquet file's columns by name: the same scores as the CSV."""
    import pyarrow.csv as pa_csv

    from ctrlab.config import load_config
    from ctrlab.export.bundle import export_bundle
    from ctrlab.inference import Predictor, score_files
    from ctrlab.train.run import run_training

    table = _table(80, seed=4).select(["click", "age", "user", "item"])
    train = tmp_path / "train.csv"
    pa_csv.write_csv(table, train, pa_csv.WriteOptions(quoting_style="none"))
    cfg = load_config(None, {
        "data.train": [str(train)], "data.format": "csv", "data.schema": {"label": "click", "dense": ["age"]},
        "data.split": [0.8, 0.2, 0.0], "run_dir": str(tmp_path / "run"), "model.name": "lr", "train.threads": 1,
        "train.epochs": 1, "train.batch_size": 16, "train.log_every": 1000})
    run_training(cfg, progress=False, log=lambda _m: None)
    export_bundle(tmp_path / "run", tmp_path / "bundle", epoch=1, log=lambda _m: None)
    predictor = Predictor(tmp_path / "bundle", threads=1)
    as_parquet = tmp_path / "score.parquet"
    pq.write_table(table.select(["item", "user", "age"]), as_parquet)  # (no label, other order: by name)
    want = np.concatenate([c.probabilities for c in score_files(predictor, train)])
    got = np.concatenate([c.probabilities for c in score_files(predictor, as_parquet)])
    np.testing.assert_allclose(got, want, rtol=1e-6)
