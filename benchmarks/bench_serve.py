"""HTTP serving load test: `ctrlab serve` on 127.0.0.1 against an asyncio load generator of its own.

Parts (all traffic to a server this script starts on a free 127.0.0.1 port, all bounded in time):

1. 5-row requests (JSON dicts, typed values) at a fixed arrival rate (--rate, default 300 req/s) for --seconds
   (default 60), open loop: request i is due at t0 + i/rate whatever the earlier ones do, and its
   latency counts from that due time (a late send is not hidden). Reports achieved req/s,
   p50/p90/p99/max latency and errors. Target: 300 req/s with p99 <= 10 ms and zero errors.
2. 1000-row requests (JSON dicts with typed values: numbers, null, strings), closed loop with 2
   connections for min(--seconds, 15) s: rows/s. Target: >= 50,000 rows/s. For comparison, the
   same rows with every value a string as in the file ("" = missing; checked value by value).
3. /upload of a 10,000-line Criteo TSV file, --upload-repeats times: ms per upload (median,
   min). Target: <= 300 ms.

The load generator is raw HTTP/1.1 over asyncio streams with keep-alive connections (cheaper
per request than an HTTP library, so it takes less of the CPU the server needs). It runs on the
same machine as the server and shares its cores: say so next to any figure.

    python benchmarks/bench_serve.py                          # builds a DeepFM bundle in a temp dir
    python benchmarks/bench_serve.py --bundle B --seconds 20  # an existing bundle, shorter
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_inference import given_or_built_bundle  # (this script's folder is on sys.path)

from ctrlab.data.synth import write_synthetic
from ctrlab.inference import Predictor
from ctrlab.serve import process as serve_process

HOST = "127.0.0.1"


# --------------------------------------------------------------------------------------------
# a minimal keep-alive HTTP/1.1 client
# --------------------------------------------------------------------------------------------

class Connection:
    """One keep-alive connection. The server closes connections idle for its keep-alive timeout
    (uvicorn: 5 s); like any HTTP client, a request that finds its reused connection closed
    before any answer reconnects and is sent once more (counted in ``reconnects``)."""

    reconnects = 0

    def __init__(self, port: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.port = port
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, port: int) -> "Connection":
        reader, writer = await asyncio.open_connection(HOST, port)
        return cls(port, reader, writer)

    async def request(self, method: str, path: str, body: bytes = b"",
                      content_type: str = "application/json") -> tuple[int, bytes]:
        head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()
        for attempt in (0, 1):
            try:
                self.writer.write(head + body)
                await self.writer.drain()
                status_line = await self.reader.readline()
            except ConnectionError:
                status_line = b""
            if status_line or attempt:
                break
            Connection.reconnects += 1  # closed while idle: reconnect, send again
            self.writer.close()
            self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        if not status_line:
            raise ConnectionResetError("the server closed the connection without an answer")
        status = int(status_line.split(b" ", 2)[1])
        length = 0
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        payload = await self.reader.readexactly(length) if length else b""
        return status, payload

    def close(self) -> None:
        self.writer.close()


def percentiles(latencies_s: list[float]) -> dict[str, float]:
    if not latencies_s:
        return {}
    ms = np.array(latencies_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


# --------------------------------------------------------------------------------------------
# the three load shapes
# --------------------------------------------------------------------------------------------

async def fixed_rate(port: int, body: bytes, rate: float, seconds: float, max_connections: int = 64) -> dict:
    """Open loop: request i is due at t0 + i / rate; latency counts from the due time."""
    idle: list[Connection] = [await Connection.open(port) for _ in range(4)]
    opened = len(idle)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    tasks: set[asyncio.Task] = set()
    slow: list[tuple[float, float]] = []  # (due second, latency ms) of requests over 10 ms
    loop = asyncio.get_running_loop()

    async def one(conn: Connection, due: float) -> None:
        try:
            status, payload = await conn.request("POST", "/v1/predict", body)
            if status != 200:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
            latencies.append(loop.time() - due)
            if latencies[-1] > 0.010:
                slow.append((round(due - t0, 2), round(latencies[-1] * 1e3, 1)))
            idle.append(conn)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            conn.close()

    total = int(rate * seconds)
    t0 = loop.time() + 0.05
    for i in range(total):
        due = t0 + i / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if idle:
            conn = idle.pop()
        elif opened < max_connections:
            conn = await Connection.open(port)
            opened += 1
        else:
            while not idle:
                await asyncio.sleep(0.0005)
            conn = idle.pop()
        task = asyncio.create_task(one(conn, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=30)
    elapsed = loop.time() - t0
    for conn in idle:
        conn.close()
    return {"requests": total, "ok": len(latencies) - sum(v for k, v in errors.items() if k.startswith("HTTP")),
            "errors": errors, "achieved_rps": len(latencies) / elapsed, "connections": opened,
            "idle_reconnects": Connection.reconnects, "over_10ms": len(slow),
            "over_10ms_first": slow[:20],
            **percentiles(latencies)}


async def closed_loop(port: int, body: bytes, rows: int, seconds: float, connections: int = 2) -> dict:
    latencies: list[float] = []
    errors: dict[str, int] = {}
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds

    async def worker() -> None:
        conn = await Connection.open(port)
        try:
            while loop.time() < end:
                t = loop.time()
                status, _ = await conn.request("POST", "/v1/predict", body)
                if status != 200:
                    errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
                else:
                    latencies.append(loop.time() - t)
        finally:
            conn.close()

    t0 = loop.time()
    await asyncio.gather(*(worker() for _ in range(connections)))
    elapsed = loop.time() - t0
    return {"requests": len(latencies), "errors": errors, "rows_per_s": len(latencies) * rows / elapsed,
            **percentiles(latencies)}


async def uploads(port: int, data: bytes, repeats: int) -> dict:
    boundary = "ctrlabbenchboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"rows.txt\"\r\n"
            f"Content-Type: text/plain\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    conn = await Connection.open(port)
    times = []
    errors: dict[str, int] = {}
    rows = None
    try:
        for _ in range(repeats):
            t = time.perf_counter()
            status, payload = await conn.request("POST", "/upload?user_id=bench", body,
                                                 content_type=f"multipart/form-data; boundary={boundary}")
            times.append(time.perf_counter() - t)
            if status != 200:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
            else:
                rows = len(json.loads(payload)["data"])
    finally:
        conn.close()
    ms = np.array(times) * 1e3
    return {"repeats": repeats, "rows": rows, "errors": errors, "median_ms": float(np.median(ms)),
            "min_ms": float(ms.min()), "max_ms": float(ms.max())}


async def server_latency_buckets(port: int) -> str:
    """The server's own view of /v1/predict latency so far: requests within 5, 10, 25 ms / all."""
    conn = await Connection.open(port)
    try:
        _, text = await conn.request("GET", "/metrics")
    finally:
        conn.close()
    counts = {}
    for line in text.decode().splitlines():
        if line.startswith('ctrlab_request_duration_seconds_bucket{endpoint="/v1/predict"'):
            counts[line.split('le="')[1].split('"')[0]] = int(float(line.rsplit(" ", 1)[1]))
    return ", ".join(f"<= {float(le) * 1e3:g} ms: {counts.get(le, 0)}" for le in ("0.005", "0.01", "0.025")) + \
        f", all: {counts.get('+Inf', 0)}"


# --------------------------------------------------------------------------------------------
# server, data, main
# --------------------------------------------------------------------------------------------

free_port = serve_process.free_port


def start_server(bundle: Path, port: int, workers: int, threads: int | None, backend: str) -> subprocess.Popen:
    args = ["--workers", str(workers), "--backend", backend, "--log-level", "warning"]
    if threads:
        args += ["--threads", str(threads)]
    proc, _ = serve_process.start_server(bundle, port=port, args=args, capture=False)
    return proc


stop_server = serve_process.stop_server


def request_rows(path: Path, columns: list[str], n_dense: int, n: int, typed: bool) -> list[dict]:
    """The first n lines of a Criteo TSV file as dicts keyed by column. ``typed``: as a JSON client
    would send them (numbers for numeric columns, null for missing, strings for categorical ones);
    else the raw strings of the file ("" = missing), which the server must check value by value."""
    out = []
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            values: list = line.rstrip("\n").split("\t")[1:]
            if typed:
                values = [(float(v) if "." in v else int(v)) if i < n_dense and v else (v or None)
                          for i, v in enumerate(values)]
            out.append(dict(zip(columns, values)))
            if len(out) == n:
                break
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="bundle to serve (default: build a DeepFM bundle from synthetic rows)")
    parser.add_argument("--train-rows", type=int, default=50_000, help="synthetic rows for the built bundle")
    parser.add_argument("--seconds", type=float, default=60.0, help="duration of the fixed-rate part (default 60)")
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s of the fixed-rate part (default 300)")
    parser.add_argument("--upload-repeats", type=int, default=10)
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads per worker (server default)")
    parser.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    parser.add_argument("--json", dest="json_out", help="write the results as JSON here")
    args = parser.parse_args()
    if args.seconds <= 0 or args.rate <= 0 or args.upload_repeats < 1:
        parser.error("--seconds and --rate must be > 0, --upload-repeats >= 1")

    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    proc = None
    try:
        bundle = given_or_built_bundle(args.bundle, work, args.train_rows)
        raw = work / "requests.tsv"
        write_synthetic(raw, 10_000, seed=11, progress=False)
        predictor = Predictor(bundle, threads=1)
        columns, n_dense = predictor.columns, len(predictor.dense_columns)
        rows = request_rows(raw, columns, n_dense, 1000, typed=True)
        body5 = json.dumps({"rows": rows[:5]}).encode()
        body1000 = json.dumps({"rows": rows}).encode()
        body1000_strings = json.dumps({"rows": request_rows(raw, columns, n_dense, 1000, typed=False)}).encode()
        upload_data = raw.read_bytes()

        port = free_port()
        proc = start_server(bundle, port, args.workers, args.threads, args.backend)
        print(f"server: 127.0.0.1:{port}, {args.workers} worker(s), backend {args.backend}, "
              f"threads {args.threads or 'default'}; cores available: {len(os.sched_getaffinity(0))} "
              f"(shared with this load generator); load average before: {os.getloadavg()[0]:.2f}")
        results = {}
        asyncio.run(fixed_rate(port, body5, args.rate, 2.0))  # warm-up, not reported
        Connection.reconnects = 0
        r = results["fixed_rate_5_rows"] = asyncio.run(fixed_rate(port, body5, args.rate, args.seconds))
        print(f"5-row requests at {args.rate:g} req/s for {args.seconds:g} s: achieved {r['achieved_rps']:.1f} req/s, "
              f"p50 {r['p50_ms']:.2f} ms, p90 {r['p90_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, max {r['max_ms']:.1f} ms, "
              f"errors {r['errors'] or 0}, connections {r['connections']} (idle reconnects {r['idle_reconnects']}), over 10 ms: {r['over_10ms']} {r['over_10ms_first'][:8]}  (target: p99 <= 10 ms, 0 errors)")
        server_le = asyncio.run(server_latency_buckets(port))
        print(f"  server-side (its /metrics histogram, warm-up included): {server_le}")
        r = results["closed_loop_1000_rows"] = asyncio.run(
            closed_loop(port, body1000, len(rows), min(args.seconds, 15.0)))
        print(f"1000-row requests, typed JSON values (2 connections): {r['rows_per_s']:,.0f} rows/s, "
              f"{r['requests']} requests, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms, errors {r['errors'] or 0}"
              f"  (target >= 50,000 rows/s)")
        r = results["closed_loop_1000_rows_strings"] = asyncio.run(
            closed_loop(port, body1000_strings, len(rows), min(args.seconds, 15.0) / 2))
        print(f"1000-row requests, every value a string as in the file (2 connections): {r['rows_per_s']:,.0f} "
              f"rows/s, p50 {r['p50_ms']:.1f} ms, errors {r['errors'] or 0}  (for comparison)")
        r = results["upload_10000_lines"] = asyncio.run(uploads(port, upload_data, args.upload_repeats))
        print(f"/upload of {len(upload_data.splitlines()):,} lines ({len(upload_data) / 1e6:.1f} MB): median "
              f"{r['median_ms']:.0f} ms, min {r['min_ms']:.0f} ms, max {r['max_ms']:.0f} ms, rows {r['rows']}, "
              f"errors {r['errors'] or 0}  (target <= 300 ms)")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=1))
    finally:
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
