"""HTTP serving against the floors of issue 14: `ctrlab serve` on 127.0.0.1 against an asyncio load
generator of its own, every ratio's baseline measured in this one invocation.

Parts (all traffic to a server this script starts on a free 127.0.0.1 port, all bounded in time):

1. in-process baselines, with the server's intra-op threads: Predictor.predict on the same 5 rows
   (1 / mean latency, before the server starts: the rate one worker could at best reach) and on
   the same 1000 rows (rows/s, alternating with part 4's HTTP rounds).
2. 5-row requests at a fixed arrival rate (--rate, default 300 req/s, issue 14's "today" figure) for
   --seconds, open loop: request i is due at t0 + i/rate whatever the earlier ones do, and its
   latency counts from that due time (a late send is not hidden).
3. the largest arrival rate of 5-row requests that keeps p99 <= 10 ms with zero errors: open loop,
   the rate stepped up by --rate-factor (--step-seconds per step) from --start-rate, stopping at the
   first failing rate, then bisected --bisect times between the last passing and the failing rate.
   Shown next to the in-process 5-row rate that bounds it. --levers then repeats this search and
   part 4 with a server per lever (columnar bodies, micro-batching, 2 workers, all three).
4. 1000-row requests (JSON dicts with typed values), closed loop with 2 connections, in rounds of
   BULK_SLICE_S seconds alternating with in-process rounds: rows/s against the in-process rate.
   Target: >= 0.7x.
5. /upload of a 5-line file against a 5-row /v1/predict, alternating, sequential: p99 of each.
   Target: upload p99 <= 1.5x predict p99.
6. server memory: VmRSS (RssAnon, RssFile: file-backed pages, shared between workers that map the
   same files; Pss: RSS with shared pages divided among their sharers) of the server process and
   every process under it (--workers N starts N worker processes).

Ends with the "issue 14 ratios" table (as bench_inference.py prints it).

The load generator is raw HTTP/1.1 over asyncio streams with keep-alive connections (cheaper per
request than an HTTP library, so it takes less of the CPU the server needs). It runs on the same
machine as the server and shares its cores: every figure says so.

    python benchmarks/bench_serve.py --quick                  # about 1-2 minutes on 2 cores
    python benchmarks/bench_serve.py --bundle B --workers 2   # an existing bundle, 2 workers
    python benchmarks/bench_serve.py --columnar               # bodies as {"columns": {...}}
    python benchmarks/bench_serve.py --batch-window-ms 2       # the server's micro-batching on
    python benchmarks/bench_serve.py --quick --levers         # + each lever against the same base
    python benchmarks/bench_serve.py --serve-arg=--max-rows --serve-arg=5000   # other server options
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
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from bench_inference import Ratio, given_or_built_bundle, machine_line, ratios_table  # (this script's folder is on sys.path)

from ctrlab.data.synth import write_synthetic
from ctrlab.inference import Predictor
from ctrlab.runtime import available_cores
from ctrlab.serve import process as serve_process
from ctrlab.serve.app import SERVE_THREADS

HOST = "127.0.0.1"
P99_BOUND_MS = 10.0
BULK_SLICE_S = 2.0  # seconds of each alternating round of 1000-row scoring (in process, then HTTP)
DOWN_STEPS = 4  # rates below the search's start tried when the start fails
QUICK = {"seconds": 5.0, "step_seconds": 3.0, "bisect": 1, "bulk_seconds": 5.0, "upload_repeats": 100,
         "train_rows": 20_000}


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


# --------------------------------------------------------------------------------------------
# the load shapes
# --------------------------------------------------------------------------------------------

def percentiles(latencies_s: list[float]) -> dict[str, float]:
    if not latencies_s:
        return {}
    ms = np.array(latencies_s) * 1e3
    return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "max_ms": float(ms.max())}


async def fixed_rate(port: int, body: bytes, rate: float, seconds: float, max_connections: int = 64,
                     drain_s: float = 5.0) -> dict:
    """Open loop: request i is due at t0 + i / rate; latency counts from the due time. Requests
    still unanswered ``drain_s`` after the last one was due count as errors ("unanswered")."""
    idle: list[Connection] = [await Connection.open(port) for _ in range(4)]
    opened = len(idle)
    latencies: list[float] = []
    errors: dict[str, int] = {}
    tasks: set[asyncio.Task] = set()
    loop = asyncio.get_running_loop()

    async def one(conn: Connection, due: float) -> None:
        try:
            status, _ = await conn.request("POST", "/v1/predict", body)
            if status != 200:
                errors[f"HTTP {status}"] = errors.get(f"HTTP {status}", 0) + 1
            latencies.append(loop.time() - due)
            idle.append(conn)
        except Exception as exc:  # noqa: BLE001 - counted and reported
            errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            conn.close()

    total = max(1, int(rate * seconds))
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
        _, pending = await asyncio.wait(tasks, timeout=drain_s)
        for task in pending:
            task.cancel()
        if pending:
            errors["unanswered"] = len(pending)
    elapsed = loop.time() - t0
    for conn in idle:
        conn.close()
    return {"rate": rate, "requests": total, "errors": errors, "achieved_rps": len(latencies) / elapsed,
            "connections": opened, **percentiles(latencies)}


def passes(result: dict) -> bool:
    return not result["errors"] and result.get("p99_ms", float("inf")) <= P99_BOUND_MS


def search_rate(port: int, body: bytes, start: float, factor: float, step_seconds: float, bisections: int,
                max_rate: float, log=print) -> tuple[float | None, list[dict]]:
    """The largest arrival rate (req/s) found to keep p99 <= 10 ms with zero errors: rates
    ``start * factor**k`` until the first failure (or ``max_rate``), then ``bisections`` midpoints
    between the last passing and the failing rate. When ``start`` fails, rates ``start / factor**k``
    (k <= ``DOWN_STEPS``) until one passes, then the bisections. None when none passes (then the
    p99 bound fails without load: a latency problem, not a rate one). A failing rate is run once
    more and fails only when both runs do: on a shared machine one burst of another process
    otherwise ends the search early. Rates are whole requests per second."""
    steps: list[dict] = []

    def step(rate: float) -> bool:
        for attempt in (1, 2):
            result = asyncio.run(fixed_rate(port, body, rate, step_seconds))
            steps.append(result)
            ok = passes(result)
            log(f"  {rate:>8,.0f} req/s: achieved {result['achieved_rps']:>8,.0f}, p50 {result.get('p50_ms', 0):6.2f} ms, "
                f"p99 {result.get('p99_ms', 0):8.2f} ms, errors {result['errors'] or 0}, connections "
                f"{result['connections']}  {'pass' if ok else 'FAIL' if attempt == 2 else 'fail, once more'}")
            time.sleep(0.5)  # let a backlog drain before the next run
            if ok:
                return True
        return False

    best, failed, rate = None, None, start
    while rate <= max_rate:
        if not step(rate):
            failed = rate
            break
        best, rate = rate, round(rate * factor)
    for _ in range(DOWN_STEPS if best is None else 0):
        rate = max(1, round(rate / factor))
        if step(rate):
            best = rate
            break
        failed = rate
    if best is not None and failed is not None:
        for _ in range(bisections):
            middle = round((best + failed) / 2)
            if middle in (best, failed):
                break
            if step(middle):
                best = middle
            else:
                failed = middle
    return best, steps


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


def multipart(data: bytes, boundary: str = "ctrlabbenchboundary") -> tuple[bytes, str]:
    """An /upload body carrying ``data`` as its file, and its content type."""
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"rows.txt\"\r\n"
            f"Content-Type: text/plain\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


async def upload_vs_predict(port: int, upload_data: bytes, body: bytes, repeats: int) -> dict:
    """/upload of ``upload_data`` and /v1/predict of ``body``, alternating on one connection, one
    request at a time (after one warm-up of each): latency percentiles of each."""
    upload_body, upload_type = multipart(upload_data)
    conn = await Connection.open(port)
    times: dict[str, list[float]] = {"upload": [], "predict": []}
    errors: dict[str, int] = {}
    try:
        for i in range(repeats + 1):
            for name, path, payload, ctype in (("upload", "/upload?user_id=bench", upload_body, upload_type),
                                               ("predict", "/v1/predict", body, "application/json")):
                t = time.perf_counter()
                status, _ = await conn.request("POST", path, payload, content_type=ctype)
                if i:  # (the first round warms up)
                    times[name].append(time.perf_counter() - t)
                if status != 200:
                    errors[f"{name} HTTP {status}"] = errors.get(f"{name} HTTP {status}", 0) + 1
    finally:
        conn.close()
    return {"repeats": repeats, "errors": errors, **{name: percentiles(t) for name, t in times.items()}}


# --------------------------------------------------------------------------------------------
# in-process baselines, server memory
# --------------------------------------------------------------------------------------------

def in_process(predictor: Predictor, rows: list[dict], seconds: float) -> dict:
    """Predictor.predict(rows) repeated for about ``seconds`` (after 3 warm-up calls): rows/s and
    mean latency per call."""
    for _ in range(3):
        predictor.predict(rows)
    calls, t0 = 0, time.perf_counter()
    while calls < 5 or time.perf_counter() - t0 < seconds:
        predictor.predict(rows)
        calls += 1
    elapsed = time.perf_counter() - t0
    return {"calls": calls, "rows_per_s": calls * len(rows) / elapsed, "mean_ms": elapsed / calls * 1e3,
            "calls_per_s": calls / elapsed}


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process under it (Linux /proc), parents first."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(sorted(children.get(p, [])))
    return out


MEMORY_KEYS = ("VmRSS", "RssAnon", "RssFile", "RssShmem")


def process_memory(pid: int) -> dict:
    """MB per key of /proc/<pid>/status (``MEMORY_KEYS``, where the kernel has them), Pss from
    /proc/<pid>/smaps_rollup where readable, and the process's command line (shortened)."""
    out: dict = {"pid": pid}
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                if key in MEMORY_KEYS:
                    out[key] = int(value.split()[0]) / 1024
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            out["cmd"] = fh.read().replace(b"\0", b" ").decode(errors="replace").strip()[-70:]
    except OSError:
        return out
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    out["Pss"] = int(line.split()[1]) / 1024
    except OSError:
        pass
    return out


# --------------------------------------------------------------------------------------------
# server, data, main
# --------------------------------------------------------------------------------------------

free_port = serve_process.free_port
stop_server = serve_process.stop_server


@dataclass(frozen=True)
class Setup:
    """What a served configuration varies: the server's options and the request body form."""

    workers: int = 1
    batch_window_ms: float = 0.0
    columnar: bool = False

    def label(self) -> str:
        return (f"{self.workers} worker(s), batch window {self.batch_window_ms:g} ms, "
                f"bodies {'columnar' if self.columnar else 'row dicts'}")

    def server_args(self) -> list[str]:
        return ["--workers", str(self.workers)] + (["--batch-window-ms", f"{self.batch_window_ms:g}"]
                                                   if self.batch_window_ms else [])


def server_threads(threads: int | None, workers: int) -> int:
    """The intra-op threads per worker of the server under test: ``--threads``, else its default
    (ctrlab.serve.app.SERVE_THREADS; an earlier revision without it, --server-source, divided the
    cores among the workers)."""
    if threads:
        return threads
    if SERVER_SOURCE:
        app = Path(SERVER_SOURCE) / "ctrlab" / "serve" / "app.py"
        if "SERVE_THREADS = " not in (app.read_text(encoding="utf-8") if app.exists() else ""):
            return max(1, available_cores() // workers)
    return SERVE_THREADS


def start_server(bundle: Path, port: int, setup: Setup, threads: int | None, backend: str,
                 extra: list[str] = ()) -> subprocess.Popen:
    args = [*setup.server_args(), "--backend", backend, "--log-level", "warning", *extra]
    if threads:
        args += ["--threads", str(threads)]
    previous, cwd = os.environ.get("PYTHONPATH"), os.getcwd()
    bundle = Path(bundle).resolve()
    if SERVER_SOURCE:  # the server process imports ctrlab from another checkout (an earlier revision)
        os.environ["PYTHONPATH"] = SERVER_SOURCE
        # and starts there: `python -m` puts the working directory first on sys.path, ahead of
        # PYTHONPATH, so started from this checkout's root it would import this checkout's ctrlab
        os.chdir(SERVER_SOURCE)
    try:
        proc, _ = serve_process.start_server(bundle, port=port, args=args, capture=False)
    finally:
        os.chdir(cwd)
        if previous is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = previous
    return proc


SERVER_SOURCE = ""  # --server-source


def lever_setups(base: Setup, window_ms: float) -> list[Setup]:
    """``base`` with one lever changed at a time (columnar bodies, micro-batching, 2 workers), then
    all of them: the levers issue 14 names, each measured against the same base in one run."""
    one_each = [replace(base, columnar=True), replace(base, batch_window_ms=base.batch_window_ms or window_ms),
                replace(base, workers=max(2, base.workers))]
    everything = Setup(max(2, base.workers), base.batch_window_ms or window_ms, True)
    out: list[Setup] = []
    for setup in [*one_each, everything]:
        if setup != base and setup not in out:
            out.append(setup)
    return out


def levers_table(levers: list[dict]) -> str:
    width = max(len(x["setup"]) for x in levers)
    lines = [f"  {'setup':<{width}}  {'max 5-row req/s at p99 <= 10 ms':>32}  {'1000-row rows/s':>15}"]
    lines += [f"  {x['setup']:<{width}}  {x['max_5_row_rps'] or 0:>32,.0f}  {x['rows_per_s_1000']:>15,.0f}"
              for x in levers]
    return "\n".join(lines)


def measure_setup(bundle: Path, setup: Setup, args: argparse.Namespace, rows: list[dict], columns: list[str]) -> dict:
    """A server of its own for ``setup``: the 5-row rate search and the 1000-row rows/s."""
    port = free_port()
    threads = server_threads(args.threads, setup.workers)
    proc = start_server(bundle, port, setup, args.threads, args.backend, args.serve_arg)
    try:
        body5, body1000 = (request_body(r, columns, setup.columnar) for r in (rows[:5], rows))
        asyncio.run(fixed_rate(port, body5, args.start_rate, 2.0))  # warm-up, not reported
        print(f"  {setup.label()}, threads {threads}:")
        best, _ = search_rate(port, body5, args.start_rate, args.rate_factor, args.step_seconds, args.bisect,
                              args.max_rate, log=lambda line: print("  " + line))
        bulk = asyncio.run(closed_loop(port, body1000, len(rows), args.bulk_seconds))
    finally:
        stop_server(proc)
    return {"setup": setup.label(), "max_5_row_rps": best, "rows_per_s_1000": bulk["rows_per_s"],
            "errors_1000": bulk["errors"]}


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


def request_body(rows: list[dict], columns: list[str], columnar: bool) -> bytes:
    """A /v1/predict body: ``{"rows": [...]}``, or ``{"columns": {name: [values]}}`` (columnar)."""
    if columnar:
        return json.dumps({"columns": {c: [row.get(c) for row in rows] for c in columns}}).encode()
    return json.dumps({"rows": rows}).encode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="bundle to serve (default: build a DeepFM bundle from synthetic rows)")
    parser.add_argument("--train-rows", type=int, default=50_000, help="synthetic rows for the built bundle")
    parser.add_argument("--seconds", type=float, default=15.0, help="duration of the fixed-rate part (default 15)")
    parser.add_argument("--rate", type=float, default=300.0, help="requests/s of the fixed-rate part (default 300)")
    parser.add_argument("--start-rate", type=float, default=100.0, help="first rate of the search (req/s, default 100)")
    parser.add_argument("--rate-factor", type=float, default=1.5, help="rate step of the search (default x1.5)")
    parser.add_argument("--step-seconds", type=float, default=6.0, help="seconds per search step (default 6)")
    parser.add_argument("--bisect", type=int, default=2, help="bisections after the first failing rate (default 2)")
    parser.add_argument("--max-rate", type=float, default=20_000.0, help="the search stops here (req/s)")
    parser.add_argument("--bulk-seconds", type=float, default=10.0, help="seconds of 1000-row requests (default 10)")
    parser.add_argument("--upload-repeats", type=int, default=300, help="5-line uploads (and 5-row predicts)")
    parser.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads per worker (server default)")
    parser.add_argument("--backend", choices=["onnx", "torch"], default="onnx")
    parser.add_argument("--columnar", action="store_true", help='send /v1/predict bodies as {"columns": {...}}')
    parser.add_argument("--batch-window-ms", type=float, default=0.0,
                        help="the server's micro-batching window (`ctrlab serve --batch-window-ms`; default 0: off)")
    parser.add_argument("--levers", action="store_true",
                        help="then, a server per lever (columnar bodies, micro-batching, 2 workers, all three): "
                             "the rate search and 1000-row rows/s of each")
    parser.add_argument("--lever-window-ms", type=float, default=2.0,
                        help="the micro-batching window --levers tries when --batch-window-ms is 0 (default 2)")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="pass ARG to `ctrlab serve` (repeatable, e.g. --serve-arg=--max-rows --serve-arg=5000)")
    parser.add_argument("--server-source", metavar="DIR", default="",
                        help="run the server from the ctrlab source tree DIR (e.g. `git archive REV | tar -x -C DIR` of an "
                             "earlier revision) while this script and the in-process baseline use this one: the same "
                             "load against an older server, in the same invocation's conditions")
    parser.add_argument("--quick", action="store_true",
                        help="about 1-2 minutes: " + ", ".join(f"--{k.replace('_', '-')} {v:g}" for k, v in QUICK.items()))
    parser.add_argument("--json", dest="json_out", help="write the results as JSON here")
    if parser.parse_args().quick:  # --quick changes the defaults; flags given explicitly still win
        parser.set_defaults(**QUICK)
    args = parser.parse_args()
    if min(args.seconds, args.rate, args.start_rate, args.step_seconds, args.bulk_seconds) <= 0 \
            or args.upload_repeats < 1 or args.rate_factor <= 1 or args.workers < 1:
        parser.error("--seconds, --rate, --start-rate, --step-seconds, --bulk-seconds must be > 0, "
                     "--upload-repeats and --workers >= 1, --rate-factor > 1")
    global SERVER_SOURCE
    SERVER_SOURCE = str(Path(args.server_source).resolve()) if args.server_source else ""
    if SERVER_SOURCE:
        print(f"server source: {SERVER_SOURCE} (this script and the in-process baseline: {Path(__file__).resolve().parents[1]})")
    threads = server_threads(args.threads, args.workers)  # what the server uses

    print(machine_line())
    print("the load generator runs on this same machine and shares its cores with the server")
    work = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    proc = None
    results: dict = {"machine": machine_line()}
    ratios: list[Ratio] = []
    try:
        bundle = given_or_built_bundle(args.bundle, work, args.train_rows)
        raw = work / "requests.tsv"
        write_synthetic(raw, 1000, seed=11, progress=False)
        predictor = Predictor(bundle, backend=args.backend, threads=threads)
        columns, n_dense = predictor.columns, len(predictor.dense_columns)
        rows = request_rows(raw, columns, n_dense, 1000, typed=True)
        setup = Setup(args.workers, args.batch_window_ms, args.columnar)
        body5 = request_body(rows[:5], columns, setup.columnar)
        body1000 = request_body(rows, columns, setup.columnar)
        upload5 = b"".join(raw.read_bytes().splitlines(keepends=True)[:5])

        print(f"\n[in process] Predictor.predict, backend {args.backend}, {threads} intra-op thread(s) (the server's)")
        small_local = results["in_process_5_rows"] = in_process(predictor, rows[:5], 2.0)
        print(f"  5 rows per call: mean {small_local['mean_ms']:.3f} ms = {small_local['calls_per_s']:,.0f} calls/s "
              f"(the bound on one worker); 1000 rows per call: measured below, alternating with HTTP")

        port = free_port()
        proc = start_server(bundle, port, setup, args.threads, args.backend, args.serve_arg)
        print(f"\nserver: 127.0.0.1:{port}, {setup.label()}, backend {args.backend}, threads {threads}"
              f"{', options ' + ' '.join(args.serve_arg) if args.serve_arg else ''}")
        asyncio.run(fixed_rate(port, body5, args.rate, 2.0))  # warm-up, not reported
        Connection.reconnects = 0
        r = results["fixed_rate_5_rows"] = asyncio.run(fixed_rate(port, body5, args.rate, args.seconds))
        print(f"5-row requests at {args.rate:g} req/s for {args.seconds:g} s: achieved {r['achieved_rps']:.1f} req/s, "
              f"p50 {r.get('p50_ms', 0):.2f} ms, p90 {r.get('p90_ms', 0):.2f} ms, p99 {r.get('p99_ms', 0):.2f} ms, "
              f"max {r.get('max_ms', 0):.1f} ms, errors {r['errors'] or 0}, connections {r['connections']}")

        print(f"\n[small requests] open-loop search: the largest rate of 5-row requests with p99 <= "
              f"{P99_BOUND_MS:g} ms and 0 errors ({args.step_seconds:g} s per step, x{args.rate_factor:g}, "
              f"{args.bisect} bisection(s))")
        best, steps = search_rate(port, body5, args.start_rate, args.rate_factor, args.step_seconds, args.bisect,
                                  args.max_rate)
        results["rate_search"] = {"best_rps": best, "steps": steps}
        parallel = min(args.workers, available_cores())
        bound = small_local["calls_per_s"] * parallel
        print(f"max 5-row rate at p99 <= {P99_BOUND_MS:g} ms: {best or 0:,.0f} req/s (load generator on the same "
              f"machine); in-process bound {bound:,.0f} req/s ({parallel} x 1 / mean 5-row predict)")
        print("  (issue 14's target for this rate: >= 3x what the revision before it reaches on the same machine; "
              "compare the two with benchmarks/before_after.py --bench serve)")
        ratios.append(Ratio("5-row max rate / in-process", best or 0.0, bound, "req/s", None, False))

        rounds = max(1, round(args.bulk_seconds / BULK_SLICE_S))
        local, http = [], []
        for _ in range(rounds):  # alternate, so drift hits both alike
            local.append(in_process(predictor, rows, BULK_SLICE_S)["rows_per_s"])
            http.append(asyncio.run(closed_loop(port, body1000, len(rows), BULK_SLICE_S)))
        r = results["closed_loop_1000_rows"] = {
            "rows_per_s": float(np.mean([h["rows_per_s"] for h in http])), "rounds": http,
            "errors": dict(sum((Counter(h["errors"]) for h in http), Counter()))}
        bulk_local = results["in_process_1000_rows"] = {"rows_per_s": float(np.mean(local)), "rounds": local}
        print(f"\n1000-row requests, typed JSON values (2 connections): {r['rows_per_s']:,.0f} rows/s, "
              f"p50 {http[-1].get('p50_ms', 0):.1f} ms (last round), errors {r['errors'] or 0}; in process "
              f"{bulk_local['rows_per_s']:,.0f} rows/s ({rounds} alternating rounds of {BULK_SLICE_S:g} s each)")
        ratios.append(Ratio("HTTP 1000 rows / in-process", float(np.median([h["rows_per_s"] for h in http])),
                            float(np.median(local)), "row/s", 0.7, False,
                            tuple(h["rows_per_s"] / lo for h, lo in zip(http, local))))

        r = results["upload_vs_predict"] = asyncio.run(upload_vs_predict(port, upload5, body5, args.upload_repeats))
        print(f"\n/upload of 5 lines vs /v1/predict of 5 rows, alternating, sequential, {args.upload_repeats} each: "
              f"upload p50 {r['upload']['p50_ms']:.2f} ms p99 {r['upload']['p99_ms']:.2f} ms; predict p50 "
              f"{r['predict']['p50_ms']:.2f} ms p99 {r['predict']['p99_ms']:.2f} ms; errors {r['errors'] or 0}")
        ratios.append(Ratio("/upload 5 lines p99 / predict", r["upload"]["p99_ms"], r["predict"]["p99_ms"], "ms", 1.5,
                            True))

        memory = results["server_memory"] = [process_memory(pid) for pid in process_tree(proc.pid)]
        print("\nserver memory (MB; RssFile: file-backed pages, shared between processes mapping the same files; "
              "Pss: shared pages divided among their sharers):")
        for m in memory:
            print("  pid {:>7}  ".format(m["pid"]) + "  ".join(f"{k} {m[k]:7.1f}" for k in (*MEMORY_KEYS, "Pss")
                                                             if k in m) + f"  {m.get('cmd', '')}")
        stop_server(proc)
        proc = None
        if args.levers:
            print("\n[levers] the same measurements, a server per setup (base: the one above)")
            levers = results["levers"] = [{"setup": setup.label(), "max_5_row_rps": best,
                                           "rows_per_s_1000": results["closed_loop_1000_rows"]["rows_per_s"]}]
            levers += [measure_setup(bundle, other, args, rows, columns) for other in lever_setups(setup,
                                                                                                  args.lever_window_ms)]
            print(levers_table(levers))
        print()
        print(ratios_table(ratios))
        print(f"\nload average after: {os.getloadavg()[0]:.2f} (the load generator's own share included)")
        results["ratios"] = [q.as_dict() for q in ratios]
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=1))
    finally:
        if proc is not None:
            stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
