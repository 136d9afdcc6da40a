"""Vocabularies counted in spilled epochs (features/spill.py, issue 18): the external merge gives
exactly the in-memory vocabulary, and a store prepared with a tiny memory budget (a spill after
every chunk) is byte for byte the store prepared in memory."""

from __future__ import annotations

import filecmp
import json

import numpy as np
import pyarrow as pa
import pytest

import ctrlab.features.spill as spill
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.synth import write_synthetic
from ctrlab.data.synth_sequence import write_sequence_synthetic
from ctrlab.features.encoders import EpochRemaps, RemapFinalize, Vocabulary
from ctrlab.features.pipeline import CategoricalOptions, NumericOptions
from ctrlab.schema import GenericSchemaConfig


def _chunks(rng: np.random.Generator, n_chunks: int, string_keys: bool):
    """Chunks of keys with heavy ties in their counts (few distinct counts), some missing."""
    pool = rng.integers(0, 3000, size=20_000)
    for _ in range(n_chunks):
        keys = rng.choice(pool, size=rng.integers(1, 4000))
        if string_keys:
            values = pa.array([None if k % 97 == 0 else f"k{k}" for k in keys.tolist()], type=pa.string())
        else:
            values = np.where(keys % 97 == 0, np.iinfo(np.int64).min, keys).astype(np.int64)
        yield values, rng.random(len(keys)) < 0.8  # (some rows are not training rows)


@pytest.mark.parametrize("string_keys", [True, False])
@pytest.mark.parametrize("min_count,max_size", [(1, None), (2, None), (3, 500), (1, 7)])
def test_merge_of_epochs_equals_the_in_memory_fit(tmp_path, monkeypatch, string_keys, min_count, max_size):
    monkeypatch.setattr(spill, "_GROUP_RECORDS", 300)  # many hash-range groups per merge
    rng = np.random.default_rng(min_count * 10 + (max_size or 0))
    chunks = list(_chunks(rng, 9, string_keys))
    plain, spilled = Vocabulary(min_count, max_size), Vocabulary(min_count, max_size)
    acc_plain, acc_spilled = plain.accumulator(), spilled.accumulator()
    codes_plain, codes_spilled = [], []
    for i, (values, mask) in enumerate(chunks):
        codes_plain.append(acc_plain.update(values, mask))
        codes_spilled.append((len(acc_spilled.spilled), acc_spilled.update(values, mask)))
        if i % 3 != 1:  # spill after most chunks (not all: epochs of several chunks too)
            acc_spilled.spill(tmp_path / "epochs")
    final_plain, final_spilled = acc_plain.finish(), acc_spilled.finish()
    assert isinstance(final_plain, RemapFinalize) and isinstance(final_spilled, EpochRemaps)
    assert final_spilled.epochs == len(acc_spilled.spilled) > 5
    keys_plain, keys_spilled = plain.to_dict(), spilled.to_dict()
    assert keys_spilled == keys_plain
    training = [c[mask] for c, (_, mask) in zip(codes_plain, chunks)]
    assert spilled.seen_ == plain.seen_ == len({int(k) for c in training for k in c[c > 0]})  # distinct, training rows
    assert plain.size_ > 2 + (0 if max_size is None else min(max_size, 5) - 1)
    for codes, (epoch, epoch_codes) in zip(codes_plain, codes_spilled):
        np.testing.assert_array_equal(final_spilled.remap(epoch)(epoch_codes), final_plain(codes))


def _same_store(a, b) -> None:
    """Every file of two stores equal, meta.json but for its timings and creation time."""
    names = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert names == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
    for name in names:
        if name.name == "meta.json":
            drop = ("seconds", "rows_per_second", "created", "timings")
            ma, mb = (json.loads((root / name).read_text()) for root in (a, b))
            assert {k: v for k, v in ma.items() if k not in drop} == {k: v for k, v in mb.items() if k not in drop}
        else:
            assert filecmp.cmp(a / name, b / name, shallow=False), name


def _prepare_both(tmp_path, opts_for, monkeypatch):
    """The store prepared in memory and with a spill after every chunk (and small merge groups)."""
    prepare(opts_for(0), tmp_path / "memory", progress=False)
    monkeypatch.setattr(spill, "_GROUP_RECORDS", 2000)
    counted = []
    real_spill = spill.write_epoch
    monkeypatch.setattr("ctrlab.features.encoders.write_epoch",
                        lambda *a: (counted.append(a[0]), real_spill(*a)))
    prepare(opts_for(1e-6), tmp_path / "spilled", progress=False)
    return counted


def test_criteo_store_prepared_in_epochs_is_identical(tmp_path, monkeypatch):
    files = [tmp_path / f"day{i}.tsv" for i in range(3)]
    for i, path in enumerate(files):
        write_synthetic(path, 4000, seed=i, progress=False)

    def opts(budget):  # ties cut by max_size, a bucketized numeric column (integer keys), min_count 2
        return PrepareOptions(train=[str(p) for p in files], vocab_memory_mib=budget,
                              categorical=CategoricalOptions(min_count=2),
                              columns={"C5": CategoricalOptions(min_count=1, max_size=40),
                                       "I3": NumericOptions(transform="log_square_bucket")})
    spilled = _prepare_both(tmp_path, opts, monkeypatch)
    assert len(spilled) >= 27 * 3  # 26 vocabularies + I3's, in at least three epochs each
    _same_store(tmp_path / "memory", tmp_path / "spilled")


def test_store_with_shared_list_vocabularies_and_split_files_is_identical(tmp_path, monkeypatch):
    files = {name: tmp_path / f"{name}.tsv" for name in ("a", "b", "valid", "test")}
    for seed, path in enumerate(files.values()):
        write_sequence_synthetic(path, 1500, seed=seed, max_history=20)
    lists = {"hist_item_id": {"kind": "sequence", "max_length": 12, "vocab_of": "item_id"},
             "hist_cate_id": {"kind": "sequence", "max_length": 12}}
    schema = GenericSchemaConfig(dense=["price"], sparse=["user_id", "item_id", "cate_id"], lists=lists)

    def opts(budget):
        return PrepareOptions(train=[str(files["a"]), str(files["b"])], valid=[str(files["valid"])],
                              test=[str(files["test"])], format="tsv", schema=schema, vocab_memory_mib=budget)
    spilled = _prepare_both(tmp_path, opts, monkeypatch)
    assert len(spilled) >= 4 * 4  # 4 vocabularies (item_id's shared with its history), 4 files
    _same_store(tmp_path / "memory", tmp_path / "spilled")
