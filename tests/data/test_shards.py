"""Tests for sharded store splits (ctrlab.data.shards, Store, BatchIterator, distributed training):

- ``shard_store`` writes the documented layout; ``Store`` verifies every shard (a wrong row count,
  a missing or unlisted shard, shard counts not summing to the rows: StoreError naming the file);
- a sharded split reads as one, byte for byte the plain split, through every kind of index;
- one process trains on a sharded store exactly as on the plain one (same weights and metrics);
- with 2 ranks each BatchIterator reads only its own shards (r, r+2, ...), both take the same
  number of batches; ``ctrlab train --nproc 2`` on a sharded store finishes with finite metrics.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrlab.config import load_config
from ctrlab.data.batches import BatchIterator
from ctrlab.data.shards import ConcatRows, rank_rows, shard_store
from ctrlab.data.store import SPLITS, SplitArrays, Store, StoreError
from ctrlab.train.run import run_training
from ctrlab.train.trainer import load_weights
from conftest import synthetic_store

ROWS = 2000  # train split ~1600 rows
SHARDS = 3
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stores(tmp_path_factory) -> tuple[Path, Path]:
    """(a plain store, its copy with every split in 3 shards)."""
    root = tmp_path_factory.mktemp("shards")
    _, plain = synthetic_store(root, ROWS, seed=3)
    return plain, shard_store(plain, root / "sharded", SHARDS)


def arrays(split: SplitArrays) -> dict[str, np.ndarray]:
    return {"dense": np.asarray(split.dense), "sparse": np.asarray(split.sparse), "label": np.asarray(split.label)}


# --------------------------------------------------------------------------------------------
# layout and verification
# --------------------------------------------------------------------------------------------

def test_layout_and_the_split_read_as_one_equals_the_plain_split(stores):
    plain, sharded = stores
    a, b = Store(plain), Store(sharded)
    assert (sharded / "pipeline.json").read_bytes() == (plain / "pipeline.json").read_bytes()
    for name in SPLITS:
        entry = b.meta["splits"][name]
        rows = len(a.split(name))
        assert entry["rows"] == rows and sum(entry["shards"]) == rows and len(entry["shards"]) == SHARDS
        assert max(entry["shards"]) - min(entry["shards"]) <= 1  # nearly equal
        assert sorted(p.name for p in (sharded / name).iterdir()) == ["shards"]  # no plain arrays
        assert sorted(p.name for p in (sharded / name / "shards").iterdir()) == ["00000", "00001", "00002"]
        split = b.split(name)
        assert split.shards == tuple(entry["shards"]) and len(split) == rows
        for key, want in arrays(a.split(name)).items():
            got = np.asarray(getattr(split, key))
            assert got.dtype == want.dtype and got.shape == want.shape
            assert got.tobytes() == want.tobytes(), (name, key)


def damaged(stores, tmp_path) -> Path:
    return Path(shutil.copytree(stores[1], tmp_path / "store"))


def test_a_shard_with_a_wrong_row_count_is_a_store_error(stores, tmp_path):
    store = damaged(stores, tmp_path)
    label = store / "train" / "shards" / "00001" / "label.npy"
    np.save(label, np.load(label)[:-1])
    with pytest.raises(StoreError, match=r"train/shards/00001/label\.npy: shape"):
        Store(store)


def test_a_missing_shard_is_a_store_error(stores, tmp_path):
    store = damaged(stores, tmp_path)
    shutil.rmtree(store / "valid" / "shards" / "00002")
    with pytest.raises(StoreError, match=r"valid/shards/00002/dense\.npy: unreadable"):
        Store(store)


def test_an_unlisted_shard_and_bad_counts_are_store_errors(stores, tmp_path):
    store = damaged(stores, tmp_path)
    shutil.copytree(store / "test" / "shards" / "00000", store / "test" / "shards" / "00003")
    with pytest.raises(StoreError, match=r"test/shards/00003: a shard meta\.json does not list"):
        Store(store)
    shutil.rmtree(store / "test" / "shards" / "00003")
    meta = json.loads((store / "meta.json").read_text())
    meta["splits"]["train"]["shards"][0] += 1
    (store / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(StoreError, match=r"meta\.json: the train split's \"shards\""):
        Store(store)


# --------------------------------------------------------------------------------------------
# ConcatRows
# --------------------------------------------------------------------------------------------

def test_concat_rows_indexing_matches_the_array(stores):
    plain = Store(stores[0]).split("train")
    view = Store(stores[1]).split("train")
    bounds = view.dense.offsets
    rng = np.random.default_rng(0)
    n = len(plain)
    for name in ("dense", "sparse", "label"):
        want, got = np.asarray(getattr(plain, name)), getattr(view, name)
        assert isinstance(got, ConcatRows) and got.shape == want.shape and got.dtype == want.dtype
        assert got.ndim == want.ndim and len(got) == n
        for i in (0, int(bounds[1]) - 1, int(bounds[1]), n - 1, -1, -n):
            np.testing.assert_array_equal(got[i], want[i])
        for s in (slice(None), slice(5, 20), slice(int(bounds[1]) - 3, int(bounds[2]) + 3), slice(10, 10),
                  slice(None, None, 7), slice(-5, None), slice(n - 3, n + 10)):
            np.testing.assert_array_equal(np.asarray(got[s]), want[s])
        for index in (np.sort(rng.choice(n, 100, replace=False)), rng.choice(n, 100), np.array([], dtype=np.int64),
                      np.array([-1, 0, -n])):
            out = got[index]
            assert isinstance(out, np.ndarray)
            np.testing.assert_array_equal(out, want[index])
        mask = rng.random(n) < 0.3
        np.testing.assert_array_equal(got[mask], want[mask])
        with pytest.raises(IndexError):
            got[n]
        with pytest.raises(IndexError):
            got[np.array([0, n])]
    np.testing.assert_array_equal(np.asarray(view.sparse[:, 2]), np.asarray(plain.sparse)[:, 2])
    np.testing.assert_array_equal(view.dense[[3, 1500], 1], np.asarray(plain.dense)[[3, 1500], 1])
    assert np.asarray(view.sparse, dtype=np.int64).dtype == np.int64
    # a slice inside one shard is that shard's memory map, not a copy
    assert isinstance(view.dense[5:20], np.memmap)


# --------------------------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------------------------

def settings(store: Path, run_dir: Path) -> list[str]:
    return [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(run_dir))}", "model.name=fm",
            "model.params.embedding_dim=4", "train.epochs=1", "train.batch_size=256", "train.lr=0.01",
            "train.eval_batch_size=100", "train.log_every=1", "train.dist_timeout_s=30"]


def test_one_process_trains_on_shards_exactly_as_on_the_plain_store(stores, tmp_path, one_torch_thread):
    summaries, weights = [], []
    for store, name in zip(stores, ("plain", "sharded")):
        cfg = load_config(None, settings(store, tmp_path / name) + ["train.threads=1"])
        summaries.append(run_training(cfg, resume=False, progress=False, log=lambda _: None))
        weights.append(load_weights(tmp_path / name / "checkpoints" / "epoch_1.pt"))
    for key in ("train_loss", "valid_auc", "valid_logloss", "test_auc", "test_logloss", "test_rows"):
        assert summaries[0][key] == summaries[1][key], key
    assert weights[0].keys() == weights[1].keys()
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


def test_one_rank_iterates_a_sharded_split_as_the_plain_one(stores):
    plain, view = Store(stores[0]).split("train"), Store(stores[1]).split("train")
    for shuffle in (True, False):
        a = BatchIterator(plain, 100, shuffle=shuffle, seed=4)
        b = BatchIterator(view, 100, shuffle=shuffle, seed=4)
        np.testing.assert_array_equal(a.indices(), b.indices())
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert all(torch.equal(u, v) for u, v in zip(x, y))


class Untouchable:
    """Stands in for another rank's shard: reading it fails the test."""

    def __init__(self, array: np.ndarray):
        self.dtype, self.shape = array.dtype, array.shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        raise AssertionError("read a shard of another rank")


def rank_view(split: SplitArrays, rank: int, world: int) -> SplitArrays:
    """``split`` with every shard not rank's replaced by an :class:`Untouchable`."""
    def keep(array: ConcatRows) -> ConcatRows:
        return ConcatRows([p if k % world == rank else Untouchable(p) for k, p in enumerate(array.parts)])
    return SplitArrays(keep(split.dense), keep(split.sparse), keep(split.label), where=split.where,
                       shards=split.shards)


@pytest.mark.parametrize("shuffle", [True, False])
def test_each_rank_reads_only_its_own_shards_in_equal_steps(stores, shuffle):
    plain, view = Store(stores[0]).split("train"), Store(stores[1]).split("train")
    world, batch = 2, 64
    offsets = np.concatenate(([0], np.cumsum(view.shards)))
    own = [np.concatenate([np.arange(offsets[k], offsets[k + 1]) for k in range(r, SHARDS, world)]) for r in range(world)]
    steps = min(len(o) for o in own) // batch
    dense = np.asarray(plain.dense)
    for epoch in (0, 1):
        lengths = []
        for r in range(world):
            it = BatchIterator(rank_view(view, r, world), batch, shuffle=shuffle, seed=7, rank=r, world_size=world)
            it.set_epoch(epoch)
            order = it.indices()
            assert len(order) == steps * batch and len(np.unique(order)) == len(order)
            assert np.isin(order, own[r]).all()  # only rank r's shards: r, r + 2, ...
            if shuffle:
                perm = np.random.default_rng([7, epoch]).permutation(len(own[r]))
                np.testing.assert_array_equal(order, own[r][perm][: steps * batch])
            else:
                np.testing.assert_array_equal(order, own[r][: steps * batch])
            batches = list(it)
            lengths.append(len(batches))
            assert len(batches) == len(it) == steps
            got = np.concatenate([d.numpy() for d, _, _ in batches])
            want = np.concatenate([dense[np.sort(order[k: k + batch])] for k in range(0, len(order), batch)])
            assert got.tobytes() == want.tobytes()
        assert lengths[0] == lengths[1]


def test_rank_shares_with_a_row_subset_and_too_few_shards(stores):
    view = Store(stores[1]).split("train")
    rows = np.arange(0, len(view), 3)
    shares = [rank_rows(view.shards, r, 2, rows) for r in range(2)]
    assert np.array_equal(np.sort(np.concatenate(shares)), rows)
    it = BatchIterator(view, 32, shuffle=True, rank=1, world_size=2, rows=rows)
    assert np.isin(it.indices(), shares[1]).all() and len(it) == min(map(len, shares)) // 32
    with pytest.raises(ValueError, match="3 shards, fewer than the 4 processes"):
        BatchIterator(view, 32, shuffle=True, rank=0, world_size=4)


def test_two_processes_train_on_a_sharded_store(stores, tmp_path):
    run_dir = tmp_path / "run"
    args = [sys.executable, "-m", "ctrlab", "train", "--quiet", "--nproc", "2", "--no-resume"]
    for item in settings(stores[1], run_dir):
        args += ["--set", item]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    for key in ("train_loss", "valid_auc", "valid_logloss", "test_auc", "test_logloss"):
        assert math.isfinite(summary[key]), key
    shards = Store(stores[1]).meta["splits"]["train"]["shards"]
    steps = min(shards[0] + shards[2], shards[1]) // 128  # rank 0: shards 0, 2; rank 1: shard 1
    assert len((run_dir / "steps.jsonl").read_text().splitlines()) == steps
