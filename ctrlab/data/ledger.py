"""Bookkeeping of what ctrlab created in a directory, so cleaning never deletes anything else.

Every directory ctrlab writes datasets into gets a small JSON ledger, ``.ctrlab-created.json``,
listing the paths (relative to that directory) ctrlab created there::

    {"version": 1,
     "entries": [{"path": "train.txt", "kind": "extracted", "time": "2024-01-01T00:00:00+00:00"}],
     "extractions": {"x.tar.gz": {"sha256": "...", "paths": ["train.txt"], "time": "..."}}}

``ctrlab data clean DIR`` (:func:`clean`) deletes only ledger entries. A ledger path that would
leave the directory (absolute, containing ``..``, or reached through a symlinked parent
directory) is never recorded and never deleted.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Iterable, Iterator

from ..fileio import write_bytes_atomic

LEDGER_NAME = ".ctrlab-created.json"
KINDS = ("archive", "extracted", "store", "synthetic")
_VERSION = 1


class LedgerError(ValueError):
    """The ledger file exists but cannot be read (corrupt JSON or unexpected layout)."""


@dataclass(frozen=True)
class CreatedEntry:
    """One ledger entry: ``path`` is relative to the ledger's directory, POSIX separators."""

    path: str
    kind: str
    time: str
    directory: Path

    @property
    def abspath(self) -> Path:
        return self.directory / self.path


# --------------------------------------------------------------------------- path safety


def _is_within(child: str, parent: str) -> bool:
    child = os.path.normcase(child)
    parent = os.path.normcase(parent)
    return child == parent or child.startswith(parent.rstrip(os.sep) + os.sep)


def _unsafe_reason(directory: Path, rel: str) -> str | None:
    """Why ``rel`` must not be touched inside ``directory`` (None when it is safe).

    Rejects empty/'.' paths, absolute paths (POSIX or Windows style), '..' components,
    the ledger itself, and paths whose parent directories resolve (through symlinks)
    outside ``directory``. The last component may itself be a symlink: deleting a
    symlink removes the link, never its target.
    """
    if not isinstance(rel, str) or not rel or "\x00" in rel:
        return "empty or invalid path"
    if rel.startswith(("/", "\\")) or PurePosixPath(rel).is_absolute() or PureWindowsPath(rel).is_absolute():
        return "absolute path"
    if PureWindowsPath(rel).drive:
        return "path with a drive letter"
    parts = [p for p in rel.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return "path is the directory itself"
    if ".." in parts:
        return "path contains '..'"
    if parts == [LEDGER_NAME]:
        return "path is the ledger itself"
    root = os.path.realpath(directory)
    parent = os.path.realpath(os.path.join(root, *parts[:-1])) if len(parts) > 1 else root
    if not _is_within(parent, root):
        return "path goes through a symlink that leaves the directory"
    return None


def _normalize(directory: Path, path: str | os.PathLike[str]) -> str:
    """Turn ``path`` (absolute inside ``directory``, or relative to it) into a safe relative POSIX path."""
    p = os.fspath(path)
    if os.path.isabs(p):
        for base, cand in (
            (os.path.abspath(directory), os.path.abspath(p)),
            (os.path.realpath(directory), os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(p))), os.path.basename(p))),
        ):
            if _is_within(cand, base) and os.path.normcase(cand) != os.path.normcase(base):
                p = os.path.relpath(cand, base)
                break
        else:
            raise ValueError(f"refusing to record {path!s}: it is outside {directory}")
    rel = "/".join(q for q in p.replace(os.sep, "/").split("/") if q not in ("", "."))
    reason = _unsafe_reason(directory, rel)
    if reason:
        raise ValueError(f"refusing to record {path!s} in {directory}: {reason}")
    return rel


# --------------------------------------------------------------------------- ledger I/O


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _ledger_path(directory: Path) -> Path:
    return directory / LEDGER_NAME


def _read(directory: Path) -> dict[str, Any]:
    lp = _ledger_path(directory)
    try:
        raw = lp.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {"version": _VERSION, "entries": [], "extractions": {}}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise LedgerError(f"{lp} is not valid JSON ({e}); fix or remove it by hand") from e
    if not isinstance(data, dict) or not isinstance(data.get("entries", []), list):
        raise LedgerError(f"{lp} has an unexpected layout; fix or remove it by hand")
    data.setdefault("version", _VERSION)
    data.setdefault("entries", [])
    if not isinstance(data.get("extractions"), dict):
        data["extractions"] = {}
    data["entries"] = [e for e in data["entries"] if isinstance(e, dict) and isinstance(e.get("path"), str)]
    return data


def _write(directory: Path, data: dict[str, Any]) -> None:
    """Replace the ledger whole (fileio: temp file beside it, fsync, rename)."""
    write_bytes_atomic(_ledger_path(directory), (json.dumps(data, indent=1, sort_keys=True) + "\n").encode())


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialize read-modify-write of the ledger between processes (best effort, POSIX flock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


# --------------------------------------------------------------------------- public API


def record_created(directory: str | os.PathLike[str], paths: Iterable[str | os.PathLike[str]] | str | os.PathLike[str], kind: str) -> list[str]:
    """Record that ctrlab created ``paths`` (files or directories) in ``directory``.

    ``paths`` are absolute paths inside ``directory`` or paths relative to it. Idempotent:
    recording a path again keeps a single entry (its kind is updated, its first time kept).
    Raises ValueError for an unknown kind or a path that escapes the directory; nothing is
    recorded in that case. Returns the recorded relative paths.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")
    d = Path(directory)
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    rels = [_normalize(d, p) for p in paths]
    if not rels:
        return []
    d.mkdir(parents=True, exist_ok=True)
    with _locked(d):
        data = _read(d)
        by_path = {e["path"]: e for e in data["entries"]}
        changed = False
        for rel in rels:
            e = by_path.get(rel)
            if e is None:
                e = {"path": rel, "kind": kind, "time": _now()}
                data["entries"].append(e)
                by_path[rel] = e
                changed = True
            elif e.get("kind") != kind:
                e["kind"] = kind
                changed = True
        if changed:
            _write(d, data)
    return rels


def list_created(directory: str | os.PathLike[str]) -> list[CreatedEntry]:
    """Ledger entries of ``directory`` that still exist (and are safe to touch), sorted by path."""
    d = Path(directory)
    out = []
    for e in _read(d)["entries"]:
        rel = e["path"]
        if _unsafe_reason(d, rel) is None and os.path.lexists(d / rel):
            out.append(CreatedEntry(rel, str(e.get("kind", "?")), str(e.get("time", "")), d))
    return sorted(out, key=lambda e: e.path)


def is_created(directory: str | os.PathLike[str], path: str | os.PathLike[str]) -> bool:
    """True when ``path`` (or a directory above it) is a ledger entry of ``directory``."""
    d = Path(directory)
    try:
        rel = _normalize(d, path)
    except ValueError:
        return False
    recorded = {e["path"] for e in _read(d)["entries"]}
    parts = rel.split("/")
    return any("/".join(parts[:i]) in recorded for i in range(1, len(parts) + 1))


def record_extraction(directory: str | os.PathLike[str], archive: str, sha256: str, paths: Iterable[str]) -> None:
    """Remember that ``archive`` (with this sha256) was fully extracted to ``paths`` (relative)."""
    d = Path(directory)
    with _locked(d):
        data = _read(d)
        data["extractions"][archive] = {"sha256": sha256, "paths": sorted(set(paths)), "time": _now()}
        _write(d, data)


def completed_extraction(directory: str | os.PathLike[str], archive: str, sha256: str) -> list[str] | None:
    """The paths of an earlier complete extraction of ``archive`` with the same sha256, if all still exist."""
    d = Path(directory)
    rec = _read(d)["extractions"].get(archive)
    if not isinstance(rec, dict) or rec.get("sha256") != sha256:
        return None
    paths = rec.get("paths") or []
    if not paths or not all(isinstance(p, str) and _unsafe_reason(d, p) is None and os.path.lexists(d / p) for p in paths):
        return None
    return list(paths)


# --------------------------------------------------------------------------- clean


def _size(path: Path) -> int:
    try:
        st = path.lstat()
    except OSError:
        return 0
    if not path.is_dir() or path.is_symlink():
        return st.st_size
    total = 0
    for root, dirs, files in os.walk(path):
        for name in files + [x for x in dirs if os.path.islink(os.path.join(root, x))]:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"  # pragma: no cover


def _unknown_items(d: Path, created: set[str]) -> list[str]:
    """Paths under ``d`` that are neither ledger entries nor inside one (directories that only
    contain created entries are descended into; others are reported as a whole)."""
    ancestors = set()
    for rel in created:
        parts = rel.split("/")
        ancestors.update("/".join(parts[:i]) for i in range(1, len(parts)))
    out: list[str] = []

    def walk(rel_dir: str) -> None:
        try:
            names = sorted(os.listdir(d / rel_dir if rel_dir else d))
        except OSError:
            return
        for name in names:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not rel_dir and name.startswith(LEDGER_NAME):
                continue  # the ledger and its temp files
            if rel in created:
                continue
            if rel in ancestors and (d / rel).is_dir() and not (d / rel).is_symlink():
                walk(rel)
            else:
                out.append(rel)

    walk("")
    return out


def _remove(path: Path) -> None:
    if path.is_symlink() or not path.is_dir():
        path.unlink()
    else:
        shutil.rmtree(path)


def clean(
    directory: str | os.PathLike[str],
    *,
    yes: bool,
    input_fn: Callable[[str], str] = input,
    print_fn: Callable[..., Any] = print,
) -> list[Path]:
    """Delete what ctrlab created in ``directory`` (ledger entries only) and return the removed paths.

    Prints the entries with their sizes, then asks for confirmation unless ``yes``. With the
    default ``input_fn`` and a non-interactive stdin, nothing is deleted without ``yes``.
    Ledger paths that would escape the directory are refused; files not in the ledger are kept.
    """
    d = Path(directory)
    if not d.is_dir():
        print_fn(f"{d}: no such directory; nothing to clean")
        return []
    try:
        data = _read(d)
    except LedgerError as e:
        print_fn(f"cannot read the ledger: {e}; nothing deleted")
        return []

    refused: list[tuple[dict[str, Any], str]] = []
    present: list[str] = []
    for e in data["entries"]:
        reason = _unsafe_reason(d, e["path"])
        if reason:
            refused.append((e, reason))
        elif os.path.lexists(d / e["path"]):
            present.append(e["path"])
    present = sorted(set(present))
    created_all = set(present)
    # An entry inside another entry that is a directory is removed with it.
    top: list[str] = []
    for rel in present:
        parts = rel.split("/")
        if not any("/".join(parts[:i]) in created_all for i in range(1, len(parts))):
            top.append(rel)
    kinds = {e["path"]: e.get("kind", "?") for e in data["entries"]}
    unknown = _unknown_items(d, created_all)

    for e, reason in refused:
        print_fn(f"refusing ledger entry {e['path']!r}: {reason} (left alone)")
    for rel in unknown:
        print_fn(f"keeping {rel}: not created by ctrlab, kept")

    def finish_ledger(removed_rels: set[str]) -> None:
        keep_paths = set()
        for e in data["entries"]:
            rel = e["path"]
            if _unsafe_reason(d, rel):
                keep_paths.add(rel)  # refused entries stay visible
            elif rel not in removed_rels and os.path.lexists(d / rel):
                keep_paths.add(rel)
        with _locked(d):
            try:
                current = _read(d)
            except LedgerError:
                current = data
            # keep entries added concurrently by another process
            current["entries"] = [
                e for e in current["entries"] if e["path"] in keep_paths or (e["path"] not in kinds)
            ]
            current["extractions"] = {
                k: v
                for k, v in current.get("extractions", {}).items()
                if isinstance(v, dict)
                and all(_unsafe_reason(d, p) is None and os.path.lexists(d / p) for p in v.get("paths", []))
            }
            if current["entries"] or current["extractions"]:
                _write(d, current)
            else:
                with contextlib.suppress(FileNotFoundError):
                    _ledger_path(d).unlink()

    if not top:
        print_fn(f"{d}: nothing created by ctrlab to delete")
        if any(not os.path.lexists(d / e["path"]) for e in data["entries"] if _unsafe_reason(d, e["path"]) is None):
            finish_ledger(set())  # drop stale entries
        return []

    sizes = {rel: _size(d / rel) for rel in top}
    print_fn(f"ctrlab created these in {d}:")
    for rel in top:
        suffix = "/" if (d / rel).is_dir() and not (d / rel).is_symlink() else ""
        print_fn(f"  {rel}{suffix}  ({kinds.get(rel, '?')}, {_human(sizes[rel])})")
    total = sum(sizes.values())
    print_fn(f"total: {len(top)} path(s), {_human(total)}")

    if not yes:
        if input_fn is input and not (sys.stdin is not None and sys.stdin.isatty()):
            print_fn("not running interactively: nothing deleted (re-run with --yes to delete)")
            return []
        try:
            answer = input_fn(f"Delete these {len(top)} path(s)? [y/N] ")
        except (EOFError, KeyboardInterrupt):
            answer = ""
        if (answer or "").strip().lower() not in ("y", "yes"):
            print_fn("no confirmation: nothing deleted")
            return []

    removed: list[Path] = []
    removed_rels: set[str] = set()
    failed = 0
    freed = 0
    for rel in top:
        if _unsafe_reason(d, rel):  # re-check right before deleting
            print_fn(f"refusing {rel}: it now escapes {d}")
            failed += 1
            continue
        try:
            _remove(d / rel)
        except OSError as exc:
            print_fn(f"could not delete {rel}: {exc}")
            failed += 1
            continue
        removed.append(d / rel)
        freed += sizes[rel]
        removed_rels.add(rel)
        removed_rels.update(p for p in present if p.startswith(rel + "/"))
    finish_ledger(removed_rels)
    msg = f"deleted {len(removed)} path(s), freed {_human(freed)}"
    if failed:
        msg += f"; {failed} could not be deleted"
    if unknown:
        msg += f"; kept {len(unknown)} path(s) not created by ctrlab"
    print_fn(msg)
    return removed
