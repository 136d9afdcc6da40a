"""Tests for ctrlab.hashing: splitmix64 against its published reference outputs, and the
vectorized and scalar forms (and the in-place variants) giving the same bits."""

from __future__ import annotations

import numpy as np

from ctrlab.hashing import GOLDEN, MASK64, mix64, mix64_int, splitmix64_int, uniform53


def test_splitmix64_reference_outputs():
    # the first outputs of Vigna's splitmix64.c seeded with 1234567
    state, outputs = 1234567, []
    for _ in range(5):
        outputs.append(splitmix64_int(state))
        state = (state + GOLDEN) & MASK64
    assert outputs == [6457827717110365317, 3203168211198807973, 9817491932198370423, 4593380528125082431,
                       16408922859458223821]
    states = 1234567 + GOLDEN * np.arange(1, 6, dtype=np.uint64)  # wraps mod 2**64
    assert mix64(states).tolist() == outputs


def test_mix64_vectorized_equals_scalar_and_in_place_forms():
    rng = np.random.default_rng(3)
    z = np.concatenate([np.array([0, 1, 2**63, MASK64], dtype=np.uint64),
                        rng.integers(0, 2**63, 2000, dtype=np.uint64) * np.uint64(2) + np.uint64(1)])
    before = z.copy()
    mixed = mix64(z)
    assert np.array_equal(z, before)  # the input is left alone
    assert mixed.tolist() == [mix64_int(v) for v in z.tolist()]
    assert len(set(mixed.tolist())) == len(set(z.tolist()))  # a bijection
    scratch = np.empty_like(z)
    in_place = z.copy()
    assert mix64(in_place, out=in_place, scratch=scratch) is in_place
    assert np.array_equal(in_place, mixed)
    out = np.empty_like(z)
    assert np.array_equal(mix64(z, out=out), mixed) and np.array_equal(z, before)
    assert splitmix64_int(-1) == mix64_int(GOLDEN - 1)  # any int state, taken mod 2**64


def test_uniform53_is_the_top_53_bits_exactly():
    z = np.concatenate([np.array([0, 2**11 - 1, 2**11, 2**63, MASK64], dtype=np.uint64),
                        mix64(np.arange(1000, dtype=np.uint64))])
    u = uniform53(z)
    assert u.dtype == np.float64 and u[:5].tolist() == [0.0, 0.0, 2.0**-53, 0.5, 1.0 - 2.0**-53]
    assert u.tolist() == [(v >> 11) / 2**53 for v in z.tolist()]  # Python ints: exact
