"""The training commands: ``ctrlab train``, ``ctrlab eval``, ``ctrlab models``.

Each ``add_*`` adds one subcommand (see ``ctrlab.cli.main.COMMANDS``); each ``cmd_*`` builds the
run config (:func:`ctrlab.config.load_run_config`: a file, native or PaddleRec, or the model's
ready config; then ``--set``; then the flags) and calls :mod:`ctrlab.train.run` (torch: imported
inside the commands, see main.py).
"""

from __future__ import annotations

import argparse
import json

from ..config import Config, ConfigError, load_run_config
from ..train.rundir import RunDir
from .options import merge_overrides

# --------------------------------------------------------------------------------------------
# train / eval
# --------------------------------------------------------------------------------------------


def add_train(sub: argparse._SubParsersAction) -> None:
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
               "  ctrlab train --data runs/daily --partitions day01 --model deepfm --out runs/day01\n"
               "  ctrlab train --continue runs/day01 --data runs/daily --partitions day02 --out runs/day02\n"
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
    p.add_argument("--partitions", metavar="A,B,...",
                   help="a partitioned store: the partitions to train on, in order (data.partitions; default: all but "
                        "the valid/test ones; with --continue: those after the parent's)")
    p.add_argument("--valid-partition", metavar="NAME", help="a partitioned store: validate on this partition")
    p.add_argument("--test-partition", metavar="NAME", help="a partitioned store: test on this partition")
    p.add_argument("--continue", dest="continue_from", metavar="RUN",
                   help="continual training: warm-start from RUN's chosen epoch, its tables grown to the store's "
                        "current vocabularies, after scoring the new partitions with it (progressive validation); "
                        "the config is RUN's (model and train settings) unless -c is given; needs --out")
    p.set_defaults(func=cmd_train)


def train_config(args: argparse.Namespace) -> Config:
    """The config file or the model's ready config, then ``--set``, then the flags."""
    flags = {"data.store": args.data, "run_dir": args.out, "train.epochs": args.epochs,
             "train.device": args.device}
    continue_from = getattr(args, "continue_from", None)
    if not continue_from:
        flags.update(_partition_flags(args))
        return load_run_config(args.config, args.model, merge_overrides(args.set, flags))
    if args.model:
        raise ConfigError("--continue keeps the parent's model: no --model")
    if not args.out:
        raise ConfigError("--continue RUN needs --out NEW_RUN: the continued run goes into its own directory")
    parent_config = RunDir(continue_from).config
    if not args.config and not parent_config.is_file():
        raise ConfigError(f"--continue {continue_from}: not a run directory (no {parent_config.name})")
    cfg = load_run_config(args.config or str(parent_config), None, merge_overrides(args.set, flags))
    # the parent's partitions are not this run's: what to train / validate / test on is said anew
    cfg.data.partitions = cfg.data.valid_partition = cfg.data.test_partition = None
    cfg.train.init_from = None
    parts = _partition_flags(args)
    cfg.data.partitions = parts.get("data.partitions")
    cfg.data.valid_partition = parts.get("data.valid_partition")
    cfg.data.test_partition = parts.get("data.test_partition")
    cfg.train.continue_from = continue_from
    return cfg


def _partition_flags(args: argparse.Namespace) -> dict:
    out: dict = {}
    if getattr(args, "partitions", None):
        names = [n.strip() for n in args.partitions.split(",") if n.strip()]
        if not names:
            raise ConfigError("--partitions: give partition names separated by commas (day01,day02)")
        out["data.partitions"] = names
    if getattr(args, "valid_partition", None):
        out["data.valid_partition"] = args.valid_partition
    if getattr(args, "test_partition", None):
        out["data.test_partition"] = args.test_partition
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from ..train.distributed import env_world, launch_local
    from ..train.run import check_run_config, check_tasks, ensure_store, run_training

    cfg = train_config(args)
    check_run_config(cfg)  # before any data is read (--nproc prepares the store first)
    if args.nproc is not None:
        if args.nproc < 1:
            raise ValueError(f"--nproc must be >= 1, got {args.nproc}")
        if args.nproc > 1 and env_world() is None:  # not already one of torchrun's workers
            # the store is prepared once here, not raced by every worker
            # (and the model is checked against its labels once, not on every worker)
            check_tasks(cfg, ensure_store(cfg, progress=not args.quiet))
            return launch_local(args.nproc, args.argv)
    run_training(cfg, resume=not args.no_resume, progress=not args.quiet)
    return 0


def add_eval(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--partition", metavar="NAME",
                   help="a run on a partitioned store: score this partition (any, appended later too; ids the run's "
                        "vocabulary did not have are OOV)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=cmd_eval)


def eval_config(args: argparse.Namespace) -> Config:
    """The run's config (``-c``, else RUN/config.yaml), then ``--set``, then the flags."""
    path = args.config or (str(RunDir(args.run).config) if args.run else None)
    flags = {"eval.epochs": args.epochs, "eval.split": args.split, "run_dir": args.run,
             "train.device": args.device}
    return load_run_config(path, None, merge_overrides(args.set, flags))


def cmd_eval(args: argparse.Namespace) -> int:
    from ..train.run import run_eval

    results = run_eval(eval_config(args), partition=getattr(args, "partition", None))
    if args.json:
        print(json.dumps(results))
    return 0


# --------------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------------

def add_models(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("models", help="list the registered models, or show one",
                       description="List the registered CTR models with their hyperparameters, defaults and "
                                   "papers; `ctrlab models NAME` shows one in detail.")
    p.add_argument("name", nargs="?", help="a model name, e.g. deepfm")
    p.set_defaults(func=cmd_models)


def cmd_models(args: argparse.Namespace) -> int:
    from ..models import format_model_detail, format_model_table

    print(format_model_detail(args.name) if args.name else format_model_table())
    return 0
