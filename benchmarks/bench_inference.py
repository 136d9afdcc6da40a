"""Inference speed of a DeepFM bundle: end-to-end offline predict, single-row latency, and the
`ctrlab bench` table, torch and onnx measured side by side in this one invocation.

Parts:

1. bundle: a DeepFM bundle (ready config: embedding 10, MLP 400-400-400 with BatchNorm, log-square
   bucketized counts, min_count 2) trained for one epoch on synthetic rows, exported (or --bundle).
2. offline predict: `ctrlab predict`'s code path (predict_file: parse with Arrow's reader, the
   bundle's FeaturePipeline.transform, inference, TSV output) over --rows raw Criteo TSV rows
   (default 1M, `ctrlab data synth`), onnx and torch backends, plus the parse-only rate of the
   same file as the ceiling. Target: >= 100,000 rows/s with onnx on 2 cores.
3. single-row latency: Predictor.predict([row_dict]) one row at a time (parse + encode +
   inference), onnx and torch, 1 intra-op thread. Target: p99 <= 1 ms with onnx.
4. the `ctrlab bench` table (threads 1,2; batch sizes 1,5,256,2048) with the onnx/torch ratios.

    python benchmarks/bench_inference.py                        # builds everything in a temp dir
    python benchmarks/bench_inference.py --bundle B --data F    # an existing bundle and raw file
    python benchmarks/bench_inference.py --rows 200000 --skip-bench   # quicker

Timings on a shared machine drift: compare the ratios printed (measured in the same run), and
rerun when another job was busy (the script prints the load average before and after).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from before_after import load_average  # (this script's folder is on sys.path)

from ctrlab.config import base_config_for, load_config
from ctrlab.data.formats import detect_format, schema_for_file
from ctrlab.data.readers import RowReader
from ctrlab.data.synth import write_synthetic
from ctrlab.export.bundle import export_bundle
from ctrlab.inference import Predictor, predict_file
from ctrlab.inference.bench import BenchOptions, format_report, load_rows, run_bench
from ctrlab.runtime import available_cores
from ctrlab.train.run import run_training


def given_or_built_bundle(bundle: str | None, work: Path, train_rows: int) -> Path:
    """The bundle named on the command line, or a DeepFM bundle built in ``work`` from synthetic rows."""
    return Path(bundle) if bundle else build_bundle(work, train_rows)


def build_bundle(work: Path, train_rows: int) -> Path:
    raw = work / "train.tsv"
    write_synthetic(raw, train_rows, seed=7, progress=False)
    cfg = load_config(None, {"data.train": [str(raw)], "data.store": str(work / "store"), "run_dir": str(work / "run"),
                             "train.epochs": 1}, base=base_config_for("deepfm"))
    t = time.perf_counter()
    run_training(cfg, progress=False, log=lambda _: None)  # (prepares the store from data.train first)
    export_bundle(work / "run", work / "bundle", log=lambda _: None)
    print(f"built a DeepFM bundle from {train_rows:,} synthetic rows in {time.perf_counter() - t:.1f} s")
    return work / "bundle"


def parse_only_rate(path: Path) -> float:
    """Rows/s of reading ``path`` alone (Arrow's reader, its detected preset): the ceiling."""
    t = time.perf_counter()
    rows = sum(chunk.table.num_rows for chunk in RowReader([path], schema_for_file(path, detect_format(path))))
    return rows / (time.perf_counter() - t)


def offline_predict(bundle: Path, data: Path, out: Path, backend: str) -> dict:
    result = predict_file(bundle, [data], out, backend=backend, log=lambda _: None)
    return {"backend": backend, "rows": result.rows, "seconds": round(result.seconds, 3),
            "rows_per_s": round(result.rows_per_second, 1)}


def single_row_latency(bundle: Path, data: Path, backend: str, rows: int) -> dict:
    """Predictor.predict([row]) one row at a time: latency percentiles and each call's own stage times."""
    predictor = Predictor(bundle, backend=backend, threads=1)
    dicts = load_rows(predictor, data, rows).to_pylist()
    for row in dicts[:100]:  # warm-up
        predictor.predict([row])
    latencies = np.empty(len(dicts))
    stages = np.zeros(3)
    for i, row in enumerate(dicts):
        t = time.perf_counter()
        timings = predictor.predict([row]).timings
        latencies[i] = time.perf_counter() - t
        stages += (timings.parse, timings.transform, timings.inference)
    ms = latencies * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    stages_ms = stages / len(dicts) * 1e3
    return {"backend": backend, "rows": len(dicts), "p50_ms": round(p50, 4), "p90_ms": round(p90, 4),
            "p99_ms": round(p99, 4), "max_ms": round(float(ms.max()), 4),
            "mean_parse_ms": round(stages_ms[0], 4), "mean_transform_ms": round(stages_ms[1], 4),
            "mean_inference_ms": round(stages_ms[2], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="an existing bundle (default: build a DeepFM bundle)")
    parser.add_argument("--data", help="raw Criteo TSV to score (default: --rows synthetic rows)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows to score (default 1M)")
    parser.add_argument("--train-rows", type=int, default=200_000, help="synthetic rows to train the bundle on")
    parser.add_argument("--latency-rows", type=int, default=3000, help="single-row requests per backend")
    parser.add_argument("--repeats", type=int, default=2, help="offline predict runs per backend (best kept)")
    parser.add_argument("--skip-bench", action="store_true", help="skip the `ctrlab bench` table")
    parser.add_argument("--json", help="write the figures as JSON here")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ctrlab-bench-inference-"))
    figures: dict = {"cores": available_cores(), "load_average_before": load_average()}
    print(f"{available_cores()} cores; load average {figures['load_average_before']}")
    try:
        bundle = given_or_built_bundle(args.bundle, work, args.train_rows)
        if args.data:
            data = Path(args.data)
        else:
            data = work / "score.tsv"
            write_synthetic(data, args.rows, seed=11, progress=False)
        size_mb = data.stat().st_size / 2**20

        print(f"\n[offline predict] {data} ({size_mb:,.0f} MB): parse + encode + inference + TSV output")
        parse = max(parse_only_rate(data) for _ in range(2))
        runs = {"onnx": [], "torch": []}
        for _ in range(args.repeats):  # alternate, so drift hits both backends alike
            for backend in runs:
                runs[backend].append(offline_predict(bundle, data, work / "scores.tsv", backend))
        best = {b: max(r, key=lambda x: x["rows_per_s"]) for b, r in runs.items()}
        print(f"  parse only (RowReader)   {parse:>12,.0f} rows/s   (ceiling)")
        for backend, res in best.items():
            each = ", ".join(f"{r['rows_per_s']:,.0f}" for r in runs[backend])
            print(f"  predict --backend {backend:<6} {res['rows_per_s']:>12,.0f} rows/s   ({res['rows']:,} rows in "
                  f"{res['seconds']:.2f} s; runs: {each})")
        ratio = best["onnx"]["rows_per_s"] / best["torch"]["rows_per_s"]
        print(f"  onnx / torch: x{ratio:.2f}   onnx / parse-only: x{best['onnx']['rows_per_s'] / parse:.2f}")
        print(f"  target >= 100,000 rows/s with onnx: {'MET' if best['onnx']['rows_per_s'] >= 100_000 else 'NOT met'}")
        figures["offline_predict"] = {"parse_only_rows_per_s": round(parse, 1), "runs": runs, "best": best,
                                      "onnx_over_torch": round(ratio, 3)}

        print(f"\n[single-row latency] Predictor.predict([row]), 1 thread, {args.latency_rows:,} requests")
        latency = {b: single_row_latency(bundle, data, b, args.latency_rows) for b in ("onnx", "torch")}
        for backend, res in latency.items():
            print(f"  {backend:<6} p50 {res['p50_ms']:.3f} ms  p90 {res['p90_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms  "
                  f"(mean: parse {res['mean_parse_ms']:.3f}, transform {res['mean_transform_ms']:.3f}, inference "
                  f"{res['mean_inference_ms']:.3f} ms)")
        print(f"  onnx / torch p99: x{latency['onnx']['p99_ms'] / latency['torch']['p99_ms']:.2f}")
        print(f"  target p99 <= 1 ms with onnx: {'MET' if latency['onnx']['p99_ms'] <= 1.0 else 'NOT met'}")
        figures["single_row_latency"] = latency

        if not args.skip_bench:
            print("\n[ctrlab bench]")
            opts = BenchOptions(backends=["torch", "onnx"], threads=[1, 2], batch_sizes=[1, 5, 256, 2048],
                                seconds=1.0, rows=20_000)
            report = run_bench(bundle, data, opts, log=lambda _: None)
            print(format_report(report))
            figures["bench"] = report
        figures["load_average_after"] = load_average()
        print(f"\nload average after: {figures['load_average_after']}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(figures, fh, indent=1)
            print(f"wrote {args.json}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
