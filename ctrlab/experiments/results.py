"""The results table of an experiment: one row per point, mean and std over seeds.

One table object, three renderings (markdown, CSV, HTML) built from the same cells, so the
numbers in results.md, results.csv and report.html cannot disagree.

Noise rule: a point is "within noise" of the best one when the difference of their means is at
most ``NOISE_K`` pooled standard deviations (two-sample pooled std over seeds, n-1 each). With
fewer than two finished seeds on either side there is no noise estimate and nothing is flagged.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

NOISE_K = 2.0

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


def run_metrics(summary: dict[str, Any]) -> dict[str, float | None]:
    """The table's numbers of one finished run (its summary.json).

    The training time is the sum of the epochs' wall times from the history, which survives a
    resume (``train_seconds`` of the summary only covers the last invocation)."""
    history = summary.get("history") or []
    seconds = sum(h.get("seconds", 0.0) for h in history) if history else summary.get("train_seconds")
    out: dict[str, float | None] = {key: summary.get(key) for key in METRICS}
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


def pooled_std(a: list[float], b: list[float]) -> float | None:
    """Two-sample pooled standard deviation, sqrt(((na-1) sa^2 + (nb-1) sb^2) / (na + nb - 2))."""
    if len(a) < 2 or len(b) < 2:
        return None
    _, sa = mean_std(a)
    _, sb = mean_std(b)
    return math.sqrt(((len(a) - 1) * sa ** 2 + (len(b) - 1) * sb ** 2) / (len(a) + len(b) - 2))


def within_noise(a: list[float], b: list[float], k: float = NOISE_K) -> bool | None:
    """True when |mean(a) - mean(b)| <= k * pooled std; None without two values on each side."""
    sp = pooled_std(a, b)
    if sp is None:
        return None
    return abs(mean_std(a)[0] - mean_std(b)[0]) <= k * sp


@dataclass
class PointResult:
    name: str
    labels: list[str]  # the row's label cells (model, or the sweep setting)
    settings: dict[str, Any]
    seeds_planned: int
    runs: list[dict[str, float | None]] = field(default_factory=list)  # run_metrics of finished runs
    vs_best: str = ""  # best | within noise | worse | - (no noise estimate) | "" (no result)

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


def rank_and_flag(rows: list[PointResult], metric: str, k: float = NOISE_K) -> list[PointResult]:
    """Sort best first by ``metric`` (points without a result last) and set ``vs_best``."""
    higher = METRICS[metric][1]
    done = [r for r in rows if r.mean(metric) is not None]
    rest = [r for r in rows if r.mean(metric) is None]
    done.sort(key=lambda r: -r.mean(metric) if higher else r.mean(metric))
    for i, row in enumerate(done):
        if i == 0:
            row.vs_best = "best"
            continue
        verdict = within_noise(row.values(metric), done[0].values(metric), k)
        row.vs_best = "-" if verdict is None else ("within noise" if verdict else "worse")
    for row in rest:
        row.vs_best = ""
    return done + rest


def format_value(value: Any) -> str:
    """A setting for a table cell or a legend: lists as [a,b], floats short."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(format_value(v) for v in value) + "]"
    return str(value)


def _num(value: float | None, decimals: int) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if decimals == 0 else f"{value:.{decimals}f}"


def metric_cell(row: PointResult, key: str) -> str:
    decimals = METRICS[key][2]
    values = row.values(key)
    if not values:
        return "-"
    if key == "epochs_run":
        lo, hi = min(values), max(values)
        return f"{lo:.0f}" if lo == hi else f"{lo:.0f}-{hi:.0f}"
    mean, std = mean_std(values)
    if key in WITH_STD and std is not None:
        return f"{_num(mean, decimals)} ± {_num(std, decimals)}"
    return _num(mean, decimals)


def headers(table: ResultsTable) -> list[str]:
    return table.label_headers + [METRICS[k][0] for k in TABLE_METRICS] + ["seeds", "vs best"]


def cells(row: PointResult) -> list[str]:
    seeds = f"{len(row.runs)}" if len(row.runs) == row.seeds_planned else f"{len(row.runs)}/{row.seeds_planned}"
    return row.labels + [metric_cell(row, k) for k in TABLE_METRICS] + [seeds, row.vs_best]


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(table: ResultsTable) -> str:
    head = headers(table)
    n_labels = len(table.label_headers)
    lines = [f"### {table.title}", "",
             "| " + " | ".join(head) + " |",
             "| " + " | ".join(["---"] * n_labels + ["---:"] * (len(head) - n_labels - 1) + ["---"]) + " |"]
    for row in table.rows:
        lines.append("| " + " | ".join(_md_escape(c) for c in cells(row)) + " |")
    lines.append("")
    lines += [f"{line}  " for line in table.footer]
    return "\n".join(lines).rstrip() + "\n"


def csv_text(table: ResultsTable) -> str:
    """Full precision: mean and std per metric in separate columns."""
    buf = io.StringIO()
    writer = csv.writer(buf)
    metric_cols = []
    for key in TABLE_METRICS:
        metric_cols += [f"{key}_mean", f"{key}_std"]
    writer.writerow(table.label_headers + ["seeds_done", "seeds_planned"] + metric_cols
                    + ["epochs_run_min", "epochs_run_max", "vs_best"])
    for row in table.rows:
        values = []
        for key in TABLE_METRICS:
            mean, std = mean_std(row.values(key))
            values += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
        epochs = row.values("epochs_run")
        writer.writerow(row.labels + [len(row.runs), row.seeds_planned] + values
                        + [min(epochs) if epochs else "", max(epochs) if epochs else "", row.vs_best])
    return buf.getvalue()


def footer_lines(manifest: dict[str, Any], metric: str, unfinished: list[str]) -> list[str]:
    header, higher, _ = METRICS[metric]
    seeds = manifest["seeds"]
    lines = [
        f"Mean ± sample standard deviation (n-1) over seeds ({seeds} per point; training seed = the config's "
        "train.seed + k). Every run reads the same prepared store, so the split is the same for all.",
        f"Sorted by {header} ({'higher' if higher else 'lower'} is better). \"vs best\": within noise = "
        f"|difference of the mean {header} from the best row| <= {NOISE_K:g} x pooled standard deviation over "
        "seeds; worse = beyond that; - = fewer than 2 seeds on one side (no noise estimate).",
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
    from .core import load_experiment_runs

    runs = load_experiment_runs(exp_dir, manifest)
    rows = []
    for point in manifest["points"]:
        row = PointResult(point["name"], point_labels(manifest, point), point["settings"], manifest["seeds"])
        row.runs = [run_metrics(r["summary"]) for r in runs if r["point"] == point["name"] and r["summary"]]
        rows.append(row)
    metric = manifest["metric"]
    rows = rank_and_flag(rows, metric)
    unfinished = [r["name"] for r in runs if r["summary"] is None]
    return ResultsTable(manifest.get("title") or manifest["kind"], manifest["kind"], metric,
                        label_columns(manifest), rows, footer_lines(manifest, metric, unfinished))


def runs_csv_text(exp_dir: Path, manifest: dict[str, Any]) -> str:
    from .core import load_experiment_runs

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
    paths[0].write_text(markdown(table), encoding="utf-8")
    paths[1].write_text(csv_text(table), encoding="utf-8")
    paths[2].write_text(runs_csv_text(exp_dir, manifest), encoding="utf-8")
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
