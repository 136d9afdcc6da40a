"""The experiment commands: ``ctrlab compare``, ``ctrlab sweep``, ``ctrlab tune``, ``ctrlab plot``,
``ctrlab report``.

Each ``add_*`` adds one subcommand (see ``ctrlab.cli.main.COMMANDS``); the work is done by
:mod:`ctrlab.experiments` (imported inside the commands, see main.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .options import merge_overrides

_RAW = argparse.RawDescriptionHelpFormatter


def _common_run_options(p: argparse.ArgumentParser, metric_default: str, metric_help: str) -> None:
    p.add_argument("--seeds", type=int, default=1, metavar="N",
                   help="train every point N times, with train.seed = the config's seed + 0..N-1 (default 1)")
    p.add_argument("--out", required=True, metavar="EXP_DIR",
                   help="experiment directory: runs/, results.md, results.csv, plots/, report.html")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value for every run (repeatable), e.g. train.epochs=5; in a "
                        "one-at-a-time sweep it sets the base value an axis is varied around")
    p.add_argument("--epochs", type=int, metavar="N", help="shortcut for --set train.epochs=N")
    p.add_argument("--device", help="cpu (default), cuda, cuda:N")
    p.add_argument("--metric", default=metric_default,
                   choices=["test_auc", "valid_auc", "test_logloss", "valid_logloss"], help=metric_help)
    p.add_argument("--restart", action="store_true",
                   help="delete this experiment's runs and train them all again (default: keep finished runs "
                        "and resume unfinished ones)")
    p.add_argument("--dry-run", action="store_true", help="print the planned runs and their state; train nothing")
    p.add_argument("--quiet", action="store_true", help="no progress bars and no per-epoch logs; one line per run")


def _overrides(args: argparse.Namespace) -> dict[str, Any]:
    """``--epochs`` / ``--device``, then ``--set`` (which wins: it may set the base a sweep varies around)."""
    return merge_overrides({"train.epochs": args.epochs, "train.device": args.device}, args.set)


def _command_line(args: argparse.Namespace, argv_keys: list[tuple[str, str]]) -> list[str]:
    """The invocation as it would be typed again (recorded in experiment.json)."""
    out = ["ctrlab", args.command]
    for flag, attr in argv_keys:
        value = getattr(args, attr, None)
        if value is None or value is False or value == []:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, list):
            for item in value:
                out += [flag, str(item)]
        else:
            out += [flag, str(value)]
    return out


def _run_plan(plan: Any, args: argparse.Namespace) -> int:
    from ..experiments.core import describe_plan, execute

    if args.dry_run:
        print(describe_plan(plan, args.out))
        return 0
    execute(plan, args.out, restart=args.restart, progress=not args.quiet, verbose=not args.quiet)
    return 0


_RUN_FLAGS = [("--seeds", "seeds"), ("--out", "out"), ("--set", "set"), ("--epochs", "epochs"),
              ("--device", "device"), ("--metric", "metric")]


# --------------------------------------------------------------------------------------------
# compare
# --------------------------------------------------------------------------------------------

def add_compare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="train several models on one prepared split and tabulate them",
        formatter_class=_RAW,
        description="Train every model on the same prepared split with the same training budget, once per seed, "
                    "into one experiment directory: EXP_DIR/runs/<model>_seed<k>/ (ordinary run directories), "
                    "results.md and results.csv (mean ± std over seeds), runs.csv, experiment.json, plots/ "
                    "and report.html. Every model is tested against the best one with a paired test over the test "
                    "rows (DeLong for AUC), the seeds pooled and their spread counted: worse only when p < 0.05, "
                    "otherwise tie (with one seed the training noise is unmeasured: use --seeds 2 or more).\n\n"
                    "With -c, every model gets the config's data, features and train sections; a model other than "
                    "the config's own takes its ready params (the ready config, ctrlab/config/presets/<model>.yaml) with the config's shared "
                    "params (embedding_dim, dropout, ...) over them. With --data alone, every model starts from its "
                    "own ready config. --set applies to every model; a model parameter only to the models that "
                    "take it (the notes say per model what was applied).\n\n"
                    "Interrupted? Run the same command again: finished runs are kept, unfinished ones resume "
                    "from their last complete epoch.",
        epilog="examples:\n"
               "  ctrlab compare -c configs/frappe_deepfm.yaml --models lr,fm,deepfm,dcn --epochs 5 \\\n"
               "      --out runs/exp/frappe\n"
               "  ctrlab compare --data runs/synth/store --models all --seeds 3 --set train.epochs=2 \\\n"
               "      --out runs/exp/synth_all\n"
               "  ctrlab compare --data runs/synth/store --models deepfm,dcn_v2,xdeepfm --dry-run --out runs/exp/x")
    p.add_argument("-c", "--config", help="base config (data + features + model + train), native or PaddleRec style")
    p.add_argument("--data", metavar="STORE", help="a prepared store (instead of, or overriding, the config's data)")
    p.add_argument("--models", required=True,
                   help="comma-separated model names (see `ctrlab models`), or all")
    _common_run_options(p, "test_auc", "column that ranks the models and whose split the paired test reads (default test_auc)")
    p.set_defaults(func=cmd_compare)


def cmd_compare(args: argparse.Namespace) -> int:
    from ..experiments.compare import plan_compare

    command = _command_line(args, [("-c", "config"), ("--data", "data"), ("--models", "models")] + _RUN_FLAGS)
    plan = plan_compare(args.out, args.models, config_path=args.config, store=args.data, seeds=args.seeds,
                        overrides=_overrides(args), metric=args.metric, command=command)
    return _run_plan(plan, args)


# --------------------------------------------------------------------------------------------
# sweep
# --------------------------------------------------------------------------------------------

def add_sweep(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep", help="train one config at many settings (a grid, or one axis at a time)",
        formatter_class=_RAW,
        description="Hyperparameter sweep on one prepared split. Each --grid KEY=V1,V2,... is an axis; values are "
                    "YAML (1e-3 is a number, [400,400] a list; commas inside brackets do not split values). "
                    "--mode grid trains every combination; --mode one-at-a-time trains the base config and each "
                    "axis value alone around it. Every point runs --seeds times. The table marks the best point "
                    "(by --metric, validation AUC by default, so the test split plays no part in the choice) and "
                    "tests every other point against it (DeLong paired test over the split's rows, seeds pooled: "
                    "worse or tie).\n\n"
                    "Writes the same experiment directory as `ctrlab compare`, plus one chart per axis; an "
                    "interrupted sweep resumes when run again.",
        epilog="examples:\n"
               "  ctrlab sweep -c configs/frappe_deepfm.yaml --grid train.lr=1e-2,1e-3,1e-4 \\\n"
               "      --grid train.batch_size=256,1024 --seeds 3 --out runs/exp/frappe_lr\n"
               "  ctrlab sweep --data runs/synth/store --model deepfm --mode one-at-a-time \\\n"
               "      --grid train.optimizer=adam,sgd,adagrad \\\n"
               "      --grid 'model.params.hidden_units=[400,400,400],[512,256,128],[1024,1024,1024]' \\\n"
               "      --out runs/exp/deepfm_oat")
    p.add_argument("-c", "--config", help="base config (native or PaddleRec style)")
    p.add_argument("--data", metavar="STORE",
                   help="a prepared store (with --model: the model's ready config is the base)")
    p.add_argument("--model", help="model name (with --data; with -c it replaces the config's model)")
    p.add_argument("--grid", action="append", default=[], required=True, metavar="KEY=V1,V2,...",
                   help="an axis of the sweep (repeatable), e.g. train.lr=1e-2,1e-3 or "
                        "model.params.hidden_units=[400,400],[256,128]")
    p.add_argument("--mode", choices=["grid", "one-at-a-time"], default="grid",
                   help="grid: every combination (default); one-at-a-time: each axis varied alone around the base")
    _common_run_options(p, "valid_auc", "column that ranks the points and whose split the paired test reads (default valid_auc)")
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args: argparse.Namespace) -> int:
    from ..experiments.sweep import plan_sweep

    command = _command_line(args, [("-c", "config"), ("--data", "data"), ("--model", "model"), ("--grid", "grid"),
                                   ("--mode", "mode")] + _RUN_FLAGS)
    plan = plan_sweep(args.out, args.grid, config_path=args.config, store=args.data, model=args.model,
                      mode=args.mode, seeds=args.seeds, overrides=_overrides(args), metric=args.metric,
                      command=command)
    return _run_plan(plan, args)


# --------------------------------------------------------------------------------------------
# plot / report
# --------------------------------------------------------------------------------------------

def add_plot(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot", help="charts of runs or experiments (loss, validation AUC, test AUC, throughput)",
        formatter_class=_RAW,
        description="Draw charts with matplotlib: training loss per step (steps.jsonl), validation AUC per epoch "
                    "(epochs.jsonl), test AUC per model or setting with std over seeds as error bars, training "
                    "throughput, and for sweeps the metric along each axis. Accepts experiment directories, run "
                    "directories, and folders of run directories.",
        epilog="examples:\n"
               "  ctrlab plot runs/exp/frappe                        # -> runs/exp/frappe/plots/*.png\n"
               "  ctrlab plot runs/deepfm runs/dcn --out runs/plots --format png,svg")
    p.add_argument("paths", nargs="+", metavar="RUN_OR_EXPERIMENT_DIR")
    p.add_argument("--out", metavar="DIR", help="where to write the charts (default: PATH/plots for one path)")
    p.add_argument("--format", default="png", help="comma-separated: png, svg (default png)")
    p.set_defaults(func=cmd_plot)


def cmd_plot(args: argparse.Namespace) -> int:
    from ..experiments.plots import parse_formats, plot_paths

    formats = parse_formats(args.format)
    if args.out:
        out = Path(args.out)
    elif len(args.paths) == 1:
        out = Path(args.paths[0]) / "plots"
    else:
        raise ValueError("several inputs: say where the charts go with --out DIR")
    for path in plot_paths(args.paths, out, formats):
        print(path)
    return 0


def add_report(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report", help="one self-contained HTML page of an experiment (tables + charts)",
        formatter_class=_RAW,
        description="Write EXPERIMENT_DIR/report.html: the results table, the runs, the charts (PNG embedded as "
                    "data URIs) and the configs, with no scripts and no external resources, so it opens offline "
                    "and can be sent as one file. `ctrlab compare` and `ctrlab sweep` write it too; run this after "
                    "copying or editing an experiment, or while one is still training.",
        epilog="examples:\n  ctrlab report runs/exp/frappe\n  ctrlab report runs/exp/frappe --out /tmp/frappe.html")
    p.add_argument("experiment", metavar="EXPERIMENT_DIR")
    p.add_argument("--out", metavar="FILE", help="output file (default EXPERIMENT_DIR/report.html)")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    from ..experiments.report import write_report

    print(write_report(args.experiment, args.out))
    return 0


# --------------------------------------------------------------------------------------------
# tune
# --------------------------------------------------------------------------------------------

def add_tune(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "tune", help="hyperparameter search with Optuna (TPE, pruning, resumable)",
        formatter_class=_RAW,
        description="Search a base config's hyperparameters on one prepared split with Optuna: a seeded TPE "
                    "sampler, a median pruner on the validation AUC after every epoch, the study in "
                    "OUT/study.db (SQLite). One trial is one training run in OUT/trials/NNNN/; its value is its "
                    "best validation AUC, so the test split plays no part in the choice. Trial 0 is the base "
                    "config itself when its values lie in the space.\n\n"
                    "Searched by default (params the model does not take are left out): train.lr (1e-4..1e-2, "
                    "log), train.batch_size, train.optimizer, train.reg and train.weight_decay (L2, 0 included), "
                    "model.params.embedding_dim (4..32), model.params.hidden_units (1-3 equal layers of "
                    "64..512), model.params.dropout (0..0.5). The number of epochs is decided per trial by "
                    "early stopping on validation, up to train.epochs (--epochs N sets that cap). Change the "
                    "space with --space FILE (see README, 'Tuning').\n\n"
                    "Writes OUT/best.yaml (the best trial's complete config: `ctrlab train -c OUT/best.yaml`, "
                    "then export), trials.csv/.jsonl, tune.json and report.html (trials, best config, parameter "
                    "importances). Interrupted? Run the same command again: finished trials count towards "
                    "--trials, an interrupted one is tried again.",
        epilog="examples:\n"
               "  ctrlab tune -c configs/frappe_deepfm.yaml --trials 20 --epochs 15 --out runs/tune/frappe\n"
               "  ctrlab train -c runs/tune/frappe/best.yaml\n"
               "  ctrlab tune -c configs/frappe_deepfm.yaml --space space.yaml --trials 50 --timeout 3600 --out runs/tune/x")
    p.add_argument("-c", "--config", required=True, help="base config (native or PaddleRec style)")
    p.add_argument("--trials", type=int, required=True, metavar="N",
                   help="finished trials (complete, pruned or failed) the study should hold")
    p.add_argument("--out", required=True, metavar="OUT", help="tune directory (study.db, trials/, best.yaml, ...)")
    p.add_argument("--space", metavar="FILE", help="YAML search space (space:, defaults:, pruner:, sampler:)")
    p.add_argument("--seed", type=int, default=0, help="seed of the TPE sampler (default 0)")
    p.add_argument("--timeout", type=float, metavar="SECONDS",
                   help="start no new trial after this many seconds (rerun to continue)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a base config value (repeatable), e.g. data.store=runs/frappe/store")
    p.add_argument("--epochs", type=int, metavar="N", help="epoch cap of every trial (shortcut for --set train.epochs=N)")
    p.add_argument("--device", help="cpu (default), cuda, cuda:N")
    p.add_argument("--verbose", action="store_true", help="per-epoch logs of every trial")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    from ..experiments.tune import tune

    command = _command_line(args, [("-c", "config"), ("--trials", "trials"), ("--out", "out"), ("--space", "space"),
                                   ("--seed", "seed"), ("--timeout", "timeout"), ("--set", "set"),
                                   ("--epochs", "epochs"), ("--device", "device")])
    tune(args.config, args.out, trials=args.trials, space_path=args.space, seed=args.seed, timeout=args.timeout,
         overrides=_overrides(args), verbose=args.verbose, command=command)
    return 0
