"""Daily (continual) training (issue 17): what an append and a continual update cost, what they buy.

On `ctrlab data synth --days N` logs (ctrlab/data/synth_days.py: Criteo layout, values born, fading
and dying every day, a click model that drifts: every value's weight walks, a count feature's
effect turns around over 14 days), one partitioned store (min_count 2, --evict-after E):

1. append cost: a store holding days 1..6; `append_partition` of day 7 (vocabularies grown from the
   sidecar, eviction applied) against `prepare(..., partition=...)` of day 7 alone into a fresh
   store (vocabularies fitted from nothing). --pairs alternating pairs (the order flips every pair;
   the six-day store is copied before each append, not timed); each pair and the median ratio.
2. continual update cost: one continual update on the last day (`train.continue_from` the model of
   the day before, 1 epoch on the day) against one epoch on the same day from scratch (same model,
   same partition, same store); alternating pairs, wall seconds of `run_training` in this process.
   The continual run also loads its parent, scores the day with it before training (progressive
   validation) and grows its tables and optimizer state (warm start): its time is split into
   those, the training loop itself (summary `train_seconds`) and the rest (reading the store,
   building the model, writing checkpoints), which the scratch run has too.
3. quality over the days: DeepFM (embedding 8, MLP [64, 32]), Adam 1e-3, batch 1024, --epochs
   epochs per update. Day 1 is trained once (--epochs epochs); it is the day-1 model of all three
   lineages. Then for t = 1..days-1, the progressive AUC / logloss on day t+1 (held out: no model
   scored on it has trained on it) of
     (a) continual: the model of day t-1 continued on day t alone (--epochs epochs on day t);
     (b) retrain: a model trained from scratch on days 1..t (--epochs epochs over all t days, so
         each day's rows are seen --epochs times, as in the continual lineage; its cost grows with t);
     (c) frozen: the day-1 model, never updated.
   Retrain and frozen models are scored by a continued run with lr 0 (one pass, weights unchanged),
   whose summary.json holds the parent's progressive score on the next day, read exactly as the
   continual runs' (ids unknown to the parent, or retired / reused since, as OOV). Total training
   seconds: the wall time of `run_training` of the updates whose models are scored (days 1..days-1),
   continual (including its progressive scoring) vs retrain. --both-eviction runs the loop with
   eviction off too. The chart `progressive_auc.png` (`ctrlab plot` of the three lineages' folders)
   goes to WORK/part3*/plots.
4. bounded tables: --long-days days of --long-rows rows (prepare + append only, no training): per
   day the total number of ids over every vocabulary (`Store.vocab_sizes()`, reserved ids included)
   with eviction after E partitions and without, beside the distinct values ever seen (the
   generator's count).

    python benchmarks/bench_daily.py --threads 1 --pairs 5 --both-eviction   # ~2 min on 2 idle cores
    python benchmarks/bench_daily.py --part 1,2,3 --rows 200000 --epochs 2 --threads 1 --pairs 5  # ~5 min
    python benchmarks/bench_daily.py --quick              # a smoke run (tiny sizes), ~15 s
    python benchmarks/bench_daily.py --part 3 --rows 20000 --work /tmp/daily
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_inference import machine_line  # noqa: E402  (this script's folder)

import ctrlab.train.run as run_mod  # noqa: E402
from ctrlab.config import load_config  # noqa: E402
from ctrlab.data.append import append_partition  # noqa: E402
from ctrlab.data.prepare import PrepareOptions, prepare  # noqa: E402
from ctrlab.data.store import Store  # noqa: E402
from ctrlab.data.synth_days import write_daily_synthetic  # noqa: E402
from ctrlab.features.pipeline import CategoricalOptions  # noqa: E402
from ctrlab.train.run import run_training  # noqa: E402

MODEL = ["model.name=deepfm", "model.params.embedding_dim=8", "model.params.hidden_units=[64,32]",
         "model.params.dropout=0.0"]


def quiet(_msg: str) -> None:
    pass


def day_name(d: int, width: int) -> str:
    return f"day{d:0{width}d}"


class Days:
    """The generated logs of one size (cached in WORK/days-R-N)."""

    def __init__(self, work: Path, days: int, rows: int, seed: int = 7):
        self.days, self.rows = days, rows
        self.dir = work / f"days-{rows}-{days}"
        self.width = max(2, len(str(days)))
        stats = self.dir / "stats.json"
        if stats.is_file():
            self.info = json.loads(stats.read_text())
        else:
            t = time.perf_counter()
            self.info = write_daily_synthetic(self.dir, days, rows, seed=seed)
            stats.write_text(json.dumps(self.info))
            print(f"generated {days} days x {rows:,} rows in {time.perf_counter() - t:.1f} s ({self.dir})")

    def name(self, d: int) -> str:
        return day_name(d, self.width)

    def path(self, d: int) -> Path:
        return self.dir / f"{self.name(d)}.tsv"


def opts(path: Path) -> PrepareOptions:
    return PrepareOptions(train=[str(path)], format="criteo", categorical=CategoricalOptions(min_count=2))


def build_store(days: Days, store: Path, upto: int, evict: int | None) -> None:
    prepare(opts(days.path(1)), store, progress=False, log=quiet, partition=days.name(1), unseen_partitions=evict)
    for d in range(2, upto + 1):
        append_partition(store, opts(days.path(d)), progress=False)


def train(store: Path, run_dir: Path, args, *overrides: str) -> tuple[dict[str, Any], float]:
    base = [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(run_dir))}", *MODEL,
            f"train.threads={args.threads}", f"train.epochs={args.epochs}", "train.batch_size=1024",
            "train.eval_batch_size=16384", "train.optimizer=adam", "train.lr=0.001", "train.seed=2024",
            "train.log_every=1000"]
    cfg = load_config(None, base + list(overrides))
    t = time.perf_counter()
    summary = run_training(cfg, resume=False, progress=False, log=quiet)
    return summary, time.perf_counter() - t


def cont(parent: Path) -> str:
    return f"train.continue_from={json.dumps(str(parent))}"


def parts(names: list[str]) -> str:
    return f"data.partitions=[{','.join(names)}]"


def median_ratio(pairs: list[tuple[float, float]]) -> float:
    return statistics.median(a / b for a, b in pairs)


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


# ---------------------------------------------------------------------------------------------- 1

def part1(work: Path, days: Days, args) -> None:
    n = days.days
    print(f"\n## 1. Append cost: day {n} appended to a store of days 1..{n - 1} vs prepared alone "
          f"({days.rows:,} rows/day, min_count 2, evict after {args.evict_after})\n")
    base = work / "p1" / "base"
    if base.exists():
        shutil.rmtree(base)
    t = time.perf_counter()
    build_store(days, base, n - 1, args.evict_after)
    print(f"(building the {n - 1}-day store: {time.perf_counter() - t:.1f} s)\n")
    print("| pair | order | append (s) | prepare alone (s) | ratio |")
    print("|---:|---|---:|---:|---:|")
    pairs = []
    for i in range(args.pairs):
        target = work / "p1" / f"append{i}"
        fresh = work / "p1" / f"fresh{i}"
        for p in (target, fresh):
            shutil.rmtree(p, ignore_errors=True)
        shutil.copytree(base, target)
        timings = {}

        def do_append():
            t0 = time.perf_counter()
            append_partition(target, opts(days.path(n)), progress=False)
            timings["append"] = time.perf_counter() - t0

        def do_prepare():
            t0 = time.perf_counter()
            prepare(opts(days.path(n)), fresh, progress=False, log=quiet, partition=days.name(n),
                    unseen_partitions=args.evict_after)
            timings["prepare"] = time.perf_counter() - t0

        order = (do_append, do_prepare) if i % 2 == 0 else (do_prepare, do_append)
        for f in order:
            f()
        pairs.append((timings["append"], timings["prepare"]))
        print(f"| {i + 1} | {'append first' if i % 2 == 0 else 'prepare first'} | {timings['append']:.3f} | "
              f"{timings['prepare']:.3f} | {timings['append'] / timings['prepare']:.2f}x |")
        shutil.rmtree(target, ignore_errors=True)
        shutil.rmtree(fresh, ignore_errors=True)
    r = median_ratio(pairs)
    print(f"\nmedian append / prepare-alone ratio: **{r:.2f}x** (target <= 1.2x: {verdict(r <= 1.2)})")
    append_split(work, base, days, n)


def append_split(work: Path, base: Path, days: Days, n: int) -> None:
    """Where one more append of day n spends its time (cProfile, cumulative seconds; not in the pairs)."""
    import cProfile
    import pstats

    target = work / "p1" / "profiled"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(base, target)
    prof = cProfile.Profile()
    prof.enable()
    append_partition(target, opts(days.path(n)), progress=False)
    prof.disable()
    shutil.rmtree(target, ignore_errors=True)
    cum: dict[str, float] = {}
    for (file, _line, func), (_cc, _nc, _tt, ct, _callers) in pstats.Stats(prof).stats.items():
        if file.endswith("append.py") or func == "sync_tree":
            cum[func] = max(cum.get(func, 0.0), ct)
    total = cum.get("append_partition", 0.0)
    parts_ = [("reading the vocabulary state (load_states)", "load_states"),
              ("encoding the rows, vocabularies grown (_encode)", "_encode"),
              ("writing pipeline / state / changes (_write_vocab)", "_write_vocab"),
              ("fsync of the new partition (sync_tree)", "sync_tree")]
    known = sum(cum.get(f, 0.0) for _, f in parts_)
    print(f"one more append under cProfile: {total:.3f} s = " + ", ".join(
        f"{label} {cum.get(f, 0.0):.3f}" for label, f in parts_) + f", the rest {total - known:.3f}")


# ---------------------------------------------------------------------------------------------- 2

class Timed:
    """Wraps run.py's progressive_metrics and warm_start to time them inside run_training."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def __enter__(self):
        self.saved = {k: getattr(run_mod, k) for k in ("progressive_metrics", "warm_start")}
        for key, fn in self.saved.items():
            setattr(run_mod, key, self._wrap(key, fn))
        return self

    def _wrap(self, key, fn):
        def wrapped(*a, **kw):
            t = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t
        return wrapped

    def __exit__(self, *exc):
        for key, fn in self.saved.items():
            setattr(run_mod, key, fn)


def part2(work: Path, store: Path, parent: Path, day: str, rows: int, args) -> None:
    print(f"\n## 2. Continual update cost on {day} ({rows:,} rows): continued from {parent.name}, 1 epoch, vs "
          "1 epoch from scratch (deepfm, batch 1024, same store)\n")
    print("| pair | order | continual (s) | scratch (s) | ratio | ratio without progressive | "
          "continual: progressive | warm start | train loop | rest | scratch: train loop | rest |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    pairs, pairs_np = [], []
    for i in range(args.pairs):
        res = {}

        def do_cont():
            with Timed() as tm:
                s, sec = train(store, work / "p2" / f"cont{i}", args, cont(parent), parts([day]), "train.epochs=1")
            res["cont"] = (s, sec, tm.seconds)

        def do_scratch():
            s, sec = train(store, work / "p2" / f"scratch{i}", args, parts([day]), "train.epochs=1")
            res["scratch"] = (s, sec)

        for f in ((do_cont, do_scratch) if i % 2 == 0 else (do_scratch, do_cont)):
            f()
        (cs, csec, split), (ss, ssec) = res["cont"], res["scratch"]
        prog, warm = split.get("progressive_metrics", 0.0), split.get("warm_start", 0.0)
        pairs.append((csec, ssec))
        pairs_np.append((csec - prog, ssec))
        print(f"| {i + 1} | {'continual first' if i % 2 == 0 else 'scratch first'} | {csec:.2f} | {ssec:.2f} | "
              f"{csec / ssec:.2f}x | {(csec - prog) / ssec:.2f}x | {prog:.2f} | {warm:.2f} | "
              f"{cs['train_seconds']:.2f} | {csec - prog - warm - cs['train_seconds']:.2f} | "
              f"{ss['train_seconds']:.2f} | {ssec - ss['train_seconds']:.2f} |")
    r, r_np = median_ratio(pairs), median_ratio(pairs_np)
    print(f"\nmedian continual / scratch ratio: **{r:.2f}x** (target <= 1.2x: {verdict(r <= 1.2)}); the continual "
          "update's time includes scoring the day with its parent (progressive validation: one forward pass over "
          f"the day, columns above); without it: **{r_np:.2f}x** ({verdict(r_np <= 1.2)})")


# ---------------------------------------------------------------------------------------------- 3

def part3(work: Path, days: Days, args, evict: int | None) -> tuple[Path, Path]:
    n = days.days
    tag = f"evict{evict}" if evict else "noevict"
    root = work / f"part3-{tag}"
    shutil.rmtree(root, ignore_errors=True)
    store = root / "store"
    lines = {k: root / k for k in ("continual", "retrain", "frozen")}
    for p in lines.values():
        p.mkdir(parents=True)
    score = ["train.lr=0", "train.epochs=1"]  # a continued run that only scores its parent on the day
    prepare(opts(days.path(1)), store, progress=False, log=quiet, partition=days.name(1), unseen_partitions=evict)
    d1 = lines["continual"] / days.name(1)
    s, sec = train(store, d1, args, parts([days.name(1)]))
    cost = {"continual": [sec], "retrain": [sec]}
    fit = {"continual": [s["train_seconds"]], "retrain": [s["train_seconds"]]}
    prev = {"continual": d1, "retrain": d1}
    rows = []
    for t in range(2, n + 1):
        name = days.name(t)
        append_partition(store, opts(days.path(t)), progress=False)
        c, sec = train(store, lines["continual"] / name, args, cont(prev["continual"]), parts([name]))
        if t < n:
            cost["continual"].append(sec)
            fit["continual"].append(c["train_seconds"])
        prev["continual"] = lines["continual"] / name
        r, _ = train(store, lines["retrain"] / f"score_{name}", args, cont(prev["retrain"]), parts([name]), *score)
        f, _ = train(store, lines["frozen"] / f"score_{name}", args, cont(d1), parts([name]), *score)
        rows.append((t - 1, name, c, r, f))
        if t < n:  # the retrained model of day t, scored on day t+1
            rt = root / "retrain_models" / name
            s, sec = train(store, rt, args, parts([days.name(d) for d in range(1, t + 1)]))
            cost["retrain"].append(sec)
            fit["retrain"].append(s["train_seconds"])
            prev["retrain"] = rt
    sizes = sum(Store(store).vocab_sizes().values())
    print(f"\n## 3. Quality over {n} days ({days.rows:,} rows/day, deepfm emb 8 MLP [64,32], adam 1e-3, batch 1024, "
          f"{args.epochs} epoch(s) per update, eviction {'after ' + str(evict) + ' partitions' if evict else 'off'}; "
          f"{sizes:,} ids at the end)\n")
    print("progressive scores on day t+1 of the model after day t (day t+1 never trained on by the model scored)\n")
    print("| day t | scored on | continual AUC | retrain AUC | frozen AUC | continual - retrain | continual logloss | "
          "retrain logloss | frozen logloss |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    diffs, means = [], {"c": [], "r": [], "f": [], "cl": [], "rl": [], "fl": []}
    for t, name, c, r, f in rows:
        d = c["progressive_auc"] - r["progressive_auc"]
        diffs.append(d)
        for k, s_, key in (("c", c, "progressive_auc"), ("r", r, "progressive_auc"), ("f", f, "progressive_auc"),
                           ("cl", c, "progressive_logloss"), ("rl", r, "progressive_logloss"),
                           ("fl", f, "progressive_logloss")):
            means[k].append(s_[key])
        print(f"| {t} | {name} | {c['progressive_auc']:.4f} | {r['progressive_auc']:.4f} | "
              f"{f['progressive_auc']:.4f} | "
              f"{d:+.4f} | {c['progressive_logloss']:.4f} | {r['progressive_logloss']:.4f} | "
              f"{f['progressive_logloss']:.4f} |")
    m = {k: statistics.mean(v) for k, v in means.items()}
    print(f"| mean | | {m['c']:.4f} | {m['r']:.4f} | {m['f']:.4f} | {statistics.mean(diffs):+.4f} | {m['cl']:.4f} | "
          f"{m['rl']:.4f} | {m['fl']:.4f} |")
    late = rows[len(rows) // 2:]
    cw, rw = sum(cost["continual"]), sum(cost["retrain"])
    print(f"\ntotal training seconds, days 1..{n - 1} (wall of run_training; the continual runs include their "
          f"progressive scoring): continual {cw:.1f} s, retrain {rw:.1f} s: continual / retrain = "
          f"**{cw / rw:.2f}x** (training loops alone: {sum(fit['continual']):.1f} s vs {sum(fit['retrain']):.1f} s)")
    worst = min(diffs)
    print(f"continual - retrain AUC: mean {statistics.mean(diffs):+.4f}, worst day {worst:+.4f} (target: within 0.002 "
          f"or above: mean {verdict(statistics.mean(diffs) >= -0.002)}, every day {verdict(worst >= -0.002)}); "
          f"frozen behind continual by {m['c'] - m['f']:.4f} AUC on average, "
          f"{statistics.mean(c['progressive_auc'] - f['progressive_auc'] for _, _, c, _, f in late):.4f} over the "
          f"last {len(late)} days (drift: {verdict(m['f'] < m['c'])})")
    try:
        from ctrlab.experiments.plots import have_matplotlib, plot_paths
        if have_matplotlib():
            written = plot_paths([lines["continual"], lines["retrain"], lines["frozen"]], root / "plots")
            chart = [p for p in written if p.name == "progressive_auc.png"]
            print(f"chart: {chart[0] if chart else '(no progressive_auc chart written)'}")
    except Exception as exc:  # the chart is a bonus; the figures above stand
        print(f"(chart not written: {exc})")
    return store, lines["continual"]


# ---------------------------------------------------------------------------------------------- 4

def part4(work: Path, args) -> None:
    days = Days(work, args.long_days, args.long_rows, seed=11)
    n = days.days
    root = work / "p4"
    shutil.rmtree(root, ignore_errors=True)
    stores = {"evict": root / "evict", "keep": root / "keep"}
    t = time.perf_counter()
    prepare(opts(days.path(1)), stores["evict"], progress=False, log=quiet, partition=days.name(1),
            unseen_partitions=args.evict_after)
    prepare(opts(days.path(1)), stores["keep"], progress=False, log=quiet, partition=days.name(1))
    table = []
    for d in range(1, n + 1):
        if d > 1:
            for s in stores.values():
                append_partition(s, opts(days.path(d)), progress=False)
        ids = {k: sum(Store(s).vocab_sizes().values()) for k, s in stores.items()}
        side = {k: (s / "vocab" / f"state-v{d:04d}.npz").stat().st_size for k, s in stores.items()}
        table.append((d, days.info["per_day"][d - 1]["rows"], ids, side, days.info["per_day"][d - 1]["ever_seen"]))
    print(f"\n## 4. Vocabulary sizes over {n} days ({args.long_rows:,} rows/day, min_count 2, prepare + append only; "
          f"{time.perf_counter() - t:.1f} s)\n")
    print(f"| day | rows | ids, evict after {args.evict_after} | ids, no eviction | sidecar MB, evict | "
          "sidecar MB, no eviction | values ever seen |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for d, rows, ids, side, ever in table:
        print(f"| {d} | {rows:,} | {ids['evict']:,} | {ids['keep']:,} | {side['evict'] / 1e6:.2f} | "
              f"{side['keep'] / 1e6:.2f} | {ever:,} |")
    half = [r[2]["evict"] for r in table[n // 2:]]
    keep = [r[2]["keep"] for r in table]
    growth_e = (half[-1] - half[0]) / max(1, len(half) - 1)
    growth_k = (keep[-1] - keep[n // 2]) / max(1, n - 1 - n // 2)
    print(f"\nsecond half (days {n // 2 + 1}..{n}): with eviction ids go {half[0]:,} -> {half[-1]:,} (max "
          f"{max(half):,}; {growth_e:+,.0f}/day), without {keep[n // 2]:,} -> {keep[-1]:,} ({growth_k:+,.0f}/day); "
          f"bounded with eviction: {verdict(abs(growth_e) < 0.1 * max(1.0, growth_k) and max(half) <= 1.1 * half[0])}")


# ----------------------------------------------------------------------------------------------

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=7, help="days for parts 1-3 (default 7)")
    parser.add_argument("--rows", type=int, default=50_000, help="rows per day for parts 1-3 (default 50k)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per update in part 3 (default 1)")
    parser.add_argument("--evict-after", type=int, default=3, help="eviction: unseen partitions (default 3)")
    parser.add_argument("--both-eviction", action="store_true", help="part 3 with eviction off as well")
    parser.add_argument("--pairs", type=int, default=3, help="alternating pairs in parts 1 and 2 (default 3)")
    parser.add_argument("--long-days", type=int, default=30, help="days for part 4 (default 30)")
    parser.add_argument("--long-rows", type=int, default=5_000, help="rows per day for part 4 (default 5k)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--part", default="1,2,3,4", help="parts to run, e.g. 1,3 (default all)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 3 days of 3k rows, 8 long days of 1k")
    parser.add_argument("--work", default="", help="keep everything in this folder (default: a temp one)")
    args = parser.parse_args()
    if args.quick:
        args.days, args.rows, args.long_days, args.long_rows, args.pairs = 3, 3000, 8, 1000, 2
        args.evict_after = min(args.evict_after, 2)
    if args.days < 2:
        parser.error("--days: at least 2")
    wanted = {int(p) for p in args.part.split(",") if p.strip()}
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_daily_"))
    work.mkdir(parents=True, exist_ok=True)
    print(machine_line())
    print(f"work dir {work}; torch threads {args.threads}")
    started = time.perf_counter()
    days = Days(work, args.days, args.rows) if wanted & {1, 2, 3} else None
    if 1 in wanted:
        part1(work, days, args)
    store = parent_dir = None
    if 3 in wanted:
        store, parent_dir = part3(work, days, args, args.evict_after)
        if args.both_eviction:
            part3(work, days, args, None)
    if 2 in wanted:
        n = days.days
        if store is None:  # part 2 alone: a store of all days and a parent trained on the day before the last
            store = work / "p2" / "store"
            shutil.rmtree(work / "p2", ignore_errors=True)
            build_store(days, store, n - 1, args.evict_after)
            parent_dir = work / "p2" / "parent_dir"
            train(store, parent_dir / days.name(n - 1), args, parts([days.name(n - 1)]))
            append_partition(store, opts(days.path(n)), progress=False)
        part2(work, store, parent_dir / days.name(n - 1), days.name(n), days.rows, args)
    if 4 in wanted:
        part4(work, args)
    print(f"\n{machine_line()}; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
