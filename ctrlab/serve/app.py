"""The HTTP server over :class:`~ctrlab.inference.Predictor`: ``create_app(bundle_dir) -> FastAPI``.

Endpoints::

    POST /v1/predict     {"rows": [...]} (dicts keyed by column, or lists in schema order)
                         -> {"probabilities": [...], "model_version": "...", "timing_ms": {...}}
    POST /upload         multipart file of raw lines in any format ``ctrlab predict`` reads (detected
                         from the content) -> {"code": 200, "dtype": "float32", "data": [[p], ...],
                         "user_id": ...}  (the PaddleRec serving tutorial's answer)
    GET  /health         liveness;  GET /ready: a model is loaded;  GET /metadata: the manifest
    GET  /metrics        Prometheus text: requests by endpoint and status, latency histogram, rows, errors
    POST /admin/reload   {"bundle": PATH}: load a new bundle fully, then swap one reference
                         (Bearer token from the env var ``reload_token_env``; 404 when it is unset)

Every request takes the current model once (``state.current``) and uses only that object, so a
reload never fails or mixes a request: in-flight requests finish on the old model.

Bad input is a 4xx whose ``detail`` names the row and field, never a 500; request bodies are capped
(Content-Length is checked first, then the stream is counted as it is read) before any parsing, and
a JSON body's nesting depth, rows and values are counted on its raw bytes before it is parsed
(:mod:`ctrlab.serve.limits`). Bodies over ``INLINE_BODY_BYTES`` are parsed and scored in worker
threads, at most ``LARGE_BODY_SLOTS`` at a time, so the event loop (``/health``) stays free.
Clients never name server files: uploads are written to a private temporary file.
"""

from __future__ import annotations

import asyncio
import gc
import hmac
import json
import logging
import os
import tempfile
import threading
import time
from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..fileio import is_disk_full
from ..inference import IGNORED_KEYS, InputError, Predictor
from .limits import ClientError, decode_json, has_surrogate, may_hold_surrogates, too_many

_log = logging.getLogger("ctrlab.serve")

DEFAULT_MAX_ROWS = 50_000
DEFAULT_MAX_BODY_BYTES = 32 << 20  # 32 MiB: a 50k-row JSON request of Criteo dicts is ~30 MB
# Requests up to this many body bytes are scored on the event loop: a 5-row request costs well
# under a millisecond, less than handing it to a worker thread; larger ones go to the threadpool
# so that one big request does not stall the loop (health checks, small requests).
INLINE_BODY_BYTES = 16 << 10
# Large bodies parsed and scored at once (per worker process): each may take a few times its size
# in memory while it is parsed, and more at once would only share the same cores.
LARGE_BODY_SLOTS = 2
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class BodyTooLarge(Exception):
    def __init__(self, limit: int):
        self.limit = limit
        super().__init__(f"request body exceeds the limit of {limit:,} bytes")


# --------------------------------------------------------------------------------------------
# the loaded model (swapped as one reference)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class LoadedModel:
    predictor: Predictor
    version: str
    loaded_at: float


def model_version(manifest: dict[str, Any], backend: str) -> str:
    """``NAME@CREATED#SHA12``: the model name, the export time and the sha256 (first 12 hex digits)
    of the model file the backend runs."""
    name = manifest.get("model", {}).get("name", "model")
    created = manifest.get("created", "unknown")
    model_file = manifest.get("onnx", {}).get("file", "model.onnx") if backend == "onnx" else "model.pt"
    sha = (manifest.get("files", {}).get(model_file) or {}).get("sha256", "")[:12]
    return f"{name}@{created}#{sha}"


def load_model(bundle_dir: str | os.PathLike, backend: str, threads: int | None) -> LoadedModel:
    predictor = Predictor(bundle_dir, backend=backend, threads=threads)
    return LoadedModel(predictor, model_version(predictor.manifest, backend), time.time())


class ServerState:
    def __init__(self, current: LoadedModel, backend: str, threads: int | None):
        self.current = current
        self.backend = backend
        self.threads = threads
        self.reload_lock = asyncio.Lock()


# --------------------------------------------------------------------------------------------
# metrics (in-process; one set per worker process)
# --------------------------------------------------------------------------------------------

class Metrics:
    """Counters and a latency histogram, written as Prometheus text exposition."""

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


# --------------------------------------------------------------------------------------------
# ASGI middleware: metrics (outermost) and the body cap
# --------------------------------------------------------------------------------------------

class MetricsMiddleware:
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


class BodyLimitMiddleware:
    """413 before reading when Content-Length exceeds the limit; otherwise the received bytes are
    counted and reading stops (BodyTooLarge -> 413) as soon as they exceed it."""

    def __init__(self, app, max_body_bytes: int):
        self.app = app
        self.limit = max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                text = value.decode("latin-1").strip()
                if not text.isdigit():
                    await _send_json(send, 400, f"invalid Content-Length header {text[:40]!r}")
                    return
                if int(text) > self.limit:
                    await _send_json(send, 413, f"request body of {int(text):,} bytes exceeds the limit of "
                                                f"{self.limit:,} bytes (Content-Length); send fewer rows per request")
                    return
        received = 0
        limit = self.limit

        async def limited_receive():
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        await self.app(scope, limited_receive, send)


async def _send_json(send, status: int, detail: str) -> None:
    body = json.dumps({"detail": detail, "code": status}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def _error(status: int, detail: str) -> Response:
    # ASCII JSON: a message that quotes the client's text stays valid even for a lone surrogate
    body = json.dumps({"detail": detail, "code": status})
    return Response(body, status_code=status, media_type="application/json")


# --------------------------------------------------------------------------------------------
# request bodies -> rows
# --------------------------------------------------------------------------------------------

def parse_predict_body(body: bytes, max_rows: int, columns: list[str]) -> list[Any]:
    """The ``rows`` of a /v1/predict JSON body, checked for shape and count (ClientError otherwise).
    ``columns``: the model's input columns (a row holds at most these and IGNORED_KEYS)."""
    payload = decode_json(body, expected='{"rows": [...]}', max_items=max_rows,
                          max_values=max_rows * (len(columns) + len(IGNORED_KEYS)))
    if not isinstance(payload, dict):
        raise ClientError(422, f'expected a JSON object {{"rows": [...]}}, got {type(payload).__name__}')
    extra = sorted(k for k in payload if k != "rows")
    if extra:
        raise ClientError(422, f'unknown top-level field(s) {extra}; the body is {{"rows": [...]}}')
    if "rows" not in payload:
        raise ClientError(422, 'missing field "rows": send {"rows": [row, ...]}')
    rows = payload["rows"]
    if not isinstance(rows, list):
        raise ClientError(422, f'"rows" must be a list of rows, got {type(rows).__name__}')
    if not rows:
        raise ClientError(422, '"rows" is empty; send at least one row')
    if len(rows) > max_rows:
        raise too_many(f"{len(rows):,}", max_rows)
    if may_hold_surrogates(body):
        check_text(rows, columns)
    return rows


def check_text(rows: list[Any], columns: list[str]) -> None:
    """ClientError naming the row and field of the first string with a lone UTF-16 surrogate
    (legal JSON, "\\ud800", but not text: it cannot be encoded, hashed or stored)."""
    for i, row in enumerate(rows):
        fields = row.items() if isinstance(row, dict) else enumerate(row) if isinstance(row, list) else ()
        for key, value in fields:
            name = columns[key] if isinstance(key, int) and key < len(columns) else key
            for text in (key, value):
                if isinstance(text, str) and has_surrogate(text):
                    raise ClientError(422, f"row {i}, field {name!r}: {text[:40]!r} holds a lone UTF-16 surrogate; "
                                           f"send valid Unicode text")


def score_rows(loaded: LoadedModel, rows: list[Any]) -> tuple[np.ndarray, dict[str, float]]:
    """Probabilities and per-stage milliseconds (measured here: the Predictor is shared by threads)."""
    predictor = loaded.predictor
    t0 = time.perf_counter()
    try:
        table = predictor.to_table(rows)
        t1 = time.perf_counter()
        dense, sparse = predictor.transform(table)  # (a value whose feature overflows is the client's)
    except InputError as exc:  # names the row and field
        raise ClientError(422, str(exc)) from None
    except (ValueError, ArithmeticError, UnicodeError) as exc:  # a bad value the checks missed: still a 4xx
        raise ClientError(422, f"the rows hold a value that cannot be encoded: {exc}") from None
    t2 = time.perf_counter()
    probs = predictor.predict_encoded(dense, sparse)
    t3 = time.perf_counter()
    bad = np.flatnonzero(~np.isfinite(probs))
    if len(bad):  # (JSON has no NaN; only extreme inputs get here)
        raise ClientError(422, f"row {bad[0]}: the model gives no finite probability for its values")
    return probs, {"parse": (t1 - t0) * 1e3, "transform": (t2 - t1) * 1e3, "inference": (t3 - t2) * 1e3}


def check_upload_text(data: bytes, max_rows: int) -> None:
    if not data.strip():
        raise ClientError(400, "the uploaded file is empty")
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        hint = " (gzip-compressed uploads are not accepted; send plain text)" if data[:2] == b"\x1f\x8b" else ""
        raise ClientError(400, f"upload line {line}, byte {column}: not UTF-8 text{hint}") from None
    lines = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if lines > max_rows + 1:  # (+1: a header line)
        raise ClientError(413, f"the upload has {lines:,} lines; the limit is {max_rows:,} rows per request")


def score_upload(loaded: LoadedModel, data: bytes) -> tuple[np.ndarray, str]:
    """Score an uploaded file's raw lines: written to a private temporary file (the name is ours,
    never the client's) and read by the same readers as ``ctrlab predict`` (format detected)."""
    from ..data.readers import DataError
    from ..inference import FileScoring, score_files

    fd, name = tempfile.mkstemp(prefix="ctrlab-upload-", suffix=".txt")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        report = FileScoring()
        try:
            parts = [chunk.probabilities for chunk in score_files(loaded.predictor, name, fmt="auto", report=report)]
        except (DataError, InputError, ValueError, UnicodeDecodeError) as exc:
            raise ClientError(422, str(exc).replace(name, "upload")) from None
        probs = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return probs, report.formats.get(name, "")
    finally:
        try:
            os.unlink(name)
        except OSError:
            pass


# --------------------------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------------------------

_PREDICT_BODY = {
    "required": True,
    "content": {"application/json": {"schema": {
        "type": "object", "required": ["rows"], "additionalProperties": False,
        "properties": {"rows": {
            "type": "array", "minItems": 1,
            "description": "rows as objects keyed by column name (a column left out is missing) or as lists "
                           "of values in the bundle's column order (GET /metadata: columns)",
            "items": {"oneOf": [{"type": "object"}, {"type": "array"}]}}}},
        "example": {"rows": [{"I1": 3, "I2": None, "C1": "05db9164"}]}}},
}
_UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": "raw lines in any format `ctrlab predict` reads (plain UTF-8 text; "
                                               "the format is detected from the content)"}}}}},
}


def create_app(bundle_dir: str | os.PathLike, *, backend: str = "onnx", max_rows: int = DEFAULT_MAX_ROWS,
               max_body_bytes: int = DEFAULT_MAX_BODY_BYTES, reload_token_env: str = "CTRLAB_RELOAD_TOKEN",
               threads: int | None = None) -> FastAPI:
    """A FastAPI app serving the bundle at ``bundle_dir`` (loaded now: errors surface at startup).

    ``threads``: intra-op threads of the model (default: the available cores).
    ``max_rows``: rows per request (/v1/predict rows, /upload lines); ``max_body_bytes``: request body cap.
    ``reload_token_env``: the env var holding the /admin/reload token, read per request (unset or
    empty: reload is disabled, 404)."""
    if max_rows < 1 or max_body_bytes < 1:
        raise ValueError(f"max_rows and max_body_bytes must be >= 1, got {max_rows} and {max_body_bytes}")
    state = ServerState(load_model(bundle_dir, backend, threads), backend, threads)
    metrics = Metrics()
    large_body_slots = asyncio.Semaphore(LARGE_BODY_SLOTS)
    app = FastAPI(title="ctrlab serving", version=_ctrlab_version(),
                  description="Click-through-rate probabilities for raw rows, from a ctrlab bundle.")
    app.state.serve = state
    app.state.metrics = metrics

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, exc: HTTPException):
        return _error(exc.status_code, str(exc.detail))

    @app.exception_handler(BodyTooLarge)
    async def too_large(_request: Request, exc: BodyTooLarge):
        return _error(413, f"{exc}; send fewer rows per request")

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception):  # logged; the answer shows no internals
        _log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        if is_disk_full(exc):  # (an upload's temporary file): the server's state, not the request's
            return _error(503, "the server is out of disk space; retry later")
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    async def in_worker(func, *args):
        """``func(*args)`` in a worker thread, at most LARGE_BODY_SLOTS at a time (large bodies)."""
        async with large_body_slots:
            return await run_in_threadpool(func, *args)

    @app.post("/v1/predict", openapi_extra={"requestBody": _PREDICT_BODY},
              summary="Probabilities for raw rows (JSON)")
    async def predict(request: Request):
        started = time.perf_counter()
        loaded = state.current  # this request's model, whatever a reload does meanwhile
        body = await request.body()
        t_read = time.perf_counter()
        columns = loaded.predictor.columns
        if len(body) <= INLINE_BODY_BYTES:
            rows = parse_predict_body(body, max_rows, columns)
            t_json = time.perf_counter()
            probs, timing = score_rows(loaded, rows)
        else:
            def work():
                rows = parse_predict_body(body, max_rows, columns)
                return rows, time.perf_counter(), *score_rows(loaded, rows)
            rows, t_json, probs, timing = await in_worker(work)
        metrics.add_rows("/v1/predict", len(rows))
        timing = {"read": (t_read - started) * 1e3, "json": (t_json - t_read) * 1e3, **timing}
        timing["total"] = (time.perf_counter() - started) * 1e3
        return JSONResponse({"probabilities": probs.tolist(), "model_version": loaded.version,
                             "timing_ms": {k: round(v, 3) for k, v in timing.items()}})

    @app.post("/upload", openapi_extra={"requestBody": _UPLOAD_BODY},
              summary="Probabilities for an uploaded file of raw lines (PaddleRec serving answer)")
    async def upload(request: Request, user_id: str = "", debug: bool = False):
        started = time.perf_counter()
        loaded = state.current
        form = await request.form(max_files=1, max_fields=16)
        try:
            files = [v for v in form.values() if isinstance(v, UploadFile)]
            if not files:
                raise ClientError(400, "no file in the request: send multipart/form-data with a file field "
                                       "(curl -F file=@rows.txt)")
            data = await files[0].read()
        finally:
            await form.close()
        t_read = time.perf_counter()

        def work():
            check_upload_text(data, max_rows)
            return score_upload(loaded, data)
        probs, fmt = await in_worker(work)
        metrics.add_rows("/upload", len(probs))
        answer: dict[str, Any] = {"code": 200, "dtype": "float32", "data": probs.reshape(-1, 1).tolist(),
                                  "user_id": user_id}
        if debug:
            answer["debug"] = {"rows": int(len(probs)), "format": fmt, "model_version": loaded.version,
                               "timing_ms": {"read": round((t_read - started) * 1e3, 3),
                                             "total": round((time.perf_counter() - started) * 1e3, 3)}}
        return JSONResponse(answer)

    @app.get("/health", summary="Liveness")
    async def health():
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: a model is loaded")
    async def ready():
        if state.current is None:  # (create_app loads before serving; kept for clarity)
            return _error(503, "no model loaded")
        return {"status": "ready", "model_version": state.current.version}

    @app.get("/metadata", summary="The served bundle's manifest")
    async def metadata():
        loaded = state.current
        predictor = loaded.predictor
        manifest = {k: v for k, v in predictor.manifest.items() if k != "source"}  # no server paths
        return {"model_version": loaded.version, "backend": state.backend, "columns": predictor.columns,
                "dense_columns": predictor.dense_columns, "sparse_columns": predictor.sparse_columns,
                "limits": {"max_rows": max_rows, "max_body_bytes": max_body_bytes},
                "loaded_at": loaded.loaded_at, "manifest": manifest}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus():
        return PlainTextResponse(metrics.render(state.current.version) + input_metrics(state.current.predictor),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.post("/admin/reload", summary="Swap to another bundle (admin; Bearer token)",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "type": "object", "required": ["bundle"],
                  "properties": {"bundle": {"type": "string", "description": "server-side bundle directory"}}}}}}})
    async def reload(request: Request):
        token = os.environ.get(reload_token_env, "")
        if not token:
            return _error(404, f"admin reload is disabled (set {reload_token_env} on the server to enable it)")
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return _error(401, "missing Authorization: Bearer TOKEN header")
        if not hmac.compare_digest(auth[len("Bearer "):].encode(), token.encode()):
            return _error(403, "wrong reload token")
        payload = decode_json(await request.body(), expected='{"bundle": "/path/to/bundle"}', max_values=16)
        if not isinstance(payload, dict) or not isinstance(payload.get("bundle"), str) or not payload["bundle"]:
            return _error(422, 'send {"bundle": "/path/to/bundle"} (a bundle directory on the server)')
        async with state.reload_lock:
            previous = state.current
            try:
                loaded = await run_in_threadpool(load_model, payload["bundle"], state.backend, state.threads)
            except Exception as exc:  # the old model stays; the admin gets the loader's message
                metrics.add_reload(False)
                return _error(422, f"reload failed, still serving {previous.version}: {exc}")
            state.current = loaded  # the swap: one reference assignment
            metrics.add_reload(True)
        return {"status": "reloaded", "previous_version": previous.version, "model_version": loaded.version,
                "columns_changed": loaded.predictor.columns != previous.predictor.columns}

    endpoints = {"/v1/predict", "/upload", "/health", "/ready", "/metadata", "/metrics", "/admin/reload",
                 "/openapi.json", "/docs", "/redoc"}
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=endpoints)  # added last: outermost
    return app


def _ctrlab_version() -> str:
    from .. import __version__

    return __version__


# environment variables that carry `ctrlab serve` options into uvicorn worker processes
ENV_BUNDLE = "CTRLAB_SERVE_BUNDLE"
ENV_BACKEND = "CTRLAB_SERVE_BACKEND"
ENV_MAX_ROWS = "CTRLAB_SERVE_MAX_ROWS"
ENV_MAX_BODY = "CTRLAB_SERVE_MAX_BODY_BYTES"
ENV_THREADS = "CTRLAB_SERVE_THREADS"


def app_from_env() -> FastAPI:
    """App factory for ``uvicorn --factory ctrlab.serve.app:app_from_env`` (and worker processes)."""
    bundle = os.environ.get(ENV_BUNDLE)
    if not bundle:
        raise RuntimeError(f"set {ENV_BUNDLE} to the bundle directory to serve")
    threads = os.environ.get(ENV_THREADS)
    app = create_app(Path(bundle), backend=os.environ.get(ENV_BACKEND, "onnx"),
                      max_rows=int(os.environ.get(ENV_MAX_ROWS, DEFAULT_MAX_ROWS)),
                      max_body_bytes=int(os.environ.get(ENV_MAX_BODY, DEFAULT_MAX_BODY_BYTES)),
                      threads=int(threads) if threads else None)
    # A server process: move everything allocated at startup (libraries, the model) out of the
    # garbage collector's reach, so that full collections stay short and do not stall requests.
    gc.collect()
    gc.freeze()
    return app
