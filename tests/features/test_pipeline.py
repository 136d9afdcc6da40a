"""Tests for ctrlab.features: the vectorized key table and string hash, the encoders (vocabulary,
hash buckets, numeric transforms, log-square buckets) against plain-Python references, and the
FeaturePipeline's fit / JSON persistence / transform on real Criteo rows, and prepare's route
(streamed codes finalized by the pipeline) against transform."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from ctrlab.data.formats import detect_format, schema_for_file
from ctrlab.data.readers import RowReader
from ctrlab.data.synth import write_synthetic
from ctrlab.features.encoders import (
    BucketizedNumeric,
    HashBuckets,
    NumericTransform,
    Vocabulary,
    column_values,
    encoder_from_dict,
    log_square_bucket,
    signed_log1p,
    stacked_tables,
    vocabulary_ids,
)
from ctrlab.features.keytable import KeyTable, StackedTables, hash_ints, hash_strings
from ctrlab.features.pipeline import CategoricalOptions, FeaturePipeline, NumericOptions
from ctrlab.fields import MISSING_ID, NUM_RESERVED_IDS, OOV_ID
from ctrlab.schema import CRITEO_DENSE, CRITEO_SPARSE

MISSING_KEY = np.iinfo(np.int64).min


# --------------------------------------------------------------------------------------------
# KeyTable
# --------------------------------------------------------------------------------------------

def _random_hashes(rng, n: int) -> np.ndarray:
    h = rng.integers(1, np.iinfo(np.int64).max, size=n, dtype=np.int64).astype(np.uint64)
    h |= rng.integers(0, 2, size=n).astype(np.uint64) << np.uint64(63)  # use the top bit too
    return h


def test_keytable_matches_dict_with_growth():
    rng = np.random.default_rng(0)
    table = KeyTable(capacity=16)
    reference: dict[int, int] = {}
    pool = np.unique(_random_hashes(rng, 60_000))
    for _ in range(40):
        batch = np.unique(rng.choice(pool, size=rng.integers(1, 5000)))
        rng.shuffle(batch)  # distinct, in random order
        codes = table.insert(batch)
        expected = []
        for h in batch.tolist():
            if h not in reference:
                reference[h] = len(reference)  # new keys: the next codes, in batch order
            expected.append(reference[h])
        assert codes.tolist() == expected
        assert table.size == len(reference)
    assert table.capacity >= 2 * len(reference)  # kept at most half full
    assert table.capacity > 16  # it grew
    keys = np.array(list(reference), dtype=np.uint64)
    assert table.lookup(keys).tolist() == list(reference.values())
    absent = np.setdiff1d(_random_hashes(rng, 20_000), keys)
    assert (table.lookup(absent) == -1).all()
    assert table.lookup(np.zeros(0, dtype=np.uint64)).shape == (0,)


def test_keytable_long_probe_chains():
    # every key has the same low bits: they all start probing at one slot
    keys = (np.arange(1, 1500, dtype=np.uint64) << np.uint64(40)) | np.uint64(5)
    table = KeyTable(capacity=4)
    first = table.insert(keys[:700])
    assert first.tolist() == list(range(700))
    second = table.insert(keys[::-1])  # 799 new ones (numbered in this order) + 700 known
    new_in_order = keys[::-1][~np.isin(keys[::-1], keys[:700])]
    reference = {int(k): i for i, k in enumerate(keys[:700])}
    reference.update({int(k): 700 + i for i, k in enumerate(new_in_order)})
    assert second.tolist() == [reference[int(k)] for k in keys[::-1]]
    assert table.lookup(keys).tolist() == [reference[int(k)] for k in keys]
    assert table.lookup(keys + np.uint64(1 << 20)).tolist() == [-1] * len(keys)


# --------------------------------------------------------------------------------------------
# hash_strings / hash_ints
# --------------------------------------------------------------------------------------------

DISTINCT_STRINGS = ["", "a", "b", "ab", "ba", "aa", "aaa", "a\x00", "\x00", "\x00\x00", "abc", "acb", "cba",
                    "é", "e\u0301", "日本", "本日", "🙂", "05db9164", "05db9165", "5db9164", "05DB9164",
                    "a" * 300, "a" * 301, "b" + "a" * 299]


def test_hash_strings_distinct_and_deterministic():
    hashes = hash_strings(pa.array(DISTINCT_STRINGS))
    assert hashes.dtype == np.uint64
    assert len(set(hashes.tolist())) == len(DISTINCT_STRINGS)
    assert (hashes != 0).all()
    again = hash_strings(pa.array(list(reversed(DISTINCT_STRINGS))))
    assert again.tolist() == hashes.tolist()[::-1]
    # equal strings hash equally wherever they sit in an array
    mixed = ["ab", "x", "ab", "", "ab", ""]
    h = hash_strings(pa.array(mixed)).tolist()
    assert h[0] == h[2] == h[4] == hashes[DISTINCT_STRINGS.index("ab")]
    assert h[3] == h[5] == hashes[0]
    # nulls hash like ""
    assert hash_strings(pa.array([None, "a", None])).tolist() == hash_strings(pa.array(["", "a", ""])).tolist()


def test_hash_strings_no_collisions_on_many_keys():
    rng = np.random.default_rng(1)
    values = np.unique(rng.integers(0, 2**32, size=200_000)).tolist()
    keys = [f"{v:08x}" for v in values] + [str(v) for v in values[:50_000]]
    hashes = hash_strings(pa.array(keys))
    assert len(np.unique(hashes)) == len(set(keys))


def test_hash_strings_fixed_width_and_mixed_agree():
    fixed = ["05db9164", "68fd1e64", "8cf07265", "00000000"]
    alone = hash_strings(pa.array(fixed)).tolist()
    mixed = hash_strings(pa.array(fixed + ["a", "", None, "0123456789"])).tolist()
    assert alone == mixed[:4]
    assert hash_strings(pa.array(["x" + f for f in fixed]).slice(1, 2)).tolist() == \
        hash_strings(pa.array(["x" + f for f in fixed[1:3]] + ["yy"])).tolist()[:2]
    # a vocabulary fitted on fixed-width keys finds them among keys of other lengths
    vocab = Vocabulary().fit(strings(fixed))
    assert OOV_ID not in vocab.transform(strings(fixed + ["longer-key", "k"])).tolist()[:4]


def test_hash_strings_fixed_width_with_empties_equals_each_alone():
    # one width plus ""/null (the matrix-product path) hashes each value as it hashes alone
    values = ["05db9164", None, "68fd1e64", "", "8cf07265", None, "05db9164"]
    expected = [hash_strings(pa.array([v], type=pa.string()))[0] for v in values]
    assert hash_strings(pa.array(values)).tolist() == expected
    assert hash_strings(pa.array(["xy"] + values).slice(1)).tolist() == expected
    assert hash_strings(pa.array(["", None])).tolist() == [expected[3]] * 2


def test_hash_strings_sliced_and_chunked():
    values = DISTINCT_STRINGS * 3
    full = hash_strings(pa.array(values))
    arr = pa.array(values)
    for lo, n in [(1, 5), (3, 20), (7, len(values) - 7), (len(values) - 1, 1), (4, 0)]:
        sliced = arr.slice(lo, n)
        assert sliced.offset == lo
        assert hash_strings(sliced).tolist() == full[lo: lo + n].tolist()
        assert hash_strings(sliced).tolist() == hash_strings(pa.array(values[lo: lo + n])).tolist()
    chunked = pa.chunked_array([arr.slice(0, 10), arr.slice(10)])
    assert hash_strings(chunked).tolist() == full.tolist()
    assert hash_strings(pa.array(values, type=pa.large_string())).tolist() == full.tolist()


def test_hash_ints_distinct_and_nonzero():
    keys = np.array([MISSING_KEY, -3, -1, 0, 1, 2, 3, 1 << 40, np.iinfo(np.int64).max], dtype=np.int64)
    h = hash_ints(keys)
    assert len(set(h.tolist())) == len(keys) and (h != 0).all()
    assert hash_ints(keys[::-1]).tolist() == h.tolist()[::-1]


# --------------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------------

def _key_hashes(keys: list) -> list[int]:
    if keys and isinstance(keys[0], int):
        return hash_ints(np.array(keys, dtype=np.int64)).tolist()
    return hash_strings(pa.array(keys, type=pa.string())).tolist()


def _reference_vocab(values, min_count=1, max_size=None) -> dict:
    """Python reference: keys seen >= min_count times, most frequent first, ties by the key's
    64-bit hash (the documented tie-break), at most max_size of them; ids from 2."""
    counts = Counter(v for v in values if v is not None)
    keys = list(counts)
    tie = dict(zip(keys, _key_hashes(keys)))
    kept = sorted((k for k in keys if counts[k] >= min_count), key=lambda k: (-counts[k], tie[k]))
    if max_size is not None:
        kept = kept[:max_size]
    return {k: NUM_RESERVED_IDS + i for i, k in enumerate(kept)}


def _reference_ids(ids: dict, values) -> list[int]:
    return [MISSING_ID if v is None else ids.get(v, OOV_ID) for v in values]


def strings(values: list) -> pa.ChunkedArray:
    """String values as the readers deliver them (a chunked column)."""
    return pa.chunked_array([pa.array(values, type=pa.string())])


def _zipf_strings(rng, n: int, vocab: int = 400, missing: float = 0.1) -> list:
    ranks = np.minimum(rng.zipf(1.3, size=n), vocab)
    out = [f"k{r:03d}" if r % 3 else f"{r:x}" for r in ranks.tolist()]
    for i in np.flatnonzero(rng.random(n) < missing):
        out[i] = None
    return out


@pytest.mark.parametrize("min_count, max_size", [(1, None), (3, None), (1, 25), (5, 10), (1, 0), (10**9, None)])
def test_vocabulary_against_reference(min_count, max_size):
    rng = np.random.default_rng(min_count * 7 + (max_size or 0))
    train = _zipf_strings(rng, 5000)
    vocab = Vocabulary(min_count, max_size).fit(strings(train))
    ids = _reference_vocab(train, min_count, max_size)
    assert vocab.size_ == NUM_RESERVED_IDS + len(ids)
    assert vocab.keys_.to_pylist() == list(ids)
    other = _zipf_strings(rng, 3000) + ["never-seen", None, ""]
    got = vocab.transform(strings(other))
    assert got.dtype == np.int32
    assert got.tolist() == _reference_ids(ids, other)


def test_vocabulary_ids_equal_each_vocabularys_transform():
    rng = np.random.default_rng(14)
    vocabs = [Vocabulary(min_count).fit(strings(_zipf_strings(rng, 3000))) for min_count in (1, 2, 5)]
    fixed = [f"{v:08x}" for v in rng.integers(0, 2**32, 1000)]  # one width, nulls and "" among them
    fixed[::7] = [None] * len(fixed[::7])
    fixed[3::11] = [""] * len(fixed[3::11])
    mixed = _zipf_strings(rng, 1000) + ["unseen", ""]  # other widths, unseen keys
    columns = [pa.chunked_array([pa.array(mixed[:500]), pa.array(mixed[500:1000])]),  # chunked
               pa.array(mixed[2:]),  # sliced by its start
               pa.array(fixed)]
    expected = np.stack([v.transform(c) for v, c in zip(vocabs, columns)], axis=1)
    assert vocabulary_ids(vocabs, columns).tolist() == expected.tolist()
    assert vocabulary_ids(vocabs, columns, stacked_tables(vocabs)).tolist() == expected.tolist()
    assert vocabulary_ids(vocabs[:1], [pa.array([None, None], type=pa.string())]).tolist() == [[MISSING_ID]] * 2


def test_pipeline_batched_vocabularies_equal_per_column(tmp_path, monkeypatch):
    """A small input's string vocabularies are encoded in one batch: the same bytes as one
    column at a time (hash buckets and bucketized numbers stay per column)."""
    import ctrlab.features.pipeline as pipeline_module

    path = tmp_path / "synth.tsv"
    write_synthetic(path, 1500, seed=3, progress=False)
    table = pa.concat_tables(c.table for c in RowReader([path], schema_for_file(path, detect_format(path))))
    pipe = _criteo_pipeline(overrides={"I1": NumericOptions(transform="log_square_bucket"),
                                       "C3": CategoricalOptions(encoder="hash", hash_buckets=50)}).fit([table])
    batched = pipe.encode_vectorized(table)
    monkeypatch.setattr(pipeline_module, "BATCHED_VOCAB_ROWS", 0)
    per_column = pipe.encode_vectorized(table)
    assert batched[0].tobytes() == per_column[0].tobytes() and batched[1].tobytes() == per_column[1].tobytes()


def test_vocabulary_ties_and_reserved_ids():
    values = ["b", "a", "c", "c", None, "d", "b", "a", "e", "", "", "c"]
    vocab = Vocabulary().fit(strings(values))
    # counts: c3, then a2 b2 ""2, then d1 e1; ties ordered by the key's hash
    keys = vocab.keys_.to_pylist()
    assert keys[0] == "c"
    assert sorted(keys[1:4]) == ["", "a", "b"] and sorted(keys[4:]) == ["d", "e"]
    assert keys == list(_reference_vocab(values))
    ids = dict(zip(keys, range(NUM_RESERVED_IDS, NUM_RESERVED_IDS + len(keys))))
    got = vocab.transform(strings(["a", None, "zzz", "e", "", "c"]))
    assert got.tolist() == [ids["a"], MISSING_ID, OOV_ID, ids["e"], ids[""], 2]
    # the vocabulary depends on the values and counts, not their order nor their chunking
    shuffled = pa.chunked_array([pa.array(values[5:]), pa.array(values[:5])])
    assert Vocabulary().fit(shuffled).keys_.to_pylist() == vocab.keys_.to_pylist()


def test_vocabulary_json_round_trip_is_bit_identical():
    rng = np.random.default_rng(3)
    train = _zipf_strings(rng, 4000) + ["日本", "é", "e\u0301"]
    vocab = Vocabulary(min_count=2, max_size=100).fit(strings(train))
    loaded = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert (loaded.min_count, loaded.max_size) == (2, 100)
    probe = strings(_zipf_strings(rng, 4000) + ["日本", "é", "e\u0301", None])
    a, b = vocab.transform(probe), loaded.transform(probe)
    assert a.dtype == b.dtype and np.array_equal(a, b)
    assert loaded.size_ == vocab.size_
    assert isinstance(encoder_from_dict(vocab.to_dict()), Vocabulary)


def test_vocabulary_int_keys():
    keys = np.array([5, 5, 5, -1, -1, 7, MISSING_KEY, 0, 0, 0, 0, 7, 7, 7], dtype=np.int64)
    vocab = Vocabulary().fit(keys)
    # counts: 0 x4, 7 x4, 5 x3, -1 x2
    assert sorted(vocab.keys_.tolist()[:2]) == [0, 7] and vocab.keys_.tolist()[2:] == [5, -1]
    assert vocab.keys_.tolist() == list(_reference_vocab(keys[keys != MISSING_KEY].tolist()))
    assert vocab.to_dict()["key_type"] == "int"
    ids = {k: i + NUM_RESERVED_IDS for i, k in enumerate(vocab.keys_.tolist())}
    got = vocab.transform(np.array([7, MISSING_KEY, 3, -1, 0], dtype=np.int64))
    assert got.tolist() == [ids[7], MISSING_ID, OOV_ID, 5, ids[0]]
    loaded = Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict())))
    assert loaded.transform(np.array([7, MISSING_KEY, 3, -1, 0], dtype=np.int64)).tolist() == got.tolist()


def test_vocabulary_streaming_fit_counts_train_rows_only():
    vocab = Vocabulary(min_count=2)
    acc = vocab.accumulator()
    chunk1 = strings(["x", "y", "y", "z", None])
    chunk2 = strings(["z", "x", "q", "q", "q"])
    codes1 = acc.update(chunk1, np.array([True, True, True, True, True]))
    codes2 = acc.update(chunk2, np.array([True, False, False, False, False]))  # only "z" is training
    final = acc.finish()
    # training counts: x1 y2 z2 -> y, z kept; x and q (seen in valid rows only) -> OOV
    assert sorted(vocab.keys_.to_pylist()) == ["y", "z"]
    y, z = (vocab.keys_.to_pylist().index(k) + NUM_RESERVED_IDS for k in ("y", "z"))
    assert final(codes1).tolist() == [OOV_ID, y, y, z, MISSING_ID]
    assert final(codes2).tolist() == [z, OOV_ID, OOV_ID, OOV_ID, OOV_ID]
    # the streamed codes equal transform on the raw values
    assert final(codes2).tolist() == vocab.transform(chunk2).tolist()


@pytest.mark.parametrize("operation", ["vocab.fit", "vocab.transform", "hash.transform"])
def test_encoders_take_plain_arrays_with_nulls(operation):
    values = pa.array(["a", None, "b", "a"], type=pa.string())
    if operation == "vocab.fit":
        assert Vocabulary().fit(values).keys_.to_pylist() == ["a", "b"]
    elif operation == "vocab.transform":
        vocab = Vocabulary().fit(pa.array(["a", "b", "a"]))
        assert vocab.transform(values).tolist() == [2, MISSING_ID, 3, 2]
    else:
        assert HashBuckets(10).transform(values)[1] == MISSING_ID


def test_vocabulary_plain_array_without_nulls():
    vocab = Vocabulary().fit(pa.array(["a", "b", "a"]))
    assert vocab.keys_.to_pylist() == ["a", "b"]
    assert vocab.transform(pa.array(["b", "c", "a"])).tolist() == [3, OOV_ID, 2]


@pytest.mark.parametrize("newline_key", [False, True])
def test_large_vocabulary_json_round_trip(newline_key):
    rng = np.random.default_rng(21)
    keys = [f"{v:x}" for v in rng.integers(0, 2**40, size=4000)] + ["", "日本", "a\tb", " lead", "trail ", "\r"]
    if newline_key:
        keys.append("two\nlines")
    train = keys + keys[:1500] + keys[:10]  # counts 3, 2 and 1
    vocab = Vocabulary().fit(strings(train))
    assert vocab.size_ == NUM_RESERVED_IDS + len(set(keys))
    text = json.dumps(vocab.to_dict())
    loaded = Vocabulary.from_dict(json.loads(text))
    assert loaded.keys_.to_pylist() == vocab.keys_.to_pylist()
    probe = strings(keys + ["unseen", None])
    assert np.array_equal(loaded.transform(probe), vocab.transform(probe))
    assert loaded.transform(strings(["", "two\nlines", "\r"])).tolist() == vocab.transform(
        strings(["", "two\nlines", "\r"])).tolist()
    assert OOV_ID not in vocab.transform(strings(keys)).tolist()


def test_vocabulary_errors():
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary(min_count=0)
    with pytest.raises(ValueError, match="max_size"):
        Vocabulary(max_size=-1)
    with pytest.raises(RuntimeError, match="not fitted"):
        Vocabulary().transform(pa.array(["a"]))


def test_vocabulary_all_missing_column():
    vocab = Vocabulary().fit(strings([None, None]))
    assert vocab.size_ == NUM_RESERVED_IDS
    assert vocab.transform(strings(["a", None])).tolist() == [OOV_ID, MISSING_ID]


# --------------------------------------------------------------------------------------------
# HashBuckets
# --------------------------------------------------------------------------------------------

HASH_PROBE = ["05db9164", "68fd1e64", "", "日本", "a", "b", "ab", "ba"] + [f"{i:08x}" for i in range(0, 5000, 7)]


def test_hash_buckets_range_and_missing():
    enc = HashBuckets(buckets=97)
    assert enc.size_ == NUM_RESERVED_IDS + 97
    ids = enc.transform(strings(HASH_PROBE + [None]))
    assert ids.dtype == np.int32
    assert ids[-1] == MISSING_ID
    assert ((ids[:-1] >= NUM_RESERVED_IDS) & (ids[:-1] < enc.size_)).all()
    assert len(np.unique(ids[:-1])) > 80  # spread over the buckets
    # equal values, equal ids; the id is hash mod buckets
    expected = (hash_strings(pa.array(HASH_PROBE)) % np.uint64(97)).astype(np.int64) + NUM_RESERVED_IDS
    assert ids[:-1].tolist() == expected.tolist()
    assert HashBuckets.from_dict(json.loads(json.dumps(enc.to_dict()))).transform(pa.array(HASH_PROBE)).tolist() \
        == ids[:-1].tolist()
    with pytest.raises(ValueError):
        HashBuckets(0)


def test_hash_buckets_stable_across_processes():
    here = HashBuckets(buckets=1_000_003).transform(pa.array(HASH_PROBE)).tolist()
    code = (
        "import json, sys, pyarrow as pa\n"
        "from ctrlab.features.encoders import HashBuckets\n"
        "values = json.loads(sys.stdin.read())\n"
        "print(json.dumps(HashBuckets(buckets=1_000_003).transform(pa.array(values)).tolist()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], input=json.dumps(HASH_PROBE), capture_output=True,
                         text=True, check=True, env={"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"},
                         cwd=Path(__file__).resolve().parents[2])
    assert json.loads(out.stdout) == here


# --------------------------------------------------------------------------------------------
# numeric transforms
# --------------------------------------------------------------------------------------------

@pytest.fixture()
def counts():
    rng = np.random.default_rng(5)
    x = np.floor(rng.pareto(1.2, size=3000) * 20)
    x[rng.random(3000) < 0.3] = np.nan
    x[:5] = [-1, -2, 0, np.nan, 1e7]
    return x


def test_numeric_passthrough_and_log1p(counts):
    t = NumericTransform("passthrough", fill_value=-7.5).fit(counts)
    out = t.transform(counts)
    assert out.dtype == np.float32
    present = ~np.isnan(counts)
    assert np.array_equal(out[present], counts[present].astype(np.float32))
    assert (out[~present] == -7.5).all()
    t = NumericTransform("log1p", fill_value=0.0).fit(counts)
    out = t.transform(counts)
    ref = np.sign(counts) * np.log1p(np.abs(counts))
    assert np.allclose(out[present], ref[present].astype(np.float32), rtol=1e-6, atol=0)
    assert (out[~present] == 0.0).all()
    assert out[0] < 0 < out[4]  # negative counts stay ordered
    assert np.allclose(signed_log1p(np.array([-3.0, 0.0, 3.0])), [-np.log(4), 0, np.log(4)])


def test_numeric_log1p_standardize(counts):
    t = NumericTransform("log1p_standardize").fit(counts)
    present = ~np.isnan(counts)
    logged = np.sign(counts[present]) * np.log1p(np.abs(counts[present]))
    assert t.mean_ == pytest.approx(logged.mean(), rel=1e-12)
    assert t.std_ == pytest.approx(logged.std(), rel=1e-9)
    out = t.transform(counts)
    ref = (logged - logged.mean()) / logged.std()
    assert np.allclose(out[present], ref, rtol=1e-5, atol=1e-6)
    assert (out[~present] == 0.0).all()  # fill 0 = the training mean
    assert abs(float(out[present].mean())) < 1e-5 and float(out[present].std()) == pytest.approx(1.0, rel=1e-5)


def test_numeric_minmax(counts):
    train = counts[:2000]
    t = NumericTransform("minmax", fill_value=0.5).fit(train)
    lo, hi = np.nanmin(train), np.nanmax(train)
    assert (t.min_, t.max_) == (lo, hi)
    probe = np.array([lo, hi, (lo + hi) / 2, hi * 10, lo - 5, np.nan])
    out = t.transform(probe)
    assert np.allclose(out, [0.0, 1.0, 0.5, 1.0, 0.0, 0.5])
    constant = NumericTransform("minmax").fit(np.array([4.0, 4.0]))
    assert constant.transform(np.array([4.0, 5.0, 3.0])).tolist() == [0.0, 1.0, 0.0]


def test_numeric_fit_without_values_and_json(counts):
    t = NumericTransform("log1p_standardize", fill_value=0.25).fit(np.array([np.nan, np.nan]))
    assert (t.mean_, t.std_) == (0.0, 1.0)
    assert t.transform(np.array([np.nan, 0.0])).tolist() == [0.25, 0.0]
    for kind in NumericTransform.KINDS:
        fitted = NumericTransform(kind, fill_value=-1.0).fit(counts)
        loaded = encoder_from_dict(json.loads(json.dumps(fitted.to_dict())))
        assert isinstance(loaded, NumericTransform) and loaded.kind == kind
        assert np.array_equal(loaded.transform(counts), fitted.transform(counts))
    with pytest.raises(ValueError, match="log_square_bucket"):
        NumericTransform("sqrt")


def test_numeric_streaming_fit_uses_train_rows_only(counts):
    t = NumericTransform("minmax")
    acc = t.accumulator()
    mask = np.zeros(len(counts), dtype=bool)
    mask[100:200] = True
    acc.update(counts, mask)
    acc.finish()
    assert (t.min_, t.max_) == (np.nanmin(counts[100:200]), np.nanmax(counts[100:200]))


@pytest.mark.parametrize("value", [5.0, 7.0, 17.0])
def test_numeric_standardize_constant_column(value):
    t = NumericTransform("log1p_standardize").fit(np.full(1000, value))
    assert t.std_ == 1.0
    out = t.transform(np.array([value, value + 1, 0.0]))
    assert np.all(np.abs(out) < 10)


def _reference_log_square_bucket(v: float) -> int | None:
    if math.isnan(v):
        return None
    return int(math.log(v) ** 2) if v > 2 else int(v)


def test_log_square_bucket_against_reference():
    rng = np.random.default_rng(8)
    special = [np.nan, -3.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.9, 2.0, 2.0000001, 2.5, math.e, 3.0, 7.0, 7.38905609893065,
               20.0, 100.0, 1e6, 2.5e7, 1e9]
    counts = np.floor(rng.pareto(1.0, size=20_000) * 10)
    x = np.concatenate([special, counts, rng.uniform(-5, 50, size=2000)])
    got = log_square_bucket(x)
    assert got.dtype == np.int64
    expected = [_reference_log_square_bucket(float(v)) for v in x]
    assert [None if k == MISSING_KEY else int(k) for k in got] == expected
    assert got[special.index(100.0)] == 21 and got[special.index(2.5)] == 0 and got[special.index(-1.0)] == -1


def test_bucketized_numeric_encoder(counts):
    enc = BucketizedNumeric(Vocabulary(min_count=2))
    acc = enc.accumulator()
    codes = acc.update(counts, None)
    final = acc.finish()
    ids = enc.transform(counts)
    assert np.array_equal(final(codes), ids)
    keys = [_reference_log_square_bucket(float(v)) for v in counts]
    reference = _reference_vocab(keys, min_count=2)
    assert ids.tolist() == _reference_ids(reference, keys)
    assert enc.size_ == NUM_RESERVED_IDS + len(reference)
    loaded = encoder_from_dict(json.loads(json.dumps(enc.to_dict())))
    assert isinstance(loaded, BucketizedNumeric)
    assert np.array_equal(loaded.transform(counts), ids)


# --------------------------------------------------------------------------------------------
# FeaturePipeline on real Criteo rows
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def criteo_table(shared_data):
    path = shared_data["criteo_train"]
    reader = RowReader([path], schema_for_file(path, detect_format(path)))
    return pa.concat_tables([c.table for c in reader])


def _criteo_pipeline(**kwargs) -> FeaturePipeline:
    return FeaturePipeline.from_options(list(CRITEO_DENSE), list(CRITEO_SPARSE), **kwargs)


def test_pipeline_fit_save_load_transform_bit_identical(criteo_table, tmp_path):
    fit_rows, new_rows = criteo_table.slice(0, 7000), criteo_table.slice(7000)
    pipe = _criteo_pipeline(
        categorical=CategoricalOptions(min_count=2),
        overrides={"I1": NumericOptions(transform="log_square_bucket"),
                   "I5": NumericOptions(transform="log_square_bucket", min_count=3),
                   "I7": NumericOptions(transform="minmax"),
                   "C3": CategoricalOptions(encoder="hash", hash_buckets=5000)},
    ).fit([fit_rows.slice(0, 3000), fit_rows.slice(3000)])
    pipe.save(tmp_path / "pipeline.json")
    loaded = FeaturePipeline.load(tmp_path / "pipeline.json")
    for table in (fit_rows, new_rows, criteo_table.slice(123, 1)):
        d1, s1 = pipe.transform(table)
        d2, s2 = loaded.transform(table)
        assert d1.dtype == d2.dtype == np.float32 and s1.dtype == s2.dtype == np.int32
        assert np.array_equal(d1, d2) and np.array_equal(s1, s2)
    assert loaded.to_dict() == pipe.to_dict()
    # layout: bucketized numeric columns lead the sparse outputs
    spec = loaded.spec
    assert spec.dense_names == tuple(c for c in CRITEO_DENSE if c not in ("I1", "I5"))
    assert spec.sparse_names == ("I1", "I5", *CRITEO_SPARSE)
    d, s = loaded.transform(new_rows)
    assert d.shape == (new_rows.num_rows, 11) and s.shape == (new_rows.num_rows, 28)
    assert (s >= 0).all() and (s < np.array(spec.vocab_sizes)).all()


def test_pipeline_spec_and_encodings_match_references(criteo_table):
    fit_rows = criteo_table.slice(0, 8000)
    pipe = _criteo_pipeline(categorical=CategoricalOptions(min_count=1),
                            overrides={"I1": NumericOptions(transform="log_square_bucket", min_count=1)}).fit([fit_rows])
    spec = pipe.spec
    for j, col in enumerate(spec.sparse_names):
        values = fit_rows.column(col).to_pylist()
        if col == "I1":
            values = [None if v is None else _reference_log_square_bucket(v) for v in values]
        assert spec.vocab_sizes[j] == NUM_RESERVED_IDS + len({v for v in values if v is not None}), col
    dense, sparse = pipe.transform(criteo_table)
    for j, col in enumerate(spec.sparse_names):
        fit_values = fit_rows.column(col).to_pylist()
        all_values = criteo_table.column(col).to_pylist()
        if col == "I1":
            fit_values = [None if v is None else _reference_log_square_bucket(v) for v in fit_values]
            all_values = [None if v is None else _reference_log_square_bucket(v) for v in all_values]
        assert sparse[:, j].tolist() == _reference_ids(_reference_vocab(fit_values), all_values), col
    for j, col in enumerate(spec.dense_names):
        x = np.array([np.nan if v is None else v for v in criteo_table.column(col).to_pylist()])
        f = np.array([np.nan if v is None else v for v in fit_rows.column(col).to_pylist()])
        logged = signed_log1p(f[~np.isnan(f)])
        ref = np.where(np.isnan(x), 0.0, (signed_log1p(x) - logged.mean()) / logged.std())
        assert np.allclose(dense[:, j], ref, rtol=1e-5, atol=1e-5), col
    # rows after the fitted ones hold unseen values: they get OOV, never a wrong id
    assert (sparse[8000:] == OOV_ID).any()


def test_pipeline_errors(criteo_table):
    with pytest.raises(ValueError, match="unknown columns"):
        _criteo_pipeline(overrides={"I99": NumericOptions()})
    pipe = _criteo_pipeline()
    with pytest.raises(RuntimeError, match="not fitted"):
        pipe.transform(criteo_table)
    with pytest.raises(RuntimeError, match="not fitted"):
        pipe.spec
    pipe.fit([criteo_table.slice(0, 100)])
    with pytest.raises(ValueError, match="lacks columns"):
        pipe.transform(criteo_table.drop_columns(["C7"]))
    data = pipe.to_dict()
    data["format_version"] = 999
    with pytest.raises(ValueError, match="format_version"):
        FeaturePipeline.from_dict(data)
    with pytest.raises(ValueError, match="categorical encoder"):
        _criteo_pipeline(categorical=CategoricalOptions(encoder="onehot"))


def test_pipeline_transform_ignores_column_order_and_extra_columns(criteo_table):
    pipe = _criteo_pipeline().fit([criteo_table.slice(0, 5000)])
    table = criteo_table.slice(5000, 500)
    reordered = table.select(list(reversed(table.column_names))).append_column("extra", pa.array(["x"] * 500))
    d1, s1 = pipe.transform(table)
    d2, s2 = pipe.transform(reordered)
    assert np.array_equal(d1, d2) and np.array_equal(s1, s2)


def test_streamed_codes_finalize_to_transform(tmp_path):
    """prepare's route: codes from the accumulators (training rows flagged), finalized by the
    pipeline's CodeFinalizer, equal transform of the fitted pipeline, bit for bit."""
    path = tmp_path / "synth.tsv"
    write_synthetic(path, 3000, seed=9, progress=False)
    table = pa.concat_tables(c.table for c in RowReader([path], schema_for_file(path, detect_format(path))))
    pipe = _criteo_pipeline(overrides={"I1": NumericOptions(transform="log_square_bucket"),
                                       "I2": NumericOptions(transform="minmax"),
                                       "C3": CategoricalOptions(encoder="hash", hash_buckets=50)})
    accs = pipe.accumulators()
    train = np.random.default_rng(2).random(table.num_rows) < 0.8
    codes = {col: [] for col in accs}
    for lo, hi in ((0, 1234), (1234, table.num_rows)):  # two chunks
        chunk = table.slice(lo, hi - lo)
        for col, acc in accs.items():
            codes[col].append(acc.update(column_values(chunk, col, col in pipe.dense_inputs), train[lo:hi]))
    assert accs["C1"].distinct_seen > accs["C9"].distinct_seen > 0 and accs["I3"].distinct_seen == 0
    finalizer = pipe.finish_fit(accs)
    sparse = np.stack([np.concatenate(codes[col]) for col in pipe.sparse_outputs], axis=1).astype(np.int32)
    finalizer.ids(sparse)
    raw = np.stack([np.concatenate(codes[col]) for col in pipe.dense_outputs], axis=1)
    dense = np.empty(raw.shape, dtype=np.float32)
    finalizer.features(raw, dense)
    expected_dense, expected_sparse = pipe.transform(table)
    assert dense.tobytes() == expected_dense.tobytes() and sparse.tobytes() == expected_sparse.tobytes()
    # fitted on the training rows only
    refit = _criteo_pipeline(overrides={"I1": NumericOptions(transform="log_square_bucket"),
                                        "I2": NumericOptions(transform="minmax"),
                                        "C3": CategoricalOptions(encoder="hash", hash_buckets=50)})
    assert refit.fit([table.filter(pa.array(train))]).to_dict() == pipe.to_dict()


@pytest.mark.parametrize("fill", [0.05, 0.45])
def test_stacked_tables_equal_each_tables_lookup(fill):
    """Tables of different sizes probed as one: every code (hits, misses, keys on long probe runs
    that end one key at a time, runs that wrap past a table's last slot) equals that table's own
    lookup, and so does a lookup whose long runs are all finished in whole-array rounds."""
    import ctrlab.features.keytable as keytable

    rng = np.random.default_rng(int(fill * 100))
    tables, present = [], []
    for capacity in (16, 1024, 64, 8192):
        table = KeyTable(capacity)
        keys = np.unique(rng.integers(1, 2**63, int(table.capacity * fill) + 1, dtype=np.int64).astype(np.uint64))
        table.insert(keys)
        tables.append(table)
        present.append(keys)
    n = 600
    hashes = np.empty((len(tables), n), dtype=np.uint64)
    for j, keys in enumerate(present):
        absent = rng.integers(1, 2**63, n, dtype=np.int64).astype(np.uint64)
        hashes[j] = np.where(rng.random(n) < 0.6, rng.choice(keys, n), absent)
        hashes[j, :3] = tables[j].capacity - 1 + np.arange(3, dtype=np.uint64) * tables[j].capacity  # last slot
    expected = np.stack([t.lookup(h) for t, h in zip(tables, hashes)])
    assert (expected >= 0).any() and (expected < 0).any()
    assert StackedTables(tables).lookup(hashes).tolist() == expected.tolist()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(keytable, "_SCALAR_PROBES", 0)  # every run finished in whole-array rounds
        assert StackedTables(tables).lookup(hashes).tolist() == expected.tolist()
        assert np.stack([t.lookup(h) for t, h in zip(tables, hashes)]).tolist() == expected.tolist()
