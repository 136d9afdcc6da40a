"""Faults around what training and export write and what a bundle load trusts:

* a full disk during ``train`` / ``export`` (a small tmpfs; root only) is reported as "no space left
  on device while writing PATH", the command exits 2 without a traceback, no temporaries remain,
  every checkpoint left behind loads, and an existing bundle survives a failed ``--force`` export;
* a hand-damaged ``manifest.json`` (list top level, missing keys, wrong types, an entry without
  sha256, a wrong hash, an unlisted file such as a stray ``model.int8.onnx``) is a BundleError that
  names the file, from the loader, the Predictor and ``ctrlab predict``; only listed files load;
* a run killed before its first checkpoint (kill -9) resumes with each step and epoch record once.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ctrlab.cli as cli
import ctrlab.train.trainer as trainer_mod
from ctrlab.config import load_config
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.synth import write_synthetic
from ctrlab.export.bundle import export_bundle
from ctrlab.export.manifest import BundleError, load_manifest
from ctrlab.inference import Predictor
from ctrlab.train.run import run_training
from conftest import synthetic_store
from conftest import Crash, crashing_iterator  # the same simulated crash as the resume tests

REPO = Path(__file__).resolve().parents[2]
FULL = "no space left on device while writing"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quiet(_msg: str) -> None:
    pass


def settings(store: Path, run_dir: Path, *extra: str) -> list[str]:
    return [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(run_dir))}", "model.name=fm",
            "model.params.embedding_dim=4", "train.epochs=2", "train.batch_size=256", "train.threads=1",
            "train.log_every=1", *extra]


def set_args(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def disk_usage(folder: Path) -> int:
    """Bytes the files under ``folder`` occupy (whole blocks, as a tmpfs counts them)."""
    return sum(p.stat().st_blocks * 512 for p in folder.rglob("*") if p.is_file())


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("faults_store")
    synthetic_store(root, 3000, seed=4)
    return root / "store"


@pytest.fixture(scope="module")
def run(store, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("faults_run") / "run"
    run_training(load_config(None, settings(store, run_dir)), progress=False, log=quiet)
    return run_dir


@pytest.fixture(scope="module")
def bundle(run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("faults_bundle") / "bundle"
    export_bundle(run, out, log=quiet)
    return out


@pytest.fixture
def small_disk(tmp_path):
    """``small_disk(nbytes)`` -> the mount point of a tmpfs of that size (unmounted afterwards)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounts: list[Path] = []

    def mount(nbytes: int) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        size = max(4096, nbytes // 4096 * 4096)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if proc.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
        mounts.append(point)
        return point

    yield mount
    for point in mounts:
        subprocess.run(["umount", str(point)], check=True)


def assert_clean_failure(rc: int, err: str, disk: Path) -> None:
    assert rc == 2, err
    assert FULL in err and str(disk) in err, err
    assert "Traceback" not in err and "inline_container" not in err, err
    assert temporaries(disk) == []


# --------------------------------------------------------------------------------------------
# item 8: a full disk during train and export
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0, 0.05, 0.3, 0.6, 0.9])  # 0: one page, config.yaml only
def test_train_on_a_full_disk_names_the_path_and_leaves_no_temporaries(store, run, small_disk, capsys, fraction):
    disk = small_disk(int(disk_usage(run) * fraction))  # the store stays elsewhere; the run cannot fit
    rc = cli.main(["train", "--quiet", "--no-resume", *set_args(settings(store, disk / "run"))])
    assert_clean_failure(rc, capsys.readouterr().err, disk)
    for checkpoint in (disk / "run" / "checkpoints").glob("*.pt"):  # what is there is whole
        torch.load(checkpoint, weights_only=True)


@pytest.mark.parametrize("fraction", [0.02, 0.2, 0.45, 0.7, 0.85, 0.97])
def test_export_on_a_full_disk_names_the_path_and_leaves_nothing(run, small_disk, tmp_path, capsys, fraction):
    reference = tmp_path / "reference"
    export_bundle(run, reference, quantize=True, log=quiet)
    disk = small_disk(int(disk_usage(reference) * fraction))
    rc = cli.main(["export", str(run), "--out", str(disk / "bundle"), "--quantize"])
    assert_clean_failure(rc, capsys.readouterr().err, disk)
    assert list(disk.iterdir()) == []  # no partial bundle


def test_forced_export_on_a_full_disk_keeps_the_old_bundle(run, small_disk, tmp_path, capsys):
    reference = tmp_path / "reference"
    export_bundle(run, reference, log=quiet)
    disk = small_disk(int(disk_usage(reference) * 1.5))  # room for one bundle, not for two
    assert cli.main(["export", str(run), "--out", str(disk / "bundle")]) == 0
    before = load_manifest(disk / "bundle")
    capsys.readouterr()
    rc = cli.main(["export", str(run), "--out", str(disk / "bundle"), "--force", "--epoch", "1"])
    assert_clean_failure(rc, capsys.readouterr().err, disk)
    assert load_manifest(disk / "bundle") == before  # still the old one, whole and verified


# --------------------------------------------------------------------------------------------
# item 9: damaged manifests and unlisted files
# --------------------------------------------------------------------------------------------

def _drop(key):
    return lambda m: {k: v for k, v in m.items() if k != key}


def _set(path: str, value):  # path: keys joined by "/"
    def edit(m):
        node = m
        *parents, last = path.split("/")
        for part in parents:
            node = node[part]
        node[last] = value
        return m
    return edit


def _drop_sha(name):
    def edit(m):
        del m["files"][name]["sha256"]
        return m
    return edit


DAMAGED = {
    "list top level": (lambda m: [m], "top level"),
    "string top level": (lambda m: "manifest", "top level"),
    "no schema": (_drop("schema"), "schema: missing"),
    "no files": (_drop("files"), "files: missing"),
    "no spec": (_drop("spec"), "spec: missing"),
    "no model": (_drop("model"), "model: missing"),
    "no format_version": (_drop("format_version"), "format_version None is not supported"),
    "format_version a string": (_set("format_version", "1"), "format_version '1' is not supported"),
    "files a list": (lambda m: {**m, "files": list(m["files"])}, "files: expected an object"),
    "entry without sha256": (_drop_sha("model.onnx"), "files.model.onnx.sha256"),
    "entry a string": (_set("files/model.pt", "abc"), "files.model.pt: expected an object"),
    "sha256 a number": (_set("files/pipeline.json/sha256", 7), "files.pipeline.json.sha256"),
    "bytes a string": (_set("files/model.pt/bytes", "12"), "files.model.pt.bytes"),
    "model name a number": (_set("model/name", 3), "model.name: expected a string"),
    "model params a list": (_set("model/params", []), "model.params: expected an object"),
    "schema a list": (_set("schema", []), "schema: expected an object"),
    "schema with an unknown key": (lambda m: {**m, "schema": {**m["schema"], "colour": 1}}, "schema:"),
    "vocab sizes not numbers": (_set("spec/vocab_sizes", "abc"), "spec.vocab_sizes: expected a list"),
    "spec lengths differ": (lambda m: {**m, "spec": {**m["spec"], "vocab_sizes": [5]}}, "spec:"),
    "onnx file missing": (_set("onnx", {}), "onnx.file: missing"),
    "a path outside the bundle": (lambda m: {**m, "files": {**m["files"], "../x": m["files"]["model.pt"]}},
                                  "files.../x: not a file name inside the bundle"),
    "model.pt not listed": (lambda m: {**m, "files": {k: v for k, v in m["files"].items() if k != "model.pt"}},
                            "model.pt is not listed"),
    "int8 named but not listed": (lambda m: {**m, "int8": {"file": "model.int8.onnx"}},
                                  "model.int8.onnx is not listed"),
    "wrong hash": (_set("files/model.pt/sha256", "0" * 64), "model.pt: sha256 mismatch"),
}


def damaged_copy(bundle: Path, folder: Path, edit) -> Path:
    copy = folder / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps(edit(manifest)))
    return copy


@pytest.mark.parametrize("case", list(DAMAGED))
def test_damaged_manifest_is_a_bundle_error_naming_the_file(bundle, tmp_path, capsys, case):
    edit, expected = DAMAGED[case]
    copy = damaged_copy(bundle, tmp_path, edit)
    for load in (lambda: load_manifest(copy), lambda: Predictor(copy, threads=1),
                 lambda: Predictor(copy, backend="torch")):
        with pytest.raises(BundleError) as err:
            load()
        assert expected in str(err.value) and str(copy) in str(err.value)
    rows = tmp_path / "rows.tsv"
    rows.write_text("")  # never read: the bundle is refused first
    rc = cli.main(["predict", str(copy), str(rows), "--out", str(tmp_path / "scores.tsv")])
    err = capsys.readouterr().err
    assert rc == 2 and expected in err and str(copy) in err and "Traceback" not in err, err
    assert not (tmp_path / "scores.tsv").exists()


def test_not_json_and_not_utf8_manifests_are_bundle_errors(bundle, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    for content in (b"{\"format_version\": 1,", b"\xff\xfe{}"):
        (copy / "manifest.json").write_bytes(content)
        with pytest.raises(BundleError, match=r"manifest.json: not valid JSON"):
            load_manifest(copy)


def test_an_unlisted_int8_graph_is_never_loaded(bundle, tmp_path, capsys):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    shutil.copyfile(copy / "model.onnx", copy / "model.int8.onnx")  # a valid graph, but not the bundle's
    with pytest.raises(BundleError, match=r"model.int8.onnx: not listed in the manifest"):
        load_manifest(copy)
    with pytest.raises(BundleError, match=r"model.int8.onnx: not listed in the manifest"):
        Predictor(copy, variant="fp32", threads=1)
    with pytest.raises(BundleError, match=r"manifest.json: the bundle lists no int8 model"):
        Predictor(copy, variant="int8", threads=1, verify=False)  # even unverified: only listed files load
    rc = cli.main(["predict", str(copy), str(tmp_path / "rows.tsv"), "--out", str(tmp_path / "s.tsv"),
                   "--variant", "int8"])
    err = capsys.readouterr().err
    assert rc == 2 and "model.int8.onnx: not listed in the manifest" in err and "Traceback" not in err, err


def test_weights_that_do_not_fit_the_manifest_model_are_a_bundle_error(bundle, tmp_path):
    params = json.loads((bundle / "manifest.json").read_text())["model"]["params"]
    copy = damaged_copy(bundle, tmp_path, _set("model/params", {**params, "embedding_dim": 8}))
    with pytest.raises(BundleError, match=r"model.pt: does not load as the model 'fm'"):
        Predictor(copy, backend="torch")


def test_the_undamaged_bundle_loads(bundle):
    manifest = load_manifest(bundle)
    assert Predictor(bundle, threads=1).manifest == manifest


# --------------------------------------------------------------------------------------------
# item 10: run records after a kill before the first checkpoint
# --------------------------------------------------------------------------------------------

def assert_records_once(run_dir: Path, epochs: int) -> None:
    steps = [r["step"] for r in read_jsonl(run_dir / "steps.jsonl")]
    assert steps == list(range(1, len(steps) + 1)) and steps, steps  # every step once, in order
    assert [r["epoch"] for r in read_jsonl(run_dir / "epochs.jsonl")] == list(range(1, epochs + 1))
    csv_epochs = [line.split(",")[0] for line in (run_dir / "epochs.csv").read_text().splitlines()[1:]]
    assert csv_epochs == [str(e) for e in range(1, epochs + 1)]


def test_run_killed_before_its_first_checkpoint_resumes_with_each_record_once(tmp_path):
    root = tmp_path
    write_synthetic(root / "big.tsv", 20000, seed=2, progress=False)
    prepare(PrepareOptions(train=[str(root / "big.tsv")]), root / "store", progress=False, log=quiet)
    run_dir = root / "run"
    args = [sys.executable, "-m", "ctrlab", "train", "--quiet",
            *set_args(settings(root / "store", run_dir, "train.batch_size=16"))]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        steps = run_dir / "steps.jsonl"
        while proc.poll() is None and not (steps.is_file() and steps.stat().st_size > 0):
            time.sleep(0.05)  # polling for the first flushed step records (no time is asserted)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    if (run_dir / "checkpoints" / "last.pt").exists():
        pytest.skip("the first epoch finished before the kill")  # 1000 steps: never seen in practice
    assert read_jsonl(steps)  # the killed run left step records behind

    done = subprocess.run(args + ["--set", "train.epochs=1"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    assert_records_once(run_dir, 1)




@pytest.mark.parametrize("epoch_index", [0, 1])
def test_resume_after_a_crash_keeps_each_record_once(store, tmp_path, monkeypatch, epoch_index):
    run_dir = tmp_path / "run"
    cfg = lambda: load_config(None, settings(store, run_dir, "train.batch_size=64", "train.epochs=3"))  # noqa: E731
    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "BatchIterator", crashing_iterator(epoch_index, after_batches=5))
        with pytest.raises(Crash):
            run_training(cfg(), progress=False, log=quiet)
    with open(run_dir / "steps.jsonl", "a") as fh:
        fh.write('{"step": 9')  # a record torn by the kill
    # a temporary a killed writer left behind (its process is gone)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (run_dir / "checkpoints").mkdir(exist_ok=True)
    stale = run_dir / "checkpoints" / f".last.pt.tmp-{dead.pid}"
    stale.write_bytes(b"half a checkpoint")
    run_training(cfg(), progress=False, log=quiet)
    assert_records_once(run_dir, 3)
    assert not stale.exists()


def test_a_damaged_step_record_is_an_error_naming_file_and_line(store, tmp_path, monkeypatch):
    run_dir = tmp_path / "run"
    cfg = lambda: load_config(None, settings(store, run_dir))  # noqa: E731
    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "BatchIterator", crashing_iterator(1, after_batches=2))
        with pytest.raises(Crash):
            run_training(cfg(), progress=False, log=quiet)
    lines = (run_dir / "steps.jsonl").read_text().splitlines()
    lines[1] = "not json"
    damaged = "\n".join(lines) + "\n"
    (run_dir / "steps.jsonl").write_text(damaged)
    with pytest.raises(ValueError, match=r"steps.jsonl:2: not a step record"):
        run_training(cfg(), progress=False, log=quiet)
    assert (run_dir / "steps.jsonl").read_text() == damaged  # left as it was, for the user to fix
