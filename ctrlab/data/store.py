"""The encoded on-disk store: one directory, memory-mapped .npy arrays per split.

    STORE/
      meta.json          rows, positive rate, vocabulary sizes, OOV and missing rates, skipped
                         lines, sources (size, sha256), the feature spec
      pipeline.json      the fitted FeaturePipeline
      config.yaml        the resolved config that made it
      train/ valid/ test/
        dense.npy   float32[N, n_dense]
        sparse.npy  int32[N, n_sparse]
        label.npy   uint8[N]

Arrays are ordinary .npy files (``np.load(path, mmap_mode="r")`` reads them), written by
appending rows and fixing the header's row count at the end.
"""

from __future__ import annotations

import ast
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..features.pipeline import FeaturePipeline
from ..fields import FeatureSpec

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
        self._fh.seek(0)
        self._fh.write(self._header(self.rows))
        self._fh.close()

    @staticmethod
    def rows_in(path: str | os.PathLike) -> int:
        """The row count recorded in a .npy header (without reading the data)."""
        return read_npy_shape(path)[0]


@dataclass
class SplitArrays:
    """One split's arrays (memory-mapped, read-only)."""

    dense: np.ndarray  # float32[N, n_dense]
    sparse: np.ndarray  # int32[N, n_sparse]
    label: np.ndarray  # uint8[N]

    def __len__(self) -> int:
        return int(self.label.shape[0])


class Store:
    """Read access to a prepared store directory."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        meta_path = self.path / "meta.json"
        if not meta_path.is_file():
            raise FileNotFoundError(f"{self.path}: not a ctrlab store (no meta.json); run `ctrlab prepare` first")
        with open(meta_path, encoding="utf-8") as fh:
            self.meta: dict[str, Any] = json.load(fh)
        self._pipeline: FeaturePipeline | None = None

    @property
    def spec(self) -> FeatureSpec:
        return FeatureSpec.from_dict(self.meta["spec"])

    @property
    def pipeline(self) -> FeaturePipeline:
        if self._pipeline is None:
            self._pipeline = FeaturePipeline.load(self.path / "pipeline.json")
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
        folder = self.path / name
        return SplitArrays(
            np.load(folder / "dense.npy", mmap_mode="r"),
            np.load(folder / "sparse.npy", mmap_mode="r"),
            np.load(folder / "label.npy", mmap_mode="r"),
        )


def read_npy_shape(path: str | os.PathLike) -> tuple[int, ...]:
    """The shape recorded in a .npy header (without reading the data)."""
    with open(path, "rb") as fh:
        fh.read(8)
        n = int.from_bytes(fh.read(2), "little")
        return tuple(ast.literal_eval(fh.read(n).decode("latin1"))["shape"])
