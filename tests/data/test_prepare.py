"""Tests for ctrlab.data.prepare / store / batches: the one-parse prepare on real files equals the
FeaturePipeline applied to the raw rows of each split (online/offline consistency), the split is
seeded and chunk-size independent, the fit sees training rows only, explicit split files and the
skip policy are recorded, and BatchIterator covers rows exactly as documented."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from ctrlab.data import encode as prepare_mod  # (the passes of prepare)
from ctrlab.data import readers
from ctrlab.data.batches import BatchIterator
from ctrlab.data.formats import file_schema
from ctrlab.data.encode import assign_random_split
from ctrlab.data.prepare import PrepareOptions, format_summary, prepare
from ctrlab.data.readers import DataError, RowReader
from ctrlab.data.store import SPLITS, SplitArrays, Store, read_npy_shape
from ctrlab.features.pipeline import CategoricalOptions, FeaturePipeline, NumericOptions
from ctrlab.fields import MISSING_ID, OOV_ID
from ctrlab.schema import CRITEO_DENSE, CRITEO_SPARSE, GenericSchemaConfig

RATIOS = {"train": 0.8, "valid": 0.1, "test": 0.1}
TIMING_KEYS = ("created", "seconds", "rows_per_second", "timings")


def read_table(path: Path, fmt: str = "auto", bad_lines: str = "error") -> pa.Table:
    _, schema = file_schema(path, fmt, None)
    return pa.concat_tables([c.table for c in RowReader([path], schema, bad_lines=bad_lines)])


def run_prepare(out: Path, train, **kwargs) -> Store:
    train = [str(p) for p in (train if isinstance(train, (list, tuple)) else [train])]
    return prepare(PrepareOptions(train=train, **kwargs), out, progress=False, log=lambda _: None)


def split_tables(raw: pa.Table, seed: int = 2024, ratios=RATIOS) -> dict[str, pa.Table]:
    codes = assign_random_split(raw.num_rows, 0, seed, ratios)
    return {s: raw.filter(pa.array(codes == i)) for i, s in enumerate(SPLITS)}


def assert_split_equals_transform(store: Store, name: str, raw: pa.Table, pipeline: FeaturePipeline | None = None):
    arrays = store.split(name)
    dense, sparse = (pipeline or store.pipeline).transform(raw)
    assert len(arrays) == raw.num_rows
    assert np.array_equal(arrays.dense, dense), name
    assert np.array_equal(arrays.sparse, sparse), name
    assert np.array_equal(arrays.label, raw.column("label").to_numpy().astype(np.uint8)), name


def store_arrays(store: Store) -> dict[str, np.ndarray]:
    out = {}
    for s in store.splits:
        a = store.split(s)
        out.update({f"{s}.dense": np.array(a.dense), f"{s}.sparse": np.array(a.sparse), f"{s}.label": np.array(a.label)})
    return out


def _approx_pipeline(data: dict) -> dict:
    """pipeline.json with the numeric statistics wrapped in pytest.approx (last-ulp tolerance)."""
    out = json.loads(json.dumps(data))
    for enc in out["encoders"].values():
        for key in ("mean", "std", "min", "max"):
            if enc.get(key) is not None:
                enc[key] = pytest.approx(enc[key], rel=1e-12, abs=0)
    return out


def assert_same_store(a: Store, b: Store, exact_pipeline: bool = True):
    arrays_a, arrays_b = store_arrays(a), store_arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    for key in arrays_a:
        assert arrays_a[key].dtype == arrays_b[key].dtype and np.array_equal(arrays_a[key], arrays_b[key]), key
    if exact_pipeline:
        assert (a.path / "pipeline.json").read_bytes() == (b.path / "pipeline.json").read_bytes()
    else:
        assert a.pipeline.to_dict() == _approx_pipeline(b.pipeline.to_dict())
    meta_a = {k: v for k, v in a.meta.items() if k not in TIMING_KEYS}
    meta_b = {k: v for k, v in b.meta.items() if k not in TIMING_KEYS}
    assert meta_a == meta_b


# --------------------------------------------------------------------------------------------
# prepare on the real Criteo TSV
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def criteo_raw(shared_data) -> pa.Table:
    return read_table(shared_data["criteo_train"])


@pytest.fixture(scope="module")
def criteo_store(shared_data, tmp_path_factory) -> Store:
    return run_prepare(tmp_path_factory.mktemp("criteo") / "store", shared_data["criteo_train"])


def test_meta_rows_split_positives(criteo_store, criteo_raw):
    meta = criteo_store.meta
    splits = meta["splits"]
    assert list(splits) == ["train", "valid", "test"]
    assert sum(s["rows"] for s in splits.values()) == 10109 == meta["rows_read"]
    for name, ratio in RATIOS.items():
        assert abs(splits[name]["rows"] / 10109 - ratio) < 0.02, name
    parts = split_tables(criteo_raw)
    for name, table in parts.items():
        labels = table.column("label").to_numpy()
        assert splits[name]["rows"] == table.num_rows
        assert splits[name]["positives"] == int(labels.sum())
        assert splits[name]["positive_rate"] == pytest.approx(labels.mean(), abs=1e-6)
    assert sum(s["positives"] for s in splits.values()) == int(criteo_raw.column("label").to_numpy().sum())
    assert meta["split"] == {"method": "random", "ratios": RATIOS, "seed": 2024}
    assert meta["skipped"]["total"] == 0


def test_meta_vocab_sizes_rates_and_source(criteo_raw, shared_data, tmp_path):
    # min_count 1 (the default is 2): every training value is in the vocabulary
    criteo_store = run_prepare(tmp_path / "store", shared_data["criteo_train"],
                               categorical=CategoricalOptions(min_count=1))
    meta = criteo_store.meta
    spec = criteo_store.spec
    assert list(meta["vocab_sizes"]) == list(spec.sparse_names) == list(CRITEO_SPARSE)
    assert list(meta["vocab_sizes"].values()) == list(spec.vocab_sizes)
    assert spec.dense_names == CRITEO_DENSE
    assert spec == criteo_store.pipeline.spec
    parts = split_tables(criteo_raw)
    for col in CRITEO_SPARSE:
        f = meta["fields"][col]
        assert f["output"] == "sparse" and f["encoder"] == "vocab"
        for split, rate in f["oov_rate"].items():
            assert 0.0 <= rate <= 1.0
        # min_count 1: every training value is in the vocabulary
        assert f["oov_rate"]["train"] == 0.0
        # vocabulary = the distinct training values + missing + OOV
        train_values = parts["train"].column(col)
        assert f["vocab_size"] == len(train_values.drop_null().unique()) + 2
        for split, table in parts.items():
            assert f["missing_rate"][split] == pytest.approx(table.column(col).null_count / table.num_rows, abs=1e-6)
    for col in CRITEO_DENSE:
        for split, table in parts.items():
            assert meta["fields"][col]["missing_rate"][split] == pytest.approx(
                table.column(col).null_count / table.num_rows, abs=1e-6)
    (source,) = meta["sources"]["train"]
    path = shared_data["criteo_train"]
    assert source["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert source["bytes"] == path.stat().st_size
    assert (source["rows"], source["skipped"], source["format"]) == (10109, 0, "criteo")
    assert meta["schema"]["name"] == "criteo"
    assert json.loads((criteo_store.path / "meta.json").read_text()) == meta


def test_store_arrays_shapes_and_dtypes(criteo_store):
    spec = criteo_store.spec
    for name in SPLITS:
        arrays = criteo_store.split(name)
        n = criteo_store.meta["splits"][name]["rows"]
        assert arrays.dense.shape == (n, 13) and arrays.dense.dtype == np.float32
        assert arrays.sparse.shape == (n, 26) and arrays.sparse.dtype == np.int32
        assert arrays.label.shape == (n,) and arrays.label.dtype == np.uint8
        assert read_npy_shape(criteo_store.path / name / "sparse.npy") == (n, 26)
        assert set(np.unique(arrays.label)) <= {0, 1}
        assert (arrays.sparse >= 0).all() and (arrays.sparse < np.array(spec.vocab_sizes)).all()
        assert np.isfinite(arrays.dense).all()
    assert not (criteo_store.path / ".prepare-tmp").exists()


def test_store_equals_pipeline_transform_of_raw_rows(criteo_store, criteo_raw):
    """Online/offline consistency: the store holds exactly what FeaturePipeline.transform gives."""
    parts = split_tables(criteo_raw)
    loaded = FeaturePipeline.load(criteo_store.path / "pipeline.json")
    for name, table in parts.items():
        assert_split_equals_transform(criteo_store, name, table, loaded)


def test_fit_on_train_rows_only(criteo_store, criteo_raw):
    parts = split_tables(criteo_raw)
    refit = FeaturePipeline.from_options(list(CRITEO_DENSE), list(CRITEO_SPARSE)).fit([parts["train"]])
    assert refit.to_dict() == criteo_store.pipeline.to_dict()
    whole = FeaturePipeline.from_options(list(CRITEO_DENSE), list(CRITEO_SPARSE)).fit([criteo_raw])
    assert whole.to_dict() != criteo_store.pipeline.to_dict()  # the check above can tell them apart


def test_value_only_in_test_rows_is_oov(shared_data, tmp_path, criteo_raw):
    lines = shared_data["criteo_train"].read_text().split("\n")[:-1]
    codes = assign_random_split(len(lines), 0, 2024, RATIOS)
    test_rows = np.flatnonzero(codes == SPLITS.index("test"))[:3]
    valid_rows = np.flatnonzero(codes == SPLITS.index("valid"))[:2]
    for i in [*test_rows, *valid_rows]:
        fields = lines[i].split("\t")
        fields[14] = "deadbeef"  # C1, a value no training row has
        fields[1] = "987654321"  # I1, far outside the training range
        lines[i] = "\t".join(fields)
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n")
    store = run_prepare(tmp_path / "store", path)
    pipe = store.pipeline
    assert "deadbeef" not in pipe.encoders["C1"].keys_.to_pylist()
    c1 = list(store.spec.sparse_names).index("C1")
    test_index = np.flatnonzero(codes == SPLITS.index("test"))
    valid_index = np.flatnonzero(codes == SPLITS.index("valid"))
    test_sparse = store.split("test").sparse
    valid_sparse = store.split("valid").sparse
    for i in test_rows:
        assert test_sparse[np.searchsorted(test_index, i), c1] == OOV_ID
    for i in valid_rows:
        assert valid_sparse[np.searchsorted(valid_index, i), c1] == OOV_ID
    # the outlier in I1 does not move the fitted statistics (they equal the original data's)
    original = FeaturePipeline.from_options(list(CRITEO_DENSE), list(CRITEO_SPARSE)).fit(
        [split_tables(criteo_raw)["train"]])
    assert pipe.encoders["I1"].to_dict() == original.encoders["I1"].to_dict()
    assert store.meta["fields"]["C1"]["oov_rate"]["test"] > 0


def test_prepare_with_overrides_matches_transform(shared_data, tmp_path, criteo_raw):
    store = run_prepare(
        tmp_path / "store", shared_data["criteo_train"], seed=7, split=(0.6, 0.2, 0.2),
        categorical=CategoricalOptions(min_count=3),
        numeric=NumericOptions(transform="minmax"),
        columns={"I1": NumericOptions(transform="log_square_bucket"), "I2": NumericOptions(transform="passthrough"),
                 "C3": CategoricalOptions(encoder="hash", hash_buckets=1000),
                 "C4": CategoricalOptions(min_count=1, max_size=50)})
    spec = store.spec
    assert spec.sparse_names == ("I1", *CRITEO_SPARSE)
    assert spec.dense_names == CRITEO_DENSE[1:]
    assert spec.vocab_sizes[spec.sparse_names.index("C3")] == 1002
    assert spec.vocab_sizes[spec.sparse_names.index("C4")] == 52
    ratios = {"train": 0.6, "valid": 0.2, "test": 0.2}
    parts = split_tables(criteo_raw, seed=7, ratios=ratios)
    for name, table in parts.items():
        assert_split_equals_transform(store, name, table)
    assert store.meta["fields"]["I1"]["encoder"] == "log_square_bucket"
    assert store.meta["fields"]["C3"]["encoder"] == "hash"
    refit = FeaturePipeline.from_options(
        list(CRITEO_DENSE), list(CRITEO_SPARSE), CategoricalOptions(min_count=3), NumericOptions(transform="minmax"),
        {"I1": NumericOptions(transform="log_square_bucket"), "I2": NumericOptions(transform="passthrough"),
         "C3": CategoricalOptions(encoder="hash", hash_buckets=1000),
         "C4": CategoricalOptions(min_count=1, max_size=50)}).fit([parts["train"]])
    assert refit.to_dict() == store.pipeline.to_dict()


# --------------------------------------------------------------------------------------------
# split determinism
# --------------------------------------------------------------------------------------------

def test_same_seed_same_store(shared_data, tmp_path, criteo_store):
    again = run_prepare(tmp_path / "again", shared_data["criteo_train"])
    assert_same_store(criteo_store, again)


def _prepare_in_small_chunks(monkeypatch, out: Path, train) -> tuple[Store, list[int]]:
    chunks_seen: list[int] = []

    class SmallBlockReader(RowReader):
        def __init__(self, paths, schema, *, bad_lines="error", block_bytes=None):
            super().__init__(paths, schema, bad_lines=bad_lines, block_bytes=1 << 16)

        def __iter__(self):
            for chunk in super().__iter__():
                chunks_seen.append(chunk.table.num_rows)
                yield chunk

    monkeypatch.setattr(readers, "CHUNK_ROWS", 1000)
    monkeypatch.setattr(readers, "BLOCK_BYTES", 1 << 16)
    monkeypatch.setattr(readers, "FALLBACK_ROWS", 777)
    monkeypatch.setattr(prepare_mod, "RowReader", SmallBlockReader)
    monkeypatch.setattr(prepare_mod, "PASS2_ROWS", 333)
    return run_prepare(out, train), chunks_seen


def test_chunk_sizes_do_not_change_the_store(shared_data, tmp_path, criteo_store, monkeypatch):
    small, chunks_seen = _prepare_in_small_chunks(monkeypatch, tmp_path / "small", shared_data["criteo_train"])
    assert len(chunks_seen) >= 8 and sum(chunks_seen) == 10109  # really read in many chunks
    # arrays, metadata and vocabularies identical; numeric statistics equal to the last few ulps
    assert_same_store(criteo_store, small, exact_pipeline=False)


def test_chunk_sizes_do_not_change_pipeline_json(shared_data, tmp_path, criteo_store, monkeypatch):
    small, _ = _prepare_in_small_chunks(monkeypatch, tmp_path / "small", shared_data["criteo_train"])
    assert (small.path / "pipeline.json").read_bytes() == (criteo_store.path / "pipeline.json").read_bytes()


def test_different_seed_different_split(shared_data, tmp_path, criteo_store):
    other = run_prepare(tmp_path / "other", shared_data["criteo_train"], seed=2025)
    assert other.meta["split"]["seed"] == 2025
    a, b = criteo_store.split("test"), other.split("test")
    assert len(a) != len(b) or not np.array_equal(a.sparse, b.sparse)
    assert sum(s["rows"] for s in other.meta["splits"].values()) == 10109
    codes_a = assign_random_split(10109, 0, 2024, RATIOS)
    codes_b = assign_random_split(10109, 0, 2025, RATIOS)
    assert (codes_a != codes_b).mean() > 0.2


def test_assign_random_split_is_counter_based():
    whole = assign_random_split(10_000, 0, 5, RATIOS)
    pieces = np.concatenate([assign_random_split(n, lo, 5, RATIOS) for lo, n in [(0, 1), (1, 4999), (5000, 5000)]])
    assert np.array_equal(whole, pieces)
    assert whole.dtype == np.uint8 and set(np.unique(whole)) == {0, 1, 2}
    big = assign_random_split(200_000, 0, 1, RATIOS)
    assert np.bincount(big, minlength=3) / 200_000 == pytest.approx([0.8, 0.1, 0.1], abs=0.005)
    two = assign_random_split(10_000, 0, 5, {"train": 3, "test": 1})
    assert set(np.unique(two)) == {0, 2} and (two == 0).mean() == pytest.approx(0.75, abs=0.02)


# --------------------------------------------------------------------------------------------
# explicit split files, generic CSV, skip policy, input errors
# --------------------------------------------------------------------------------------------

def test_explicit_valid_and_test_files(shared_data, tmp_path):
    train, valid, test = shared_data["criteo_train"], shared_data["kaggle_va_rx"], shared_data["paddle_part0"]
    store = run_prepare(tmp_path / "store", train, valid=[str(valid)], test=[str(test)])
    meta = store.meta
    assert meta["split"]["method"] == "files" and meta["split"]["ratios"] is None
    assert {s: v["rows"] for s, v in meta["splits"].items()} == {"train": 10109, "valid": 1999, "test": 100}
    assert [src["format"] for src in meta["sources"]["valid"]] == ["criteo_kaggle_csv"]
    raw = {"train": read_table(train), "valid": read_table(valid).drop_columns(["id"]), "test": read_table(test)}
    refit = FeaturePipeline.from_options(list(CRITEO_DENSE), list(CRITEO_SPARSE)).fit([raw["train"]])
    assert refit.to_dict() == store.pipeline.to_dict()
    for name, table in raw.items():
        assert_split_equals_transform(store, name, table)


def test_explicit_valid_only_splits_train_into_train_and_test(shared_data, tmp_path, criteo_raw):
    store = run_prepare(tmp_path / "store", shared_data["criteo_train"], valid=[str(shared_data["paddle_part0"])])
    ratios = store.meta["split"]["ratios"]
    assert ratios == {"train": 0.8, "test": 0.1}
    codes = assign_random_split(criteo_raw.num_rows, 0, 2024, ratios)
    assert set(np.unique(codes)) == {0, 2}
    assert store.meta["splits"]["valid"]["rows"] == 100
    assert store.meta["splits"]["test"]["rows"] == int((codes == 2).sum())
    assert_split_equals_transform(store, "test", criteo_raw.filter(pa.array(codes == 2)))


def test_frappe_generic_csv_train_and_test(shared_data, tmp_path):
    valid_csv, test_csv = shared_data["frappe_valid"], shared_data["frappe_test"]
    store = run_prepare(tmp_path / "store", valid_csv, test=[str(test_csv)], format="csv")
    meta = store.meta
    assert meta["splits"]["test"]["rows"] == 28860
    assert meta["splits"]["train"]["rows"] + meta["splits"]["valid"]["rows"] == 57722
    assert meta["split"]["ratios"] == {"train": 0.8, "valid": 0.1}
    assert abs(meta["splits"]["train"]["rows"] / 57722 - 8 / 9) < 0.01
    spec = store.spec
    assert spec.dense_names == ()
    assert spec.sparse_names == ("user", "item", "daytime", "weekday", "isweekend", "homework", "cost", "weather",
                                 "country", "city")
    assert store.split("test").dense.shape == (28860, 0)
    raw_valid = read_table(valid_csv, "csv")
    parts = split_tables(raw_valid, ratios={"train": 0.8, "valid": 0.1})
    assert_split_equals_transform(store, "train", parts["train"])
    assert_split_equals_transform(store, "valid", parts["valid"])
    assert_split_equals_transform(store, "test", read_table(test_csv, "csv"))
    assert 0 < meta["splits"]["test"]["positive_rate"] < 1
    assert "\r" not in json.dumps(store.pipeline.to_dict())


def test_generic_csv_declared_schema_and_hash_only(tmp_path):
    """A generic CSV with declared dense columns, and stores with no dense / no sparse / no vocabulary."""
    rng = np.random.default_rng(4)
    path = tmp_path / "events.csv"
    rows = ["clicked,uid,price,hour,site"]
    for i in range(3000):
        price = "" if i % 17 == 0 else f"{rng.exponential(30):.2f}"
        site = "" if i % 13 == 0 else f"site{rng.integers(0, 40)}"
        rows.append(f"{int(rng.random() < 0.3)},u{rng.integers(0, 500)},{price},{rng.integers(0, 24)},{site}")
    path.write_text("\n".join(rows) + "\n")
    schema = GenericSchemaConfig(label="clicked", dense=["price", "hour"])
    store = run_prepare(tmp_path / "s1", path, format="csv", schema=schema,
                        categorical=CategoricalOptions(encoder="hash", hash_buckets=64))
    assert store.spec.dense_names == ("price", "hour") and store.spec.sparse_names == ("uid", "site")
    assert store.spec.vocab_sizes == (66, 66)
    _, file_schema_ = file_schema(path, "csv", schema)
    raw = pa.concat_tables([c.table for c in RowReader([path], file_schema_)])
    for name, table in split_tables(raw).items():
        assert_split_equals_transform(store, name, table)
    dense_only = run_prepare(tmp_path / "s2", path, format="csv",
                             schema=GenericSchemaConfig(label="clicked", dense=["price", "hour"], sparse=[]))
    assert dense_only.spec.sparse_names == () and dense_only.split("train").sparse.shape[1] == 0
    _, dense_schema = file_schema(path, "csv", GenericSchemaConfig(label="clicked", dense=["price", "hour"], sparse=[]))
    raw = pa.concat_tables([c.table for c in RowReader([path], dense_schema)])
    for name, table in split_tables(raw).items():
        assert_split_equals_transform(dense_only, name, table)


def test_skip_policy_recorded_in_meta(shared_data, tmp_path):
    path = shared_data["paddle_dnn_test"]
    with pytest.raises(DataError) as info:
        run_prepare(tmp_path / "strict", path)
    assert info.value.line == 3
    store = run_prepare(tmp_path / "store", path, bad_lines="skip")
    meta = json.loads((store.path / "meta.json").read_text())
    assert meta["skipped"]["total"] == 39
    assert sum(meta["skipped"]["by_reason"].values()) == 39
    assert all("wrong field count" in r for r in meta["skipped"]["by_reason"])
    assert meta["skipped"]["examples"]
    (source,) = meta["sources"]["train"]
    assert (source["rows"], source["skipped"]) == (61, 39)
    assert meta["rows_read"] == 61 == sum(s["rows"] for s in meta["splits"].values())
    assert "skipped lines: 39" in format_summary(meta)


def test_prepare_input_errors(shared_data, tmp_path):
    unlabeled = tmp_path / "test.txt"
    lines = shared_data["criteo_train"].read_text().split("\n")[:20]
    unlabeled.write_text("\n".join(line.split("\t", 1)[1] for line in lines) + "\n")
    with pytest.raises(ValueError, match="needs a label column"):
        run_prepare(tmp_path / "a", unlabeled)
    with pytest.raises(ValueError, match="differ"):
        run_prepare(tmp_path / "b", shared_data["frappe_valid"], test=[str(shared_data["deepctr_sample"])],
                    format="csv")
    with pytest.raises(FileNotFoundError):
        run_prepare(tmp_path / "c", tmp_path / "missing.tsv")
    with pytest.raises(ValueError, match="--format"):
        run_prepare(tmp_path / "d", shared_data["frappe_test"])


def test_store_errors(criteo_store, tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        Store(tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        criteo_store.split("holdout")
    assert criteo_store.splits == ["train", "valid", "test"] and criteo_store.has_split("valid")


# --------------------------------------------------------------------------------------------
# BatchIterator
# --------------------------------------------------------------------------------------------

def indexed_split(n: int) -> SplitArrays:
    """Rows that carry their own index (dense[:, 0], sparse[:, 0]) to track coverage."""
    idx = np.arange(n)
    dense = np.stack([idx.astype(np.float32), np.full(n, 0.5, np.float32)], axis=1)
    sparse = np.stack([idx, idx % 7], axis=1).astype(np.int32)
    return SplitArrays(dense, sparse, (idx % 2).astype(np.uint8))


def row_ids(it) -> list[np.ndarray]:
    return [s[:, 0].numpy() for _, s, _ in it]


def test_batches_eval_order_covers_every_row_once():
    split = indexed_split(1003)
    it = BatchIterator(split, 100)
    batches = list(it)
    assert len(batches) == len(it) == 11
    assert [len(b[2]) for b in batches] == [100] * 10 + [3]
    ids = np.concatenate([s[:, 0].numpy() for _, s, _ in batches])
    assert np.array_equal(ids, np.arange(1003))
    dense = torch.cat([d for d, _, _ in batches])
    assert np.array_equal(dense[:, 0].numpy(), np.arange(1003, dtype=np.float32))
    d, s, y = batches[-1]
    assert (d.dtype, s.dtype, y.dtype) == (torch.float32, torch.int64, torch.float32)
    assert d.shape == (3, 2) and s.shape == (3, 2) and y.shape == (3,)
    assert y.tolist() == [0.0, 1.0, 0.0]  # rows 1000, 1001, 1002
    # drop_last drops the partial batch
    it = BatchIterator(split, 100, drop_last=True)
    assert len(it) == 10 and sum(len(b[2]) for b in it) == 1000


def test_batches_shuffle_is_a_seeded_permutation_per_epoch():
    split = indexed_split(1000)
    it = BatchIterator(split, 64, shuffle=True, seed=3)
    epoch0 = row_ids(it)
    assert np.array_equal(np.sort(np.concatenate(epoch0)), np.arange(1000))
    assert len(epoch0) == len(it) == 16
    for ids in epoch0:
        assert np.all(np.diff(ids) > 0)  # rows of a batch are sorted (forward reads)
    # labels travel with their rows
    for _, s, y in it:
        assert np.array_equal(y.numpy(), (s[:, 0].numpy() % 2).astype(np.float32))
    again = row_ids(BatchIterator(split, 64, shuffle=True, seed=3))
    assert all(np.array_equal(a, b) for a, b in zip(epoch0, again))
    it.set_epoch(1)
    epoch1 = row_ids(it)
    assert np.array_equal(np.sort(np.concatenate(epoch1)), np.arange(1000))
    assert any(not np.array_equal(a, b) for a, b in zip(epoch0, epoch1))
    other = row_ids(BatchIterator(split, 64, shuffle=True, seed=4))
    assert any(not np.array_equal(a, b) for a, b in zip(epoch0, other))
    # not the stored order
    assert not np.array_equal(np.concatenate(epoch0), np.arange(1000))


@pytest.mark.parametrize("world_size", [2, 3, 4])
def test_batches_rank_shards(world_size):
    n = 1001
    split = indexed_split(n)
    # evaluation: disjoint shards whose union is every row
    shards = [np.concatenate(row_ids(BatchIterator(split, 50, rank=r, world_size=world_size)))
              for r in range(world_size)]
    assert np.array_equal(np.sort(np.concatenate(shards)), np.arange(n))
    # training: equal shares, disjoint, only the tail past the last full share dropped
    shards = []
    for r in range(world_size):
        it = BatchIterator(split, 50, shuffle=True, seed=9, rank=r, world_size=world_size)
        it.set_epoch(2)
        ids = np.concatenate(row_ids(it))
        assert len(it) == -(-(n // world_size) // 50)
        shards.append(ids)
    assert len({len(s) for s in shards}) == 1 and len(shards[0]) == n // world_size
    union = np.concatenate(shards)
    assert len(np.unique(union)) == len(union) == n - n % world_size
    perm = np.random.default_rng([9, 2]).permutation(n)
    assert set(union.tolist()) == set(perm[: n - n % world_size].tolist())


def test_batches_argument_errors():
    split = indexed_split(10)
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(split, 0)
    with pytest.raises(ValueError, match="rank"):
        BatchIterator(split, 4, rank=2, world_size=2)


def test_batch_tensors_are_safe_to_modify_in_place(tmp_path):
    code = (
        "import numpy as np, sys\n"
        "from ctrlab.data.store import NpyAppender, SplitArrays\n"
        "from ctrlab.data.batches import BatchIterator\n"
        "path = sys.argv[1]\n"
        "w = NpyAppender(path, np.float32, (2,)); w.append(np.ones((10, 2), np.float32)); w.close()\n"
        "split = SplitArrays(np.load(path, mmap_mode='r'), np.zeros((10, 1), np.int32), np.zeros(10, np.uint8))\n"
        "for dense, sparse, label in BatchIterator(split, 4):\n"
        "    dense.mul_(2.0); sparse.add_(1); label.add_(1)\n"
        "print(float(np.load(path)[0, 0]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path / "dense.npy")], capture_output=True,
                            text=True, cwd=Path(__file__).resolve().parents[2], timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "1.0"  # the store itself is never written


def test_batches_over_a_real_store(criteo_store):
    split = criteo_store.split("valid")
    batches = list(BatchIterator(split, 256))
    dense = torch.cat([d for d, _, _ in batches]).numpy()
    sparse = torch.cat([s for _, s, _ in batches]).numpy()
    label = torch.cat([y for _, _, y in batches]).numpy()
    assert np.array_equal(dense, split.dense) and np.array_equal(sparse, split.sparse.astype(np.int64))
    assert np.array_equal(label, split.label.astype(np.float32))
    assert sparse.dtype == np.int64 and dense.dtype == np.float32 and label.dtype == np.float32
    assert (sparse[:, 0] != MISSING_ID).any()
