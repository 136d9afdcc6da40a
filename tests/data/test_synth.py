"""Tests for ctrlab.data.synth: layout, distributions, determinism, planted interactions."""

from __future__ import annotations

import gzip
import re

import numpy as np
import pytest

from ctrlab.data.synth import (
    CAT_FIELDS,
    COLUMNS,
    INT_FIELDS,
    SynthGenerator,
    write_synthetic,
)

HEX8 = re.compile(r"^[0-9a-f]{8}$")
ROWS = 20_000


def _read_fields(path) -> list[list[str]]:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt", newline="") as fh:
        text = fh.read()
    assert text.endswith("\n")
    return [line.split("\t") for line in text[:-1].split("\n")]


def _columns(rows: list[list[str]]) -> dict[str, np.ndarray]:
    arr = np.array(rows, dtype=object)
    return {name: arr[:, j] for j, name in enumerate(COLUMNS[-arr.shape[1] :])}


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    path = tmp_path_factory.mktemp("synth") / "train.txt"
    summary = write_synthetic(path, ROWS, seed=7, chunk_rows=6_000, progress=False)
    return path, summary


def test_layout_and_types(plain):
    path, summary = plain
    rows = _read_fields(path)
    assert len(rows) == ROWS
    assert {len(r) for r in rows} == {40}
    cols = _columns(rows)

    labels = cols["label"].astype(int)
    assert set(np.unique(labels)) <= {0, 1}

    for f in INT_FIELDS:
        vals = cols[f.name]
        present = vals[vals != ""]
        assert all(re.fullmatch(r"-?\d+", v) for v in present), f.name  # ints, never "3.0"
        ints = present.astype(np.int64)
        if f.name == "I2":
            neg = ints[ints < 0]
            assert 0.02 < neg.size / ints.size < 0.09
            assert set(np.unique(neg)) == {-1, -2, -3}
        else:
            assert ints.min() >= 0, f.name
        assert ints.max() <= f.cap
    # heavy tails: big counts occur
    assert cols["I5"][cols["I5"] != ""].astype(np.int64).max() > 100_000
    assert cols["I3"][cols["I3"] != ""].astype(np.int64).max() > 1_000

    for f in CAT_FIELDS:
        vals = cols[f.name]
        present = vals[vals != ""]
        assert all(HEX8.match(v) for v in present), f.name
        assert len(np.unique(present)) <= f.cardinality


def test_missing_rates_and_groups(plain):
    cols = _columns(_read_fields(plain[0]))
    for f in INT_FIELDS + CAT_FIELDS:
        rate = float(np.mean(cols[f.name] == ""))
        assert abs(rate - f.missing) < 0.015, (f.name, rate, f.missing)
    # Criteo-like co-missingness: these fields are missing together.
    ctx = np.stack([cols[c] == "" for c in ("C19", "C20", "C25", "C26")])
    assert (ctx == ctx[0]).all()
    ads = np.stack([cols[c] == "" for c in ("C3", "C4", "C12", "C16", "C21", "C24")])
    assert (ads == ads[0]).all() and ads[0].any()


def test_cardinality_shape_and_distinct_mappings(plain):
    cols = _columns(_read_fields(plain[0]))
    distinct = {f.name: len(set(cols[f.name]) - {""}) for f in CAT_FIELDS}
    assert distinct["C9"] == 3 and distinct["C20"] == 4 and distinct["C17"] == 10
    assert 100 < distinct["C2"] <= 583
    assert distinct["C3"] > 5_000  # huge fields: most rows are rare values
    # Zipf head: the most frequent value of a medium field covers a big share, not all.
    _, counts = np.unique(cols["C1"], return_counts=True)
    assert 0.2 < counts.max() / ROWS < 0.7
    # The same rank maps to different strings in different fields.
    tops = []
    for f in CAT_FIELDS:
        vals = cols[f.name][cols[f.name] != ""]
        v, c = np.unique(vals, return_counts=True)
        tops.append(v[np.argmax(c)])
    assert len(set(tops)) == len(CAT_FIELDS)


def test_positive_rate_and_summary(plain):
    path, summary = plain
    labels = _columns(_read_fields(path))["label"].astype(int)
    assert summary["rows"] == ROWS
    assert summary["positives"] == int(labels.sum())
    assert abs(summary["positive_rate"] - 0.25) < 0.03
    assert summary["bytes"] == path.stat().st_size == summary["raw_bytes"]
    assert summary["seconds"] > 0
    assert not list(path.parent.glob(".*.tmp-*"))  # no temporary left (fileio.atomic_write names them)


def test_deterministic_and_chunk_size_independent(tmp_path, plain):
    ref_path, _ = plain
    ref = ref_path.read_bytes()
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    write_synthetic(a, ROWS, seed=7, chunk_rows=ROWS, progress=False)
    write_synthetic(b, ROWS, seed=7, chunk_rows=777, progress=False)
    assert a.read_bytes() == ref
    assert b.read_bytes() == ref
    # A shorter file is a prefix of a longer one (rows depend only on their index).
    c = tmp_path / "c.txt"
    write_synthetic(c, 1_000, seed=7, progress=False)
    assert ref.startswith(c.read_bytes())
    # Another seed gives other data.
    d = tmp_path / "d.txt"
    write_synthetic(d, 1_000, seed=8, progress=False)
    assert d.read_bytes() != c.read_bytes()


def test_gzip_round_trip(tmp_path, plain):
    ref_path, _ = plain
    gz = tmp_path / "train.txt.gz"
    summary = write_synthetic(gz, ROWS, seed=7, chunk_rows=5_000, progress=False)
    with gzip.open(gz, "rb") as fh:
        data = fh.read()
    assert data == ref_path.read_bytes()
    assert summary["raw_bytes"] == len(data)
    assert summary["bytes"] == gz.stat().st_size < len(data) / 2


def test_no_label_layout(tmp_path, plain):
    ref_path, _ = plain
    path = tmp_path / "test.txt"
    summary = write_synthetic(path, 2_000, seed=7, label=False, progress=False)
    rows = _read_fields(path)
    assert len(rows) == 2_000 and {len(r) for r in rows} == {39}
    ref = _read_fields(ref_path)[:2_000]
    assert rows == [r[1:] for r in ref]  # same features, label column dropped
    assert summary["rows"] == 2_000


def test_empty_and_bad_arguments(tmp_path):
    path = tmp_path / "empty.txt"
    summary = write_synthetic(path, 0, progress=False)
    assert path.read_bytes() == b"" and summary["rows"] == 0
    with pytest.raises(ValueError):
        write_synthetic(tmp_path / "x.txt", 10, chunk_rows=0, progress=False)
    with pytest.raises(ValueError):
        write_synthetic(tmp_path / "x.txt", -1, progress=False)


def test_file_matches_generator(plain):
    """The file is the generator's batch: labels and hex codes agree row by row."""
    path, _ = plain
    cols = _columns(_read_fields(path)[:3_000])
    b = SynthGenerator(7).batch(0, 3_000)
    np.testing.assert_array_equal(cols["label"].astype(int), b.label)
    j = [f.name for f in CAT_FIELDS].index("C3")
    expect = np.where(b.cat_ranks[j] == 0, "", [f"{c:08x}" for c in b.cat_codes[j]])
    np.testing.assert_array_equal(cols["C3"].astype(str), expect)


def test_distinct_count_grows_for_huge_field(tmp_path):
    path = tmp_path / "big.txt"
    write_synthetic(path, 200_000, seed=3, progress=False)
    import pyarrow.csv as pcsv

    names = list(COLUMNS)
    table = pcsv.read_csv(
        path,
        read_options=pcsv.ReadOptions(column_names=names),
        parse_options=pcsv.ParseOptions(delimiter="\t"),
        convert_options=pcsv.ConvertOptions(include_columns=["C3", "C9"], column_types={"C3": "string", "C9": "string"}),
    )
    c3 = np.asarray(table.column("C3").to_pylist(), dtype=object)
    c3 = c3[c3 != None]  # noqa: E711
    d50 = len(np.unique(c3[:50_000].astype(str)))
    d200 = len(np.unique(c3.astype(str)))
    assert d200 > 2.5 * d50 > 25_000  # keeps growing (expected ~25k -> ~89k)
    assert len(set(table.column("C9").to_pylist()) - {None, ""}) == 3  # tiny field saturates


def test_interaction_signal_is_real_and_non_additive(tmp_path):
    """A linear model on one-hot features misses the planted pair interactions.

    Logistic regression on one-hot categoricals + log-counts is compared with the same
    model that also gets one-hot crosses of the planted field pairs: the crosses must
    raise held-out AUC clearly. And the oracle: the full planted logit ranks better
    than its additive part alone.
    """
    pd = pytest.importorskip("pandas")
    sp = pytest.importorskip("scipy.sparse")
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.preprocessing import OneHotEncoder

    n, seed = 40_000, 11
    path = tmp_path / "lr.txt"
    write_synthetic(path, n, seed=seed, progress=False)
    df = pd.read_csv(path, sep="\t", header=None, names=list(COLUMNS), dtype=str, keep_default_na=False)
    y = df["label"].astype(int).to_numpy()
    ntr = int(0.7 * n)

    dense = []
    for f in INT_FIELDS:
        miss = (df[f.name] == "").to_numpy()
        v = pd.to_numeric(df[f.name].where(~miss, "0")).to_numpy(float)
        dense += [np.log1p(np.maximum(v, 0.0)), miss.astype(float)]
    dense = np.column_stack(dense)
    dense = (dense - dense[:ntr].mean(0)) / (dense[:ntr].std(0) + 1e-9)

    cats = df[[f.name for f in CAT_FIELDS]]
    crossed = cats.copy()
    for a, b in [("C6", "C14"), ("C17", "C23"), ("C9", "C20"), ("C5", "C25")]:
        crossed[f"{a}x{b}"] = cats[a] + "_" + cats[b]

    def heldout_auc(frame) -> float:
        enc = OneHotEncoder(handle_unknown="ignore", min_frequency=3)
        xtr = sp.hstack([enc.fit_transform(frame.iloc[:ntr]), dense[:ntr]]).tocsr()
        xte = sp.hstack([enc.transform(frame.iloc[ntr:]), dense[ntr:]]).tocsr()
        model = LogisticRegression(C=0.1, max_iter=300).fit(xtr, y[:ntr])
        return roc_auc_score(y[ntr:], model.predict_proba(xte)[:, 1])

    auc_linear = heldout_auc(cats)
    auc_crossed = heldout_auc(crossed)
    assert auc_linear > 0.65  # the additive part is learnable too
    assert auc_crossed > auc_linear + 0.015, (auc_linear, auc_crossed)

    b = SynthGenerator(seed).batch(0, n)
    np.testing.assert_array_equal(b.label, y)
    auc_full = roc_auc_score(y, b.logit_additive + b.logit_interaction)
    auc_add = roc_auc_score(y, b.logit_additive)
    assert auc_full > auc_add + 0.03, (auc_add, auc_full)
    # the interaction part alone carries signal, and is uncorrelated with the additive part
    assert roc_auc_score(y, b.logit_interaction) > 0.6
    assert abs(np.corrcoef(b.logit_additive, b.logit_interaction)[0, 1]) < 0.05
