"""A flood of maximum-size hostile bodies against `ctrlab serve`, and /health meanwhile.

Sends ``--clients`` concurrent /v1/predict bodies of ``--max-body-bytes`` (default 32 MiB, the
server's default cap) holding millions of empty rows (``{"rows": [{},{},...]}``), ``--rounds``
times, while another thread polls ``/health`` every 10 ms. Prints the /health latency (target: max
<= 100 ms), the big bodies' statuses (want 413 for all) and the server's resident memory before,
at its peak (VmHWM) and after, in MB (target: peak growth a small multiple of the body cap).

    python benchmarks/bench_serve_flood.py                 # builds a DeepFM bundle in a temp dir
    python benchmarks/bench_serve_flood.py --bundle B --clients 8
    python benchmarks/bench_serve_flood.py --legit         # bodies of max-rows real rows instead
"""

from __future__ import annotations

import argparse
import http.client
import json
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from bench_inference import given_or_built_bundle  # (this script's folder is on sys.path)

from ctrlab.config import ServeConfig
from ctrlab.inference import Predictor
from ctrlab.serve import process as serve_process


def flood_body(size: int) -> bytes:
    """``{"rows": [{},{},...]}`` of exactly ``size`` bytes or just under."""
    n = (size - len(b'{"rows":[]}') + 1) // 3
    return b'{"rows":[' + b"{}," * (n - 1) + b"{}]}"


def legit_body(bundle: Path, rows: int, size: int) -> bytes:
    """Real-looking rows (every column a value), as many as fit ``rows`` and ``size``."""
    predictor = Predictor(bundle, threads=1)
    row = {c: (1.5 if c in predictor.dense_columns else "05db9164") for c in predictor.columns}
    one = len(json.dumps(row)) + 2
    return json.dumps({"rows": [row] * min(rows, size // one)}).encode()


def post(port: int, path: str, body: bytes, timeout: float = 120.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(serve_process.HOST, port, timeout=timeout)
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def run_flood(port: int, body: bytes, clients: int, rounds: int) -> dict:
    health_ms: list[float] = []
    health_errors: list[str] = []
    statuses: dict[int, int] = {}
    in_flight = [0]
    during = [0]  # /health answers while at least one big body was in flight
    lock = threading.Lock()
    stop = threading.Event()

    def poll_health() -> None:
        conn = http.client.HTTPConnection(serve_process.HOST, port, timeout=30)
        while not stop.is_set():
            t = time.perf_counter()
            try:
                conn.request("GET", "/health")
                resp = conn.getresponse()
                resp.read()
                ok = resp.status == 200
            except OSError as exc:
                health_errors.append(repr(exc))
                conn.close()
                conn = http.client.HTTPConnection(serve_process.HOST, port, timeout=30)
                continue
            health_ms.append((time.perf_counter() - t) * 1e3)
            if not ok:
                health_errors.append(f"HTTP {resp.status}")
            with lock:
                during[0] += in_flight[0] > 0
            time.sleep(0.01)
        conn.close()

    def client() -> None:
        for _ in range(rounds):
            with lock:
                in_flight[0] += 1
            try:
                status, _ = post(port, "/v1/predict", body)
            except OSError as exc:
                status = -1
                health_errors.append(f"big body: {exc!r}")
            with lock:
                in_flight[0] -= 1
                statuses[status] = statuses.get(status, 0) + 1

    poller = threading.Thread(target=poll_health)
    poller.start()
    time.sleep(0.2)
    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    time.sleep(0.2)
    stop.set()
    poller.join()
    ms = np.array(health_ms)
    return {"seconds": seconds, "statuses": statuses, "health_polls": len(ms), "health_during_flood": during[0],
            "health_errors": health_errors, "health_p50_ms": float(np.median(ms)),
            "health_p99_ms": float(np.percentile(ms, 99)), "health_max_ms": float(ms.max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", help="bundle to serve (default: build a DeepFM bundle from synthetic rows)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent big bodies (default 4)")
    parser.add_argument("--rounds", type=int, default=3, help="big bodies per client (default 3)")
    parser.add_argument("--max-body-bytes", type=int, default=ServeConfig.max_body_bytes)
    parser.add_argument("--max-rows", type=int, default=ServeConfig.max_rows)
    parser.add_argument("--legit", action="store_true", help="send max-rows real rows (accepted) instead")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench_flood_"))
    proc = None
    try:
        bundle = given_or_built_bundle(args.bundle, work, 20_000)
        body = legit_body(bundle, args.max_rows, args.max_body_bytes) if args.legit else flood_body(args.max_body_bytes)
        port = serve_process.free_port()
        proc, _ = serve_process.start_server(bundle, port=port, args=[
            "--max-body-bytes", str(args.max_body_bytes), "--max-rows", str(args.max_rows), "--log-level", "warning"])
        post(port, "/v1/predict", b'{"rows": [{}]}')  # warm
        before = serve_process.memory_mb(proc.pid)
        r = run_flood(port, body, args.clients, args.rounds)
        after = serve_process.memory_mb(proc.pid)
        kind = "real rows" if args.legit else "empty rows"
        print(f"{args.clients} clients x {args.rounds} bodies of {len(body) / 2**20:.1f} MiB ({kind}) in "
              f"{r['seconds']:.1f} s: statuses {r['statuses']}")
        print(f"/health: {r['health_polls']} polls ({r['health_during_flood']} while big bodies were in flight), "
              f"p50 {r['health_p50_ms']:.1f} ms, p99 {r['health_p99_ms']:.1f} ms, max {r['health_max_ms']:.1f} ms, "
              f"errors {r['health_errors'] or 0}  (target: max <= 100 ms, 0 errors)")
        print(f"server memory: RSS before {before['VmRSS']:.0f} MB (peak so far {before['VmHWM']:.0f} MB), peak {after['VmHWM']:.0f} MB "
              f"(+{after['VmHWM'] - before['VmRSS']:.0f} MB = {(after['VmHWM'] - before['VmRSS']) * 2**20 / len(body):.1f}"
              f" x the body), after {after['VmRSS']:.0f} MB")
    finally:
        if proc is not None:
            serve_process.stop_server(proc)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
