"""Tests for ctrlab.data.synth_sequence: layout, sequences, tags, determinism, the planted signal, the CLI."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from ctrlab.data.synth_sequence import SEQUENCE_COLUMNS, SEQUENCE_SCHEMA_HINT, write_sequence_synthetic

ROWS = 20_000
MAX_HISTORY = 30
TAG = re.compile(r"^t\d+(:\d+(\.\d+)?)?$")


def _read(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        text = fh.read()
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


def _seq(field: str) -> list[str]:
    return field.split("|") if field else []


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("seq") / "seq.tsv"
    summary = write_sequence_synthetic(path, ROWS, seed=3, max_history=MAX_HISTORY)
    header, rows = _read(path)
    return path, summary, header, rows


def test_header_columns_and_field_count(written):
    path, summary, header, rows = written
    assert header == list(SEQUENCE_COLUMNS) == ["label", "user_id", "item_id", "cate_id", "price", "hist_item_id",
                                                "hist_cate_id", "tags"]
    assert list(SEQUENCE_SCHEMA_HINT) == list(SEQUENCE_COLUMNS)
    assert len(rows) == ROWS
    assert {len(r) for r in rows} == {8}
    assert {r[0] for r in rows} == {"0", "1"}
    assert all(re.fullmatch(r"u\d+", r[1]) and re.fullmatch(r"i\d+", r[2]) and re.fullmatch(r"c\d+", r[3])
               for r in rows)
    prices = [r[4] for r in rows]
    missing = sum(p == "" for p in prices) / ROWS
    assert 0.02 < missing < 0.09
    assert all(float(p) > 0 for p in prices if p)
    assert summary["rows"] == ROWS and summary["path"] == str(path)
    assert summary["positives"] == sum(r[0] == "1" for r in rows)


def test_histories(written):
    _, summary, _, rows = written
    lengths = []
    for r in rows:
        items, cates = _seq(r[5]), _seq(r[6])
        assert len(items) == len(cates) <= MAX_HISTORY
        assert all(re.fullmatch(r"i\d+", i) for i in items) and all(re.fullmatch(r"c\d+", c) for c in cates)
        lengths.append(len(items))
    lengths = np.array(lengths)
    assert (lengths == 0).mean() > 0.03  # some empty histories
    assert (lengths == MAX_HISTORY).mean() > 0.05  # some capped at max_history
    assert ((lengths > 0) & (lengths < MAX_HISTORY)).mean() > 0.5  # and lengths vary in between
    assert summary["mean_history_length"] == pytest.approx(lengths.mean())


def test_item_category_map_is_consistent(written):
    _, _, _, rows = written
    cate_of: dict[str, str] = {}
    pairs = 0
    for r in rows:
        for item, cate in zip([r[2], *_seq(r[5])], [r[3], *_seq(r[6])]):
            assert cate_of.setdefault(item, cate) == cate, item  # an item always has one category
            pairs += 1
    assert pairs > ROWS * 5
    assert 1_000 < len(cate_of) <= 5_000
    assert 30 < len(set(cate_of.values())) <= 50


def test_tags(written):
    _, _, _, rows = written
    counts = []
    weighted_rows = 0
    for r in rows:
        tags = _seq(r[7])
        assert all(TAG.fullmatch(t) for t in tags), r[7]
        names = [t.split(":")[0] for t in tags]
        assert len(set(names)) == len(names) <= 4
        for t in tags:
            if ":" in t:
                assert 0.0 < float(t.split(":")[1]) <= 1.0
        counts.append(len(tags))
        weighted_rows += any(":" in t for t in tags)
    assert set(counts) == {0, 1, 2, 3, 4}
    with_tags = sum(c > 0 for c in counts)
    assert 0.35 < weighted_rows / with_tags < 0.65  # about half of the rows use weights


def test_deterministic(tmp_path):
    a, b, c = tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "c.tsv"
    write_sequence_synthetic(a, 3_000, seed=11, max_history=20)
    write_sequence_synthetic(b, 3_000, seed=11, max_history=20)
    write_sequence_synthetic(c, 3_000, seed=12, max_history=20)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))  # no temporaries left behind


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_sequence_synthetic(tmp_path / "x.tsv", -1)
    with pytest.raises(ValueError):
        write_sequence_synthetic(tmp_path / "x.tsv", 10, max_history=0)
    empty = write_sequence_synthetic(tmp_path / "e.tsv", 0)
    assert empty["rows"] == 0 and (tmp_path / "e.tsv").read_text() == "\t".join(SEQUENCE_COLUMNS) + "\n"


def test_planted_recent_history_signal(written):
    _, summary, _, rows = written
    assert 0.2 < summary["positive_rate"] < 0.35
    label = np.array([r[0] == "1" for r in rows])
    recent_match = np.array([r[3] in _seq(r[6])[-10:] for r in rows])
    old_only = np.array([r[3] in _seq(r[6])[:-10] and r[3] not in _seq(r[6])[-10:] for r in rows])
    assert 0.2 < recent_match.mean() < 0.8
    hi, lo = label[recent_match].mean(), label[~recent_match].mean()
    assert hi - lo > 0.1, (hi, lo)
    # the signal is in the RECENT history: a category seen only in older items barely helps
    assert label[recent_match].mean() - label[old_only].mean() > 0.1


def test_cli_sequence(tmp_path):
    out = tmp_path / "s.tsv"
    result = subprocess.run([sys.executable, "-m", "ctrlab", "data", "synth", "--kind", "sequence", "--rows", "2000",
                             "--out", str(out), "--max-history", "15", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "wrote 2,000 sequence rows" in result.stdout
    header, rows = _read(out)
    assert header == list(SEQUENCE_COLUMNS) and len(rows) == 2000
    assert max(len(_seq(r[5])) for r in rows) == 15
    refused = subprocess.run([sys.executable, "-m", "ctrlab", "data", "synth", "--kind", "sequence", "--rows", "5",
                              "--out", str(tmp_path / "t.tsv"), "--no-label", "--quiet"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--no-label is only for --kind criteo" in refused.stderr
    assert not (tmp_path / "t.tsv").exists()
