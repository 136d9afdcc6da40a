"""Sharded store splits: the layout, the one-split view of the shards, each rank's share, and
:func:`shard_store` (a sharded copy of a store: for tests, and the reference for a writer).

Layout (what a writer produces: ``prepare --engine ray``, :mod:`ctrlab.data.ray_engine`)::

    STORE/SPLIT/shards/00000/{dense.npy,sparse.npy,label.npy}
    STORE/SPLIT/shards/00001/...
    meta.json  "splits": {"train": {"rows": N, "positives": P, "positive_rate": P / N,
                                    "shards": [rows_0, rows_1, ...]}, ...}

A split is sharded when its meta.json entry has ``"shards"``: the row count of each shard, in
order, summing to ``"rows"``. Its arrays then live only under ``SPLIT/shards/NNNNN/`` (5 digits,
numbered from 0 in that order; no ``SPLIT/dense.npy``), each shard's three arrays with the dtypes
and widths of a plain split (:mod:`ctrlab.data.store`). The split's rows are the shards' rows
concatenated in order. Every other file of the store (pipeline.json, config.yaml, ...) is as for a
plain store; :class:`~ctrlab.data.store.Store` verifies every shard on opening.

Reading:

- as one split (evaluation, ``ctrlab eval``, export, ...): :class:`ConcatRows` concatenates the
  shards' memory maps without reading them; a read touches only the shards its rows fall in.
- one rank's share (distributed training, :class:`~ctrlab.data.batches.BatchIterator`): rank ``r``
  of ``W`` reads the shards ``r, r + W, r + 2W, ...`` (:func:`rank_ranges`), from meta.json alone.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Sequence

import numpy as np

SHARDS_DIR = "shards"
ARRAYS = ("dense", "sparse", "label")
_COPY_ROWS = 1 << 18  # rows per block when copying arrays (bounded memory)


def shard_dir(split_dir: str | os.PathLike, k: int) -> Path:
    """Shard ``k``'s folder of a split folder: ``SPLIT/shards/NNNNN``."""
    return Path(split_dir) / SHARDS_DIR / f"{k:05d}"


class ConcatRows:
    """Read-only row concatenation of arrays of one dtype and row shape (the shards' memory maps).

    Supports ``shape``, ``dtype``, ``ndim``, ``len``, ``np.asarray`` (reads everything) and indexing
    by an int, a slice (``step`` 1: a lazy view; one shard's memory map when it falls in one), an
    integer or boolean index array in any order (read shard by shard), and ``[rows, columns...]``
    (``[:, j]``: a lazy view of column ``j``)."""

    def __init__(self, parts: Sequence[np.ndarray]):
        if not parts:
            raise ValueError("ConcatRows needs at least one array")
        self.parts = list(parts)
        self.dtype = self.parts[0].dtype
        row_shape = tuple(self.parts[0].shape[1:])
        if any(p.dtype != self.dtype or tuple(p.shape[1:]) != row_shape for p in self.parts):
            raise ValueError("ConcatRows: the arrays differ in dtype or row shape")
        self.offsets = np.concatenate(([0], np.cumsum([len(p) for p in self.parts]))).astype(np.int64)
        self.shape = (int(self.offsets[-1]), *row_shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        out = np.concatenate([np.asarray(p) for p in self.parts])
        return out if dtype is None else out.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, tuple):
            rows, rest = key[0], key[1:]
            if isinstance(rows, slice) and rows == slice(None):
                return ConcatRows([p[(slice(None), *rest)] for p in self.parts])
            return self[rows][(slice(None), *rest)]
        if isinstance(key, slice):
            start, stop, step = key.indices(len(self))
            return self._rows(start, stop) if step == 1 else self[np.arange(start, stop, step)]
        if isinstance(key, (int, np.integer)):
            i = int(key) + (len(self) if key < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"index {int(key)} is out of bounds for {len(self)} rows")
            k = int(np.searchsorted(self.offsets, i, side="right")) - 1
            return self.parts[k][i - self.offsets[k]]
        return self._gather(np.asarray(key))

    def _rows(self, start: int, stop: int) -> Any:
        """Rows ``[start, stop)``: the slices of the parts they fall in (no reading)."""
        pieces = [p[max(start - lo, 0): min(stop, hi) - lo]
                  for p, lo, hi in zip(self.parts, self.offsets[:-1], self.offsets[1:]) if lo < stop and hi > start]
        if not pieces:
            return self.parts[0][:0]
        return pieces[0] if len(pieces) == 1 else ConcatRows(pieces)

    def _gather(self, index: np.ndarray) -> np.ndarray:
        if index.dtype == bool:
            if index.shape != (len(self),):
                raise IndexError(f"boolean index of shape {index.shape} for {len(self)} rows")
            index = np.flatnonzero(index)
        index = index.astype(np.int64, copy=False)
        flat = np.where(index < 0, index + len(self), index).ravel()
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"index out of bounds for {len(self)} rows")
        out = np.empty((flat.size, *self.shape[1:]), dtype=self.dtype)
        part = np.searchsorted(self.offsets, flat, side="right") - 1
        for k in np.unique(part):
            mask = part == k
            out[mask] = self.parts[k][flat[mask] - self.offsets[k]]
        return out.reshape(index.shape + self.shape[1:])


# ----------------------------------------------------------------------------------------------
# each rank's share
# ----------------------------------------------------------------------------------------------

def rank_ranges(shards: Sequence[int], rank: int, world_size: int) -> list[tuple[int, int]]:
    """The row ranges ``[lo, hi)`` (of the whole split) of the shards rank ``rank`` of
    ``world_size`` reads: ``rank, rank + W, rank + 2W, ...``, in order."""
    offsets = np.concatenate(([0], np.cumsum(shards))).astype(np.int64)
    return [(int(offsets[k]), int(offsets[k + 1])) for k in range(rank, len(shards), world_size)]


def rank_rows(shards: Sequence[int], rank: int, world_size: int, rows: np.ndarray | None = None) -> np.ndarray:
    """The split's row indices (ascending int64) in the rank's shards; only those in ``rows``
    (ascending) when given."""
    ranges = rank_ranges(shards, rank, world_size)
    if rows is None:
        parts = [np.arange(lo, hi, dtype=np.int64) for lo, hi in ranges]
    else:
        parts = [rows[np.searchsorted(rows, lo): np.searchsorted(rows, hi)] for lo, hi in ranges]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def rank_row_count(shards: Sequence[int], rank: int, world_size: int, rows: np.ndarray | None = None) -> int:
    """``len(rank_rows(...))`` without building it."""
    ranges = rank_ranges(shards, rank, world_size)
    if rows is None:
        return sum(hi - lo for lo, hi in ranges)
    return int(sum(np.searchsorted(rows, hi) - np.searchsorted(rows, lo) for lo, hi in ranges))


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------

def shard_store(src: str | os.PathLike, dst: str | os.PathLike, shards: int) -> Path:
    """Write a copy of the plain (unsharded, not partitioned) store ``src`` at ``dst`` (a new
    folder) with every non-empty split cut into ``shards`` nearly equal contiguous shards (the
    first ``rows % shards`` one row longer), meta.json recording their row counts; every other
    file and folder at the top of ``src`` is copied as it is. Copies in bounded memory. Returns
    ``dst``; open it with :class:`~ctrlab.data.store.Store` to verify it."""
    src, dst = Path(src), Path(dst)
    if shards < 1:
        raise ValueError(f"shards must be >= 1, got {shards}")
    with open(src / "meta.json", encoding="utf-8") as fh:
        meta = json.load(fh)
    if meta.get("layout") == "partitions":
        raise ValueError(f"{src}: a partitioned store; only split stores are sharded")
    dst.mkdir(parents=True)
    splits = {name: entry for name, entry in meta["splits"].items() if int(entry.get("rows", 0)) > 0}
    for entry in src.iterdir():
        if entry.name == "meta.json" or entry.name in splits:
            continue
        (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, dst / entry.name)
    for name, entry in splits.items():
        if "shards" in entry:
            raise ValueError(f"{src}: the {name} split is sharded already")
        rows = int(entry["rows"])
        base, extra = divmod(rows, shards)
        sizes = [base + (k < extra) for k in range(shards)]
        arrays = {a: np.load(src / name / f"{a}.npy", mmap_mode="r") for a in ARRAYS}
        lo = 0
        for k, size in enumerate(sizes):
            folder = shard_dir(dst / name, k)
            folder.mkdir(parents=True)
            for a, array in arrays.items():
                _copy_rows(array, lo, lo + size, folder / f"{a}.npy")
            lo += size
        entry["shards"] = sizes
    with open(dst / "meta.json", "w", encoding="utf-8") as fh:
        json.dump(meta, fh, indent=2)
    return dst


def _copy_rows(array: np.ndarray, lo: int, hi: int, path: Path) -> None:
    """Rows ``[lo, hi)`` of ``array`` as the .npy file ``path``, block by block."""
    header = {"descr": np.lib.format.dtype_to_descr(array.dtype), "fortran_order": False,
              "shape": (hi - lo, *array.shape[1:])}
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, header)
        for a in range(lo, hi, _COPY_ROWS):
            fh.write(np.ascontiguousarray(array[a: min(a + _COPY_ROWS, hi)]).tobytes())
