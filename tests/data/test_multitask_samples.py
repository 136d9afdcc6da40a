"""torch-rechub's multi-task samples through the generic CSV schema, no code of their own: Ali-CCP
(``click,purchase`` + 23 label-encoded sparse fields + 8 dense ``D*`` floats) and Census-Income
(labels ``income`` and ``marital status`` among 41 columns). Each is prepared with a declared
``data.schema`` (two labels); the store's tasks, label shapes and per-task positive rates are
checked against a direct count with the csv module."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from ctrlab.config import load_config
from ctrlab.data.prepare import prepare
from ctrlab.data.store import Store
from ctrlab.train.store_config import prepare_options

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "datawhalechina__torch-rechub" / "examples" \
    / "ranking" / "data"
SPLITS = ("train", "valid", "test")
FILES = {
    "ali-ccp": {"train": "ali_ccp_train_sample.csv", "valid": "ali_ccp_val_sample.csv",
                "test": "ali_ccp_test_sample.csv"},
    "census-income": {"train": "census_income_train_sample.csv", "valid": "census_income_val_sample.csv",
                      "test": "census_income_test_sample.csv"},
}
CENSUS_CONTINUOUS = ["age", "wage per hour", "capital gains", "capital losses", "divdends from stocks",
                     "num persons worked for employer", "weeks worked in year"]  # (min-max scaled)


def _files(name: str) -> dict[str, Path]:
    paths = {split: DATA / name / file for split, file in FILES[name].items()}
    missing = [str(p) for p in paths.values() if not p.is_file()]
    if missing:
        pytest.skip(f"torch-rechub sample not available: {missing}")
    return paths


def _rows(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def _prepare(tmp_path: Path, paths: dict[str, Path], schema: dict) -> Store:
    cfg = load_config(None, [], base={
        "data": {"format": "csv", "schema": schema, **{split: [str(paths[split])] for split in SPLITS}},
        "features": {"numeric": {"transform": "passthrough"}, "categorical": {"min_count": 1}}})
    return prepare(prepare_options(cfg), tmp_path / "store", progress=False, log=lambda _: None)


def _check(store: Store, tmp_path: Path, paths: dict[str, Path], labels: list[str]) -> None:
    assert list(store.tasks) == labels
    for split in SPLITS:
        _, rows = _rows(paths[split])
        label = np.load(tmp_path / "store" / split / "label.npy")
        assert label.dtype == np.uint8 and label.shape == (len(rows), len(labels)), (split, label.shape)
        assert store.meta["splits"][split]["rows"] == len(rows)
        for t, name in enumerate(labels):
            expected = sum(int(float(r[name])) for r in rows) / len(rows)
            assert label[:, t].mean() == pytest.approx(expected), (split, name)
            assert set(np.unique(label[:, t])) <= {0, 1}  # (no missing labels in these samples)


def test_ali_ccp_sample_two_tasks(tmp_path):
    paths = _files("ali-ccp")
    header, rows = _rows(paths["train"])
    dense = [c for c in header if c.startswith("D")]
    assert len(dense) == 8 and header[:2] == ["click", "purchase"]
    store = _prepare(tmp_path, paths, {"label": ["click", "purchase"], "dense": dense, "header": True})
    assert store.spec.n_dense == 8 and store.spec.n_sparse == len(header) - 2 - 8 == 23
    _check(store, tmp_path, paths, ["click", "purchase"])
    # the sample has positives for both tasks (the rates are not trivially 0)
    assert 0 < np.load(tmp_path / "store" / "train" / "label.npy")[:, 1].sum()


def test_census_income_sample_two_tasks(tmp_path):
    paths = _files("census-income")
    header, rows = _rows(paths["train"])
    assert "income" in header and "marital status" in header and len(header) == 41
    assert all(c in header for c in CENSUS_CONTINUOUS)
    store = _prepare(tmp_path, paths, {"label": ["income", "marital status"], "dense": CENSUS_CONTINUOUS,
                                       "header": True})
    assert store.spec.n_dense == len(CENSUS_CONTINUOUS) and store.spec.n_sparse == 41 - 2 - len(CENSUS_CONTINUOUS)
    _check(store, tmp_path, paths, ["income", "marital status"])
