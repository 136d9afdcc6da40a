"""The results table of an experiment: one row per point, mean and std over seeds.

One table object, three renderings (markdown, CSV, HTML) built from the same cells, so the
numbers in results.md, results.csv and report.html cannot disagree.

Significance: every row is tested against the best one with a paired test over the rows of the
ranking metric's split (DeLong for AUC, a paired z-test of per-row logloss), the seeds of each row
pooled and their spread added to the variance (see :mod:`ctrlab.train.significance`). "worse" only
when the two-sided p-value is below ``ALPHA``; otherwise "tie". The tests read each run's
per-row scores (see :func:`ctrlab.experiments.layout.read_scores`); without them a row gets no verdict ("-") and the footer
says why.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..fileio import write_bytes_atomic
from ..metrics import MISSING_LABEL
from ..train.significance import TEST_NAMES, paired_test
from .layout import load_experiment_runs, read_scores

ALPHA = 0.05  # two-sided significance level of "worse"

#: metric key -> (header, higher is better, decimals)
METRICS: dict[str, tuple[str, bool, int]] = {
    "parameters": ("parameters", False, 0),
    "epochs_run": ("epochs", False, 0),
    "train_loss": ("train loss", False, 4),
    "valid_auc": ("valid AUC", True, 4),
    "valid_logloss": ("valid logloss", False, 4),
    "test_auc": ("test AUC", True, 4),
    "test_logloss": ("test logloss", False, 4),
    "train_seconds": ("train time (s)", False, 1),
    "samples_per_s": ("samples/s", True, 0),
}
RANKING_METRICS = ("test_auc", "valid_auc", "test_logloss", "valid_logloss")
#: the table's metric columns, in order (mean ± std where it varies over seeds)
TABLE_METRICS = ("parameters", "epochs_run", "train_loss", "valid_auc", "test_auc", "test_logloss",
                 "train_seconds", "samples_per_s")
WITH_STD = ("train_loss", "valid_auc", "test_auc", "test_logloss")
#: per task of a multi-task run (several labels): ``test_auc/<task>`` etc., after the means
PER_TASK = ("valid_auc", "test_auc", "test_logloss")


def metric_info(key: str) -> tuple[str, bool, int]:
    """(header, higher is better, decimals) of a table metric, per-task ones (``test_auc/click``) included."""
    base, _, task = key.partition("/")
    header, higher, decimals = METRICS[base]
    return (f"{header} {task}" if task else header), higher, decimals


def table_metrics(tasks: list[str]) -> list[str]:
    """The table's metric columns: TABLE_METRICS, and for a multi-task experiment each task's
    valid AUC, test AUC and logloss after their means (``test_auc`` is then the mean over tasks)."""
    out = []
    for key in TABLE_METRICS:
        out.append(key)
        if key in PER_TASK:
            out += [f"{key}/{task}" for task in tasks]
    return out


def run_tasks(summary: dict[str, Any]) -> list[str]:
    """The tasks a finished run reports one by one: a multi-task run's (not one trained with train.task)."""
    tasks = summary.get("tasks") or []
    return list(tasks) if len(tasks) > 1 and not summary.get("task") else []


def run_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """The table's numbers of one finished run (its summary).

    The training time is the sum of the epochs' wall times from the history, which survives a
    resume (``train_seconds`` of the summary only covers the last invocation)."""
    history = summary.get("history") or []
    seconds = sum(h.get("seconds", 0.0) for h in history) if history else summary.get("train_seconds")
    out: dict[str, float | None] = {key: summary.get(key) for key in METRICS}
    out.update({f"{key}/{t}": summary.get(f"{key}/{t}") for key in PER_TASK for t in run_tasks(summary)})
    out["train_seconds"] = seconds
    return out


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n-1); std is None below two values."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


@dataclass
class PointResult:
    name: str
    labels: list[str]  # the row's label cells (model, or the sweep setting)
    settings: dict[str, Any]
    seeds_planned: int
    runs: list[dict[str, float | None]] = field(default_factory=list)  # run_metrics of finished runs
    scores: list[Any] | None = None  # per finished run: per-row scores on the metric's split (None: some missing)
    vs_best: str = ""  # best | tie | worse | tie (1 seed) | unclear (1 seed) | - (no paired test) | "" (no result)
    test: Any = None  # PairedTest of this row against the best one
    task_tests: dict[str, Any] = field(default_factory=dict)  # multi-task: per task, PairedTest against the best

    def values(self, key: str) -> list[float]:
        return [r[key] for r in self.runs if r.get(key) is not None]

    def mean(self, key: str) -> float | None:
        return mean_std(self.values(key))[0]

    def std(self, key: str) -> float | None:
        return mean_std(self.values(key))[1]


@dataclass
class ResultsTable:
    title: str
    kind: str
    metric: str
    label_headers: list[str]
    rows: list[PointResult]
    footer: list[str]
    tasks: list[str] = field(default_factory=list)  # a multi-task experiment's tasks (one column each)

    @property
    def metrics(self) -> list[str]:
        return table_metrics(self.tasks)


def metric_split_kind(metric: str) -> tuple[str, str]:
    """``"test_auc"`` -> ("test", "auc")."""
    split, kind = metric.split("_", 1)
    return split, kind


def rank_and_flag(rows: list[PointResult], metric: str, labels: Any = None,
                  alpha: float = ALPHA, tasks: list[str] | None = None) -> list[PointResult]:
    """Sort best first by ``metric`` (points without a result last) and judge every other row
    against the best one with the paired test over the rows (``labels`` of the metric's split, and
    each row's ``scores``); "-" where a side has no per-row scores. A multi-task experiment
    (``tasks``, labels and scores ``[n, T]``) is ranked by the mean over the tasks and tested task
    by task on each task's labelled rows: "worse (task)" when worse on some task and better on
    none, "mixed" when worse on one and better on another."""
    higher = METRICS[metric][1]
    _, kind = metric_split_kind(metric)
    done = [r for r in rows if r.mean(metric) is not None]
    rest = [r for r in rows if r.mean(metric) is None]
    done.sort(key=lambda r: -r.mean(metric) if higher else r.mean(metric))
    for i, row in enumerate(done):
        row.test, row.task_tests = None, {}
        if i == 0:
            row.vs_best = "best"
        elif labels is None or not row.scores or not done[0].scores:
            row.vs_best = "-"
        elif tasks:
            row.vs_best = _judge_tasks(row, done[0], kind, labels, higher, alpha, tasks)
        else:
            row.vs_best = _judge(row, done[0], kind, labels, higher, alpha)
    for row in rest:
        row.vs_best = ""
    return done + rest


def _judge(row: PointResult, best: PointResult, kind: str, labels: Any, higher: bool, alpha: float) -> str:
    keep = labels != MISSING_LABEL  # (train.task on a store where some rows lack that label)
    row.test = paired_test(kind, labels[keep], [s[keep] for s in row.scores], [s[keep] for s in best.scores])
    differs = row.test.p < alpha and (row.test.diff < 0 if higher else row.test.diff > 0)
    if row.test.se_seeds is None:  # one seed: the rows can show a tie, but not that the settings differ
        return "unclear (1 seed)" if differs else "tie (1 seed)"
    return "worse" if differs else "tie"


def _judge_tasks(row: PointResult, best: PointResult, kind: str, labels: Any, higher: bool, alpha: float,
                 tasks: list[str]) -> str:
    worse, better = [], []
    for t, task in enumerate(tasks):
        keep = labels[:, t] != MISSING_LABEL
        test = paired_test(kind, labels[keep, t], [s[keep, t] for s in row.scores], [s[keep, t] for s in best.scores])
        row.task_tests[task] = test
        if test.p < alpha:
            (worse if (test.diff < 0 if higher else test.diff > 0) else better).append(task)
    verdict = ("mixed" if worse and better else f"worse ({', '.join(worse)})" if worse
               else f"better ({', '.join(better)})" if better else "tie")
    one_seed = any(test.se_seeds is None for test in row.task_tests.values())
    return f"{verdict} (1 seed)" if one_seed else verdict


def format_value(value: Any) -> str:
    """A setting for a table cell or a legend: lists as [a,b], floats short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def same_value(a: Any, b: Any) -> bool:
    """Equal as config values: lists and tuples alike, 1 == 1.0 (but not True == 1)."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def _num(value: float | None, decimals: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if decimals == 0 else f"{value:.{decimals}f}"


def metric_cell(row: PointResult, key: str) -> str:
    decimals = metric_info(key)[2]
    values = row.values(key)
    if not values:
        return "-"
    if key == "epochs_run":
        lo, hi = min(values), max(values)
        return f"{lo:.0f}" if lo == hi else f"{lo:.0f}-{hi:.0f}"
    mean, std = mean_std(values)
    if key.partition("/")[0] in WITH_STD and std is not None:
        return f"{_num(mean, decimals)} ± {_num(std, decimals)}"
    return _num(mean, decimals)


def headers(table: ResultsTable) -> list[str]:
    header = METRICS[table.metric][0]
    tests = ([f"{header} {t} - best ± SE" if i == 0 else f"{t} - best ± SE" for i, t in enumerate(table.tasks)]
             if table.tasks else [f"{header} - best ± SE"])
    return (table.label_headers + [metric_info(k)[0] for k in table.metrics]
            + ["seeds"] + [c for test in tests for c in (test, "p")] + ["vs best"])


def p_cell(p: float) -> str:
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def paired_cells(row: PointResult, decimals: int) -> list[str]:
    """The difference from the best row ± its standard error, and the p-value."""
    if row.test is None:
        return ["-", "-"]
    return [f"{row.test.diff:+.{decimals}f} ± {row.test.se:.{decimals}f}", p_cell(row.test.p)]


def cells(row: PointResult, metric: str, tasks: list[str] | None = None) -> list[str]:
    seeds = f"{len(row.runs)}" if len(row.runs) == row.seeds_planned else f"{len(row.runs)}/{row.seeds_planned}"
    decimals = METRICS[metric][2]
    if tasks:
        tests = []
        for task in tasks:
            test = row.task_tests.get(task)
            tests += ["-", "-"] if test is None else [f"{test.diff:+.{decimals}f} ± {test.se:.{decimals}f}", p_cell(test.p)]
    else:
        tests = paired_cells(row, decimals)
    return row.labels + [metric_cell(row, k) for k in table_metrics(tasks or [])] + [seeds] + tests + [row.vs_best]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(table: ResultsTable) -> str:
    head = headers(table)
    n_labels = len(table.label_headers)
    lines = [f"### {table.title}", "",
             "| " + " | ".join(head) + " |",
             "| " + " | ".join(["---"] * n_labels + ["---:"] * (len(head) - n_labels - 1) + ["---"]) + " |"]
    for row in table.rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in cells(row, table.metric, table.tasks)) + " |")
    lines.append("")
    lines += [f"{line}  " for line in table.footer]
    return "\n".join(lines).rstrip() + "\n"


def csv_text(table: ResultsTable) -> str:
    """Full precision: mean and std per metric in separate columns."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    metric_cols = []
    for key in table.metrics:
        metric_cols += [f"{key}_mean", f"{key}_std"]
    test_cols = ("diff", "se", "se_rows", "se_seeds", "p")
    writer.writerow(table.label_headers + ["seeds_done", "seeds_planned"] + metric_cols
                    + ["epochs_run_min", "epochs_run_max"] + [f"{c}_vs_best" for c in test_cols] + ["vs_best"])
    for row in table.rows:
        values = []
        for key in table.metrics:
            mean, std = mean_std(row.values(key))
            values += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
        epochs = row.values("epochs_run")
        test = [getattr(row.test, c) if row.test else None for c in test_cols]
        writer.writerow(row.labels + [len(row.runs), row.seeds_planned] + values
                        + [min(epochs) if epochs else "", max(epochs) if epochs else ""]
                        + ["" if v is None else repr(v) for v in test] + [row.vs_best])
    return buf.getvalue()


def footer_lines(manifest: dict[str, Any], metric: str, unfinished: list[str], n_rows: int | None = None,
                 untested: list[str] | None = None) -> list[str]:
    header, higher, _ = METRICS[metric]
    split, kind = metric_split_kind(metric)
    seeds = manifest["seeds"]
    rows = f"{n_rows:,} " if n_rows else ""
    lines = [
        f"Mean ± sample standard deviation (n-1) over seeds ({seeds} per point; training seed = the config's "
        "train.seed + k). Every run reads the same prepared store, so the split is the same for all.",
        f"Sorted by {header} ({'higher' if higher else 'lower'} is better). \"{header} - best ± SE\" and \"p\": "
        f"{TEST_NAMES[kind]} ({split} split, the same {rows}rows for every run), each row against the best one. "
        "The standard error counts the rows' sampling error and, with 2 or more seeds on both sides, the spread "
        "over seeds: SE^2 = SE_rows^2 + var_seeds(row)/seeds(row) + var_seeds(best)/seeds(best); p is two-sided, "
        "from Student's t with Welch-Satterthwaite degrees of freedom. \"vs best\": worse = p < "
        f"{ALPHA:g}; tie = a difference that another sample of rows or other seeds could give. With 1 seed on a "
        "side the seed spread is not measured, p counts the rows only: tie (1 seed) = not even the rows tell "
        "them apart; unclear (1 seed) = the two trained models differ, but another seed might reverse it "
        "(use --seeds 2 or more); - = no per-row scores to test.",
        "train loss and valid AUC are those of each run's best epoch (by the validation metric); test AUC and "
        "logloss are that epoch's weights scored on the whole test split; train time = sum of the epochs' wall "
        "time (training + validation); samples/s = training throughput, mean over epochs.",
    ]
    if metric.startswith("valid"):
        lines.append("The best row is chosen on the validation split; the test split plays no part in the choice.")
    if manifest.get("mode") == "one-at-a-time" and manifest.get("base_settings"):
        base = ", ".join(f"{k}={format_value(v)}" for k, v in manifest["base_settings"].items())
        lines.append(f"One axis at a time around the base config ({base}).")
    if unfinished:
        lines.append(f"Unfinished or failed runs (left out of the means): {', '.join(unfinished)}.")
    if untested:
        lines.append("No paired test for these rows: " + "; ".join(untested) + ".")
    return lines


def label_columns(manifest: dict[str, Any]) -> list[str]:
    if manifest["kind"] == "compare":
        return ["model"]
    if manifest.get("mode") == "grid":
        return list(manifest.get("axes") or {})
    return ["setting"]


def point_labels(manifest: dict[str, Any], point: dict[str, Any]) -> list[str]:
    if manifest["kind"] != "compare" and manifest.get("mode") == "grid":
        return [format_value(point["settings"].get(key)) for key in manifest.get("axes") or {}]
    return [point["name"]]


def experiment_results(exp_dir: Path, manifest: dict[str, Any]) -> ResultsTable:
    runs = load_experiment_runs(exp_dir, manifest)
    metric = manifest["metric"]
    split, _ = metric_split_kind(metric)
    labels, untested = None, []
    rows = []
    for point in manifest["points"]:
        row = PointResult(point["name"], point_labels(manifest, point), point["settings"], manifest["seeds"])
        finished = [r for r in runs if r["point"] == point["name"] and r["summary"]]
        row.runs = [run_metrics(r["summary"]) for r in finished]
        row.scores = []
        for run in finished:
            problem = None
            try:
                scored = read_scores(run["path"], split, run["summary"])
            except ValueError as exc:
                scored, problem = None, str(exc)
            if scored is None:
                problem = problem or (f"{run['dir']} has no per-row {split} scores"
                                      + (f" ({run['scores_error']})" if run.get("scores_error") else
                                         " (rerun the command to score it)"))
            elif labels is None:
                labels = scored[0]
            elif not np.array_equal(labels, scored[0]):
                problem = f"{run['dir']} was scored on other {split} rows than the other runs"
            if problem:
                untested.append(f"{point['name']}: {problem}")
                row.scores = None
                break
            row.scores.append(scored[1])
        rows.append(row)
    finished = [r["summary"] for r in runs if r["summary"]]
    tasks = run_tasks(finished[0]) if finished and all(run_tasks(s) == run_tasks(finished[0]) for s in finished) else []
    rows = rank_and_flag(rows, metric, labels, tasks=tasks if labels is None or labels.ndim == 2 else None)
    unfinished = [r["name"] for r in runs if r["summary"] is None]
    footer = footer_lines(manifest, metric, unfinished, None if labels is None else len(labels), untested)
    if tasks:
        footer.append(f"Several labels: {METRICS[metric][0]} and logloss are the means over the tasks "
                      f"({', '.join(tasks)}), each task scored on its labelled rows; the paired tests are per task. "
                      "ESMM and AITM: the conversion task is click AND conversion over every impression (CTCVR).")
    return ResultsTable(manifest.get("title") or manifest["kind"], manifest["kind"], metric,
                        label_columns(manifest), rows, footer, tasks)


def runs_csv_text(exp_dir: Path, manifest: dict[str, Any]) -> str:
    keys = ("parameters", "epochs_run", "best_epoch", "train_loss", "valid_auc", "valid_logloss", "test_auc",
            "test_logloss", "train_seconds", "samples_per_s")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["run", "point", "seed", "status"] + list(keys))
    for run in load_experiment_runs(exp_dir, manifest):
        summary = run["summary"]
        values = {**(summary or {}), **(run_metrics(summary) if summary else {})}
        status = "done" if summary else run.get("status", "pending")
        writer.writerow([run["name"], run["point"], run["seed"], status]
                        + ["" if values.get(k) is None else values[k] for k in keys])
    return buf.getvalue()


def write_results(exp_dir: Path, table: ResultsTable, manifest: dict[str, Any]) -> list[Path]:
    paths = [exp_dir / "results.md", exp_dir / "results.csv", exp_dir / "runs.csv"]
    for path, text in zip(paths, (markdown(table), csv_text(table), runs_csv_text(exp_dir, manifest))):
        write_bytes_atomic(path, text.encode("utf-8"))
    return paths


def one_line(summary: dict[str, Any]) -> str:
    parts = []
    if summary.get("test_auc") is not None:
        parts.append(f"test AUC {summary['test_auc']:.4f}, logloss {summary['test_logloss']:.4f}")
    elif summary.get("valid_auc") is not None:
        parts.append(f"valid AUC {summary['valid_auc']:.4f}")
    seconds = run_metrics(summary)["train_seconds"] or 0.0
    parts.append(f"best epoch {summary.get('best_epoch')} of {summary.get('epochs_run')}, {seconds:.1f} s")
    return "; ".join(parts)
