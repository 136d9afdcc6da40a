"""Training throughput with 1 vs N processes on this machine (``ctrlab train`` vs ``--nproc N``).

All runs in one invocation, on the same synthetic store, the same model (DeepFM, embedding 10,
MLP 400-400-400, Adam) and the same GLOBAL batch size, one epoch each, every run a fresh
``ctrlab train`` subprocess. The rate is the training loop's samples/s of the epoch (all ranks'
rows together), as written to summary.json (evaluation excluded). Threads:

- 1 process, T threads (T = the cores: what a plain ``ctrlab train`` uses)
- 1 process, 1 thread (the per-rank work of the N-process run, alone)
- N processes, cores // N threads each (``ctrlab train --nproc N``)

    python benchmarks/bench_distributed.py                  # 200k rows, --nproc 2
    python benchmarks/bench_distributed.py --rows 50000 --nproc 2 --batch 2048

Scaling note: each step all-reduces the dense gradients (one flat buffer, ~MLP size) and
all-gathers the sparse ones (batch x fields rows of embedding_dim + 1 floats per rank), so the
communication per step grows with the global batch and the world size while the compute per rank
shrinks. On a 2-core machine, 2 single-threaded processes compete with the intra-op threads one
process would have used anyway, so expect little gain here; the gain comes with more cores than
one process's intra-op threads use well, and with one GPU per rank (nccl), where the per-step
gather of the sparse gradients over NVLink is small next to the MLP compute.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train_rate(store: Path, run_dir: Path, batch: int, threads: int, nproc: int) -> dict:
    args = [sys.executable, "-m", "ctrlab", "train", "--quiet", "--no-resume", "--data", str(store), "--model",
            "deepfm", "--out", str(run_dir), "--set", "train.epochs=1", "--set", f"train.batch_size={batch}",
            "--set", f"train.threads={threads}", "--set", "train.log_every=1000000",
            "--set", "model.params.embedding_dim=10", "--set", "model.params.hidden_units=[400,400,400]"]
    if nproc > 1:
        args += ["--nproc", str(nproc)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run(args, env=env, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"run failed ({' '.join(args)}):\n{proc.stdout}\n{proc.stderr}")
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"samples_per_s": summary["history"][0]["samples_per_s"], "test_auc": summary.get("test_auc")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=4096, help="global batch size")
    parser.add_argument("--nproc", type=int, default=2)
    args = parser.parse_args()

    from ctrlab.data.prepare import PrepareOptions, prepare
    from ctrlab.data.synth import write_synthetic
    from ctrlab.runtime import available_cores

    cores = available_cores()
    per_rank = max(1, cores // args.nproc)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic(root / "synth.tsv", args.rows, seed=1, progress=False)
        prepare(PrepareOptions(train=[str(root / "synth.tsv")]), root / "store", progress=False, log=lambda _: None)
        runs = [("1 process", cores, 1), ("1 process", 1, 1), (f"{args.nproc} processes", per_rank, args.nproc)]
        results = []
        for name, threads, nproc in runs:
            res = train_rate(root / "store", root / f"run_{nproc}_{threads}", args.batch, threads, nproc)
            results.append((name, threads, nproc, res))
    base = results[0][3]["samples_per_s"]
    print(f"DeepFM, {args.rows:,} synthetic rows (~80% train), global batch {args.batch}, {cores} cores")
    print(f"{'run':<14} {'threads/rank':>12} {'samples/s':>10} {'vs 1 proc':>9} {'test AUC':>9}")
    for name, threads, _nproc, res in results:
        auc = f"{res['test_auc']:.4f}" if res["test_auc"] is not None else "-"
        print(f"{name:<14} {threads:>12} {res['samples_per_s']:>10,.0f} {res['samples_per_s'] / base:>8.2f}x {auc:>9}")


if __name__ == "__main__":
    main()
