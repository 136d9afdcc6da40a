"""Tests for scripts/import_graph.py, the import-layering check of issue 13:

* the real ``ctrlab/`` tree has no import circle (package or module level) and no upward import;
* the checker itself, on small synthetic package trees: a clean tree passes with its counts; a
  package circle, a module circle hidden in a function-local import, an upward import, ``from pkg
  import name`` resolved to a module or to ``pkg``'s ``__init__``, an unknown package, an unparsable
  file and the Graphviz output.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "import_graph.py"

_spec = importlib.util.spec_from_file_location("import_graph", SCRIPT)
import_graph = importlib.util.module_from_spec(_spec)
sys.modules["import_graph"] = import_graph  # dataclasses look their module up there
_spec.loader.exec_module(import_graph)


def make_tree(root: Path, files: dict[str, str]) -> Path:
    """A package ``root/ctrlab`` holding ``files`` (relative path -> source); every folder gets an
    empty ``__init__.py`` unless ``files`` gives one."""
    package = root / "ctrlab"
    for rel, source in {"__init__.py": "", **files}.items():
        path = package / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for folder in [path.parent, *path.parent.parents]:
            if folder == package.parent:
                break
            (folder / "__init__.py").touch()
        path.write_text(textwrap.dedent(source))
    return package


def check(package: Path, capsys, *extra: str) -> tuple[int, str, str]:
    """Run the checker in this process: (exit code, stdout, stderr)."""
    code = import_graph.main(["--root", str(package), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_real_tree_has_no_cycle_and_no_upward_import():
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no cycles, no upward imports" in done.stdout


def test_a_clean_tree_passes_with_its_counts(tmp_path, capsys):
    package = make_tree(tmp_path, {
        "fields.py": "import os\n",
        "fileio.py": "from .fields import Field\n",
        "features/pipeline.py": "from ..fields import Field\nfrom ctrlab.fileio import write\n",
        "features/encoders.py": "from . import pipeline\n",
        "cli/main.py": "import ctrlab.features.pipeline\n\ndef run():\n    from ctrlab import fileio\n",
    })
    code, out, err = check(package, capsys)
    assert (code, err) == (0, "")
    # packages: __init__, fields, fileio, features, cli; edges: fileio->fields, features->fields,
    # features->fileio, cli->features, cli->fileio (the function-local one counts)
    assert out.splitlines()[-1] == "import graph: 5 packages, 5 edges, no cycles, no upward imports"
    assert "[7] cli          -> features (1), fileio (1)" in out
    assert "[1] features     -> fields (1), fileio (1)" in out


def test_a_package_circle_at_one_level_fails_naming_it(tmp_path, capsys):
    package = make_tree(tmp_path, {
        "data/store.py": "from ..models import registry\n",
        "models/registry.py": "from ctrlab.data import prepare\n",
        "data/prepare.py": "import numpy\n",
    })
    code, _out, err = check(package, capsys)
    assert code == 1
    assert ("ERROR: package import cycle: data -> models -> data\n"
            "    data -> models (ctrlab.data.store -> ctrlab.models.registry)\n"
            "    models -> data (ctrlab.models.registry -> ctrlab.data.prepare)") in err
    assert "module import cycle" not in err  # store -> registry -> prepare closes no module circle
    assert "upward import" not in err


def test_a_function_local_import_that_closes_a_module_circle_fails(tmp_path, capsys):
    package = make_tree(tmp_path, {
        "train/trainer.py": "from . import distributed\n",
        "train/distributed.py": "def gather():\n    from .trainer import predict_split\n    return predict_split\n",
    })
    code, _out, err = check(package, capsys)
    assert code == 1
    assert "ERROR: module import cycle: ctrlab.train.distributed -> ctrlab.train.trainer -> ctrlab.train.distributed" in err
    assert "package import cycle" not in err


def test_an_upward_import_fails_naming_the_modules(tmp_path, capsys):
    package = make_tree(tmp_path, {
        "train/run.py": "from ctrlab.cli.main import prepare_options\n",
        "cli/main.py": "import argparse\n",
    })
    code, _out, err = check(package, capsys)
    assert code == 1
    assert "ERROR: upward import: train (level 4) imports cli (level 7): ctrlab.train.run -> ctrlab.cli.main" in err
    assert "cycle" not in err


def test_from_package_import_a_name_is_an_edge_to_its_init(tmp_path, capsys):
    """``from . import sections`` names a module (no circle); ``from . import load`` names something
    defined in config/__init__.py, which imports loading: a circle through the __init__."""
    files = {"config/__init__.py": "from .loading import load\n", "config/sections.py": ""}
    clean = make_tree(tmp_path / "a", {**files, "config/loading.py": "from . import sections\n"})
    assert check(clean, capsys)[0] == 0
    tangled = make_tree(tmp_path / "b", {**files, "config/loading.py": "from . import sections, load\n"})
    code, _out, err = check(tangled, capsys)
    assert code == 1
    assert "ERROR: module import cycle: ctrlab.config -> ctrlab.config.loading -> ctrlab.config" in err


def test_a_package_missing_from_the_layers_fails(tmp_path, capsys):
    package = make_tree(tmp_path, {"cli_deploy.py": "", "plugins/extra.py": ""})
    code, out, err = check(package, capsys)
    assert code == 1
    assert "ERROR: unknown package 'cli_deploy' in ctrlab/: add it to LAYERS" in err
    assert "ERROR: unknown package 'plugins' in ctrlab/: add it to LAYERS" in err
    assert "[?] plugins" in out


def test_an_unparsable_file_is_named(tmp_path, capsys):
    package = make_tree(tmp_path, {"schema.py": "def broken(:\n"})
    code, _out, err = check(package, capsys)
    assert code == 2 and f"{package / 'schema.py'}:1: cannot parse" in err


def test_dot_output_marks_problem_edges(tmp_path, capsys):
    package = make_tree(tmp_path, {"metrics.py": "from .serve import app\n", "serve/app.py": "from .. import metrics\n"})
    code, out, err = check(package, capsys, "--dot")
    assert code == 1
    assert out.startswith("digraph imports {") and out.rstrip().endswith("}")
    assert '"metrics" -> "serve" [label="1" color="red" fontcolor="red"];' in out
    assert '"serve" -> "metrics" [label="1" color="red" fontcolor="red"];' in out  # on the circle
    assert "ERROR: upward import: metrics (level 0) imports serve (level 6)" in err


@pytest.mark.parametrize("text, expected", [
    ("import ctrlab.data.store as s", {"ctrlab.data.store"}),
    ("import ctrlab.data.missing", {"ctrlab.data"}),  # the longest prefix that is a module
    ("from ctrlab.data.store import Store", {"ctrlab.data.store"}),
    ("from .. import data", {"ctrlab.data"}),
    ("from ...outside import x", set()),  # above the root: not this tree
    ("import numpy\nfrom os import path", set()),
])
def test_import_resolution(tmp_path, text, expected):
    package = make_tree(tmp_path, {"data/store.py": "", "train/run.py": text + "\n"})
    modules = import_graph.module_names(package)
    assert import_graph.imported_modules("ctrlab.train.run", package / "train" / "run.py", modules) == expected
