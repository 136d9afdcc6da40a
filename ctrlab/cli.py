"""The ``ctrlab`` command line: parse arguments, load the config, call the library.

Run ``ctrlab --help`` or ``ctrlab COMMAND --help``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

from . import __version__

EPILOG = """examples:
  ctrlab data synth --rows 1000000 --out data/synth.tsv      # Criteo-shaped demo data
  ctrlab prepare data/synth.tsv --out runs/synth/store         # parse, fit, encode, split 8:1:1
  ctrlab prepare -c configs/frappe_deepfm.yaml                        # everything from a config file
  ctrlab info runs/synth/store                                 # the store's summary again
  ctrlab train --data runs/synth/store --model deepfm --out runs/deepfm
  ctrlab export runs/deepfm --out bundles/deepfm               # manifest + pipeline + weights + ONNX
  ctrlab predict bundles/deepfm test.txt --out scores.tsv      # raw rows in, probabilities out
  ctrlab models                                                # the registered CTR models
  ctrlab demo                                                  # the whole chain on a demo dataset
"""


# --------------------------------------------------------------------------------------------
# prepare / info
# --------------------------------------------------------------------------------------------

def _add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="raw logs -> fitted feature pipeline + encoded store",
        description="Parse raw CTR logs (Criteo TSV, Kaggle CSV, PaddleRec slot, generic CSV/TSV; plain or "
                    ".gz; files, globs or directories), fit the feature pipeline on the training split only, "
                    "and write the encoded store (memory-mapped arrays per split) with its metadata.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  ctrlab prepare train.txt --format criteo --out runs/criteo\n"
               "  ctrlab prepare -c configs/frappe_deepfm.yaml --set features.categorical.min_count=2\n"
               "  ctrlab prepare 'logs/part-*.gz' --bad-lines skip --out runs/logs")
    p.add_argument("inputs", nargs="*", help="training data: files, globs or directories (or data.train in the config)")
    p.add_argument("-c", "--config", help="YAML config with data/features sections")
    p.add_argument("--out", help="store directory to write (or data.store in the config)")
    p.add_argument("--format", help="input format (default: detected): criteo, criteo_test, criteo_kaggle_csv, "
                                    "criteo_csv, slot, csv, tsv")
    p.add_argument("--valid", action="append", default=None, help="explicit validation file(s)")
    p.add_argument("--test", action="append", default=None, help="explicit test file(s)")
    p.add_argument("--split", help="train:valid:test ratios for a random split (default 8:1:1)")
    p.add_argument("--seed", type=int, help="seed of the random split (default 2024)")
    from .config import FeaturesConfig  # the one set of feature defaults

    defaults = FeaturesConfig()
    p.add_argument("--min-count", type=int, help="vocabulary min_count for categorical columns (default "
                                                 f"{defaults.categorical.min_count})")
    p.add_argument("--numeric", help="transform for numeric columns: log1p_standardize, log1p, minmax, passthrough, "
                                     f"log_square_bucket (default {defaults.numeric.transform})")
    p.add_argument("--bad-lines", choices=["error", "skip"], help="stop at the first bad line (default) or skip "
                                                                  "and count bad lines")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)


def _prepare_config(args: argparse.Namespace):
    from .config import load_config

    overrides = list(args.set)
    if args.inputs:
        overrides.append(f"data.train={_yaml_list(args.inputs)}")
    if args.valid:
        overrides.append(f"data.valid={_yaml_list(args.valid)}")
    if args.test:
        overrides.append(f"data.test={_yaml_list(args.test)}")
    if args.out:
        overrides.append(f"data.store={_yaml_str(args.out)}")
    if args.format:
        overrides.append(f"data.format={args.format}")
    if args.split:
        parts = args.split.replace(",", ":").split(":")
        overrides.append(f"data.split=[{','.join(parts)}]")
    if args.seed is not None:
        overrides.append(f"data.seed={args.seed}")
    if args.min_count is not None:
        overrides.append(f"features.categorical.min_count={args.min_count}")
    if args.numeric:
        overrides.append(f"features.numeric.transform={args.numeric}")
    if args.bad_lines:
        overrides.append(f"data.bad_lines={args.bad_lines}")
    return load_config(args.config, overrides)


def _yaml_str(text: str) -> str:
    import json

    return json.dumps(str(text))


def _yaml_list(items: list[str]) -> str:
    return "[" + ",".join(_yaml_str(i) for i in items) + "]"


def prepare_options(cfg) -> Any:
    """Config -> PrepareOptions."""
    from .config import ConfigError, column_overrides
    from .data.prepare import PrepareOptions, file_schema
    from .data.readers import resolve_inputs

    if not cfg.data.train:
        raise ConfigError("no training data: give INPUT files or set data.train in the config")
    if len(cfg.data.split) != 3 or any(r < 0 for r in cfg.data.split) or cfg.data.split[0] <= 0:
        raise ConfigError(f"data.split: expected three ratios train:valid:test with train > 0, got {cfg.data.split}")
    first = resolve_inputs(cfg.data.train)[0]
    _, schema = file_schema(first, cfg.data.format, cfg.data.schema)
    return PrepareOptions(
        train=cfg.data.train, valid=cfg.data.valid, test=cfg.data.test, format=cfg.data.format,
        schema=cfg.data.schema, split=tuple(cfg.data.split), seed=cfg.data.seed, bad_lines=cfg.data.bad_lines,
        categorical=cfg.features.categorical, numeric=cfg.features.numeric,
        columns=column_overrides(cfg.features, list(schema.dense), list(schema.sparse)),
    )


def cmd_prepare(args: argparse.Namespace) -> int:
    from .config import ConfigError, dump_config
    from .data.ledger import LEDGER_NAME, record_created
    from .data.prepare import format_summary, prepare
    from .fileio import disk_errors

    cfg = _prepare_config(args)
    if not cfg.data.store:
        raise ConfigError("where should the store go? pass --out DIR or set data.store in the config")
    opts = prepare_options(cfg)
    out = Path(cfg.data.store)
    # config.yaml goes in before the swap: the store and the config that made it arrive together
    store = prepare(opts, out, progress=not args.quiet,
                    before_swap=lambda build: dump_config(cfg, build / "config.yaml"))
    with disk_errors(out.parent / LEDGER_NAME):
        record_created(out.parent, [out], "store")
    print(format_summary(store.meta))
    print(f"wrote {out}")
    return 0


def _add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print the summary of a prepared store",
                       description="Print the metadata summary of a store written by `ctrlab prepare`.")
    p.add_argument("store", help="store directory")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from .data.prepare import format_summary
    from .data.store import Store

    print(format_summary(Store(args.store).meta))
    return 0


# --------------------------------------------------------------------------------------------
# data synth / download / clean
# --------------------------------------------------------------------------------------------

def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="synthetic data, dataset downloads, cleaning up",
                       description="Make synthetic Criteo-shaped data, download public CTR datasets, or remove "
                                   "what ctrlab created.")
    dsub = p.add_subparsers(dest="data_command", metavar="{synth,download,clean}")
    dsub.required = True

    s = dsub.add_parser("synth", help="write synthetic Criteo-shaped rows",
                        description="Write Criteo-layout rows (label, 13 counts, 26 hex categories; tab separated) "
                                    "with Zipf categories, heavy-tailed counts, missing values and labels from a "
                                    "planted model with feature interactions. .gz output when FILE ends in .gz.")
    s.add_argument("--rows", type=int, required=True, help="number of rows")
    s.add_argument("--out", required=True, help="output file (.tsv, .txt or .gz)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--no-label", action="store_true", help="the Kaggle test.txt layout: 39 columns, no label")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synth)

    d = dsub.add_parser("download", help="download a public dataset (resumable, checksummed)",
                        description="Download and extract a public CTR dataset: criteo-kaggle (the Criteo Display "
                                    "Advertising Challenge, ~4.3 GB) or criteo-slot (PaddleRec's slot files). "
                                    "Interrupted downloads resume.")
    d.add_argument("name", help="criteo-kaggle or criteo-slot")
    d.add_argument("--to", required=True, help="target directory")
    d.add_argument("--mirror", help="base URL of a mirror (also env CTRLAB_DATA_MIRROR)")
    d.add_argument("--sha256", help="expected sha256 of the archive (FILE=HASH,... for several files)")
    d.add_argument("--no-extract", action="store_true", help="keep the archive, do not extract it")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=cmd_download)

    c = dsub.add_parser("clean", help="delete downloads, extracted files and stores ctrlab created in DIR",
                        description="List what ctrlab created in DIR (downloads, extracted files, stores, synthetic "
                                    "data), ask, and delete it. Files ctrlab did not create are never touched.")
    c.add_argument("directory")
    c.add_argument("--yes", action="store_true", help="do not ask")
    c.set_defaults(func=cmd_clean)


def cmd_synth(args: argparse.Namespace) -> int:
    from .data.ledger import record_created
    from .data.synth import write_synthetic

    if args.rows < 0:
        raise ValueError(f"--rows must be >= 0, got {args.rows}")
    out = Path(args.out)
    res = write_synthetic(out, args.rows, seed=args.seed, progress=not args.quiet, label=not args.no_label)
    record_created(out.parent, [out], "synthetic")
    print(f"wrote {res['rows']:,} rows to {out} ({res['bytes']:,} bytes, positive rate {res['positive_rate']:.4f}, "
          f"{res['rows_per_s']:,.0f} rows/s)")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from .data.download import download

    paths = download(args.name, args.to, base_url=args.mirror, sha256=args.sha256, extract=not args.no_extract,
                     progress=not args.quiet)
    for p in paths:
        print(p)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from .data.ledger import clean

    clean(args.directory, yes=args.yes)
    return 0


# --------------------------------------------------------------------------------------------
# train / eval
# --------------------------------------------------------------------------------------------

def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train", help="train a model on a prepared store (or raw data in the config)",
        description="Train a CTR model. With -c, everything comes from the config (native sections, or a "
                    "PaddleRec-style file with runner:/hyper_parameters:); with --data/--model, the model's "
                    "ready config is the base. Checkpoints after every epoch; an interrupted run resumes. "
                    "At the end the best epoch (by validation metric) is evaluated on the test split.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  ctrlab train --data runs/synth/store --model deepfm --out runs/deepfm\n"
               "  ctrlab train -c configs/frappe_deepfm.yaml --set train.lr=1e-4\n"
               "  ctrlab train -m paddlerec_config.yaml\n"
               "  ctrlab train -c config.yaml --nproc 2          (2 processes on this machine)\n"
               "  torchrun --nnodes 2 --nproc_per_node 4 --rdzv_backend c10d --rdzv_endpoint HOST:29400 \\\n"
               "      -m ctrlab train -c config.yaml            (several machines; run on each)\n"
               "train.batch_size is the global batch (all processes together).")
    p.add_argument("-c", "-m", "--config", dest="config", help="YAML config (native or PaddleRec style)")
    p.add_argument("--data", help="prepared store directory (data.store)")
    p.add_argument("--model", help="model name (model.name); see `ctrlab models`")
    p.add_argument("--out", help="run directory (run_dir)")
    p.add_argument("--epochs", type=int, help="train.epochs")
    p.add_argument("--device", help="cpu (default), cuda, cuda:N")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--no-resume", action="store_true", help="start over even if RUN_DIR has checkpoints")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--nproc", type=int, metavar="N",
                   help="train with N processes on this machine (re-launches itself with torchrun)")
    p.set_defaults(func=cmd_train)


def _run_config(args: argparse.Namespace):
    """Config for train/eval: file (native or PaddleRec), model base config, flags, --set."""
    from .config import load_config, load_yaml
    from .config import base_config_for, is_paddlerec_config, paddlerec_to_native

    overrides = list(getattr(args, "set", []) or [])
    data: dict[str, Any] = {}
    if args.config:
        raw = load_yaml(args.config)
        if is_paddlerec_config(raw):
            raw, notes = paddlerec_to_native(raw, Path(args.config).parent)
            for note in notes:
                print(f"note: {note}", file=sys.stderr)
        data = raw
    model = getattr(args, "model", None) or (data.get("model") or {}).get("name")
    if model and not args.config:
        data = base_config_for(model)
    if getattr(args, "model", None):
        overrides.append(f"model.name={args.model}")
    if getattr(args, "data", None):
        overrides.append(f"data.store={_yaml_str(args.data)}")
    out = getattr(args, "out", None) or getattr(args, "run", None)
    if out:
        overrides.append(f"run_dir={_yaml_str(out)}")
    if getattr(args, "epochs", None) is not None and args.command == "train":
        overrides.append(f"train.epochs={args.epochs}")
    if getattr(args, "device", None):
        overrides.append(f"train.device={args.device}")
    return load_config(None, overrides, base=data)


def cmd_train(args: argparse.Namespace) -> int:
    from .train.run import check_run_config, run_training

    cfg = _run_config(args)
    check_run_config(cfg)  # before any data is read (--nproc prepares the store first)
    if args.nproc is not None:
        from .train.distributed import env_world, launch_local

        if args.nproc < 1:
            raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
        if args.nproc > 1 and env_world() is None:  # not already one of torchrun's workers
            from .train.run import ensure_store

            # the store is prepared once here, not raced by every worker
            ensure_store(cfg, progress=not args.quiet)
            return launch_local(args.nproc, args.argv)
    run_training(cfg, resume=not args.no_resume, progress=not args.quiet)
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval", help="evaluate saved epochs of a run (exact AUC and logloss)",
        description="Evaluate every saved epoch in a range (PaddleRec's infer_start_epoch/infer_end_epoch) on a "
                    "split of the store, with AUC and logloss computed exactly over all rows.")
    p.add_argument("run", nargs="?", help="run directory (or run_dir in the config)")
    p.add_argument("-c", "-m", "--config", dest="config", help="the run's config (default: RUN/config.yaml)")
    p.add_argument("--epochs", help="START:END (inclusive) or N; default all saved epochs")
    p.add_argument("--split", choices=["train", "valid", "test"], help="split to evaluate (default test)")
    p.add_argument("--device", help="cpu (default), cuda")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args: argparse.Namespace) -> int:
    import json

    from .train.run import run_eval

    if not args.config and args.run:
        args.config = str(Path(args.run) / "config.yaml")
    if args.epochs:
        args.set.append(f"eval.epochs={_yaml_str(args.epochs)}")
    if args.split:
        args.set.append(f"eval.split={args.split}")
    cfg = _run_config(args)
    results = run_eval(cfg)
    if args.json:
        print(json.dumps(results))
    return 0


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

def _add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models, or show one",
                       description="List the registered CTR models with their hyperparameters, defaults and "
                                   "papers; `ctrlab models NAME` shows one in detail.")
    p.add_argument("name", nargs="?", help="a model name, e.g. deepfm")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from .models import format_model_detail, format_model_table

    print(format_model_detail(args.name) if args.name else format_model_table())
    return 0


# --------------------------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------------------------

def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole chain on a generated demo dataset",
                       description="Generate a synthetic Criteo-shaped dataset, prepare it (log-square bucketized "
                                   "counts, 8:1:1 split), train DeepFM, export a bundle, predict on held-out raw "
                                   "rows, then start the HTTP server, score a few rows over HTTP and stop it.")
    p.add_argument("--rows", type=int, default=300_000, help="synthetic rows (default 300000)")
    p.add_argument("--dir", default="demo", help="working directory (default ./demo)")
    p.add_argument("--model", default="deepfm", help="model to train (default deepfm)")
    p.add_argument("--epochs", type=int, default=2, help="training epochs (default 2)")
    p.add_argument("--no-serve", action="store_true", help="skip the HTTP server step")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    import shutil

    from .config import load_config
    from .config import base_config_for
    from .data.ledger import record_created
    from .data.prepare import format_summary, prepare
    from .data.synth import write_synthetic
    from .export.bundle import export_bundle
    from .inference import predict_file
    from .train.run import run_training

    work = Path(args.dir)
    raw = work / "synth.tsv"
    steps = 5 if args.no_serve else 6
    heldout = work / "heldout.tsv"
    heldout_rows = 20_000
    print(f"[1/{steps}] synthetic data: {args.rows:,} Criteo-shaped rows -> {raw} (+ {heldout_rows:,} held out -> "
          f"{heldout})")
    # one generated stream (the planted model depends on the seed), cut into training data and
    # held-out rows that prepare never sees
    write_synthetic(raw, args.rows + heldout_rows, seed=0, progress=not args.quiet)
    _split_off_tail(raw, heldout, heldout_rows)
    record_created(work, [raw, heldout], "synthetic")
    store_dir = work / "store"
    run_dir = work / f"run_{args.model}"
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo always trains from scratch
    cfg = load_config(None, [f"data.train=[{_yaml_str(raw)}]", f"data.store={_yaml_str(store_dir)}",
                             f"run_dir={_yaml_str(run_dir)}", f"train.epochs={args.epochs}"],
                      base=base_config_for(args.model))
    print(f"[2/{steps}] prepare -> {store_dir}")
    store = prepare(prepare_options(cfg), store_dir, progress=not args.quiet)
    record_created(work, [store_dir], "store")
    print(format_summary(store.meta))
    print(f"[3/{steps}] train {args.model} -> {run_dir}")
    summary = run_training(cfg, resume=False, progress=not args.quiet)
    record_created(work, [run_dir], "store")
    bundle = work / f"bundle_{args.model}"
    print(f"[4/{steps}] export -> {bundle}")
    export_bundle(run_dir, bundle, force=True)
    record_created(work, [bundle], "store")
    scores = work / "heldout_scores.tsv"
    print(f"[5/{steps}] predict {heldout} (raw rows) -> {scores}")
    result = predict_file(bundle, [heldout], scores)
    record_created(work, [scores], "synthetic")
    if result.metrics:
        print(f"held-out rows {result.rows:,}: AUC {result.metrics['auc']:.4f}, logloss "
              f"{result.metrics['logloss']:.4f} ({result.rows_per_second:,.0f} rows/s)")
    if not args.no_serve:
        print(f"[6/{steps}] serve {bundle} on 127.0.0.1, score 3 raw rows over HTTP, stop")
        _demo_serve(bundle, heldout)
    print(f"demo done: {args.model} test AUC {summary['test_auc']:.4f}, test logloss {summary['test_logloss']:.4f} "
          f"(store {store_dir}, run {run_dir}, bundle {bundle})")
    return 0


def _split_off_tail(path: Path, tail_path: Path, tail_rows: int) -> None:
    """Move the last ``tail_rows`` lines of a text file into another file."""
    with open(path, "rb") as fh:
        lines = fh.readlines()
    with open(tail_path, "wb") as fh:
        fh.writelines(lines[-tail_rows:])
    with open(path, "wb") as fh:
        fh.writelines(lines[:-tail_rows])


def _demo_serve(bundle: Path, rows_file: Path) -> None:
    """Start `ctrlab serve` on a free loopback port, POST three raw rows, print, stop."""
    import json
    import urllib.request

    from .serve.process import start_server, stop_server

    proc, base = start_server(bundle)
    try:
        with open(rows_file, encoding="utf-8") as fh:
            lines = [next(fh).rstrip("\n").split("\t") for _ in range(3)]
        rows = [[None if v == "" else v for v in line[1:]] for line in lines]  # raw values, label dropped
        request = urllib.request.Request(base + "/v1/predict", data=json.dumps({"rows": rows}).encode(),
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10) as resp:
            answer = json.loads(resp.read())
        print(f"POST {base}/v1/predict (3 raw rows) -> probabilities "
              f"{[round(p, 4) for p in answer['probabilities']]}, model {answer.get('model_version')}")
    finally:
        stop_server(proc)
    print("server stopped")


# --------------------------------------------------------------------------------------------

from .cli_deploy import add_bench, add_export, add_predict  # noqa: E402  (their imports are lazy)
from .cli_experiments import add_compare, add_plot, add_report, add_sweep, add_tune  # noqa: E402
from .cli_serve import add_serve  # noqa: E402

COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    _add_prepare, _add_info, _add_train, _add_eval, add_export, add_predict, add_bench, add_serve, add_compare,
    add_sweep, add_tune,
    add_plot, add_report, _add_data, _add_models, _add_demo,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ctrlab", description="ctrlab: click-through-rate prediction toolkit.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"ctrlab {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # `train --nproc` re-launches itself with these
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, RuntimeError, OSError) as exc:
        if args.debug:
            raise
        print(f"ctrlab {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
