"""Training on a partitioned store (``ctrlab prepare --partition`` / ``--append``, issue 17).

:class:`PartitionedStore` puts train / valid / test splits over a partitioned store, so the
trainer, the evaluation and ``ctrlab eval`` read it as they read a split store:

* ``train``: the partitions ``data.partitions`` (default: every partition but the valid and test
  ones), concatenated in order;
* ``valid``: ``data.valid_partition``; ``test``: ``data.test_partition`` (none when unset).

Every partition is read through :meth:`Store.current_ids` (ids retired or reused since the
partition was encoded become OOV), so an old partition never feeds a reused id's row with an old
value. A split of one unchanged partition is its memory map; several partitions (or one with
changed ids) are read into memory.

:func:`ids_at_version` reads a partition as a model trained at an OLDER vocabulary version sees it
(ids it does not know, or whose meaning changed in between, become OOV): how a parent model scores
the next partition (progressive validation) and how ``ctrlab eval --partition`` scores any
partition with a run trained before the store grew.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from ..config import ConfigError
from ..data.store import SplitArrays, Store
from ..fields import OOV_ID, FeatureSpec


def spec_fingerprint(spec: FeatureSpec) -> str:
    return hashlib.sha256(json.dumps(spec.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def ids_at_version(store: Store, partition: str, sparse: np.ndarray, version: int) -> np.ndarray:
    """A block of ``partition``'s sparse ids as a model trained at vocabulary ``version`` reads
    them: ids changed (retired or reused) between the partition's version and ``version``, and ids
    beyond the sizes at ``version``, become OOV. ``version`` = the latest: :meth:`Store.current_ids`."""
    version = int(version)
    if version == store.vocab_version:
        return store.current_ids(partition, sparse)
    own = int(store.partition_meta(partition)["vocab_version"])
    lo, hi = min(own, version), max(own, version)
    changes = {k: v for k, v in store.id_changes(lo, hi).items() if len(v)} if hi > lo else {}
    sizes = np.asarray(store.spec_at(version).column_vocab_sizes)
    out = np.array(sparse, dtype=np.int32, copy=True)
    vocabularies = store.meta.get("column_vocabularies", [])
    for j in range(out.shape[1]):
        col = out[:, j]
        col[col >= sizes[j]] = OOV_ID
        vocab = vocabularies[j] if j < len(vocabularies) else None
        if vocab in changes:
            col[np.isin(col, changes[vocab])] = OOV_ID
    return out


def read_partitions(store: Store, names: list[str], version: int | None = None) -> SplitArrays:
    """The partitions ``names`` concatenated in order, ids as ``version`` (default: the latest)
    reads them."""
    version = store.vocab_version if version is None else int(version)
    parts = [store.partition(name) for name in names]
    sparse = [ids_at_version(store, name, p.sparse, version) for name, p in zip(names, parts)]
    where = f"{store.path}: partition{'s' if len(names) > 1 else ''} {', '.join(names)}"
    if len(parts) == 1:
        return SplitArrays(parts[0].dense, sparse[0], parts[0].label, where=where)
    return SplitArrays(np.concatenate([np.asarray(p.dense) for p in parts]),
                       np.concatenate([np.asarray(s) for s in sparse]),
                       np.concatenate([np.asarray(p.label) for p in parts]), where=where)


def check_partitions(store: Store, names: list[str], what: str) -> None:
    unknown = [n for n in names if n not in store.partitions]
    if unknown:
        raise ConfigError(f"{what}: {store.path} has no partition {', '.join(map(repr, unknown))} (partitions: "
                          f"{', '.join(store.partitions) or 'none'})")


class PartitionedStore:
    """A partitioned :class:`Store` seen as train / valid / test splits (module docstring);
    everything else is the store's (``spec``, ``pipeline``, ``tasks``, ``meta``, ``partition``...)."""

    def __init__(self, store: Store, train: list[str], valid: str | None = None, test: str | None = None):
        if not store.partitioned:
            raise ConfigError(f"{store.path} is not a partitioned store")
        check_partitions(store, list(train) + [p for p in (valid, test) if p], "data.partitions")
        if not train:
            raise ConfigError(f"{store.path}: no partition to train on")
        if len(set(train)) != len(train):
            raise ConfigError(f"data.partitions names a partition twice: {', '.join(train)}")
        for held, key in ((valid, "data.valid_partition"), (test, "data.test_partition")):
            if held is not None and held in train:
                raise ConfigError(f"{key}: {held!r} is also a training partition (data.partitions); hold it out")
        self.store = store
        self.train_partitions = list(train)
        self.valid_partition = valid
        self.test_partition = test
        self._cache: dict[str, SplitArrays] = {}

    def __getattr__(self, name: str) -> Any:  # (only what this class does not define)
        return getattr(self.__dict__["store"], name)

    @property
    def partitions_of(self) -> dict[str, list[str]]:
        return {"train": self.train_partitions, "valid": [self.valid_partition] if self.valid_partition else [],
                "test": [self.test_partition] if self.test_partition else []}

    @property
    def splits(self) -> list[str]:
        return [s for s, names in self.partitions_of.items() if names]

    def has_split(self, name: str) -> bool:
        return name in self.splits

    def split(self, name: str) -> SplitArrays:
        if not self.has_split(name):
            raise ValueError(f"{self.store.path}: no {name!r} partition chosen (data.partitions / "
                             "data.valid_partition / data.test_partition)")
        if name not in self._cache:
            self._cache[name] = read_partitions(self.store, self.partitions_of[name])
        return self._cache[name]


def partition_view(store: Store, data: Any, default_train: list[str] | None = None) -> PartitionedStore | Store:
    """The store as the run reads it: a :class:`PartitionedStore` per ``data.partitions`` /
    ``valid_partition`` / ``test_partition`` for a partitioned store; a split store as it is
    (refused with any of those keys set)."""
    keys = {"data.partitions": data.partitions, "data.valid_partition": data.valid_partition,
            "data.test_partition": data.test_partition}
    if not store.partitioned:
        given = [k for k, v in keys.items() if v]
        if given:
            raise ConfigError(f"{', '.join(given)}: {store.path} is not a partitioned store (it has "
                              f"{', '.join(store.splits) or 'no'} splits); partitions come from `ctrlab prepare FILE "
                              "--out STORE --partition NAME` and `ctrlab prepare --append STORE FILE`")
        return store
    held = {data.valid_partition, data.test_partition} - {None}
    if data.partitions:
        train = list(data.partitions)
    elif default_train is not None:
        train = [p for p in default_train if p not in held]
    else:
        train = [p for p in store.partitions if p not in held]
    return PartitionedStore(store, train, data.valid_partition, data.test_partition)
