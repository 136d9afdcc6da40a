r"""Before/after: the same benchmarks from two revisions of ctrlab, side by side in one invocation.

Timings on a shared machine drift by more than a refactoring should change them, so a ratio is only
worth reading when both sides ran under the same conditions: here they alternate (A B, B A, A B,
...) per benchmark, and the table gives each figure's median per side, the ratio of the medians,
and the median of the per-round ratios (``paired``: each round's two runs are neighbours in time).

* before: ``--before REV`` exported with ``git archive`` into a temporary folder (read-only for
  the repository: no worktree is registered, nothing is left behind if this is interrupted);
* after: the working tree as it is (uncommitted changes included), or ``--after REV`` exported
  the same way.

Each run executes a benchmark command in the root of its side's checkout with ``PYTHONPATH`` set
to that root, with this same interpreter (the venv's packages serve both sides; the editable
install of ctrlab yields to PYTHONPATH, which is checked before anything runs). So each side runs
its own revision of the benchmark script, against its own revision of the library.

Built-in benchmarks (short sizes: about 6 minutes in all on 2 quiet cores, far more on a busy
machine; see BUILT_IN): ``inference`` (bench_inference.py), ``train`` (bench_train.py), ``prepare``
(bench_prepare.py). Others: ``--bench NAME COMMAND`` with one or more ``--figure NAME LABEL REGEX``
(the regex's first group is the number; thousands separators are dropped). ``{python}`` in a
command is this interpreter, ``{work}`` a scratch folder per side that lives across rounds (caches).

    python benchmarks/before_after.py --before f5530e1                  # inference, train, prepare
    python benchmarks/before_after.py --before f5530e1 --only inference --rounds 5
    python benchmarks/before_after.py --before f5530e1 --only serve \
        --bench serve "{python} benchmarks/bench_serve.py --seconds 10 --upload-repeats 3" \
        --figure serve "1000-row rows/s" "typed JSON values \(2 connections\): ([\d,]+) rows/s" \
        --figure serve "5-row p99 ms" "5-row requests.* p99 ([\d.]+) ms"
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NUMBER = r"(-?[\d,]*\.?\d+(?:[eE][-+]?\d+)?)"


@dataclass
class Figure:
    """One number a benchmark prints: ``regex``'s first group; ``better`` is "higher", "lower" or "?"."""

    label: str
    regex: str
    better: str = "?"


@dataclass
class Benchmark:
    name: str
    command: str
    figures: list[Figure] = field(default_factory=list)


# Sizes keep a run to ~10-40 s on 2 cores; the figures are the ones each script prints per run.
BUILT_IN = [
    Benchmark("inference", "{python} benchmarks/bench_inference.py --rows 100000 --train-rows 20000 "
                           "--latency-rows 1000 --repeats 1 --skip-bench", [
        Figure("predict onnx rows/s", rf"predict --backend onnx\s+{NUMBER} rows/s", "higher"),
        Figure("predict torch rows/s", rf"predict --backend torch\s+{NUMBER} rows/s", "higher"),
        Figure("parse-only rows/s", rf"parse only \(RowReader\)\s+{NUMBER} rows/s", "higher"),
        Figure("1-row onnx p50 ms", rf"^\s+onnx\s+p50 {NUMBER} ms", "lower"),
        Figure("1-row onnx p99 ms", rf"^\s+onnx\s+p50 \S+ ms\s+p90 \S+ ms\s+p99 {NUMBER} ms", "lower"),
        Figure("1-row torch p50 ms", rf"^\s+torch\s+p50 {NUMBER} ms", "lower"),
    ]),
    Benchmark("train", "{python} benchmarks/bench_train.py --rows 100000 --skip-table --dataloader-batches 8 "
                       "--workdir {work}/train", [
        Figure("trainer samples/s", rf"ctrlab Trainer, DeepFM, 1 epoch of [\d,]+ rows: {NUMBER} samples/s", "higher"),
        Figure("trainer / bare MLP", rf"= {NUMBER}x the bare MLP", "higher"),
    ]),
    Benchmark("prepare", "{python} benchmarks/bench_prepare.py --rows 500000 --no-baseline --keep "
                         "--workdir {work}/prepare", [
        Figure("prepare rows/s (process)", rf"^\s+500,000\s+\d+\s+{NUMBER}\s", "higher"),
        Figure("prepare rows/s (internal)", rf'"ctrlab_internal_rows_s": {NUMBER}', "higher"),
        Figure("prepare peak RSS MiB", rf"^\s+500,000\s+\d+\s+[\d,]+\s+{NUMBER}Mi", "lower"),
    ]),
]


@dataclass
class Side:
    """One revision: where its code is, what it is, and its scratch folder."""

    name: str
    root: Path
    description: str
    work: Path


def git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"git {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def export_revision(rev: str, dest: Path) -> str:
    """The tree of ``rev`` written to ``dest`` (``git archive``); returns its commit line."""
    commit = git("rev-parse", "--verify", f"{rev}^{{commit}}")
    dest.mkdir(parents=True)
    archive = dest.parent / f"{dest.name}.tar"
    with open(archive, "wb") as fh:
        subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit], check=True, stdout=fh)
    with tarfile.open(archive) as tar:
        tar.extractall(dest, filter="data")
    archive.unlink()
    return git("log", "-1", "--format=%h %s", commit)


def side_env(side: Side) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(side.root) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def check_side(side: Side) -> None:
    """Refuse to measure a side whose ``import ctrlab`` resolves anywhere but its own checkout, and
    compile its bytecode now so the first timed run does not pay for it."""
    found = subprocess.run([sys.executable, "-c", "import ctrlab; print(ctrlab.__file__)"], cwd=side.root,
                           env=side_env(side), check=True, capture_output=True, text=True).stdout.strip()
    if not Path(found).resolve().is_relative_to(side.root.resolve()):
        raise SystemExit(f"{side.name}: `import ctrlab` loads {found}, not the checkout at {side.root}")
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(side.root / "ctrlab")], check=True,
                   capture_output=True)


def run_once(bench: Benchmark, side: Side, log_dir: Path, round_no: int) -> dict[str, float | None]:
    """One run of ``bench`` on ``side``: each figure's value (None when its regex found nothing)."""
    command = bench.command.format(python=shlex.quote(sys.executable), work=shlex.quote(str(side.work)))
    started = time.perf_counter()
    done = subprocess.run(command, shell=True, cwd=side.root, env=side_env(side), capture_output=True, text=True)
    seconds = time.perf_counter() - started
    output = done.stdout + "\n" + done.stderr
    (log_dir / f"{bench.name}.{side.name}.{round_no}.log").write_text(f"$ {command}\n{output}")
    if done.returncode != 0:
        print(f"  {bench.name} {side.name} round {round_no}: FAILED (exit {done.returncode}) after {seconds:.0f} s; "
              f"last lines:\n    " + "\n    ".join(output.strip().splitlines()[-8:]), flush=True)
        return {f.label: None for f in bench.figures}
    values: dict[str, float | None] = {}
    for fig in bench.figures:
        match = re.search(fig.regex, output, re.MULTILINE)
        values[fig.label] = float(match.group(1).replace(",", "")) if match else None
    shown = ", ".join(f"{k} {v:,.4g}" if v is not None else f"{k} (not found)" for k, v in values.items())
    print(f"  {bench.name} {side.name:<6} round {round_no}: {seconds:5.1f} s  {shown}", flush=True)
    return values


def alternating(rounds: int) -> list[tuple[int, int]]:
    """(round, side index) pairs: A B, B A, A B, ... so that slow drift favours neither side."""
    return [(r, s if r % 2 == 0 else 1 - s) for r in range(rounds) for s in (0, 1)]


def median(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def cell(value: float | None) -> str:
    if value is None:
        return f"{'-':>12}"
    return f"{value:12,.0f}" if abs(value) >= 1000 else f"{value:12.4g}"


def paired_ratio(before: list[float | None], after: list[float | None]) -> float | None:
    """The median over rounds of after/before within a round: the two runs of a round are
    neighbours in time, so this ratio resists a machine whose load changes during the invocation."""
    ratios = [a / b for b, a in zip(before, after) if a is not None and b]
    return statistics.median(ratios) if ratios else None


def format_table(benches: list[Benchmark], results: dict[tuple[str, str, str], list[float | None]],
                 rounds: int) -> str:
    """benchmark | figure | before median | after median | after/before (of the medians) | paired
    (median of per-round ratios) | better | runs whose output held the figure."""
    header = (f"{'benchmark':<10} {'figure':<26} {'before':>12} {'after':>12} {'after/before':>12} "
              f"{'paired':>8}  better  runs read")
    lines = [header, "-" * len(header)]
    for bench in benches:
        for fig in bench.figures:
            runs_before = results[(bench.name, fig.label, "before")]
            runs_after = results[(bench.name, fig.label, "after")]
            before, after = median(runs_before), median(runs_after)
            ratio = f"{after / before:12.3f}" if before and after is not None else f"{'-':>12}"
            paired = paired_ratio(runs_before, runs_after)
            paired_text = f"{paired:8.3f}" if paired is not None else f"{'-':>8}"
            found = [sum(v is not None for v in runs) for runs in (runs_before, runs_after)]
            read = "all" if found == [rounds, rounds] else f"before {found[0]}/{rounds}, after {found[1]}/{rounds}"
            lines.append(f"{bench.name:<10} {fig.label:<26} {cell(before)} {cell(after)} {ratio} {paired_text}  "
                         f"{fig.better:<6}  {read}")
    return "\n".join(lines)


def chosen_benchmarks(args: argparse.Namespace) -> list[Benchmark]:
    benches = {b.name: b for b in BUILT_IN}
    for name, command in args.bench or []:
        benches[name] = Benchmark(name, command)
    for name, label, regex in args.figure or []:
        if name not in benches:
            raise SystemExit(f"--figure {name}: no benchmark of that name (give --bench {name} COMMAND first)")
        if re.compile(regex).groups < 1:
            raise SystemExit(f"--figure {name} {label}: the regex needs a group around the number")
        benches[name].figures.append(Figure(label, regex))
    names = args.only.split(",") if args.only else [b.name for b in BUILT_IN] + [n for n, _ in args.bench or []]
    unknown = [n for n in names if n not in benches]
    if unknown:
        raise SystemExit(f"unknown benchmark(s) {unknown}; known: {sorted(benches)}")
    empty = [n for n in names if not benches[n].figures]
    if empty:
        raise SystemExit(f"benchmark(s) {empty} have no --figure to read")
    return [benches[n] for n in dict.fromkeys(names)]


def load_average() -> str:
    """The 1, 5 and 15 minute load averages ("n/a" where the platform has none): printed beside
    timings so that a reader sees how busy the machine was (the other benchmarks import it)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", required=True, help="the revision to compare against (e.g. f5530e1)")
    ap.add_argument("--after", help="a revision for the after side (default: the working tree as it is)")
    ap.add_argument("--rounds", type=int, default=3, help="runs per side and benchmark (default 3)")
    ap.add_argument("--only", help="comma-separated benchmark names (default: all built-in and --bench ones)")
    ap.add_argument("--bench", nargs=2, action="append", metavar=("NAME", "COMMAND"), help="an extra benchmark")
    ap.add_argument("--figure", nargs=3, action="append", metavar=("NAME", "LABEL", "REGEX"),
                    help="a number that benchmark NAME prints (first regex group)")
    ap.add_argument("--logs", help="keep every run's output in this folder (default: a temporary one, removed)")
    args = ap.parse_args()
    if args.rounds < 1:
        raise SystemExit("--rounds must be >= 1")
    benches = chosen_benchmarks(args)

    scratch = Path(tempfile.mkdtemp(prefix="ctrlab-before-after-"))
    log_dir = Path(args.logs) if args.logs else scratch / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    try:
        before = Side("before", scratch / "before", export_revision(args.before, scratch / "before"),
                      scratch / "work-before")
        if args.after:
            after = Side("after", scratch / "after", export_revision(args.after, scratch / "after"),
                         scratch / "work-after")
        else:
            dirty = " (with uncommitted changes)" if git("status", "--porcelain", "--untracked-files=no") else ""
            after = Side("after", REPO, f"working tree at {git('log', '-1', '--format=%h %s')}{dirty}",
                         scratch / "work-after")
        sides = (before, after)
        for side in sides:
            side.work.mkdir()
            check_side(side)
            print(f"{side.name}: {side.description}")
        print(f"{os.cpu_count()} CPUs; load average {load_average()}; {args.rounds} rounds, alternating", flush=True)

        results: dict[tuple[str, str, str], list[float | None]] = {
            (b.name, f.label, s.name): [] for b in benches for f in b.figures for s in sides}
        started = time.perf_counter()
        for bench in benches:
            for round_no, index in alternating(args.rounds):
                side = sides[index]
                for label, value in run_once(bench, side, log_dir, round_no + 1).items():
                    results[(bench.name, label, side.name)].append(value)
        print(f"\nmedians of {args.rounds} runs per side ({time.perf_counter() - started:.0f} s in all; "
              f"load average now {load_average()}):\n")
        print(format_table(benches, results, args.rounds))
        if args.logs:
            print(f"\nrun outputs in {log_dir}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
