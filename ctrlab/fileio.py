"""Writing files whole or not at all, and saying clearly when the disk is full.

Every writer in ctrlab (store, checkpoint, bundle, run records) goes through these helpers so that
an interruption or a full disk never leaves a half-written file where a reader would trust it, and
a failed write names the path it was writing instead of a library's internal message.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Iterator

_FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC), errno.EFBIG}


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


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` then rename the result over ``path``; on any failure remove the
    temporary and leave ``path`` as it was. Disk-full failures become :class:`DiskFullError`."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with disk_errors(path):
            write(tmp)
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


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
    removed only after the new one is in place; an interruption leaves one of the two complete)."""
    new_dir, target = Path(new_dir), Path(target)
    if not target.exists():
        os.replace(new_dir, target)
        _fsync_dir(target.parent)
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
