"""Process-level settings shared by the commands that run models."""

from __future__ import annotations

import os


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def configure_torch_threads(threads: int | None = None) -> int:
    """Make torch's intra-op threads follow the available cores (or ``threads``)."""
    import torch

    n = threads or available_cores()
    torch.set_num_threads(n)
    return n
