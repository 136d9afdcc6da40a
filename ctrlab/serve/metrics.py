"""The server's Prometheus metrics, in process (one set per worker process), written by hand as
text exposition (no client library: a few counters and one histogram).

:class:`Metrics` counts requests by endpoint, method and status, a latency histogram per endpoint,
rows scored, error answers and reloads; :class:`MetricsMiddleware` (the outermost ASGI layer)
observes every request from its first byte in to its last byte out; :func:`input_metrics` writes
the predictor's per-field input counts beside the rates the bundle saw in training;
:func:`process_metrics` this worker process's memory (each worker of ``--workers N`` answers with
its own).
"""

from __future__ import annotations

import os
import threading
import time
from bisect import bisect_left

from ..inference import Predictor

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    """Counters and a latency histogram, written as Prometheus text exposition. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, str, int], int] = {}
        self.latency: dict[str, list[int]] = {}  # endpoint -> bucket counts (+Inf last)
        self.latency_sum: dict[str, float] = {}
        self.rows: dict[str, int] = {}
        self.errors: dict[tuple[str, str], int] = {}
        self.reloads: dict[str, int] = {"ok": 0, "failed": 0}

    def observe(self, endpoint: str, method: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (endpoint, method, status)
            self.requests[key] = self.requests.get(key, 0) + 1
            buckets = self.latency.setdefault(endpoint, [0] * (len(LATENCY_BUCKETS) + 1))
            buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
            self.latency_sum[endpoint] = self.latency_sum.get(endpoint, 0.0) + seconds
            if status >= 400:
                kind = "client" if status < 500 else "server"
                self.errors[(endpoint, kind)] = self.errors.get((endpoint, kind), 0) + 1

    def add_rows(self, endpoint: str, n: int) -> None:
        with self._lock:
            self.rows[endpoint] = self.rows.get(endpoint, 0) + n

    def add_reload(self, ok: bool) -> None:
        with self._lock:
            self.reloads["ok" if ok else "failed"] += 1

    def render(self, version: str) -> str:
        def esc(value: str) -> str:
            return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

        with self._lock:
            out = ["# HELP ctrlab_requests_total HTTP requests by endpoint, method and status.",
                   "# TYPE ctrlab_requests_total counter"]
            for (endpoint, method, status), n in sorted(self.requests.items()):
                out.append(f'ctrlab_requests_total{{endpoint="{endpoint}",method="{method}",status="{status}"}} {n}')
            out += ["# HELP ctrlab_request_duration_seconds Request latency (first byte in to last byte out).",
                    "# TYPE ctrlab_request_duration_seconds histogram"]
            for endpoint, counts in sorted(self.latency.items()):
                cumulative = 0
                for bound, n in zip(LATENCY_BUCKETS + (float("inf"),), counts):
                    cumulative += n
                    le = "+Inf" if bound == float("inf") else repr(bound)
                    out.append(f'ctrlab_request_duration_seconds_bucket{{endpoint="{endpoint}",le="{le}"}} {cumulative}')
                out.append(f'ctrlab_request_duration_seconds_sum{{endpoint="{endpoint}"}} {self.latency_sum[endpoint]:.6f}')
                out.append(f'ctrlab_request_duration_seconds_count{{endpoint="{endpoint}"}} {cumulative}')
            out += ["# HELP ctrlab_rows_scored_total Rows scored.", "# TYPE ctrlab_rows_scored_total counter"]
            for endpoint, n in sorted(self.rows.items()):
                out.append(f'ctrlab_rows_scored_total{{endpoint="{endpoint}"}} {n}')
            out += ["# HELP ctrlab_errors_total Error answers (4xx client, 5xx server).",
                    "# TYPE ctrlab_errors_total counter"]
            for (endpoint, kind), n in sorted(self.errors.items()):
                out.append(f'ctrlab_errors_total{{endpoint="{endpoint}",kind="{kind}"}} {n}')
            out += ["# HELP ctrlab_model_reloads_total Model reloads by result.",
                    "# TYPE ctrlab_model_reloads_total counter"]
            for result, n in sorted(self.reloads.items()):
                out.append(f'ctrlab_model_reloads_total{{result="{result}"}} {n}')
        out += ["# HELP ctrlab_model_info The model being served.", "# TYPE ctrlab_model_info gauge",
                f'ctrlab_model_info{{version="{esc(version)}"}} 1']
        return "\n".join(out) + "\n"


def process_metrics() -> str:
    """This process's resident memory and the part of it shared with other processes (file-backed
    pages: libraries and memory-mapped files), in the Prometheus process collector's names; empty
    where /proc is absent (not Linux)."""
    try:
        with open("/proc/self/statm") as fh:
            _size, resident, shared = (int(v) for v in fh.read().split()[:3])
    except OSError:
        return ""
    page = os.sysconf("SC_PAGE_SIZE")
    return "\n".join([
        "# HELP process_resident_memory_bytes Resident memory size in bytes (this worker process).",
        "# TYPE process_resident_memory_bytes gauge", f"process_resident_memory_bytes {resident * page}",
        "# HELP process_shared_memory_bytes Resident memory shared with other processes (file-backed pages).",
        "# TYPE process_shared_memory_bytes gauge", f"process_shared_memory_bytes {shared * page}"]) + "\n"


def input_metrics(predictor: Predictor) -> str:
    """Per input field, since the model was loaded: rows, missing and OOV values seen, beside the
    rates the bundle saw in training (compare to spot inputs that do not fit the model)."""
    seen = predictor.input_counts.snapshot()
    out = []
    for name, help_text in (("rows", "Rows encoded"), ("missing", "Missing values seen"),
                            ("oov", "Out-of-vocabulary values seen (fields encoded to ids)")):
        out += [f"# HELP ctrlab_input_{name}_total {help_text}, per input field.",
                f"# TYPE ctrlab_input_{name}_total counter"]
        out += [f'ctrlab_input_{name}_total{{field="{f}"}} {c[name]}' for f, c in seen.items() if c[name] is not None]
    for kind in ("missing", "oov"):
        out += [f"# HELP ctrlab_input_trained_{kind}_rate The {kind} rate per field in the bundle's training data.",
                f"# TYPE ctrlab_input_trained_{kind}_rate gauge"]
        out += [f'ctrlab_input_trained_{kind}_rate{{field="{f}"}} {r[kind]}'
                for f, r in predictor.input_rates.items() if r.get(kind) is not None]
    return "\n".join(out) + "\n"


class MetricsMiddleware:
    """ASGI middleware (add it last: outermost) that observes every HTTP request in ``metrics``:
    endpoint (one of ``endpoints``, else ``other``: bounded label values), method, status, seconds."""

    def __init__(self, app, metrics: Metrics, endpoints: set[str]):
        self.app = app
        self.metrics = metrics
        self.endpoints = endpoints

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            path = scope.get("path", "")
            endpoint = path if path in self.endpoints else "other"  # bounded label values
            self.metrics.observe(endpoint, scope.get("method", ""), status, time.perf_counter() - started)
