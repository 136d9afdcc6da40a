"""Index helpers for pairwise field interactions (i < j)."""

from __future__ import annotations

from collections.abc import Iterator

import torch


def num_pairs(num_fields: int) -> int:
    """Number of unordered field pairs ``i < j``: ``F * (F - 1) / 2``."""
    return num_fields * (num_fields - 1) // 2


def pair_indices(num_fields: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Row/column indices of the strict upper triangle, in row-major order.

    Returns two int64 tensors ``rows, cols`` of length ``num_pairs(num_fields)`` with
    ``rows[p] < cols[p]``; pair ``p`` enumerates (0,1), (0,2), ..., (0,F-1), (1,2), ...
    Every pairwise block uses this one ordering, so their outputs line up.
    """
    rows, cols = torch.triu_indices(num_fields, num_fields, offset=1)
    return rows.to(torch.int64), cols.to(torch.int64)


def projected_pairs(
    embeddings: torch.Tensor, pair_weights: torch.Tensor
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(v_i W_ij, v_j)`` for all j > i, one pair of ``[B, F-1-i, k]`` tensors per i.

    ``embeddings``: ``[B, F, k]``; ``pair_weights``: ``[P, k, k]`` in :func:`pair_indices`
    order. Concatenating the yielded groups along dim 1 gives pairs in that same order.
    One ``[B, k] x [k, n*k]`` matmul per field i and a slice for the right side: no
    ``[B, P, k]`` index gathers (which dominated FiBiNET/DeepFEFM time at 39 fields).
    """
    num_fields, dim = embeddings.shape[1], embeddings.shape[2]
    fields = embeddings.unbind(dim=1)  # one split whose backward is a single stack
    start = 0
    for i in range(num_fields - 1):
        count = num_fields - 1 - i
        # [n, k, k] -> [k, n*k] so that (v_i @ stacked)[:, j*k:(j+1)*k] = v_i @ W_{i, i+1+j}
        stacked = pair_weights[start : start + count].permute(1, 0, 2).reshape(dim, count * dim)
        left = (fields[i] @ stacked).view(-1, count, dim)
        yield left, embeddings[:, i + 1 :]
        start += count
