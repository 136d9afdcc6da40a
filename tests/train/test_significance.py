"""The paired significance tests behind the "vs best" column of ``ctrlab compare`` / ``sweep``.

DeLong's placement values and paired variance against double-loop references and a paired
bootstrap; the t p-values against closed forms; seed pooling; the verdicts (two identical models
are never "worse", nor the same model with other seeds; a clearly worse one is); and end to end: a
sweep whose points are identical or untrained on data with a strong signal."""

from __future__ import annotations

import argparse
import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ctrlab.cli.experiments import add_compare, add_sweep
from ctrlab.experiments.layout import read_scores
from ctrlab.experiments.results import PointResult, rank_and_flag
from ctrlab.metrics import auc_placements, log_loss, midranks, roc_auc, row_log_losses
from ctrlab.train.significance import TEST_NAMES, paired_test, regularized_beta, t_two_sided_p

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tied_scores(rng: np.random.Generator, n: int, signal: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores rounded to 1 decimal, so that many scores tie (within and across classes)."""
    labels = (rng.random(n) < 0.4).astype(np.uint8)
    return labels, np.round(signal * labels + rng.normal(size=n), 1)


# --------------------------------------------------------------------------------------------
# DeLong against loop-written references
# --------------------------------------------------------------------------------------------

def psi(x: float, y: float) -> float:
    """Kernel of the Mann-Whitney AUC: positive score x against negative score y."""
    return 1.0 if x > y else 0.5 if x == y else 0.0


def loop_placements(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    pos = [s for s, y in zip(scores, labels) if y]
    neg = [s for s, y in zip(scores, labels) if not y]
    v10 = np.array([sum(psi(x, y) for y in neg) / len(neg) for x in pos])
    v01 = np.array([sum(psi(x, y) for x in pos) / len(pos) for y in neg])
    return v10, v01


def loop_delong_variance(labels, scores_a, scores_b) -> float:
    """Var(AUC_a - AUC_b) as DeLong et al. (1988) write it: S = S10/m + S01/n with the 2x2
    covariance matrices of the structural components, then L S L' for L = (1, -1)."""
    comps = [loop_placements(labels, s) for s in (scores_a, scores_b)]
    m, n = comps[0][0].size, comps[0][1].size
    s10 = np.zeros((2, 2))
    s01 = np.zeros((2, 2))
    for r in range(2):
        for c in range(2):
            auc_r, auc_c = comps[r][0].mean(), comps[c][0].mean()
            s10[r, c] = sum((comps[r][0][i] - auc_r) * (comps[c][0][i] - auc_c) for i in range(m)) / (m - 1)
            s01[r, c] = sum((comps[r][1][j] - auc_r) * (comps[c][1][j] - auc_c) for j in range(n)) / (n - 1)
    cov = s10 / m + s01 / n
    return cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]


def test_midranks_average_tied_ranks():
    values = np.array([3.0, 1.0, 3.0, 2.0, 3.0, 1.0])
    expected = [sum(1 for w in values if w < v) + (sum(1 for w in values if w == v) + 1) / 2 for v in values]
    assert midranks(values).tolist() == expected == [5.0, 1.5, 5.0, 3.0, 5.0, 1.5]


def test_placements_match_double_loops_with_ties():
    labels, scores = tied_scores(np.random.default_rng(1), 120, 1.0)
    assert len(np.unique(scores)) < 60  # ties across and within classes
    v10, v01 = auc_placements(labels, scores)
    ref10, ref01 = loop_placements(labels, scores)
    np.testing.assert_allclose(v10, ref10, rtol=0, atol=1e-12)
    np.testing.assert_allclose(v01, ref01, rtol=0, atol=1e-12)
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    assert roc_auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores), abs=1e-12)
    assert v01.mean() == pytest.approx(v10.mean(), abs=1e-12)


def test_delong_variance_matches_the_loop_formula():
    rng = np.random.default_rng(2)
    labels, scores_a = tied_scores(rng, 150, 1.2)
    scores_b = np.round(scores_a + rng.normal(scale=0.8, size=labels.size), 1)  # correlated, also tied
    test = paired_test("auc", labels, [scores_a], [scores_b])
    assert test.diff == pytest.approx(roc_auc(labels, scores_a) - roc_auc(labels, scores_b), abs=1e-12)
    assert test.se_rows ** 2 == pytest.approx(loop_delong_variance(labels, scores_a, scores_b), rel=1e-9)
    assert test.se_seeds is None and test.se == test.se_rows and math.isinf(test.df)
    assert test.p == pytest.approx(math.erfc(abs(test.diff) / test.se / math.sqrt(2)), rel=1e-12)
    assert test.test == TEST_NAMES["auc"] == "DeLong paired test over the rows, seeds pooled"


def test_delong_standard_error_agrees_with_a_paired_bootstrap():
    """Resample positives and negatives (each with replacement, both models on the same rows):
    the spread of the AUC difference is DeLong's standard error, within bootstrap noise."""
    rng = np.random.default_rng(3)
    labels = (rng.random(800) < 0.3).astype(np.uint8)
    signal = labels + rng.normal(size=labels.size)
    scores_a = signal + rng.normal(scale=0.5, size=labels.size)
    scores_b = signal + rng.normal(scale=0.9, size=labels.size)
    pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
    diffs = []
    for _ in range(1500):
        rows = np.concatenate([rng.choice(pos, pos.size), rng.choice(neg, neg.size)])
        diffs.append(roc_auc(labels[rows], scores_a[rows]) - roc_auc(labels[rows], scores_b[rows]))
    test = paired_test("auc", labels, [scores_a], [scores_b])
    assert test.se_rows == pytest.approx(np.std(diffs, ddof=1), rel=0.1)
    # pairing matters: the paired SE is well below what two independent AUCs would have
    alone = [paired_test("auc", labels, [s], [np.zeros_like(s) + rng.normal(scale=1e-9, size=s.size)]).se_rows
             for s in (scores_a, scores_b)]
    assert test.se_rows < 0.8 * math.hypot(*alone)


def test_logloss_test_is_a_paired_z_on_per_row_losses():
    rng = np.random.default_rng(4)
    labels = (rng.random(500) < 0.3).astype(np.uint8)
    p_a = np.clip(0.3 + 0.3 * (labels - 0.3) + rng.normal(scale=0.05, size=500), 0.01, 0.99)
    p_b = np.clip(p_a + rng.normal(scale=0.05, size=500), 0.01, 0.99)
    test = paired_test("logloss", labels, [p_a], [p_b])
    assert test.diff == pytest.approx(log_loss(labels, p_a) - log_loss(labels, p_b), abs=1e-12)
    per_row = row_log_losses(labels, p_a) - row_log_losses(labels, p_b)
    assert test.se_rows == pytest.approx(per_row.std(ddof=1) / math.sqrt(500), rel=1e-9)


def test_seeds_are_pooled_and_their_spread_counted():
    rng = np.random.default_rng(5)
    labels = (rng.random(600) < 0.3).astype(np.uint8)
    runs_a = [labels + rng.normal(size=600) for _ in range(3)]
    runs_b = [0.6 * labels + rng.normal(size=600) for _ in range(2)]
    test = paired_test("auc", labels, runs_a, runs_b)
    aucs_a = [roc_auc(labels, s) for s in runs_a]
    aucs_b = [roc_auc(labels, s) for s in runs_b]
    assert test.diff == pytest.approx(np.mean(aucs_a) - np.mean(aucs_b), abs=1e-12)
    var_a, var_b = np.var(aucs_a, ddof=1) / 3, np.var(aucs_b, ddof=1) / 2
    assert test.se_seeds ** 2 == pytest.approx(var_a + var_b, rel=1e-9)
    assert test.se ** 2 == pytest.approx(test.se_rows ** 2 + var_a + var_b, rel=1e-9)
    assert test.df == pytest.approx((test.se ** 2) ** 2 / (var_a ** 2 / 2 + var_b ** 2 / 1), rel=1e-9)
    assert test.p == pytest.approx(t_two_sided_p(test.diff / test.se, test.df), rel=1e-12)


def test_student_t_p_values_against_closed_forms():
    for t in (0.0, 0.3, 1.0, 2.5, 12.7, 80.0):
        assert t_two_sided_p(t, 1) == pytest.approx(1 - 2 / math.pi * math.atan(t), rel=1e-9, abs=1e-15)
        assert t_two_sided_p(-t, 2) == pytest.approx(1 - t / math.sqrt(t * t + 2), rel=1e-9, abs=1e-15)
        assert t_two_sided_p(t, math.inf) == pytest.approx(math.erfc(t / math.sqrt(2)), rel=1e-12)
    assert t_two_sided_p(1.96, 1e7) == pytest.approx(0.05, abs=1e-4)  # large df: the normal
    # I_x(1, b) = 1 - (1 - x)^b and I_x(a, 1) = x^a
    assert regularized_beta(0.3, 1.0, 2.5) == pytest.approx(1 - 0.7 ** 2.5, rel=1e-12)
    assert regularized_beta(0.8, 3.5, 1.0) == pytest.approx(0.8 ** 3.5, rel=1e-12)


# --------------------------------------------------------------------------------------------
# verdicts
# --------------------------------------------------------------------------------------------

def simulated_runs(rng: np.random.Generator, n_rows: int, seeds: int, seed_spread: float,
                   n_runs: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """Rows of a planted logistic model and ``n_runs`` "trainings" of one linear model: each seed
    lands on other weights (a different model, not only noise on the scores)."""
    features = rng.normal(size=(n_rows, 12))
    beta = rng.normal(size=12) * 0.4
    labels = (rng.random(n_rows) < 1 / (1 + np.exp(1.0 - features @ beta))).astype(np.uint8)
    return labels, [features @ (beta + rng.normal(size=12) * seed_spread) for _ in range(n_runs)]


def point(name: str, scores: list[np.ndarray] | None, labels: np.ndarray, metric: str = "test_auc") -> PointResult:
    value = roc_auc if metric.endswith("auc") else log_loss
    return PointResult(name, [name], {}, len(scores or [1]),
                       [{metric: value(labels, s)} for s in (scores or [])], scores=scores)


def test_identical_models_are_never_worse():
    rng = np.random.default_rng(6)
    for seeds in (1, 2, 3):
        labels, runs = simulated_runs(rng, 2000, seeds, 0.2, seeds)
        rows = rank_and_flag([point("a", runs, labels), point("b", [r.copy() for r in runs], labels)], "test_auc",
                             labels)
        assert rows[1].test.diff == 0 and rows[1].test.p == 1.0
        assert rows[1].vs_best == ("tie (1 seed)" if seeds == 1 else "tie")


def test_the_same_model_with_other_seeds_is_not_worse_beyond_the_test_level():
    """Same model, seeds 0..k-1 against seeds k..2k-1, with a seed spread that dwarfs the rows'
    error: "worse" about as often as the nominal 5% allows (the rows' error alone flags many more).
    Only two-sided rejections that land on the lower mean count, which is every rejection here."""
    rng = np.random.default_rng(7)
    verdicts: dict[int, list[str]] = {2: [], 3: []}
    rows_only_worse = 0
    for seeds in verdicts:
        for _ in range(250):
            labels, runs = simulated_runs(rng, 1000, seeds, 0.3, 2 * seeds)
            rows = rank_and_flag([point("a", runs[:seeds], labels), point("b", runs[seeds:], labels)], "test_auc",
                                 labels)
            verdicts[seeds].append(rows[1].vs_best)
            rows_only_worse += math.erfc(abs(rows[1].test.diff) / rows[1].test.se_rows / math.sqrt(2)) < 0.05
    for seeds, found in verdicts.items():
        assert set(found) <= {"tie", "worse"}
        assert found.count("worse") / len(found) <= 0.1, seeds  # nominal 0.05; 250 draws
    assert rows_only_worse / 500 > 0.3  # the regime where the seeds' spread matters
    # with one seed a side the rows alone cannot say whether the settings differ: never "worse"
    labels, runs = simulated_runs(rng, 1500, 1, 0.3, 2)
    rows = rank_and_flag([point("a", runs[:1], labels), point("b", runs[1:], labels)], "test_auc", labels)
    assert rows[1].vs_best in ("tie (1 seed)", "unclear (1 seed)")


def test_a_clearly_worse_model_is_worse_and_missing_scores_get_no_verdict():
    rng = np.random.default_rng(8)
    labels, runs = simulated_runs(rng, 1500, 2, 0.05, 2)
    noise = [rng.random(labels.size) for _ in range(2)]
    rows = rank_and_flag([point("noise", noise, labels), point("model", runs, labels),
                          point("unscored", None, labels), point("empty", [], labels)], "test_auc", labels)
    by_name = {r.name: r for r in rows}
    assert [r.name for r in rows][0] == "model" and by_name["model"].vs_best == "best"
    assert by_name["noise"].vs_best == "worse" and by_name["noise"].test.p < 1e-6
    assert by_name["noise"].test.diff < -0.2
    assert by_name["empty"].vs_best == ""
    # a row without per-row scores: no test, and the same when the best row has none
    unscored = point("unscored", None, labels)
    unscored.runs = [{"test_auc": 0.9}]
    rows = rank_and_flag([point("model", runs, labels), unscored], "test_auc", labels)
    assert [(r.name, r.vs_best, r.test) for r in rows][1] == ("model", "-", None)
    # logloss: lower is better; the noise model's probabilities lose
    probs = [1 / (1 + np.exp(-s)) for s in runs]
    rows = rank_and_flag([point("noise", noise, labels, "test_logloss"), point("model", probs, labels, "test_logloss")],
                         "test_logloss", labels)
    assert [(r.name, r.vs_best) for r in rows] == [("model", "best"), ("noise", "worse")]
    assert rows[1].test.diff > 0 and rows[1].test.test == TEST_NAMES["logloss"]


# --------------------------------------------------------------------------------------------
# end to end: sweep and compare on a store with a strong signal
# --------------------------------------------------------------------------------------------

def cli(*argv) -> int:
    parser = argparse.ArgumentParser(prog="ctrlab")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_compare, add_sweep):
        add(sub)
    args = parser.parse_args([str(a) for a in argv])
    return args.func(args)


@pytest.fixture(scope="module")
def strong_store(tmp_path_factory) -> Path:
    """2,000 Criteo-layout rows whose click depends strongly on C1 (0.85 vs 0.1)."""
    from ctrlab.data.prepare import PrepareOptions, prepare

    root = tmp_path_factory.mktemp("strong")
    rng = np.random.default_rng(9)
    values = rng.integers(0, 20, size=2000)
    clicks = rng.random(2000) < np.where(values < 10, 0.85, 0.1)
    with open(root / "rows.tsv", "w", encoding="utf-8") as fh:
        for value, click in zip(values, clicks):
            ints = [str(rng.integers(0, 5))] + [""] * 12
            cats = [f"{0xa0000000 + value:08x}"] + [""] * 25
            fh.write("\t".join([str(int(click))] + ints + cats) + "\n")
    prepare(PrepareOptions(train=[str(root / "rows.tsv")]), root / "store", progress=False, log=lambda _: None)
    return root / "store"


TINY = ["--set", "train.batch_size=128", "--set", "train.threads=1", "--set", "train.eval_batch_size=1000",
        "--set", "train.optimizer=adam", "--quiet"]


def test_sweep_identical_points_tie_and_an_untrained_model_is_worse(strong_store, tmp_path):
    """Grid lr x log_every: log_every changes nothing, so the best point's twin is the same model
    (same seeds): a tie at exactly 0; lr=0 leaves the weights at their random start: worse."""
    out = tmp_path / "sweep"
    assert cli("sweep", "--data", strong_store, "--model", "lr", "--grid", "train.lr=0,0.05",
               "--grid", "train.log_every=1,2", "--seeds", "2", "--epochs", "2", "--metric", "test_auc",
               "--out", out, *TINY) == 0
    with open(out / "results.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    verdicts = {(r["train.lr"], r["train.log_every"]): r for r in rows}
    best = rows[0]
    assert best["train.lr"] == "0.05" and best["vs_best"] == "best" and float(best["test_auc_mean"]) > 0.8
    twin = verdicts[("0.05", "2" if best["train.log_every"] == "1" else "1")]
    assert twin["vs_best"] == "tie" and float(twin["diff_vs_best"]) == 0.0 and float(twin["p_vs_best"]) == 1.0
    for log_every in ("1", "2"):
        untrained = verdicts[("0", log_every)]
        assert untrained["vs_best"] == "worse" and float(untrained["p_vs_best"]) < 0.01
        assert float(untrained["diff_vs_best"]) < -0.1 and float(untrained["se_rows_vs_best"]) > 0
    md = (out / "results.md").read_text()
    assert "DeLong paired test over the rows, seeds pooled (test split" in md and "| p | vs best |" in md

    # the same model with other seeds (a compare at train.seed 3000) against the sweep's best point
    other = tmp_path / "other"
    assert cli("compare", "--data", strong_store, "--models", "lr", "--seeds", "2", "--epochs", "2",
               "--set", "train.lr=0.05", "--set", "train.seed=3000", "--out", other, *TINY) == 0
    manifest = json.loads((out / "experiment.json").read_text())
    trained = next(p["name"] for p in manifest["points"] if p["settings"] == {"train.lr": 0.05, "train.log_every": 1})
    best_runs = [r["dir"] for r in manifest["runs"] if r["point"] == trained]

    def scores(exp: Path, dirs: list[str]) -> tuple[np.ndarray, list[np.ndarray]]:
        read = [read_scores(exp / d, "test", json.loads((exp / d / "summary.json").read_text())) for d in dirs]
        return read[0][0], [s for _, s in read]

    labels, runs_a = scores(out, best_runs)
    labels_b, runs_b = scores(other, ["runs/lr_seed0", "runs/lr_seed1"])
    assert np.array_equal(labels, labels_b)
    ranked = rank_and_flag([point("seeds 2024-2025", runs_a, labels), point("seeds 3000-3001", runs_b, labels)],
                           "test_auc", labels)
    assert ranked[1].vs_best == "tie"
