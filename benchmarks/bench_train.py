"""Training speed: `ctrlab train`'s loop vs the bare MLP and vs a DataLoader loop, side by side.

Parts (all in one invocation, same process, same threads):

1. bare MLP: DeepFM's MLP alone (input 390 = 39 fields x 10, 400-400-400-1) on random tensors,
   forward + backward + Adam step: the ceiling set by the matrix multiplies.
2. ctrlab: DeepFM (embedding 10, MLP 400-400-400, batch 4096, Adam) trained by ctrlab's Trainer
   for one epoch over the train split of a synthetic store (default ~900k rows).
3. DataLoader: the same model trained the way most CTR libraries do it: the split loaded into
   tensors, `DataLoader(TensorDataset(...), batch_size=4096, shuffle=True)`, one torch Adam over
   all parameters (dense embedding gradients).
4. table size: ctrlab's training step with a 100k-row vs a 10M-row embedding table (the
   row-sparse optimizer's cost should follow the rows a batch touches, not the table).

    python benchmarks/bench_train.py                 # 1M synthetic rows, 90% for training
    python benchmarks/bench_train.py --rows 200000   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch


def bare_mlp_rate(batch: int, steps: int) -> float:
    from ctrlab.nn import MLP

    mlp = MLP(390, (400, 400, 400), output_dim=1)
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-3, foreach=True)
    x = torch.randn(batch, 390)
    y = torch.randint(0, 2, (batch,)).float()
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss_fn(mlp(x).squeeze(-1), y).backward()
        opt.step()

    for _ in range(3):
        step()
    t = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t)


def ctrlab_rate(store_dir: Path, run_dir: Path, max_rows: int | None) -> tuple[float, int]:
    from ctrlab.config import TrainConfig
    from ctrlab.data.store import Store
    from ctrlab.models import build_model
    from ctrlab.train.trainer import Trainer, set_seed

    store = Store(store_dir)
    set_seed(1)
    model = build_model("deepfm", store.spec, {"embedding_dim": 10, "hidden_units": [400, 400, 400]})
    cfg = TrainConfig(epochs=1, batch_size=4096, optimizer="adam", lr=1e-3)
    trainer = Trainer(model, store, cfg, run_dir, progress=False, log=lambda s: None)
    run_dir.mkdir(parents=True, exist_ok=True)
    _, rate = trainer.train_epoch()
    return rate, len(store.split("train"))


def dataloader_rate(store_dir: Path, batches: int) -> float:
    from torch.utils.data import DataLoader, TensorDataset

    from ctrlab.data.store import Store
    from ctrlab.models import build_model

    store = Store(store_dir)
    split = store.split("train")
    ds = TensorDataset(torch.from_numpy(np.array(split.dense)), torch.from_numpy(np.array(split.sparse, np.int64)),
                       torch.from_numpy(np.array(split.label, np.float32)))
    loader = DataLoader(ds, batch_size=4096, shuffle=True)
    torch.manual_seed(1)
    model = build_model("deepfm", store.spec, {"embedding_dim": 10, "hidden_units": [400, 400, 400]})
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    seen = 0
    t = None
    for i, (d, s, y) in enumerate(loader):
        if i == 2:  # warm-up done
            t, seen = time.perf_counter(), 0
        opt.zero_grad()
        loss_fn(model(d, s), y).backward()
        opt.step()
        seen += len(y)
        if i >= batches + 2:
            break
    return seen / (time.perf_counter() - t)


def table_size_step_ms(total_rows: int, steps: int = 20) -> float:
    from ctrlab.fields import FeatureSpec
    from ctrlab.models import build_model
    from ctrlab.train.optim import RowSparseOptimizer, dense_optimizer
    from ctrlab.train.trainer import embedding_parameters

    spec = FeatureSpec.criteo_like([total_rows // 26] * 26)
    model = build_model("deepfm", spec, {"embedding_dim": 10, "hidden_units": [400, 400, 400]})
    sparse_params = embedding_parameters(model)
    ids = {id(p) for p in sparse_params}
    sopt = RowSparseOptimizer(sparse_params, "adam", lr=1e-3)
    dopt = dense_optimizer([p for p in model.parameters() if id(p) not in ids], "adam", 1e-3, 0.0, 0.0)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(4096, 13), torch.randint(0, total_rows // 26, (4096, 26), generator=gen),
                torch.randint(0, 2, (4096,), generator=gen).float()) for _ in range(4)]
    loss_fn = torch.nn.BCEWithLogitsLoss()

    def step(b) -> None:
        sopt.zero_grad()
        dopt.zero_grad(set_to_none=True)
        loss_fn(model(b[0], b[1]), b[2]).backward()
        dopt.step()
        sopt.step()

    for b in batches:
        step(b)
    t = time.perf_counter()
    for i in range(steps):
        step(batches[i % 4])
    return (time.perf_counter() - t) / steps * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows (90%% train)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "ctrlab-bench-train"))
    ap.add_argument("--dataloader-batches", type=int, default=40)
    ap.add_argument("--skip-table", action="store_true", help="skip the table-size part")
    args = ap.parse_args()
    from ctrlab.runtime import configure_torch_threads

    threads = configure_torch_threads()
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    store_dir = work / f"store_{args.rows}"
    if not (store_dir / "meta.json").exists():
        from ctrlab.data.prepare import PrepareOptions, prepare
        from ctrlab.data.synth import write_synthetic

        raw = work / f"synth_{args.rows}.tsv"
        write_synthetic(raw, args.rows, seed=3, progress=False)
        prepare(PrepareOptions(train=[str(raw)], split=(0.9, 0.1, 0.0)), store_dir, progress=False)
        raw.unlink()

    results: dict[str, float] = {"threads": threads}
    results["bare_mlp"] = bare_mlp_rate(4096, 20)
    rate, n = ctrlab_rate(store_dir, work / "run", None)
    results["ctrlab"] = rate
    results["train_rows"] = n
    results["dataloader"] = dataloader_rate(store_dir, args.dataloader_batches)
    results["bare_mlp_after"] = bare_mlp_rate(4096, 20)  # machines drift: measure the ceiling twice
    bare = (results["bare_mlp"] + results["bare_mlp_after"]) / 2
    print(f"torch threads: {threads}")
    print(f"bare MLP (390-400-400-400-1, fwd+bwd+Adam): {results['bare_mlp']:,.0f} / {results['bare_mlp_after']:,.0f} samples/s")
    print(f"ctrlab Trainer, DeepFM, 1 epoch of {n:,} rows: {rate:,.0f} samples/s "
          f"= {rate / bare:.2f}x the bare MLP")
    print(f"DataLoader(TensorDataset) loop, same model:   {results['dataloader']:,.0f} samples/s; "
          f"ctrlab is {rate / results['dataloader']:.2f}x faster")
    print(f"extrapolated: {45_840_617 / rate / 60:.1f} minutes per epoch on the full Criteo train file (45.8M rows)")
    if not args.skip_table:
        small = table_size_step_ms(100_000)
        big = table_size_step_ms(10_000_000)
        results.update({"step_ms_100k": small, "step_ms_10M": big})
        print(f"training step, 100k-row table: {small:.1f} ms; 10M-row table: {big:.1f} ms; ratio {big / small:.2f}x")
    print(json.dumps(results))
    shutil.rmtree(work / "run", ignore_errors=True)


if __name__ == "__main__":
    main()
