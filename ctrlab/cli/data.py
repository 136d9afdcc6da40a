"""The data commands: ``ctrlab prepare``, ``ctrlab info``, ``ctrlab data synth|download|clean``.

Each ``add_*`` adds one subcommand (see ``ctrlab.cli.main.COMMANDS``); each ``cmd_*`` turns its
flags into config overrides, calls the library and prints (library imported inside, see main.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..config import Config, ConfigError, DataConfig, FeaturesConfig, dump_config, load_config, parse_value
from ..schema import FORMAT_NAMES
from .options import merge_overrides

# --------------------------------------------------------------------------------------------
# prepare / info
# --------------------------------------------------------------------------------------------


def add_prepare(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prepare", help="raw logs -> fitted feature pipeline + encoded store",
        description="Parse raw CTR logs (Criteo TSV, Kaggle CSV, PaddleRec slot, generic CSV/TSV; plain or "
                    ".gz; files, globs or directories), fit the feature pipeline on the training split only, "
                    "and write the encoded store (memory-mapped arrays per split) with its metadata.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  ctrlab prepare train.txt --format criteo --out runs/criteo\n"
               "  ctrlab prepare -c configs/frappe_deepfm.yaml --set features.categorical.min_count=2\n"
               "  ctrlab prepare 'logs/part-*.gz' --bad-lines skip --out runs/logs\n"
               "  ctrlab prepare day01.tsv --out runs/daily --partition day01 --evict-after 7\n"
               "  ctrlab prepare --append runs/daily day02.tsv   (partition day02, the vocabulary grown)")
    p.add_argument("inputs", nargs="*", help="training data: files, globs or directories (or data.train in the config)")
    p.add_argument("-c", "--config", help="YAML config with data/features sections")
    p.add_argument("--out", help="store directory to write (or data.store in the config)")
    p.add_argument("--format", help=f"input format (default: detected): {', '.join(FORMAT_NAMES)}")
    p.add_argument("--valid", action="append", default=None, help="explicit validation file(s)")
    p.add_argument("--test", action="append", default=None, help="explicit test file(s)")
    p.add_argument("--split", help="train:valid:test ratios for a random split (default 8:1:1)")
    p.add_argument("--seed", type=int, help="seed of the random split (default 2024)")
    defaults = FeaturesConfig()  # the one set of feature defaults
    p.add_argument("--min-count", type=int, help="vocabulary min_count for categorical columns (default "
                                                 f"{defaults.categorical.min_count})")
    p.add_argument("--numeric", help="transform for numeric columns: log1p_standardize, log1p, minmax, passthrough, "
                                     f"log_square_bucket (default {defaults.numeric.transform})")
    p.add_argument("--bad-lines", choices=["error", "skip"], help="stop at the first bad line (default) or skip "
                                                                  "and count bad lines")
    p.add_argument("--vocab-memory-mib", type=int, metavar="MIB",
                   help=f"memory for counting the vocabularies (default {DataConfig().vocab_memory_mib}); past it the "
                        "counts spill to temporary files and are merged exactly, so memory does not grow with the "
                        "number of distinct values (0: count in memory)")
    p.add_argument("--engine", choices=["local", "ray"], default="local",
                   help="local: this process (default); ray: Ray tasks, a file each, on a local Ray or the cluster at "
                        "--address (pip install 'ctrlab[ray]'); the same store, its splits written as shards")
    p.add_argument("--address", metavar="HOST:PORT",
                   help="with --engine ray: the Ray cluster to run on (what `ray start --head` printed, or auto); "
                        "default: a local Ray started for this command")
    p.add_argument("--partition", metavar="NAME",
                   help="make a partitioned store whose first partition NAME is the whole input (no random split); "
                        "with --append: the new partition's name (default: the first file's name without extension)")
    p.add_argument("--append", metavar="STORE",
                   help="add the inputs as a new partition of the partitioned STORE, its vocabularies grown (new values "
                        "reaching min_count get new ids; existing ids never change; nothing stored is rewritten)")
    p.add_argument("--evict-after", type=int, metavar="N",
                   help="with --partition or --append: retire ids unseen for N partitions (their values become OOV, "
                        "their ids are reused by later values); 0 turns eviction off (default: off, or the store's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_prepare)


def split_ratios(text: str) -> list[Any]:
    """``--split 8:1:1`` (or ``8,1,1``) -> [8, 1, 1]: each ratio read like a ``--set`` value."""
    return [parse_value(part) for part in text.replace(",", ":").split(":")]


def prepare_config(args: argparse.Namespace) -> Config:
    """The config file (if any), then ``--set``, then the flags."""
    flags = {
        "data.train": list(args.inputs) or None, "data.valid": args.valid, "data.test": args.test,
        "data.store": args.out, "data.format": args.format,
        "data.split": split_ratios(args.split) if args.split else None, "data.seed": args.seed,
        "features.categorical.min_count": args.min_count, "features.numeric.transform": args.numeric,
        "data.bad_lines": args.bad_lines, "data.vocab_memory_mib": args.vocab_memory_mib,
    }
    return load_config(args.config, merge_overrides(args.set, flags))


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..data.ledger import LEDGER_NAME, record_created
    from ..data.prepare import format_summary, prepare
    from ..fileio import disk_errors
    from ..train.store_config import prepare_options

    if args.append:
        return _cmd_append(args)
    cfg = prepare_config(args)
    if args.evict_after is not None and args.partition is None:
        raise ConfigError("--evict-after applies to a partitioned store: add --partition NAME (or use --append)")
    if args.address and args.engine != "ray":
        raise ConfigError("--address names a Ray cluster: add --engine ray")
    if not cfg.data.store:
        raise ConfigError("where should the store go? pass --out DIR or set data.store in the config")
    opts = prepare_options(cfg)
    out = Path(cfg.data.store)
    # config.yaml goes in before the swap: the store and the config that made it arrive together
    store = prepare(opts, out, progress=not args.quiet,
                    before_swap=lambda build: dump_config(cfg, build / "config.yaml"),
                    partition=args.partition, unseen_partitions=args.evict_after or None,
                    engine=args.engine, address=args.address)
    with disk_errors(out.parent / LEDGER_NAME):
        record_created(out.parent, [out], "store")
    print(format_summary(store.meta))
    print(f"wrote {out}")
    return 0


def _cmd_append(args: argparse.Namespace) -> int:
    """``prepare --append STORE FILE...``: the store's config.yaml (or -c), then --set, then the flags."""
    from ..data.append import append_partition
    from ..data.prepare import format_summary
    from ..train.store_config import prepare_options

    if not args.inputs:
        raise ConfigError("--append STORE needs the new partition's input files")
    if args.out or args.valid or args.test or args.split:
        raise ConfigError("--append takes no --out, --valid, --test or --split: the partition is the input files")
    store = Path(args.append)
    config = args.config or (str(store / "config.yaml") if (store / "config.yaml").is_file() else None)
    flags = {"data.train": list(args.inputs), "data.format": args.format, "data.bad_lines": args.bad_lines,
             "data.valid": [], "data.test": []}
    cfg = load_config(config, merge_overrides(args.set, flags))
    kwargs = {} if args.evict_after is None else {"unseen_partitions": args.evict_after or None}
    result = append_partition(store, prepare_options(cfg), args.partition, progress=not args.quiet, **kwargs)
    print(format_summary(result.meta))
    print(f"appended partition {result.partitions[-1]} to {store}")
    return 0


def add_info(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("info", help="print the summary of a prepared store",
                       description="Print the metadata summary of a store written by `ctrlab prepare`.")
    p.add_argument("store", help="store directory")
    p.set_defaults(func=cmd_info)


def cmd_info(args: argparse.Namespace) -> int:
    from ..data.prepare import format_summary
    from ..data.store import Store

    print(format_summary(Store(args.store).meta))
    return 0


# --------------------------------------------------------------------------------------------
# data synth / download / clean
# --------------------------------------------------------------------------------------------

def add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="synthetic data, dataset downloads, cleaning up",
                       description="Make synthetic Criteo-shaped data, build behaviour histories from an "
                                   "interaction log, download public CTR datasets, or remove what ctrlab created.")
    dsub = p.add_subparsers(dest="data_command", metavar="{synth,history,download,clean}")
    dsub.required = True

    s = dsub.add_parser("synth", help="write synthetic Criteo-shaped, behaviour-sequence or multi-task rows",
                        description="--kind criteo (default): Criteo-layout rows (label, 13 counts, 26 hex "
                                    "categories; tab separated, no header) with Zipf categories, heavy-tailed counts, "
                                    "missing values and labels from a planted model with feature interactions; .gz "
                                    "output when FILE ends in .gz. --kind sequence: a TSV with a header, label, "
                                    "user_id, item_id, cate_id, price, hist_item_id, hist_cate_id ('|'-joined "
                                    "history, oldest first), tags ('|'-joined, optional 'tag:weight'), clicks "
                                    "planted on the match between the target and the recent history. --kind "
                                    "multitask: a TSV with a header, click, conversion (only after a click), "
                                    "user_id, item_id, cate_id, shop_id, device, hour, price, discount, "
                                    "user_activity; correlated planted click and CVR models with sample-selection "
                                    "bias (formulas in ctrlab/data/synth_multitask.py); --truth appends the true "
                                    "p_click and p_cvr. --days N (criteo only): a directory of N daily files "
                                    "day01.tsv.. (--rows rows each) for continual training: new values are born "
                                    "every day, old ones fade out and die, the click model drifts (formulas in "
                                    "ctrlab/data/synth_days.py); prints a per-day table of new / alive / dead values.")
    s.add_argument("--rows", type=int, required=True, help="number of rows (per day with --days)")
    s.add_argument("--out", required=True, help="output file (.tsv, .txt or .gz); with --days an output directory")
    s.add_argument("--days", type=int, default=None, metavar="N",
                   help="--kind criteo only: write N daily files dayNN.tsv into the --out directory, with value "
                        "births/deaths and a drifting click model")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--kind", choices=["criteo", "sequence", "multitask"], default="criteo",
                   help="criteo: Criteo Kaggle layout (default); sequence: user behaviour histories for DIN-style "
                        "models; multitask: two labels per impression, click (~7%%) and conversion (~1%%, "
                        "observed only after a click), from correlated planted models whose clicked population "
                        "is a biased sample for CVR (ESMM/MMoE-style experiments)")
    s.add_argument("--max-history", type=int, default=None, metavar="N",
                   help="--kind sequence only: longest history per row (default 50)")
    s.add_argument("--truth", action="store_true",
                   help="--kind multitask only: two extra trailing columns p_click and p_cvr, the true "
                        "probabilities of the planted model (not features: leave them out of the schema)")
    s.add_argument("--no-label", action="store_true", help="--kind criteo only: the Kaggle test.txt layout, "
                                                           "39 columns, no label")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_synth)

    h = dsub.add_parser("history", help="behaviour histories (and negatives) from an interaction log",
                        description="Turn a CSV log of interactions (user, item, time, optional category; e.g. "
                                    "torch-rechub's amazon_electronics_sample.csv) into training rows for sequence "
                                    "models: every interaction after a user's first is a positive whose history "
                                    "is the user's items of strictly earlier times (no future interaction leaks in), "
                                    "the most recent --max-length of them; each gets --negatives rows with a target "
                                    "the user never interacted with. Writes a TSV with a header: label, user, item, "
                                    "[category,] hist_<item>, [hist_<category>] ('|'-joined, oldest first).",
                        epilog="Then declare the histories in the config: data.format: tsv, data.schema.lists: "
                               "{hist_item_id: {kind: sequence, max_length: N, vocab_of: item_id}, hist_cate_id: "
                               "{kind: sequence, max_length: N, vocab_of: cate_id}}.")
    h.add_argument("log", help="CSV file with a header")
    h.add_argument("--out", required=True, help="output TSV file")
    h.add_argument("--user", default="user_id", help="user column (default user_id)")
    h.add_argument("--item", default="item_id", help="item column (default item_id)")
    h.add_argument("--time", default="time", help="time column, any sortable number (default time)")
    h.add_argument("--category", default="cate_id", help="item category column (default cate_id; '' for none)")
    h.add_argument("--max-length", type=int, default=50, help="most recent items kept per history (default 50)")
    h.add_argument("--negatives", type=int, default=1, help="negative rows per positive (default 1)")
    h.add_argument("--seed", type=int, default=0, help="seed of the negative sampling (default 0)")
    h.set_defaults(func=cmd_history)

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


def cmd_history(args: argparse.Namespace) -> int:
    from ..data.history import build_histories
    from ..data.ledger import record_created

    out = Path(args.out)
    res = build_histories(args.log, out, user=args.user, item=args.item, time=args.time,
                          category=args.category or None, max_length=args.max_length, negatives=args.negatives,
                          seed=args.seed)
    record_created(out.parent, [out], "synthetic")
    print(f"wrote {res['rows']:,} rows ({res['positives']:,} positives, {res['negatives']:,} negatives) from "
          f"{res['interactions']:,} interactions of {res['users']:,} users to {out}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from ..data.ledger import record_created
    from ..data.synth import write_synthetic

    if args.rows < 0:
        raise ValueError(f"--rows must be >= 0, got {args.rows}")
    out = Path(args.out)
    if args.days is not None:
        return synth_days(args, out)
    if args.truth and args.kind != "multitask":
        raise ValueError("--truth is only for --kind multitask")
    if args.kind == "multitask":
        from ..data.synth_multitask import write_multitask_synthetic

        if args.no_label:
            raise ValueError("--no-label is only for --kind criteo (multitask rows always carry both labels)")
        if args.max_history is not None:
            raise ValueError("--max-history is only for --kind sequence")
        if str(out).endswith(".gz"):
            raise ValueError("--kind multitask writes plain text; drop the .gz from --out")
        res = write_multitask_synthetic(out, args.rows, seed=args.seed, truth=args.truth, progress=not args.quiet)
        record_created(out.parent, [out], "synthetic")
        print(f"wrote {res['rows']:,} multitask rows to {out} ({res['bytes']:,} bytes, click rate "
              f"{res['click_rate']:.4f}, conversion rate {res['conversion_rate']:.4f}, conversions/clicks "
              f"{res['cvr_given_click']:.4f}; true mean p_cvr {res['mean_p_cvr_all']:.4f} over all impressions vs "
              f"{res['mean_p_cvr_clicked']:.4f} over clicked ones, "
              f"{'truth columns p_click p_cvr, ' if args.truth else ''}{res['rows_per_s']:,.0f} rows/s)")
        return 0
    if args.kind == "sequence":
        from ..data.synth_sequence import write_sequence_synthetic

        if args.no_label:
            raise ValueError("--no-label is only for --kind criteo (sequence rows always carry a label)")
        max_history = 50 if args.max_history is None else args.max_history
        if max_history < 1:
            raise ValueError(f"--max-history must be >= 1, got {max_history}")
        if str(out).endswith(".gz"):
            raise ValueError("--kind sequence writes plain text; drop the .gz from --out")
        res = write_sequence_synthetic(out, args.rows, seed=args.seed, max_history=max_history,
                                       progress=not args.quiet)
        record_created(out.parent, [out], "synthetic")
        print(f"wrote {res['rows']:,} sequence rows to {out} ({res['bytes']:,} bytes, positive rate "
              f"{res['positive_rate']:.4f}, mean history {res['mean_history_length']:.1f} of max {max_history}, "
              f"{res['rows_per_s']:,.0f} rows/s)")
        return 0
    if args.max_history is not None:
        raise ValueError("--max-history is only for --kind sequence")
    res = write_synthetic(out, args.rows, seed=args.seed, progress=not args.quiet, label=not args.no_label)
    record_created(out.parent, [out], "synthetic")
    print(f"wrote {res['rows']:,} rows to {out} ({res['bytes']:,} bytes, positive rate {res['positive_rate']:.4f}, "
          f"{res['rows_per_s']:,.0f} rows/s)")
    return 0


def synth_days(args: argparse.Namespace, out: Path) -> int:
    """``ctrlab data synth --days N``: daily files with churning values and a drifting click model."""
    from ..data.ledger import record_created
    from ..data.synth_days import format_day_table, write_daily_synthetic

    if args.kind != "criteo":
        raise ValueError(f"--days is only for --kind criteo (got --kind {args.kind})")
    if args.days < 1:
        raise ValueError(f"--days must be >= 1, got {args.days}")
    if args.no_label:
        raise ValueError("--no-label does not go with --days (daily files always carry the label)")
    if args.max_history is not None:
        raise ValueError("--max-history is only for --kind sequence")
    if args.truth:
        raise ValueError("--truth is only for --kind multitask")
    if out.suffix in (".gz", ".tsv", ".txt") or out.is_file():
        raise ValueError(f"with --days, --out is a directory for the daily files, got {out}")
    res = write_daily_synthetic(out, args.days, args.rows, seed=args.seed, progress=False)
    record_created(out.parent, res["files"], "synthetic")
    print(format_day_table(res))
    print(f"wrote {args.days} daily files of {args.rows:,} rows to {out} (new: values never seen on earlier "
          f"days; alive: distinct values that day; dead: seen before, never again; {res['seconds']:.1f}s)")
    return 0


def cmd_download(args: argparse.Namespace) -> int:
    from ..data.download import download

    paths = download(args.name, args.to, base_url=args.mirror, sha256=args.sha256, extract=not args.no_extract,
                     progress=not args.quiet)
    for p in paths:
        print(p)
    return 0


def cmd_clean(args: argparse.Namespace) -> int:
    from ..data.ledger import clean

    clean(args.directory, yes=args.yes)
    return 0
