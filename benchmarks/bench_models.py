"""Speed of every registered model at Criteo shape, and fused vs per-field embeddings.

Criteo shape: 13 dense + 26 sparse fields, ~1M ids in total (skewed per-field vocab
sizes), batch 4096, embedding_dim 10 and 16, other hyperparameters at their defaults.
Ids are uniform within each field; dense values are standard normal.

Note FFM's ``embedding_dim`` is the size of each (feature, field) vector, so its table
holds 1M x 39 x k floats (1.6 GB at k=10, 2.5 GB at k=16; its own default is k=4), and the
process needs ~6 GB of memory at k=16.

Per model it prints the parameter count (all / without embedding tables), the eval-mode
forward time under ``torch.no_grad()`` and the train-mode forward+backward time (BCE
loss, gradients reset to None each step as ``optimizer.zero_grad()`` does), each the
median of a few runs after warmup (fewer for very slow models), with
``torch.set_num_threads`` = available cores.

Then, in the same run, the baseline comparison: ctrlab's fused FieldEmbedding (one table,
one gather on ``sparse + offsets``) against 26 separate ``nn.Embedding`` lookups
(forward+backward, embedding_dim 16), printed as a ratio ``separate / fused`` (> 1 means
fused is faster). A third row shows the same single table with nn.Embedding's own
backward, i.e. what FieldEmbedding's CPU training path (see ctrlab/nn/embedding.py) buys.

Usage: python benchmarks/bench_models.py [--quick] [--models deepfm,dcn] [--batch 4096]
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time

import torch
from torch import nn

from ctrlab.fields import FeatureSpec
from ctrlab.models import build_model, flat_models, hyperparameter_defaults
from ctrlab.nn import FieldEmbedding

N_DENSE = 13
N_SPARSE = 26
TOTAL_IDS = 1_000_000


def criteo_vocab_sizes(total: int = TOTAL_IDS, fields: int = N_SPARSE) -> list[int]:
    """Skewed per-field sizes (from 4 up to ~40% of the total), summing to ``total``."""
    ratio = 1.5
    raw = [ratio**j for j in range(fields)]
    scale = (total - 4 * fields) / sum(raw)
    sizes = [4 + int(r * scale) for r in raw]
    sizes[-1] += total - sum(sizes)
    return sizes


def make_inputs(spec: FeatureSpec, batch: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    dense = torch.randn(batch, spec.n_dense, generator=generator)
    sparse = torch.stack([torch.randint(0, v, (batch,), generator=generator) for v in spec.vocab_sizes], dim=1)
    labels = (torch.rand(batch, generator=generator) > 0.75).float()
    return dense, sparse, labels


def median_ms(step, warmup: int, reps: int, budget_ms: float | None = None) -> float:
    """Median wall time of ``reps`` calls after ``warmup`` calls (at least one).

    With ``budget_ms``, slow steps get fewer reps (never under 3): reps is capped at
    budget / (time of the first warmup call), so the heaviest models (FFM's 39-vector
    table, FiBiNET's 14,820-wide MLP input) keep the whole run within a few minutes.
    """
    start = time.perf_counter()
    step()
    first_ms = (time.perf_counter() - start) * 1000.0
    for _ in range(warmup - 1):
        step()
    if budget_ms is not None:
        reps = max(3, min(reps, int(budget_ms / max(first_ms, 1e-3))))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(times)


def time_model(
    model: nn.Module, dense, sparse, labels, warmup: int, reps: int, budget_ms: float
) -> tuple[float, float]:
    loss_fn = nn.BCEWithLogitsLoss()

    def forward():
        with torch.no_grad():
            model(dense, sparse)

    def forward_backward():
        for param in model.parameters():
            param.grad = None
        loss_fn(model(dense, sparse), labels).backward()

    model.eval()
    forward_ms = median_ms(forward, warmup, reps, budget_ms)
    model.train()
    train_ms = median_ms(forward_backward, warmup, reps, budget_ms)
    return forward_ms, train_ms


def count_parameters(model: nn.Module) -> tuple[int, int]:
    total = sum(p.numel() for p in model.parameters())
    tables = sum(m.weight.numel() for m in model.modules() if isinstance(m, FieldEmbedding))
    return total, total - tables


class NaiveFusedEmbedding(nn.Module):
    """Reference: the same single table and offsets, but nn.functional.embedding's own
    backward (what FieldEmbedding would be without its CPU training path)."""

    def __init__(self, vocab_sizes, dim: int) -> None:
        super().__init__()
        self.table = nn.Embedding(sum(vocab_sizes), dim)
        offsets = torch.tensor([0] + list(vocab_sizes[:-1])).cumsum(0)
        self.register_buffer("offsets", offsets)

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        return self.table(sparse + self.offsets)


class SeparateEmbeddings(nn.Module):
    """Baseline: one nn.Embedding per field, looked up field by field and stacked."""

    def __init__(self, vocab_sizes, dim: int) -> None:
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(v, dim) for v in vocab_sizes)

    def forward(self, sparse: torch.Tensor) -> torch.Tensor:
        return torch.stack([table(sparse[:, j]) for j, table in enumerate(self.tables)], dim=1)


def embedding_comparison(spec: FeatureSpec, batch: int, dim: int, warmup: int, reps: int) -> dict[str, float]:
    """Median (over 3 interleaved rounds) of per-round medians, in ms.

    Steps are ~10 ms, so this uses at least 10 warmup and 15 timed steps per round even
    under --quick: the first touches of a fresh 64 MB gradient are much slower than the
    steady state a training run lives in (page faults, and first-touch of guest memory
    on a VM), and a short warmup measures that transient instead.
    """
    warmup, reps = max(warmup, 10), max(reps, 15)
    _, sparse, _ = make_inputs(spec, batch, seed=1)
    modules = {
        "fused": FieldEmbedding(spec.vocab_sizes, dim),
        "naive": NaiveFusedEmbedding(spec.vocab_sizes, dim),
        "separate": SeparateEmbeddings(spec.vocab_sizes, dim),
    }
    upstream = torch.randn(batch, spec.n_sparse, dim)

    def step(module):
        def run():
            for param in module.parameters():
                param.grad = None
            (module(sparse) * upstream).sum().backward()

        return run

    def forward(module):
        def run():
            with torch.no_grad():
                module(sparse)

        return run

    # Interleave the variants so drift in machine load hits all alike.
    results: dict[str, list[float]] = {}
    for _ in range(3):
        for key, module in modules.items():
            results.setdefault(f"{key}_fb", []).append(median_ms(step(module), warmup, reps))
            results.setdefault(f"{key}_f", []).append(median_ms(forward(module), warmup, reps))
    return {key: statistics.median(values) for key, values in results.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions (1 warmup, 3 reps; default 2 and up to 7)"
    )
    parser.add_argument("--models", default="", help="comma-separated subset of models (default: all)")
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dims", default="10,16", help="embedding_dim values (default 10,16)")
    args = parser.parse_args()

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    warmup, reps, budget_ms = (1, 3, 1000.0) if args.quick else (2, 7, 2000.0)
    dims = [int(d) for d in args.dims.split(",")]
    names = [n for n in args.models.split(",") if n] or flat_models()  # (the Criteo shape has no history: sequence models need one)

    spec = FeatureSpec.criteo_like(criteo_vocab_sizes(), n_dense=N_DENSE)
    dense, sparse, labels = make_inputs(spec, args.batch)
    print(
        f"ctrlab model benchmark: torch {torch.__version__}, {threads} threads, batch {args.batch}, "
        f"{spec.n_dense} dense + {spec.n_sparse} sparse fields, {spec.total_vocab:,} ids, "
        f"median of {reps} reps after {warmup} warmup (down to 3 reps for slow models)"
    )
    print("forward = eval mode under no_grad; fwd+bwd = train mode, BCE loss, grads reset each step")
    header = f"{'model':<14}{'emb':>4}{'params':>14}{'non-emb':>12}{'forward ms':>12}{'fwd+bwd ms':>12}"
    print(header)
    print("-" * len(header))
    started = time.perf_counter()
    for name in names:
        for dim in dims:
            params = {"embedding_dim": dim} if "embedding_dim" in hyperparameter_defaults(name) else {}
            torch.manual_seed(0)
            model = build_model(name, spec, params)
            total, non_embedding = count_parameters(model)
            forward_ms, train_ms = time_model(model, dense, sparse, labels, warmup, reps, budget_ms)
            label = str(dim) if params else "-"
            row = f"{name:<14}{label:>4}{total:>14,}{non_embedding:>12,}{forward_ms:>12.1f}{train_ms:>12.1f}"
            print(row, flush=True)
            del model
            gc.collect()
            if not params:
                break  # no embedding_dim: one row is enough
    print(f"(model table took {time.perf_counter() - started:.0f} s)")

    dim = 16
    result = embedding_comparison(spec, args.batch, dim, warmup, reps)
    print()
    print(f"Embedding lookup, {spec.n_sparse} fields, {spec.total_vocab:,} ids, dim {dim}, batch {args.batch}:")
    print(f"  {'':<34}{'forward ms':>12}{'fwd+bwd ms':>12}")
    rows = [
        ("fused: ctrlab FieldEmbedding", "fused"),
        ("fused: 1 nn.Embedding + offsets", "naive"),
        (f"baseline: {spec.n_sparse} separate nn.Embedding", "separate"),
    ]
    for label, key in rows:
        print(f"  {label:<34}{result[key + '_f']:>12.2f}{result[key + '_fb']:>12.2f}")
    print(
        f"  ratio separate / fused: forward {result['separate_f'] / result['fused_f']:.2f}x, "
        f"fwd+bwd {result['separate_fb'] / result['fused_fb']:.2f}x  (> 1: fused is faster)"
    )


if __name__ == "__main__":
    main()
