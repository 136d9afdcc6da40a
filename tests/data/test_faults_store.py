"""Faults around the encoded store: a store is replaced whole or not at all (errors, interrupts,
kill -9, a full disk leave the previous store loadable and no temporaries behind), and opening a
store verifies its arrays against meta.json, so that `info` and `train` refuse a damaged or
empty store by name instead of training on nothing."""

from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ctrlab import fileio
from ctrlab.cli import main as cli_main
from ctrlab.data import encode as encode_mod  # (the passes of prepare)
from ctrlab.data import prepare as prepare_mod
from ctrlab.data.batches import BatchIterator
from ctrlab.data.ledger import LEDGER_NAME, list_created, record_created
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.readers import DataError
from ctrlab.data.store import SplitArrays, Store, StoreError
from ctrlab.data.synth import write_synthetic

REPO = Path(__file__).resolve().parents[2]


def quiet(_msg: str) -> None:
    pass


def make_store(raw: Path, out: Path, **kwargs) -> Store:
    return prepare(PrepareOptions(train=[str(raw)], **kwargs), out, progress=False, log=quiet)


def temporaries(out: Path) -> list[str]:
    """Build / swap leftovers beside a store (and the old in-store scratch directory)."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}.*")) + \
        ([".prepare-tmp"] if (out / ".prepare-tmp").exists() else [])


def row_counts(store: Store) -> dict[str, int]:
    return {s: len(store.split(s)) for s in store.splits}


@pytest.fixture(scope="module")
def raws(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("raw")
    files = {"small": (d / "small.tsv", 600), "big": (d / "big.tsv", 3000)}
    for path, rows in files.values():
        write_synthetic(path, rows, seed=rows, progress=False)
    return {name: path for name, (path, _) in files.items()}


@pytest.fixture
def small_store(raws, tmp_path) -> Store:
    return make_store(raws["small"], tmp_path / "S")


def run_cli(capsys, *argv: str) -> tuple[int, str]:
    rc = cli_main(list(argv))
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


# --------------------------------------------------------------------------------------------
# replaced whole or not at all
# --------------------------------------------------------------------------------------------

def test_reprepare_swaps_in_the_new_store_and_keeps_other_files(raws, small_store, tmp_path, capsys):
    out = small_store.path
    (out / "notes.txt").write_text("mine\n")
    record_created(out, ["notes.txt"], "synthetic")  # a ledger kept inside the store directory
    (out / "keep").mkdir()
    (out / "keep" / "a.bin").write_bytes(b"x")
    rc, text = run_cli(capsys, "prepare", str(raws["big"]), "--out", str(out), "--quiet")
    assert rc == 0, text
    store = Store(out)
    assert store.meta["rows_read"] == 3000 == sum(row_counts(store).values())
    assert store.meta["sources"]["train"][0]["path"].endswith("big.tsv")
    assert "big.tsv" in (out / "config.yaml").read_text()  # the config arrived with its store
    assert (out / "notes.txt").read_text() == "mine\n" and (out / "keep" / "a.bin").read_bytes() == b"x"
    assert [e.path for e in list_created(out)] == ["notes.txt"] and (out / LEDGER_NAME).is_file()
    assert temporaries(out) == []


@pytest.mark.parametrize("fault", ["bad line", "interrupt", "swap"])
def test_failed_prepare_leaves_the_old_store(raws, small_store, tmp_path, monkeypatch, fault):
    out = small_store.path
    before = row_counts(small_store)
    meta_before = (out / "meta.json").read_bytes()
    if fault == "bad line":  # fails while parsing, after rows were written
        lines = raws["big"].read_text().splitlines(keepends=True)
        raw = tmp_path / "bad.tsv"
        raw.write_text("".join(lines[:2500]) + "not\ta\tcriteo\tline\n" + "".join(lines[2500:]))
        expected: type[BaseException] = DataError
    else:
        raw = raws["big"]
        expected = KeyboardInterrupt if fault == "interrupt" else OSError

        def fail(*args, **kwargs):
            raise expected("injected")

        if fault == "interrupt":
            monkeypatch.setattr(encode_mod, "finalize_rows", fail)
        else:
            monkeypatch.setattr(prepare_mod, "replace_dir", fail)
    with pytest.raises(expected):
        make_store(raw, out)
    assert (out / "meta.json").read_bytes() == meta_before
    assert row_counts(Store(out)) == before
    assert temporaries(out) == []


def test_kill_9_during_prepare_leaves_the_old_store(tmp_path, capsys):
    small, big = tmp_path / "small.tsv", tmp_path / "big.tsv"
    write_synthetic(small, 500, seed=1, progress=False)
    write_synthetic(big, 150_000, seed=2, progress=False)
    out = tmp_path / "S"
    cmd = [sys.executable, "-m", "ctrlab", "prepare", "--quiet", "--out", str(out)]
    subprocess.run(cmd + [str(small)], cwd=REPO, check=True, capture_output=True)
    old = row_counts(Store(out))
    proc = subprocess.Popen(cmd + [str(big)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    label = out.parent / f".S.prepare-{proc.pid}" / "train" / "label.npy"
    deadline = time.monotonic() + 60  # only bounds the wait; nothing is asserted about time
    while proc.poll() is None and time.monotonic() < deadline:
        if label.is_file() and label.stat().st_size > 10_000:
            break
        time.sleep(0.01)
    killed_mid_way = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    store = Store(out)  # whole and verified: the old one, or the new one if the swap came first
    if killed_mid_way and store.meta["rows_read"] == 500:
        assert row_counts(store) == old
    else:
        assert store.meta["rows_read"] == 150_000
    rc, text = run_cli(capsys, "info", str(out))
    assert rc == 0 and f"store: {store.meta['rows_read']:,} rows" in text
    # the dead process's build directory does not confuse the next prepare, which removes it
    subprocess.run(cmd + [str(small)], cwd=REPO, check=True, capture_output=True)
    assert row_counts(Store(out)) == old
    assert temporaries(out) == []


def test_stale_temporaries_of_dead_processes_are_removed(raws, small_store, tmp_path):
    out = small_store.path
    dead = _dead_pid()
    (out.parent / f".S.prepare-{dead}" / "train").mkdir(parents=True)
    (out.parent / f".S.old-{dead}").mkdir()
    live = out.parent / f".S.prepare-{os.getppid()}"  # a running process's build: left alone
    live.mkdir()
    make_store(raws["small"], out)
    assert temporaries(out) == [live.name]


def test_store_recovers_from_a_swap_that_died_between_renames(small_store, tmp_path, capsys):
    out = small_store.path
    counts = row_counts(small_store)
    os.replace(out, out.parent / f".S.old-{_dead_pid()}")  # the fallback's first rename, then death
    assert row_counts(Store(out)) == counts
    rc, _ = run_cli(capsys, "info", str(out))
    assert rc == 0 and temporaries(out) == []


@pytest.mark.parametrize("exchange", [True, False])
def test_replace_dir_swaps_whole(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    target, new = tmp_path / "T", tmp_path / "new"
    for d, text in ((target, "old"), (new, "new")):
        d.mkdir()
        (d / "f").write_text(text)
    fileio.replace_dir(new, target)
    assert (target / "f").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["T"]


def test_replace_dir_fallback_puts_the_old_back_when_the_second_rename_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(fileio, "_exchange", lambda a, b: False)
    target = tmp_path / "T"
    target.mkdir()
    (target / "f").write_text("old")
    with pytest.raises(FileNotFoundError):
        fileio.replace_dir(tmp_path / "missing", target)
    assert (target / "f").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["T"]


def test_prepare_refuses_targets_it_cannot_swap(raws, tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        make_store(raws["small"], tmp_path / "file")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="current directory"):
        make_store(raws["small"], Path("."))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


# --------------------------------------------------------------------------------------------
# a store is verified when opened; training refuses empty splits
# --------------------------------------------------------------------------------------------

def _truncate_label(store: Store, split: str, keep: int) -> None:
    label = np.load(store.path / split / "label.npy")
    np.save(store.path / split / "label.npy", label[:keep])


@pytest.mark.parametrize("damage, message", [
    ("fewer labels", r"train/label\.npy: shape \(100,\).*meta\.json records"),
    ("no valid labels", r"valid/label\.npy: shape \(0,\).*meta\.json records"),
    ("cut bytes", r"train/sparse\.npy: truncated"),
    ("sparse columns", r"test/sparse\.npy: shape \(\d+, 3\)"),
    ("missing array", r"valid/dense\.npy: unreadable"),
    ("bad meta", r"meta\.json: damaged"),
    ("meta without splits", r"meta\.json: not a valid store description"),
    ("bad pipeline", r"pipeline\.json: damaged"),
    ("no pipeline", r"pipeline\.json: missing"),
])
def test_damaged_store_is_refused_by_store_info_and_train(small_store, tmp_path, capsys, damage, message):
    out = small_store.path
    if damage == "fewer labels":
        _truncate_label(small_store, "train", 100)
    elif damage == "no valid labels":
        _truncate_label(small_store, "valid", 0)
    elif damage == "cut bytes":
        path = out / "train" / "sparse.npy"
        os.truncate(path, path.stat().st_size - 4)
    elif damage == "sparse columns":
        sparse = np.load(out / "test" / "sparse.npy")
        np.save(out / "test" / "sparse.npy", sparse[:, :3])
    elif damage == "missing array":
        (out / "valid" / "dense.npy").unlink()
    elif damage == "bad meta":
        (out / "meta.json").write_text((out / "meta.json").read_text()[:-40])
    elif damage == "meta without splits":
        meta = json.loads((out / "meta.json").read_text())
        del meta["splits"]
        (out / "meta.json").write_text(json.dumps(meta))
    elif damage == "bad pipeline":
        (out / "pipeline.json").write_text("{not json")
    else:
        (out / "pipeline.json").unlink()
    with pytest.raises(StoreError, match=message):
        Store(out)
    rc, text = run_cli(capsys, "info", str(out))
    assert rc == 2 and str(out) in text and "error" in text
    rc, text = run_cli(capsys, "train", "--data", str(out), "--model", "lr", "--out", str(tmp_path / "run"),
                       "--epochs", "1", "--quiet")
    assert rc == 2 and str(out) in text
    assert not (tmp_path / "run" / "summary.json").exists()


def test_empty_train_split_is_refused(small_store, tmp_path, capsys):
    out = small_store.path
    _truncate_label(small_store, "train", 0)
    for name in ("dense", "sparse"):
        array = np.load(out / "train" / f"{name}.npy")
        np.save(out / "train" / f"{name}.npy", array[:0])
    meta = json.loads((out / "meta.json").read_text())
    meta["splits"]["train"]["rows"] = 0  # consistent with the arrays, and empty
    (out / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="no 'train' rows"):
        Store(out).split("train")
    rc, text = run_cli(capsys, "train", "--data", str(out), "--model", "lr", "--out", str(tmp_path / "run"),
                       "--epochs", "1", "--quiet")
    assert rc == 2 and "no 'train' rows" in text
    assert not (tmp_path / "run" / "summary.json").exists()


def test_batches_refuse_an_empty_split():
    empty = SplitArrays(np.zeros((0, 2), np.float32), np.zeros((0, 3), np.int32), np.zeros(0, np.uint8),
                        where="S: the valid split")
    with pytest.raises(ValueError, match="S: the valid split has no rows"):
        BatchIterator(empty, 8)


def test_prepare_refuses_a_store_without_training_rows(raws, tmp_path):
    few = tmp_path / "few.tsv"
    few.write_text("".join(raws["small"].read_text().splitlines(keepends=True)[:5]))
    with pytest.raises(ValueError, match="no training rows: none of the 5 rows"):
        make_store(few, tmp_path / "S", split=(1e-9, 1.0, 0.0))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["few.tsv"]


# --------------------------------------------------------------------------------------------
# full disk
# --------------------------------------------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (root only; skipped elsewhere), unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mnt = tmp_path / "disk"
    mnt.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.decode(errors='replace').strip()}")
    try:
        yield mnt
    finally:
        gc.collect()  # memory maps of the store's arrays
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_full_disk_names_the_store_and_keeps_the_old_one(raws, tmp_path, small_disk, capsys):
    big = tmp_path / "bigger.tsv"
    write_synthetic(big, 20_000, seed=5, progress=False)
    out = small_disk / "S"
    old = row_counts(make_store(raws["small"], out))
    with pytest.raises(fileio.DiskFullError, match=f"no space left on device while writing {out}"):
        make_store(big, out)
    assert row_counts(Store(out)) == old and temporaries(out) == []
    rc, text = run_cli(capsys, "prepare", str(big), "--out", str(out), "--quiet")
    assert rc == 2 and f"no space left on device while writing {out}" in text and "Errno" not in text
    assert row_counts(Store(out)) == old and temporaries(out) == []


def test_prepare_into_a_mount_point_is_refused(raws, small_disk):
    with pytest.raises(ValueError, match="mount point"):
        make_store(raws["small"], small_disk)


def _dead_pid() -> int:
    """A process id that is not running (a child that has exited and been reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid
