"""The deployment commands: ``ctrlab export``, ``ctrlab predict``, ``ctrlab bench``, ``ctrlab serve``.

Each ``add_*`` adds one subcommand (see ``ctrlab.cli.main.COMMANDS``); each ``cmd_*`` checks its
flags, calls the library and prints. ``export`` and ``serve`` flags become an
:class:`~ctrlab.config.ExportConfig` / :class:`~ctrlab.config.ServeConfig` (defaults and checks from
the section). The library is imported inside the commands (see main.py).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..config import ExportConfig, ServeConfig
from ..schema import FORMAT_NAMES
from .options import section_from_flags


def _csv_list(text: str, convert=str, what: str = "value") -> list:
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ValueError(f"expected a comma-separated list of {what}s, got {text!r}")
    try:
        return [convert(t) for t in items]
    except ValueError:
        raise ValueError(f"expected a comma-separated list of {what}s, got {text!r}") from None


def _on_off(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("on", "true", "1", "yes"):
        return True
    if lowered in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"--graph-opt takes on/off values, got {text!r}")


# --------------------------------------------------------------------------------------------
# export
# --------------------------------------------------------------------------------------------

def add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export", help="package a trained run as a deployable bundle (pipeline + weights + ONNX)",
        description="Write a bundle directory from one epoch of a training run (default: its best epoch): "
                    "manifest.json (versions, schema, input signature, sha256 of every file, metrics of the "
                    "epoch), pipeline.json (the fitted feature pipeline), config.yaml, model.pt (state_dict) and "
                    "model.onnx (dynamic batch; outputs logits and probabilities). The ONNX graph is checked "
                    "against the torch model on real rows of the store (max |diff| <= 1e-5); nothing is written "
                    "when it fails. The bundle alone scores raw rows: `ctrlab predict BUNDLE FILE`.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  ctrlab export runs/deepfm --out bundles/deepfm\n"
               "  ctrlab export runs/deepfm --epoch 3 --out bundles/deepfm-e3 --force\n"
               "  ctrlab export runs/deepfm --out bundles/deepfm-q --quantize   # + int8 model.int8.onnx")
    p.add_argument("run", help="training run directory (RUN/config.yaml, RUN/checkpoints/epoch_K.pt)")
    p.add_argument("--out", required=True, help="bundle directory to write")
    p.add_argument("--epoch", type=int, help="epoch to export (default: the run's best epoch)")
    p.add_argument("--force", action="store_true", help="replace an existing bundle at --out")
    p.add_argument("--quantize", action="store_true",
                   help="also write model.int8.onnx (dynamic int8 quantization) and record its AUC change on the "
                        "validation split in the manifest")
    p.add_argument("--golden-rows", type=int, help="rows of the store's valid (else test) split for the parity "
                                                   f"check (default {ExportConfig.golden_rows})")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..export.bundle import export_bundle

    cfg = section_from_flags(ExportConfig, args, ["epoch", "force", "quantize", "golden_rows"])
    manifest = export_bundle(args.run, args.out, epoch=cfg.epoch, golden_rows=cfg.golden_rows,
                             quantize=cfg.quantize, force=cfg.force)
    metrics = manifest["metrics"]
    shown = ", ".join(f"{k} {metrics[k]:.5f}" for k in ("valid_auc", "valid_logloss", "test_auc", "test_logloss")
                      if isinstance(metrics.get(k), float))
    print(f"exported {manifest['model']['name']} epoch {metrics['epoch']} -> {args.out}"
          + (f" ({shown})" if shown else ""))
    for name, entry in manifest["files"].items():
        print(f"  {name:<16} {entry['bytes']:>12,} bytes  sha256 {entry['sha256'][:16]}...")
    return 0


# --------------------------------------------------------------------------------------------
# predict
# --------------------------------------------------------------------------------------------

def add_predict(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "predict", help="score raw data files with a bundle (one probability per row)",
        description="Stream raw rows of any format prepare reads (Criteo TSV, the label-less Kaggle test.txt, "
                    "Kaggle CSV with Id (with or without Label), criteo_csv, PaddleRec slot, generic CSV/TSV; "
                    "plain or .gz; labelled or not) through the bundle's feature pipeline and model, and write one "
                    "output line per input line (after a header line), in input order, to a TSV file: line k of the "
                    "output belongs to data line k of the input. Columns: [id] probability [skipped]; a multi-task "
                    "bundle writes one probability per task, in task order ([id] probability.click "
                    "probability.conversion [skipped]; --header names them). Each file's "
                    "format is detected from its first line (or --format) and its feature columns must equal the "
                    "bundle's inputs. With labels, the exact AUC and logloss over the scored rows are printed (per "
                    "task for a multi-task bundle). Bad "
                    "lines (wrong field count, non-numeric or non-finite numbers such as nan, inf or 1e400, invalid "
                    "UTF-8, a stray carriage return) stop the run with file:line and field (default) or, with "
                    "--bad-lines skip, keep their place in the output with an empty probability and the reason in "
                    "the 'skipped' column, and are counted and reported. A corrupt or truncated .gz always stops "
                    "the run. A warning names the fields whose missing or OOV rate is far above what the bundle "
                    "saw in training (the wrong bundle for the data?).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  ctrlab predict bundles/deepfm test.txt --out scores.tsv\n"
               "  ctrlab predict bundles/deepfm test.csv --out submission.tsv --id-column --header\n"
               "  ctrlab predict bundles/deepfm 'logs/part-*.gz' --out scores.tsv --bad-lines skip --backend torch")
    p.add_argument("bundle", help="bundle directory (from `ctrlab export`)")
    p.add_argument("inputs", nargs="+", help="input files, globs or directories")
    p.add_argument("--out", required=True, help="output TSV: one line per input line: [id] probability [skipped]; "
                                                "written whole or not at all")
    p.add_argument("--format", default="auto", help=f"input format (default: detected per file): {', '.join(FORMAT_NAMES)}")
    p.add_argument("--bad-lines", choices=["error", "skip"], default="error",
                   help="stop at the first bad line (default), or skip, count and report bad lines; a "
                        "skipped line keeps its place in the output: empty probability, reason in a third "
                        "column 'skipped' (empty on scored lines)")
    p.add_argument("--backend", choices=["onnx", "torch"], default="onnx", help="inference backend (default onnx)")
    p.add_argument("--variant", choices=["fp32", "int8"], default="fp32",
                   help="model variant: fp32 (default) or int8 (the bundle's quantized graph, from export "
                        "--quantize; onnx backend)")
    p.add_argument("--id-column", action="store_true",
                   help="write an id before each probability: the input's Id column (Kaggle CSV; empty on a "
                        "skipped line), or else the 1-based line number in the input file (FILE:LINE when "
                        "there are several input files)")
    p.add_argument("--header", action="store_true",
                   help="write a header line (id, probability or probability.<task> per task, skipped)")
    p.add_argument("--batch-size", type=int, default=None, help="rows per inference call (default 4096)")
    p.add_argument("--threads", type=int, default=None,
                   help="inference threads (default: the available cores for onnx, one less for torch)")
    p.add_argument("--json", action="store_true",
                   help="print a JSON summary (rows, rows/s, metrics, skipped) at the end")
    p.set_defaults(func=cmd_predict)


def cmd_predict(args: argparse.Namespace) -> int:
    from ..inference import DEFAULT_BATCH_ROWS, predict_file

    batch = args.batch_size if args.batch_size is not None else DEFAULT_BATCH_ROWS
    if batch < 1:
        raise ValueError(f"--batch-size must be >= 1, got {batch}")
    if args.threads is not None and args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    result = predict_file(args.bundle, args.inputs, args.out, fmt=args.format, bad_lines=args.bad_lines,
                          backend=args.backend, id_column=args.id_column, header=args.header, batch_size=batch,
                          threads=args.threads, variant=args.variant)
    if args.json:
        print(json.dumps({"rows": result.rows, "seconds": round(result.seconds, 3),
                          "rows_per_s": round(result.rows_per_second, 1), "metrics": result.metrics,
                          "skipped": result.skipped.to_dict(), "formats": result.formats, "out": result.out}))
    return 0


# --------------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------------

def add_bench(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "bench", help="inference benchmark of a bundle: rows/s, latency percentiles, stage split, memory",
        description="Measure a bundle on raw rows of a data file for every combination of backend, onnxruntime "
                    "execution provider, graph optimization, model variant, intra-op threads and batch size, "
                    "one after another in this process: rows/s, latency p50/p90/p99 per request, the time split "
                    "into preprocessing (parse + pipeline.transform), inference and postprocessing, peak RSS "
                    "(and GPU memory for torch on CUDA), and the onnx/torch ratio per batch size. Prints a table; "
                    "--json writes the full report.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  ctrlab bench bundles/deepfm --data test.txt\n"
               "  ctrlab bench bundles/deepfm --data test.txt --backends torch,onnx --threads 1,2 "
               "--batch-sizes 1,5,256,2048 --json bench.json\n"
               "  ctrlab bench bundles/deepfm-q --data test.txt --backends onnx --variants fp32,int8 "
               "--graph-opt on,off\n"
               "  ctrlab bench bundles/deepfm --data test.txt --providers CUDAExecutionProvider,CPUExecutionProvider")
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--data", required=True, help="raw data file to take rows from (any format predict reads)")
    p.add_argument("--format", default="auto", help="format of --data (default: detected)")
    p.add_argument("--backends", default="torch,onnx", help="comma list of torch, onnx (default torch,onnx)")
    p.add_argument("--threads", default="1", help="comma list of intra-op thread counts (default 1)")
    p.add_argument("--batch-sizes", default="1,5,256,2048",
                   help="comma list of rows per request (default 1,5,256,2048)")
    p.add_argument("--graph-opt", default="on", help="onnxruntime graph optimization: on, off or on,off (default on)")
    p.add_argument("--providers", default="CPUExecutionProvider",
                   help="comma list of onnxruntime execution providers, each measured on its own (default "
                        "CPUExecutionProvider; e.g. CUDAExecutionProvider, TensorrtExecutionProvider when installed)")
    p.add_argument("--variants", default="fp32,int8", help="onnx model variants: fp32, int8 (when the bundle has "
                                                           "model.int8.onnx; default fp32,int8)")
    p.add_argument("--seconds", type=float, default=2.0, help="time budget per combination (default 2)")
    p.add_argument("--repeats", type=int, default=100_000, help="at most this many requests per combination")
    p.add_argument("--rows", type=int, default=20_000, help="raw rows to load from --data (default 20000)")
    p.add_argument("--input", choices=["dicts", "table"], default="dicts",
                   help="request form: rows as dicts (a server's JSON; default) or Arrow table slices")
    p.add_argument("--device", default="cpu", help="torch device: cpu (default) or cuda")
    p.add_argument("--json", dest="json_out", metavar="OUT", help="write the full report as JSON to OUT")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from ..inference.bench import BenchOptions, format_report, run_bench

    if args.seconds <= 0 or args.repeats < 1 or args.rows < 1:
        raise ValueError("--seconds must be > 0, --repeats and --rows >= 1")
    opts = BenchOptions(
        backends=_csv_list(args.backends, what="backend"),
        threads=_csv_list(args.threads, int, "thread count"),
        batch_sizes=_csv_list(args.batch_sizes, int, "batch size"),
        graph_optimization=_csv_list(args.graph_opt, _on_off, "on/off value"),
        providers=_csv_list(args.providers, what="provider"),
        variants=_csv_list(args.variants, what="variant"),
        seconds=args.seconds, max_repeats=args.repeats, min_repeats=min(5, args.repeats), rows=args.rows,
        input_form=args.input, device=args.device, format=args.format)
    print("running (one line per combination):")
    report = run_bench(args.bundle, args.data, opts)
    print(format_report(report))
    if args.json_out:
        out = Path(args.json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        with open(out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=1)
        print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------------------------
# serve
# --------------------------------------------------------------------------------------------

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
    p.add_argument("--host", help=f"address to bind (default {ServeConfig.host}: this machine only)")
    p.add_argument("--port", type=int, help=f"port (default {ServeConfig.port})")
    p.add_argument("--workers", type=int, help=f"worker processes (default {ServeConfig.workers})")
    p.add_argument("--backend", choices=["onnx", "torch"], help=f"inference backend (default {ServeConfig.backend})")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads per worker (default 1: concurrent requests are scored in parallel; more threads help only a few large requests at a time)")
    p.add_argument("--max-rows", type=int, help=f"rows per request (default {ServeConfig.max_rows})")
    p.add_argument("--max-body-bytes", type=int, default=None, help="request body cap in bytes (default 32 MiB)")
    p.add_argument("--batch-window-ms", type=float, default=None,
                   help="score /v1/predict requests that arrive within this many ms of each other in one model "
                        "call, each still answered with its own scores and errors (default 0: off)")
    p.add_argument("--access-log", action="store_true", help="log every request (off by default: it costs latency)")
    p.add_argument("--log-level", help=f"uvicorn log level (default {ServeConfig.log_level})")
    p.set_defaults(func=cmd_serve)


def cmd_serve(args: argparse.Namespace) -> int:
    from ..serve.app import serve

    serve(section_from_flags(ServeConfig, args, ["bundle", "host", "port", "workers", "backend", "threads",
                                                 "max_rows", "max_body_bytes", "batch_window_ms", "access_log",
                                                 "log_level"]))
    return 0
