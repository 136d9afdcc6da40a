"""Batches of (dense, sparse, label) tensors from a store split, with no per-row Python work.

Training order: a fresh permutation per epoch from ``(seed, epoch)``; each batch gathers its
rows from the memory-mapped arrays with one fancy-index per array (the batch's indices are
sorted first, which turns random reads into a forward sweep; the order of rows inside a batch
does not matter to the loss). Evaluation order: the split's row order, every row exactly
once, the last partial batch included.

``rank``/``world_size`` give each of several processes its own disjoint share of every
epoch's permutation (for distributed training). A sharded split (``SplitArrays.shards``, layout in
:mod:`ctrlab.data.shards`) with ``world_size > 1`` is shared by shard instead: rank r iterates over
the rows of shards r, r+W, r+2W, ... only (so it reads, and pages in, only its share), in the
seeded per-epoch permutation of those rows (stored order without ``shuffle``); every rank takes
the same number of full batches, the minimum over the ranks of ``rows // batch_size`` (computed
from the shards' row counts, no communication), so the ranks step in lock-step; a rank's rows past
that are dropped for the epoch (the permutation's tail). With ``world_size`` 1 a sharded split is
iterated exactly as the same rows unsharded.

Labels: ``float32[B]`` for a single-label split; ``float32[B, T]`` for a multi-task split
(label.npy ``uint8[N, T]``), where a missing label stays ``MISSING_LABEL`` (255.0): the loss and
the metrics mask ``label != 255`` per task (:mod:`ctrlab.train.trainer`, :mod:`ctrlab.metrics`).
``rows`` restricts the iteration to a subset of the split's rows (training one task of a
multi-task store, ``train.task``: the rows that carry its label).
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from .shards import rank_row_count, rank_rows
from .store import SplitArrays


class BatchIterator:
    """Iterate over one split in batches of ``batch_size`` rows.

    shuffle: a seeded per-epoch permutation (training) or the stored order (evaluation).
    drop_last: drop the final partial batch (never for evaluation).
    rows: iterate over these row indices of the split only (ascending; default every row).
    Yields ``dense float32[B, n_dense]``, ``sparse int64[B, n_sparse]``, ``label float32[B]``
    (``float32[B, T]`` for a multi-task split, MISSING_LABEL = 255.0 kept).
    """

    def __init__(self, split: SplitArrays, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1, device: str | torch.device = "cpu",
                 rows: np.ndarray | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.rows = None if rows is None else np.asarray(rows, dtype=np.int64)
        if len(split) == 0 or (self.rows is not None and len(self.rows) == 0):
            # training on it would "succeed" with NaN loss and metrics
            raise ValueError(f"{split.where} has no rows: nothing to train or evaluate on")
        self.split = split
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device)
        self.epoch = 0
        # a sharded split in a distributed run: each rank its own shards, `steps` batches each
        self.shards = tuple(getattr(split, "shards", ())) if world_size > 1 else ()
        if self.shards:
            if len(self.shards) < world_size:
                raise ValueError(f"{split.where} has {len(self.shards)} shards, fewer than the {world_size} processes "
                                 "(each reads its own shards): train with at most that many")
            counts = [rank_row_count(self.shards, r, world_size, self.rows) for r in range(world_size)]
            self.steps = min(counts) // self.batch_size
            if self.steps == 0:
                raise ValueError(f"{split.where}: a process's shards hold {min(counts)} rows, fewer than its batch of "
                                 f"{self.batch_size}: use fewer processes or a smaller train.batch_size")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def indices(self) -> np.ndarray:
        """This process's row indices for the current epoch, in iteration order."""
        if self.shards:
            order = rank_rows(self.shards, self.rank, self.world_size, self.rows)
            if self.shuffle:
                order = order[np.random.default_rng([self.seed, self.epoch]).permutation(len(order))]
            return order[: self.steps * self.batch_size]
        n = self.rows_total
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(n)
        else:
            order = np.arange(n)
        if self.rows is not None:
            order = self.rows[order]
        if self.world_size > 1:
            # equal shares (the few rows past the last full share are dropped while shuffling,
            # so ranks step in lock-step; evaluation keeps every row)
            if self.shuffle:
                per_rank = n // self.world_size
                order = order[: per_rank * self.world_size]
            order = order[self.rank:: self.world_size]
        return order

    @property
    def rows_total(self) -> int:
        """The rows iterated over (all processes together, before any per-rank drop)."""
        return len(self.split) if self.rows is None else len(self.rows)

    def __len__(self) -> int:
        if self.shards:
            return self.steps
        n = len(self.indices()) if self.world_size > 1 else self.rows_total
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        order = self.indices()
        stop = len(order) - (len(order) % self.batch_size if self.drop_last else 0)
        dense, sparse, label = self.split.dense, self.split.sparse, self.split.label
        for lo in range(0, stop, self.batch_size):
            rows = order[lo: lo + self.batch_size]
            if self.shuffle:
                rows = np.sort(rows)
                yield self._tensors(dense[rows], sparse[rows], label[rows])
            else:  # contiguous: a slice, no gather
                a, b = int(rows[0]), int(rows[-1]) + 1
                if b - a == len(rows):
                    yield self._tensors(dense[a:b], sparse[a:b], label[a:b])
                else:
                    yield self._tensors(dense[rows], sparse[rows], label[rows])

    def _tensors(self, dense: np.ndarray, sparse: np.ndarray, label: np.ndarray):
        # np.array copies: a slice of the read-only memory map must not become a writable tensor
        d = torch.from_numpy(np.array(dense, dtype=np.float32))
        s = torch.from_numpy(np.ascontiguousarray(sparse).astype(np.int64))
        y = torch.from_numpy(np.ascontiguousarray(label).astype(np.float32))
        if self.device.type != "cpu":
            d, s, y = (t.to(self.device, non_blocking=True) for t in (d, s, y))
        return d, s, y
