"""``ctrlab report``: one self-contained HTML page for an experiment.

Everything is inside report.html: CSS inline, charts as PNG data URIs, no scripts, no links to
other files or to the network, so the page can be mailed or opened offline.
"""

from __future__ import annotations

import base64
import html
import re
import shlex
from pathlib import Path
from typing import Any

import yaml

from ..fileio import write_bytes_atomic
from . import plots
from .layout import MANIFEST, OBJECTIVE, TUNE_MANIFEST, load_experiment_runs, read_manifest, read_tune_manifest
from .results import cells, experiment_results, format_value, headers, run_metrics

CHART_CAPTIONS = {
    "test_auc": "Test AUC per model or setting; error bars: standard deviation over seeds.",
    "valid_auc": "Validation AUC after every epoch; the star marks each run's best epoch (the one scored on test).",
    "train_loss": "Training loss per step: faint lines are the logged batch losses, solid lines smoothed.",
    "throughput": "Training throughput (samples/s, mean over epochs); error bars: std over seeds.",
}
CHART_ORDER = ("test_auc", "valid_auc", "train_loss", "throughput")

CSS = """
body { font-family: -apple-system, "Segoe UI", Roboto, "DejaVu Sans", Arial, sans-serif; margin: 24px auto;
       max-width: 1240px; padding: 0 16px; color: #1f2328; line-height: 1.45; }
h1 { font-size: 1.6em; margin-bottom: 4px; } h2 { font-size: 1.25em; border-bottom: 1px solid #d0d7de;
     padding-bottom: 4px; margin-top: 32px; }
.meta { color: #57606a; font-size: 0.92em; }
table { border-collapse: collapse; margin: 10px 0; font-size: 0.85em; }
th, td { border: 1px solid #d0d7de; padding: 4px 8px; }
th { background: #f6f8fa; text-align: left; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.scroll { overflow-x: auto; }
td:last-child { white-space: nowrap; }
tr.best td { background: #dafbe1; } tr.noise td { background: #fff8c5; }
.footer { color: #57606a; font-size: 0.88em; } .footer p { margin: 3px 0; }
figure { margin: 18px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eaeef2; }
figcaption { color: #57606a; font-size: 0.9em; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; font-size: 0.85em; }
.failed { color: #cf222e; }
"""


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


_NUMERIC_CELL = re.compile(r"[-+<]?[\d,]*\.?\d+( ± [\d,]*\.?\d+)?|[\d]+(/\d+)?|-")


def _table(head: list[str], rows: list[list[str]], n_labels: int, classes: list[str] | None = None) -> str:
    """An HTML table; cells after the first ``n_labels`` that hold numbers are right-aligned."""
    out = ['<div class="scroll"><table>',
           "<thead><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr></thead>", "<tbody>"]
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        tds = "".join(f'<td{" class=num" if j >= n_labels and _NUMERIC_CELL.fullmatch(c) else ""}>{_e(c)}</td>'
                      for j, c in enumerate(row))
        out.append(f"<tr{cls}>{tds}</tr>")
    out.append("</tbody></table></div>")
    return "\n".join(out)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()[:24]
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def _chart_sort_key(path: Path) -> tuple[int, str]:
    stem = path.stem
    return (CHART_ORDER.index(stem) if stem in CHART_ORDER else len(CHART_ORDER), stem)


def _caption(stem: str) -> str:
    if stem.startswith("sweep_"):
        return ("The ranking metric (and test AUC) along one axis, the other settings held fixed; "
                "error bars: std over seeds.")
    if stem.startswith("test_auc_"):  # (several labels: one chart per task)
        return f"Test AUC of the task {stem[len('test_auc_'):]} per model or setting; error bars: std over seeds."
    return CHART_CAPTIONS.get(stem, stem)


def render_report(exp_dir: Path, manifest: dict[str, Any], charts: list[Path]) -> str:
    table = experiment_results(exp_dir, manifest)
    runs = load_experiment_runs(exp_dir, manifest)
    done = sum(1 for r in runs if r["summary"])
    failed = [r for r in runs if not r["summary"] and r.get("status") == "failed"]
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(table.title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{_e(table.title)}</h1>",
        f'<p class="meta">ctrlab {_e(manifest.get("ctrlab_version", ""))} {_e(manifest["kind"])}; '
        f"{len(manifest['points'])} point(s) x {manifest['seeds']} seed(s): {done} of {len(runs)} runs finished"
        f"{f', {len(failed)} failed' if failed else ''}; started {_e(manifest.get('created', ''))}, "
        f"updated {_e(manifest.get('updated', ''))}.<br>store: <code>{_e(manifest.get('store', ''))}</code>"
        + (f"<br>command: <code>{_e(shlex.join(manifest['command']))}</code>" if manifest.get("command") else "")
        + "</p>",
    ]
    if manifest.get("notes"):
        parts.append("<ul class=meta>" + "".join(f"<li>note: {_e(n)}</li>" for n in manifest["notes"]) + "</ul>")

    parts.append("<h2>Results</h2>")
    classes = ["best" if r.vs_best == "best" else "noise" if r.vs_best.startswith("tie") else "" for r in table.rows]
    parts.append(_table(headers(table), [cells(r, table.metric, table.tasks) for r in table.rows], len(table.label_headers),
                        classes))
    parts.append('<div class="footer">' + "".join(f"<p>{_e(line)}</p>" for line in table.footer) + "</div>")

    if charts:
        parts.append("<h2>Charts</h2>")
        for path in sorted(charts, key=_chart_sort_key):
            width, height = _png_size(path)
            parts.append(f'<figure><img src="{_data_uri(path)}" alt="{_e(path.stem)}" width="{width}" '
                         f'height="{height}"><figcaption>{_e(_caption(path.stem))}</figcaption></figure>')
    else:
        parts.append('<p class="meta">No charts (they need matplotlib and at least one finished epoch).</p>')

    parts.append("<h2>Runs</h2>")
    run_head = ["run", "seed", "status", "epochs", "best epoch", "train loss", "valid AUC", "test AUC",
                *[f"test AUC {t}" for t in table.tasks], "test logloss", "train time (s)", "samples/s"]
    run_rows = []
    for run in runs:
        s = run["summary"]
        if s:
            m = run_metrics(s)
            fmt = lambda v, d=4: "-" if v is None else f"{v:,.{d}f}"  # noqa: E731
            run_rows.append([run["name"], str(run["seed"]), "done", str(s.get("epochs_run")), str(s.get("best_epoch")),
                             fmt(m["train_loss"]), fmt(m["valid_auc"]), fmt(m["test_auc"]),
                             *[fmt(m.get(f"test_auc/{t}")) for t in table.tasks], fmt(m["test_logloss"]),
                             fmt(m["train_seconds"], 1), fmt(m["samples_per_s"], 0)])
        else:
            run_rows.append([run["name"], str(run["seed"]), run.get("status", "pending")] + ["-"] * (8 + len(table.tasks)))
    parts.append(_table(run_head, run_rows, 3, ["failed" if r[2] == "failed" else "" for r in run_rows]))
    for run in failed:
        parts.append(f'<p class="failed">{_e(run["name"])}: {_e(run.get("error", ""))}</p>')

    parts.append("<h2>Configuration</h2>")
    if manifest.get("axes"):
        parts.append("<p>Axes: " + "; ".join(f"<code>{_e(k)}</code> = {_e(', '.join(format_value(v) for v in vs))}"
                                             for k, vs in manifest["axes"].items()) + "</p>")
    if manifest.get("base_config"):
        configs = [("the base config (every point is it with its settings applied)", manifest["base_config"])]
    else:
        configs = [(f"{p['name']}: config", p["config"]) for p in manifest["points"]]
    for label, config in configs:
        parts.append(f"<details><summary>{_e(label)}</summary><pre>"
                     f"{_e(yaml.safe_dump(config, sort_keys=False))}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_report(exp_dir: str | Path, out: str | Path | None = None, charts: list[Path] | None = None) -> Path:
    """Write EXP_DIR/report.html (or ``out``); charts are drawn into EXP_DIR/plots unless given."""
    exp_dir = Path(exp_dir)
    if (exp_dir / TUNE_MANIFEST).is_file() and not (exp_dir / MANIFEST).is_file():
        return write_tune_report(exp_dir, out)
    manifest = read_manifest(exp_dir)
    if charts is None:
        try:
            charts = plots.plot_experiment(exp_dir, exp_dir / "plots", formats=("png",))
        except (RuntimeError, FileNotFoundError):
            charts = []  # no matplotlib, or nothing finished yet: a page with the tables only
    charts = [p for p in charts if p.suffix == ".png"]
    out = Path(out) if out else exp_dir / "report.html"
    write_bytes_atomic(out, render_report(exp_dir, manifest, charts).encode("utf-8"))
    return out


# --------------------------------------------------------------------------------------------
# ctrlab tune
# --------------------------------------------------------------------------------------------

def render_tune_report(manifest: dict[str, Any]) -> str:
    """The page of a ``ctrlab tune`` directory: trials, best config, parameter importances."""
    title = f"ctrlab tune: {manifest['base_config'].get('model', {}).get('name', '')} on {manifest.get('store', '')}"
    counts = manifest.get("counts", {})
    parts = [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{CSS}</style></head><body>", f"<h1>{_e(title)}</h1>",
        f'<p class="meta">ctrlab {_e(manifest.get("ctrlab_version", ""))}; {len(manifest["trials"])} trial(s) of '
        f"{_e(manifest.get('trials_requested'))} requested: {counts.get('complete', 0)} complete, "
        f"{counts.get('pruned', 0)} pruned, {counts.get('fail', 0)} failed; started {_e(manifest.get('created', ''))}, "
        f"updated {_e(manifest.get('updated', ''))}.<br>objective: {_e(manifest.get('objective', ''))}; sampler "
        f"TPE (seed {_e(manifest.get('seed'))}); pruner {_e(manifest.get('pruner', {}).get('name', ''))}"
        + (f"<br>command: <code>{_e(shlex.join(manifest['command']))}</code>" if manifest.get("command") else "")
        + "</p>",
    ]
    if manifest.get("notes"):
        parts.append("<ul class=meta>" + "".join(f"<li>note: {_e(n)}</li>" for n in manifest["notes"]) + "</ul>")

    best = manifest.get("best")
    parts.append("<h2>Best trial</h2>")
    if best:
        parts.append(f"<p>trial {best['number']}: valid AUC {best[OBJECTIVE]:.5f} (chosen on the validation split; "
                     "its config is best.yaml, ready for <code>ctrlab train -c best.yaml</code>)</p>")
        parts.append(f"<details open><summary>best.yaml</summary><pre>"
                     f"{_e(yaml.safe_dump(best['config'], sort_keys=False))}</pre></details>")
    else:
        parts.append('<p class="meta">No complete trial yet.</p>')

    parts.append("<h2>Parameter importances</h2>")
    if manifest.get("importances"):
        parts.append(_table(["parameter", "importance"],
                            [[k, f"{v:.3f}"] for k, v in manifest["importances"].items()], 1))
    else:
        parts.append(f'<p class="meta">{_e(manifest.get("importances_note") or "not computed yet")}</p>')

    parts.append("<h2>Trials</h2>")
    keys = list(manifest.get("space", {}))
    head = ["trial", "state", "valid AUC", "best epoch", "epochs", "pruned after", "seconds"] + keys
    rows, classes = [], []
    for t in manifest["trials"]:
        value = t.get(OBJECTIVE)
        state = "interrupted" if t.get("interrupted") else t["state"]
        rows.append([str(t["number"]), state, "-" if value is None or state != "complete" else f"{value:.5f}"]
                    + ["-" if t.get(k) is None else str(t[k]) for k in ("best_epoch", "epochs_run",
                                                                      "pruned_at_epoch", "seconds")]
                    + [format_value(t["values"][k]) if k in t.get("values", {}) else "-" for k in keys])
        classes.append("best" if best and t["number"] == best["number"] else
                       "failed" if t["state"] == "fail" else "")
    parts.append(_table(head, rows, 2, classes))
    for t in manifest["trials"]:
        if t.get("error"):
            parts.append(f'<p class="failed">trial {t["number"]}: {_e(t["error"])}</p>')

    parts.append("<h2>Search space and base config</h2>")
    parts.append(f"<pre>{_e(yaml.safe_dump(manifest.get('space', {}), sort_keys=False))}</pre>")
    parts.append(f"<details><summary>the base config</summary><pre>"
                 f"{_e(yaml.safe_dump(manifest['base_config'], sort_keys=False))}</pre></details>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_tune_report(tune_dir: Path, out: str | Path | None = None) -> Path:
    out = Path(out) if out else tune_dir / "report.html"
    write_bytes_atomic(out, render_tune_report(read_tune_manifest(tune_dir)).encode("utf-8"))
    return out
