"""ctrlab's LR with its ready config against scikit-learn's tuned LogisticRegression, same split,
same encoded features.

    python benchmarks/bench_lr.py                     # Criteo rows and Frappe (../shared/data)
    python benchmarks/bench_lr.py --datasets frappe --seed 7

Per dataset: the store is prepared once with ``ctrlab prepare``; ``ctrlab train --model lr`` runs
on it with its defaults (ctrlab/config/presets/lr.yaml); in the same invocation scikit-learn's
``LogisticRegression`` (lbfgs, L2, intercept unpenalized) is fitted on exactly the store's features
(one-hot of the sparse ids as a CSR matrix, plus the dense columns), with ``C`` chosen by validation
AUC from a half-decade grid (smallest C first, warm-started, stopping after 3 values without
improvement). Both are scored once on the test split; the table shows both test AUCs, their
difference and the wall times. The test split never takes part in either choice.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
CTRLAB = [sys.executable, "-m", "ctrlab"]

#: ctrlab prepare arguments per dataset (run from the repository root)
PREPARE = {
    "criteo": [str(SHARED / "ChanghuiLi__classic_recalgorithm_inTF2/dataset/Criteo/train.txt"), "--format", "criteo",
               "--split", "8:1:1"],
    # BARS Frappe_x1 as available here: valid.csv trains (90/10 train/valid), test.csv tests
    "frappe": ["-c", "configs/frappe_deepfm.yaml"],
}
C_GRID = np.logspace(-4, 3, 15)  # half decades
PATIENCE = 3


def sklearn_tuned(store) -> dict:
    """LogisticRegression with C chosen on the valid split; its test AUC."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from ctrlab.train.fullbatch import one_hot_matrix as one_hot_features

    x_train, y_train = one_hot_features(store, "train")
    x_valid, y_valid = one_hot_features(store, "valid")
    x_test, y_test = one_hot_features(store, "test")
    model = LogisticRegression(C=C_GRID[0], tol=1e-6, max_iter=10_000, warm_start=True)
    best, bad = None, 0
    for c in C_GRID:
        model.set_params(C=c).fit(x_train, y_train)
        valid_auc = roc_auc_score(y_valid, model.decision_function(x_valid))
        if best is None or valid_auc > best["valid_auc"]:
            best = {"C": float(c), "valid_auc": valid_auc, "iterations": int(model.n_iter_[0]),
                    "test_auc": roc_auc_score(y_test, model.decision_function(x_test))}
            bad = 0
        else:
            bad += 1
            if bad >= PATIENCE:
                break
    best["l2_equivalent"] = 1.0 / (best["C"] * x_train.shape[0])
    return best


def run(dataset: str, out: Path, seed: int) -> dict:
    store_dir, run_dir = out / f"{dataset}_store", out / f"{dataset}_lr"
    if not (store_dir / "meta.json").is_file():
        subprocess.run(CTRLAB + ["prepare", *PREPARE[dataset], "--seed", str(seed), "--out", str(store_dir),
                                 "--quiet"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    started = time.perf_counter()
    subprocess.run(CTRLAB + ["train", "--data", str(store_dir), "--model", "lr", "--out", str(run_dir),
                             "--no-resume", "--quiet"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    ctrlab_seconds = time.perf_counter() - started
    with open(run_dir / "summary.json", encoding="utf-8") as fh:
        summary = json.load(fh)
    from ctrlab.data.store import Store

    started = time.perf_counter()
    reference = sklearn_tuned(Store(store_dir))
    return {"dataset": dataset, "ctrlab_test_auc": summary["test_auc"], "ctrlab_valid_auc": summary["valid_auc"],
            "ctrlab_l2": summary.get("l2"), "ctrlab_seconds": ctrlab_seconds,
            "sklearn_test_auc": reference["test_auc"], "sklearn_valid_auc": reference["valid_auc"],
            "sklearn_C": reference["C"], "sklearn_l2_equivalent": reference["l2_equivalent"],
            "sklearn_seconds": time.perf_counter() - started,
            "difference": summary["test_auc"] - reference["test_auc"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--datasets", default="criteo,frappe", help="comma-separated: criteo, frappe")
    ap.add_argument("--seed", type=int, default=2024, help="seed of the split (and of training)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench_lr"))
    args = ap.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("| dataset | ctrlab lr test AUC (L2) | sklearn LR test AUC (C; as L2) | ctrlab - sklearn | ctrlab s "
          "| sklearn s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for dataset in args.datasets.split(","):
        if dataset not in PREPARE:
            raise SystemExit(f"unknown dataset {dataset!r}; choose from {', '.join(PREPARE)}")
        r = run(dataset, out / str(args.seed), args.seed)
        print(f"| {dataset} | {r['ctrlab_test_auc']:.4f} ({r['ctrlab_l2']:g}) | {r['sklearn_test_auc']:.4f} "
              f"(C {r['sklearn_C']:.3g}; {r['sklearn_l2_equivalent']:.2g}) | {r['difference']:+.4f} | "
              f"{r['ctrlab_seconds']:.1f} | {r['sklearn_seconds']:.1f} |", flush=True)
        with open(out / "results.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"seed": args.seed, **r}) + "\n")


if __name__ == "__main__":
    main()
