"""Ready configs per model, and PaddleRec-style configs mapped to native ones.

Ready configs live in the repository's ``configs/`` folder: ``configs/<model>.yaml`` holds the
model and training settings that worked best here (see the README's quality tables), used as
the base of ``ctrlab train --data STORE --model NAME``.

PaddleRec users keep their ``config.yaml`` (``runner:`` and ``hyper_parameters:`` sections):
:func:`paddlerec_to_native` maps every key ctrlab understands and returns a note for each key
that does not apply, so nothing is silently ignored.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
NATIVE_SECTIONS = ("data", "features", "model", "train", "eval", "run_dir")

# PaddleRec model folder names -> ctrlab model names
PADDLE_MODEL_NAMES = {
    "gatednn": "gatenet", "gate_dnn": "gatenet", "dcn_v2": "dcn_v2", "dcnv2": "dcn_v2", "wide_deep": "wide_deep",
    "widedeep": "wide_deep", "logistic_regression": "lr", "autoint": "autoint", "fibinet": "fibinet",
}

# hyper_parameters key -> model parameter (per PaddleRec model extras)
PADDLE_MODEL_PARAMS = {
    "sparse_feature_dim": "embedding_dim",
    "fc_sizes": "hidden_units",
    "layer_sizes": "hidden_units",
    "layer_sizes_dnn": "hidden_units",
    "cross_num": "cross_layers",
    "layer_sizes_cin": "cin_layer_units",
    "bot_layer_sizes": "bottom_mlp_units",
    "top_layer_sizes": "top_mlp_units",
    "num_field": None,  # derived from the data
    "use_embedding_gate": "use_embedding_gate",
    "use_hidden_gate": "use_hidden_gate",
    "dropout_rate": "dropout",
}


def base_config_for(model: str) -> dict[str, Any]:
    """The ready config of a model (``configs/<model>.yaml``), or just its name."""
    path = CONFIG_DIR / f"{model}.yaml"
    if path.is_file():
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh) or {}
        data.setdefault("model", {})["name"] = model
        return data
    return {"model": {"name": model}}


def is_paddlerec_config(data: dict[str, Any]) -> bool:
    return "runner" in data or "hyper_parameters" in data


def _resolve(path: str, base: Path) -> str:
    candidate = base / path
    return str(candidate) if not Path(path).is_absolute() and candidate.exists() else path


def paddlerec_to_native(data: dict[str, Any], config_dir: Path) -> tuple[dict[str, Any], list[str]]:
    """Map a PaddleRec config to native sections; returns (config data, notes on unmapped keys)."""
    data = copy.deepcopy(data)
    runner = data.pop("runner", {}) or {}
    hyper = data.pop("hyper_parameters", {}) or {}
    notes: list[str] = []
    out: dict[str, Any] = {}
    for key, value in data.items():  # native sections may sit beside them; anything else is noted
        if key in NATIVE_SECTIONS:
            out[key] = value
        else:
            notes.append(f"top-level section {key!r} is not used by ctrlab")
    # one run directory: training writes model_save_path, PaddleRec's infer reads infer_load_path
    save, load = runner.pop("model_save_path", None), runner.pop("infer_load_path", None)
    if save is not None or load is not None:
        out["run_dir"] = str(save if save is not None else load)
        if save is not None and load is not None and str(save) != str(load):
            notes.append(f"runner.infer_load_path {load!r} differs from model_save_path {save!r}: ctrlab trains "
                         f"into and evaluates {save!r}; run `ctrlab eval {load}` for the other")
    d = out.setdefault("data", {})
    t = out.setdefault("train", {})
    e = out.setdefault("eval", {})
    m = out.setdefault("model", {})
    params = m.setdefault("params", {})

    name = m.get("name") or runner.pop("model", None)
    if not name:
        folder = config_dir.resolve().name.lower()
        name = PADDLE_MODEL_NAMES.get(folder, folder)
    m["name"] = name

    for key, value in runner.items():
        if key == "train_data_dir":
            d["train"] = [_resolve(str(value), config_dir)]
        elif key == "test_data_dir":
            d["test"] = [_resolve(str(value), config_dir)]
            d.setdefault("split", [0.9, 0.1, 0.0])  # validation rows come from the training data
        elif key == "train_batch_size":
            t["batch_size"] = int(value)
        elif key == "epochs":
            t["epochs"] = int(value)
        elif key == "use_gpu":
            t["device"] = "cuda" if value else "cpu"
        elif key == "use_visual":
            t["tensorboard"] = bool(value)
        elif key == "print_interval":
            t["log_every"] = int(value)
        elif key == "infer_batch_size":
            e["batch_size"] = int(value)
        elif key in ("infer_start_epoch", "infer_end_epoch"):
            pass  # handled below
        elif key == "model_init_path":
            if value:
                t["init_from"] = str(value)
        elif key == "use_auc":
            if not value:
                notes.append("runner.use_auc: False has no effect: ctrlab always reports exact AUC and logloss")
        elif key == "seed":
            t["seed"] = int(value)
        elif key in ("train_reader_path", "infer_reader_path", "reader_type", "pipe_command"):
            notes.append(f"runner.{key} does not apply: ctrlab detects the input format and reads a prepared "
                         "store (set data.format to force one)")
        elif key == "use_inference":
            notes.append("runner.use_inference does not apply: export a deployable bundle with `ctrlab export`")
        elif key == "use_fleet":
            if value:
                notes.append("runner.use_fleet: distributed training is chosen at launch, not in the config: "
                             "`ctrlab train -c CONFIG --nproc N` (N processes on this machine) or `torchrun ... -m "
                             "ctrlab train -c CONFIG` (several machines); train.batch_size is the global batch")
        else:
            notes.append(f"runner.{key} is not used by ctrlab")
    if "infer_start_epoch" in runner or "infer_end_epoch" in runner:
        # PaddleRec evaluates saved epochs start .. end-1 (0-based); ctrlab numbers epochs from 1
        start = int(runner.get("infer_start_epoch", 0)) + 1
        end = runner.get("infer_end_epoch")
        e["epochs"] = f"{start}:{int(end)}" if end is not None else f"{start}:"

    for key, value in hyper.items():
        if key == "optimizer":
            value = value or {}
            for okey, ovalue in value.items():
                if okey == "class":
                    t["optimizer"] = str(ovalue).lower()
                elif okey == "learning_rate":
                    t["lr"] = float(ovalue)
                else:
                    notes.append(f"hyper_parameters.optimizer.{okey} is not used by ctrlab")
        elif key == "reg":
            t["reg"] = float(value)
        elif key == "sparse_feature_number":
            # PaddleRec slot ids are (slot, value) pairs pre-hashed into [0, N): a vocabulary per
            # field keeps exactly the ids that occur, at most N rows in all
            out.setdefault("features", {}).setdefault("categorical", {}).setdefault("encoder", "vocab")
            notes.append(f"hyper_parameters.sparse_feature_number ({value}): ctrlab fits a vocabulary per slot "
                         f"on the training rows instead of one table of {value} rows (the ids that occur, at most "
                         f"{value} in all)")
        elif key in ("dense_input_dim", "sparse_inputs_slots", "sparse_input_dim", "slot_num"):
            notes.append(f"hyper_parameters.{key} is derived from the data by ctrlab (value {value} not needed)")
        elif key in PADDLE_MODEL_PARAMS:
            target = PADDLE_MODEL_PARAMS[key]
            if target is None:
                notes.append(f"hyper_parameters.{key} is derived from the data by ctrlab")
            else:
                params[target] = value
        elif key in ("distributed_embedding",):
            notes.append(f"hyper_parameters.{key} does not apply (one process, local embedding tables)")
        else:
            notes.append(f"hyper_parameters.{key} is not used by ctrlab")
    return out, notes
