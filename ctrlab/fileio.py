"""Writing files whole or not at all, and saying clearly when the disk is full.

Every writer in ctrlab (store, checkpoint, bundle, run records) goes through these helpers so that
an interruption or a full disk never leaves a half-written file where a reader would trust it, and
a failed write names the path it was writing instead of a library's internal message.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator, TypeVar

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}
_T = TypeVar("_T")


class DiskFullError(OSError):
    """No space left while writing ``path`` (an OSError, so the CLI reports it as an error)."""

    def __init__(self, path: str | os.PathLike, detail: str = ""):
        self.path = str(path)
        msg = f"no space left on device while writing {self.path}"
        super().__init__(errno.ENOSPC, msg + (f" ({detail})" if detail else ""))

    def __str__(self) -> str:  # OSError's default str prefixes "[Errno 28]"
        return self.strerror


def is_disk_full(exc: BaseException) -> bool:
    """True for an out-of-space error, including torch.save's C++ writer failure on a full disk."""
    if isinstance(exc, DiskFullError):
        return True
    if isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS:
        return True
    # torch's zip writer reports a short write as "[enforce fail at inline_container.cc...]
    # unexpected pos N vs M" (RuntimeError) instead of ENOSPC
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("unexpected pos" in text or "inline_container" in text
                                               or "No space left" in text)


@contextlib.contextmanager
def disk_errors(path: str | os.PathLike) -> Iterator[None]:
    """Turn an out-of-space failure inside the block into :class:`DiskFullError` naming ``path``."""
    try:
        yield
    except DiskFullError:
        raise
    except (OSError, RuntimeError) as exc:
        if is_disk_full(exc):
            raise DiskFullError(getattr(exc, "filename", None) or path) from exc
        raise


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: str | os.PathLike, write: Callable[[Path], _T]) -> _T:
    """Call ``write(tmp_path)`` then rename the result over ``path``; on any failure remove the
    temporary and leave ``path`` as it was. Disk-full failures become :class:`DiskFullError`.
    Returns what ``write`` returned (a streaming writer's counts, say)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with disk_errors(path):
            result = write(tmp)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)
    return result


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())

    atomic_write(path, write)


def write_json_atomic(path: str | os.PathLike, data: Any, indent: int | None = 2) -> None:
    write_bytes_atomic(path, (json.dumps(data, indent=indent) + "\n").encode())


def replace_dir(new_dir: str | os.PathLike, target: str | os.PathLike) -> None:
    """Swap a fully written directory ``new_dir`` into place at ``target`` (the old one, if any, is
    removed only after the new one is in place; an interruption leaves one of the two complete).

    On Linux the two are exchanged in one atomic step (``renameat2(RENAME_EXCHANGE)``); elsewhere
    the old one is first renamed to ``.NAME.old-PID`` (:func:`recover_dir` puts it back when a
    process dies between the two renames)."""
    new_dir, target = Path(new_dir), Path(target)
    if not target.exists():
        os.replace(new_dir, target)
        _fsync_dir(target.parent)
        return
    if _exchange(new_dir, target):
        _fsync_dir(target.parent)
        shutil.rmtree(new_dir, ignore_errors=True)  # it holds the old contents now
        return
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    os.replace(target, old)
    try:
        os.replace(new_dir, target)
    except BaseException:
        os.replace(old, target)
        raise
    _fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)


_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically exchange two paths with Linux ``renameat2``; False where it is unavailable."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False  # kernel or filesystem without the flag: the two-rename fallback
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def pid_alive(pid: int) -> bool:
    """Whether a process with this id is running (on this machine)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_siblings(target: str | os.PathLike, tag: str) -> list[Path]:
    """Siblings ``.NAME.TAG-PID`` of ``target`` left behind by processes no longer running (the
    naming of :func:`atomic_write`'s and :func:`replace_dir`'s temporaries), oldest first."""
    target = Path(target)
    found = []
    for path in target.parent.glob(f".{glob.escape(target.name)}.{tag}-*"):
        pid = path.name.rsplit("-", 1)[1]
        if pid.isdigit() and not pid_alive(int(pid)):
            found.append(path)
    return sorted(found, key=lambda p: p.lstat().st_mtime)


def recover_dir(target: str | os.PathLike) -> bool:
    """Undo a :func:`replace_dir` that died between its two renames: when ``target`` is missing and
    a dead process's ``.NAME.old-PID`` is there, move it back. True when something was restored."""
    target = Path(target)
    if target.exists() or target.is_symlink():
        return False
    olds = stale_siblings(target, "old")
    if not olds:
        return False
    os.replace(olds[-1], target)
    _fsync_dir(target.parent)
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporaries (``.NAME.tmp-PID`` files or directories, see :func:`atomic_write`)
    that processes no longer running left in ``folder``; returns them."""
    removed = []
    for path in Path(folder).glob(".*.tmp-*"):
        pid = path.name.rsplit("-", 1)[1]
        if not pid.isdigit() or pid_alive(int(pid)):
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def short_of_space(path: str | os.PathLike, margin: int = 1 << 20) -> bool:
    """True when the filesystem holding ``path`` has less than ``margin`` bytes left for us.

    For libraries that write without checking (onnx's C++ shape inference leaves a truncated file
    on a full disk, which then fails to parse): their failure on an almost full disk is the disk's."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free < margin
    except OSError:
        return False


def sync_tree(root: str | os.PathLike) -> None:
    """fsync every file and directory under ``root``: a directory about to be swapped in with
    :func:`replace_dir` must be on disk before the rename that publishes it."""
    for directory, _, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(directory, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(directory))


def sha256_file(path: str | os.PathLike, on_block: Callable[[int], Any] | None = None) -> str:
    """The file's sha256 (hex); ``on_block(n_bytes)`` after each block read (progress bars)."""
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(4 << 20), b""):
            sha.update(block)  # releases the GIL
            if on_block is not None:
                on_block(len(block))
    return sha.hexdigest()
