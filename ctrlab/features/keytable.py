"""Vectorized key -> code tables for categorical values (no per-value Python work).

Category keys (Arrow strings or int64 bucket keys) are hashed to 64 bits with numpy, and the
hashes live in an open-addressing table (linear probing) whose probes run as whole-array
numpy operations. Memory is about 40 bytes per distinct key (8-byte key and code slots, table kept at most
half full, plus the hash per code), against several hundred for a Python dict of strings.

The small-request lane (``online.py``) hashes and looks up one key at a time in plain Python,
bit-identical to these functions.

Two distinct keys with equal 64-bit hashes would share a code. With splitmix64-mixed hashes the
chance of any such collision among 30 million distinct values is about 2.5e-5.
"""

from __future__ import annotations

import threading

import numpy as np
import pyarrow as pa

from ..hashing import GOLDEN, mix64

#: the string hash's polynomial base (the FNV prime; odd, so multiplying by it is a bijection)
POLY = 0x100000001B3
_POLY = np.uint64(POLY)
_GOLDEN = np.uint64(GOLDEN)


def hash_ints(keys: np.ndarray) -> np.ndarray:
    """64-bit hashes of int64 keys (splitmix64 of the key's bits); never 0 (0 marks an empty slot)."""
    with np.errstate(over="ignore"):
        h = mix64(keys.astype(np.int64).view(np.uint64) + _GOLDEN)
    h[h == 0] = 1
    return h


def _power_table(n: int) -> np.ndarray:
    powers = np.empty(n, dtype=np.uint64)
    powers[0] = 1
    with np.errstate(over="ignore"):
        for i in range(1, n):
            powers[i] = powers[i - 1] * _POLY
    return powers


_POWERS = _power_table(4096)  # keys longer than this are hashed with a table built for them
_POWERS_LOCK = threading.Lock()


def _powers(n: int) -> np.ndarray:
    global _POWERS
    if len(_POWERS) < n:
        with _POWERS_LOCK:  # columns are hashed from several threads
            if len(_POWERS) < n:
                _POWERS = _power_table(max(n, 2 * len(_POWERS)))
    return _POWERS[:n]


def hash_strings(values: pa.Array) -> np.ndarray:
    """64-bit hashes of the strings of an Arrow string array (nulls hash like ""); never 0.

    A polynomial hash of the UTF-8 bytes (wrapping uint64 arithmetic, computed with one
    ``np.add.reduceat``, or one matrix product when all nonempty strings have one length) plus the
    length, mixed by splitmix64.
    """
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if values.type != pa.string():
        values = values.cast(pa.string())
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.uint64)
    _, offsets_buf, data_buf = values.buffers()
    offsets = np.frombuffer(offsets_buf, dtype=np.int32)[values.offset: values.offset + n + 1].astype(np.int64)
    start, end = int(offsets[0]), int(offsets[-1])
    lengths = np.diff(offsets)
    width = int(lengths.max())
    nonempty = lengths > 0
    filled = int(np.count_nonzero(nonempty))
    if width > 0 and end - start == width * filled:  # (then every nonempty key has the width)
        # all keys of one length or empty (e.g. Criteo's 8-hex-digit categories, nulls among
        # them): the same polynomial as below as one matrix product, without the per-byte
        # index arithmetic
        data = np.frombuffer(data_buf, dtype=np.uint8)[start:end].reshape(filled, width).astype(np.uint64)
        with np.errstate(over="ignore"):
            part = (data + np.uint64(1)) @ _powers(width)
        sums = np.zeros(n, dtype=np.uint64)
        sums[nonempty] = part
    elif end > start:
        data = np.frombuffer(data_buf, dtype=np.uint8)[start:end].astype(np.uint64)
        rel = offsets[:-1] - start
        position = np.arange(end - start, dtype=np.int64) - np.repeat(rel, lengths)
        with np.errstate(over="ignore"):
            terms = (data + np.uint64(1)) * _powers(width)[position]
        sums = np.zeros(n, dtype=np.uint64)
        sums[nonempty] = np.add.reduceat(terms, rel[nonempty])
    else:
        sums = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        h = mix64(sums * _POLY + lengths.astype(np.uint64) + _GOLDEN)
    h[h == 0] = 1
    return h


class KeyTable:
    """An open-addressing hash table from nonzero uint64 hashes to int32 codes.

    ``insert`` gives new hashes the next codes (0, 1, 2, ... in insertion order) and returns the
    code of every hash; ``lookup`` returns the code or -1; ``slots`` exposes the probe arrays.
    """

    def __init__(self, capacity: int = 1024):
        cap = 1 << max(4, int(capacity - 1).bit_length())
        self._keys = np.zeros(cap, dtype=np.uint64)
        self._codes = np.full(cap, -1, dtype=np.int32)
        self._by_code = np.zeros(max(16, capacity), dtype=np.uint64)  # hash of code i, for regrowth
        self.size = 0

    @property
    def capacity(self) -> int:
        return len(self._keys)

    def nbytes(self) -> int:
        return self._keys.nbytes + self._codes.nbytes + self._by_code.nbytes

    def _probe(self, hashes: np.ndarray) -> np.ndarray:
        """The slot of every hash, claiming one for each absent hash (key written, code left
        negative); ``insert`` numbers them. (``lookup`` has its own read-only loop.)"""
        keys, codes = self._keys, self._codes
        mask = len(keys) - 1
        found = np.full(len(hashes), -1, dtype=np.int64)
        pending = np.arange(len(hashes))
        slot = (hashes & np.uint64(mask)).astype(np.int64)
        while pending.size:
            h = hashes[pending]
            k = keys[slot]
            hit = k == h
            empty = k == 0
            done = hit.copy()
            found[pending[hit]] = slot[hit]
            if empty.any():
                # several new keys may want one empty slot: each writes its mark into the slot's
                # code and the one whose mark stays wins; the others look again next round (and
                # move on, the slot being taken). Marks are negative: codes come later.
                cand = np.flatnonzero(empty)
                mark = -2 - pending[cand]
                codes[slot[cand]] = mark
                win = cand[codes[slot[cand]] == mark]
                keys[slot[win]] = h[win]
                found[pending[win]] = slot[win]
                done[win] = True
            advance = ~(hit | empty)  # occupied by another key: probe the next slot
            slot = np.where(advance, (slot + 1) & mask, slot)
            keep = ~done
            pending, slot = pending[keep], slot[keep]
        return found

    def _grow_for(self, extra: int) -> None:
        need = self.size + extra
        if need > len(self._by_code):
            grown = np.zeros(max(need, 2 * len(self._by_code)), dtype=np.uint64)
            grown[: self.size] = self._by_code[: self.size]
            self._by_code = grown
        if need * 2 <= len(self._keys):
            return
        cap = len(self._keys)
        while need * 2 > cap:
            cap *= 2
        self._keys = np.zeros(cap, dtype=np.uint64)
        self._codes = np.full(cap, -1, dtype=np.int32)
        self._rebuild()

    def _rebuild(self) -> None:
        """Place every key (``_by_code``) into the new, empty slot arrays, codes unchanged.

        Without probing: in the order of their home slots, each key takes the first slot at or after
        its home that the keys before it left free, ``slot[i] = i + max_{j <= i}(home[j] - j)``, a
        running maximum. Every slot between a key's home and its slot is then taken, which is all
        linear probing needs (the layout may differ from inserting one by one; the codes do not).
        The few keys pushed past the last slot wrap around through :meth:`_probe`."""
        hashes = self._by_code[: self.size]
        mask = len(self._keys) - 1
        home = (hashes & np.uint64(mask)).astype(np.int64)
        order = np.argsort(home, kind="stable")
        rank = np.arange(len(order), dtype=np.int64)
        slot = rank + np.maximum.accumulate(home[order] - rank) if len(order) else rank
        fits = slot <= mask
        self._keys[slot[fits]] = hashes[order[fits]]
        self._codes[slot[fits]] = order[fits].astype(np.int32)
        wrapped = order[~fits]
        if wrapped.size:
            self._codes[self._probe(hashes[wrapped])] = wrapped.astype(np.int32)

    def insert(self, hashes: np.ndarray) -> np.ndarray:
        """Codes for ``hashes`` (which must be distinct), adding the ones not yet present;
        new keys are numbered in their order in ``hashes``."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        self._grow_for(len(hashes))
        slots = self._probe(hashes)
        codes = self._codes[slots]
        new = np.flatnonzero(codes < 0)
        codes[new] = np.arange(self.size, self.size + len(new))
        self._codes[slots[new]] = codes[new]
        self._by_code[self.size: self.size + len(new)] = hashes[new]
        self.size += len(new)
        return codes.astype(np.int32)

    def hashes(self) -> np.ndarray:
        """The hash of every code, in code order."""
        return self._by_code[: self.size]

    def slots(self) -> tuple[np.ndarray, np.ndarray]:
        """The open-addressing arrays, for a reader that probes one key at a time (the online
        lane): ``keys`` uint64[capacity] (0 = empty slot) and ``codes`` int32[capacity]. A hash h
        is found by linear probing from slot ``h & (capacity - 1)``: the first slot holding h
        gives its code, an empty slot before it means absent. Not to be written."""
        return self._keys, self._codes

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """Codes for ``hashes`` (nonzero uint64[N]) -> int32[N]; -1 where absent.

        Read-only, so simpler than :meth:`_probe`: every hash steps along its probe sequence in
        whole-array operations until it meets itself (found) or an empty slot (absent). Linear
        probing leaves a few long runs: once at most ``_SCALAR_PROBES`` hashes are still probing,
        they finish one at a time in Python (a round of array operations costs as much as
        stepping a dozen keys alone, and the longest run among a thousand keys is often 10-20)."""
        hashes = np.asarray(hashes, dtype=np.uint64)
        keys = self._keys
        mask = len(keys) - 1
        slot = (hashes & np.uint64(mask)).astype(np.intp)
        seen = keys[slot]
        busy = np.flatnonzero((seen != hashes) & (seen != 0))  # occupied by another key: probe on
        while busy.size > _SCALAR_PROBES:
            step = (slot[busy] + 1) & mask
            slot[busy] = step
            seen[busy] = keys[step]
            busy = busy[(seen[busy] != hashes[busy]) & (seen[busy] != 0)]
        for i in busy.tolist():
            h, s = hashes.item(i), (slot.item(i) + 1) & mask
            while True:
                k = keys.item(s)
                if k == h or k == 0:
                    break
                s = (s + 1) & mask
            slot[i], seen[i] = s, k
        return np.where(seen == hashes, self._codes[slot], np.int32(-1)).astype(np.int32, copy=False)


#: a lookup finishes the last probing keys one at a time when at most this many are left
_SCALAR_PROBES = 64


class StackedTables:
    """Several KeyTables probed as one: their slot arrays copied end to end, so that k columns of
    n hashes are looked up in one set of whole-array rounds instead of k (a request of a thousand
    rows pays numpy's per-call costs once, not once per column). The same codes as each table's
    :meth:`KeyTable.lookup` (tested). A copy: build it for tables that no longer change, and only
    when their slots are few (:data:`STACK_MAX_SLOTS`)."""

    def __init__(self, tables: list[KeyTable]):
        self.tables = list(tables)
        self._keys = np.concatenate([t.slots()[0] for t in tables])
        self._codes = np.concatenate([t.slots()[1] for t in tables])
        sizes = np.array([t.capacity for t in tables], dtype=np.intp)
        self._offsets = (np.cumsum(sizes) - sizes)[:, None]  # [k, 1]
        self._masks = (sizes - 1)[:, None]

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """Codes int32[k, n] for hashes uint64[k, n] (row j through table j); -1 where absent."""
        keys, offsets, masks = self._keys, self._offsets, self._masks
        local = (hashes & masks.astype(np.uint64)).astype(np.intp)  # slot within its own table
        flat_hashes, flat_local = hashes.ravel(), local.ravel()
        flat_offsets = np.broadcast_to(offsets, hashes.shape).ravel()
        flat_masks = np.broadcast_to(masks, hashes.shape).ravel()
        seen = keys[flat_local + flat_offsets]
        busy = np.flatnonzero((seen != flat_hashes) & (seen != 0))
        while busy.size > _SCALAR_PROBES:
            step = (flat_local[busy] + 1) & flat_masks[busy]
            flat_local[busy] = step
            seen[busy] = keys[step + flat_offsets[busy]]
            busy = busy[(seen[busy] != flat_hashes[busy]) & (seen[busy] != 0)]
        for i in busy.tolist():
            h, mask, offset = flat_hashes.item(i), flat_masks.item(i), flat_offsets.item(i)
            s = (flat_local.item(i) + 1) & mask
            while True:
                k = keys.item(s + offset)
                if k == h or k == 0:
                    break
                s = (s + 1) & mask
            flat_local[i], seen[i] = s, k
        codes = np.where(seen == flat_hashes, self._codes[flat_local + flat_offsets], np.int32(-1))
        return codes.astype(np.int32, copy=False).reshape(hashes.shape)


#: the most slots (12 bytes each: key and code) a StackedTables copies: 48 MiB
STACK_MAX_SLOTS = 1 << 22
