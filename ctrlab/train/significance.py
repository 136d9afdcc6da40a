"""Is one model really better than another on the same rows? Paired tests over the evaluated rows.

Two models scored on the same test rows make correlated errors, so the difference of their
metrics has a much smaller sampling error than either metric alone, and a test that ignores the
rows (the spread over seeds only) both misses the rows' own sampling error and cannot see the
pairing. Here every metric is the mean of per-row *components*:

    AUC      DeLong's placement values: one per positive (the share of negatives it outscores) and
             one per negative; AUC = mean of either group (DeLong et al. 1988, Biometrics 44:837)
    logloss  the per-row cross-entropy (one group, all rows)

For two models A and B on the same rows, the difference of their metrics is the mean of the
per-row differences of the components, and its variance over the sampling of the rows is
``sum over groups of var(component_A - component_B) / group size`` (DeLong's paired variance for
AUC, a paired z-test for logloss). Several training seeds of a model are pooled by averaging their
components row by row, which makes the pooled metric the mean of the seeds' metrics exactly.

The rows are not the only noise: a model trained again with another seed scores differently. With
at least two seeds on both sides that spread is added as ``var_seeds(A)/n_A + var_seeds(B)/n_B``
(sample variances of the per-seed metrics), and since a variance from 2-3 seeds is itself
uncertain, the p-value comes from Student's t with Welch-Satterthwaite degrees of freedom (the rows'
part counts as known: thousands of rows). With one seed on a side the spread cannot be measured:
``se_seeds`` is None and the p-value counts the rows' sampling error only (normal), which tells
whether two *trained models* differ, not whether two *settings* do.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..metrics import auc_placements, row_log_losses

#: metric kind -> name of the test, as printed next to the results
TEST_NAMES = {"auc": "DeLong paired test over the rows, seeds pooled",
              "logloss": "paired z-test of per-row logloss over the rows, seeds pooled"}


@dataclass(frozen=True)
class PairedTest:
    """A minus B on the same rows. ``diff`` is mean(A's metric over seeds) - mean(B's)."""

    diff: float
    se: float  # total standard error of diff: sqrt(se_rows^2 + se_seeds^2)
    se_rows: float  # from the sampling of the rows (DeLong / paired z)
    se_seeds: float | None  # from the spread over training seeds; None with fewer than 2 seeds on a side
    df: float  # degrees of freedom of the t statistic diff / se (inf: normal)
    p: float  # two-sided
    test: str


def row_components(kind: str, labels: np.ndarray, scores: np.ndarray) -> list[np.ndarray]:
    """The per-row components whose group means are the metric (see the module docstring)."""
    if kind == "auc":
        v10, v01 = auc_placements(labels, scores)
        if v10.size < 2 or v01.size < 2:
            raise ValueError(f"a paired AUC test needs at least 2 positive and 2 negative rows, got "
                             f"{v10.size} and {v01.size}")
        return [v10, v01]
    if kind == "logloss":
        losses = row_log_losses(labels, scores)
        if losses.size < 2:
            raise ValueError(f"a paired logloss test needs at least 2 rows, got {losses.size}")
        return [losses]
    raise ValueError(f"no paired test for the metric {kind!r}; one of {', '.join(TEST_NAMES)}")


def _pooled(kind: str, labels: np.ndarray, runs: Sequence[np.ndarray]) -> tuple[list[np.ndarray], list[float]]:
    """Components averaged over the runs (seeds) row by row, and each run's metric."""
    if not runs:
        raise ValueError("no scored runs to compare")
    per_run = [row_components(kind, labels, scores) for scores in runs]
    pooled = [np.mean([components[g] for components in per_run], axis=0) for g in range(len(per_run[0]))]
    return pooled, [float(components[0].mean()) for components in per_run]


def paired_test(kind: str, labels: np.ndarray, runs_a: Sequence[np.ndarray],
                runs_b: Sequence[np.ndarray]) -> PairedTest:
    """Compare A and B (each: per-row scores of one or more seeds, f32/f64[n]) on the same rows.

    ``labels`` (0/1, [n]) are the rows' labels; every score array must have n entries in the same
    row order. Returns the difference A - B of the seed-mean metric, its standard errors and the
    two-sided p-value (see the module docstring)."""
    labels = np.asarray(labels)
    for scores in (*runs_a, *runs_b):
        if np.asarray(scores).shape != labels.shape:
            raise ValueError(f"scores of {np.asarray(scores).shape[0]} rows for {labels.shape[0]} labels: "
                             "a paired test needs both models scored on the same rows")
    pooled_a, values_a = _pooled(kind, labels, runs_a)
    pooled_b, values_b = _pooled(kind, labels, runs_b)
    diff = float(pooled_a[0].mean() - pooled_b[0].mean())
    var_rows = sum(float(np.var(a - b, ddof=1)) / a.size for a, b in zip(pooled_a, pooled_b))
    # each side's seed variance of its mean, with its degrees of freedom
    measured = len(values_a) >= 2 and len(values_b) >= 2
    seed_terms = [(float(np.var(v, ddof=1)) / len(v), len(v) - 1) for v in (values_a, values_b)] if measured else []
    var_seeds = sum(var for var, _ in seed_terms)
    var = var_rows + var_seeds
    df = math.inf
    if measured and var_seeds > 0:  # Welch-Satterthwaite; the rows' term has (practically) infinite df
        df = var ** 2 / sum(v ** 2 / dof for v, dof in seed_terms)
    se = math.sqrt(var)
    if se > 0:
        p = t_two_sided_p(diff / se, df)
    else:  # identical components everywhere: nothing differs, or (one class per group) nothing to tell
        p = 1.0 if diff == 0 else 0.0
    return PairedTest(diff=diff, se=se, se_rows=math.sqrt(var_rows),
                      se_seeds=math.sqrt(var_seeds) if measured else None, df=df, p=p, test=TEST_NAMES[kind])


def t_two_sided_p(t: float, df: float) -> float:
    """P(|T| >= |t|) for Student's t with ``df`` > 0 degrees of freedom (normal for df = inf)."""
    if math.isinf(df):
        return math.erfc(abs(t) / math.sqrt(2.0))
    return regularized_beta(df / (df + t * t), df / 2.0, 0.5)


def regularized_beta(x: float, a: float, b: float) -> float:
    """The regularized incomplete beta function I_x(a, b), by its continued fraction (modified
    Lentz), using the symmetry I_x(a, b) = 1 - I_{1-x}(b, a) where the fraction converges slowly."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    if x > (a + 1.0) / (a + b + 2.0):
        return 1.0 - regularized_beta(1.0 - x, b, a)
    log_front = a * math.log(x) + b * math.log1p(-x) - math.log(a) - (math.lgamma(a) + math.lgamma(b)
                                                                      - math.lgamma(a + b))
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    fraction = d
    for m in range(1, 500):
        for numerator in (m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
                          -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))):
            d = 1.0 + numerator * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + numerator / c
            c = c if abs(c) > tiny else tiny
            fraction *= c * d
        if abs(c * d - 1.0) < 1e-15:
            break
    return math.exp(log_front) * fraction
