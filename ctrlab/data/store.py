"""The encoded on-disk store: one directory, memory-mapped .npy arrays per split.

    STORE/
      meta.json          rows, positive rate, vocabulary sizes, OOV and missing rates, skipped
                         lines, sources (size, sha256), the feature spec
      pipeline.json      the fitted FeaturePipeline
      config.yaml        the resolved config that made it
      train/ valid/ test/
        dense.npy   float32[N, dense_width] (numeric features, then any list weights)
        sparse.npy  int32[N, sparse_width]  (single-valued fields, then list blocks: spec.lists)
        label.npy   uint8[N], or uint8[N, T] with several labels (meta.json "tasks": their
                    names; MISSING_LABEL where a row's label is missing)

A sharded split (written by ``prepare --engine ray``, :mod:`ctrlab.data.ray_engine`; a copy:
``ctrlab.data.shards.shard_store``) keeps its arrays as shards instead, read as one split::

      train/shards/00000/{dense.npy,sparse.npy,label.npy}    the split's first rows_0 rows
      train/shards/00001/...                                 the next rows_1 rows, ...
      meta.json  "splits": {"train": {"rows": N, "positives": ..., "positive_rate": ...,
                                      "shards": [rows_0, rows_1, ...]}, ...}

A split is sharded when its meta.json entry has "shards" (row counts, in order, summing to
"rows"); its arrays then live only under ``SPLIT/shards/NNNNN/`` (5 digits, from 00000), each
with the dtypes and widths of a plain split, and the shards concatenated in order are the
split's rows. :meth:`Store.split` gives them as one split (:class:`ctrlab.data.shards.ConcatRows`,
memory maps unread until indexed); distributed training gives rank r of W the shards r, r+W, ...
only (:class:`ctrlab.data.batches.BatchIterator`).

A partitioned store (``ctrlab prepare --partition``, ``--append``; layout and policy in
``ctrlab.data.append``) holds ``partitions/NAME/`` with the same three arrays instead of the
splits, and ``vocab/`` with its versioned pipeline, vocabulary state and id changes.

Arrays are ordinary .npy files (``np.load(path, mmap_mode="r")`` reads them), written by
appending rows and fixing the header's row count at the end. ``prepare`` builds a store beside
its target and swaps it in whole; :class:`Store` verifies what it opens against meta.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..features.pipeline import FeaturePipeline
from ..fields import OOV_ID, FeatureSpec
from ..fileio import recover_dir
from .shards import SHARDS_DIR, ConcatRows, shard_dir

SPLITS = ("train", "valid", "test")
_HEADER_BYTES = 128  # fixed .npy header size, so the row count can be rewritten in place


class NpyAppender:
    """Write a .npy file row block by row block without knowing the row count in advance.

    The header has a fixed size (``HEADER_BYTES``), so the data starts at that offset."""

    HEADER_BYTES = _HEADER_BYTES

    def __init__(self, path: str | os.PathLike, dtype: np.dtype, row_shape: tuple[int, ...] = ()):
        self.path = Path(path)
        self.dtype = np.dtype(dtype)
        self.row_shape = tuple(row_shape)
        self.rows = 0
        self._fh = open(self.path, "wb")
        self._fh.write(self._header(0))

    def _header(self, rows: int) -> bytes:
        desc = {"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                "shape": (rows, *self.row_shape)}
        text = repr(desc).encode("latin1")
        prefix = b"\x93NUMPY\x01\x00"
        pad = _HEADER_BYTES - len(prefix) - 2 - len(text) - 1
        if pad < 0:
            raise ValueError("npy header too long")
        body = text + b" " * pad + b"\n"
        return prefix + len(body).to_bytes(2, "little") + body

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=self.dtype)
        if block.shape[1:] != self.row_shape:
            raise ValueError(f"{self.path}: block of shape {block.shape} does not fit rows of shape {self.row_shape}")
        self._fh.write(block.data)
        self.rows += block.shape[0]

    def close(self) -> None:
        if self._fh.closed:
            return
        try:
            self._fh.seek(0)
            self._fh.write(self._header(self.rows))
        finally:
            self._fh.close()

    @staticmethod
    def rows_in(path: str | os.PathLike) -> int:
        """The row count recorded in a .npy header (without reading the data)."""
        return read_npy_shape(path)[0]


#: in a several-label store's label.npy: this row has no label for this task (not counted for it)
MISSING_LABEL = 255


@dataclass
class SplitArrays:
    """One split's arrays (memory-mapped, read-only)."""

    dense: np.ndarray  # float32[N, n_dense]
    sparse: np.ndarray  # int32[N, n_sparse]
    label: np.ndarray  # uint8[N], or uint8[N, T] (several tasks; MISSING_LABEL = missing)
    where: str = "split"  # what to call it in messages, e.g. "STORE: the train split"
    shards: tuple[int, ...] = ()  # a sharded split: each shard's row count, in order (the arrays: ConcatRows)

    def __len__(self) -> int:
        return int(self.label.shape[0])


class StoreError(ValueError):
    """A store directory that is incomplete or does not match its own meta.json."""


class Store:
    """Read access to a prepared store directory, verified on opening: meta.json and pipeline.json
    parse, and every split's arrays (every shard's, for a sharded split) have the dtype, columns and
    row count meta.json records."""

    ARRAYS = {"dense": np.float32, "sparse": np.int32, "label": np.uint8}

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        recover_dir(self.path)  # a swap that died half-way leaves the previous store beside it
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.path}: not a ctrlab store (no meta.json); run `ctrlab prepare` first")
        self.meta: dict[str, Any] = self._read_json(meta_path)
        try:
            spec = self.spec
            splits = {name: int(self.meta["splits"][name]["rows"]) for name in self.meta["splits"]}
            tasks = self.tasks
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise StoreError(f"{meta_path}: not a valid store description (missing or bad {exc}); "
                             "prepare the store again") from None
        self._read_json(self.path / "pipeline.json")  # parses, or says which file is damaged
        for name, rows in splits.items():
            if name not in SPLITS:
                raise StoreError(f"{meta_path}: unknown split {name!r}")
            if rows > 0:
                for folder, shard_rows in self._array_folders(name):
                    self._verify_split(folder, shard_rows, spec.dense_width, spec.sparse_width, len(tasks))
        if self.partitioned:
            try:
                parts = {str(p["name"]): int(p["rows"]) for p in self.meta["partitions"]}
                int(self.meta["vocab_version"])
            except (KeyError, TypeError, ValueError) as exc:
                raise StoreError(f"{meta_path}: not a valid partitioned store description (missing or bad {exc})") from None
            if not (self.path / "vocab" / f"pipeline-v{self.vocab_version:04d}.json").is_file():
                raise StoreError(f"{self.path}: vocab/pipeline-v{self.vocab_version:04d}.json is missing; the store "
                                 "is damaged")
            for name, rows in parts.items():
                self._verify_split(f"partitions/{name}", rows, spec.dense_width, spec.sparse_width, len(tasks))
        self._pipeline: FeaturePipeline | None = None

    def _read_json(self, path: Path) -> dict[str, Any]:
        if not path.is_file():
            raise StoreError(f"{path}: missing; {self.path} is not a complete store (prepare it again)")
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StoreError(f"{path}: damaged ({exc}); prepare the store again") from None
        if not isinstance(data, dict):
            raise StoreError(f"{path}: damaged (not a JSON object); prepare the store again")
        return data

    def _array_folders(self, name: str) -> list[tuple[str, int]]:
        """``(folder relative to the store, rows)`` of each folder holding split ``name``'s arrays: the
        split's own, or its shards' in order (meta.json "shards", which must sum to "rows")."""
        entry = self.meta["splits"][name]
        if "shards" not in entry:
            return [(name, int(entry["rows"]))]
        try:
            shards = [int(rows) for rows in entry["shards"]]
        except (TypeError, ValueError):
            shards = None
        if not shards or sum(shards) != int(entry["rows"]) or min(shards) < 0:
            raise StoreError(f"{self.path / 'meta.json'}: the {name} split's \"shards\" {entry['shards']!r} are not "
                             f"row counts summing to its {entry['rows']} rows; the store is damaged")
        folders = [shard_dir(name, k) for k in range(len(shards))]
        root = self.path / name / SHARDS_DIR
        extra = sorted(set(root.iterdir()) - {self.path / f for f in folders}) if root.is_dir() else []
        if extra:
            raise StoreError(f"{extra[0]}: a shard meta.json does not list (it records {len(shards)} {name} shards); "
                             "the store is damaged")
        return [(str(folder), rows) for folder, rows in zip(folders, shards)]

    def _verify_split(self, name: str, rows: int, n_dense: int, n_sparse: int, n_tasks: int) -> None:
        """Each array of the split (``name``: a split, ``SPLIT/shards/NNNNN`` or ``partitions/NAME``): the recorded dtype,
        ``rows`` rows, the spec's columns, one label per task (several tasks) and a file long
        enough to hold them."""
        labels = (rows, n_tasks) if n_tasks > 1 else (rows,)
        expected = {"dense": (rows, n_dense), "sparse": (rows, n_sparse), "label": labels}
        for array, dtype in self.ARRAYS.items():
            path = self.path / name / f"{array}.npy"
            try:
                shape, actual_dtype, data_bytes = npy_layout(path)
            except (OSError, ValueError, SyntaxError) as exc:
                raise StoreError(f"{path}: unreadable ({exc}); the store is damaged, prepare it again") from None
            if actual_dtype != np.dtype(dtype) or shape != expected[array]:
                raise StoreError(f"{path}: shape {shape} {actual_dtype}, but meta.json records {rows} {name} rows "
                                 f"(expected shape {expected[array]} {np.dtype(dtype)}); the store is damaged or "
                                 "was changed after prepare: prepare it again")
            needed = int(np.prod(shape)) * np.dtype(dtype).itemsize
            if data_bytes < needed:
                raise StoreError(f"{path}: truncated ({data_bytes} of {needed} data bytes for {rows} rows); the "
                                 "store is damaged: prepare it again")

    # partitions ----------------------------------------------------------------------------
    @property
    def partitioned(self) -> bool:
        """A store of named partitions (``ctrlab prepare --partition`` / ``--append``)."""
        return self.meta.get("layout") == "partitions"

    @property
    def partitions(self) -> list[str]:
        """The partitions' names, in the order they were added (empty for a split store)."""
        return [str(p["name"]) for p in self.meta.get("partitions", [])]

    def partition_meta(self, name: str) -> dict[str, Any]:
        for entry in self.meta.get("partitions", []):
            if entry["name"] == name:
                return entry
        raise ValueError(f"{self.path}: no partition {name!r} (partitions: {', '.join(self.partitions) or 'none'})")

    def partition(self, name: str) -> SplitArrays:
        """A partition's arrays (memory-mapped) as stored: ids of its own vocabulary version
        (:meth:`current_ids` maps those changed since to OOV)."""
        self.partition_meta(name)
        folder = self.path / "partitions" / name
        return SplitArrays(np.load(folder / "dense.npy", mmap_mode="r"), np.load(folder / "sparse.npy", mmap_mode="r"),
                           np.load(folder / "label.npy", mmap_mode="r"), where=f"{self.path}: partition {name}")

    @property
    def vocab_version(self) -> int:
        """The latest vocabulary version (= the number of partitions; 0 for a split store)."""
        return int(self.meta.get("vocab_version", 0))

    def vocab_sizes(self, version: int | None = None) -> dict[str, int]:
        """Per vocabulary (by name, see ``FeaturePipeline.vocabularies``), its number of ids
        (reserved ones included) at ``version`` (default: the latest): the embedding rows a
        model trained at that version has."""
        version = self.vocab_version if version is None else int(version)
        for entry in self.meta.get("partitions", []):
            if int(entry["vocab_version"]) == version:
                return {k: int(v) for k, v in entry["vocab_sizes"].items()}
        raise ValueError(f"{self.path}: no vocabulary version {version} (1..{self.vocab_version})")

    def spec_at(self, version: int) -> FeatureSpec:
        """The feature spec a partition of ``version`` was encoded with."""
        for entry in self.meta.get("partitions", []):
            if int(entry["vocab_version"]) == int(version):
                return FeatureSpec.from_dict(entry["spec"])
        raise ValueError(f"{self.path}: no vocabulary version {version} (1..{self.vocab_version})")

    def id_changes(self, from_version: int, to_version: int | None = None) -> dict[str, np.ndarray]:
        """Per vocabulary, the ids (sorted int32) whose meaning changed after ``from_version`` up to
        ``to_version`` (default: the latest): retired (their value now maps to OOV) or reused (now
        a new value's). A model trained at ``from_version`` continues at ``to_version`` by resetting
        these embedding rows (and growing each table to :meth:`vocab_sizes`); ids appended are new
        rows, not listed here."""
        to_version = self.vocab_version if to_version is None else int(to_version)
        changed: dict[str, list[np.ndarray]] = {}
        for version in range(int(from_version) + 1, to_version + 1):
            path = self.path / "vocab" / f"changes-v{version:04d}.npz"
            with np.load(path) as data:
                for key in data.files:
                    changed.setdefault(key.split("::")[0], []).append(data[key])
        return {name: np.unique(np.concatenate(parts)).astype(np.int32) for name, parts in changed.items()}

    def current_ids(self, partition: str, sparse: np.ndarray) -> np.ndarray:
        """A block of ``partition``'s sparse ids (rows of :meth:`partition`'s ``sparse``) as the
        latest vocabulary reads them: ids retired or reused since the partition's version become
        OOV (a copy; the block itself when nothing changed). How an old partition is trained on
        after ids were reused."""
        version = int(self.partition_meta(partition)["vocab_version"])
        changes = {k: v for k, v in self.id_changes(version).items() if len(v)}
        if not changes:
            return sparse
        out = np.array(sparse, dtype=np.int32, copy=True)
        for j, vocab in enumerate(self.meta.get("column_vocabularies", [])):
            if vocab in changes:
                col = out[:, j]
                col[np.isin(col, changes[vocab])] = OOV_ID
        return out

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.meta["spec"])

    @property
    def tasks(self) -> list[str]:
        """The label columns' names, in task order: one (the file's label column) for a
        single-label store, several for a multi-task one (label.npy ``[N, T]``)."""
        tasks = self.meta.get("tasks")
        if tasks is None:
            return [str(self.meta.get("schema", {}).get("label") or "label")]
        if not isinstance(tasks, list) or len(tasks) < 2 or not all(isinstance(t, str) for t in tasks):
            raise ValueError(f"tasks: expected a list of 2+ names, got {tasks!r}")
        return tasks

    @property
    def multi_task(self) -> bool:
        return len(self.tasks) > 1

    @property
    def pipeline(self) -> FeaturePipeline:
        if self._pipeline is None:
            path = (self.path / "vocab" / f"pipeline-v{self.vocab_version:04d}.json" if self.partitioned
                    else self.path / "pipeline.json")  # (a partitioned store's pipeline.json is a copy)
            self._pipeline = FeaturePipeline.load(path)
        return self._pipeline

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if self.meta["splits"].get(s, {}).get("rows", 0) > 0]

    def has_split(self, name: str) -> bool:
        return name in self.splits

    def split(self, name: str) -> SplitArrays:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; valid: {', '.join(SPLITS)}")
        if not self.has_split(name):
            raise ValueError(f"{self.path}: the store has no {name!r} rows (it has {', '.join(self.splits) or 'none'})")
        folders = self._array_folders(name)
        maps = [[np.load(self.path / folder / f"{array}.npy", mmap_mode="r") for folder, _ in folders]
                for array in self.ARRAYS]
        if "shards" not in self.meta["splits"][name]:
            return SplitArrays(*(m[0] for m in maps), where=f"{self.path}: the {name} split")
        return SplitArrays(*(ConcatRows(m) for m in maps), where=f"{self.path}: the {name} split",
                           shards=tuple(rows for _, rows in folders))


def npy_layout(path: str | os.PathLike) -> tuple[tuple[int, ...], np.dtype, int]:
    """A .npy file's shape and dtype (from its header) and the number of data bytes after it."""
    with open(path, "rb") as fh:
        fmt = np.lib.format
        version = fmt.read_magic(fh)
        read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, fortran_order, dtype = read_header(fh)
        if fortran_order:
            raise ValueError("Fortran-ordered array")
        return tuple(shape), dtype, os.fstat(fh.fileno()).st_size - fh.tell()


def read_npy_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape recorded in a .npy header (without reading the data)."""
    return npy_layout(path)[0]
