"""splitmix64, the 64-bit mixer under every counter-based hash in ctrlab.

The category-key hashes (``features/keytable.py``, ``features/online.py``), prepare's seeded
split (``data/prepare.py``) and the synthetic data generator (``data/synth.py``) all build on it;
the last two turn hashes into uniform numbers with :func:`uniform53`.
Each of them needs the same bits on every machine and from every chunking, so the constants and
the finalizer live here once, in two forms that agree bit for bit (tested): numpy-vectorized over
uint64 arrays (wrapping arithmetic), and scalar over a Python int holding a uint64, for the code
that hashes a handful of values where numpy's fixed cost per call would dominate.
"""

from __future__ import annotations

import numpy as np

MASK64 = (1 << 64) - 1
#: splitmix64's increment, 2**64 / golden ratio (odd): consecutive states are spread apart
GOLDEN = 0x9E3779B97F4A7C15
_M1 = 0xBF58476D1CE4E5B9
_M2 = 0x94D049BB133111EB


def mix64(z: np.ndarray, *, out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """splitmix64's finalizer on uint64[...]: a bijection that spreads every input bit.

    out: the uint64 array to write (``z`` itself mixes in place; default: a new array).
    scratch: a uint64 array of ``z``'s shape for the intermediate shifts (default: allocated);
    loops that mix many arrays of one shape pass the same one to skip the allocation.
    """
    if out is None:
        out = np.array(z, dtype=np.uint64)
    elif out is not z:
        np.copyto(out, z)
    tmp = np.empty_like(out) if scratch is None else scratch
    # z ^= z >> 30; z *= M1; z ^= z >> 27; z *= M2; z ^= z >> 31 (uint64 array ops wrap silently)
    for shift, factor in ((30, _M1), (27, _M2), (31, None)):
        np.right_shift(out, np.uint64(shift), out=tmp)
        np.bitwise_xor(out, tmp, out=out)
        if factor is not None:
            np.multiply(out, np.uint64(factor), out=out)
    return out


def mix64_int(z: int) -> int:
    """:func:`mix64` of one uint64 held in a Python int (0 <= z < 2**64)."""
    z = (z ^ (z >> 30)) * _M1 & MASK64
    z = (z ^ (z >> 27)) * _M2 & MASK64
    return z ^ (z >> 31)


def splitmix64_int(state: int) -> int:
    """One splitmix64 output: the finalizer of ``state + GOLDEN`` (mod 2**64); any int state."""
    return mix64_int((state + GOLDEN) & MASK64)


def uniform53(z: np.ndarray) -> np.ndarray:
    """Uniform float64[...] in [0, 1) from the top 53 bits of uint64[...] hashes (a float64 holds
    53 bits exactly, so every value is a multiple of 2**-53 and the conversion rounds nothing)."""
    u = (z >> np.uint64(11)).view(np.int64).astype(np.float64)  # < 2**53: the same as int64, and faster
    u *= 2.0**-53
    return u
