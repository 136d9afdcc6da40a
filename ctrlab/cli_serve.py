"""``ctrlab serve``: the HTTP server (ctrlab.serve.app) on uvicorn.

``add_serve`` adds the subcommand to the ``ctrlab`` parser (see ``ctrlab.cli.COMMANDS``). Thin:
parse arguments, check the bundle, start uvicorn.
"""

from __future__ import annotations

import argparse
import os


def add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "serve", help="serve a bundle over HTTP (JSON /v1/predict, file /upload, /metrics, /admin/reload)",
        description="Serve a bundle over HTTP with uvicorn: POST /v1/predict {\"rows\": [...]} (dicts keyed by "
                    "column or lists in the bundle's column order) -> probabilities; POST /upload (multipart file "
                    "of raw lines in any format `ctrlab predict` reads; PaddleRec serving answer); GET /health, "
                    "/ready, /metadata, /metrics (Prometheus), /docs and /openapi.json; POST /admin/reload "
                    "{\"bundle\": DIR} when CTRLAB_RELOAD_TOKEN is set (Authorization: Bearer TOKEN). Binds to "
                    "127.0.0.1 unless --host says otherwise. Each worker process loads the bundle and keeps its "
                    "own metrics; a reload reaches only the worker that answers it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  ctrlab serve bundles/deepfm\n"
               "  ctrlab serve bundles/deepfm --host 0.0.0.0 --port 8867 --workers 2 --threads 1\n"
               "  curl -s localhost:8867/v1/predict -d '{\"rows\": [{\"I1\": 3, \"C1\": \"05db9164\"}]}'\n"
               "  curl -s -F file=@test.txt 'localhost:8867/upload?user_id=42'")
    p.add_argument("bundle", help="bundle directory (from `ctrlab export`)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8867, help="port (default 8867)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--backend", choices=["onnx", "torch"], default="onnx", help="inference backend (default onnx)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per worker (default: the available cores divided by --workers)")
    p.add_argument("--max-rows", type=int, default=None, help="rows per request (default 50000)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="request body cap in bytes (default 32 MiB)")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs latency)")
    p.add_argument("--log-level", default="info", help="uvicorn log level (default info)")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .export.bundle import load_manifest
    from .runtime import available_cores
    from .serve import app as app_mod

    if args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be 0-65535, got {args.port}")
    for name in ("threads", "max_rows", "max_body_bytes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    load_manifest(args.bundle)  # a bad bundle stops here, before any worker starts
    threads = args.threads or max(1, available_cores() // args.workers)
    # the options travel to worker processes through the environment (uvicorn imports the factory there)
    os.environ[app_mod.ENV_BUNDLE] = os.path.abspath(args.bundle)
    os.environ[app_mod.ENV_BACKEND] = args.backend
    os.environ[app_mod.ENV_THREADS] = str(threads)
    os.environ[app_mod.ENV_MAX_ROWS] = str(args.max_rows or app_mod.DEFAULT_MAX_ROWS)
    os.environ[app_mod.ENV_MAX_BODY] = str(args.max_body_bytes or app_mod.DEFAULT_MAX_BODY_BYTES)
    common = dict(host=args.host, port=args.port, log_level=args.log_level, access_log=args.access_log,
                  http="ctrlab.serve.nodelay:NoDelayHTTPProtocol")
    if args.workers == 1:
        uvicorn.run(app_mod.app_from_env(), **common)
    else:
        uvicorn.run("ctrlab.serve.app:app_from_env", factory=True, workers=args.workers, **common)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ctrlab.cli_serve BUNDLE [options]``: the same command without the ctrlab parser."""
    parser = argparse.ArgumentParser(prog="ctrlab")
    add_serve(parser.add_subparsers(dest="command", required=True))
    import sys

    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args) or 0)


if __name__ == "__main__":
    raise SystemExit(main())
