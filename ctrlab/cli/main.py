"""The ``ctrlab`` command line: the command table, the parser, and errors -> exit codes.

Run ``ctrlab --help`` or ``ctrlab COMMAND --help``. Each command family lives in its own module
(:mod:`.data`, :mod:`.train`, :mod:`.deploy`, :mod:`.experiments`, :mod:`.demo`) and only parses
flags, builds a config and calls the library.

Imports: the command modules import :mod:`ctrlab.config` (the parser shows its defaults) at module
level, and each command's library code inside that command: building the parser then loads no
torch, fastapi or matplotlib and none of the data, training, export or serving code, which keeps
``ctrlab --help`` as fast as it was. These are the only function-local imports of the command layer.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable

from .. import __version__
from . import data, demo, deploy, experiments, train

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

#: Every subcommand, in the order ``ctrlab --help`` lists them.
COMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [
    data.add_prepare, data.add_info, train.add_train, train.add_eval,
    deploy.add_export, deploy.add_predict, deploy.add_bench, deploy.add_serve,
    experiments.add_compare, experiments.add_sweep, experiments.add_tune, experiments.add_plot, experiments.add_report,
    data.add_data, train.add_models, demo.add_demo,
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
    """Run one command; returns its exit code: 0, 2 for an error (a one-line message on stderr,
    the traceback with ``--debug``), 130 when interrupted. Bad flags exit 2 through argparse."""
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
