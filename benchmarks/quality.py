"""Quality tables on the real data in ../shared/data: every registered model, AUC and logloss.

    python benchmarks/quality.py frappe      # Frappe_x1: train on valid.csv (90/10 split), test on test.csv
    python benchmarks/quality.py criteo      # 10,109 real Criteo rows, seeded 8:1:1 split
    python benchmarks/quality.py criteo --models deepfm --features-study
    python benchmarks/quality.py criteo --protocol ready,manual --seeds 1,2,3   # the retune table

Protocols (``--protocol``, comma-separated; every protocol runs on the same stores, splits and seeds):

* ``ready``: the model's ready config (the ready config, ctrlab/config/presets/<model>.yaml) exactly as shipped, its model and
  train sections; only the data and features come from the dataset below.
* ``manual``: the careful manual protocol of issue 12: embedding 10, MLP 400-400-400, dropout
  0.2 (batch norm per dataset below), Adam 1e-3, batch 1024, patience 2, up to 30 epochs, no
  learning-rate decay.

The epoch is chosen on the validation split only (early stopping), then the test split is
scored once. Results are appended to runs/quality/<dataset>.jsonl and printed as a markdown
table; with two protocols the table puts them side by side with their difference, the spread
over seeds and the test set's own standard error of AUC (Hanley & McNeil 1982).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import math
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

DATASETS = {
    "frappe": {
        "data": {"train": [str(SHARED / "reczoo_Frappe_x1_from_AFN/valid.csv")],
                 "test": [str(SHARED / "reczoo_Frappe_x1_from_AFN/test.csv")],
                 "format": "csv", "split": [0.9, 0.1, 0.0], "seed": 2024},
        "features": {"categorical": {"encoder": "vocab", "min_count": 1}},
        "params": {"batch_norm": True},  # the manual protocol's choice per dataset (BARS Frappe_x1 uses it)
        "train": {},
        "bars": SHARED / "reczoo__BARS/docs/CTR/leaderboard/frappe_x1.csv",
    },
    "criteo": {
        "data": {"train": [str(SHARED / "ChanghuiLi__classic_recalgorithm_inTF2/dataset/Criteo/train.txt")],
                 "format": "criteo", "split": [0.8, 0.1, 0.1], "seed": 2024},
        "features": {"categorical": {"encoder": "vocab", "min_count": 2},
                     "numeric": {"transform": "log_square_bucket", "min_count": 2}},
        # batch norm off: on these 8k training rows it lowered DeepFM's test AUC by ~0.03 (see README)
        "params": {"batch_norm": False},
        "train": {"threads": 1},
        "bars": SHARED / "reczoo__BARS/docs/CTR/leaderboard/criteo_x1.csv",
    },
}

#: The manual protocol of issue 12 (what a careful user would run by hand).
MANUAL_PARAMS = {"embedding_dim": 10, "hidden_units": [400, 400, 400], "dropout": 0.2}
MANUAL_TRAIN = {"epochs": 30, "batch_size": 1024, "optimizer": "adam", "lr": 0.001, "early_stopping_patience": 2,
                "lr_decay_factor": 1.0, "monitor": "auc"}
PROTOCOLS = ("ready", "manual")
_DONE: dict[str, dict] = {}  # resolved config (run_dir aside) -> its result, in this invocation

BARS_NAMES = {"lr": "LR", "fm": "FM", "ffm": "FFM", "dnn": "DNN", "wide_deep": "WideDeep", "deepfm": "DeepFM",
              "dcn": "DCN", "dcn_v2": "DCNv2", "xdeepfm": "xDeepFM", "autoint": "AutoInt", "autoint_plus": "AutoInt+",
              "dlrm": "DLRM", "fibinet": "FiBiNET", "finalmlp": "FinalMLP", "gatenet": "GateNet", "deepfefm": "DeepFEFM"}


def bars_table(path: Path) -> dict[str, tuple[float, float]]:
    if not path.is_file():
        return {}
    out = {}
    with open(path, newline="", encoding="utf-8") as fh:
        for row in csv.DictReader(fh):
            name = (row.get("Model") or row.get("model") or "").strip()
            try:
                out[name.lower().replace(" ", "").replace("&", "").replace("-", "")] = (
                    float(row.get("AUC") or row.get("auc")), float(row.get("Logloss") or row.get("logloss")))
            except (TypeError, ValueError):
                continue
    return out


def bars_lookup(table: dict[str, tuple[float, float]], model: str) -> tuple[float, float] | None:
    key = BARS_NAMES.get(model, model).lower().replace("+", "+").replace("&", "").replace("-", "")
    return table.get(key)


def protocol_sections(model: str, dataset: str, protocol: str) -> tuple[dict, dict]:
    """(model params, train settings) of ``model`` under ``protocol`` on ``dataset``."""
    from ctrlab.config import base_config_for
    from ctrlab.models import get_model_class

    ready = base_config_for(model)
    params = dict(ready.get("model", {}).get("params", {}))
    train = dict(ready.get("train", {}))
    if protocol == "manual":
        accepted = set(inspect.signature(get_model_class(model).__init__).parameters)
        wanted = {**MANUAL_PARAMS, **DATASETS[dataset]["params"]}
        params.update({k: v for k, v in wanted.items() if k in accepted})
        train = {**train, **MANUAL_TRAIN}
    return params, {**train, **DATASETS[dataset]["train"]}


def run(dataset: str, models: list[str], out_dir: Path, features_override: dict | None = None,
        tag: str = "", seeds: list[int] = (2024,), protocol: str = "ready", overrides: list[str] = ()) -> list[dict]:
    """Train every model for every seed (the seed drives both the split and the training)."""
    results = []
    for model in models:
        per_seed = [run_one(dataset, model, out_dir, features_override, tag, seed, protocol, overrides)
                    for seed in seeds]
        res = dict(per_seed[-1])
        for key in ("valid_auc", "test_auc", "test_logloss", "best_epoch", "epochs_run"):
            values = [r[key] for r in per_seed]
            res[key] = sum(values) / len(values)
            res[key + "_std"] = (sum((v - res[key]) ** 2 for v in values) / max(len(values) - 1, 1)) ** 0.5
        res["capped_while_improving"] = sum(r["capped_while_improving"] for r in per_seed)
        res["seeds"] = list(seeds)
        results.append(res)
        if len(seeds) > 1:
            print(f"{model:<13}{protocol:<7}{tag:<10} mean over seeds {list(seeds)}: test AUC {res['test_auc']:.4f} "
                  f"+- {res['test_auc_std']:.4f}", flush=True)
    return results


def run_one(dataset: str, model: str, out_dir: Path, features_override: dict | None, tag: str,
            seed: int, protocol: str = "ready", overrides: list[str] = ()) -> dict:
    from ctrlab.config import load_config, to_dict
    from ctrlab.data.store import Store
    from ctrlab.train.run import run_training

    spec = DATASETS[dataset]
    features = features_override or spec["features"]
    store = out_dir / f"store{tag}_{seed}"
    run_dir = out_dir / f"{model}_{protocol}{tag}_{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    params, train = protocol_sections(model, dataset, protocol)
    base = {"data": {**spec["data"], "store": str(store), "seed": seed}, "features": features,
            "model": {"name": model, "params": params}, "train": {**train, "seed": seed}, "run_dir": str(run_dir)}
    cfg = load_config(None, list(overrides), base=base)
    key = json.dumps([dataset, tag, seed, {k: v for k, v in to_dict(cfg).items() if k != "run_dir"}], sort_keys=True)
    if key in _DONE:  # deterministic on CPU: the same resolved config on the same split gives the same result
        res = {**_DONE[key], "protocol": protocol, "same_config_as": _DONE[key]["protocol"]}
        print(f"{model:<13}{protocol:<7}{tag:<10} seed {seed}: the same config as {res['same_config_as']}", flush=True)
        return res
    t = time.perf_counter()
    summary = run_training(cfg, resume=False, progress=False, log=lambda s: None)
    test = Store(store).split("test").label
    res = {"dataset": dataset, "model": model, "protocol": protocol, "tag": tag, "seed": seed,
           "overrides": list(overrides), "features": features, "params": cfg.model.params,
           "train": {k: getattr(cfg.train, k) for k in ("epochs", "batch_size", "lr", "lr_decay_factor",
                                                         "early_stopping_patience", "min_epochs")},
           "parameters": summary["parameters"], "epochs_run": summary["epochs_run"],
           "best_epoch": summary["best_epoch"], "capped_while_improving": summary["hit_epoch_cap_while_improving"],
           "valid_auc": summary.get("valid_auc"), "test_auc": summary["test_auc"],
           "test_logloss": summary["test_logloss"], "test_positives": int(np.sum(test)),
           "test_negatives": int(len(test) - np.sum(test)), "seconds": round(time.perf_counter() - t, 1)}
    _DONE[key] = res
    with open(out_dir / f"{dataset}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(res) + "\n")
    print(f"{model:<13}{protocol:<7}{tag:<10} seed {seed}: test AUC {res['test_auc']:.4f} "
          f"logloss {res['test_logloss']:.4f} (best epoch {res['best_epoch']}/{res['epochs_run']}"
          f"{', CAPPED while improving' if res['capped_while_improving'] else ''}, {res['seconds']} s)", flush=True)
    return res


def auc_standard_error(auc: float, positives: int, negatives: int) -> float:
    """Hanley & McNeil (1982): the sampling standard error of an AUC measured on ``positives`` +
    ``negatives`` rows (the test set's own noise, which seeds do not show)."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc))
    return math.sqrt(var / (positives * negatives))


def side_by_side(results: list[dict], protocols: list[str]) -> str:
    """One row per model: each protocol's test AUC (mean +- std over seeds, best epoch) and the
    difference first - second, also in test-set standard errors."""
    first, second = protocols
    by = {(r["model"], r["protocol"]): r for r in results}
    models = sorted({r["model"] for r in results}, key=lambda m: -by.get((m, first), {"test_auc": 0})["test_auc"])
    lines = [f"| model | {first} test AUC | {first} epochs (best/run) | {second} test AUC | "
             f"{second} epochs (best/run) | {first} - {second} | in test SE | test SE |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for model in models:
        a, b = by.get((model, first)), by.get((model, second))
        if not a or not b:
            continue
        se = auc_standard_error(b["test_auc"], b["test_positives"], b["test_negatives"])
        diff = a["test_auc"] - b["test_auc"]

        def cell(r: dict) -> str:
            capped = f", {r['capped_while_improving']} capped" if r["capped_while_improving"] else ""
            return (f"{r['test_auc']:.4f} +- {r['test_auc_std']:.4f} | "
                    f"{r['best_epoch']:.1f}/{r['epochs_run']:.1f}{capped}")
        lines.append(f"| {model} | {cell(a)} | {cell(b)} | {diff:+.4f} | {diff / se:+.1f} | {se:.4f} |")
    return "\n".join(lines)


def markdown(dataset: str, results: list[dict]) -> str:
    bars = bars_table(DATASETS[dataset]["bars"])
    lines = ["| model | params | seeds | valid AUC | test AUC (mean +- std) | test logloss | BARS AUC | BARS logloss |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(results, key=lambda r: -r["test_auc"]):
        ref = bars_lookup(bars, r["model"])
        ref_txt = f"{ref[0]:.4f} | {ref[1]:.4f}" if ref else "- | -"
        lines.append(f"| {r['model']}{r['tag']} ({r['protocol']}) | {r['parameters']:,} | {len(r['seeds'])} | "
                     f"{r['valid_auc']:.4f} | {r['test_auc']:.4f} +- {r['test_auc_std']:.4f} | {r['test_logloss']:.4f} | {ref_txt} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(DATASETS))
    ap.add_argument("--models", default="all", help="comma-separated model names, or all")
    ap.add_argument("--out", default=str(ROOT / "runs" / "quality"))
    ap.add_argument("--seeds", default="2024", help="comma-separated seeds (split + training), e.g. 1,2,3")
    ap.add_argument("--protocol", default="ready",
                    help="comma-separated protocols to run on the same splits and seeds: ready, manual")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="config override for every run, e.g. train.lr_decay_factor=1.0 (repeatable)")
    ap.add_argument("--tag", default="", help="suffix naming these runs (e.g. +nodecay) in files and tables")
    ap.add_argument("--features-study", action="store_true",
                    help="also train with log1p-standardized counts and with unscaled log1p counts (no buckets)")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: the quality tables need ../shared/data")
    from ctrlab.models import flat_models
    from ctrlab.runtime import configure_torch_threads

    configure_torch_threads()
    protocols = args.protocol.split(",")
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or not 1 <= len(protocols) <= 2:
        sys.exit(f"--protocol: one or two of {', '.join(PROTOCOLS)}, got {args.protocol!r}")
    models = flat_models() if args.models == "all" else args.models.split(",")
    out_dir = Path(args.out) / args.dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = [int(x) for x in args.seeds.split(",")]
    results = []
    for protocol in protocols:
        results += run(args.dataset, models, out_dir, tag=args.tag, seeds=seeds, protocol=protocol,
                       overrides=args.overrides)
    if args.features_study:
        categorical = DATASETS[args.dataset]["features"]["categorical"]
        for transform in ("log1p_standardize", "log1p"):
            features = {"categorical": categorical, "numeric": {"transform": transform}}
            results += run(args.dataset, models, out_dir, features, tag=f"{args.tag}+{transform}", seeds=seeds,
                           protocol=protocols[0], overrides=args.overrides)
    print()
    print(markdown(args.dataset, results))
    if len(protocols) == 2:
        print()
        print(side_by_side([r for r in results if r["tag"] == args.tag], protocols))


if __name__ == "__main__":
    main()
