"""Tests for ctrlab.data.synth_days: daily Criteo-layout files with churning values and a drifting click model."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from ctrlab.cli.main import main
from ctrlab.data.formats import detect_format
from ctrlab.data.readers import RowReader
from ctrlab.data.synth import CAT_FIELDS, COLUMNS, INT_FIELDS
from ctrlab.data.synth_days import DEFAULT_GROUPS, FieldGroup, _DailyGenerator, write_daily_synthetic
from ctrlab.schema import PRESETS

HEX8 = re.compile(r"^[0-9a-f]{8}$")
DAYS, ROWS = 8, 4000
# Short lifetimes so that deaths show within a few days.
FAST = (FieldGroup("stable", 200), FieldGroup("medium", 20_000, 1.5, 3), FieldGroup("huge", math.inf, 1.0, 2))


def _rows(path) -> np.ndarray:
    with open(path, newline="") as fh:
        text = fh.read()
    assert text.endswith("\n")
    return np.array([line.split("\t") for line in text[:-1].split("\n")], dtype=object)


def _col(rows: np.ndarray, name: str) -> np.ndarray:
    return rows[:, COLUMNS.index(name)]


def _values(rows: np.ndarray, name: str) -> set[str]:
    v = _col(rows, name)
    return set(v[v != ""])


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    out = tmp_path_factory.mktemp("days")
    res = write_daily_synthetic(out, DAYS, ROWS, seed=3, trend_period=DAYS - 1)
    return out, res


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    out = tmp_path_factory.mktemp("fast")
    return out, write_daily_synthetic(out, 6, 3000, seed=5, groups=FAST)


def test_files_and_layout(days):
    out, res = days
    names = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert names == [f"day{d:02d}.tsv" for d in range(1, DAYS + 1)]
    assert res["files"] == [str(out / n) for n in names]
    rows = _rows(out / "day01.tsv")
    assert rows.shape == (ROWS, 40)
    assert set(_col(rows, "label")) == {"0", "1"}
    for f in INT_FIELDS:
        present = _col(rows, f.name)[_col(rows, f.name) != ""]
        assert all(re.fullmatch(r"-?\d+", v) for v in present), f.name
    for f in CAT_FIELDS:
        present = _col(rows, f.name)[_col(rows, f.name) != ""]
        assert present.size and all(HEX8.match(v) for v in present), f.name
    assert detect_format(out / "day01.tsv") == "criteo"
    reader = RowReader([out / "day01.tsv", out / f"day{DAYS:02d}.tsv"], PRESETS["criteo"])
    total = sum(chunk.table.num_rows for chunk in reader)
    assert total == 2 * ROWS and not reader.skipped.total
    for rec in res["per_day"]:
        assert rec["rows"] == ROWS and 0.2 < rec["positive_rate"] < 0.3


def test_deterministic(days, tmp_path):
    out, res = days
    again = write_daily_synthetic(tmp_path / "a", 3, ROWS, seed=3, trend_period=DAYS - 1)
    for d in (1, 2, 3):  # a day does not depend on how many days are written
        assert (tmp_path / "a" / f"day{d:02d}.tsv").read_bytes() == (out / f"day{d:02d}.tsv").read_bytes()
    assert [r["new"] for r in again["per_day"]] == [r["new"] for r in res["per_day"][:3]]
    write_daily_synthetic(tmp_path / "b", 1, ROWS, seed=4)
    assert (tmp_path / "b" / "day01.tsv").read_bytes() != (out / "day01.tsv").read_bytes()


def test_stats_match_the_files(days):
    out, res = days
    seen: set[tuple[str, str]] = set()
    for rec in res["per_day"]:
        rows = _rows(rec["path"])
        today = {(f.name, v) for f in CAT_FIELDS for v in _values(rows, f.name)}
        assert rec["distinct"] == len(today)
        assert rec["new"] == len(today - seen)
        seen |= today
        assert rec["ever_seen"] == len(seen)
        assert sum(g["distinct"] for g in rec["by_group"].values()) == rec["distinct"]
    assert set(res["groups"]) == {"stable", "medium", "huge"}


def test_new_values_appear_and_old_ones_die(fast):
    out, res = fast
    first, last = _rows(out / "day01.tsv"), _rows(out / "day06.tsv")
    groups = res["groups"]
    for name in groups["medium"] + groups["huge"]:
        # medium values live 4 days, huge ones 3: nothing of day 1 can come back on day 6
        assert not (_values(first, name) & _values(last, name)), name
    for name in groups["stable"]:  # the same values every day: day 6's traffic is day 1's values
        cells = _col(last, name)[_col(last, name) != ""]
        assert np.isin(cells, list(_values(first, name))).mean() > 0.95, name
    # every day brings new values in the churning fields, and a share of the traffic is new
    for rec in res["per_day"][1:]:
        assert rec["by_group"]["medium"]["new"] > 0 and rec["by_group"]["huge"]["new"] > 0
        assert rec["by_group"]["stable"]["expired"] == 0
        assert 0.05 < rec["by_group"]["medium"]["new_share"] < 0.9
    assert res["per_day"][-1]["expired"] > 0 and res["per_day"][-1]["dead"] >= res["per_day"][-1]["expired"]


def test_alive_flat_while_ever_seen_grows(days):
    _, res = days
    alive = np.array([r["distinct"] for r in res["per_day"]], dtype=float)
    ever = np.array([r["ever_seen"] for r in res["per_day"]], dtype=float)
    assert np.all(np.abs(alive / alive.mean() - 1) < 0.05)
    steps = np.diff(ever)
    assert np.all(steps > 0.3 * alive[0])  # grows every day ...
    later = steps[2:]
    assert np.all(np.abs(later / later.mean() - 1) < 0.15)  # ... at a roughly constant rate
    assert ever[-1] > 4 * alive[-1]


def _fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Logistic regression (intercept + slopes) by Newton's method."""
    X = np.column_stack([np.ones(len(x)), x])
    w = np.zeros(X.shape[1])
    for _ in range(25):
        p = 1 / (1 + np.exp(-X @ w))
        H = X.T @ (X * (p * (1 - p))[:, None]) + 1e-6 * np.eye(X.shape[1])
        w -= np.linalg.solve(H, X.T @ (p - y))
    return w


def _logloss(w: np.ndarray, x: np.ndarray, y: np.ndarray) -> float:
    p = np.clip(1 / (1 + np.exp(-(w[0] + x @ w[1:]))), 1e-12, 1 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def _trend_data(path) -> tuple[np.ndarray, np.ndarray]:
    rows = _rows(path)
    raw = _col(rows, "I11")
    z = np.log1p(np.where(raw == "", 0, raw).astype(float))
    z[raw == ""] = np.median(z)
    return ((z - z.mean()) / z.std())[:, None], _col(rows, "label").astype(float)


def test_click_model_drifts(days):
    out, res = days
    x1, y1 = _trend_data(out / "day01.tsv")
    xn, yn = _trend_data(out / f"day{DAYS:02d}.tsv")
    # empirical CTR above vs below the trend feature's median flips between day 1 and day N
    hi1, hin = x1[:, 0] > 0, xn[:, 0] > 0
    assert y1[hi1].mean() - y1[~hi1].mean() > 0.04
    assert yn[hin].mean() - yn[~hin].mean() < -0.04
    assert res["per_day"][0]["trend_beta"] > 0 > res["per_day"][-1]["trend_beta"]
    # a model frozen after day 1 scores day N worse than the model of day N-1 (progressive validation)
    xp, yp = _trend_data(out / f"day{DAYS - 1:02d}.tsv")
    frozen, updated = _fit(x1, y1), _fit(xp, yp)
    assert frozen[1] > 0 > updated[1]
    assert _logloss(frozen, xn, yn) > _logloss(updated, xn, yn) + 0.01


def test_value_weights_random_walk():
    gen = _DailyGenerator(0, DEFAULT_GROUPS, 0.25, "I11", 0.6, 14.0, 0.25)
    fd = next(f for f in gen.fields if f.f.name == "C1")  # a medium field: values born before day 1 too
    birth = np.uint64(0 + (1 << 16)) << np.uint64(40)
    ids = birth | np.arange(20_000, dtype=np.uint64)
    w1, w2, w30 = (gen.weights(fd, ids, d) for d in (1, 2, 30))
    c2, c30 = np.corrcoef(w1, w2)[0, 1], np.corrcoef(w1, w30)[0, 1]
    assert c2 > 0.9 and 0.3 < c30 < 0.8  # slow drift: close day to day, far apart after a month
    born_later = (np.uint64(10 + (1 << 16)) << np.uint64(40)) | np.arange(5, dtype=np.uint64)
    assert np.array_equal(gen.weights(fd, born_later, 10), gen.weights(fd, born_later, 10))


def test_cli(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["data", "synth", "--days", "3", "--rows", "300", "--out", str(out), "--seed", "2"]) == 0
    text = capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["day01.tsv", "day02.tsv", "day03.tsv"]
    assert "alive" in text and "new" in text and "dead" in text and "pos_rate" in text
    assert len(_rows(out / "day02.tsv")) == 300
    assert main(["data", "synth", "--days", "2", "--rows", "10", "--out", str(tmp_path / "s"),
                 "--kind", "sequence"]) == 2
    assert "--days is only for --kind criteo" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
    assert main(["data", "synth", "--days", "0", "--rows", "10", "--out", str(tmp_path / "z")]) == 2
    assert main(["data", "synth", "--days", "2", "--rows", "10", "--out", str(tmp_path / "z.gz")]) == 2
    assert main(["data", "synth", "--days", "2", "--rows", "10", "--out", str(tmp_path / "n"), "--no-label"]) == 2
