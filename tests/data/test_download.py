"""Tests for ctrlab.data.download and ctrlab.data.ledger.

Everything is served by a local HTTP server on 127.0.0.1 started by the tests; the registry
URLs of the test datasets point at a closed local port, so a broken mirror override can
never reach the internet.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import socket
import tarfile
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ctrlab.data import ledger as created_mod
from ctrlab.data import download as dl
from ctrlab.data.ledger import LEDGER_NAME, clean, list_created, record_created
from ctrlab.data.download import DATASETS, Dataset, DownloadError, RemoteFile, download


# --------------------------------------------------------------------------- fixtures / helpers


def criteo_lines(n: int, *, labelled: bool, seed: int) -> str:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ints = [str(rng.randint(0, 500)) if rng.random() > 0.2 else "" for _ in range(13)]
        cats = [f"{rng.getrandbits(32):08x}" if rng.random() > 0.1 else "" for _ in range(26)]
        cols = ([str(int(rng.random() < 0.25))] if labelled else []) + ints + cats
        rows.append("\t".join(cols))
    return "\n".join(rows) + "\n"


def make_tar(members: dict[str, bytes], *, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            tf.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tf.addfile(info)
    return buf.getvalue()


@pytest.fixture(scope="module")
def criteo_tar() -> tuple[bytes, dict[str, bytes]]:
    members = {
        "train.txt": criteo_lines(300, labelled=True, seed=1).encode(),
        "test.txt": criteo_lines(100, labelled=False, seed=2).encode(),
        "readme.txt": b"tiny synthetic stand-in for the Criteo Kaggle archive\n",
    }
    return make_tar(members), members


class FileServer:
    """Tiny HTTP server: Range support, plus failure modes driven by attributes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.mode = "normal"  # normal | ignore_range | 404 | 403 | 503
        self.drop_after: int | None = None  # close the connection after this many body bytes, once
        self.then_mode: str | None = None  # mode to switch to after a drop
        self.log: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output clean
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                rng = self.headers.get("Range")
                entry = {"path": self.path, "range": rng, "status": None, "sent": 0}
                with server._lock:
                    server.log.append(entry)
                    mode = server.mode
                    drop = server.drop_after
                    if drop is not None:
                        server.drop_after = None
                        if server.then_mode:
                            server.mode = server.then_mode
                if mode in ("404", "403", "503") or name not in server.files:
                    code = 404 if name not in server.files else int(mode)
                    entry["status"] = code
                    self.send_response(code)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files[name]
                start = 0
                if rng and mode != "ignore_range":
                    start = int(rng.split("=")[1].split("-")[0])
                    if start >= len(data):
                        entry["status"] = 416
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                    entry["status"] = 206
                else:
                    self.send_response(200)
                    entry["status"] = 200
                body = data[start:]
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if drop is not None:
                    body = body[:drop]
                    self.close_connection = True
                self.wfile.write(body)
                self.wfile.flush()
                entry["sent"] = len(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/mirror/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def server():
    s = FileServer()
    try:
        yield s
    finally:
        s.close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# Registry URLs point at a closed local port: only the mirror override can make them work.
_DEAD = f"http://127.0.0.1:{closed_port()}/nowhere/"


@pytest.fixture
def tiny(monkeypatch, server, criteo_tar):
    data, _ = criteo_tar
    server.files["tiny.tar.gz"] = data
    monkeypatch.setitem(DATASETS, "tiny", Dataset("tiny", "test data", (RemoteFile(_DEAD + "tiny.tar.gz"),)))
    monkeypatch.delenv(dl.MIRROR_ENV, raising=False)
    return data


def fetch(name, to, server, **kw):
    kw.setdefault("progress", False)
    kw.setdefault("timeout", 5)
    kw.setdefault("backoff", 0)
    kw.setdefault("print_fn", lambda *a, **k: None)
    return download(name, to, base_url=server.url, **kw)


def ledger(d: Path) -> dict[str, str]:
    return {e.path: e.kind for e in list_created(d)}


# --------------------------------------------------------------------------- download


def test_full_download_extract_and_ledger(tmp_path, server, tiny, criteo_tar):
    _, members = criteo_tar
    out: list[str] = []
    paths = fetch("tiny", tmp_path, server, print_fn=lambda *a, **k: out.append(" ".join(map(str, a))))
    digest = hashlib.sha256(tiny).hexdigest()

    assert paths[0] == tmp_path / "tiny.tar.gz"
    assert sorted(p.name for p in paths[1:]) == ["readme.txt", "test.txt", "train.txt"]
    for name, content in members.items():
        assert (tmp_path / name).read_bytes() == content
    assert (tmp_path / "tiny.tar.gz").read_bytes() == tiny
    assert (tmp_path / "tiny.tar.gz.sha256").read_text() == f"{digest}  tiny.tar.gz\n"
    assert any(digest in line for line in out)  # the sha256 is printed
    assert ledger(tmp_path) == {
        "tiny.tar.gz": "archive",
        "tiny.tar.gz.sha256": "archive",
        "train.txt": "extracted",
        "test.txt": "extracted",
        "readme.txt": "extracted",
    }
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith((".part", ".tmp"))]
    assert leftovers == []
    assert [e["path"] for e in server.log] == ["/mirror/tiny.tar.gz"]

    # Second run: nothing fetched, nothing re-extracted.
    out.clear()
    paths2 = fetch("tiny", tmp_path, server, print_fn=lambda *a, **k: out.append(" ".join(map(str, a))))
    assert len(server.log) == 1
    assert sorted(paths2) == sorted(paths)
    assert any("already downloaded" in line for line in out)
    assert any("already extracted" in line for line in out)


def test_real_registry_through_mirror_env(tmp_path, server, monkeypatch, criteo_tar):
    data, members = criteo_tar
    fname = "criteo-research-kaggle-display-advertising-challenge-dataset.tar.gz"
    assert DATASETS["criteo-kaggle"].files[0].filename == fname
    server.files[fname] = data
    monkeypatch.setenv(dl.MIRROR_ENV, server.url)
    paths = download("criteo-kaggle", tmp_path, progress=False, timeout=5, backoff=0, print_fn=lambda *a, **k: None)
    assert server.log[0]["path"] == "/mirror/" + fname
    assert (tmp_path / "train.txt").read_bytes() == members["train.txt"]
    assert paths[0].name == fname


def test_criteo_slot_two_files_with_checksum_mapping(tmp_path, server):
    train = make_tar({"slot_train_data_full/part-0": b"click:0 1:12 2:7\n"})
    test = make_tar({"slot_test_data_full/part-0": b"click:1 1:3 2:9\n"})
    server.files.update({"slot_train_data_full.tar.gz": train, "slot_test_data_full.tar.gz": test})
    sha = (
        f"slot_train_data_full.tar.gz={hashlib.sha256(train).hexdigest()},"
        f"slot_test_data_full.tar.gz={hashlib.sha256(test).hexdigest()}"
    )
    paths = fetch("criteo-slot", tmp_path, server, sha256=sha)
    assert [p.name for p in paths] == [
        "slot_train_data_full.tar.gz",
        "slot_test_data_full.tar.gz",
        "slot_train_data_full",
        "slot_test_data_full",
    ]
    assert (tmp_path / "slot_test_data_full" / "part-0").read_bytes() == b"click:1 1:3 2:9\n"
    with pytest.raises(DownloadError, match="FILE=HASH"):
        fetch("criteo-slot", tmp_path, server, sha256="a" * 64)  # ambiguous for two files


def test_resume_within_one_call(tmp_path, server, tiny):
    cut = len(tiny) // 3
    server.drop_after = cut
    fetch("tiny", tmp_path, server, retries=2)
    assert (tmp_path / "tiny.tar.gz").read_bytes() == tiny
    first, second = server.log
    assert first["status"] == 200 and first["sent"] == cut
    assert second["range"] == f"bytes={cut}-" and second["status"] == 206
    assert second["sent"] == len(tiny) - cut


def test_resume_after_interrupted_run(tmp_path, server, tiny):
    cut = len(tiny) // 2
    server.drop_after, server.then_mode = cut, "503"
    with pytest.raises(DownloadError, match="re-run to resume"):
        fetch("tiny", tmp_path, server, retries=0)
    part = tmp_path / "tiny.tar.gz.part"
    assert part.stat().st_size == cut
    assert not (tmp_path / "tiny.tar.gz").exists()
    assert "tiny.tar.gz.part" in ledger(tmp_path)  # an abandoned .part can be cleaned

    server.mode, server.log = "normal", []
    fetch("tiny", tmp_path, server)
    assert (tmp_path / "tiny.tar.gz").read_bytes() == tiny
    assert len(server.log) == 1
    assert server.log[0]["range"] == f"bytes={cut}-"
    assert server.log[0]["sent"] == len(tiny) - cut  # only the remainder was fetched
    assert not part.exists()
    assert (tmp_path / "tiny.tar.gz.sha256").read_text().split()[0] == hashlib.sha256(tiny).hexdigest()


def test_complete_part_file_gets_416_and_is_used(tmp_path, server, tiny):
    (tmp_path / "tiny.tar.gz.part").write_bytes(tiny)
    fetch("tiny", tmp_path, server)
    assert server.log[0]["status"] == 416
    assert (tmp_path / "tiny.tar.gz").read_bytes() == tiny


def test_server_ignoring_range_restarts_cleanly(tmp_path, server, tiny):
    (tmp_path / "tiny.tar.gz.part").write_bytes(tiny[:100])
    server.mode = "ignore_range"
    msgs: list[str] = []
    fetch("tiny", tmp_path, server, print_fn=lambda *a, **k: msgs.append(" ".join(map(str, a))))
    assert (tmp_path / "tiny.tar.gz").read_bytes() == tiny  # not 100 stale bytes + full body
    assert server.log[0]["range"] == "bytes=100-" and server.log[0]["status"] == 200
    assert server.log[0]["sent"] == len(tiny)
    assert any("ignored the resume request" in m for m in msgs)


def test_checksum_mismatch_moves_file_aside(tmp_path, server, tiny):
    wrong = "0" * 64
    actual = hashlib.sha256(tiny).hexdigest()
    with pytest.raises(DownloadError) as ei:
        fetch("tiny", tmp_path, server, sha256=wrong)
    msg = str(ei.value)
    assert "tiny.tar.gz" in msg and wrong in msg and actual in msg
    assert not (tmp_path / "tiny.tar.gz").exists()
    assert (tmp_path / "tiny.tar.gz.bad").read_bytes() == tiny
    assert not (tmp_path / "train.txt").exists()  # never extracted
    assert ledger(tmp_path).get("tiny.tar.gz.bad") == "archive"


def test_checksum_known_in_registry_is_verified(tmp_path, server, monkeypatch, criteo_tar):
    data, _ = criteo_tar
    server.files["v.tar.gz"] = data
    good = hashlib.sha256(data).hexdigest()
    monkeypatch.setitem(DATASETS, "v", Dataset("v", "", (RemoteFile(_DEAD + "v.tar.gz", sha256=good),)))
    msgs: list[str] = []
    fetch("v", tmp_path, server, print_fn=lambda *a, **k: msgs.append(" ".join(map(str, a))))
    assert any(good in m and "verified" in m and "not verified" not in m for m in msgs)
    # A corrupted local copy is detected on the next run, moved aside and fetched again.
    (tmp_path / "v.tar.gz").write_bytes(b"garbage")
    fetch("v", tmp_path, server)
    assert (tmp_path / "v.tar.gz").read_bytes() == data
    assert (tmp_path / "v.tar.gz.bad").read_bytes() == b"garbage"


def test_bad_sha256_argument(tmp_path, server, tiny):
    with pytest.raises(DownloadError, match="not a sha256"):
        fetch("tiny", tmp_path, server, sha256="xyz")
    assert server.log == []


def test_http_404_and_403_messages(tmp_path, server, tiny):
    server.mode = "404"
    with pytest.raises(DownloadError) as ei:
        fetch("tiny", tmp_path, server)
    assert "not found (HTTP 404)" in str(ei.value) and server.url + "tiny.tar.gz" in str(ei.value)
    assert len(server.log) == 1  # not retried
    server.mode = "403"
    with pytest.raises(DownloadError, match=r"access denied \(HTTP 403\)"):
        fetch("tiny", tmp_path, server)


def test_http_503_is_retried(tmp_path, server, tiny):
    server.mode = "503"
    with pytest.raises(DownloadError, match="503"):
        fetch("tiny", tmp_path, server, retries=2)
    assert len(server.log) == 3


def test_connection_refused_says_no_network(tmp_path, monkeypatch):
    monkeypatch.setitem(DATASETS, "tiny", Dataset("tiny", "", (RemoteFile(_DEAD + "tiny.tar.gz"),)))
    with pytest.raises(DownloadError) as ei:
        download("tiny", tmp_path, base_url=f"http://127.0.0.1:{closed_port()}/", progress=False, retries=1,
                 backoff=0, timeout=2, print_fn=lambda *a, **k: None)
    assert "No network" in str(ei.value) and "--mirror" in str(ei.value)


def test_dns_failure_says_no_network(tmp_path, monkeypatch):
    def no_dns(*args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)  # no resolver is ever asked
    monkeypatch.setitem(DATASETS, "tiny", Dataset("tiny", "", (RemoteFile(_DEAD + "tiny.tar.gz"),)))
    with pytest.raises(DownloadError) as ei:
        download("tiny", tmp_path, base_url="http://mirror.example.invalid/x/", progress=False, retries=3,
                 backoff=0, timeout=2, print_fn=lambda *a, **k: None)
    assert "cannot resolve host" in str(ei.value) and "--mirror" in str(ei.value)


def test_disk_full_is_reported_before_downloading(tmp_path, server, tiny, monkeypatch):
    import shutil

    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10))
    with pytest.raises(DownloadError, match="not enough disk space"):
        fetch("tiny", tmp_path, server)


def test_unknown_dataset(tmp_path):
    with pytest.raises(DownloadError, match="criteo-kaggle"):
        download("nope", tmp_path, progress=False)


# --------------------------------------------------------------------------- extraction safety


def _serve_single(monkeypatch, server, name: str, data: bytes) -> str:
    server.files[name] = data
    monkeypatch.setitem(DATASETS, "x", Dataset("x", "", (RemoteFile(_DEAD + name),)))
    return "x"


@pytest.mark.parametrize("evil", ["../evil.txt", "/tmp/ctrlab-evil-abs.txt", "ok/../../evil.txt"])
def test_tar_path_traversal_refused(tmp_path, server, monkeypatch, evil):
    target = tmp_path / "data"
    data = make_tar({"good.txt": b"fine\n", evil: b"pwned\n"})
    name = _serve_single(monkeypatch, server, "evil.tar.gz", data)
    with pytest.raises(DownloadError, match="refusing archive member"):
        fetch(name, target, server)
    assert not (tmp_path / "evil.txt").exists()
    assert not Path("/tmp/ctrlab-evil-abs.txt").exists()
    assert not (target / "good.txt").exists()  # all-or-nothing: staging is discarded
    assert sorted(p.name for p in target.iterdir()) == [LEDGER_NAME, "evil.tar.gz", "evil.tar.gz.sha256"]


def test_tar_symlink_escape_refused(tmp_path, server, monkeypatch):
    link = tarfile.TarInfo("innocent")
    link.type = tarfile.SYMTYPE
    link.linkname = "../../etc"
    data = make_tar({"a.txt": b"a\n"}, extra=[link])
    name = _serve_single(monkeypatch, server, "link.tar.gz", data)
    with pytest.raises(DownloadError, match="refusing archive member 'innocent'"):
        fetch(name, tmp_path / "d", server)
    assert not os.path.lexists(tmp_path / "d" / "innocent")


def test_zip_traversal_refused_and_zip_gz_extracted(tmp_path, server, monkeypatch):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("../evil.txt", "x")
    name = _serve_single(monkeypatch, server, "evil.zip", buf.getvalue())
    with pytest.raises(DownloadError, match="refusing archive member"):
        fetch(name, tmp_path / "z", server)
    assert not (tmp_path / "evil.txt").exists()

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("sub/day_0.txt", "1\t2\n")
    name = _serve_single(monkeypatch, server, "good.zip", buf.getvalue())
    fetch(name, tmp_path / "z2", server)
    assert (tmp_path / "z2" / "sub" / "day_0.txt").read_text() == "1\t2\n"

    name = _serve_single(monkeypatch, server, "day_1.gz", gzip.compress(b"0\t5\n"))
    paths = fetch(name, tmp_path / "g", server)
    assert (tmp_path / "g" / "day_1").read_bytes() == b"0\t5\n"
    assert ledger(tmp_path / "g")["day_1"] == "extracted"
    assert paths[-1] == tmp_path / "g" / "day_1"


def test_corrupt_archive_is_moved_aside(tmp_path, server, monkeypatch):
    name = _serve_single(monkeypatch, server, "broken.tar.gz", b"\x1f\x8b this is not gzip data at all" * 10)
    with pytest.raises(DownloadError, match="bad or truncated archive"):
        fetch(name, tmp_path, server)
    assert not (tmp_path / "broken.tar.gz").exists()
    assert (tmp_path / "broken.tar.gz.bad").exists()
    assert not any(p.name.startswith(".ctrlab-extract") for p in tmp_path.iterdir())


def test_extraction_does_not_overwrite_user_files(tmp_path, server, tiny):
    (tmp_path / "train.txt").write_text("my own notes\n")
    with pytest.raises(DownloadError, match="not created by ctrlab"):
        fetch("tiny", tmp_path, server)
    assert (tmp_path / "train.txt").read_text() == "my own notes\n"
    assert "train.txt" not in ledger(tmp_path)


def test_user_placed_archive_is_used_but_not_claimed(tmp_path, server, tiny):
    (tmp_path / "tiny.tar.gz").write_bytes(tiny)  # e.g. downloaded by hand from a browser
    fetch("tiny", tmp_path, server)
    assert server.log == []
    assert (tmp_path / "train.txt").exists()
    entries = ledger(tmp_path)
    assert "tiny.tar.gz" not in entries and entries["train.txt"] == "extracted"
    removed = clean(tmp_path, yes=True, print_fn=lambda *a, **k: None)
    assert (tmp_path / "tiny.tar.gz").exists()
    assert tmp_path / "train.txt" in removed


# --------------------------------------------------------------------------- ledger / clean


def test_record_created_is_idempotent_and_list_skips_missing(tmp_path):
    (tmp_path / "a.bin").write_bytes(b"1")
    record_created(tmp_path, ["a.bin", tmp_path / "a.bin"], "store")
    record_created(tmp_path, "a.bin", "store")
    record_created(tmp_path, ["gone.bin"], "synthetic")
    raw = json.loads((tmp_path / LEDGER_NAME).read_text())
    assert [e["path"] for e in raw["entries"]] == ["a.bin", "gone.bin"]
    assert [(e.path, e.kind) for e in list_created(tmp_path)] == [("a.bin", "store")]
    with pytest.raises(ValueError, match="unknown kind"):
        record_created(tmp_path, ["a.bin"], "whatever")
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_clean_yes_removes_only_created(tmp_path, server, tiny):
    fetch("tiny", tmp_path, server)
    (tmp_path / "my_notes.txt").write_text("keep me\n")
    (tmp_path / "mine").mkdir()
    out: list[str] = []
    removed = clean(tmp_path, yes=True, print_fn=lambda *a, **k: out.append(" ".join(map(str, a))))
    assert sorted(p.name for p in removed) == sorted(
        ["tiny.tar.gz", "tiny.tar.gz.sha256", "train.txt", "test.txt", "readme.txt"]
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "my_notes.txt"]  # ledger gone too
    text = "\n".join(out)
    assert "my_notes.txt: not created by ctrlab, kept" in text
    assert "KiB" in text or " B" in text  # sizes are shown
    assert "deleted 5 path(s)" in text


def test_clean_without_yes_and_no_answer_deletes_nothing(tmp_path, server, tiny, monkeypatch):
    fetch("tiny", tmp_path, server)
    before = sorted(p.name for p in tmp_path.iterdir())
    out: list[str] = []
    asked: list[str] = []
    removed = clean(tmp_path, yes=False, input_fn=lambda q: asked.append(q) or "n",
                    print_fn=lambda *a, **k: out.append(" ".join(map(str, a))))
    assert removed == [] and asked
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert any("nothing deleted" in line for line in out)

    # No terminal and no --yes: never asks, deletes nothing.
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    out.clear()
    assert clean(tmp_path, yes=False, print_fn=lambda *a, **k: out.append(" ".join(map(str, a)))) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert any("--yes" in line for line in out)

    def eof(_q):
        raise EOFError

    assert clean(tmp_path, yes=False, input_fn=eof, print_fn=lambda *a, **k: None) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert len(clean(tmp_path, yes=False, input_fn=lambda q: "y", print_fn=lambda *a, **k: None)) == 5


def test_ledger_escape_refused(tmp_path):
    d = tmp_path / "d"
    d.mkdir()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("do not delete\n")
    (d / "link").symlink_to(outside, target_is_directory=True)
    (d / "ok.bin").write_bytes(b"x")

    for bad in ["../outside/precious.txt", str(outside / "precious.txt"), "link/precious.txt", ".", ""]:
        with pytest.raises(ValueError):
            record_created(d, [bad], "store")

    # A hand-edited (or malicious) ledger is refused at clean time as well.
    entries = [
        {"path": p, "kind": "store", "time": "t"}
        for p in ["../outside", "../outside/precious.txt", str(outside), "link/precious.txt", "ok.bin", "link"]
    ]
    (d / LEDGER_NAME).write_text(json.dumps({"version": 1, "entries": entries}))
    assert sorted(e.path for e in list_created(d)) == ["link", "ok.bin"]
    out: list[str] = []
    removed = clean(d, yes=True, print_fn=lambda *a, **k: out.append(" ".join(map(str, a))))
    assert sorted(p.name for p in removed) == ["link", "ok.bin"]
    assert (outside / "precious.txt").read_text() == "do not delete\n"  # the symlink was removed, not its target
    assert sum("refusing ledger entry" in line for line in out) == 4
    kept = [e["path"] for e in json.loads((d / LEDGER_NAME).read_text())["entries"]]
    # ("link/precious.txt" became harmless once the symlink was gone: it names nothing and is dropped.)
    assert sorted(kept) == sorted(["../outside", "../outside/precious.txt", str(outside)])


def test_clean_nested_entries_inside_user_directory(tmp_path):
    (tmp_path / "user_dir").mkdir()
    (tmp_path / "user_dir" / "theirs.csv").write_text("a\n")
    (tmp_path / "user_dir" / "store").mkdir()
    (tmp_path / "user_dir" / "store" / "x.parquet").write_bytes(b"p" * 2048)
    record_created(tmp_path, ["user_dir/store", "user_dir/store/x.parquet"], "store")
    out: list[str] = []
    removed = clean(tmp_path, yes=True, print_fn=lambda *a, **k: out.append(" ".join(map(str, a))))
    assert removed == [tmp_path / "user_dir" / "store"]
    assert (tmp_path / "user_dir" / "theirs.csv").exists()
    assert any("user_dir/theirs.csv: not created by ctrlab, kept" in line for line in out)
    assert any("2.0 KiB" in line for line in out)
    assert not (tmp_path / LEDGER_NAME).exists()


def test_clean_missing_dir_and_corrupt_ledger(tmp_path):
    out: list[str] = []
    assert clean(tmp_path / "nope", yes=True, print_fn=lambda *a, **k: out.append(str(a[0]))) == []
    (tmp_path / LEDGER_NAME).write_text("{not json")
    (tmp_path / "f").write_text("x")
    assert clean(tmp_path, yes=True, print_fn=lambda *a, **k: out.append(str(a[0]))) == []
    assert (tmp_path / "f").exists()
    assert any("nothing deleted" in line for line in out)
    with pytest.raises(created_mod.LedgerError):
        record_created(tmp_path, ["f"], "store")
