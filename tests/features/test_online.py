"""Tests for ctrlab.features.online: the small-request lane gives the vectorized lane's bytes.

Pipelines fitted on real Criteo rows (../shared/data) and on synthetic rows, with every encoder
kind (vocabulary, hash buckets, every numeric transform, log-square buckets), encode thousands
of random rows (real values, unseen values, missing values, numeric strings, integer ids,
special floats) in small groups through both lanes: the dense float32 bits and the sparse ids
must be equal. Plus the scalar key hashes against the vectorized ones, and the pipeline's choice
of lane.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

from ctrlab.data.formats import detect_format, schema_for_file
from ctrlab.data.readers import RowReader
from ctrlab.data.synth import write_synthetic
from ctrlab.features import online
from ctrlab.features.encoders import NumericTransform, log_square_bucket
from ctrlab.features.keytable import hash_ints, hash_strings
from ctrlab.features.online import (SMALL_INPUT_ROWS, OnlineEncoder, hash_int_one, hash_string_one,
                                    log_square_bucket_one)
from ctrlab.features.pipeline import CategoricalOptions, FeaturePipeline, InputError, NumericOptions
from ctrlab.inference.rows import checked_columns, rows_to_table
from ctrlab.schema import CRITEO_DENSE, CRITEO_SPARSE

SPECIAL_NUMBERS = [math.nan, 0.0, -0.0, 0.5, 1.0, 1.9, 2.0, 2.0000001, 3.0, math.e, 7.38905609893065, -1.0, -2.5,
                   -3.0, 1e-300, 5e-324, 1e7, 2.5e7, 1e9, 2.0**62 - 1024, 2.0**62, -(2.0**62), 2.0**63, 1e300, -1e300,
                   math.inf, -math.inf]
UNSEEN_STRINGS = ["", "0", "00", "007", "123", "-1", "1e5", "1.5", "deadbeef", "05DB9164", "5db9164", "日本", "🙂",
                  "e\u0301", "a\tb", "two\nlines", " lead", "x" * 300, "\x00"]

# numbers beyond int64 (2**63, 1e300) make the vectorized log-square bucketing warn on its cast
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in cast:RuntimeWarning")

#: every encoder kind and every numeric transform, over the Criteo columns
OVERRIDES = {
    "I1": NumericOptions("log_square_bucket", min_count=1),
    "I2": NumericOptions("passthrough", fill_value=-1.5),
    "I3": NumericOptions("log1p", fill_value=0.25),
    "I4": NumericOptions("minmax", fill_value=0.5),
    "I5": NumericOptions("log_square_bucket", min_count=3),
    "I6": NumericOptions("log1p_standardize", fill_value=-0.75),
    "C3": CategoricalOptions("hash", hash_buckets=5000),
    "C4": CategoricalOptions("hash", hash_buckets=1),
    "C5": CategoricalOptions("vocab", min_count=1, max_size=20),
    "C6": CategoricalOptions("hash", hash_buckets=2**31 - 3),  # the largest whose ids fit int32
}


def read_table(path) -> pa.Table:
    reader = RowReader([path], schema_for_file(path, detect_format(path)))
    return pa.concat_tables(c.table for c in reader).combine_chunks()


def random_rows(rng, base: pa.Table, n: int) -> pa.Table:
    """n rows whose every value is a fitted table's value (55%), missing (15%) or a special
    number / an unseen or numeric string (30%)."""
    columns = {}
    for col in list(CRITEO_DENSE) + list(CRITEO_SPARSE):
        seen = base.column(col).to_pylist()
        specials = SPECIAL_NUMBERS if col in CRITEO_DENSE else UNSEEN_STRINGS
        draw = rng.random(n)
        values = [seen[rng.integers(len(seen))] if u < 0.55 else None if u < 0.7 else
                  specials[rng.integers(len(specials))] for u in draw]
        columns[col] = pa.array(values, type=pa.float64() if col in CRITEO_DENSE else pa.string())
    return pa.table(columns)


def assert_lanes_identical(pipeline: FeaturePipeline, table: pa.Table, rng) -> None:
    """Random groups of 1..SMALL_INPUT_ROWS rows: the online lane's bytes equal the vectorized
    lane's on each group and, concatenated, on the whole table."""
    online = OnlineEncoder.from_pipeline(pipeline)
    dense_parts, sparse_parts = [], []
    start = 0
    while start < table.num_rows:
        group = table.slice(start, int(rng.integers(1, SMALL_INPUT_ROWS + 1)))
        dense, sparse = online.encode(group)
        expected_dense, expected_sparse = pipeline.encode_vectorized(group)
        assert dense.dtype == np.float32 and sparse.dtype == np.int32
        assert dense.shape == expected_dense.shape and sparse.shape == expected_sparse.shape
        assert dense.tobytes() == expected_dense.tobytes(), f"dense differs in rows {start}.."
        assert sparse.tobytes() == expected_sparse.tobytes(), f"sparse differs in rows {start}.."
        dense_parts.append(dense)
        sparse_parts.append(sparse)
        start += group.num_rows
    dense_all, sparse_all = pipeline.encode_vectorized(table)
    assert np.concatenate(dense_parts).tobytes() == dense_all.tobytes()
    assert np.concatenate(sparse_parts).tobytes() == sparse_all.tobytes()


def fitted(fit_rows: pa.Table, **options) -> FeaturePipeline:
    return FeaturePipeline.from_options(list(CRITEO_DENSE), list(CRITEO_SPARSE), **options).fit([fit_rows])


@pytest.fixture(scope="module")
def criteo_table(shared_data) -> pa.Table:
    return read_table(shared_data["criteo_train"])


@pytest.fixture(scope="module")
def synthetic_table(tmp_path_factory) -> pa.Table:
    """Synthetic Criteo rows whose C1 holds decimal numbers (so integer ids can hit the vocabulary)."""
    path = tmp_path_factory.mktemp("online") / "synth.tsv"
    write_synthetic(path, 4000, seed=5, progress=False)
    table = read_table(path)
    ids = [None if v is None else str(int(v[:3], 16) % 97) for v in table.column("C1").to_pylist()]
    return table.set_column(table.schema.get_field_index("C1"), "C1", pa.array(ids, type=pa.string()))


# --------------------------------------------------------------------------------------------
# the lanes agree byte for byte
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("options", ["defaults", "every_kind"])
def test_lanes_identical_on_real_criteo_rows(criteo_table, options):
    fit_rows, new_rows = criteo_table.slice(0, 6000), criteo_table.slice(6000)
    kwargs = {} if options == "defaults" else {"overrides": OVERRIDES}
    pipeline = fitted(fit_rows, **kwargs)
    rng = np.random.default_rng(13)
    assert_lanes_identical(pipeline, new_rows.slice(0, 1500), rng)  # real rows, many unseen values
    assert_lanes_identical(pipeline, random_rows(rng, fit_rows, 4000), rng)


def test_lanes_identical_on_synthetic_rows(synthetic_table):
    fit_rows = synthetic_table.slice(0, 3000)
    rng = np.random.default_rng(17)
    for kwargs in ({}, {"overrides": OVERRIDES},
                   {"categorical": CategoricalOptions("hash", hash_buckets=1000),
                    "numeric": NumericOptions("log_square_bucket", min_count=2)}):
        pipeline = fitted(fit_rows, **kwargs)
        assert_lanes_identical(pipeline, synthetic_table.slice(3000), rng)
        table = random_rows(rng, fit_rows, 3000)
        two_chunks = pa.concat_tables([table.slice(0, 1001), table.slice(1001)])  # groups straddle chunks
        assert two_chunks.column("C1").num_chunks == 2
        assert_lanes_identical(pipeline, two_chunks, rng)


def test_lanes_identical_on_integer_columns(synthetic_table):
    """Integer ids in categorical columns (cast to their text) and integer counts with nulls."""
    pipeline = fitted(synthetic_table.slice(0, 3000), overrides=OVERRIDES)
    rng = np.random.default_rng(19)
    n = 2000
    table = random_rows(rng, synthetic_table, n)
    ids = [None if u < 0.1 else int(v) for u, v in zip(rng.random(n), rng.integers(-5, 150, n))]
    counts = [None if u < 0.2 else int(v) for u, v in zip(rng.random(n), rng.integers(-3, 10**6, n))]
    table = table.set_column(table.schema.get_field_index("C1"), "C1", pa.array(ids, type=pa.int64()))
    for col in ("I1", "I2", "I7"):
        table = table.set_column(table.schema.get_field_index(col), col, pa.array(counts, type=pa.int64()))
    for col in ("C2", "I8"):  # a column of nulls only
        table = table.set_column(table.schema.get_field_index(col), col, pa.nulls(n))
    dense, sparse = pipeline.encode_vectorized(table)
    assert (sparse[:, pipeline.sparse_outputs.index("C1")] >= 2).any()  # integer ids found in the vocabulary
    assert_lanes_identical(pipeline, table, rng)


def test_lanes_identical_on_request_rows(criteo_table):
    """Rows as a server receives them: dicts with numeric strings and integer ids (rows_to_table)."""
    fit_rows = criteo_table.slice(0, 6000)
    pipeline = fitted(fit_rows, overrides=OVERRIDES)
    rng = np.random.default_rng(23)
    numeric_text = ["3", "0", "-0", "1e3", "2.5", "-2", "0.0001", "7.38905609893065", "12345678", ""]
    rows = []
    for row in criteo_table.slice(6000, 1500).to_pylist():
        for col in CRITEO_DENSE:
            if rng.random() < 0.3:
                row[col] = numeric_text[rng.integers(len(numeric_text))]
        for col in CRITEO_SPARSE:
            if rng.random() < 0.1:
                row[col] = int(rng.integers(0, 10**9))
        rows.append(row)
    table = rows_to_table(rows, CRITEO_DENSE, CRITEO_SPARSE)
    assert_lanes_identical(pipeline, table, rng)


# --------------------------------------------------------------------------------------------
# the scalar hashes and buckets equal the vectorized ones
# --------------------------------------------------------------------------------------------

def test_scalar_key_hashes_equal_vectorized():
    rng = np.random.default_rng(29)
    texts = UNSEEN_STRINGS + ["".join(chr(c) for c in rng.integers(1, 0x4e2d, rng.integers(0, 40))) for _ in range(500)]
    texts += [f"{v:08x}" for v in rng.integers(0, 2**32, 500)] + ["y" * 5000]  # past the power table's first size
    assert [hash_string_one(t) for t in texts] == hash_strings(pa.array(texts)).tolist()
    assert hash_string_one(None) == hash_string_one("")  # nulls hash like ""
    keys = [np.iinfo(np.int64).min, np.iinfo(np.int64).max, -1, 0, 1, 2, 21, 1 << 40]
    keys += rng.integers(np.iinfo(np.int64).min, np.iinfo(np.int64).max, 500, dtype=np.int64).tolist()
    assert [hash_int_one(k) for k in keys] == hash_ints(np.array(keys, dtype=np.int64)).tolist()


def test_scalar_log_square_bucket_equals_vectorized():
    rng = np.random.default_rng(31)
    finite = [v for v in SPECIAL_NUMBERS if math.isfinite(v) and abs(v) < 2.0**62]
    values = np.array(finite + (np.exp(rng.random(5000) * 40) * rng.choice([-1, 1], 5000)).tolist()
                      + rng.uniform(-5, 50, 2000).tolist())
    values = values[np.abs(values) < 2.0**62]
    assert [log_square_bucket_one(v) for v in values.tolist()] == log_square_bucket(values).tolist()


# --------------------------------------------------------------------------------------------
# the pipeline's choice of lane
# --------------------------------------------------------------------------------------------

def test_pipeline_takes_online_lane_up_to_threshold(synthetic_table, monkeypatch):
    pipeline = fitted(synthetic_table.slice(0, 3000))
    calls = []
    encode = OnlineEncoder.encode
    monkeypatch.setattr(OnlineEncoder, "encode", lambda self, table: calls.append(table.num_rows) or encode(self, table))
    for n in (0, 1, 5, SMALL_INPUT_ROWS, SMALL_INPUT_ROWS + 1, 500):
        table = synthetic_table.slice(3000, n)
        dense, sparse = pipeline.transform(table)
        expected_dense, expected_sparse = pipeline.encode_vectorized(table)
        assert dense.tobytes() == expected_dense.tobytes() and sparse.tobytes() == expected_sparse.tobytes()
    assert calls == [0, 1, 5, SMALL_INPUT_ROWS]


def test_pipeline_rebuilds_online_lane_when_encoder_replaced_or_refitted(synthetic_table):
    pipeline = fitted(synthetic_table.slice(0, 3000))
    rows = synthetic_table.slice(3000, 3)
    first = pipeline.transform(rows)
    pipeline.encoders["I2"] = NumericTransform("passthrough", fill_value=-9.0)
    dense, _ = pipeline.transform(rows)
    raw = rows.column("I2").to_numpy(zero_copy_only=False)
    expected = np.where(np.isnan(raw), -9.0, raw).astype(np.float32)
    assert dense[:, pipeline.dense_outputs.index("I2")].tobytes() == expected.tobytes()
    pipeline.fit([synthetic_table.slice(0, 100)])  # fewer rows: other vocabularies
    dense, sparse = pipeline.transform(rows)
    assert not np.array_equal(sparse, first[1])
    assert sparse.tobytes() == pipeline.encode_vectorized(rows)[1].tobytes()


def test_hash_lane_beyond_int32_takes_the_vectorized_transform():
    values = pa.chunked_array([pa.array(["a", None, "b"])])
    table = pa.table({"C1": values})
    pipeline = FeaturePipeline.from_options([], ["C1"], CategoricalOptions("hash", hash_buckets=2**31)).fit([table])
    online = OnlineEncoder.from_pipeline(pipeline)
    assert online.encode(table)[1].tobytes() == pipeline.encode_vectorized(table)[1].tobytes()


# --------------------------------------------------------------------------------------------
# the request lane: row dicts / lists -> checked columns -> online encoder, no Arrow table
# --------------------------------------------------------------------------------------------

REQUEST_NUMBERS = [None, "", 0, -0.0, 0.0, 3, -7, 2**40, 2**53 + 1, 0.5, 1e-300, 1e7, 1e300, -1e300, "3", "0", "-0",
                   "1e3", "2.5", "-2", "7.38905609893065", np.float64(2.5), np.int64(12), np.float32(0.1)]
REQUEST_STRINGS = [None, "", 0, 7, -3, 10**12, np.int64(42), *UNSEEN_STRINGS]


def request_rows(rng, base: pa.Table, n: int) -> list[dict]:
    """n row dicts as a client sends them: fitted values (50%), request forms of numbers and
    strings (ints, numeric strings, "", None, numpy scalars, unseen text; 35%), left out (15%)."""
    seen = {col: base.column(col).to_pylist() for col in base.column_names}
    rows = []
    for _ in range(n):
        row = {}
        for col in list(CRITEO_DENSE) + list(CRITEO_SPARSE):
            u = rng.random()
            if u < 0.15:
                continue
            forms = REQUEST_NUMBERS if col in CRITEO_DENSE else REQUEST_STRINGS
            row[col] = seen[col][rng.integers(len(seen[col]))] if u < 0.65 else forms[rng.integers(len(forms))]
        rows.append(row)
    return rows


def assert_request_lane_identical(pipeline: FeaturePipeline, rows: list, rng) -> None:
    """Random groups of 1..SMALL_INPUT_ROWS rows through checked_columns + the online encoder give
    the bytes of rows_to_table + the vectorized lane (finiteness is checked after either)."""
    online = OnlineEncoder.from_pipeline(pipeline)
    start = 0
    while start < len(rows):
        group = rows[start:start + int(rng.integers(1, SMALL_INPUT_ROWS + 1))]
        dense, sparse = online.encode_columns(checked_columns(group, CRITEO_DENSE, CRITEO_SPARSE), len(group))
        expected_dense, expected_sparse = pipeline.encode_vectorized(rows_to_table(group, CRITEO_DENSE, CRITEO_SPARSE))
        assert dense.dtype == np.float32 and sparse.dtype == np.int32
        assert dense.shape == expected_dense.shape and sparse.shape == expected_sparse.shape
        assert dense.tobytes() == expected_dense.tobytes(), f"dense differs in rows {start}.."
        assert sparse.tobytes() == expected_sparse.tobytes(), f"sparse differs in rows {start}.."
        start += len(group)


@pytest.mark.parametrize("options", ["defaults", "every_kind", "hash_and_buckets"])
def test_request_lane_identical_to_arrow_path(synthetic_table, options):
    kwargs = {"defaults": {}, "every_kind": {"overrides": OVERRIDES},
              "hash_and_buckets": {"categorical": CategoricalOptions("hash", hash_buckets=1000),
                                   "numeric": NumericOptions("log_square_bucket", min_count=2)}}[options]
    pipeline = fitted(synthetic_table.slice(0, 3000), **kwargs)
    rng = np.random.default_rng(37)
    rows = request_rows(rng, synthetic_table, 3000)
    assert_request_lane_identical(pipeline, rows, rng)  # (the lanes' memories fill as they go)
    columns = list(CRITEO_DENSE) + list(CRITEO_SPARSE)
    assert_request_lane_identical(pipeline, [{c: row.get(c) for c in columns} for row in rows[:300]], rng)  # every key
    plain = synthetic_table.slice(3000, 300).to_pylist()  # floats, str and None only: passed as they are
    plain[7]["I9"], plain[7]["I10"] = 1e308, 1e308  # finite values whose sum is not
    assert list(checked_columns(plain[:3], CRITEO_DENSE, CRITEO_SPARSE)["C1"]) == [r["C1"] for r in plain[:3]]
    assert_request_lane_identical(pipeline, plain, rng)
    as_lists = [[row.get(c) for c in columns] for row in rows[:500]]
    online = OnlineEncoder.from_pipeline(pipeline)
    for group in (as_lists[:1], as_lists[1:6], as_lists[6:6 + SMALL_INPUT_ROWS]):  # lists in column order
        dense, sparse = online.encode_columns(checked_columns(group, CRITEO_DENSE, CRITEO_SPARSE), len(group))
        expected = pipeline.encode_vectorized(rows_to_table(group, CRITEO_DENSE, CRITEO_SPARSE))
        assert dense.tobytes() == expected[0].tobytes() and sparse.tobytes() == expected[1].tobytes()


def test_request_lane_identical_when_its_memory_overflows(synthetic_table, monkeypatch):
    """A lane's memory of recent values is forgotten when full: the results stay the same."""
    monkeypatch.setattr(online, "MEMO_VALUES", 3)
    pipeline = fitted(synthetic_table.slice(0, 3000), overrides=OVERRIDES)
    rng = np.random.default_rng(41)
    assert_request_lane_identical(pipeline, request_rows(rng, synthetic_table, 600), rng)
    zeros = [0.0, -0.0, -0.0, 0.0, 0.0, -0.0]  # one dict key; features that differ in sign are not remembered
    rows = [{"I1": v, "I2": v, "I3": v, "I4": v, "I6": v, "C1": "" if v else "x"} for v in zeros]
    for _ in range(2):
        assert_request_lane_identical(pipeline, rows, rng)


BAD_VALUES = [("I5", "abc"), ("I5", True), ("I2", math.inf), ("I2", math.nan), ("I3", "1e400"), ("I3", "nan"),
              ("I3", "0x10"), ("I4", 2**2000), ("I7", [1]), ("C7", 2.5), ("C7", True), ("C8", b"x"), ("C9", {"a": 1})]


def test_request_lane_errors_equal_arrow_path(synthetic_table):
    """The same InputError (message, row, field) as rows_to_table, for bad values anywhere and
    bad row shapes; a feature that overflows float32 is reported as by transform."""
    pipeline = fitted(synthetic_table.slice(0, 3000), overrides=OVERRIDES)
    rng = np.random.default_rng(43)
    good = request_rows(rng, synthetic_table, 8)
    cases = []
    for col, value in BAD_VALUES:
        for row in (0, 5):
            rows = [dict(r) for r in good]
            rows[row][col] = value
            rows[7]["C1"] = 1.5  # a later bad value: the first in the checking order is named
            cases.append(rows)
    cases += [[good[0], [1, 2]], [good[0], dict(good[1], C99="x")], [[1, 2, 3]], [5], [good[0], None]]
    for rows in cases:
        with pytest.raises(InputError) as expected:
            rows_to_table(rows, CRITEO_DENSE, CRITEO_SPARSE)
        with pytest.raises(InputError) as got:
            checked_columns(rows, CRITEO_DENSE, CRITEO_SPARSE)
        assert (str(got.value), got.value.row, got.value.field) == (str(expected.value), expected.value.row,
                                                                    expected.value.field)
    rows = [dict(good[0]), dict(good[1], I2=1e39)]  # I2 passes through: 1e39 overflows float32
    with pytest.raises(InputError) as expected:
        pipeline.transform(rows_to_table(rows, CRITEO_DENSE, CRITEO_SPARSE))
    with pytest.raises(InputError) as got:
        pipeline.transform_columns(checked_columns(rows, CRITEO_DENSE, CRITEO_SPARSE), 2)
    assert str(got.value) == str(expected.value) and "row 1, field 'I2'" in str(got.value)
