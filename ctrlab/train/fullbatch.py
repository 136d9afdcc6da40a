"""Full-batch training (``train.optimizer: lbfgs``): a model trained to convergence, with its L2
strength chosen on the validation split.

For data that fits in memory (the train split is held as tensors), each value of ``train.l2_grid``
is one L-BFGS solve (strong-Wolfe line search) of

    mean logloss over the train split + l2 / 2 * sum of squared weights

to ``train.lbfgs_tolerance`` (the largest absolute gradient entry), not to an epoch cap. The
weights are every parameter of two or more dimensions (embedding tables, one-hot weights, dense
weight matrices); biases and other 1-dim parameters are not penalized, as in scikit-learn's
``LogisticRegression`` (lbfgs), whose ``C`` is ``1 / (l2 * train rows)``. The path runs from the
strongest L2 to the weakest, each solve warm-started from the previous solution, in float64.

Each grid value is one "epoch" of the run: its checkpoint (``epoch_K.pt``, float32 as always),
its record in epochs.jsonl (``l2``, ``iterations``, ``converged``, the valid metrics), so
``ctrlab eval``, ``export``, ``predict`` and ``serve`` work on the run unchanged. The best value by
valid ``train.monitor`` is the run's best epoch; ``early_stopping_patience`` grid values without
improvement end the path (the validation curve over L2 has one peak). The test split is never read.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import numpy as np
import torch

from ..config import ConfigError, TrainConfig
from ..data.batches import BatchIterator
from ..data.store import SplitArrays
from ..nn.embedding import FieldEmbedding
from ..metrics import evaluate_scores
from .trainer import Trainer

Chunks = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]

HISTORY_SIZE = 20  # L-BFGS curvature pairs kept
#: minibatch settings that mean nothing here: set, they would be silently ignored
MINIBATCH_ONLY = ("reg", "weight_decay", "grad_clip", "embedding_lr", "momentum")


def load_chunks(split: SplitArrays, rows: int, device: torch.device, dtype: torch.dtype = torch.float64) -> Chunks:
    """The whole split as tensors (dense and label in ``dtype``), in chunks of ``rows`` rows (the
    chunk bounds the activations of one forward pass, not what is held)."""
    return [(dense.to(dtype), sparse, label.to(dtype))
            for dense, sparse, label in BatchIterator(split, rows, shuffle=False, device=device)]


def available_memory_bytes() -> int | None:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_fits_in_memory(splits: list[SplitArrays]) -> None:
    """Refuse, by size, splits whose tensors (float64 dense and labels, int64 ids) would take more
    than half the available memory, instead of swapping or being killed halfway."""
    need = sum(len(s) * 8 * (s.dense.shape[1] + s.sparse.shape[1] + 1) for s in splits)
    available = available_memory_bytes()
    if available is not None and need > available // 2:
        raise MemoryError(f"train.optimizer lbfgs holds the train and valid splits in memory: about "
                          f"{need / 2**30:.1f} GiB, and {available / 2**30:.1f} GiB is available; use a minibatch "
                          f"optimizer (train.optimizer adam) for data this large")


def penalized_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The parameters L2 applies to: every weight of 2+ dimensions (biases and norms are not)."""
    return [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]


def l2_to_sklearn_c(l2: float, train_rows: int) -> float | None:
    """scikit-learn's ``C`` for the same objective (``C * sum(logloss) + ||w||^2 / 2``); None for no L2."""
    return None if l2 == 0 else 1.0 / (l2 * train_rows)


def one_hot_matrix(store, split: str):
    """(scipy CSR ``[rows, sum(vocab_sizes) + n_dense]``, labels) of a store split: the inputs of
    ``lr`` as one matrix (one-hot of the fused sparse ids, then the dense columns), for comparing
    with other linear solvers (scikit-learn). Needs scipy."""
    import scipy.sparse as sp

    if store.spec.lists:
        raise ValueError("the one-hot matrix (for comparing with scikit-learn) holds single-valued fields only; "
                         f"this store has list fields {[f.name for f in store.spec.lists]}")
    arrays = store.split(split)
    sizes = np.asarray(store.spec.vocab_sizes, dtype=np.int64)
    ids = np.asarray(arrays.sparse, dtype=np.int64) + np.concatenate(([0], np.cumsum(sizes)[:-1]))
    rows, fields = ids.shape
    one_hot = sp.csr_matrix((np.ones(ids.size), ids.ravel(), np.arange(0, ids.size + 1, fields)),
                            shape=(rows, int(sizes.sum())))
    dense = sp.csr_matrix(np.asarray(arrays.dense, dtype=np.float64))
    return sp.hstack([one_hot, dense]).tocsr(), np.asarray(arrays.label)


@torch.no_grad()
def chunk_scores(model: torch.nn.Module, chunks: Chunks) -> np.ndarray:
    """Probabilities for the rows of ``chunks``, in order."""
    was_training = model.training
    model.eval()
    out = torch.cat([torch.sigmoid(model(dense, sparse)) for dense, sparse, _ in chunks])
    model.train(was_training)
    return out.double().cpu().numpy()


def minimize(model: torch.nn.Module, chunks: Chunks, l2: float, *, tolerance: float,
             max_iter: int) -> dict[str, Any]:
    """Minimize mean logloss over ``chunks`` + ``l2 / 2 * ||W||^2`` (W: :func:`penalized_parameters`)
    with L-BFGS from the model's current weights (updated in place).

    Returns iterations, function evaluations, the final objective and mean logloss, the largest
    absolute gradient entry and whether it converged (stopped before ``max_iter``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    penalized = penalized_parameters(model)
    rows = sum(int(label.shape[0]) for _, _, label in chunks)
    optimizer = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, max_eval=2 * max_iter,
                                  tolerance_grad=tolerance, tolerance_change=1e-12,
                                  history_size=HISTORY_SIZE, line_search_fn="strong_wolfe")
    last: dict[str, float] = {}

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss_sum = torch.zeros((), dtype=torch.float64)
        for dense, sparse, label in chunks:
            loss = torch.nn.functional.binary_cross_entropy_with_logits(
                model(dense, sparse), label, reduction="sum") / rows
            loss.backward()
            loss_sum += loss.detach().cpu()
        penalty = 0.5 * l2 * sum(p.pow(2).sum() for p in penalized) if l2 and penalized else None
        if penalty is not None:
            penalty.backward()
        last["loss"] = float(loss_sum)
        objective = loss_sum + (float(penalty.detach()) if penalty is not None else 0.0)
        if not torch.isfinite(objective):
            raise RuntimeError(f"full-batch training diverged at L2 {l2:g} (objective {float(objective)})")
        return objective

    model.train()
    optimizer.step(closure)
    state = optimizer.state[params[0]]
    objective = float(closure())  # the gradient at the solution (and the loss it is reported with)
    grad_max = max(float(p.grad.abs().max()) for p in params if p.grad is not None)
    iterations, evaluations = int(state.get("n_iter", 0)), int(state.get("func_evals", 0))
    return {"iterations": iterations, "evaluations": evaluations + 1, "objective": objective,
            "loss": last["loss"], "grad_max": grad_max,
            "converged": grad_max <= tolerance or (iterations < max_iter and evaluations < 2 * max_iter)}


def l2_path(grid: list[float]) -> list[float]:
    """The grid's distinct values from the strongest L2 to the weakest (the warm-start order)."""
    return sorted(set(grid), reverse=True)


def check_full_batch_config(cfg: TrainConfig) -> None:
    """Refuse minibatch settings a full-batch run would silently ignore."""
    defaults = TrainConfig()
    for name in MINIBATCH_ONLY:
        if getattr(cfg, name) != getattr(defaults, name):
            raise ConfigError(f"train.{name} applies to the minibatch optimizers; with train.optimizer lbfgs the "
                              f"L2 strength comes from train.l2_grid (chosen on the validation split)")
    if not cfg.l2_grid:
        raise ConfigError("train.l2_grid: at least one L2 value is needed for train.optimizer lbfgs")


def schedule(cfg: TrainConfig, valid_rows: int) -> dict[str, Any]:
    """What a full-batch run will do (the counterpart of run.schedule)."""
    path = l2_path(cfg.l2_grid)
    chosen = (f"by valid {cfg.monitor}" + (f", stopping after {cfg.early_stopping_patience} values without "
                                           f"improvement" if cfg.early_stopping_patience else "")
              if valid_rows else "the last (no validation split)")
    return {
        "epochs": f"one L-BFGS solve per L2 value (to max |gradient| <= {cfg.lbfgs_tolerance:g}, at most "
                  f"{cfg.lbfgs_max_iter} iterations); {len(path)} values {path[0]:g} .. {path[-1]:g}",
        "validation": f"{valid_rows:,} rows (valid split)" if valid_rows else "none",
        "early_stopping": f"L2 chosen {chosen}",
        "lr_decay": "off (full batch)",
    }


class FullBatchTrainer(Trainer):
    """:class:`Trainer` for ``train.optimizer: lbfgs``: one epoch per L2 value (see the module doc).

    Runs in one process; checkpoints, epoch logs, resume (at the next L2 value, warm-started from
    the last solution), ``on_epoch_end`` and warnings are the Trainer's."""

    def __init__(self, model: torch.nn.Module, store, cfg: TrainConfig, run_dir, *, dist=None, **kwargs: Any):
        if dist is not None:
            raise ConfigError("train.optimizer lbfgs trains on the whole train split in one process; "
                              "run it without torchrun / --nproc")
        check_full_batch_config(cfg)
        # the Trainer builds minibatch optimizers from cfg.optimizer; plain SGD keeps no state, and
        # this class never steps it
        super().__init__(model, store, dataclasses.replace(cfg, optimizer="sgd"), run_dir, dist=None, **kwargs)
        self.cfg = cfg
        for module in self.model.modules():  # L-BFGS works on dense gradients
            if isinstance(module, FieldEmbedding):
                module.sparse_grad = False
        self.path = l2_path(cfg.l2_grid)

    def state(self) -> dict[str, Any]:
        return {"model": self.model.state_dict(), "epoch": self.epoch, "best": self.best,
                "bad_epochs": self.bad_epochs, "history": self.history, "stopped_early": self.stopped_early,
                "l2_path": self.path}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("l2_path") != self.path:
            started = f"train.l2_grid {state['l2_path']}" if "l2_path" in state else "a minibatch optimizer"
            raise ConfigError(f"{self.run.last_checkpoint}: the run was started with another train.optimizer or "
                              f"train.l2_grid ({started}); rerun with --no-resume")
        self.model.load_state_dict(state["model"])
        self.epoch, self.best, self.bad_epochs = state["epoch"], state["best"], state["bad_epochs"]
        self.history, self.stopped_early = state["history"], state["stopped_early"]

    def save_checkpoint(self) -> None:
        """Checkpoints in float32 like every run's; the path continues from exactly the weights
        saved (so a resumed path is the path uninterrupted)."""
        self.model.float()
        try:
            super().save_checkpoint()
        finally:
            self.model.double()

    @property
    def capped_while_improving(self) -> bool:
        """The path ended at its weakest L2 with that value the best: a weaker one may be better."""
        return (not self.stopped_early and self.epoch >= len(self.path) and self.best["metric"] is not None
                and self.best["epoch"] == self.epoch and len(self.path) > 1)

    def fit(self) -> list[dict[str, Any]]:
        cfg = self.cfg
        self.run.path.mkdir(parents=True, exist_ok=True)
        self._align_records()
        chunk_rows = cfg.eval_batch_size
        check_fits_in_memory([self.store.split(name) for name in ("train", "valid") if self.store.has_split(name)])
        train = load_chunks(self.store.split("train"), chunk_rows, self.device)
        valid = load_chunks(self.store.split("valid"), chunk_rows, self.device) \
            if self.store.has_split("valid") else None
        train_rows = len(self.store.split("train"))
        self.model.double()
        try:
            while self.epoch < len(self.path) and not self.stopped_early:
                self._solve(self.path[self.epoch], train, train_rows, valid)
        finally:
            self.model.float()
        if self.capped_while_improving:
            self.warn(f"the best L2 is the smallest of train.l2_grid ({self.path[-1]:g}): a weaker one may do "
                      f"better; extend the grid")
        elif self.best["epoch"] == 1 and len(self.path) > 1 and self.best["metric"] is not None:
            self.warn(f"the best L2 is the largest of train.l2_grid ({self.path[0]:g}): a stronger one may do "
                      f"better; extend the grid")
        return self.history

    def _solve(self, l2: float, train: Chunks, train_rows: int, valid: Chunks | None) -> None:
        cfg = self.cfg
        started = time.perf_counter()
        result = minimize(self.model, train, l2, tolerance=cfg.lbfgs_tolerance, max_iter=cfg.lbfgs_max_iter)
        metrics = evaluate_scores(torch.cat([y for _, _, y in valid]).cpu().numpy(), chunk_scores(self.model, valid)) \
            if valid else None
        self.epoch += 1
        seconds = max(time.perf_counter() - started, 1e-9)
        record = {"epoch": self.epoch, "train_loss": result["loss"],
                  "valid_auc": metrics["auc"] if metrics else None,
                  "valid_logloss": metrics["logloss"] if metrics else None,
                  "lr": 1.0, "seconds": round(seconds, 3),
                  "samples_per_s": round(train_rows * result["evaluations"] / seconds, 1),
                  "l2": l2, "sklearn_c": l2_to_sklearn_c(l2, train_rows), "iterations": result["iterations"],
                  "converged": result["converged"], "grad_max": result["grad_max"], "objective": result["objective"]}
        if metrics:
            if self._better(metrics[cfg.monitor]):
                self.best, self.bad_epochs = {"epoch": self.epoch, "metric": metrics[cfg.monitor]}, 0
            else:
                self.bad_epochs += 1
                self.stopped_early = bool(cfg.early_stopping_patience) and \
                    self.bad_epochs >= cfg.early_stopping_patience and self.epoch >= cfg.min_epochs
        else:
            self.best = {"epoch": self.epoch, "metric": None}
        record["best_epoch"] = self.best["epoch"]
        self.history.append(record)
        self.save_checkpoint()
        self.run.write_epoch_logs(self.history)
        msg = (f"L2 {l2:g}: {result['iterations']} L-BFGS iterations, "
               f"train logloss {result['loss']:.5f}, max |gradient| {result['grad_max']:.1e}")
        if metrics:
            msg += f", valid AUC {metrics['auc']:.5f} logloss {metrics['logloss']:.5f}"
        if self.stopped_early:
            msg += f" (no improvement for {self.bad_epochs} L2 values: stopping)"
        self.log(msg)
        if not result["converged"]:
            self.warn(f"L-BFGS stopped at train.lbfgs_max_iter={cfg.lbfgs_max_iter} for L2 {l2:g} with max "
                      f"|gradient| {result['grad_max']:.1e} > train.lbfgs_tolerance {cfg.lbfgs_tolerance:g}: "
                      f"not converged; raise train.lbfgs_max_iter")
        if self.on_epoch_end is not None:
            self.on_epoch_end(self.epoch, record)
