"""The deployable bundle: everything needed to score raw rows, checked on load.

Layout::

    BUNDLE/manifest.json   versions, schema, input signature, file sha256s, metrics at export,
                           model name + params, the parity check, format_version
    BUNDLE/pipeline.json   the fitted FeaturePipeline (copied from the store)
    BUNDLE/config.yaml     the run's resolved config
    BUNDLE/model.pt        the state_dict alone (``torch.load(..., weights_only=True)``)
    BUNDLE/model.onnx      inputs dense f32[batch, n_dense], sparse i64[batch, n_sparse];
                           outputs logits f32[batch], probabilities f32[batch]
    BUNDLE/model.int8.onnx optional: dynamically quantized (int8 weights) variant

:func:`export_bundle` writes into a temporary directory next to the target and renames it into
place only after the ONNX graph matched the torch model on a golden batch of real rows (the
store's valid or test split): a bundle that exists passed its parity check.

:func:`load_manifest` checks the format version, the manifest's structure (every key a loader
reads, with its type; every file entry a relative path with a sha256) and that the folder holds
exactly the listed files with their sha256s, and says what is wrong (which file, expected vs
actual). Only listed, checked files are loaded (:func:`graph_file` for a variant's graph). A full
disk during export is a DiskFullError naming the bundle file; the temporary folder is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import platform
import re
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .. import __version__
from ..fileio import sha256_file
from ..fileio import DiskFullError, disk_errors, replace_dir, short_of_space, stale_siblings
from ..train.rundir import RunDir

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
PIPELINE = "pipeline.json"
CONFIG = "config.yaml"
TORCH_WEIGHTS = "model.pt"
ONNX_MODEL = "model.onnx"
ONNX_INT8 = "model.int8.onnx"
PARITY_TOLERANCE = 1e-5
GOLDEN_ROWS = 256


class BundleError(ValueError):
    """A bundle that cannot be used as it is: says which file and what was expected."""


# --------------------------------------------------------------------------------------------
# hashing and versions
# --------------------------------------------------------------------------------------------

sha256_of = sha256_file  # one implementation of file hashing (readers record sources with it too)


def library_versions() -> dict[str, str]:
    """Versions of the libraries a bundle depends on (recorded at export, compared on load)."""
    import onnx
    import onnxruntime
    import pyarrow
    import torch

    return {"ctrlab": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": np.__version__, "pyarrow": pyarrow.__version__,
            "python": platform.python_version()}


def _file_entries(folder: Path) -> dict[str, dict[str, Any]]:
    """sha256 and size of every file of a bundle folder but the manifest (ONNX external data
    files included)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            rel = path.relative_to(folder).as_posix()
            out[rel] = {"sha256": sha256_of(path), "bytes": path.stat().st_size}
    return out


# --------------------------------------------------------------------------------------------
# the run to export
# --------------------------------------------------------------------------------------------

def epoch_metrics(run: RunDir, epoch: int) -> dict[str, Any]:
    """Metrics of one epoch: its epoch record; the test metrics from the run's summary when that
    epoch is the best one (the test split is evaluated on the best epoch only)."""
    metrics: dict[str, Any] = {"epoch": epoch}
    record = next((r for r in run.epoch_records() if r.get("epoch") == epoch), None)
    if record:
        for key in ("valid_auc", "valid_logloss", "train_loss"):
            if record.get(key) is not None:
                metrics[key] = record[key]
    summary = run.read_summary()
    if summary is not None:
        metrics["best_epoch"] = summary.get("best_epoch")
        if summary.get("best_epoch") == epoch:
            for key in ("test_auc", "test_logloss", "test_rows"):
                if summary.get(key) is not None:
                    metrics[key] = summary[key]
    return metrics


def _run_store(cfg: Any, run: RunDir):
    from ..data.store import Store

    if not cfg.data.store:
        raise FileNotFoundError(f"{run.config} names no data.store: the bundle needs the store's pipeline")
    store_dir = Path(cfg.data.store)
    candidates = [store_dir] if store_dir.is_absolute() else [store_dir, run.path / store_dir]
    for candidate in candidates:
        if (candidate / "meta.json").is_file():
            return Store(candidate)
    raise FileNotFoundError(f"the run's store {cfg.data.store} (data.store in {run.config}) is not there; "
                            "the bundle copies its pipeline.json and checks parity on its rows")


def golden_batch(store: Any, rows: int = GOLDEN_ROWS) -> tuple[str, np.ndarray, np.ndarray]:
    """Real encoded rows for the parity check: the first ``rows`` of valid (else test, else train)."""
    for name in ("valid", "test", "train"):
        if store.has_split(name):
            split = store.split(name)
            n = min(rows, len(split))
            return name, np.array(split.dense[:n], dtype=np.float32), np.array(split.sparse[:n], dtype=np.int64)
    raise ValueError(f"{store.path}: the store has no rows for a parity check")


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------

def export_bundle(run_dir: str | os.PathLike, out_dir: str | os.PathLike, *, epoch: int | None = None,
                  golden_rows: int = GOLDEN_ROWS, quantize: bool = False, force: bool = False,
                  log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export one epoch of a training run as a bundle; returns the manifest.

    ``epoch``: default the run's best epoch. ``force``: replace an existing bundle at ``out_dir``.
    ``quantize``: also write an int8 dynamically quantized ONNX variant and record its AUC change
    on the store's validation split. Raises RuntimeError (and writes nothing) when the ONNX graph
    and the torch model differ by more than 1e-5 on the golden batch.
    """
    import torch

    from ..config import dump_config, fitted_features, load_config
    from ..models import build_model
    from ..train.trainer import load_weights
    from .onnx_export import export_onnx, onnx_parity

    run = RunDir(run_dir)
    out = Path(out_dir)
    if not run.config.is_file():
        raise FileNotFoundError(f"{run.path}: not a training run (no {run.config.name})")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory")
    if out.exists() and any(out.iterdir()) and not force:
        raise FileExistsError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")
    cfg = load_config(run.config)
    store = _run_store(cfg, run)
    epoch = run.chosen_epoch() if epoch is None else int(epoch)
    checkpoint = run.checkpoint(epoch)
    if not checkpoint.is_file():
        raise FileNotFoundError(f"{checkpoint}: no such checkpoint; saved epochs: {run.saved_epochs() or 'none'}")
    spec = store.spec
    model = build_model(cfg.model.name, spec, cfg.model.params)
    model.load_state_dict(load_weights(checkpoint))
    model.eval()

    out.parent.mkdir(parents=True, exist_ok=True)
    for stale in stale_siblings(out, "tmp"):  # left by a killed export
        shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)

    def writing(name: str):
        return _writing(out, name)

    try:
        with writing(""):
            tmp.mkdir()
        with writing(PIPELINE), open(store.path / PIPELINE, "rb") as src, open(tmp / PIPELINE, "wb") as dst:
            shutil.copyfileobj(src, dst)
        with writing(CONFIG):
            cfg.features = fitted_features(store.pipeline, cfg.features)  # pipeline.json is the truth
            dump_config(cfg, tmp / CONFIG)
        with writing(TORCH_WEIGHTS):
            torch.save(model.state_dict(), tmp / TORCH_WEIGHTS)
        with writing(ONNX_MODEL):
            export_onnx(model, spec, tmp / ONNX_MODEL)

        # parity on real rows, with the model rebuilt from the files as a loader will see them
        split_name, dense, sparse = golden_batch(store, golden_rows)
        reloaded = build_model(cfg.model.name, spec, cfg.model.params)
        reloaded.load_state_dict(torch.load(tmp / TORCH_WEIGHTS, map_location="cpu", weights_only=True))
        reloaded.eval()
        diff = onnx_parity(reloaded, tmp / ONNX_MODEL, dense, sparse)
        if not diff <= PARITY_TOLERANCE:  # (NaN fails too)
            raise RuntimeError(f"export refused: model.onnx differs from the torch model by {diff:.3g} "
                               f"(> {PARITY_TOLERANCE:g}) on {len(dense)} rows of the store's {split_name} split; "
                               "no bundle was written")
        log(f"parity: onnxruntime vs torch max |diff| {diff:.2e} on {len(dense)} {split_name} rows")

        with writing(ONNX_INT8):
            quantized = quantize_bundle_model(tmp, reloaded, store, log=log) if quantize else None

        manifest = build_manifest(cfg, store, run, epoch, checkpoint, reloaded, tmp,
                                  parity={"rows": int(len(dense)), "split": split_name, "max_abs_diff": diff,
                                          "tolerance": PARITY_TOLERANCE},
                                  quantized=quantized)
        with writing(MANIFEST):
            _write_json(tmp / MANIFEST, manifest)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return manifest


@contextlib.contextmanager
def _writing(out: Path, name: str) -> Iterator[None]:
    """Writing the bundle file ``name`` (into the temporary folder): a full disk is a DiskFullError
    naming ``out/name``. onnx's C++ writers do not check their writes (their truncated file fails
    to parse a step later), so any failure on an almost full disk counts as one."""
    path = out / name
    try:
        with disk_errors(path):
            yield
    except DiskFullError as exc:
        raise DiskFullError(path) from exc  # (a nested writer named its temporary file)
    except Exception as exc:
        if short_of_space(out.parent):
            raise DiskFullError(path, f"{type(exc).__name__}: {exc}") from exc
        raise


def input_rates(meta: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Per field, from a store's meta.json: the training split's missing rate and the held-out
    (valid, else test, else train) OOV rate (None for numeric features), which predict and the
    server compare their inputs against."""
    rates: dict[str, dict[str, float | None]] = {}
    for name, f in meta.get("fields", {}).items():
        missing = f.get("missing_rate", {})
        oov = f.get("oov_rate", {})
        rates[name] = {"missing": missing.get("train", next(iter(missing.values()), None)),
                       "oov": next((oov[s] for s in ("valid", "test", "train") if s in oov), None)}
    return rates


def build_manifest(cfg: Any, store: Any, run: RunDir, epoch: int, checkpoint: Path, model: Any, folder: Path,
                   *, parity: dict[str, Any], quantized: dict[str, Any] | None) -> dict[str, Any]:
    from ..config import to_dict
    from ..features.pipeline import FeaturePipeline
    from .onnx_export import BATCH_AXIS, DEFAULT_OPSET

    pipeline = FeaturePipeline.load(folder / PIPELINE)
    spec = store.spec
    if pipeline.spec != spec:  # the model's layout must be what this pipeline produces
        raise RuntimeError(f"{store.path}: pipeline.json's feature layout {pipeline.spec.to_dict()} differs from the "
                           f"store's spec {spec.to_dict()} in meta.json; re-run prepare")
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "versions": library_versions(),
        "model": {"name": cfg.model.name, "params": to_dict(cfg.model.params),
                  "parameters": int(sum(p.numel() for p in model.parameters()))},
        "schema": store.meta["schema"],
        "pipeline": {"dense_inputs": pipeline.dense_inputs, "sparse_inputs": pipeline.sparse_inputs},
        "inputs": {
            "dense": {"dtype": "float32", "shape": [BATCH_AXIS, spec.n_dense], "names": list(spec.dense_names)},
            "sparse": {"dtype": "int64", "shape": [BATCH_AXIS, spec.n_sparse], "names": list(spec.sparse_names),
                       "vocab_sizes": list(spec.vocab_sizes)},
        },
        "outputs": {
            "logits": {"dtype": "float32", "shape": [BATCH_AXIS]},
            "probabilities": {"dtype": "float32", "shape": [BATCH_AXIS]},
        },
        "onnx": {"opset": DEFAULT_OPSET, "file": ONNX_MODEL},
        "spec": spec.to_dict(),
        "metrics": epoch_metrics(run, epoch),
        "input_rates": input_rates(store.meta),
        "source": {"run_dir": str(run.path.resolve()), "epoch": epoch, "checkpoint": str(checkpoint.resolve()),
                   "store": str(Path(store.path).resolve())},
        "parity": parity,
        "files": _file_entries(folder),
    }
    if quantized:
        manifest["int8"] = quantized
    return manifest


def quantize_bundle_model(folder: Path, model: Any, store: Any, *, log: Callable[[str], None] = print,
                          max_rows: int = 200_000) -> dict[str, Any]:
    """Write model.int8.onnx (dynamic quantization: int8 weights of MatMul/Gemm, activations
    quantized on the fly) and measure both graphs' AUC on the store's valid split (else test)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from ..metrics import evaluate_scores
    from .onnx_export import onnx_runtime_inputs

    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs advice through the root logger
    try:
        quantize_dynamic(str(folder / ONNX_MODEL), str(folder / ONNX_INT8), weight_type=QuantType.QInt8,
                         op_types_to_quantize=["MatMul", "Gemm"])
    finally:
        root.setLevel(level)
    split_name = next((s for s in ("valid", "test") if store.has_split(s)), None)
    result: dict[str, Any] = {"file": ONNX_INT8, "weight_type": "int8", "method": "onnxruntime quantize_dynamic",
                              "ops": ["MatMul", "Gemm"]}
    if split_name is None:
        log("int8: no valid/test split to measure the AUC change on")
        return result
    split = store.split(split_name)
    n = min(len(split), max_rows)
    labels = np.asarray(split.label[:n])
    scores = {}
    for name in (ONNX_MODEL, ONNX_INT8):
        session = onnx_session(folder / name, threads=None)
        probs = np.empty(n, dtype=np.float32)
        for lo in range(0, n, 16384):
            dense = np.asarray(split.dense[lo: lo + 16384], dtype=np.float32)
            sparse = np.asarray(split.sparse[lo: lo + 16384]).astype(np.int64)
            probs[lo: lo + len(dense)] = session.run(["probabilities"], onnx_runtime_inputs(session, dense, sparse))[0]
        scores[name] = evaluate_scores(labels, probs)
    fp32, int8 = scores[ONNX_MODEL], scores[ONNX_INT8]
    result.update({"split": split_name, "rows": int(n), "auc_fp32": fp32["auc"], "auc_int8": int8["auc"],
                   "auc_change": int8["auc"] - fp32["auc"], "logloss_fp32": fp32["logloss"],
                   "logloss_int8": int8["logloss"]})
    log(f"int8: {split_name} AUC {int8['auc']:.5f} vs fp32 {fp32['auc']:.5f} (change {result['auc_change']:+.5f})")
    return result


def _write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.write("\n")


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
    from ..fields import FeatureSpec
    from ..schema import Schema

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
    graphs = [manifest["onnx"]["file"]] + ([manifest["int8"]["file"]] if "int8" in manifest else [])
    for required in dict.fromkeys([PIPELINE, TORCH_WEIGHTS, ONNX_MODEL, *graphs]):
        if required not in files:
            problems.append(f"files: {required} is not listed")
    return problems


def verify_files(folder: Path, manifest: dict[str, Any]) -> None:
    """The folder holds exactly the manifest's files, each with its recorded sha256."""
    problems = []
    files = manifest["files"]
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            problems.append(f"{name}: missing (the manifest lists it with sha256 {entry['sha256']})")
            continue
        actual = sha256_of(path)
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


# --------------------------------------------------------------------------------------------
# runtime objects from a bundle
# --------------------------------------------------------------------------------------------

def onnx_session(path: str | os.PathLike, *, threads: int | None = None, providers: list[str] | None = None,
                 graph_optimization: bool = True, spinning: bool = False):
    """An onnxruntime session for a bundle graph. ``threads``: intra-op threads (default: the
    available cores); ``providers``: e.g. ["CUDAExecutionProvider", "CPUExecutionProvider"].

    ``spinning``: let idle intra-op threads busy-wait for the next call (onnxruntime's default).
    Off by default: when parsing and encoding run beside inference (file scoring, a server),
    spinning threads take their cores (measured: 84k vs 103k rows/s scoring a file on 2 cores).
    """
    import onnxruntime

    from ..runtime import available_cores

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = int(threads or available_cores())
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = (onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL if graph_optimization
                                        else onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL)
    available = onnxruntime.get_available_providers()
    chosen = list(providers or ["CPUExecutionProvider"])
    unknown = [p for p in chosen if p not in available]
    if unknown:
        raise ValueError(f"onnxruntime execution provider(s) {unknown} are not available here; available: {available}")
    return onnxruntime.InferenceSession(str(path), options, providers=chosen)


def torch_model(folder: str | os.PathLike, manifest: dict[str, Any]):
    """The bundle's torch model (eval mode), weights loaded with weights_only=True."""
    import torch

    from ..fields import FeatureSpec
    from ..models import build_model

    spec = FeatureSpec.from_dict(manifest["spec"])
    weights = Path(folder) / TORCH_WEIGHTS
    try:
        model = build_model(manifest["model"]["name"], spec, manifest["model"]["params"])
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    except (ValueError, TypeError, KeyError, RuntimeError, pickle.UnpicklingError) as exc:
        raise BundleError(f"{weights}: does not load as the model {manifest['model']['name']!r} that "
                          f"{MANIFEST} describes: {exc}") from exc
    model.eval()
    return model
