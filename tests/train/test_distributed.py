"""Tests for multi-process training (ctrlab.train.distributed): gloo, 2 processes on this machine.

- the ranks' shards partition each epoch's permutation (the documented remainder aside), and the
  ranks' step-k batches together are exactly one process's step-k batch;
- gradient synchronisation gives every rank the mean gradient (dense all-reduce, sparse all-gather),
  and the replica checksum catches diverged weights;
- ``ctrlab train --nproc 2`` matches one process with the same global batch and seed (weights
  allclose, test AUC within 0.002), reports the exact AUC of its predictions, writes the run
  directory once (rank 0), survives a killed rank with a clear error on every rank and no hang,
  and resumes to the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from sklearn.metrics import roc_auc_score

from ctrlab.config import load_config
from ctrlab.data.batches import BatchIterator
from ctrlab.data.store import Store
from ctrlab.models import build_model
from ctrlab.train import distributed as distrib
from ctrlab.train.run import run_training
from ctrlab.train.trainer import load_weights
from conftest import synthetic_store

ROWS = 4000  # train split 3186 rows: even, so 2 ranks drop no remainder and match 1 process exactly
BATCH = 256  # global; 13 steps per epoch, the last one partial
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dist_store")
    synthetic_store(root, ROWS, seed=1)
    assert len(Store(root / "store").split("train")) % 2 == 0
    return root / "store"


def settings(store: Path, run_dir: Path, epochs: int) -> list[str]:
    return [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(run_dir))}", "model.name=fm",
            "model.params.embedding_dim=4", f"train.epochs={epochs}", f"train.batch_size={BATCH}",
            "train.lr=0.01", "train.eval_batch_size=100", "train.log_every=1", "train.dist_timeout_s=30"]


def train_nproc(store: Path, run_dir: Path, epochs: int, *extra: str, env: dict | None = None,
                resume: bool = False) -> subprocess.CompletedProcess:
    args = [sys.executable, "-m", "ctrlab", "train", "--quiet", "--nproc", "2"]
    for item in settings(store, run_dir, epochs):
        args += ["--set", item]
    if not resume:
        args.append("--no-resume")
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run(args + list(extra), cwd=REPO, env=full_env, capture_output=True, text=True, timeout=300)


def predict(store: Store, split: str, weights: Path) -> np.ndarray:
    model = build_model("fm", store.spec, {"embedding_dim": 4})
    model.load_state_dict(load_weights(weights))
    model.eval()
    arrays = store.split(split)
    with torch.no_grad():
        dense = torch.from_numpy(np.array(arrays.dense, dtype=np.float32))
        sparse = torch.from_numpy(np.array(arrays.sparse).astype(np.int64))
        return torch.sigmoid(model(dense, sparse)).numpy()


# --------------------------------------------------------------------------------------------
# shards (no processes needed)
# --------------------------------------------------------------------------------------------

class _Rows:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


@pytest.mark.parametrize("n, world", [(3186, 2), (1001, 2), (1000, 3), (10, 4)])
def test_shards_partition_each_epoch(n, world):
    for epoch in (0, 1):
        shards = [BatchIterator(_Rows(n), 8, shuffle=True, seed=5, rank=r, world_size=world) for r in range(world)]
        for it in shards:
            it.set_epoch(epoch)
        parts = [it.indices() for it in shards]
        assert len({len(p) for p in parts}) == 1  # equal shares: lock-step
        union = np.concatenate(parts)
        assert len(np.unique(union)) == len(union)  # disjoint
        assert len(union) == n - n % world  # only the documented remainder is dropped
        dropped = np.setdiff1d(np.arange(n), union)
        assert len(dropped) == n % world
        full = np.random.default_rng([5, epoch]).permutation(n)
        assert set(dropped.tolist()) == set(full[n - n % world:].tolist())  # the permutation's tail


def test_rank_batches_together_are_the_single_process_batch():
    n, world, global_batch = 3186, 2, BATCH
    single = BatchIterator(_Rows(n), global_batch, shuffle=True, seed=3).indices()
    ranks = [BatchIterator(_Rows(n), global_batch // world, shuffle=True, seed=3, rank=r, world_size=world)
             .indices() for r in range(world)]
    local = global_batch // world
    for k in range(-(-n // global_batch)):
        together = np.concatenate([r[k * local: (k + 1) * local] for r in ranks])
        assert sorted(together.tolist()) == sorted(single[k * global_batch: (k + 1) * global_batch].tolist())


def test_shard_bounds_cover_every_row_once():
    for n, world in [(0, 2), (1, 2), (430, 2), (431, 3), (5, 8)]:
        bounds = [distrib.shard_bounds(n, r, world) for r in range(world)]
        assert bounds[0][0] == 0 and bounds[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))


def test_batch_size_is_global():
    ctx = distrib.DistContext(rank=0, world_size=2, local_rank=0, local_world_size=2)
    assert distrib.local_batch_size(256, ctx) == 128
    assert distrib.local_batch_size(256, None) == 256
    with pytest.raises(ValueError, match="global batch"):
        distrib.local_batch_size(255, ctx)


def test_strip_nproc():
    assert distrib.strip_nproc(["train", "--nproc", "2", "-c", "x.yaml", "--nproc=3"]) == ["train", "-c", "x.yaml"]


# --------------------------------------------------------------------------------------------
# gradient sync and checksums (2 spawned gloo processes)
# --------------------------------------------------------------------------------------------

def _sync_worker(rank: int, world: int, init_file: str, results) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=30))
    try:
        ctx = distrib.DistContext(rank, world, rank, world)
        dense = torch.nn.Parameter(torch.zeros(3))
        dense.grad = torch.full((3,), float(rank + 1))
        unused = torch.nn.Parameter(torch.zeros(2))  # no gradient on any rank
        tables = [torch.nn.Parameter(torch.zeros(6, 2)), torch.nn.Parameter(torch.zeros(6, 1))]
        # rank 0 touches rows 0, 1, 1; rank 1 touches rows 1, 5 (different counts: padded gather)
        idx = torch.tensor([[0, 1, 1]]) if rank == 0 else torch.tensor([[1, 5]])
        for t in tables:
            vals = torch.ones(idx.shape[1], t.shape[1]) * (rank + 1)
            t.grad = torch.sparse_coo_tensor(idx, vals, t.shape, check_invariants=True)
        distrib.sync_gradients(ctx, [dense, unused], tables)
        out = {"dense": dense.grad.tolist(), "unused": unused.grad.tolist(),
               "tables": [t.grad.to_dense().tolist() for t in tables]}
        module = torch.nn.Linear(2, 1)
        torch.nn.init.constant_(module.weight, 1.0)
        torch.nn.init.constant_(module.bias, 0.5)
        out["same_checksum"] = distrib.check_replicas_in_sync(ctx, module)
        torch.nn.init.constant_(module.weight, float(rank))
        try:
            distrib.check_replicas_in_sync(ctx, module)
            out["diverged_error"] = None
        except RuntimeError as exc:
            out["diverged_error"] = str(exc)
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_sync_gradients_average_dense_and_sparse(tmp_path):
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_sync_worker, args=(2, str(tmp_path / "init"), results), nprocs=2, join=True)
    r0, r1 = results[0], results[1]
    assert r0 == r1  # identical gradients on every rank
    assert r0["dense"] == [1.5, 1.5, 1.5]  # (1 + 2) / 2
    assert r0["unused"] == [0.0, 0.0]
    # summed per row over both ranks, divided by 2: row 0: 1/2, row 1: (2*1 + 2)/2, row 5: 2/2
    expected_rows = [0.5, 2.0, 0.0, 0.0, 0.0, 1.0]
    assert [row[0] for row in r0["tables"][0]] == expected_rows
    assert [row[0] for row in r0["tables"][1]] == expected_rows
    assert r0["diverged_error"] and "out of sync" in r0["diverged_error"]
    assert r1["diverged_error"] and "out of sync" in r1["diverged_error"]


# --------------------------------------------------------------------------------------------
# end to end: ctrlab train --nproc 2
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_proc_run(store_dir, tmp_path_factory) -> Path:
    """An uninterrupted 2-process, 2-epoch run."""
    run_dir = tmp_path_factory.mktemp("dist") / "run2"
    proc = train_nproc(store_dir, run_dir, 2)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return run_dir


def test_two_processes_match_one_process(store_dir, two_proc_run, tmp_path):
    torch.set_num_threads(1)
    cfg = load_config(None, settings(store_dir, tmp_path / "run1", 1) + ["train.threads=1"])
    run_training(cfg, resume=False, progress=False, log=lambda _: None)
    one = load_weights(tmp_path / "run1" / "checkpoints" / "epoch_1.pt")
    two = load_weights(two_proc_run / "checkpoints" / "epoch_1.pt")
    assert one.keys() == two.keys()
    for name in one:  # same rows, same summed gradients up to float summation order
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    store = Store(store_dir)
    labels = np.asarray(store.split("test").label)
    auc_one = roc_auc_score(labels, predict(store, "test", tmp_path / "run1" / "checkpoints" / "epoch_1.pt"))
    auc_two = roc_auc_score(labels, predict(store, "test", two_proc_run / "checkpoints" / "epoch_1.pt"))
    assert abs(auc_one - auc_two) < 0.002
    # the logged epoch-1 loss is the exact mean over all rows of both ranks
    h1 = json.loads((tmp_path / "run1" / "epochs.jsonl").read_text().splitlines()[0])
    h2 = json.loads((two_proc_run / "epochs.jsonl").read_text().splitlines()[0])
    assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-5)
    assert h2["valid_auc"] == pytest.approx(h1["valid_auc"], abs=1e-4)


def test_reported_auc_is_the_exact_auc_of_the_predictions(store_dir, two_proc_run):
    summary = json.loads((two_proc_run / "summary.json").read_text())
    store = Store(store_dir)
    best = two_proc_run / "checkpoints" / f"epoch_{summary['best_epoch']}.pt"
    for split, key in (("test", "test_auc"), ("valid", "valid_auc")):
        labels = np.asarray(store.split(split).label)
        assert summary[key] == pytest.approx(roc_auc_score(labels, predict(store, split, best)), abs=1e-6)
    assert summary["test_rows"] == len(store.split("test"))  # every row, none twice


def test_only_rank_zero_writes_the_run(two_proc_run):
    steps = [json.loads(line)["step"] for line in (two_proc_run / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 27))  # 2 epochs x 13 steps, each written once
    epochs = (two_proc_run / "epochs.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in epochs] == [1, 2]
    assert sorted(p.name for p in (two_proc_run / "checkpoints").iterdir()) == ["epoch_1.pt", "epoch_2.pt", "last.pt"]
    assert not list(two_proc_run.rglob("*.tmp"))


def test_killed_rank_fails_every_rank_then_resume_matches(store_dir, two_proc_run, tmp_path):
    run_dir = tmp_path / "crash"
    # no hang: train_nproc's subprocess timeout (300 s, far past the 30 s process group timeout) is the guard
    proc = train_nproc(store_dir, run_dir, 2, env={distrib.DIE_AT_STEP_ENV: "16"})  # in epoch 2
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "rank 1: CTRLAB_TEST_DIE_AT_STEP=16" in out
    # torchrun reports both workers as failed: the killed one and the one stopped after it
    failed = set(re.findall(r"rank\s*:\s*(\d+) \(local_rank", out))
    assert failed == {"0", "1"}, out
    exit_codes = re.findall(r"exitcode\s+:\s*(-?\d+)", out)  # the report, not the log line
    assert len(exit_codes) == 2 and all(int(c) != 0 for c in exit_codes), out
    last = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 1  # epoch 2 never finished

    proc = train_nproc(store_dir, run_dir, 2, resume=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "resumed from" in proc.stdout
    resumed = load_weights(run_dir / "checkpoints" / "last.pt")
    straight = load_weights(two_proc_run / "checkpoints" / "last.pt")
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6, msg=name)
    steps = [json.loads(line)["step"] for line in (run_dir / "steps.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 27))  # the interrupted epoch's records were replaced, not doubled


def test_distributed_worker_needs_a_prepared_store(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ctrlab",
            "train", "--quiet", "--set", f"data.store={json.dumps(str(tmp_path / 'missing'))}",
            "--set", f"run_dir={json.dumps(str(tmp_path / 'run'))}", "--set", "model.name=fm"]
    proc = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "distributed training reads a prepared store" in proc.stderr
