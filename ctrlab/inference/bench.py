"""Inference benchmark over a bundle: throughput, latency percentiles, per-stage time, memory.

Every combination of backend (torch, onnx), onnxruntime execution provider, graph optimization
on/off, model variant (fp32, int8 when the bundle has it), intra-op threads and batch size is
measured in this one process, one after the other, on the same rows, so their ratios are fair
(timings on a shared machine drift; ratios measured side by side drift much less).

A request is what a server receives: ``batch_size`` raw rows as dicts (``--input dicts``, the
default) or an Arrow table slice (``--input table``, the file-reader path). Its time splits into

* preprocessing: ``parse`` (rows -> Arrow table: type checks and conversion) and ``transform``
  (the bundle's FeaturePipeline.transform),
* ``inference``: the torch model or the onnxruntime session,
* ``postprocess``: the scores array, then a Python list (what a JSON response needs).

Each request is one :meth:`Predictor.predict` call, the server's scoring path; the stage times are
that call's own :class:`~ctrlab.inference.Timings`.

Memory: the peak resident set size during each combination (Linux: the peak is reset before
each one through /proc/self/clear_refs; elsewhere the process peak so far), and the peak CUDA
memory for torch on a GPU.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pyarrow as pa

from ..data.formats import input_schema
from ..data.readers import RowReader
from ..export.manifest import library_versions, load_manifest, variants
from ..runtime import available_cores
from .predictor import BACKENDS, VARIANTS, Predictor

BENCH_FORMAT_VERSION = 1
INPUT_FORMS = ("dicts", "table")


@dataclass
class BenchOptions:
    backends: list[str] = field(default_factory=lambda: ["torch", "onnx"])
    threads: list[int] = field(default_factory=lambda: [1])
    batch_sizes: list[int] = field(default_factory=lambda: [1, 256])
    graph_optimization: list[bool] = field(default_factory=lambda: [True])
    providers: list[str] = field(default_factory=lambda: ["CPUExecutionProvider"])
    variants: list[str] = field(default_factory=lambda: ["fp32"])  # "int8" where the bundle has it
    seconds: float = 1.0  # time budget per combination (after warm-up)
    max_repeats: int = 100_000  # at most this many requests per combination
    min_repeats: int = 5
    warmup: int = 3
    rows: int = 20_000  # raw rows loaded from the data file (requests cycle through them)
    input_form: str = "dicts"
    device: str = "cpu"  # torch device
    format: str = "auto"


# --------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------

def _status_kb(key: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter for this process (Linux); False where impossible."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss (KiB on Linux, bytes on macOS), the process peak
        kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        if platform.system() == "Darwin":
            kb //= 1024
    return round(kb / 1024, 1)


def rss_mb() -> float | None:
    kb = _status_kb("VmRSS")
    return None if kb is None else round(kb / 1024, 1)


# --------------------------------------------------------------------------------------------
# the benchmark
# --------------------------------------------------------------------------------------------

def load_rows(predictor: Predictor, data: str | os.PathLike, rows: int, fmt: str = "auto") -> pa.Table:
    """The first ``rows`` raw rows of a data file (any format ``predict`` reads), checked
    against the bundle's inputs."""
    path = Path(data)
    pipeline = predictor.pipeline
    _, schema = input_schema(path, fmt, predictor.schema, pipeline.dense_inputs, pipeline.sparse_inputs)
    tables, n = [], 0
    for chunk in RowReader([path], schema):
        tables.append(chunk.table)
        n += chunk.table.num_rows
        if n >= rows:
            break
    if not tables or n == 0:
        raise ValueError(f"{path}: no rows to benchmark with")
    table = pa.concat_tables(tables).slice(0, rows)
    return table.select(predictor.columns).combine_chunks()


def _percentiles(values: np.ndarray) -> dict[str, float]:
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4), "p99": round(float(p99), 4),
            "mean": round(float(values.mean()), 4), "max": round(float(values.max()), 4)}


def measure(predictor: Predictor, requests: list[Any], opts: BenchOptions, gpu: bool = False) -> dict[str, Any]:
    """Run requests (cycling) through :meth:`Predictor.predict` (the server's scoring path) for
    ``opts.seconds``; latency and per-stage time per request, the stages from each Prediction's
    timings, plus the response's list (postprocess)."""
    for i in range(opts.warmup):
        predictor.predict(requests[i % len(requests)])
    if gpu:
        import torch  # (heavy: imported where a GPU measurement needs it)

        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    stages = []
    latencies = []
    rows = 0
    started = time.perf_counter()
    deadline = started + opts.seconds
    i = 0
    while i < opts.max_repeats and (i < opts.min_repeats or time.perf_counter() < deadline):
        request = requests[i % len(requests)]
        t0 = time.perf_counter()
        prediction = predictor.predict(request)
        t1 = time.perf_counter()
        response = prediction.scores.tolist()
        t2 = time.perf_counter()
        latencies.append(t2 - t0)
        timings = prediction.timings
        stages.append((timings.parse, timings.transform, timings.inference, timings.postprocess + (t2 - t1)))
        rows += len(response)
        i += 1
    elapsed = time.perf_counter() - started
    lat_ms = np.asarray(latencies) * 1e3
    stage_ms = np.asarray(stages).mean(axis=0) * 1e3
    total = float(stage_ms.sum()) or 1.0
    out = {
        "requests": i, "rows": rows, "seconds": round(elapsed, 4),
        "rows_per_s": round(rows / elapsed, 1) if elapsed > 0 else None,
        "latency_ms": _percentiles(lat_ms),
        "stage_ms": {"parse": round(float(stage_ms[0]), 4), "transform": round(float(stage_ms[1]), 4),
                     "preprocess": round(float(stage_ms[0] + stage_ms[1]), 4),
                     "inference": round(float(stage_ms[2]), 4), "postprocess": round(float(stage_ms[3]), 4)},
        "stage_share": {"preprocess": round(float(stage_ms[0] + stage_ms[1]) / total, 4),
                        "inference": round(float(stage_ms[2]) / total, 4),
                        "postprocess": round(float(stage_ms[3]) / total, 4)},
    }
    if gpu:
        import torch

        out["gpu_peak_mb"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def _requests(table: pa.Table, batch_size: int, form: str, limit_rows: int) -> list[Any]:
    """Requests of ``batch_size`` rows cycling over the table (at most about ``limit_rows`` rows
    prepared, so a large batch size does not hold many copies)."""
    n = table.num_rows
    count = max(1, min(n, limit_rows) // batch_size)
    out = []
    for k in range(count):
        lo = (k * batch_size) % n
        part = table.slice(lo, batch_size)
        if part.num_rows < batch_size:  # wrap around
            part = pa.concat_tables([part, table.slice(0, batch_size - part.num_rows)]).combine_chunks()
        out.append(part.to_pylist() if form == "dicts" else part)
    return out


def combinations(opts: BenchOptions, bundle_variants: list[str]) -> list[dict[str, Any]]:
    combos = []
    for backend in opts.backends:
        if backend == "torch":
            runtimes = [{"variant": "fp32", "provider": None, "graph_optimization": None}]
        else:
            runtimes = [{"variant": v, "provider": p, "graph_optimization": g}
                        for v in opts.variants if v in bundle_variants
                        for p in opts.providers for g in opts.graph_optimization]
        for runtime in runtimes:
            for threads in opts.threads:
                combos.append({"backend": backend, **runtime, "threads": threads})
    return combos


def run_bench(bundle_dir: str | os.PathLike, data: str | os.PathLike, opts: BenchOptions, *,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Benchmark every combination; returns the JSON-able report (see :func:`format_report`)."""
    # heavy, and needed only when a benchmark runs (importing this module stays light)
    import onnxruntime
    import torch

    if opts.input_form not in INPUT_FORMS:
        raise ValueError(f"--input must be one of {', '.join(INPUT_FORMS)}, got {opts.input_form!r}")
    for backend in opts.backends:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if any(b < 1 for b in opts.batch_sizes) or any(t < 1 for t in opts.threads):
        raise ValueError("batch sizes and thread counts must be >= 1")
    bad_variants = [v for v in opts.variants if v not in VARIANTS]
    if bad_variants:
        raise ValueError(f"unknown variant(s) {bad_variants}; valid: {', '.join(VARIANTS)}")
    available = onnxruntime.get_available_providers()
    unknown = [p for p in opts.providers if p not in available]
    if unknown:
        raise ValueError(f"onnxruntime execution provider(s) {unknown} are not available here; available: {available}")
    manifest = load_manifest(bundle_dir)
    bundle_variants = variants(manifest)
    missing_variants = [v for v in opts.variants if v not in bundle_variants]
    if missing_variants:
        log(f"note: the bundle has no {', '.join(missing_variants)} variant (export with --quantize); skipped")
    gpu = opts.device.startswith("cuda")
    if gpu and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but no CUDA device is available")

    loader = Predictor(bundle_dir, backend="onnx", threads=1)
    table = load_rows(loader, data, opts.rows, opts.format)
    del loader
    torch_threads_before = torch.get_num_threads()
    results = []
    combos = combinations(opts, bundle_variants)
    try:
        for combo in combos:
            reset_ok = reset_peak_rss()
            if combo["backend"] == "onnx":
                providers = [combo["provider"]] + (["CPUExecutionProvider"]
                                                   if combo["provider"] != "CPUExecutionProvider" else [])
                predictor = Predictor(bundle_dir, backend="onnx", threads=combo["threads"], providers=providers,
                                      graph_optimization=combo["graph_optimization"], variant=combo["variant"],
                                      verify=False)
            else:
                predictor = Predictor(bundle_dir, backend="torch", threads=combo["threads"], device=opts.device,
                                      verify=False)
            for batch_size in opts.batch_sizes:
                requests = _requests(table, batch_size, opts.input_form, limit_rows=max(opts.rows, batch_size))
                res = measure(predictor, requests, opts, gpu=gpu and combo["backend"] == "torch")
                res.update({**combo, "batch_size": batch_size, "input": opts.input_form,
                            "peak_rss_mb": peak_rss_mb(), "rss_mb": rss_mb(), "peak_rss_reset": reset_ok})
                res.setdefault("gpu_peak_mb", None)
                results.append(res)
                log(_format_row(res))
            del predictor
    finally:
        torch.set_num_threads(torch_threads_before)
    report = {
        "format_version": BENCH_FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "bundle": {"path": str(Path(bundle_dir).resolve()), "model": manifest["model"],
                   "files": {k: v["bytes"] for k, v in manifest["files"].items()}},
        "data": {"path": str(Path(data).resolve()), "rows_loaded": table.num_rows},
        "environment": {"cores": available_cores(), "cpu": cpu_name(), "platform": platform.platform(),
                        "versions": library_versions(), "onnxruntime_providers": available,
                        "cuda": torch.cuda.is_available()},
        "options": asdict(opts),
        "results": results,
        "ratios": onnx_torch_ratios(results),
    }
    return report


def onnx_torch_ratios(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """onnx rows/s over torch rows/s per (threads, batch size), for the default onnx runtime
    settings (fp32, graph optimization on, the first provider) measured in the same run."""
    torch_rows = {(r["threads"], r["batch_size"]): r for r in results if r["backend"] == "torch"}
    onnx_rows = [r for r in results if r["backend"] == "onnx" and r["variant"] == "fp32"
                 and r["graph_optimization"] in (True, None)]
    seen = set()
    out = []
    for r in onnx_rows:
        key = (r["threads"], r["batch_size"])
        if key in seen or key not in torch_rows:
            continue
        seen.add(key)
        t = torch_rows[key]
        out.append({"threads": key[0], "batch_size": key[1], "provider": r["provider"],
                    "onnx_rows_per_s": r["rows_per_s"], "torch_rows_per_s": t["rows_per_s"],
                    "onnx_over_torch_throughput": round(r["rows_per_s"] / t["rows_per_s"], 3),
                    "onnx_over_torch_inference_ms": round(r["stage_ms"]["inference"] / t["stage_ms"]["inference"], 3),
                    "onnx_p99_ms": r["latency_ms"]["p99"], "torch_p99_ms": t["latency_ms"]["p99"]})
    return out


def cpu_name() -> str:
    """The CPU model (Linux /proc/cpuinfo; elsewhere what platform says): printed beside benchmark figures."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


# --------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------

HEADER = (f"{'backend':<7} {'variant':<5} {'provider':<9} {'opt':<3} {'thr':>3} {'batch':>6} {'rows/s':>11} "
          f"{'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'pre ms':>8} {'inf ms':>8} {'post ms':>8} {'RSS MB':>7}")


def _format_row(r: dict[str, Any]) -> str:
    provider = (r["provider"] or "-").replace("ExecutionProvider", "")
    opt = "-" if r["graph_optimization"] is None else ("on" if r["graph_optimization"] else "off")
    lat, st = r["latency_ms"], r["stage_ms"]
    return (f"{r['backend']:<7} {r['variant']:<5} {provider:<9} {opt:<3} {r['threads']:>3} {r['batch_size']:>6} "
            f"{r['rows_per_s']:>11,.0f} {lat['p50']:>8.3f} {lat['p90']:>8.3f} {lat['p99']:>8.3f} "
            f"{st['preprocess']:>8.3f} {st['inference']:>8.3f} {st['postprocess']:>8.3f} {r['peak_rss_mb']:>7.0f}")


def format_report(report: dict[str, Any]) -> str:
    env = report["environment"]
    lines = [f"inference benchmark: {report['bundle']['model']['name']} bundle, {env['cores']} cores ({env['cpu']}), "
             f"input {report['options']['input_form']}, {report['data']['rows_loaded']:,} rows loaded",
             f"onnxruntime providers available: {', '.join(env['onnxruntime_providers'])}",
             "latency = one request of `batch` rows; pre = parse + pipeline.transform; inf = model; "
             "post = probabilities -> list (means per request)",
             HEADER]
    lines += [_format_row(r) for r in report["results"]]
    if report["ratios"]:
        lines.append("onnx / torch, measured in this run (throughput ratio; inference-time ratio):")
        for q in report["ratios"]:
            lines.append(f"  threads {q['threads']} batch {q['batch_size']:>6}: "
                         f"throughput x{q['onnx_over_torch_throughput']:.2f}"
                         f"  inference time x{q['onnx_over_torch_inference_ms']:.2f}  p99 {q['onnx_p99_ms']:.3f} vs "
                         f"{q['torch_p99_ms']:.3f} ms")
    return "\n".join(lines)
