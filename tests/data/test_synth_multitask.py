"""Tests for ctrlab.data.synth_multitask: layout, determinism, click/conversion rates, the truth columns,
the correlated tasks, the sample-selection bias, the CLI."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest

from ctrlab.data.synth_multitask import DEVICES, MULTITASK_COLUMNS, TRUTH_COLUMNS, write_multitask_synthetic

ROWS = 20_000


def _read(path) -> tuple[list[str], list[list[str]]]:
    with open(path, newline="") as fh:
        text = fh.read()
    assert text.endswith("\n")
    lines = text[:-1].split("\n")
    return lines[0].split("\t"), [line.split("\t") for line in lines[1:]]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    path = tmp_path_factory.mktemp("mt") / "mt.tsv"
    summary = write_multitask_synthetic(path, ROWS, seed=4, truth=True)
    header, rows = _read(path)
    cols = {name: [r[j] for r in rows] for j, name in enumerate(header)}
    return path, summary, header, rows, cols


def _arrays(cols):
    click = np.array([int(v) for v in cols["click"]])
    conversion = np.array([int(v) for v in cols["conversion"]])
    p_click = np.array([float(v) for v in cols["p_click"]])
    p_cvr = np.array([float(v) for v in cols["p_cvr"]])
    return click, conversion, p_click, p_cvr


def test_header_and_layout(written):
    path, summary, header, rows, cols = written
    assert list(MULTITASK_COLUMNS) == ["click", "conversion", "user_id", "item_id", "cate_id", "shop_id", "device",
                                       "hour", "price", "discount", "user_activity"]
    assert header == list(MULTITASK_COLUMNS + TRUTH_COLUMNS) and TRUTH_COLUMNS == ("p_click", "p_cvr")
    assert len(rows) == ROWS and {len(r) for r in rows} == {13}
    assert set(cols["click"]) == {"0", "1"} and set(cols["conversion"]) == {"0", "1"}
    for name, prefix in (("user_id", "u"), ("item_id", "i"), ("cate_id", "c"), ("shop_id", "s"), ("hour", "h")):
        assert all(re.fullmatch(rf"{prefix}\d+", v) for v in cols[name]), name
    assert 1_000 < len(set(cols["user_id"])) <= 5_000
    assert 1_000 < len(set(cols["item_id"])) <= 4_000
    assert 30 < len(set(cols["cate_id"])) <= 50
    assert 100 < len(set(cols["shop_id"])) <= 400
    assert set(cols["device"]) == set(DEVICES) and len(set(cols["hour"])) == 8
    # an item has one category and one shop everywhere
    cate_of: dict[str, tuple[str, str]] = {}
    for item, cate, shop in zip(cols["item_id"], cols["cate_id"], cols["shop_id"]):
        assert cate_of.setdefault(item, (cate, shop)) == (cate, shop)
    # numeric columns with missing values
    for name, lo, hi in (("price", 0.02, 0.09), ("discount", 0.35, 0.45), ("user_activity", 0.07, 0.13)):
        missing = sum(v == "" for v in cols[name]) / ROWS
        assert lo < missing < hi, (name, missing)
        assert all(float(v) > 0 for v in cols[name] if v), name
    discounts = {v for v in cols["discount"] if v}
    assert discounts == {f"{k * 0.05:.2f}" for k in range(1, 11)}
    assert all(re.fullmatch(r"0\.\d{6}|1\.000000", v) for v in cols["p_click"] + cols["p_cvr"])
    assert summary["rows"] == ROWS and summary["path"] == str(path) and summary["truth"] is True
    assert summary["bytes"] == path.stat().st_size


def test_conversion_only_after_click_and_rates(written):
    _, summary, _, _, cols = written
    click, conversion, _, _ = _arrays(cols)
    assert not np.any(conversion > click)  # a conversion is only observed after a click
    assert summary["clicks"] == click.sum() and summary["conversions"] == conversion.sum()
    assert summary["click_rate"] == pytest.approx(click.mean()) and 0.05 < click.mean() < 0.10
    assert summary["conversion_rate"] == pytest.approx(conversion.mean()) and 0.005 < conversion.mean() < 0.015
    assert summary["cvr_given_click"] == pytest.approx(conversion.sum() / click.sum())
    assert summary["conversion_rate"] < summary["click_rate"] / 4  # the sparser task


def test_truth_columns_match_observed_rates(written):
    _, summary, _, _, cols = written
    click, conversion, p_click, p_cvr = _arrays(cols)
    n = ROWS
    se = np.sqrt(np.sum(p_click * (1 - p_click))) / n
    assert abs(p_click.mean() - click.mean()) < 4 * se
    p_conv = p_click * p_cvr
    se = np.sqrt(np.sum(p_conv * (1 - p_conv))) / n
    assert abs(p_conv.mean() - conversion.mean()) < 4 * se
    clicked = click == 1
    se = np.sqrt(np.sum(p_cvr[clicked] * (1 - p_cvr[clicked]))) / clicked.sum()
    assert abs(p_cvr[clicked].mean() - conversion[clicked].mean()) < 4 * se
    assert summary["mean_p_click"] == pytest.approx(p_click.mean(), abs=1e-6)
    assert summary["mean_p_cvr_all"] == pytest.approx(p_cvr.mean(), abs=1e-6)
    assert summary["mean_p_cvr_clicked"] == pytest.approx(p_cvr[clicked].mean(), abs=1e-6)


def test_sample_selection_bias(written):
    _, summary, _, _, _ = written
    all_, clicked = summary["mean_p_cvr_all"], summary["mean_p_cvr_clicked"]
    assert abs(all_ - clicked) / clicked >= 0.2, (all_, clicked)
    # the observed CVR over clicks estimates the clicked population, not the impression space
    assert abs(summary["cvr_given_click"] - clicked) < abs(summary["cvr_given_click"] - all_)


def test_tasks_are_correlated_over_items(written):
    _, _, _, _, cols = written
    _, _, p_click, p_cvr = _arrays(cols)
    logit_c, logit_v = np.log(p_click / (1 - p_click)), np.log(p_cvr / (1 - p_cvr))
    _, inv, count = np.unique(np.array(cols["item_id"]), return_inverse=True, return_counts=True)
    mean_c = np.bincount(inv, logit_c) / count
    mean_v = np.bincount(inv, logit_v) / count
    keep = count >= 5
    assert keep.sum() > 300
    r = np.corrcoef(mean_c[keep], mean_v[keep])[0, 1]
    assert r > 0.1, r  # shared item / category quality (~4 standard errors at this size)


def test_deterministic(tmp_path):
    a, b, c = tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "c.tsv"
    write_multitask_synthetic(a, 3_000, seed=11)
    write_multitask_synthetic(b, 3_000, seed=11)
    write_multitask_synthetic(c, 3_000, seed=12)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    header, rows = _read(a)
    assert header == list(MULTITASK_COLUMNS) and {len(r) for r in rows} == {11}  # no truth columns by default
    truth = tmp_path / "t.tsv"
    write_multitask_synthetic(truth, 3_000, seed=11, truth=True)
    # the truth columns are appended to the very same rows
    assert [r[:11] for r in _read(truth)[1]] == rows
    assert not list(tmp_path.glob(".*tmp*"))  # no temporaries left behind


def test_bad_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_multitask_synthetic(tmp_path / "x.tsv", -1)
    empty = write_multitask_synthetic(tmp_path / "e.tsv", 0)
    assert empty["rows"] == 0 and (tmp_path / "e.tsv").read_text() == "\t".join(MULTITASK_COLUMNS) + "\n"


def test_cli_multitask(tmp_path):
    out = tmp_path / "m.tsv"
    result = subprocess.run([sys.executable, "-m", "ctrlab", "data", "synth", "--kind", "multitask", "--rows", "2000",
                             "--out", str(out), "--truth", "--quiet"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "wrote 2,000 multitask rows" in result.stdout and "click rate" in result.stdout
    header, rows = _read(out)
    assert header == list(MULTITASK_COLUMNS + TRUTH_COLUMNS) and len(rows) == 2000
    refused = subprocess.run([sys.executable, "-m", "ctrlab", "data", "synth", "--kind", "criteo", "--rows", "5",
                              "--out", str(tmp_path / "t.tsv"), "--truth", "--quiet"],
                             capture_output=True, text=True)
    assert refused.returncode == 2 and "--truth is only for --kind multitask" in refused.stderr
    assert not (tmp_path / "t.tsv").exists()
