"""Download the public CTR datasets (urllib only): resume, retries, checksums, safe extraction.

Usage from Python::

    from ctrlab.data.download import download
    download("criteo-kaggle", "data/")                      # from the original host
    download("criteo-kaggle", "data/", base_url="http://mirror.local/criteo/")

A mirror (``base_url`` or the ``CTRLAB_DATA_MIRROR`` environment variable) replaces everything
in a file's URL up to the file name. Every file ctrlab writes is recorded in the directory's
ledger (see :mod:`ctrlab.data.ledger`), so ``ctrlab data clean DIR`` removes exactly those.

Checksums: the upstream hosts publish none, so the registry holds ``sha256=None`` (unknown)
unless a value is filled in. The computed sha256 is always printed and written beside the
archive as ``NAME.sha256`` (``sha256sum -c`` format); it is verified when the registry knows it
or when the caller passes ``sha256``. A file that fails verification is moved aside to
``NAME.bad`` and never extracted.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import gzip
import hashlib
import http.client
import os
import shutil
import socket
import ssl
import sys
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any, Callable, Mapping

from tqdm import tqdm

from ..fileio import sha256_file, write_bytes_atomic
from .ledger import (
    clean,
    completed_extraction,
    is_created,
    record_created,
    record_extraction,
)

__all__ = ["DATASETS", "Dataset", "DownloadError", "RemoteFile", "clean", "download", "MIRROR_ENV"]

MIRROR_ENV = "CTRLAB_DATA_MIRROR"
_CHUNK = 1 << 20
_USER_AGENT = "ctrlab-downloader/0.1 (+python urllib)"
_RETRY_HTTP = {408, 425, 429, 500, 502, 503, 504}


class DownloadError(RuntimeError):
    """A download, verification or extraction failed; the message says what to do."""


@dataclass(frozen=True)
class RemoteFile:
    url: str
    sha256: str | None = None  # None: unknown, only computed and reported

    @property
    def filename(self) -> str:
        name = PurePosixPath(urllib.parse.urlsplit(self.url).path).name
        if not name:
            raise ValueError(f"URL has no file name: {self.url}")
        return name


@dataclass(frozen=True)
class Dataset:
    name: str
    description: str
    files: tuple[RemoteFile, ...]
    license_note: str = ""


DATASETS: dict[str, Dataset] = {
    "criteo-kaggle": Dataset(
        name="criteo-kaggle",
        description=(
            "Criteo Display Advertising Challenge (Kaggle 2014): tar.gz holding train.txt "
            "(labelled, 13 integer + 26 categorical tab-separated columns), test.txt (unlabelled) "
            "and readme.txt"
        ),
        files=(
            RemoteFile(
                "https://go.criteo.net/criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz",
                sha256=None,
            ),
        ),
        license_note="Released by Criteo for research use; read readme.txt for the terms.",
    ),
    "criteo-slot": Dataset(
        name="criteo-slot",
        description="PaddleRec's preprocessed Criteo slot files (full train and test sets)",
        files=(
            RemoteFile("https://paddlerec.bj.bcebos.com/datasets/criteo/slot_train_data_full.tar.gz", sha256=None),
            RemoteFile("https://paddlerec.bj.bcebos.com/datasets/criteo/slot_test_data_full.tar.gz", sha256=None),
        ),
        license_note="Derived from the Criteo Kaggle data; same terms apply.",
    ),
}


# --------------------------------------------------------------------------- helpers


def _mirror_url(url: str, base: str) -> str:
    return base.rstrip("/") + "/" + PurePosixPath(urllib.parse.urlsplit(url).path).name


def _resolve_dataset(name: str | Dataset) -> Dataset:
    if isinstance(name, Dataset):
        return name
    try:
        return DATASETS[name]
    except KeyError:
        raise DownloadError(f"unknown dataset {name!r}; available: {', '.join(sorted(DATASETS))}") from None


def _expected_hashes(ds: Dataset, sha256: str | Mapping[str, str] | None) -> dict[str, str | None]:
    out: dict[str, str | None] = {f.filename: (f.sha256.lower() if f.sha256 else None) for f in ds.files}
    if sha256 is None:
        return out
    if isinstance(sha256, str):
        if "=" in sha256:  # "file=hash,file=hash"
            pairs = {}
            for item in sha256.split(","):
                k, sep, v = item.strip().partition("=")
                if not sep:
                    raise DownloadError(f"bad --sha256 item {item!r}; expected FILE=HASH")
                pairs[k.strip()] = v.strip()
            sha256 = pairs
        elif len(ds.files) == 1:
            sha256 = {ds.files[0].filename: sha256}
        else:
            names = ", ".join(out)
            raise DownloadError(
                f"{ds.name} has {len(ds.files)} files ({names}); give the checksum as FILE=HASH[,FILE=HASH]"
            )
    for k, v in sha256.items():
        if k not in out:
            raise DownloadError(f"--sha256 names {k!r}, which is not a file of {ds.name} ({', '.join(out)})")
        v = v.strip().lower()
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise DownloadError(f"--sha256 for {k}: {v!r} is not a sha256 hex digest (64 hex characters)")
        out[k] = v
    return out


def _hash_file(path: Path, *, progress: bool, desc: str) -> str:
    with tqdm(total=path.stat().st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
              disable=not progress, leave=False) as bar:
        return sha256_file(path, bar.update)


def _move_aside(path: Path) -> Path:
    bad = path.with_name(path.name + ".bad")
    n = 1
    while bad.exists():
        bad = path.with_name(f"{path.name}.bad{n}")
        n += 1
    ours = is_created(path.parent, path)  # a file the user placed there stays theirs
    os.replace(path, bad)
    if ours:
        record_created(path.parent, [bad], "archive")
    return bad


def _write_sha_file(path: Path, digest: str) -> Path:
    sha_path = path.with_name(path.name + ".sha256")
    write_bytes_atomic(sha_path, f"{digest}  {path.name}\n".encode("utf-8"))
    record_created(path.parent, [sha_path], "archive")
    return sha_path


def _read_sha_file(path: Path) -> str | None:
    try:
        return (path.with_name(path.name + ".sha256").read_text(encoding="utf-8").split() or [None])[0]
    except OSError:
        return None


def _disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", -1))


def _parse_content_range(value: str | None) -> tuple[int | None, int | None]:
    """'bytes 100-199/1000' -> (100, 1000); 'bytes */1000' -> (None, 1000)."""
    if not value:
        return None, None
    try:
        unit, _, rng = value.strip().partition(" ")
        if unit.lower() != "bytes":
            return None, None
        span, _, total = rng.partition("/")
        start = None if span.strip() == "*" else int(span.split("-")[0])
        return start, (None if total.strip() in ("", "*") else int(total))
    except ValueError:
        return None, None


# --------------------------------------------------------------------------- transfer


class _Retry(Exception):
    """Transient failure: try again (after backoff) if attempts remain."""

    def __init__(self, msg: str, *, progressed: bool = False) -> None:
        super().__init__(msg)
        self.progressed = progressed


def _connection_hint(url: str) -> str:
    return (
        f"could not reach {urllib.parse.urlsplit(url).netloc or url}. No network access? "
        f"Use a mirror: --mirror URL (or set {MIRROR_ENV}), or download the file by hand into the target directory."
    )


def _fetch(
    url: str,
    part: Path,
    *,
    timeout: float,
    retries: int,
    backoff: float,
    progress: bool,
    print_fn: Callable[..., Any],
) -> str:
    """Download ``url`` into ``part`` (resuming it if present); return the sha256 of the whole file."""
    failures = 0
    no_range = False  # set once the server showed it does not honour Range
    while True:
        offset = part.stat().st_size if part.exists() else 0
        if no_range and offset:
            part.unlink()
            offset = 0
        try:
            req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"})
            if offset:
                req.add_header("Range", f"bytes={offset}-")
            try:
                resp = urllib.request.urlopen(req, timeout=timeout)
            except urllib.error.HTTPError as e:
                with contextlib.closing(e):
                    if e.code == 416 and offset:
                        _, total = _parse_content_range(e.headers.get("Content-Range"))
                        if total is not None and total == offset:
                            # The .part already holds the whole file.
                            return _hash_file(part, progress=progress, desc=f"hashing {part.name}")
                        print_fn(f"{part.name}: server rejected the resume range; restarting from the beginning")
                        part.unlink()
                        continue
                    if e.code in (404, 410):
                        raise DownloadError(
                            f"{url}: not found (HTTP {e.code}). The file may have moved; check the dataset "
                            f"registry or point --mirror (or {MIRROR_ENV}) at a copy."
                        ) from None
                    if e.code in (401, 403):
                        raise DownloadError(
                            f"{url}: access denied (HTTP {e.code}). The host may require accepting its terms "
                            f"in a browser or may block automated downloads; download {part.name[:-5]} by hand "
                            f"into {part.parent} and re-run (it will be verified and used), or use --mirror."
                        ) from None
                    if e.code in _RETRY_HTTP:
                        raise _Retry(f"HTTP {e.code} {e.reason}") from None
                    raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None

            with contextlib.closing(resp):
                status = getattr(resp, "status", None) or resp.getcode() or 200
                length = resp.headers.get("Content-Length")
                length = int(length) if length and length.isdigit() else None
                h = hashlib.sha256()
                if status == 206 and offset:
                    start, total = _parse_content_range(resp.headers.get("Content-Range"))
                    if start != offset:
                        print_fn(f"{part.name}: server answered a different range; restarting from the beginning")
                        no_range = True
                        continue
                    with open(part, "rb") as f:  # hash what we already have
                        for b in iter(lambda: f.read(_CHUNK), b""):
                            h.update(b)
                    mode = "ab"
                    if total is None and length is not None:
                        total = offset + length
                else:
                    if offset:
                        print_fn(
                            f"{part.name}: the server ignored the resume request (HTTP {status}); "
                            "restarting from the beginning"
                        )
                    offset = 0
                    mode = "wb"
                    total = length
                if total is not None:
                    free = shutil.disk_usage(part.parent).free
                    if free < total - offset:
                        raise DownloadError(
                            f"not enough disk space in {part.parent}: {part.name[:-5]} needs "
                            f"{total - offset} more bytes, {free} free. Free some space or use --to elsewhere."
                        )
                got = offset
                with open(part, mode) as out, tqdm(
                    total=total,
                    initial=offset,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1024,
                    desc=part.name[:-5],
                    disable=not progress,
                ) as bar:
                    while True:
                        try:
                            b = resp.read(_CHUNK)
                        except (OSError, http.client.HTTPException) as e:
                            raise _Retry(f"connection lost after {got} bytes ({e!r})", progressed=got > offset) from e
                        if not b:
                            break
                        out.write(b)  # OSError here (disk full, ...) is not retried
                        h.update(b)
                        got += len(b)
                        bar.update(len(b))
                if total is not None and got < total:
                    raise _Retry(f"connection closed after {got} of {total} bytes", progressed=got > offset)
                if total is not None and got > total:
                    part.unlink()
                    raise _Retry(f"server sent {got} bytes, more than the announced {total}")
                return h.hexdigest()

        except _Retry as e:
            # An attempt that made progress restores the retry budget (long downloads on flaky links).
            failures = 1 if e.progressed else failures + 1
            if failures > retries:
                raise DownloadError(
                    f"{url}: giving up ({retries} retr{'y' if retries == 1 else 'ies'} allowed): {e}. "
                    f"The partial file {part} is kept; re-run to resume."
                ) from None
            wait = backoff * (2 ** max(failures - 1, 0))
            print_fn(f"{part.name[:-5]}: {e}; retrying in {wait:.1f}s")
            time.sleep(wait)
        except DownloadError:
            raise
        except OSError as e:
            if _disk_full(e):
                raise DownloadError(
                    f"disk full while writing {part}; free some space and re-run to resume (the partial file is kept)"
                ) from None
            reason = e.reason if isinstance(e, urllib.error.URLError) else e
            if isinstance(reason, str) and "unknown url type" in reason:
                raise DownloadError(f"{url}: unsupported URL ({reason}); check --mirror") from None
            if not isinstance(e, urllib.error.URLError) and getattr(e, "filename", None):
                raise DownloadError(f"cannot write {e.filename}: {e.strerror}") from None
            if isinstance(reason, socket.gaierror):
                raise DownloadError(f"{url}: cannot resolve host ({reason}). " + _connection_hint(url)) from None
            if isinstance(reason, ssl.SSLCertVerificationError):
                raise DownloadError(f"{url}: TLS certificate verification failed ({reason})") from None
            failures += 1
            if failures > retries:
                raise DownloadError(f"{url}: {reason}. " + _connection_hint(url)) from None
            wait = backoff * (2 ** (failures - 1))
            print_fn(f"{part.name[:-5]}: {reason}; retrying in {wait:.1f}s")
            time.sleep(wait)
        except http.client.HTTPException as e:
            failures += 1
            if failures > retries:
                raise DownloadError(f"{url}: {e!r}. " + _connection_hint(url)) from None
            time.sleep(backoff * (2 ** (failures - 1)))
        except ValueError as e:  # e.g. unsupported URL scheme from a bad mirror
            raise DownloadError(f"{url}: {e}") from None


# --------------------------------------------------------------------------- extraction


def _member_problem(name: str) -> str | None:
    if not name or "\x00" in name:
        return "empty or invalid name"
    if name.startswith(("/", "\\")) or PureWindowsPath(name).is_absolute() or PureWindowsPath(name).drive:
        return "absolute path"
    if ".." in name.replace("\\", "/").split("/"):
        return "path contains '..'"
    return None


def _check_tar_member(m: tarfile.TarInfo) -> None:
    prob = _member_problem(m.name)
    if prob is None and (m.issym() or m.islnk()):
        target = m.linkname
        if m.issym():
            target = str(PurePosixPath(m.name).parent / target)
        if _member_problem(m.linkname) == "absolute path" or not _stays_inside(target):
            prob = f"link to {m.linkname!r} leaves the extraction directory"
    if prob is None and (m.ischr() or m.isblk() or m.isfifo()):
        prob = "device or fifo member"
    if prob:
        raise DownloadError(f"refusing archive member {m.name!r}: {prob}")


def _stays_inside(rel: str) -> bool:
    depth = 0
    for part in rel.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        depth += -1 if part == ".." else 1
        if depth < 0:
            return False
    return True


class _CountingReader:
    """File wrapper that reports bytes read to a tqdm bar (progress of extraction)."""

    def __init__(self, f: Any, bar: Any) -> None:
        self._f, self._bar = f, bar

    def read(self, n: int = -1) -> bytes:
        b = self._f.read(n)
        self._bar.update(len(b))
        return b

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _archive_kind(name: str) -> str | None:
    low = name.lower()
    if low.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if low.endswith(".tar"):
        return "tar"
    if low.endswith(".zip"):
        return "zip"
    if low.endswith(".gz"):
        return "gz"
    return None


def _extract_into(archive: Path, kind: str, staging: Path, progress: bool) -> None:
    size = archive.stat().st_size
    with open(archive, "rb") as raw, tqdm(
        total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"extracting {archive.name}", disable=not progress
    ) as bar:
        src = _CountingReader(raw, bar)
        if kind in ("tar.gz", "tar"):
            with tarfile.open(fileobj=src, mode="r|gz" if kind == "tar.gz" else "r|") as tf:
                for m in tf:  # streaming: validate each member before writing it
                    _check_tar_member(m)
                    if hasattr(tarfile, "data_filter"):
                        tf.extract(m, staging, filter="data")
                    else:  # pragma: no cover - Python < 3.11.4
                        tf.extract(m, staging)
        elif kind == "zip":
            with zipfile.ZipFile(raw) as zf:
                infos = zf.infolist()
                for info in infos:
                    prob = _member_problem(info.filename)
                    if prob:
                        raise DownloadError(f"refusing archive member {info.filename!r}: {prob}")
                for info in infos:
                    zf.extract(info, staging)
                    bar.update(info.compress_size)
        elif kind == "gz":
            target = staging / archive.name[: -len(".gz")]
            with gzip.GzipFile(fileobj=src) as g, open(target, "wb") as out:
                shutil.copyfileobj(g, out, _CHUNK)
        else:  # pragma: no cover
            raise DownloadError(f"{archive.name}: unsupported archive type")


def _extract(archive: Path, digest: str, *, verified: bool, progress: bool, print_fn: Callable[..., Any]) -> list[Path]:
    directory = archive.parent
    kind = _archive_kind(archive.name)
    if kind is None:
        return []
    done = completed_extraction(directory, archive.name, digest)
    if done is not None:
        print_fn(f"{archive.name}: already extracted ({', '.join(done)})")
        return [directory / p for p in done]

    staging = directory / f".ctrlab-extract-{archive.name}.tmp"
    record_created(directory, [staging], "extracted")  # so an interrupted extraction can be cleaned
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    try:
        try:
            _extract_into(archive, kind, staging, progress)
        except DownloadError:
            raise
        except getattr(tarfile, "FilterError", DownloadError) as e:
            raise DownloadError(f"{archive.name}: refusing archive member: {e}") from None
        except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, gzip.BadGzipFile) as e:
            msg = f"{archive}: bad or truncated archive ({e})."
            if not verified:
                bad = _move_aside(archive)
                msg += f" It was moved to {bad.name}; re-run to download it again."
            else:
                msg += " Its checksum matched, so the archive itself is broken upstream."
            raise DownloadError(msg) from None
        except OSError as e:
            if _disk_full(e):
                raise DownloadError(
                    f"disk full while extracting {archive.name} in {directory}; free some space and re-run"
                ) from None
            raise DownloadError(f"extracting {archive.name} failed: {e}") from None

        # Move the extracted top-level entries into place.
        names = sorted(os.listdir(staging))
        for name in names:
            target = directory / name
            if os.path.lexists(target) and not is_created(directory, target):
                raise DownloadError(
                    f"{target} already exists and was not created by ctrlab; move it away or extract elsewhere "
                    f"(the archive {archive.name} is kept)"
                )
        for name in names:
            target = directory / name
            if os.path.lexists(target):
                if target.is_dir() and not target.is_symlink():
                    shutil.rmtree(target)
                else:
                    target.unlink()
            record_created(directory, [target], "extracted")
            os.replace(staging / name, target)
        record_extraction(directory, archive.name, digest, names)
        return [directory / n for n in names]
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- public API


def download(
    name: str | Dataset,
    to_dir: str | os.PathLike[str],
    *,
    base_url: str | None = None,
    sha256: str | Mapping[str, str] | None = None,
    extract: bool = True,
    progress: bool = True,
    timeout: float = 60,
    retries: int = 3,
    backoff: float = 1.0,
    print_fn: Callable[..., Any] = print,
) -> list[Path]:
    """Download dataset ``name`` into ``to_dir``; return the archive paths, then the extracted paths.

    base_url: mirror replacing everything up to the file name in each URL (default: the
        ``CTRLAB_DATA_MIRROR`` environment variable, else the original host).
    sha256: expected digest; a single hex string for a one-file dataset, else a mapping
        ``{file name: digest}`` or the string ``"FILE=HASH,FILE=HASH"``. Overrides the registry.
    extract: unpack .tar.gz/.tgz/.tar/.zip/.gz archives into ``to_dir`` (members with absolute
        paths, '..' or links leaving the directory are refused).
    retries: extra attempts after a transient failure (connection error, timeout, HTTP 5xx/429,
        connection dropped mid-transfer); an attempt that received data restores the full budget,
        ``retries=0`` never retries. Waits ``backoff * 2**k`` seconds between attempts.
    Raises :class:`DownloadError` with an actionable message on failure.
    """
    ds = _resolve_dataset(name)
    expected = _expected_hashes(ds, sha256)
    base = base_url if base_url is not None else (os.environ.get(MIRROR_ENV) or None)
    to = Path(to_dir)
    try:
        to.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(f"cannot create {to}: {e}") from None

    archives: list[Path] = []
    extracted: list[Path] = []
    for rf in ds.files:
        fname = rf.filename
        url = _mirror_url(rf.url, base) if base else rf.url
        dest = to / fname
        want = expected[fname]
        digest: str | None = None

        if dest.exists():
            digest = _hash_file(dest, progress=progress, desc=f"verifying {fname}")
            if want and digest != want:
                bad = _move_aside(dest)
                print_fn(
                    f"{fname}: existing file has sha256 {digest}, expected {want}; moved it to {bad.name} "
                    "and downloading again"
                )
                digest = None
            else:
                previous = _read_sha_file(dest)
                if previous and previous != digest:
                    print_fn(f"warning: {fname} changed since it was downloaded (sha256 was {previous}, now {digest})")
                print_fn(f"{fname}: already downloaded" + (" and verified" if want else ""))

        if digest is None:
            part = dest.with_name(fname + ".part")
            record_created(to, [part], "archive")
            if part.exists():
                print_fn(f"{fname}: resuming from {part.stat().st_size} bytes")
            print_fn(f"downloading {url}")
            digest = _fetch(
                url, part, timeout=timeout, retries=retries, backoff=backoff, progress=progress, print_fn=print_fn
            )
            record_created(to, [dest], "archive")
            os.replace(part, dest)
            if want and digest != want:
                bad = _move_aside(dest)
                raise DownloadError(
                    f"checksum mismatch for {fname}: expected sha256 {want}, got {digest}. "
                    f"The file was moved to {bad} and not used."
                )
        sha_file = _write_sha_file(dest, digest)
        print_fn(f"sha256 {fname}: {digest}" + (" (verified)" if want else f" (not verified; written to {sha_file.name})"))
        archives.append(dest)

        if extract:
            extracted.extend(_extract(dest, digest, verified=bool(want), progress=progress, print_fn=print_fn))

    if ds.license_note:
        print_fn(ds.license_note)
    return archives + extracted


def main(argv: list[str] | None = None) -> int:  # pragma: no cover - thin convenience wrapper
    """``python -m ctrlab.data.download NAME --to DIR [--mirror URL] [--sha256 H] [--no-extract]``."""
    p = argparse.ArgumentParser(prog="python -m ctrlab.data.download")
    p.add_argument("name", choices=sorted(DATASETS))
    p.add_argument("--to", required=True)
    p.add_argument("--mirror")
    p.add_argument("--sha256")
    p.add_argument("--no-extract", action="store_true")
    a = p.parse_args(argv)
    try:
        download(a.name, a.to, base_url=a.mirror, sha256=a.sha256, extract=not a.no_extract)
    except DownloadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
