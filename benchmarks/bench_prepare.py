"""Benchmark `ctrlab prepare` against a pandas baseline, side by side, on synthetic Criteo rows.

For each row count: write (or reuse) a synthetic Criteo TSV, then run in separate child
processes (so peak RSS is measured per run):

* ctrlab:  `ctrlab prepare FILE --out DIR` (parse + fit + transform + split + write),
* pandas:  a lean pandas pipeline: `pd.read_csv` of the file, category codes per categorical
           column fitted on the training rows (unseen -> 0), log1p-standardized counts, a seeded
           8:1:1 split, arrays saved with np.save (the required baseline),
* catcodes: the pipeline the issue describes ("pandas read_csv + category codes"): `pd.read_csv`
           with default dtypes, `astype("category").cat.codes` per categorical column (fitted on all
           rows), fillna + log1p on the counts, a seeded 8:1:1 split, np.save,
* parse-only: ctrlab's own RowReader over the same file, nothing else (the floor: prepare's
           speed is also given as a ratio to it),
* deepctr: the preprocessing of DeepCTR-Torch's Criteo example (what its users copy):
           `pd.read_csv`, fillna, sklearn LabelEncoder per categorical column and MinMaxScaler
           on the counts, both fitted on all rows, then train_test_split,

and print rows/s, the speed ratio ctrlab/pandas, and each run's peak RSS.

    python benchmarks/bench_prepare.py --rows 2000000            # the required comparison
    python benchmarks/bench_prepare.py --rows 2000000,10000000 --no-baseline   # RSS vs size
    python benchmarks/bench_prepare.py --rows 2000000 --no-baseline --repeat 5   # the floor ratio, 5 pairs
    python benchmarks/bench_prepare.py --rows 45000000 --no-baseline --split 1:0:0   # full-Criteo size, 35M distinct
    python benchmarks/bench_prepare.py --rows 2000000 --no-baseline --ray 4   # Ray engine vs local engine

``--ray PARTS`` also writes the file as PARTS part files in a directory (the Ray engine's unit of
work is a file) and runs the local and the Ray engine over that directory, side by side (the Ray
run's RSS is its driver's; its workers are separate processes). ``--min-count 1`` keeps every
value seen in the training rows (the kept vocabulary as large as it gets).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PANDAS_BASELINE = r'''
import sys, time, numpy as np, pandas as pd
src, out = sys.argv[1], sys.argv[2]
names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
t = time.perf_counter()
df = pd.read_csv(src, sep="\t", header=None, names=names,
                 dtype={**{f"C{i}": "string" for i in range(1, 27)}, **{f"I{i}": "float64" for i in range(1, 14)}})
rng = np.random.default_rng(2024)
u = rng.random(len(df))
split = np.where(u < 0.8, 0, np.where(u < 0.9, 1, 2))
train = split == 0
sparse = np.empty((len(df), 26), dtype=np.int32)
for j in range(26):
    col = df[f"C{j + 1}"]
    cats = pd.Index(col[train].dropna().unique())
    sparse[:, j] = cats.get_indexer(col) + 1  # -1 (unseen/missing) -> 0
dense = np.empty((len(df), 13), dtype=np.float32)
for j in range(13):
    v = np.log1p(df[f"I{j + 1}"].clip(lower=0).to_numpy())
    mean, std = np.nanmean(v[train]), np.nanstd(v[train]) or 1.0
    dense[:, j] = np.nan_to_num((v - mean) / std)
label = df["label"].to_numpy().astype(np.uint8)
for k, name in enumerate(["train", "valid", "test"]):
    m = split == k
    np.save(f"{out}/{name}_dense.npy", dense[m]); np.save(f"{out}/{name}_sparse.npy", sparse[m])
    np.save(f"{out}/{name}_label.npy", label[m])
print(len(df), time.perf_counter() - t)
'''


CATCODES_BASELINE = r'''
import sys, time, numpy as np, pandas as pd
src, out = sys.argv[1], sys.argv[2]
names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
t = time.perf_counter()
df = pd.read_csv(src, sep="\t", header=None, names=names)
sparse = np.stack([df[f"C{i}"].astype("category").cat.codes.to_numpy() + 1 for i in range(1, 27)], axis=1)
dense = np.log1p(df[[f"I{i}" for i in range(1, 14)]].fillna(0).clip(lower=0).to_numpy(np.float32))
label = df["label"].to_numpy().astype(np.uint8)
split = np.random.default_rng(2024).choice(3, size=len(df), p=[0.8, 0.1, 0.1])
for k, name in enumerate(["train", "valid", "test"]):
    m = split == k
    np.save(f"{out}/{name}_dense.npy", dense[m]); np.save(f"{out}/{name}_sparse.npy", sparse[m].astype(np.int32))
    np.save(f"{out}/{name}_label.npy", label[m])
print(len(df), time.perf_counter() - t)
'''


DEEPCTR_BASELINE = r'''
import sys, time, numpy as np, pandas as pd
from sklearn.preprocessing import LabelEncoder, MinMaxScaler
from sklearn.model_selection import train_test_split
src, out = sys.argv[1], sys.argv[2]
sparse_features = [f"C{i}" for i in range(1, 27)]
dense_features = [f"I{i}" for i in range(1, 14)]
t = time.perf_counter()
data = pd.read_csv(src, sep="\t", header=None, names=["label"] + dense_features + sparse_features)
data[sparse_features] = data[sparse_features].fillna("-1")
data[dense_features] = data[dense_features].fillna(0)
for feat in sparse_features:
    data[feat] = LabelEncoder().fit_transform(data[feat])
data[dense_features] = MinMaxScaler(feature_range=(0, 1)).fit_transform(data[dense_features])
train, test = train_test_split(data, test_size=0.2, random_state=2020)
for name, part in (("train", train), ("test", test)):
    np.save(f"{out}/{name}_dense.npy", part[dense_features].to_numpy(np.float32))
    np.save(f"{out}/{name}_sparse.npy", part[sparse_features].to_numpy(np.int32))
    np.save(f"{out}/{name}_label.npy", part["label"].to_numpy(np.uint8))
print(len(data), time.perf_counter() - t)
'''


# the floor: ctrlab's own reader over the same file (parse and check every row, nothing else),
# the rate no prepare can beat (issue 18 states prepare's speed as a ratio to it)
PARSE_ONLY = r'''
import sys, time
from pathlib import Path
from ctrlab.data.formats import detect_format, file_schema
from ctrlab.data.readers import RowReader
t = time.perf_counter()
path = Path(sys.argv[1])
_, schema = file_schema(path, detect_format(path), None)
rows = sum(chunk.table.num_rows for chunk in RowReader([path], schema))
print(rows, time.perf_counter() - t)
'''


def run_child(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; return (wall seconds, peak RSS in MiB, stdout)."""
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t
    out, err = proc.stdout.read(), proc.stderr.read()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024.0, out


def compare_engines(src: Path, work: Path, rows: int, parts: int, extra: list[str]) -> dict:
    """The local and the Ray engine over ``src`` cut into ``parts`` part files, same invocation."""
    import numpy as np

    from ctrlab.data.store import SPLITS, Store

    folder = work / f"parts_{rows}_{parts}"
    if not folder.is_dir():
        tmp = work / f".parts_{rows}_{parts}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        per_part = -(-rows // parts)
        with open(src, "rb") as fh:
            for k in range(parts):
                with open(tmp / f"part-{k:03d}.tsv", "wb") as out:
                    for _ in range(per_part):
                        line = fh.readline()
                        if not line:
                            break
                        out.write(line)
        tmp.rename(folder)
    stores = {engine: work / f"store_{rows}_{engine}" for engine in ("local", "ray")}
    timing = {}
    for engine, out in stores.items():
        shutil.rmtree(out, ignore_errors=True)
        timing[engine] = run_child([sys.executable, "-m", "ctrlab", "prepare", str(folder), "--out", str(out), "--quiet",
                                    "--engine", engine, *extra])
    a, b = Store(stores["local"]), Store(stores["ray"])
    identical = (stores["local"] / "pipeline.json").read_bytes() == (stores["ray"] / "pipeline.json").read_bytes() and all(
        np.array_equal(np.asarray(getattr(a.split(s), k)), np.asarray(getattr(b.split(s), k)))
        for s in SPLITS for k in ("dense", "sparse", "label"))
    for out in stores.values():
        shutil.rmtree(out, ignore_errors=True)
    return {"parts": parts, "local_parts_s": timing["local"][0], "local_parts_rss_mib": timing["local"][1],
            "ray_s": timing["ray"][0], "ray_rss_mib": timing["ray"][1], "identical": identical}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", default="2000000", help="comma-separated row counts (default 2000000)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ctrlab-bench"),
                    help="where synthetic inputs are cached")
    ap.add_argument("--no-baseline", action="store_true", help="skip the pandas baseline")
    ap.add_argument("--deepctr", action="store_true", help="also run the DeepCTR-Torch example preprocessing")
    ap.add_argument("--keep", action="store_true", help="keep the synthetic inputs for a next run")
    ap.add_argument("--repeat", type=int, default=1, help="runs of prepare and of the parse-only floor, alternated; "
                                                          "the pair with the median ratio is reported (default 1)")
    ap.add_argument("--min-count", type=int, help="prepare's --min-count (default: prepare's)")
    ap.add_argument("--vocab-memory-mib", help="prepare's --vocab-memory-mib (0: count in memory, no spilling)")
    ap.add_argument("--split", help="prepare's --split (default 8:1:1); 1:0:0 makes every row a training row "
                                    "(every distinct value counted)")
    ap.add_argument("--ray", type=int, metavar="PARTS", help="also compare the Ray engine with the local one over "
                                                             "the file cut into PARTS part files")
    args = ap.parse_args()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    from ctrlab.data.synth import write_synthetic

    results = []
    for rows in [int(r) for r in args.rows.split(",")]:
        src = work / f"synth_{rows}.tsv"
        if not src.exists():
            print(f"generating {rows:,} synthetic rows -> {src}", flush=True)
            write_synthetic(src, rows, seed=1, progress=False)
        size = src.stat().st_size
        out = work / f"store_{rows}"
        shutil.rmtree(out, ignore_errors=True)
        extra = ([] if args.min_count is None else ["--min-count", str(args.min_count)]) + \
            ([] if args.split is None else ["--split", args.split]) + \
            ([] if args.vocab_memory_mib is None else ["--vocab-memory-mib", args.vocab_memory_mib])
        pairs = []  # (prepare, parse-only) runs alternated: a noisy machine slows both alike
        for _ in range(args.repeat):
            shutil.rmtree(out, ignore_errors=True)
            run = run_child([sys.executable, "-m", "ctrlab", "prepare", str(src), "--out", str(out), "--quiet", *extra])
            pairs.append((run, run_child([sys.executable, "-c", PARSE_ONLY, str(src)])))
        meta = json.loads((out / "meta.json").read_text())
        ratios = sorted(parse[0] / prep[0] for prep, parse in pairs)
        (wall, rss, _), (pwall, prss, _) = sorted(pairs, key=lambda pair: pair[1][0] / pair[0][0])[len(pairs) // 2]
        res = {"rows": rows, "bytes": size, "ctrlab_s": wall, "ctrlab_rows_s": rows / wall, "ctrlab_rss_mib": rss,
               "ctrlab_internal_rows_s": meta["rows_per_second"],
               "ids": sum(meta["spec"]["vocab_sizes"]),
               "distinct": sum(f.get("distinct_train", 0) for f in meta["fields"].values()),
               "parse_s": pwall, "parse_rows_s": rows / pwall, "parse_rss_mib": prss, "of_parse": pwall / wall,
               "of_parse_runs": ratios, "peak_rss_max_mib": max(prep[1] for prep, _ in pairs)}
        shutil.rmtree(out, ignore_errors=True)
        if not args.no_baseline:
            base_out = work / f"pandas_{rows}"
            base_out.mkdir(exist_ok=True)
            bwall, brss, _ = run_child([sys.executable, "-c", PANDAS_BASELINE, str(src), str(base_out)])
            res.update({"pandas_s": bwall, "pandas_rows_s": rows / bwall, "pandas_rss_mib": brss,
                        "speedup": bwall / wall})
            cwall, crss, _ = run_child([sys.executable, "-c", CATCODES_BASELINE, str(src), str(base_out)])
            res.update({"catcodes_s": cwall, "catcodes_rows_s": rows / cwall, "catcodes_rss_mib": crss,
                        "catcodes_speedup": cwall / wall})
            if args.deepctr:
                dwall, drss, _ = run_child([sys.executable, "-c", DEEPCTR_BASELINE, str(src), str(base_out)])
                res.update({"deepctr_s": dwall, "deepctr_rows_s": rows / dwall, "deepctr_rss_mib": drss,
                            "deepctr_speedup": dwall / wall})
            shutil.rmtree(base_out, ignore_errors=True)
        if args.ray:
            res.update(compare_engines(src, work, rows, args.ray, extra))
        results.append(res)
        if not args.keep:
            src.unlink()

    print()
    print(f"{'rows':>12} {'MB':>7} {'ctrlab rows/s':>14} {'peak RSS':>9} {'pandas rows/s':>14} {'peak RSS':>9} {'ratio':>6}")
    for r in results:
        base = (f"{r['pandas_rows_s']:>14,.0f} {r['pandas_rss_mib']:>7,.0f}Mi {r['speedup']:>5.1f}x"
                if "pandas_s" in r else f"{'-':>14} {'-':>9} {'-':>6}")
        print(f"{r['rows']:>12,} {r['bytes'] / 1e6:>7,.0f} {r['ctrlab_rows_s']:>14,.0f} {r['ctrlab_rss_mib']:>7,.0f}Mi {base}")
    for r in results:
        print(f"{r['rows']:>12,} parse-only floor (RowReader over the same file): {r['parse_rows_s']:,.0f} rows/s, peak RSS "
              f"{r['parse_rss_mib']:,.0f} MiB; prepare runs at {r['of_parse']:.2f}x of it ({r['distinct']:,} distinct values in the "
              f"training rows, {r['ids']:,} ids kept)"
              + (f"; ratios over {len(r['of_parse_runs'])} alternated pairs: "
                 f"{', '.join(f'{x:.2f}' for x in r['of_parse_runs'])}; prepare's peak RSS at most "
                 f"{r['peak_rss_max_mib']:,.0f} MiB" if len(r["of_parse_runs"]) > 1 else ""))
    for r in results:
        if "catcodes_s" in r:
            print(f"{r['rows']:>12,} pandas read_csv + category codes: {r['catcodes_rows_s']:,.0f} rows/s, "
                  f"peak RSS {r['catcodes_rss_mib']:,.0f} MiB; ctrlab is {r['catcodes_speedup']:.1f}x faster")
        if "deepctr_s" in r:
            print(f"{r['rows']:>12,} DeepCTR-Torch example preprocessing: {r['deepctr_rows_s']:,.0f} rows/s, "
                  f"peak RSS {r['deepctr_rss_mib']:,.0f} MiB; ctrlab is {r['deepctr_speedup']:.1f}x faster")
    for r in results:
        if "ray_s" in r:
            print(f"{r['rows']:>12,} in {r['parts']} part files: local engine {r['rows'] / r['local_parts_s']:,.0f} rows/s "
                  f"(peak RSS {r['local_parts_rss_mib']:,.0f} MiB), Ray engine {r['rows'] / r['ray_s']:,.0f} rows/s "
                  f"(driver peak RSS {r['ray_rss_mib']:,.0f} MiB): Ray/local speed {r['local_parts_s'] / r['ray_s']:.2f}x; "
                  f"stores identical: {r['identical']}")
    print("\n(rows/s = wall time of the whole child process, interpreter start included; "
          "ratio = pandas time / ctrlab time, same input, same machine, same invocation)")
    r = results[-1]
    print(f"extrapolated full Criteo Kaggle train (45,840,617 rows) at {r['ctrlab_rows_s']:,.0f} rows/s: "
          f"{45_840_617 / r['ctrlab_rows_s'] / 60:.1f} minutes")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
