"""Multi-process training: torchrun launch, gradient synchronisation, exact gathered evaluation.

Why not ``DistributedDataParallel``: the embedding tables have *sparse* gradients (the rows a batch
touched) and are updated by :class:`~ctrlab.train.optim.RowSparseOptimizer`; DDP's bucketed
all-reduce wants dense gradients (a dense all-reduce of a 10M-row table per step would cost more
than the model). Instead, after ``backward`` on every rank:

- the dense parameters' gradients are flattened into one buffer, all-reduced (sum) and divided by
  the world size;
- each embedding table's sparse gradient ``(indices, values)`` is all-gathered (padded to the
  largest rank's count) and concatenated in rank order, the values divided by the world size.

Each rank's loss is the mean over its own ``batch_size / world_size`` rows, so the averaged
gradient is the gradient of the mean loss over the whole *global* batch: the same gradient (up to
float summation order) as one process stepping through the same rows. Every rank then applies the
identical update to identical inputs, so the replicas stay bit-identical (checked each epoch with a
checksum, :func:`check_replicas_in_sync`).

Batch size and learning rate: ``train.batch_size`` is the GLOBAL batch (all ranks together); each
rank takes ``batch_size / world_size`` rows per step. The learning rates are not rescaled: a run with
N processes takes the same steps as one process with the same config. To grow the global batch
when adding processes, raise ``train.batch_size`` and scale ``train.lr`` yourself.

Data: every rank reads the same store (a shared or copied directory) and takes its disjoint share
of the seeded per-epoch permutation (:class:`~ctrlab.data.batches.BatchIterator` ``rank`` /
``world_size``); the ``n % world_size`` rows past the last equal share are dropped per epoch (a
different few each epoch) so all ranks step in lock-step. A sharded train split (layout in
:mod:`ctrlab.data.shards`) is shared by shard: rank r reads only shards r, r+W, r+2W, ... (its
memory and I/O follow its share; there must be at least W shards), in the seeded per-epoch
permutation of its own rows, and every rank takes the same number of steps, the minimum over the
ranks of ``rows // (batch_size / W)`` (from meta.json's shard row counts, without communication:
unequal steps would hang the gradient all-reduce); the rows past it are dropped for that epoch. So a
sharded run is not the same rows per step as one process (it is with one process: then the shards
are read as one split, identical to the unsharded store).

Evaluation: each rank scores a contiguous block of the split (a sharded one read as one); the probabilities are all-gathered
and concatenated in stored order, so every rank computes the exact metrics over the whole split
(the same function as one process).

Side effects: only rank 0 writes (checkpoints, logs, TensorBoard, summary.json). All ranks read
``last.pt`` on resume (the run directory must be visible to every rank).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from datetime import timedelta
from typing import Sequence

import numpy as np
import torch
import torch.distributed as dist

from ..data.store import SplitArrays
from ..runtime import available_cores
from .evaluate import predict_split

#: test hook: the rank ``CTRLAB_TEST_DIE_RANK`` (default 1) exits abruptly at this global step
DIE_AT_STEP_ENV = "CTRLAB_TEST_DIE_AT_STEP"
DIE_RANK_ENV = "CTRLAB_TEST_DIE_RANK"


@dataclass(frozen=True)
class DistContext:
    """This process's place in a distributed run (an initialised default process group)."""

    rank: int
    world_size: int
    local_rank: int
    local_world_size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_world() -> tuple[int, int, int, int] | None:
    """``(rank, world_size, local_rank, local_world_size)`` from torchrun's environment, or None
    when this process was not started as one of several workers."""
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return None
    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
    return rank, world, local_rank, local_world


def init_from_env(device: str, timeout_s: float) -> DistContext | None:
    """Join the process group torchrun set up (gloo on CPU, nccl on CUDA); None when not distributed.

    The timeout bounds every collective: a rank that hangs (rather than dies) ends the run with an
    error on the others after ``timeout_s`` seconds instead of blocking forever."""
    world = env_world()
    if world is None:
        return None
    rank, world_size, local_rank, local_world = world
    ctx = DistContext(rank, world_size, local_rank, local_world)
    if dist.is_initialized():
        return ctx
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if backend == "nccl":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is cuda but no CUDA device is available (use --device cpu)")
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return ctx


def local_device(device: str, ctx: DistContext | None) -> str:
    """Each local rank gets its own GPU (``cuda`` -> ``cuda:LOCAL_RANK``); CPU stays CPU."""
    if ctx is not None and device == "cuda":
        return f"cuda:{ctx.local_rank}"
    return device


def default_threads(threads: int | None, ctx: DistContext | None) -> int | None:
    """Torch threads per rank: the configured number, else the available cores shared among the
    ranks of this machine (2 processes on 2 cores: 1 thread each, no oversubscription)."""
    if threads or ctx is None:
        return threads
    return max(1, available_cores() // max(1, ctx.local_world_size))


def shutdown(*, clean: bool = True) -> None:
    """Leave the process group (after a barrier when the run ended normally: a rank that tears its
    connections down while another still uses them makes that one fail)."""
    if dist.is_initialized():
        if clean:
            dist.barrier()
        dist.destroy_process_group()


def maybe_die_for_test(ctx: DistContext | None, step: int) -> None:
    """Test hook (``CTRLAB_TEST_DIE_AT_STEP``): simulate a rank crashing mid-epoch."""
    at = os.environ.get(DIE_AT_STEP_ENV)
    if ctx is None or not at or step != int(at) or ctx.rank != int(os.environ.get(DIE_RANK_ENV, "1")):
        return
    print(f"ctrlab train: rank {ctx.rank}: {DIE_AT_STEP_ENV}={at}: exiting abruptly", file=sys.stderr, flush=True)
    os._exit(13)


def local_batch_size(global_batch: int, ctx: DistContext | None) -> int:
    """Rows per rank per step; ``train.batch_size`` is the global batch and must split evenly."""
    if ctx is None:
        return global_batch
    if global_batch % ctx.world_size:
        raise ValueError(f"train.batch_size {global_batch} is the global batch and must be a multiple of the "
                         f"{ctx.world_size} processes")
    return global_batch // ctx.world_size


# --------------------------------------------------------------------------------------------
# gradients
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def broadcast_parameters(module: torch.nn.Module) -> None:
    """Every rank starts from rank 0's weights (whatever its own initialisation did)."""
    for tensor in list(module.parameters()) + list(module.buffers()):
        dist.broadcast(tensor.data, src=0)


@torch.no_grad()
def sync_gradients(ctx: DistContext, dense_params: Sequence[torch.nn.Parameter],
                   sparse_params: Sequence[torch.nn.Parameter]) -> None:
    """Average the gradients of this step over all ranks (call between backward and the optimizers)."""
    w = ctx.world_size
    if dense_params:
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in dense_params]
        flat = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(w)
        pos = 0
        for p in dense_params:
            n = p.numel()
            p.grad = flat[pos: pos + n].view_as(p)
            pos += n
    if sparse_params:
        _gather_sparse_grads(ctx, sparse_params)


def _gather_sparse_grads(ctx: DistContext, params: Sequence[torch.nn.Parameter]) -> None:
    device = params[0].device
    local: list[tuple[torch.Tensor, torch.Tensor]] = []
    for p in params:
        g = p.grad
        if g is None:
            local.append((torch.zeros(0, dtype=torch.int64, device=device),
                          torch.zeros(0, p.shape[1], dtype=p.dtype, device=device)))
        elif g.is_sparse:
            local.append((g._indices()[0], g._values()))
        else:  # a dense gradient (a table used outside FieldEmbedding): every row
            local.append((torch.arange(p.shape[0], device=device), g))
    counts = torch.tensor([len(i) for i, _ in local], dtype=torch.int64, device=device)
    all_counts = [torch.empty_like(counts) for _ in range(ctx.world_size)]
    dist.all_gather(all_counts, counts)
    per_rank = torch.stack(all_counts).cpu()  # [world, tables]
    gathered_prev: tuple[torch.Tensor, torch.Tensor] | None = None  # (local indices, gathered indices)
    for t, (p, (indices, values)) in enumerate(zip(params, local)):
        sizes = [int(c) for c in per_rank[:, t]]
        if sum(sizes) == 0:
            p.grad = None
            continue
        # tables indexed by the same ids (k-dim embedding + first-order weights) share one gather
        # of the indices (and RowSparseOptimizer's unique cache keeps working on equal tensors)
        if gathered_prev is not None and gathered_prev[0].shape == indices.shape \
                and torch.equal(gathered_prev[0], indices) and sizes == gathered_prev[2]:
            all_indices = gathered_prev[1]
        else:
            all_indices = _all_gather_rows(indices, sizes)
            gathered_prev = (indices, all_indices, sizes)
        all_values = _all_gather_rows(values, sizes).div_(ctx.world_size)
        p.grad = torch.sparse_coo_tensor(all_indices.unsqueeze(0), all_values, p.shape, check_invariants=False)


def _all_gather_rows(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    """Concatenation in rank order of every rank's ``tensor`` (first dim ``sizes[rank]``)."""
    longest = max(sizes)
    padded = tensor.new_zeros((longest,) + tuple(tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def all_reduce_sum(values: Sequence[float], device: torch.device) -> list[float]:
    buf = torch.tensor(list(values), dtype=torch.float64, device=device)
    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
    return buf.tolist()


def barrier(ctx: DistContext | None) -> None:
    if ctx is not None:
        dist.barrier()


def agree(ctx: DistContext, value: object, what: str) -> None:
    """Raise on every rank unless all ranks hold the same ``value``."""
    values: list[object] = [None] * ctx.world_size
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise RuntimeError(f"ranks disagree on {what}: {values}")


def model_checksum(module: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in module.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_replicas_in_sync(ctx: DistContext, module: torch.nn.Module) -> str:
    """The sha256 of the weights, equal on every rank (else RuntimeError on every rank)."""
    checksum = model_checksum(module)
    agree(ctx, checksum, "the model weights (replicas out of sync)")
    return checksum


# --------------------------------------------------------------------------------------------
# evaluation
# --------------------------------------------------------------------------------------------

def shard_bounds(n: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous block ``[lo, hi)`` of ``n`` rows for ``rank`` (the first ``n % world`` blocks one
    row longer); the blocks cover every row exactly once, in order."""
    base, extra = divmod(n, world_size)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (1 if rank < extra else 0)


@torch.no_grad()
def predict_split_distributed(ctx: DistContext, model: torch.nn.Module, split: SplitArrays, batch_size: int,
                              device: torch.device, *, cvr: bool = False) -> np.ndarray:
    """Probabilities for every row of ``split`` in stored order, on every rank: each rank scores its
    block, then the blocks are all-gathered (padded to the longest) and concatenated. f32[n], or
    f32[n, T] (+1 column with ``cvr``) for a multi-task model, as :func:`predict_split`."""
    n = len(split)
    lo, hi = shard_bounds(n, ctx.rank, ctx.world_size)
    if hi == lo:  # more ranks than rows: score one row for the output's shape, contribute none
        lo, hi, keep = 0, 1, 0
    else:
        keep = hi - lo
    block = SplitArrays(dense=split.dense[lo:hi], sparse=split.sparse[lo:hi], label=split.label[lo:hi])
    mine = torch.from_numpy(predict_split(model, block, batch_size, device, cvr=cvr)[:keep]).to(device)
    sizes = [b - a for a, b in (shard_bounds(n, r, ctx.world_size) for r in range(ctx.world_size))]
    probs = _all_gather_rows(mine, sizes).cpu().numpy()
    if probs.shape[0] != n:  # a broken gather must not pass silently
        raise RuntimeError(f"gathered {probs.shape[0]} predictions for {n} rows")
    return probs


# --------------------------------------------------------------------------------------------
# launch
# --------------------------------------------------------------------------------------------

def strip_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--nproc":
            skip = True
            continue
        if arg.startswith("--nproc="):
            continue
        out.append(arg)
    return out


def launch_local(nproc: int, ctrlab_argv: Sequence[str]) -> int:
    """Re-run ``ctrlab <ctrlab_argv>`` as ``nproc`` workers on this machine through torchrun
    (``--standalone``: a private rendezvous on a free local port). Returns torchrun's exit status:
    non-zero when any worker failed (torchrun then stops the others)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ctrlab", *strip_nproc(ctrlab_argv)]
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")  # ranks set their own torch threads; silences torchrun's note
    return subprocess.call(cmd, env=env)
