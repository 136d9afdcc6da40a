"""Several labels (issue 16): does training click and conversion together pay, and is ESMM's CVR
less biased than a CVR model trained on clicked rows?

On `ctrlab data synth --kind multitask --truth` rows (ctrlab/data/synth_multitask.py: conversions are
observed only after a click; the features that draw clicks are not the ones that make buyers, so
the clicked rows are not a fair sample of the impressions), split 8:1:1 by row:

1. calibration of the CVR estimate over ALL test impressions (the space a ranking system scores),
   against the truth the generator knows (the mean of its P(conversion | click, x) over those
   impressions; no log can observe it, which is ESMM's point):
   - ESMM (pCTR and pCTCVR trained on every impression; its CVR tower gives pCVR),
   - a DeepFM trained the naive way: on the clicked training rows only, label = conversion;
   mean predicted pCVR minus the true mean, relative, per seed (mean +- std over seeds), with the
   rows' sampling error of the difference (its standard error over the test impressions).
2. the sparser task (conversion over impressions, about 1% positive): MMoE (both tasks at once)
   against one model per task (`train.task`): a DNN (MMoE's own backbone: an MLP over the same
   embeddings) and a DeepFM (a stronger single-task model); test AUC per task, mean +- std over seeds, and
   DeLong's paired test over the test rows with the seeds' spread added
   (ctrlab.train.significance.paired_test: p, and the difference with its standard error).

    python benchmarks/bench_multitask.py                    # 200k rows, 3 seeds
    python benchmarks/bench_multitask.py --rows 40000 --seeds 2 --quick
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import machine_line  # noqa: E402  (this script's folder)

from ctrlab.config import load_config  # noqa: E402
from ctrlab.data.batches import BatchIterator  # noqa: E402
from ctrlab.data.store import Store  # noqa: E402
from ctrlab.data.synth_multitask import write_multitask_synthetic  # noqa: E402
from ctrlab.export.bundle import export_bundle  # noqa: E402
from ctrlab.inference import Predictor  # noqa: E402
from ctrlab.metrics import roc_auc  # noqa: E402
from ctrlab.models import build_model  # noqa: E402
from ctrlab.train.run import run_training  # noqa: E402
from ctrlab.train.rundir import RunDir  # noqa: E402
from ctrlab.train.significance import paired_test  # noqa: E402
from ctrlab.train.trainer import load_weights  # noqa: E402

SPARSE = ["user_id", "item_id", "cate_id", "shop_id", "device", "hour"]
DENSE = ["price", "discount", "user_activity"]
TRAIN = {"epochs": 50, "batch_size": 1024, "optimizer": "adam", "lr": 0.001, "early_stopping_patience": 2}


def split_files(source: Path, work: Path) -> dict[str, Path]:
    """source rows -> train/valid/test files (8:1:1 by row order; the generator's rows are
    independent draws), each with the header, plus the clicked rows of train and valid."""
    lines = source.read_text().splitlines()
    header, body = lines[0], lines[1:]
    cut = [int(len(body) * 0.8), int(len(body) * 0.9)]
    parts = {"train": body[:cut[0]], "valid": body[cut[0]:cut[1]], "test": body[cut[1]:]}
    paths = {}
    for name, rows in parts.items():
        paths[name] = work / f"{name}.tsv"
        paths[name].write_text("\n".join([header, *rows]) + "\n")
        if name != "test":
            paths[f"{name}_clicked"] = work / f"{name}_clicked.tsv"
            paths[f"{name}_clicked"].write_text("\n".join([header, *[r for r in rows if r.split("\t")[0] == "1"]]) + "\n")
    return paths


def config(files: dict[str, Path], store: Path, run_dir: Path, model: str, seed: int, labels,
           epochs: int, params: dict | None = None, task: str | None = None, clicked: bool = False) -> dict:
    suffix = "_clicked" if clicked else ""
    data = {"train": [str(files["train" + suffix])], "valid": [str(files["valid" + suffix])],
            "test": [str(files["test"])] if not clicked else [str(files["valid_clicked"])],
            "format": "tsv", "store": str(store),
            "schema": {"label": labels, "dense": DENSE, "sparse": SPARSE}}
    train = {**TRAIN, "epochs": epochs, "seed": seed, **({"task": task} if task else {})}
    return {"data": data, "run_dir": str(run_dir), "model": {"name": model, "params": {"embedding_dim": 10, **(params or {})}},
            "train": train}


def train(cfg: dict) -> tuple[dict, Path]:
    loaded = load_config(None, flatten(cfg))
    summary = run_training(loaded, progress=False, log=lambda _m: None)
    return summary, Path(cfg["run_dir"])


def flatten(cfg: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in cfg.items():
        if isinstance(value, dict) and key not in ("schema", "params"):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def best_model(run_dir: Path, summary: dict, store: Store, cfg: dict) -> torch.nn.Module:
    params = dict(cfg["model"]["params"])
    if store.multi_task and not cfg["train"].get("task"):
        params["num_tasks"] = len(store.tasks)
    model = build_model(cfg["model"]["name"], store.spec, params)
    model.load_state_dict(load_weights(RunDir(run_dir).checkpoint(summary["best_epoch"])))
    return model.eval()


@torch.no_grad()
def scores(model: torch.nn.Module, store: Store, method: str = "forward") -> np.ndarray:
    """The model's probabilities over the store's test split ([N] or [N, T])."""
    out = []
    for dense, sparse, _ in BatchIterator(store.split("test"), 4096):
        logits = model(dense, sparse) if method == "forward" else getattr(model, method)(dense, sparse)
        out.append(torch.sigmoid(logits).numpy())
    return np.concatenate(out)


def truth(test_file: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The test rows' true P(conversion | click, x), clicks, conversions and true P(click | x)."""
    with open(test_file, encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return (np.array([float(r["p_cvr"]) for r in rows]), np.array([int(r["click"]) for r in rows]),
            np.array([int(r["conversion"]) for r in rows]), np.array([float(r["p_click"]) for r in rows]))


def fmt(values: list[float], digits: int = 4) -> str:
    return f"{np.mean(values):.{digits}f} +- {np.std(values, ddof=1) if len(values) > 1 else 0:.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000, help="generated rows (8:1:1 by row; default 200k)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per model (default 3)")
    parser.add_argument("--quick", action="store_true", help="cap training at 3 epochs (a smoke run)")
    parser.add_argument("--work", default="", help="keep everything in this folder (default: a temp one)")
    args = parser.parse_args()
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_multitask_"))
    work.mkdir(parents=True, exist_ok=True)
    epochs = 3 if args.quick else TRAIN["epochs"]
    print(machine_line())
    try:
        info = write_multitask_synthetic(work / "mt.tsv", args.rows, seed=11, truth=True)
        print(f"{info['rows']:,} rows: click rate {info['click_rate']:.4f}, conversion rate {info['conversion_rate']:.4f} "
              f"(of impressions), conversions per click {info['cvr_given_click']:.4f}; true mean P(conversion | click, x) "
              f"over all impressions {info['mean_p_cvr_all']:.4f}, over clicked ones {info['mean_p_cvr_clicked']:.4f}")
        files = split_files(work / "mt.tsv", work)
        p_cvr, click, conversion, p_click = truth(files["test"])
        quintile = np.digitize(p_click, np.quantile(p_click, [0.2, 0.4, 0.6, 0.8]))  # by true pCTR
        by_quintile: dict[str, list] = {"esmm": [], "naive": []}  # per seed: mean pCVR per quintile
        both = ["click", "conversion"]
        results: dict[str, list] = {k: [] for k in ("esmm_bias", "naive_bias", "esmm_se", "naive_se")}
        aucs: dict[str, list] = {"mmoe": [], "deepfm": [], "dnn": []}  # per seed: [N, 2] test probabilities
        ctcvr: list[float] = []  # ESMM's mean pCTCVR over the test impressions, per seed
        epochs_run: dict[str, list] = {}
        for seed in range(1, args.seeds + 1):
            runs = {
                "esmm": config(files, work / "store", work / f"esmm_{seed}", "esmm", seed, both, epochs,
                               {"tower_units": [200, 80]}),
                "mmoe": config(files, work / "store", work / f"mmoe_{seed}", "mmoe", seed, both, epochs),
                "deepfm_click": config(files, work / "store", work / f"deepfm_click_{seed}", "deepfm", seed, both, epochs,
                                       {"hidden_units": [200, 80]}, task="click"),
                "deepfm_conversion": config(files, work / "store", work / f"deepfm_conv_{seed}", "deepfm", seed, both,
                                            epochs, {"hidden_units": [200, 80]}, task="conversion"),
                "naive_cvr": config(files, work / "store_clicked", work / f"naive_{seed}", "deepfm", seed, "conversion",
                                    epochs, {"hidden_units": [200, 80]}, clicked=True),
                "dnn_click": config(files, work / "store", work / f"dnn_click_{seed}", "dnn", seed, both, epochs,
                                    {"hidden_units": [256, 128, 64]}, task="click"),
                "dnn_conversion": config(files, work / "store", work / f"dnn_conv_{seed}", "dnn", seed, both, epochs,
                                         {"hidden_units": [256, 128, 64]}, task="conversion"),
            }
            trained = {}
            for name, cfg in runs.items():
                summary, run_dir = train(cfg)
                trained[name] = (summary, run_dir)
                epochs_run.setdefault(name, []).append(summary["best_epoch"])
                print(f"seed {seed} {name}: best epoch {summary['best_epoch']}, "
                      + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()
                                  if k.startswith("test_auc") and isinstance(v, float)), flush=True)
            store = Store(work / "store")
            esmm = best_model(trained["esmm"][1], trained["esmm"][0], store, runs["esmm"])
            esmm_cvr = scores(esmm, store, "cvr_logits")
            ctcvr.append(float(scores(esmm, store)[:, 1].mean()))
            export_bundle(trained["naive_cvr"][1], work / f"naive_bundle_{seed}", log=lambda _m: None)
            with open(files["test"], encoding="utf-8") as fh:
                test_rows = [{k: v for k, v in r.items() if k not in ("click", "conversion", "p_click", "p_cvr")}
                             for r in csv.DictReader(fh, delimiter="\t")]
            naive_cvr = Predictor(work / f"naive_bundle_{seed}").predict(test_rows).scores
            for name, predicted in (("esmm", esmm_cvr), ("naive", naive_cvr)):
                by_quintile[name].append([float(predicted[quintile == q].mean()) for q in range(5)])
                diff = predicted - p_cvr
                results[f"{name}_bias"].append(float(diff.mean() / p_cvr.mean()))
                results[f"{name}_se"].append(float(diff.std(ddof=1) / np.sqrt(len(diff)) / p_cvr.mean()))
            mmoe = best_model(trained["mmoe"][1], trained["mmoe"][0], store, runs["mmoe"])
            aucs["mmoe"].append(scores(mmoe, store))
            for kind in ("deepfm", "dnn"):
                single = [best_model(trained[f"{kind}_{t}"][1], trained[f"{kind}_{t}"][0], store, runs[f"{kind}_{t}"])
                          for t in both]
                aucs[kind].append(np.stack([scores(m, store) for m in single], axis=1))
        true_mean = float(p_cvr.mean())
        print(f"\n### 1. CVR over all {len(p_cvr):,} test impressions (true mean P(conversion | click, x) {true_mean:.4f}; "
              f"observed conversions per click on the clicked test rows {conversion[click == 1].mean():.4f})\n")
        print("| model | trained on | mean predicted pCVR - true, relative (seeds) | rows' SE | epochs |")
        print("| --- | --- | ---: | ---: | ---: |")
        print(f"| esmm (CVR tower) | all impressions (click, click and conversion) | {fmt(results['esmm_bias'], 3)} | "
              f"{np.mean(results['esmm_se']):.3f} | {min(epochs_run['esmm'])}-{max(epochs_run['esmm'])} |")
        print(f"| deepfm, naive CVR | clicked rows only (conversion) | {fmt(results['naive_bias'], 3)} | "
              f"{np.mean(results['naive_se']):.3f} | {min(epochs_run['naive_cvr'])}-{max(epochs_run['naive_cvr'])} |")
        print("\nmean pCVR per quintile of the impressions' true pCTR (lowest first), mean over seeds:\n")
        print("| pCTR quintile | true | esmm | naive |")
        print("| ---: | ---: | ---: | ---: |")
        for q in range(5):
            print(f"| {q + 1} | {p_cvr[quintile == q].mean():.3f} | {np.mean([s[q] for s in by_quintile['esmm']]):.3f} | "
                  f"{np.mean([s[q] for s in by_quintile['naive']]):.3f} |")
        print(f"\nESMM's own target, pCTCVR, over the test impressions: mean {fmt(ctcvr, 5)} (seeds) against "
              f"{conversion.mean():.5f} observed conversions per impression")
        labels = np.stack([click, conversion], axis=1)
        print(f"\n### 2. test AUC per task, {args.seeds} seeds (conversion: {conversion.mean():.4f} of impressions)\n")
        print("| task | mmoe (both tasks) | one model per task | test AUC | mmoe - it +- SE | p |")
        print("| --- | ---: | --- | ---: | ---: | ---: |")
        for t, task in enumerate(both):
            a = [roc_auc(labels[:, t], s[:, t]) for s in aucs["mmoe"]]
            for kind in ("dnn", "deepfm"):
                b = [roc_auc(labels[:, t], s[:, t]) for s in aucs[kind]]
                test = paired_test("auc", labels[:, t], [s[:, t] for s in aucs["mmoe"]], [s[:, t] for s in aucs[kind]])
                print(f"| {task} | {fmt(a)} | {kind} | {fmt(b)} | {test.diff:+.4f} +- {test.se:.4f} | {test.p:.3f} |")
        (work / "results.json").write_text(json.dumps({"bias": results, "epochs": epochs_run,
                                                       "cvr_by_pctr_quintile": by_quintile}, indent=1))
        print(f"\n(work folder: {work})")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
