"""KeyTable (features/keytable.py): inserts, lookups and regrowth against a dict, including keys
crowded onto a few home slots and past the last slot (the rebuild's wrap-around)."""

from __future__ import annotations

import numpy as np
import pytest

from ctrlab.features.keytable import KeyTable


def _check(table: KeyTable, model: dict[int, int], absent: np.ndarray) -> None:
    keys = np.array(list(model), dtype=np.uint64)
    np.testing.assert_array_equal(table.lookup(keys), np.array(list(model.values()), dtype=np.int32))
    assert (table.lookup(absent) == -1).all()
    np.testing.assert_array_equal(table.hashes(), keys)  # code i's hash, in code order
    slot_keys, slot_codes = table.slots()
    filled = slot_keys != 0
    assert filled.sum() == len(model) and sorted(slot_codes[filled].tolist()) == list(range(len(model)))
    # linear probing's invariant, checked one key at a time as the online lane probes
    mask = len(slot_keys) - 1
    for h, code in list(model.items())[:: max(1, len(model) // 500)]:
        s = h & mask
        while slot_keys[s] != h:
            assert slot_keys[s] != 0, "an empty slot between a key's home and its slot"
            s = (s + 1) & mask
        assert slot_codes[s] == code


@pytest.mark.parametrize("crowded", [False, True])
def test_inserts_and_regrowth_match_a_dict(crowded):
    rng = np.random.default_rng(7)
    table, model = KeyTable(16), {}
    for _ in range(40):
        batch = rng.integers(1, 2**63, size=int(rng.integers(1, 60 if crowded else 3000)), dtype=np.uint64)
        if crowded:  # homes on the last 3 slots of any table size: one long run that wraps
            batch = (batch << np.uint64(20)) | np.uint64((1 << 20) - 1 - (int(batch[0]) % 3))
        batch = np.unique(np.concatenate([batch, np.array(list(model)[:50], dtype=np.uint64)]))
        rng.shuffle(batch)
        expected = [model.setdefault(int(h), len(model)) for h in batch.tolist()]
        np.testing.assert_array_equal(table.insert(batch), np.array(expected, dtype=np.int32))
    absent = rng.integers(1, 2**63, size=1000, dtype=np.uint64)
    absent = absent[~np.isin(absent, np.array(list(model), dtype=np.uint64))]
    assert table.capacity >= 2 * len(model) > (2000 if crowded else 50_000)
    _check(table, model, absent)
