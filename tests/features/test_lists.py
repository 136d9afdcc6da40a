"""List columns -> padded id blocks: against a loop-written encoding, with shared vocabularies,
truncation to the most recent values, empty and null lists, and aligned weights."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from ctrlab.features.encoders import Vocabulary
from ctrlab.features.lists import fit_shared, list_ids, list_weights, padded
from ctrlab.fields import MISSING_ID, NUM_RESERVED_IDS, OOV_ID


def _loop_ids(keys: list[str], lists: list[list[str] | None], max_length: int) -> tuple[list, list]:
    """The encoding written out: id of each kept value (2.. by position in keys, else OOV), the
    last max_length values of each row first, then zeros."""
    index = {k: i + NUM_RESERVED_IDS for i, k in enumerate(keys)}
    blocks, lengths = [], []
    for row in lists:
        values = (row or [])[-max_length:]
        ids = [index.get(v, OOV_ID) for v in values]
        blocks.append(ids + [MISSING_ID] * (max_length - len(ids)))
        lengths.append(len(ids))
    return blocks, lengths


def test_list_ids_equal_a_loop_written_encoding():
    rng = np.random.default_rng(3)
    words = [f"w{i}" for i in range(200)]
    p = 1.0 / np.arange(1, 201)  # Zipf-like: a long tail of rare words
    lists = [list(rng.choice(words, size=rng.integers(0, 9), p=p / p.sum())) for _ in range(300)] + [None, []]
    array = pa.array(lists, type=pa.list_(pa.string()))
    vocab = Vocabulary(min_count=3).fit(array.flatten())
    keys = vocab.keys_.to_pylist()
    assert 0 < len(keys) < len(set(w for row in lists if row for w in row))  # rare words: OOV
    for max_length in (1, 4, 8, 12):
        ids, lengths = list_ids(vocab, array, max_length)
        expected, expected_lengths = _loop_ids(keys, lists, max_length)
        assert ids.dtype == np.int32 and ids.shape == (len(lists), max_length)
        assert ids.tolist() == expected and lengths.tolist() == expected_lengths
    chunked = pa.chunked_array([array.slice(0, 100), array.slice(100)])  # chunked and sliced columns
    assert list_ids(vocab, chunked, 5)[0].tolist() == list_ids(vocab, array, 5)[0].tolist()


def test_shared_vocabulary_gives_history_and_target_the_same_ids():
    target = pa.array(["i1", "i2", "i3", "i2", None])
    history = pa.array([["i4", "i1"], [], ["i2", "i2", "i4"], None, ["i9"]], type=pa.list_(pa.string()))
    vocab = fit_shared(Vocabulary(min_count=2), [target, history])
    # i2 counted 4 times, i1 and i4 twice each across both columns; i3 and i9 once: OOV
    assert sorted(vocab.keys_.to_pylist()) == ["i1", "i2", "i4"]
    target_ids = vocab.transform(target)
    history_ids, lengths = list_ids(vocab, history, 3)
    assert history_ids[0, 1] == target_ids[0]  # "i1" in the history is the target's "i1"
    assert history_ids[2, 0] == target_ids[1]  # "i2"
    assert target_ids[2] == OOV_ID and history_ids[4, 0] == OOV_ID and target_ids[4] == MISSING_ID
    assert lengths.tolist() == [2, 0, 3, 0, 1]


def test_weights_align_with_the_kept_values():
    lists = pa.array([["a", "b", "c"], [], ["d"]], type=pa.list_(pa.string()))
    weights = pa.array([[0.5, 1.0, 2.0], [], [0.7]], type=pa.list_(pa.float64()))
    ids, lengths = list_ids(Vocabulary().fit(lists.flatten()), lists, 2)
    block = list_weights(weights, 2)
    assert block.dtype == np.float32
    np.testing.assert_allclose(block, np.array([[1.0, 2.0], [0.0, 0.0], [0.7, 0.0]], dtype=np.float32))
    assert lengths.tolist() == [2, 0, 1] and (ids[block == 0] == MISSING_ID).all()


def test_padded_checks_its_length():
    with pytest.raises(ValueError, match="max_length"):
        padded(np.zeros(0, np.int32), np.zeros(1, np.int64), 0)
