"""The HTTP server over :class:`~ctrlab.inference.Predictor`: the routes (``create_app(bundle_dir)
-> FastAPI``) and how they are run (``serve(cfg: ServeConfig)``, on uvicorn).

Endpoints::

    POST /v1/predict     {"rows": [...]} (dicts keyed by column, or lists in schema order), or the
                         columnar {"columns": {"I1": [...], "C1": [...]}}
                         -> {"probabilities": [...], "model_version": "...", "timing_ms": {...}}
                         a multi-task bundle (several tasks): {"tasks": ["click", "conversion"],
                         "probabilities": {"click": [...], "conversion": [...]}, "model_version": ...,
                         "timing_ms": ...} (one list per task, in row order)
    POST /upload         multipart file of raw lines in any format ``ctrlab predict`` reads (detected
                         from the content) -> {"code": 200, "dtype": "float32", "data": [[p], ...],
                         "user_id": ...}  (the PaddleRec serving tutorial's answer; several tasks:
                         [[p_task0, p_task1, ...], ...], one column per task in /metadata's order)
    GET  /health         liveness;  GET /ready: a model is loaded;  GET /metadata: the manifest
                         (and "tasks": the score columns' names; one name for a single-task bundle)
    GET  /metrics        Prometheus text: requests by endpoint and status, latency histogram, rows, errors,
                         this worker's resident memory
    POST /admin/reload   {"bundle": PATH}: load a new bundle fully, then swap one reference
                         (Bearer token from the env var ``reload_token_env``; 404 when it is unset)

Every request takes the current model once (``state.current``, :mod:`.model`) and uses only that
object, so a reload never fails or mixes a request: in-flight requests finish on the old model.

Bad input is a 4xx whose ``detail`` names the row and field, never a 500 (:mod:`.scoring`); request
bodies are capped (Content-Length is checked first, then the stream is counted as it is read) before
any parsing, and a JSON body's nesting depth, rows and values are counted on its raw bytes before it
is parsed (:mod:`.limits`). Bodies (and uploaded files) over ``INLINE_BODY_BYTES`` are parsed and
scored in worker threads, at most ``LARGE_BODY_SLOTS`` at a time, so the event loop (``/health``)
stays free; smaller /v1/predict requests may be scored together (``batch_window_ms``,
:mod:`.batching`). JSON is read and written by :mod:`.codec` (orjson, same values as ``json``).
Clients never name server files: uploads are written to a private temporary file. Metrics:
:mod:`.metrics`.

Worker processes (``--workers N``) receive the whole :class:`~ctrlab.config.ServeConfig` as one
JSON value in the environment variable ``CONFIG_ENV``, checked again there by ``from_dict``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import hmac
import json
import logging
import os
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from .. import __version__
from ..config import ConfigError, ServeConfig, from_dict, to_dict
from ..export.manifest import load_manifest
from ..fileio import is_disk_full
from . import codec
from .batching import MicroBatcher
from .fastlane import FastLane, single_file_part, upload_query
from .limits import BodyLimitMiddleware, BodyTooLarge, ClientError, decode_json
from .metrics import Metrics, MetricsMiddleware, input_metrics, process_metrics
from .model import ServerState, load_model
from .scoring import check_upload, parse_predict_body, score_rows, score_upload

_log = logging.getLogger("ctrlab.serve")

# Requests up to this many body bytes are scored on the event loop: a 5-row request costs well
# under a millisecond, less than handing it to a worker thread; larger ones go to the threadpool
# so that one big request does not stall the loop (health checks, small requests).
INLINE_BODY_BYTES = 16 << 10
# Large bodies parsed and scored at once (per worker process): each may take a few times its size
# in memory while it is parsed, and more at once would only share the same cores.
LARGE_BODY_SLOTS = 2
# intra-op threads per worker unless --threads says otherwise: a server scores concurrent requests
# in parallel (large bodies in worker threads, up to LARGE_BODY_SLOTS), where one thread per call
# does best; and a 5-row call pays ~0.2 ms to wake a second thread (bench_serve.py: 5-row calls
# 0.25 vs 0.46 ms, 1000-row HTTP throughput +10% with 1 thread instead of 2 on 2 cores)
SERVE_THREADS = 1
# the environment variable that carries the whole ServeConfig (JSON) into uvicorn's worker processes
CONFIG_ENV = "CTRLAB_SERVE_CONFIG"


def _json(value: Any) -> Response:
    """A 200 JSON answer, written by :mod:`.codec` (the same values as ``json.dumps``, faster)."""
    return Response(codec.dumps(value), media_type="application/json")


def _error(status: int, detail: str) -> Response:
    # ASCII JSON: a message that quotes the client's text stays valid even for a lone surrogate
    body = json.dumps({"detail": detail, "code": status})
    return Response(body, status_code=status, media_type="application/json")


# --------------------------------------------------------------------------------------------
# the app
# --------------------------------------------------------------------------------------------

_PREDICT_BODY = {
    "required": True,
    "description": 'Either {"rows": [...]} or the columnar form {"columns": {"I1": [...], "C1": [...]}} (one '
                   "list per column, all of one length: row i takes the i-th value of each; a column left out is "
                   "missing). Both are checked value by value the same way; errors name the row and field.",
    "content": {"application/json": {"schema": {
        "type": "object", "additionalProperties": False,
        "oneOf": [{"required": ["rows"]}, {"required": ["columns"]}],
        "properties": {"rows": {
            "type": "array", "minItems": 1,
            "description": "rows as objects keyed by column name (a column left out is missing) or as lists "
                           "of values in the bundle's column order (GET /metadata: columns)",
            "items": {"oneOf": [{"type": "object"}, {"type": "array"}]}},
            "columns": {
            "type": "object", "minProperties": 1,
            "description": "columnar form: column name -> list of values, one per row (all lists of one length)",
            "additionalProperties": {"type": "array"}}}},
        "example": {"rows": [{"I1": 3, "I2": None, "C1": "05db9164"}]}}},
}
_UPLOAD_BODY = {
    "required": True,
    "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file"],
        "properties": {"file": {"type": "string", "format": "binary",
                                "description": "raw lines in any format `ctrlab predict` reads (plain UTF-8 text, "
                                               "or a Parquet file; the format is detected from the content)"}}}}},
}


def create_app(bundle_dir: str | os.PathLike, *, backend: str = ServeConfig.backend,
               max_rows: int = ServeConfig.max_rows, max_body_bytes: int = ServeConfig.max_body_bytes,
               reload_token_env: str = "CTRLAB_RELOAD_TOKEN", threads: int | None = None,
               batch_window_ms: float = ServeConfig.batch_window_ms) -> FastAPI:
    """A FastAPI app serving the bundle at ``bundle_dir`` (loaded now: errors surface at startup).

    ``threads``: intra-op threads of the model (default: the available cores).
    ``max_rows``: rows per request (/v1/predict rows, /upload lines or Parquet rows); ``max_body_bytes``: request body cap.
    ``reload_token_env``: the env var holding the /admin/reload token, read per request (unset or
    empty: reload is disabled, 404). ``batch_window_ms``: small /v1/predict requests arriving within
    this window are scored in one model call (:mod:`.batching`; 0: each alone)."""
    if max_rows < 1 or max_body_bytes < 1:
        raise ValueError(f"max_rows and max_body_bytes must be >= 1, got {max_rows} and {max_body_bytes}")
    state = ServerState(load_model(bundle_dir, backend, threads), backend, threads)
    metrics = Metrics()
    large_body_slots = asyncio.Semaphore(LARGE_BODY_SLOTS)
    batcher = MicroBatcher(batch_window_ms / 1e3) if batch_window_ms > 0 else None
    app = FastAPI(title="ctrlab serving", version=__version__,
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

    async def predict_answer(body: bytes, started: float, t_read: float) -> dict[str, Any]:
        """The /v1/predict answer for a read body (ClientError for bad input): the route's and
        the fast lane's (:mod:`.fastlane`) one implementation."""
        loaded = state.current  # this request's model, whatever a reload does meanwhile
        columns = loaded.predictor.columns
        # (a weighted list's value may come as [value, weight] pairs: two JSON values each)
        list_values = sum(int(c.max_length) * (2 if c.weight_separator else 1) for c in loaded.predictor.list_columns)
        if len(body) <= INLINE_BODY_BYTES:
            rows = parse_predict_body(body, max_rows, columns, list_values)
            t_json = time.perf_counter()
            probs, timing = await batcher.score(loaded, rows) if batcher else score_rows(loaded, rows)
        else:
            def work():
                rows = parse_predict_body(body, max_rows, columns, list_values)
                return rows, time.perf_counter(), *score_rows(loaded, rows)
            rows, t_json, probs, timing = await in_worker(work)
        metrics.add_rows("/v1/predict", len(rows))
        timing = {"read": (t_read - started) * 1e3, "json": (t_json - t_read) * 1e3, **timing}
        timing["total"] = (time.perf_counter() - started) * 1e3
        if loaded.predictor.multi_task:  # one list per task, named
            tasks = loaded.predictor.tasks
            return {"tasks": tasks, "probabilities": dict(zip(tasks, probs.T.tolist())),
                    "model_version": loaded.version, "timing_ms": {k: round(v, 3) for k, v in timing.items()}}
        return {"probabilities": probs.tolist(), "model_version": loaded.version,
                "timing_ms": {k: round(v, 3) for k, v in timing.items()}}

    @app.post("/v1/predict", openapi_extra={"requestBody": _PREDICT_BODY},
              summary="Probabilities for raw rows (JSON)")
    async def predict(request: Request):
        """(Small bodies are served by the fast lane, :class:`.fastlane.FastLane`, with the same
        answer function.)"""
        started = time.perf_counter()
        body = await request.body()
        return _json(await predict_answer(body, started, time.perf_counter()))

    async def upload_answer(data: bytes, user_id: str, debug: bool, started: float, t_read: float) -> dict[str, Any]:
        """The /upload answer for an uploaded file's bytes: the route's and the fast lane's."""
        loaded = state.current

        def work():
            check_upload(data, max_rows)
            return score_upload(loaded, data)
        probs, fmt = work() if len(data) <= INLINE_BODY_BYTES else await in_worker(work)
        metrics.add_rows("/upload", len(probs))
        answer: dict[str, Any] = {"code": 200, "dtype": "float32", "data": probs.reshape(len(probs), -1).tolist(),
                                  "user_id": user_id}
        if debug:
            answer["debug"] = {"rows": int(len(probs)), "format": fmt, "model_version": loaded.version,
                               "timing_ms": {"read": round((t_read - started) * 1e3, 3),
                                             "total": round((time.perf_counter() - started) * 1e3, 3)}}
        return answer

    @app.post("/upload", openapi_extra={"requestBody": _UPLOAD_BODY},
              summary="Probabilities for an uploaded file of raw lines (PaddleRec serving answer)")
    async def upload(request: Request, user_id: str = "", debug: bool = False):
        """(A small upload of one file part is served by the fast lane, with the same answer function.)"""
        started = time.perf_counter()
        form = await request.form(max_files=1, max_fields=16)
        try:
            files = [v for v in form.values() if isinstance(v, UploadFile)]
            if not files:
                raise ClientError(400, "no file in the request: send multipart/form-data with a file field "
                                       "(curl -F file=@rows.txt)")
            data = await files[0].read()
        finally:
            await form.close()
        return _json(await upload_answer(data, user_id, debug, started, time.perf_counter()))

    async def upload_lane(body: bytes, scope: dict, started: float, t_read: float) -> dict[str, Any] | None:
        """/upload in the fast lane: one file part and a plain query, else None (the route)."""
        data, query = single_file_part(body, scope["headers"]), upload_query(scope)
        if data is None or query is None:
            return None
        return await upload_answer(data, *query, started, t_read)

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
        return {"model_version": loaded.version, "backend": state.backend, "tasks": predictor.tasks,
                "multi_task": predictor.multi_task, "columns": predictor.columns,
                "dense_columns": predictor.dense_columns, "sparse_columns": predictor.sparse_columns,
                "limits": {"max_rows": max_rows, "max_body_bytes": max_body_bytes},
                "loaded_at": loaded.loaded_at, "manifest": manifest}

    @app.get("/metrics", summary="Prometheus metrics", response_class=PlainTextResponse)
    async def prometheus():
        text = metrics.render(state.current.version) + input_metrics(state.current.predictor) + process_metrics()
        return PlainTextResponse(text,
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
    lanes = {"/v1/predict": lambda body, _scope, started, t_read: predict_answer(body, started, t_read),
             "/upload": upload_lane}
    app.add_middleware(FastLane, handlers=lanes, max_body_bytes=INLINE_BODY_BYTES)  # (added first: innermost)
    app.add_middleware(BodyLimitMiddleware, max_body_bytes=max_body_bytes)
    app.add_middleware(MetricsMiddleware, metrics=metrics, endpoints=endpoints)  # added last: outermost
    return app


# --------------------------------------------------------------------------------------------
# running it
# --------------------------------------------------------------------------------------------

def server_app(cfg: ServeConfig) -> FastAPI:
    """The app of one server process for ``cfg`` (its bundle loaded), with the startup's objects
    frozen out of the garbage collector's reach."""
    app = create_app(cfg.bundle, backend=cfg.backend, max_rows=cfg.max_rows, max_body_bytes=cfg.max_body_bytes,
                     threads=cfg.threads, batch_window_ms=cfg.batch_window_ms)
    # A server process: move everything allocated at startup (libraries, the model) out of the
    # garbage collector's reach, so that full collections stay short and do not stall requests.
    gc.collect()
    gc.freeze()
    return app


def app_from_env() -> FastAPI:
    """App factory for uvicorn's worker processes (``uvicorn --factory ctrlab.serve.app:app_from_env``):
    the ServeConfig comes as one JSON value in ``CONFIG_ENV``, checked like a loaded config."""
    text = os.environ.get(CONFIG_ENV)
    if not text:
        raise RuntimeError(f"set {CONFIG_ENV} to the serve config as JSON, e.g. "
                           f"{json.dumps(to_dict(ServeConfig(bundle='/path/to/bundle')))}")
    return server_app(from_dict(ServeConfig, json.loads(text), "serve"))


def serve(cfg: ServeConfig) -> None:
    """Serve ``cfg.bundle`` on uvicorn until interrupted (``ctrlab serve``).

    The config is checked first (types, choices, ranges: ConfigError) and so is the bundle (its
    manifest and hashes), before any worker starts. ``threads`` defaults to 1 per worker
    (``SERVE_THREADS``); the bundle path is made absolute for the worker processes."""
    cfg = from_dict(ServeConfig, to_dict(cfg), "serve")
    if not cfg.bundle:
        raise ConfigError("serve.bundle: no bundle directory given")
    load_manifest(cfg.bundle)  # a bad bundle stops here, before any worker starts
    cfg = dataclasses.replace(cfg, bundle=os.path.abspath(cfg.bundle),
                              threads=cfg.threads or SERVE_THREADS)
    common = dict(host=cfg.host, port=cfg.port, log_level=cfg.log_level, access_log=cfg.access_log,
                  http="ctrlab.serve.nodelay:NoDelayHTTPProtocol")
    if cfg.workers == 1:
        uvicorn.run(server_app(cfg), **common)
    else:  # uvicorn imports the factory in each worker process, which inherits this environment
        os.environ[CONFIG_ENV] = json.dumps(to_dict(cfg))
        uvicorn.run("ctrlab.serve.app:app_from_env", factory=True, workers=cfg.workers, **common)
