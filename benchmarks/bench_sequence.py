"""Behaviour sequences (issue 15): does attending over the history pay, and what does it cost?

On `ctrlab data synth --kind sequence` rows (clicks planted on the target's match with the RECENT
history, see ctrlab/data/synth_sequence.py), with the histories declared as sequence columns
sharing the target item's and category's vocabularies (max_length --history):

1. quality: `ctrlab compare` of DeepFM, which takes each history as one more field, mean-pooled
   (the multi-valued treatment), against DIN (target attention over the same histories), same
   store, same training budget (the ready configs' train section: Adam 1e-3, batch 1024, early
   stopping), --seeds seeds each. The table is compare's: mean +- std over seeds, and DeLong's
   paired test against the best with the seeds' spread added (p, tie/worse).
2. speed, same run: training samples/s of DIN against DeepFM at the same batch size (the compare
   runs' own figures), and single-row Predictor.predict latency (onnx, 1 thread, p50/p99) of both
   bundles on rows with full --history histories, against a flat row: DeepFM trained on the same
   rows without the history columns.

    python benchmarks/bench_sequence.py                   # 100k rows, 3 seeds: ~7 min on 2 cores
    python benchmarks/bench_sequence.py --rows 20000 --seeds 2 --quick
    python benchmarks/bench_sequence.py --work DIR --latency-only   # the latency part again
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import machine_line  # noqa: E402  (this script's folder)

from ctrlab.data.synth_sequence import write_sequence_synthetic  # noqa: E402
from ctrlab.export.bundle import export_bundle  # noqa: E402
from ctrlab.inference import Predictor  # noqa: E402

TRAIN = "{epochs: 50, batch_size: 1024, optimizer: adam, lr: 0.001, early_stopping_patience: 2, monitor: auc}"


def config(data: Path, store: Path, history: int, with_lists: bool) -> str:
    lists = (f"""    lists:
      hist_item_id: {{kind: sequence, max_length: {history}, vocab_of: item_id}}
      hist_cate_id: {{kind: sequence, max_length: {history}, vocab_of: cate_id}}
""" if with_lists else "")
    return f"""data:
  train: [{json.dumps(str(data))}]
  format: tsv
  store: {json.dumps(str(store))}
  schema:
    dense: [price]
    sparse: [user_id, item_id, cate_id]
{lists}model:
  name: deepfm
  params: {{embedding_dim: 10, hidden_units: [200, 80], dropout: 0.0}}
train: {TRAIN}
"""


def ctrlab(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "ctrlab", *args], check=True)


def runs_of(exp: Path) -> list[dict]:
    with open(exp / "runs.csv", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def best_run(exp: Path, model: str) -> Path:
    rows = [r for r in runs_of(exp) if r["point"] == model]
    best = max(rows, key=lambda r: float(r["test_auc"]))
    return exp / "runs" / best["run"]


def latency(bundle: Path, rows: list[dict], repeats: int = 1) -> dict[str, float]:
    predictor = Predictor(bundle, threads=1)
    for row in rows[:100]:
        predictor.predict([row])
    times = []
    for _ in range(repeats):
        for row in rows:
            t = time.perf_counter()
            predictor.predict([row])
            times.append(time.perf_counter() - t)
    ms = np.array(times) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def measure_latency(work: Path, history: int) -> None:
    """Part 2b: single-row latency of the three bundles in ``work`` (rows with full histories)."""
    bundles = {name: work / f"bundle_{name.replace(' ', '_')}" for name in ("din", "deepfm", "flat deepfm")}
    lines = (work / "seq.tsv").read_text().splitlines()
    header = lines[0].split("\t")
    full = [dict(zip(header, line.split("\t"))) for line in lines[1:]
            if len(line.split("\t")[5].split("|")) >= history][:2000]
    rows = [{k: v for k, v in r.items() if k not in ("label", "tags")} for r in full]
    flat_rows = [{k: v for k, v in r.items() if not k.startswith("hist_")} for r in rows]
    print(f"\nsingle-row Predictor.predict, onnx, 1 thread, {len(rows):,} rows with {history}-item histories:")
    measured = {name: latency(bundle, flat_rows if name == "flat deepfm" else rows) for name, bundle in bundles.items()}
    for name, m in measured.items():
        print(f"  {name:<12} p50 {m['p50_ms']:.3f} ms  p99 {m['p99_ms']:.3f} ms")
    flat = measured["flat deepfm"]
    for name in ("din", "deepfm"):
        print(f"  {name} / flat row: p50 {measured[name]['p50_ms'] / flat['p50_ms']:.2f}x, "
              f"p99 {measured[name]['p99_ms'] / flat['p99_ms']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=100_000, help="generated rows (8:1:1 split; default 100k)")
    parser.add_argument("--history", type=int, default=50, help="max_length of the histories (default 50)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per model (default 3)")
    parser.add_argument("--quick", action="store_true", help="cap training at 5 epochs (a smoke run)")
    parser.add_argument("--work", default="", help="keep everything in this folder (default: a temp one)")
    parser.add_argument("--latency-only", action="store_true",
                        help="only the latency part, on the bundles a previous run left in --work")
    args = parser.parse_args()
    if args.latency_only:
        if not args.work:
            parser.error("--latency-only needs --work (the folder of a previous run)")
        print(machine_line())
        measure_latency(Path(args.work), args.history)
        return
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_sequence_"))
    work.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    try:
        data = work / "seq.tsv"
        info = write_sequence_synthetic(data, args.rows, seed=5, max_history=args.history)
        print(f"{info['rows']:,} rows, positive rate {info['positive_rate']:.3f}, mean history "
              f"{info['mean_history_length']:.1f} of {args.history}")
        (work / "seq.yaml").write_text(config(data, work / "store", args.history, True))
        (work / "flat.yaml").write_text(config(data, work / "flat_store", args.history, False))
        extra = ["--set", "train.epochs=5"] if args.quick else []
        exp = work / "exp"
        ctrlab("compare", "-c", str(work / "seq.yaml"), "--models", "deepfm,din", "--seeds", str(args.seeds),
               "--out", str(exp), "--quiet", *extra)  # (prints its results table)
        speeds = {m: [float(r["samples_per_s"]) for r in runs_of(exp) if r["point"] == m] for m in ("deepfm", "din")}
        print(f"training speed, batch 1024, history {args.history}: DIN {np.mean(speeds['din']):,.0f} samples/s, "
              f"DeepFM (histories mean-pooled) {np.mean(speeds['deepfm']):,.0f} samples/s: ratio "
              f"{np.mean(speeds['din']) / np.mean(speeds['deepfm']):.2f}")
        ctrlab("train", "-c", str(work / "flat.yaml"), "--set", f"run_dir={json.dumps(str(work / 'flat_run'))}",
               "--epochs", "1", "--quiet")
        for name, run in (("din", best_run(exp, "din")), ("deepfm", best_run(exp, "deepfm")),
                          ("flat deepfm", work / "flat_run")):
            export_bundle(run, work / f"bundle_{name.replace(' ', '_')}", log=lambda _m: None)
        measure_latency(work, args.history)
        print(f"\n(work folder: {work})")
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
        print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
