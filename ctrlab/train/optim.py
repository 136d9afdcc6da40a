"""Optimizers: row-sparse updates for embedding tables, torch optimizers for the rest.

Embedding tables get *sparse* gradients (only the rows a batch touched; see
``FieldEmbedding.sparse_grad``), and :class:`RowSparseOptimizer` updates only those rows, so a
step costs O(rows touched) whatever the table size (a dense Adam step over a 10M-row table would
cost more than the whole network). Adam here is "lazy Adam": the moments of a row are updated
when the row is used, with the global step for bias correction. ``reg`` is L2 on the touched
rows (PaddleRec's ``reg``; the lazy form of an embedding regularizer).
"""

from __future__ import annotations

from typing import Iterable

import torch

OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad")


class RowSparseOptimizer:
    """Adam / SGD(momentum) / Adagrad over parameters whose gradients are sparse COO tensors
    of shape [rows, dim] (indices over rows).

    lr, betas, eps, momentum: as in the torch optimizers; reg: L2 on touched rows.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], kind: str = "adam", lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8, momentum: float = 0.0,
                 reg: float = 0.0, initial_accumulator_value: float = 0.0):
        if kind not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {kind!r}; valid: {', '.join(OPTIMIZERS)}")
        self.params = list(params)
        self.kind = "adam" if kind == "adamw" else kind
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.momentum = momentum
        self.reg = reg
        self.step_count = 0
        self.state: list[dict[str, torch.Tensor]] = []
        for p in self.params:
            st: dict[str, torch.Tensor] = {}
            if self.kind == "adam":
                # both moments of a row side by side ([rows, 2, dim]): one gather and one scatter a step
                st["moments"] = torch.zeros((p.shape[0], 2, *p.shape[1:]), dtype=p.dtype, device=p.device)
            elif self.kind == "adagrad":
                st["sum"] = torch.full_like(p, initial_accumulator_value, memory_format=torch.contiguous_format)
            elif self.kind == "sgd" and momentum:
                st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.contiguous_format)
            self.state.append(st)

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        self.step_count += 1
        seen: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        for p, st in zip(self.params, self.state):
            if p.grad is None:
                continue
            rows, grad, seen = _row_grad(p.grad, seen)
            if self.reg:
                grad = grad + self.reg * p.index_select(0, rows)
            # rows are unique: read-modify-write with index_select/index_copy_ (faster than
            # index_add_ on CPU)
            weights = p.index_select(0, rows)
            if self.kind == "adam":
                b1, b2 = self.betas
                moments = st["moments"].index_select(0, rows)
                m = moments[:, 0].mul_(b1).add_(grad, alpha=1 - b1)
                v = moments[:, 1].mul_(b2).addcmul_(grad, grad, value=1 - b2)
                st["moments"].index_copy_(0, rows, moments)
                bias1 = 1 - b1 ** self.step_count
                bias2 = 1 - b2 ** self.step_count
                denom = v.div_(bias2).sqrt_().add_(self.eps)  # v is not needed after this
                weights.addcdiv_(m, denom, value=-self.lr / bias1)
            elif self.kind == "adagrad":
                acc = st["sum"].index_select(0, rows).addcmul_(grad, grad)
                st["sum"].index_copy_(0, rows, acc)
                weights.addcdiv_(grad, acc.sqrt_().add_(self.eps), value=-self.lr)
            else:  # sgd
                if self.momentum:
                    buf = st["momentum_buffer"].index_select(0, rows).mul_(self.momentum).add_(grad)
                    st["momentum_buffer"].index_copy_(0, rows, buf)
                    grad = buf
                weights.add_(grad, alpha=-self.lr)
            p.index_copy_(0, rows, weights)

    def state_dict(self) -> dict:
        return {"kind": self.kind, "lr": self.lr, "step_count": self.step_count,
                "state": [{k: v for k, v in st.items()} for st in self.state]}

    def load_state_dict(self, data: dict) -> None:
        if data["kind"] != self.kind:
            raise ValueError(f"checkpoint has a {data['kind']} embedding optimizer, this run uses {self.kind}")
        self.lr = data["lr"]
        self.step_count = data["step_count"]
        for st, saved in zip(self.state, data["state"]):
            for k, v in saved.items():
                st[k].copy_(v)


def _row_grad(grad: torch.Tensor, seen: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None):
    """(unique rows, summed gradient per row, cache) of a sparse COO or dense gradient.

    Tables indexed by the same ids in one step (a model's k-dim embedding and its 1-dim
    first-order weights share the fused ids) reuse one ``unique``: ``seen`` caches the last
    (indices, rows, inverse)."""
    if grad.is_sparse:
        indices = grad._indices()[0]
        values = grad._values()
        if seen is not None and seen[0].shape == indices.shape and torch.equal(seen[0], indices):
            rows, inverse = seen[1], seen[2]
        else:
            rows, inverse = torch.unique(indices, return_inverse=True)
            seen = (indices, rows, inverse)
        # summed per row; accumulating along dim 1 of the transposed layout is several times
        # faster on CPU than index_add_ over short rows along dim 0
        summed_t = torch.zeros(values.shape[1], rows.shape[0], dtype=values.dtype, device=values.device)
        summed_t.index_add_(1, inverse, values.t())
        return rows, summed_t.t(), seen
    rows = torch.arange(grad.shape[0], device=grad.device)
    return rows, grad, seen


def dense_optimizer(params: list[torch.nn.Parameter], kind: str, lr: float, weight_decay: float,
                    momentum: float) -> torch.optim.Optimizer:
    """A torch optimizer for the non-embedding parameters."""
    # fused kernels where torch has them for the device (CPU too since torch 2.4): one pass
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, foreach=True)
    if kind == "adagrad":
        return torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay, foreach=True)
    raise ValueError(f"unknown optimizer {kind!r}; valid: {', '.join(OPTIMIZERS)}")
