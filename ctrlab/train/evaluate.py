"""Scoring a stored split with a torch model: the probabilities and the exact metrics every
training, evaluation and experiment path reports (AUC and logloss over every row, see
:mod:`ctrlab.metrics`). Used by the trainer, ``ctrlab eval``, the distributed evaluation (each
rank scores its block) and the experiments' per-row scores."""

from __future__ import annotations

import numpy as np
import torch

from ..data.batches import BatchIterator
from ..data.store import SplitArrays
from ..metrics import evaluate_scores


@torch.no_grad()
def predict_split(model: torch.nn.Module, split: SplitArrays, batch_size: int,
                  device: torch.device) -> np.ndarray:
    """Probabilities f32[n] for every row of a split, in stored order (last partial batch included)."""
    was_training = model.training
    model.eval()
    out = np.empty(len(split), dtype=np.float32)
    pos = 0
    for dense, sparse, _ in BatchIterator(split, batch_size, shuffle=False, device=device):
        p = torch.sigmoid(model(dense, sparse)).float().cpu().numpy()
        out[pos: pos + len(p)] = p
        pos += len(p)
    if pos != len(split):  # a broken iterator must not pass silently
        raise RuntimeError(f"evaluated {pos} rows of {len(split)}")
    model.train(was_training)
    return out


def evaluate(model: torch.nn.Module, split: SplitArrays, batch_size: int, device: torch.device) -> dict[str, float]:
    """Exact metrics of a split (``auc``, ``logloss``, ``rows``, ...: :func:`ctrlab.metrics.evaluate_scores`)."""
    probs = predict_split(model, split, batch_size, device)
    return evaluate_scores(np.asarray(split.label), probs)
