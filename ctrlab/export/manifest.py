"""A bundle's manifest: its file names, format, structure checks and the checks on load.

Layout of a bundle folder::

    BUNDLE/manifest.json   versions, schema, input signature, file sha256s, metrics at export,
                           model name + params, the parity check, format_version
    BUNDLE/pipeline.json   the fitted FeaturePipeline (copied from the store)
    BUNDLE/config.yaml     the run's resolved config
    BUNDLE/model.pt        the state_dict alone (``torch.load(..., weights_only=True)``)
    BUNDLE/model.onnx      inputs dense f32[batch, n_dense], sparse i64[batch, n_sparse];
                           outputs logits f32[batch], probabilities f32[batch]; a multi-task
                           bundle: f32[batch, T], column t = task t of the manifest's "tasks"
    BUNDLE/model.int8.onnx optional: dynamically quantized (int8 weights) variant

Several tasks (a multi-task model on a store of several labels, issue 16): the manifest has a
top-level ``"tasks": ["click", "conversion"]`` (the store's label names, in output column order)
and ``outputs.logits/probabilities.shape`` ``["batch", T]`` (the graph's task axis is the fixed
dimension T); ``model.params.num_tasks`` is T. A single-task bundle has no ``tasks`` (outputs
``["batch"]``); one trained on one task of a multi-task store (``train.task``) names it in a
top-level ``"task"``. The int8 section of a multi-task bundle measures every task (``int8.tasks``).

:func:`load_manifest` checks the format version, the manifest's structure (every key a loader
reads, with its type; every file entry a relative path with a sha256) and that the folder holds
exactly the listed files with their sha256s, and says what is wrong (which file, expected vs
actual). Only listed, checked files are loaded (:func:`graph_file` for a variant's graph).

This module is what every reader of a bundle (the predictor, the server, the inference benchmark)
imports, so it stays light: no torch, onnx or onnxruntime import (an onnx-backend server never
loads torch). Writing a bundle is :mod:`ctrlab.export.bundle`.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import re
import sys
from pathlib import Path
from typing import Any

from .. import __version__
from ..fields import FeatureSpec
from ..fileio import sha256_file
from ..schema import Schema

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PIPELINE = "pipeline.json"
CONFIG = "config.yaml"
TORCH_WEIGHTS = "model.pt"
ONNX_MODEL = "model.onnx"
ONNX_INT8 = "model.int8.onnx"

#: the libraries whose versions a manifest records besides ctrlab's and python's
_LIBRARIES = ("torch", "onnx", "onnxruntime", "numpy", "pyarrow")


class BundleError(ValueError):
    """A bundle that cannot be used as it is: says which file and what was expected."""


# --------------------------------------------------------------------------------------------
# what a manifest records
# --------------------------------------------------------------------------------------------

def library_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on (recorded at export, compared on load)."""
    return {"ctrlab": __version__, **{name: _version_of(name) for name in _LIBRARIES},
            "python": platform.python_version()}


def _version_of(module: str) -> str:
    """A library's ``__version__`` when it is imported already (always so when exporting), else its
    installed distribution's version, read without importing it: checking a bundle for an onnx
    predictor must not import torch. A distribution named otherwise (``onnxruntime-gpu``) is imported."""
    if module in sys.modules:
        return sys.modules[module].__version__
    try:
        return importlib.metadata.version(module)
    except importlib.metadata.PackageNotFoundError:
        return importlib.import_module(module).__version__


def file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """The manifest's ``files``: sha256 and size of every file of a bundle folder but the manifest
    (ONNX external data files included), by path relative to the folder."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            rel = path.relative_to(folder).as_posix()
            out[rel] = {"sha256": sha256_file(path), "bytes": path.stat().st_size}
    return out


# --------------------------------------------------------------------------------------------
# load and verify
# --------------------------------------------------------------------------------------------

def load_manifest(bundle_dir: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """The manifest of a bundle, after checking its format version and structure and (``verify``)
    that the folder holds exactly the files it lists, each with its sha256. Raises BundleError
    naming the file and the problem."""
    folder = Path(bundle_dir)
    path = folder / MANIFEST
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such bundle directory")
    if not path.is_file():
        raise BundleError(f"{folder}: not a ctrlab bundle (no {MANIFEST}); make one with `ctrlab export RUN --out DIR`")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: expected a JSON object at the top level, found {_json_type(manifest)}")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION or isinstance(version, bool):
        versions = manifest.get("versions")
        made_by = versions.get("ctrlab", "an unknown version") if isinstance(versions, dict) else "an unknown version"
        raise BundleError(f"{folder}: bundle format_version {version!r} is not supported: this ctrlab "
                          f"({__version__}) reads format_version {FORMAT_VERSION}; the bundle was written by "
                          f"ctrlab {made_by}. Re-export it with this ctrlab (`ctrlab export RUN --out DIR`) or "
                          f"use the matching ctrlab version")
    problems = manifest_problems(manifest)
    if problems:
        raise BundleError(f"{path}: damaged manifest; re-export the bundle:\n  " + "\n  ".join(problems))
    if verify:
        verify_files(folder, manifest)
    return manifest


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


# (key, JSON type) a loader reads, per manifest section
_REQUIRED: dict[str, tuple[tuple[str, type], ...]] = {
    "": (("versions", dict), ("model", dict), ("schema", dict), ("spec", dict), ("inputs", dict),
         ("outputs", dict), ("onnx", dict), ("metrics", dict), ("files", dict)),
    "model": (("name", str), ("params", dict)),
    "spec": (("dense_names", list), ("sparse_names", list), ("vocab_sizes", list)),
    "onnx": (("file", str),),
    "int8": (("file", str),),
}
_SHA256 = re.compile(r"[0-9a-f]{64}")


def _type_problems(section: dict[str, Any], where: str, required: tuple[tuple[str, type], ...]) -> list[str]:
    problems = []
    for key, kind in required:
        if key not in section:
            problems.append(f"{where}{key}: missing")
        elif not isinstance(section[key], kind) or isinstance(section[key], bool):
            problems.append(f"{where}{key}: expected {_json_type(kind())}, found {_json_type(section[key])}")
    return problems


def manifest_problems(manifest: dict[str, Any]) -> list[str]:
    """What is wrong with a manifest's structure (empty when nothing): every key a loader reads,
    its type, the schema and spec, and every file entry (a relative path with a sha256)."""
    problems = _type_problems(manifest, "", _REQUIRED[""])
    for section in ("model", "spec", "onnx", "int8"):
        if isinstance(manifest.get(section), dict):
            problems += _type_problems(manifest[section], f"{section}.", _REQUIRED[section])
        elif section == "int8" and section in manifest:
            problems.append(f"int8: expected an object, found {_json_type(manifest[section])}")
    if problems:
        return problems
    spec = manifest["spec"]
    if not all(isinstance(n, str) for n in spec["dense_names"] + spec["sparse_names"]) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in spec["vocab_sizes"]):
        problems.append("spec: names must be strings and vocab_sizes integers")
    for key, build in (("schema", Schema.from_dict), ("spec", FeatureSpec.from_dict)):
        try:
            build(manifest[key])
        except (TypeError, ValueError, KeyError) as exc:
            problems.append(f"{key}: {exc}")
    files = manifest["files"]
    for name, entry in files.items():
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts or name == MANIFEST:
            problems.append(f"files.{name}: not a file name inside the bundle")
        if not isinstance(entry, dict):
            problems.append(f"files.{name}: expected an object with sha256 and bytes, found {_json_type(entry)}")
            continue
        sha = entry.get("sha256")
        if not isinstance(sha, str) or not _SHA256.fullmatch(sha):
            problems.append(f"files.{name}.sha256: expected 64 lowercase hex digits, found {sha!r}")
        size = entry.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            problems.append(f"files.{name}.bytes: expected a byte count, found {size!r}")
    problems += _task_problems(manifest)
    graphs = [manifest["onnx"]["file"]] + ([manifest["int8"]["file"]] if "int8" in manifest else [])
    for required in dict.fromkeys([PIPELINE, TORCH_WEIGHTS, ONNX_MODEL, *graphs]):
        if required not in files:
            problems.append(f"files: {required} is not listed")
    return problems


def _task_problems(manifest: dict[str, Any]) -> list[str]:
    """A multi-task manifest's ``tasks`` (2+ distinct names) and its outputs' ``[batch, T]`` shapes;
    a single-task one's ``task`` (a name)."""
    if "task" in manifest and (not isinstance(manifest["task"], str) or not manifest["task"]):
        return [f"task: expected a task name, found {manifest['task']!r}"]
    if "tasks" not in manifest:
        return []
    tasks = manifest["tasks"]
    if not isinstance(tasks, list) or len(tasks) < 2 or not all(isinstance(t, str) and t for t in tasks) \
            or len(set(tasks)) != len(tasks):
        return [f"tasks: expected a list of 2 or more distinct names, found {tasks!r}"]
    problems = []
    for name in ("logits", "probabilities"):
        shape = manifest["outputs"].get(name, {}).get("shape") if isinstance(manifest["outputs"].get(name), dict) \
            else None
        if not isinstance(shape, list) or len(shape) != 2 or shape[1] != len(tasks):
            problems.append(f"outputs.{name}.shape: expected [batch, {len(tasks)}] for the tasks {tasks}, "
                            f"found {shape!r}")
    return problems


#: models whose task 1 is "click AND conversion" over all impressions (as ctrlab.train.evaluate's
#: CLICK_AND_CONVERSION_MODELS, kept here: readers of a bundle import no torch)
CLICK_AND_CONVERSION_MODELS = ("esmm", "aitm")


def task_labels(model_name: str, labels: Any) -> Any:
    """A multi-task bundle's labels ``[n, T]`` (NaN or 255 where missing) as its model's task columns
    see them: for ESMM / AITM (2 tasks) task 1 is "click AND conversion", a known 0 wherever click
    is 0 (so column 1, pCTCVR, is scored over every row, as training scores it)."""
    import numpy as np  # (numpy only where labels are scored)

    y = np.array(labels, copy=True)
    if model_name in CLICK_AND_CONVERSION_MODELS and y.ndim == 2 and y.shape[1] == 2:
        y[y[:, 0] == 0, 1] = 0
    return y


def manifest_tasks(manifest: dict[str, Any]) -> list[str] | None:
    """A multi-task bundle's task names, in output column order; None for a single-task bundle
    (outputs ``[batch]``; its manifest has no ``tasks``)."""
    tasks = manifest.get("tasks")
    return list(tasks) if tasks else None


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """The folder holds exactly the manifest's files, each with its recorded sha256."""
    problems = []
    files = manifest["files"]
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing (the manifest lists it with sha256 {entry['sha256']})")
            continue
        actual = sha256_file(path)
        if actual != entry["sha256"]:
            problems.append(f"{name}: sha256 mismatch: the manifest expects {entry['sha256']}, the file has {actual} "
                            f"({path.stat().st_size} bytes now, {entry.get('bytes')} at export)")
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_file() and name != MANIFEST and name not in files:
            problems.append(f"{name}: not listed in the manifest (nothing unlisted is loaded)")
    if problems:
        raise BundleError(f"{folder}: the bundle's files do not match its manifest (changed after export?); "
                          "re-export it:\n  " + "\n  ".join(problems))


def variants(manifest: dict[str, Any]) -> list[str]:
    """The model variants a bundle lists: fp32, and int8 when it was exported with --quantize."""
    return ["fp32"] + (["int8"] if "int8" in manifest else [])


def graph_file(bundle_dir: str | os.PathLike, manifest: dict[str, Any], variant: str = "fp32") -> Path:
    """The ONNX graph of a variant, as the (checked) manifest lists it; BundleError when it lists none."""
    if variant not in variants(manifest):
        raise BundleError(f"{Path(bundle_dir) / MANIFEST}: the bundle lists no {variant} model "
                          f"(its variants: {', '.join(variants(manifest))}; export with --quantize for int8)")
    return Path(bundle_dir) / manifest["onnx" if variant == "fp32" else "int8"]["file"]


def version_notes(manifest: dict[str, Any]) -> list[str]:
    """Library versions that differ from the ones at export (informational: the graph and
    weights formats are stable across these, the parity check was run with the recorded ones)."""
    recorded = manifest.get("versions", {})
    current = library_versions()
    return [f"{name} {recorded[name]} at export, {current[name]} now" for name in ("torch", "onnxruntime", "onnx")
            if name in recorded and recorded[name] != current.get(name)]
