"""Paired significance of two experiment directories' runs on the same test rows.

    python benchmarks/paired.py EXP_A EXP_B [--split test]

Reads every run's per-row scores (RUN/scores_<split>.npz, written by compare/sweep) under each
experiment directory, pools each side's seeds and prints the difference A - B of the seed-mean AUC
and logloss with the DeLong (AUC) / paired z (logloss) standard error counting the seed spread,
and the two-sided p-value: the same test `ctrlab compare` uses within one experiment.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from ctrlab.train.significance import paired_test


def scores_of(exp: Path, split: str) -> tuple[np.ndarray, list[np.ndarray]]:
    files = sorted(exp.glob(f"runs/*/scores_{split}.npz"))
    if not files:
        raise SystemExit(f"{exp}: no runs/*/scores_{split}.npz (run compare/sweep with this ctrlab first)")
    labels, runs = None, []
    for path in files:
        data = np.load(path)
        if labels is not None and not np.array_equal(labels, data["labels"]):
            raise SystemExit(f"{path}: other rows than {files[0]}: not a paired comparison")
        labels = data["labels"]
        runs.append(data["scores"])
    return labels, runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--split", default="test")
    args = parser.parse_args()
    labels_a, runs_a = scores_of(args.a, args.split)
    labels_b, runs_b = scores_of(args.b, args.split)
    if not np.array_equal(labels_a, labels_b):
        raise SystemExit("the two experiments scored different rows: not a paired comparison")
    print(f"A = {args.a} ({len(runs_a)} seeds), B = {args.b} ({len(runs_b)} seeds), {len(labels_a):,} {args.split} rows")
    for kind in ("auc", "logloss"):
        t = paired_test(kind, labels_a, runs_a, runs_b)
        print(f"{kind:8s} A - B = {t.diff:+.5f} +- {t.se:.5f} (rows {t.se_rows:.5f}, seeds "
              f"{t.se_seeds if t.se_seeds is None else round(t.se_seeds, 5)}), p = {t.p:.4f}  [{t.test}]")


if __name__ == "__main__":
    main()
