"""Pieces of big text files, for the Ray engine (:mod:`ctrlab.data.ray_engine`): one plain-text file
cut at line boundaries into byte ranges that tasks read side by side, and what a piece's reader
reports (bad lines, skipped-line examples, sources) mapped back to the whole file's lines.

Every format ctrlab reads from text is one record per line, so a cut after a newline never splits
a record. gzip files and Parquet are read whole (a gzip stream cannot be entered in the middle). A
piece after the first gets the file's header line in front when the format has one, so that it
reads like the file. Line numbers: piece k starts at line ``first_line`` of the file (one plus the
lines of the pieces before it, which the row-counting tasks count).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from .readers import DataError, SkipReport, _is_gzip

PIECE_BYTES = 256 << 20  # plain-text files larger than this are read as several pieces
_COPY_BYTES = 8 << 20


@dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of ``path`` (end None: to its end), the ``index``-th piece of its file."""

    path: Path
    start: int = 0
    end: int | None = None
    index: int = 0
    header: bytes = b""  # the file's header line, read in front of a piece after the first

    @property
    def whole(self) -> bool:
        return self.start == 0 and self.end is None


def plan_pieces(path: Path, fmt: str, has_header: bool, piece_bytes: int | None = None) -> list[Piece]:
    """``path`` as pieces of about ``piece_bytes`` (default :data:`PIECE_BYTES`), cut after newlines;
    one whole piece for small files, gzip and Parquet."""
    piece_bytes = piece_bytes or PIECE_BYTES
    size = path.stat().st_size
    if fmt == "parquet" or size <= piece_bytes or _is_gzip(path):
        return [Piece(path)]
    cuts = [0]
    with open(path, "rb") as fh:
        header = fh.readline() if has_header else b""
        for target in range(piece_bytes, size, piece_bytes):
            fh.seek(max(target, cuts[-1] + 1, len(header)) - 1)
            fh.readline()  # to the end of the line holding byte target - 1: the next line starts here
            if fh.tell() >= size:
                break
            if fh.tell() > cuts[-1]:
                cuts.append(fh.tell())
    ends = cuts[1:] + [None]
    return [Piece(path, a, b, k, header if k else b"") for k, (a, b) in enumerate(zip(cuts, ends))]


def piece_file(piece: Piece, folder: Path) -> Path:
    """A path that reads as the piece: the file itself, or a copy of its bytes (header first) in
    ``folder``."""
    if piece.whole:
        return piece.path
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"piece-{piece.index:05d}{piece.path.suffix}"
    with open(target, "wb") as dst:
        dst.write(piece.header)
        for block in _blocks(piece):
            dst.write(block)
    return target


def count_lines(piece: Piece) -> int:
    """Newlines in the piece's own bytes (its header copy not counted)."""
    if piece.whole:
        return 0  # (a whole file needs no offset)
    return sum(block.count(b"\n") for block in _blocks(piece))


def _blocks(piece: Piece) -> Iterator[bytes]:
    """The piece's own bytes, a block at a time."""
    with open(piece.path, "rb") as fh:
        fh.seek(piece.start)
        left = None if piece.end is None else piece.end - piece.start
        while left is None or left > 0:
            block = fh.read(_COPY_BYTES if left is None else min(_COPY_BYTES, left))
            if not block:
                break
            yield block
            if left is not None:
                left -= len(block)


class LineMap:
    """Maps what a piece's reader says about its copy back to the file: paths and line numbers."""

    def __init__(self, piece: Piece, copy: Path, first_line: int):
        self.piece, self.copy, self.first_line = piece, str(copy), first_line
        self._example = re.compile(re.escape(self.copy) + r":(\d+)")

    def line(self, line: int) -> int:
        """The file's line number of the copy's line ``line``."""
        if self.piece.index == 0:
            return line
        return self.first_line + line - 1 - (1 if self.piece.header else 0)

    def error(self, exc: DataError) -> DataError:
        if exc.path != self.copy or self.piece.whole:
            return exc
        line = None if exc.line is None else self.line(exc.line)
        return DataError(self.piece.path, line, exc.reason, exc.field, exc.where)

    def skipped(self, report: SkipReport) -> SkipReport:
        if self.piece.whole:
            return report
        out = SkipReport(report.counts.copy(), max_examples=report.max_examples)
        out.examples = [self._example.sub(lambda m: f"{self.piece.path}:{self.line(int(m.group(1)))}", ex)
                        for ex in report.examples]
        return out


def merge_sources(entries: list[tuple[Piece, dict[str, Any]]], sha256: dict[str, str]) -> list[dict[str, Any]]:
    """The source entries of pieces (in order) as the local engine records whole files: one per file,
    rows and skipped lines summed, its size and ``sha256[path]``."""
    merged: dict[str, dict[str, Any]] = {}
    for piece, entry in entries:
        key = str(piece.path)
        if piece.whole:
            merged[key] = entry
            continue
        if key not in merged:
            merged[key] = {"path": key, "format": entry["format"], "bytes": piece.path.stat().st_size,
                           "sha256": sha256[key], "rows": 0, "skipped": 0}
        total = merged[key]
        total["rows"] += entry["rows"]
        total["skipped"] += entry["skipped"]
        for column, n in entry.get("truncated", {}).items():
            total.setdefault("truncated", {})
            total["truncated"][column] = total["truncated"].get(column, 0) + n
    return list(merged.values())


def remove_copy(piece: Piece, copy: Path) -> None:
    if not piece.whole:
        shutil.rmtree(copy.parent, ignore_errors=True)
