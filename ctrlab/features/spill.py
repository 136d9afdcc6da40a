"""Vocabulary counting in bounded memory: spilled epochs and their exact merge.

``prepare`` counts every categorical value of the training rows. Held in memory, that state grows
with the number of distinct values (about 50 bytes each: hash table, count, key), which the full
Criteo log (~33M distinct values) makes gigabytes. So a vocabulary accumulator counts in *epochs*:
when the accumulators together pass ``data.vocab_memory_mib``, each writes its epoch's records
(hash, count, epoch-local code, key), sorted by hash, to an Arrow IPC file and starts afresh. The
rows of an epoch carry codes local to it, so the store's second pass remaps each run of rows
through its own epoch's (small) table.

The merge is exact and external, one range of hashes at a time (``_FINE_RANGES`` ranges by the
hash's top bits, grouped to about ``_GROUP_RECORDS`` records): a range's records from every epoch
are summed per hash, so a value's count is its count over all the training rows. The final order
is the in-memory one, most frequent first and ties by hash (``Vocabulary``): a value's id is the
number of kept values with a larger count, plus those with its count in earlier hash ranges, plus
those before it in its own range. A first read of the ranges counts the kept values per count, a
second assigns the ids; both hold one range at a time. What stays in memory is the *kept*
vocabulary's keys (what ``pipeline.json`` and the model's embedding table hold anyway), not the
distinct values seen. The result equals the in-memory fit's exactly (tested with tiny budgets).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..fields import MISSING_ID, NUM_RESERVED_IDS, OOV_ID

_FINE_BITS = 8
_FINE_RANGES = 1 << _FINE_BITS  # hash ranges per epoch file (one record batch each)
_GROUP_RECORDS = 1 << 21  # records merged at a time (about 150 MB of working memory per merging thread)


def write_epoch(path: Path, hashes: np.ndarray, counts: np.ndarray, keys: Any) -> None:
    """One epoch of a vocabulary to ``path``: per epoch-local code i (``hashes[i]``, training count
    ``counts[i]``, key ``keys[i]``), sorted by hash, in ``_FINE_RANGES`` record batches."""
    order = np.argsort(hashes, kind="stable")
    sorted_hashes = hashes[order]
    key_array = pa.array(keys[order]) if isinstance(keys, np.ndarray) else keys.take(pa.array(order))
    batch = pa.record_batch([pa.array(sorted_hashes), pa.array(counts[order].astype(np.int64)),
                             pa.array(order.astype(np.int32)), key_array], names=["hash", "count", "code", "key"])
    bounds = np.searchsorted(sorted_hashes, _range_starts(), side="left").tolist() + [len(order)]
    schema = batch.schema.with_metadata({"ranges": json.dumps(bounds)})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as writer:
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            writer.write_batch(batch.slice(lo, hi - lo))


def _range_starts() -> np.ndarray:
    return (np.arange(_FINE_RANGES, dtype=np.uint64) << np.uint64(64 - _FINE_BITS))


class _Epochs:
    """The epoch files of one vocabulary, read a range group at a time (plain reads, no maps)."""

    def __init__(self, paths: list[Path]):
        self.readers = [pa.ipc.open_file(pa.OSFile(str(p))) for p in paths]
        sizes = [np.diff(json.loads(r.schema.metadata[b"ranges"])) for r in self.readers]
        self.sizes = np.stack(sizes) if sizes else np.zeros((0, _FINE_RANGES), np.int64)  # [epoch, range]

    def groups(self) -> list[tuple[int, int]]:
        """Consecutive fine ranges [a, b) of about ``_GROUP_RECORDS`` records over all epochs."""
        per_range = self.sizes.sum(axis=0)
        out, start, total = [], 0, 0
        for i, n in enumerate(per_range.tolist()):
            if total and total + n > _GROUP_RECORDS:
                out.append((start, i))
                start, total = i, 0
            total += n
        out.append((start, _FINE_RANGES))
        return out

    def read(self, a: int, b: int) -> tuple[list[int], pa.Table]:
        """Ranges [a, b) of every epoch, concatenated in epoch order: (records per epoch, table)."""
        tables = [pa.Table.from_batches([r.get_batch(i) for i in range(a, b)], schema=r.schema) for r in self.readers]
        return [t.num_rows for t in tables], pa.concat_tables(tables).combine_chunks()

    def close(self) -> None:
        self.readers = []


def _totals(table: pa.Table) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per distinct hash of a group: (hashes ascending, summed counts, first record, record -> hash index)."""
    hashes = table.column("hash").to_numpy()
    unique, first, inverse = np.unique(hashes, return_index=True, return_inverse=True)
    totals = np.bincount(inverse, weights=table.column("count").to_numpy(), minlength=len(unique)).astype(np.int64)
    return unique, totals, first, inverse


def merge_epochs(paths: list[Path], remap_paths: list[Path], min_count: int, max_size: int | None,
                 int_keys: bool) -> tuple[Any, int]:
    """Merge a vocabulary's epoch files: write each epoch's remap (:func:`epoch_remap`) to
    ``remap_paths[e]`` and return the kept keys in id order and the number of distinct values
    counted in the training rows."""
    epochs = _Epochs(paths)
    groups = epochs.groups()
    # first read: how many kept values each group has per count
    per_group: list[tuple[np.ndarray, np.ndarray]] = []
    seen = 0
    for a, b in groups:
        _, table = epochs.read(a, b)
        _, totals, _, _ = _totals(table)
        seen += int(np.count_nonzero(totals))
        per_group.append(np.unique(totals[totals >= min_count], return_counts=True))
    classes = np.unique(np.concatenate([values for values, _ in per_group])) if per_group else np.zeros(0, np.int64)
    classes = classes[::-1]  # the kept counts, descending: class i

    def class_of(counts: np.ndarray) -> np.ndarray:
        return len(classes) - 1 - np.searchsorted(classes[::-1], counts)

    class_sizes = np.zeros(len(classes), dtype=np.int64)
    for values, freq in per_group:
        class_sizes[class_of(values)] += freq
    above = np.cumsum(class_sizes) - class_sizes  # kept values with a larger count
    before = np.zeros(len(classes), dtype=np.int64)  # ... with the same count, in earlier groups
    # second read: ids
    # every epoch's remap, filled a group at a time (4 bytes per record: the only state that
    # grows with the distinct values, besides the kept keys)
    remaps = [np.full(int(n) + 1, OOV_ID, dtype=np.int32) for n in epochs.sizes.sum(axis=1)]
    kept_ranks, kept_keys = [], []
    for (a, b), (values, freq) in zip(groups, per_group):
        lengths, table = epochs.read(a, b)
        unique, totals, first, inverse = _totals(table)
        eligible = np.flatnonzero(totals >= min_count)
        order = eligible[np.lexsort((unique[eligible], -totals[eligible]))]  # within the group
        sorted_totals = totals[order]
        first_of_class = np.searchsorted(-sorted_totals, -sorted_totals, side="left")
        cls = class_of(sorted_totals)
        rank = above[cls] + before[cls] + (np.arange(len(order)) - first_of_class)
        before[class_of(values)] += freq
        if max_size is not None:
            keep = rank < max_size
            order, rank = order[keep], rank[keep]
        ids = np.full(len(unique), OOV_ID, dtype=np.int32)
        ids[order] = (rank + NUM_RESERVED_IDS).astype(np.int32)
        record_ids = ids[inverse]
        codes = table.column("code").to_numpy()
        ends = np.cumsum(lengths)
        for e, (lo, hi) in enumerate(zip(ends - lengths, ends)):
            remaps[e][codes[lo:hi].astype(np.int64) + 1] = record_ids[lo:hi]
        kept_ranks.append(rank)
        kept_keys.append(table.column("key").take(pa.array(first[order])).combine_chunks())
    for remap, path in zip(remaps, remap_paths):
        remap[0] = MISSING_ID
        np.save(path, remap)
    epochs.close()
    ranks = np.concatenate(kept_ranks) if kept_ranks else np.zeros(0, np.int64)
    by_rank = np.empty(len(ranks), dtype=np.int64)
    by_rank[ranks] = np.arange(len(ranks))
    keys = pa.concat_arrays(kept_keys) if kept_keys else pa.array([], type=pa.int64() if int_keys else pa.string())
    keys = keys.take(pa.array(by_rank))
    return (keys.to_numpy().astype(np.int64) if int_keys else keys), seen


def epoch_remap(path: Path) -> np.ndarray:
    """One epoch's remap: int32[codes + 1], row code (epoch-local code + 1; 0 = missing) -> id."""
    return np.load(path)
