"""Inference speed of a DeepFM bundle against the floors of issue 14, every ratio's baseline measured
in this one invocation (timings on a shared machine drift; ratios measured side by side much less).

Parts:

1. bundle: a DeepFM bundle (ready config: embedding 10, MLP 400-400-400 with BatchNorm, log-square
   bucketized counts, min_count 2) trained for one epoch on synthetic rows and exported with its
   int8 variant (or --bundle; when that one has no int8 graph, the int8 figures come from a bundle
   built here, fp32 and int8 of that same bundle).
2. offline predict: `ctrlab predict`'s code path (predict_file: Arrow's reader, the bundle's
   FeaturePipeline.transform, inference, TSV output; the bundle already loaded) over --rows raw
   Criteo TSV rows, against ONNX inference alone (session.run over pre-encoded batches of the
   offline batch size, same threads) on the same rows. Target: >= 0.8x. Plus int8 rows/s with its
   AUC cost (AUC of int8 scores minus fp32 scores on the same labelled rows), the parse-only rate
   and (without --quick) the torch backend.
3. single row: Predictor.predict([row_dict]) one row at a time, onnx, 1 intra-op thread, alternating
   with the ONNX session's own run on that row already encoded. Target: p99 <= 2x the session's p99.
   Plus the stage split from each call's Prediction.timings (and torch without --quick).
4. row dicts: Predictor.predict on 1000-row lists of dicts (typed values as a JSON decoder gives
   them) against offline predict on a file of the same rows. Target: >= 0.8x.
5. the `ctrlab bench` table (threads 1,2; batch sizes 1,5,256,2048) with the onnx/torch ratios
   (skipped by --quick and --skip-bench).

Ends with the "issue 14 ratios" table: figure, measured, baseline, ratio, target, met.

    python benchmarks/bench_inference.py --quick                # about a minute on 2 cores
    python benchmarks/bench_inference.py                        # builds everything in a temp dir
    python benchmarks/bench_inference.py --bundle B --data F    # an existing bundle and raw file

Rerun when another job was busy: the machine line gives the load average before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from before_after import load_average  # (this script's folder is on sys.path)

from ctrlab.config import base_config_for, load_config
from ctrlab.data.formats import detect_format, schema_for_file
from ctrlab.data.readers import RowReader
from ctrlab.data.synth import write_synthetic
from ctrlab.export.bundle import export_bundle
from ctrlab.export.load import onnx_session
from ctrlab.export.manifest import graph_file, load_manifest, variants
from ctrlab.inference import Predictor, predict_file
from ctrlab.inference.bench import BenchOptions, cpu_name, format_report, load_rows, run_bench
from ctrlab.inference.offline import DEFAULT_BATCH_ROWS
from ctrlab.runtime import available_cores
from ctrlab.train.run import run_training

QUICK = {"rows": 100_000, "train_rows": 20_000, "latency_rows": 2000, "repeats": 3, "dict_rows": 20_000}


# --------------------------------------------------------------------------------------------
# the ratios table (bench_serve.py prints the same one)
# --------------------------------------------------------------------------------------------

@dataclass
class Ratio:
    """One required figure: measured / baseline (both from this run) against a target bound.

    ``pairs``: the ratios of runs measured back to back (figure, then its baseline, alternating).
    The machine's speed drifts by tens of percent within seconds, so the ratio of two adjacent
    runs is steadier than the ratio of two bests: when given, the ratio is their median, and the
    table shows their range as the noise."""

    figure: str
    measured: float
    baseline: float
    unit: str
    target: float | None  # None: shown for context, no bound required
    at_most: bool  # the target is an upper bound (latency) rather than a lower one (throughput)
    pairs: tuple[float, ...] = ()

    @property
    def ratio(self) -> float:
        if self.pairs:
            return float(np.median(self.pairs))
        return self.measured / self.baseline if self.baseline else float("nan")

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        return bool(self.ratio <= self.target if self.at_most else self.ratio >= self.target)

    def as_dict(self) -> dict:
        """Plain JSON types (figures may arrive as numpy scalars)."""
        return {"figure": self.figure, "measured": float(self.measured), "baseline": float(self.baseline),
                "unit": self.unit, "ratio": float(self.ratio), "target": self.target, "at_most": self.at_most,
                "met": self.met, "pair_ratios": [float(p) for p in self.pairs]}


def machine_line() -> str:
    return (f"machine: {cpu_name()}, {available_cores()} cores available of {os.cpu_count()}; "
            f"load average {load_average()}")


def ratios_table(ratios: list[Ratio]) -> str:
    width = max([len(r.figure) for r in ratios] + [6])
    lines = ["issue 14 ratios (measured and baseline from this run; with pairs: medians, and the ratio is the "
             "median of the back-to-back pairs' ratios, their range beside it)",
             f"  {'figure':<{width}}  {'measured':>16}  {'baseline':>16}  {'ratio':>6}  {'target':>7}  met  pairs"]
    for r in ratios:
        target = "-" if r.target is None else f"{'<=' if r.at_most else '>='} {r.target:g}"
        met = "-" if r.met is None else ("yes" if r.met else "no")
        spread = f"{min(r.pairs):.2f}-{max(r.pairs):.2f} ({len(r.pairs)})" if r.pairs else "-"
        lines.append(f"  {r.figure:<{width}}  {_num(r.measured):>10} {r.unit:<5}  {_num(r.baseline):>10} {r.unit:<5}  "
                     f"{r.ratio:>6.2f}  {target:>7}  {met:<3}  {spread}")
    return "\n".join(lines)


def _num(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3f}"


# --------------------------------------------------------------------------------------------
# bundle and data
# --------------------------------------------------------------------------------------------

def given_or_built_bundle(bundle: str | None, work: Path, train_rows: int) -> Path:
    """The bundle named on the command line, or a DeepFM bundle built in ``work`` from synthetic rows."""
    return Path(bundle) if bundle else build_bundle(work, train_rows)


def build_bundle(work: Path, train_rows: int, quantize: bool = False) -> Path:
    raw = work / "train.tsv"
    write_synthetic(raw, train_rows, seed=7, progress=False)
    cfg = load_config(None, {"data.train": [str(raw)], "data.store": str(work / "store"), "run_dir": str(work / "run"),
                             "train.epochs": 1}, base=base_config_for("deepfm"))
    t = time.perf_counter()
    run_training(cfg, progress=False, log=lambda _: None)  # (prepares the store from data.train first)
    export_bundle(work / "run", work / "bundle", quantize=quantize, log=lambda _: None)
    print(f"built a DeepFM bundle{' with its int8 variant' if quantize else ''} from {train_rows:,} synthetic rows "
          f"in {time.perf_counter() - t:.1f} s")
    return work / "bundle"


def head_of(data: Path, rows: int, out: Path) -> Path:
    """The first ``rows`` data lines of ``data`` (after its header line, kept, when its format has one)."""
    header = schema_for_file(data, detect_format(data)).header
    with open(data, encoding="utf-8") as src, open(out, "w", encoding="utf-8") as dst:
        for i, line in enumerate(src):
            if i >= rows + header:
                break
            dst.write(line)
    return out


def parse_only_rate(path: Path) -> float:
    """Rows/s of reading ``path`` alone (Arrow's reader, its detected preset): the ceiling."""
    t = time.perf_counter()
    rows = sum(chunk.table.num_rows for chunk in RowReader([path], schema_for_file(path, detect_format(path))))
    return rows / (time.perf_counter() - t)


def session_feed(session, dense: np.ndarray, sparse: np.ndarray) -> dict[str, np.ndarray]:
    """Encoded features (dense float32[N, d], sparse int32[N, s]) -> the session's feed, in the
    dtypes the graph takes (what Predictor.predict_encoded builds before session.run)."""
    names = {i.name for i in session.get_inputs()}
    feed = {"dense": np.ascontiguousarray(dense, dtype=np.float32),
            "sparse": np.ascontiguousarray(sparse, dtype=np.int64)}
    return {k: v for k, v in feed.items() if k in names}


# --------------------------------------------------------------------------------------------
# the measurements
# --------------------------------------------------------------------------------------------

def offline_predict(predictor: Predictor, data: Path, out: Path) -> dict:
    """predict_file with an already loaded predictor (the steady state: bundle loading not counted)."""
    result = predict_file(predictor.bundle_dir, [data], out, predictor=predictor, log=lambda _: None)
    return {"rows": result.rows, "seconds": round(result.seconds, 3), "rows_per_s": round(result.rows_per_second, 1),
            "auc": result.metrics["auc"] if result.metrics else None}


def session_rate(session, dense: np.ndarray, sparse: np.ndarray, batch: int) -> float:
    """Rows/s of session.run alone over pre-encoded batches of ``batch`` rows (feeds built beforehand)."""
    feeds = [session_feed(session, dense[lo:lo + batch], sparse[lo:lo + batch]) for lo in range(0, len(dense), batch)]
    session.run(["probabilities"], feeds[0])  # warm-up
    t = time.perf_counter()
    for feed in feeds:
        session.run(["probabilities"], feed)
    return len(dense) / (time.perf_counter() - t)


def single_row_latency(bundle: Path, dicts: list[dict], backend: str) -> dict:
    """Predictor.predict([row]) one row at a time, 1 intra-op thread: latency percentiles and each
    call's own stage times. onnx: alternating with the ONNX session's run on that row already
    encoded (a session of its own, 1 thread), whose scores must equal the predictor's."""
    predictor = Predictor(bundle, backend=backend, threads=1)
    session = feeds = None
    if backend == "onnx":
        session = onnx_session(graph_file(bundle, predictor.manifest, "fp32"), threads=1)
        feeds = [session_feed(session, *predictor.encode([row])) for row in dicts]
    for row in dicts[:100]:  # warm-up
        predictor.predict([row])
    latencies = np.empty(len(dicts))
    session_latencies = np.empty(len(dicts))
    stages = np.zeros(4)
    for i, row in enumerate(dicts):
        t = time.perf_counter()
        prediction = predictor.predict([row])
        latencies[i] = time.perf_counter() - t
        timings = prediction.timings
        stages += (timings.parse, timings.transform, timings.inference, timings.postprocess)
        if session is not None:
            t = time.perf_counter()
            alone = session.run(["probabilities"], feeds[i])[0]
            session_latencies[i] = time.perf_counter() - t
            if abs(float(alone[0]) - float(prediction.scores[0])) > 1e-6:
                raise AssertionError(f"row {i}: the session alone scored {alone[0]}, the predictor {prediction.scores[0]}")
    out = {"backend": backend, "rows": len(dicts), **_ms_percentiles(latencies),
           **{f"mean_{s}_ms": round(v, 4) for s, v in
              zip(("parse", "transform", "inference", "postprocess"), stages / len(dicts) * 1e3)}}
    if session is not None:
        out["session"] = _ms_percentiles(session_latencies)
    return out


def _ms_percentiles(seconds: np.ndarray) -> dict:
    ms = seconds * 1e3
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    return {"p50_ms": round(p50, 4), "p90_ms": round(p90, 4), "p99_ms": round(p99, 4), "max_ms": round(float(ms.max()), 4),
            "mean_ms": round(float(ms.mean()), 4)}


def dicts_rate(predictor: Predictor, dicts: list[dict], request_rows: int = 1000) -> float:
    """Rows/s of Predictor.predict over ``request_rows``-row lists of dicts (one warm-up request first)."""
    requests = [dicts[lo:lo + request_rows] for lo in range(0, len(dicts), request_rows)]
    predictor.predict(requests[0])
    t = time.perf_counter()
    for request in requests:
        predictor.predict(request)
    return len(dicts) / (time.perf_counter() - t)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="an existing bundle (default: build a DeepFM bundle with its int8 variant)")
    parser.add_argument("--data", help="raw Criteo TSV to score (default: --rows synthetic rows)")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows to score (default 1M)")
    parser.add_argument("--train-rows", type=int, default=200_000, help="synthetic rows to train the bundle on")
    parser.add_argument("--latency-rows", type=int, default=3000, help="single-row requests per backend")
    parser.add_argument("--dict-rows", type=int, default=50_000, help="rows scored as 1000-row lists of dicts")
    parser.add_argument("--baseline-rows", type=int, default=200_000,
                        help="rows encoded once for the session-alone baseline (default 200k, at most --rows)")
    parser.add_argument("--repeats", type=int, default=4, help="alternating runs of each throughput figure and its baseline (best of each kept; default 4)")
    parser.add_argument("--skip-bench", action="store_true", help="skip the `ctrlab bench` table")
    parser.add_argument("--quick", action="store_true",
                        help="about a minute on 2 cores: " + ", ".join(f"--{k.replace('_', '-')} {v}"
                                                                       for k, v in QUICK.items())
                        + ", no torch, no `ctrlab bench` table")
    parser.add_argument("--json", help="write the figures as JSON here")
    if parser.parse_args().quick:  # --quick changes the defaults; flags given explicitly still win
        parser.set_defaults(**QUICK, skip_bench=True)
    args = parser.parse_args()
    backends = ["onnx"] if args.quick else ["onnx", "torch"]

    work = Path(tempfile.mkdtemp(prefix="ctrlab-bench-inference-"))
    figures: dict = {"cores": available_cores(), "cpu": cpu_name(), "load_average_before": load_average()}
    print(machine_line())
    ratios: list[Ratio] = []
    try:
        built = None if args.bundle else build_bundle(work, args.train_rows, quantize=True)
        bundle = Path(args.bundle) if args.bundle else built
        if args.data:
            data = Path(args.data)
        else:
            data = work / "score.tsv"
            write_synthetic(data, args.rows, seed=11, progress=False)
        size_mb = data.stat().st_size / 2**20

        print(f"\n[offline predict] {data} ({size_mb:,.0f} MB): parse + encode + inference + TSV output "
              f"(bundle loaded beforehand)")
        parse = max(parse_only_rate(data) for _ in range(2))
        predictor = Predictor(bundle)  # default threads, as `ctrlab predict`
        session = onnx_session(graph_file(bundle, predictor.manifest, "fp32"))  # the same default threads
        dense, sparse = predictor.encode(load_rows(predictor, data, min(args.rows, args.baseline_rows)))
        offline, alone = [], []
        for _ in range(args.repeats):  # alternate, so drift hits both alike
            offline.append(offline_predict(predictor, data, work / "scores.tsv"))
            alone.append(session_rate(session, dense, sparse, DEFAULT_BATCH_ROWS))
        del dense, sparse, session
        best = max(offline, key=lambda r: r["rows_per_s"])
        offline_rates = [r["rows_per_s"] for r in offline]
        print(f"  parse only (RowReader)   {parse:>12,.0f} rows/s   (ceiling)")
        each = ", ".join(f"{r['rows_per_s']:,.0f}" for r in offline)
        print(f"  predict --backend onnx   {best['rows_per_s']:>12,.0f} rows/s   ({best['rows']:,} rows in "
              f"{best['seconds']:.2f} s; runs: {each})")
        print(f"  session.run alone        {max(alone):>12,.0f} rows/s   (pre-encoded batches of {DEFAULT_BATCH_ROWS:,} "
              f"rows, {available_cores()} threads)")
        ratios.append(Ratio("offline predict / ONNX alone", float(np.median(offline_rates)), float(np.median(alone)),
                            "row/s", 0.8, False, tuple(o / a for o, a in zip(offline_rates, alone))))
        figures["offline_predict"] = {"parse_only_rows_per_s": round(parse, 1), "onnx": offline,
                                      "session_alone_rows_per_s": [round(a, 1) for a in alone]}
        if "torch" in backends:
            torch_runs = [offline_predict(Predictor(bundle, backend="torch", threads=max(1, available_cores() - 1)),
                                          data, work / "scores.tsv") for _ in range(args.repeats)]
            best_torch = max(torch_runs, key=lambda r: r["rows_per_s"])
            print(f"  predict --backend torch  {best_torch['rows_per_s']:>12,.0f} rows/s   ({best_torch['rows']:,} rows "
                  f"in {best_torch['seconds']:.2f} s)")
            figures["offline_predict"]["torch"] = torch_runs

        quantized = bundle if "int8" in variants(load_manifest(bundle)) else None
        if quantized is None:
            print("  (the bundle has no int8 graph: fp32 and int8 below are of a bundle built here)")
            quantized = build_bundle(work / "int8", args.train_rows, quantize=True)
        int8 = offline_predict(Predictor(quantized, variant="int8"), data, work / "scores.tsv")
        fp32 = best if quantized == bundle else offline_predict(Predictor(quantized), data, work / "scores.tsv")
        auc_cost = None if int8["auc"] is None else int8["auc"] - fp32["auc"]
        cost = "n/a (no labels)" if auc_cost is None else f"{auc_cost:+.5f} (int8 {int8['auc']:.5f}, fp32 {fp32['auc']:.5f})"
        print(f"  predict --variant int8   {int8['rows_per_s']:>12,.0f} rows/s   (x{int8['rows_per_s'] / fp32['rows_per_s']:.2f} "
              f"fp32's {fp32['rows_per_s']:,.0f}); AUC cost {cost}")
        figures["offline_predict"]["int8"] = {"int8": int8, "fp32": fp32, "auc_cost": auc_cost}
        ratios.append(Ratio(f"int8 / fp32 offline (AUC {'n/a' if auc_cost is None else f'{auc_cost:+.5f}'})",
                            int8["rows_per_s"], fp32["rows_per_s"], "row/s", None, False))
        del predictor

        print(f"\n[single row] Predictor.predict([row dict]), 1 thread, {args.latency_rows:,} requests")
        rows = load_rows(Predictor(bundle), data, args.latency_rows).to_pylist()
        latency = {b: single_row_latency(bundle, rows, b) for b in backends}
        for backend, res in latency.items():
            print(f"  {backend:<6} p50 {res['p50_ms']:.3f} ms  p90 {res['p90_ms']:.3f} ms  p99 {res['p99_ms']:.3f} ms  "
                  f"(mean: parse {res['mean_parse_ms']:.3f}, transform {res['mean_transform_ms']:.3f}, inference "
                  f"{res['mean_inference_ms']:.3f}, postprocess {res['mean_postprocess_ms']:.3f} ms)")
        alone1 = latency["onnx"]["session"]
        print(f"  session.run alone on the same encoded rows: p50 {alone1['p50_ms']:.3f} ms  p99 {alone1['p99_ms']:.3f} ms")
        ratios.append(Ratio("1 row p99 / ONNX session p99", latency["onnx"]["p99_ms"], alone1["p99_ms"], "ms", 2.0, True))
        figures["single_row_latency"] = latency

        print(f"\n[row dicts] Predictor.predict on 1000-row lists of dicts (JSON-decoded values), {args.dict_rows:,} rows, "
              f"vs offline predict on a file of the same rows")
        predictor = Predictor(bundle)
        head = head_of(data, args.dict_rows, work / "head.tsv")
        dicts = json.loads(json.dumps(load_rows(predictor, head, args.dict_rows).to_pylist()))
        by_dicts, by_file = [], []
        for _ in range(args.repeats):
            by_dicts.append(dicts_rate(predictor, dicts))
            by_file.append(offline_predict(predictor, head, work / "scores.tsv")["rows_per_s"])
        print(f"  Predictor.predict(dicts) {max(by_dicts):>12,.0f} rows/s")
        print(f"  offline predict (file)   {max(by_file):>12,.0f} rows/s")
        ratios.append(Ratio("1000 row dicts / offline file", float(np.median(by_dicts)), float(np.median(by_file)),
                            "row/s", 0.8, False, tuple(d / f for d, f in zip(by_dicts, by_file))))
        figures["row_dicts"] = {"dicts_rows_per_s": by_dicts, "file_rows_per_s": by_file}

        if not args.skip_bench:
            print("\n[ctrlab bench]")
            opts = BenchOptions(backends=["torch", "onnx"], threads=[1, 2], batch_sizes=[1, 5, 256, 2048],
                                seconds=1.0, rows=20_000)
            report = run_bench(bundle, data, opts, log=lambda _: None)
            print(format_report(report))
            figures["bench"] = report
        figures["load_average_after"] = load_average()
        figures["ratios"] = [r.as_dict() for r in ratios]
        print()
        print(ratios_table(ratios))
        print(f"\nload average before: {figures['load_average_before']}; after: {figures['load_average_after']}")
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(figures, fh, indent=1)
            print(f"wrote {args.json}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
