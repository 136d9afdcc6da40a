"""``ctrlab demo``: the whole chain on generated data, as library calls (the README's first command).

synthetic rows (+ held-out rows) -> prepare -> train -> export -> predict the held-out raw rows ->
serve the bundle on a loopback port, score three raw rows over HTTP, stop. The library is
imported inside the command (see main.py).
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path
from typing import Any

from ..config import load_run_config

HELDOUT_ROWS = 20_000  # raw rows that prepare never sees, scored by predict at step 5
HTTP_ROWS = 3  # raw rows scored over HTTP at step 6


def add_demo(sub: argparse._SubParsersAction) -> None:
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
    from ..data.ledger import record_created
    from ..data.prepare import format_summary, prepare
    from ..data.synth import split_off_tail, write_synthetic
    from ..export.bundle import export_bundle
    from ..inference import predict_file
    from ..train.run import run_training
    from ..train.store_config import prepare_options

    work = Path(args.dir)
    raw = work / "synth.tsv"
    steps = 5 if args.no_serve else 6
    heldout = work / "heldout.tsv"
    print(f"[1/{steps}] synthetic data: {args.rows:,} Criteo-shaped rows -> {raw} (+ {HELDOUT_ROWS:,} held out -> "
          f"{heldout})")
    # one generated stream (the planted model depends on the seed), cut into training data and
    # held-out rows that prepare never sees
    write_synthetic(raw, args.rows + HELDOUT_ROWS, seed=0, progress=not args.quiet)
    split_off_tail(raw, heldout, HELDOUT_ROWS)
    record_created(work, [raw, heldout], "synthetic")
    store_dir = work / "store"
    run_dir = work / f"run_{args.model}"
    shutil.rmtree(run_dir, ignore_errors=True)  # the demo always trains from scratch
    cfg = load_run_config(None, args.model, {"data.train": [str(raw)], "data.store": str(store_dir),
                                             "run_dir": str(run_dir), "train.epochs": args.epochs})
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
        print(f"[6/{steps}] serve {bundle} on 127.0.0.1, score {HTTP_ROWS} raw rows over HTTP, stop")
        serve_and_score(bundle, first_raw_rows(heldout, HTTP_ROWS))
    print(f"demo done: {args.model} test AUC {summary['test_auc']:.4f}, test logloss {summary['test_logloss']:.4f} "
          f"(store {store_dir}, run {run_dir}, bundle {bundle})")
    return 0


def first_raw_rows(path: Path, count: int) -> list[list[Any]]:
    """The first ``count`` rows of a labelled Criteo TSV file as request rows: the 39 raw feature
    values in column order (label dropped), ``None`` where a value is missing."""
    with open(path, encoding="utf-8") as fh:
        lines = [next(fh).rstrip("\n").split("\t") for _ in range(count)]
    return [[None if v == "" else v for v in line[1:]] for line in lines]


def serve_and_score(bundle: Path, rows: list[list[Any]]) -> None:
    """Start `ctrlab serve` on a free loopback port, POST the rows, print the answer, stop."""
    from ..serve.client import predict_rows
    from ..serve.process import start_server, stop_server

    proc, base = start_server(bundle)
    try:
        answer = predict_rows(base, rows)
        print(f"POST {base}/v1/predict ({len(rows)} raw rows) -> probabilities "
              f"{[round(p, 4) for p in answer['probabilities']]}, model {answer.get('model_version')}")
    finally:
        stop_server(proc)
    print("server stopped")
