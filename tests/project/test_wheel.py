"""ctrlab works as an installed wheel, not only from this checkout: the ready configs are package
data, and ``ctrlab train --model deepfm`` finds its preset from a fresh venv outside the repository.

The wheel is built from a copy of the sources (the build writes build/ and *.egg-info next to
them) without build isolation when this venv's setuptools can build it (no network), else with
isolation (pip fetches the build backend from the package index). The fresh venv gets the wheel
alone; the dependencies (torch, numpy, ...) are borrowed from this venv's site-packages through a
.pth line, which puts that one directory on sys.path after the venv's own: the checkout itself
is never on its path, so ``import ctrlab`` can only find the wheel.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from ctrlab.config import base_config_for

REPO = Path(__file__).resolve().parents[2]
PRESETS = sorted(p.name for p in (REPO / "ctrlab" / "config" / "presets").glob("*.yaml"))
#: the oldest setuptools that reads pyproject's SPDX ``license = "Apache-2.0"`` (PEP 639)
SETUPTOOLS_FOR_LICENSE = (77,)


def run(args: list[str | Path], cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """A subprocess whose environment cannot point back into the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, args))} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def setuptools_builds_offline() -> bool:
    try:
        version = importlib.metadata.version("setuptools")
    except importlib.metadata.PackageNotFoundError:
        return False
    return tuple(int(p) for p in version.split(".")[:1]) >= SETUPTOOLS_FOR_LICENSE


def build_wheel(out: Path, work: Path) -> Path:
    """ctrlab's wheel in ``out``, built from a copy of pyproject.toml, README.md and ctrlab/."""
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    shutil.copytree(REPO / "ctrlab", src / "ctrlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    isolation = ["--no-build-isolation", "--no-index"] if setuptools_builds_offline() else []
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", *isolation, "-q", "-w", out, src], cwd=work)
    (wheel,) = out.glob("ctrlab-*.whl")
    return wheel


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict[str, Path]:
    """A fresh venv outside the repository with the wheel installed."""
    work = tmp_path_factory.mktemp("wheel")
    assert REPO not in work.parents
    wheel = build_wheel(work / "dist", work)
    venv = work / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=work)
    python = venv / "bin" / "python"
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel],
        cwd=work)
    purelib = Path(run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"], cwd=work)
                   .stdout.strip())
    deps = site.getsitepackages()  # this venv's site-packages: the dependencies, not ctrlab's sources
    assert str(REPO) not in deps
    (purelib / "ctrlab_test_dependencies.pth").write_text("".join(f"{p}\n" for p in deps))
    return {"work": work, "wheel": wheel, "venv": venv, "python": python, "purelib": purelib}


def test_the_wheel_ships_the_ready_configs(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    shipped = sorted(n.rsplit("/", 1)[1] for n in names if n.startswith("ctrlab/config/presets/"))
    assert PRESETS and shipped == PRESETS


def test_ctrlab_train_with_a_ready_config_from_the_installed_wheel(installed):
    work, venv = installed["work"], installed["venv"]
    where = run([installed["python"], "-c", "import ctrlab; print(ctrlab.__file__)"], cwd=work).stdout.strip()
    assert Path(where).resolve().is_relative_to(installed["purelib"].resolve()), where
    assert not Path(where).resolve().is_relative_to(REPO), where

    ctrlab = venv / "bin" / "ctrlab"
    run([ctrlab, "data", "synth", "--rows", "600", "--out", work / "synth.tsv", "--seed", "3", "--quiet"], cwd=work)
    run([ctrlab, "prepare", work / "synth.tsv", "--out", work / "store", "--quiet"], cwd=work)
    run([ctrlab, "train", "--data", work / "store", "--model", "deepfm", "--epochs", "1", "--out", work / "run",
         "--set", "train.threads=1"], cwd=work)

    saved = yaml.safe_load((work / "run" / "config.yaml").read_text())
    ready = base_config_for("deepfm")
    assert saved["model"]["name"] == "deepfm"
    assert saved["model"]["params"] == ready["model"]["params"]  # embedding_dim 10, hidden_units [400]*3, ...
    assert saved["train"]["epochs"] == 1
    for key, value in ready["train"].items():
        if key != "epochs":
            assert saved["train"][key] == value, key
    assert (work / "run" / "summary.json").is_file()
