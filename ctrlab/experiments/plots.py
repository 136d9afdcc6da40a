"""Charts of runs and experiments (matplotlib, Agg canvas, no pyplot state).

    train_loss      training loss per step (the runs' step logs), smoothed, one colour per model/setting
    valid_auc       validation AUC per epoch (the epoch logs); the best epoch of each run starred
    test_auc        test AUC per model/setting, mean with std over seeds as error bars
    throughput      training samples/s per model/setting, mean with std over seeds
    progressive_auc runs continued day by day (summary ``progressive_auc``): the progressive AUC per
                    day (x: the scored partition, in the store's order), one line per lineage
    sweep_<axis>    sweeps: the ranking metric (and test AUC) along each axis, the other settings
                    held at the best point (grid) or the base config (one at a time)

Inputs: experiment directories (experiment.json), run directories, or directories holding run
directories.

matplotlib is optional (:func:`have_matplotlib`): it is imported only where a chart is drawn.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..train.rundir import EPOCHS_JSONL, SUMMARY, RunDir
from .layout import MANIFEST, load_experiment_runs, read_manifest, slugify
from .results import METRICS, format_value, mean_std, metric_info, run_metrics, run_tasks, same_value

MAX_CURVES = 12  # points drawn in the per-step / per-epoch charts (the best ones by the ranking metric)
MAX_ROWS = 40  # points in the per-point charts
FORMATS = ("png", "svg")
DPI = 110


@dataclass
class RunData:
    name: str
    point: str
    path: Path
    summary: dict[str, Any] | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)
    lineage: str = ""  # progressive_auc: the line it belongs to (set by load_sources)


@dataclass
class Source:
    """What the charts draw: runs grouped by point, in the order points should appear."""

    runs: list[RunData]
    points: list[str]
    title: str
    metric: str = "test_auc"
    manifests: list[tuple[Path, dict[str, Any]]] = field(default_factory=list)
    colors: dict[str, Any] = field(default_factory=dict)  # one colour per point, the same in every chart


def _run_data(name: str, point: str, path: Path) -> RunData:
    run = RunDir(path)
    # a chart draws what it can read: a damaged log line is skipped, not an error
    return RunData(name, point, path, run.read_summary(), run.step_records(skip_unreadable=True),
                   run.epoch_records(skip_unreadable=True))


def load_sources(paths: list[str | Path]) -> Source:
    """Experiment, run, or folder-of-runs directories -> the runs to draw."""
    runs: list[RunData] = []
    manifests = []
    titles = []
    metric = None
    prefix_needed = len(paths) > 1
    for raw in paths:
        path = Path(raw)
        if not path.is_dir():
            raise FileNotFoundError(f"{path}: no such directory")
        if (path / MANIFEST).is_file():
            manifest = read_manifest(path)
            manifests.append((path, manifest))
            titles.append(manifest.get("title") or path.name)
            metric = metric or manifest.get("metric")
            prefix = f"{path.name}/" if prefix_needed else ""
            for run in manifest["runs"]:
                runs.append(_run_data(prefix + run["name"], prefix + run["point"], path / run["dir"]))
                runs[-1].lineage = runs[-1].point
        elif RunDir(path).is_run():
            runs.append(_run_data(path.name, path.name, path))
            runs[-1].lineage = _chained(runs[-1], runs[:-1])
            titles.append(path.name)
        else:
            children = sorted(p for p in path.iterdir() if p.is_dir() and RunDir(p).is_run())
            if not children:
                raise FileNotFoundError(f"{path}: neither an experiment ({MANIFEST}) nor a run directory "
                                        f"({SUMMARY}, {EPOCHS_JSONL}) nor a folder of run directories")
            runs += [_run_data(p.name, p.name, p) for p in children]
            for run in runs[-len(children):]:
                run.lineage = path.name  # a folder of runs: one lineage (e.g. one model's days)
            titles.append(path.name)
    points = list(dict.fromkeys(r.point for r in runs))
    return Source(runs, points, "; ".join(titles), metric or "test_auc", manifests, _colors(points))


def _chained(run: RunData, given: list[RunData]) -> str:
    """A run directory given alone joins the lineage of its parent (summary ``parent.run_dir``)
    when the parent was given before it, else starts its own."""
    parent = ((run.summary or {}).get("parent") or {}).get("run_dir")
    if parent:
        for other in given:
            if other.path.resolve() == Path(parent).resolve():
                return other.lineage
    return run.name


# --------------------------------------------------------------------------------------------

def _point_values(source: Source, key: str) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {p: [] for p in source.points}
    for run in source.runs:
        if run.summary and run.summary.get(key) is not None:
            out[run.point].append(float(run.summary[key]))
    return out


def _ranked_points(source: Source, key: str) -> list[str]:
    """Points with a value, best first (by ``key``), then the others in their order."""
    higher = metric_info(key)[1]
    values = _point_values(source, key)
    scored = [p for p in source.points if values[p]]
    scored.sort(key=lambda p: -mean_std(values[p])[0] if higher else mean_std(values[p])[0])
    return scored + [p for p in source.points if not values[p]]


def _colors(points: list[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(points) <= 10 else "tab20"]
    return {p: cmap(i % cmap.N) for i, p in enumerate(points)}


def _figure(width: float = 9.0, height: float = 5.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _legend(ax, n: int) -> None:
    if n > 8:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    else:
        ax.legend(fontsize=9, loc="best", framealpha=0.85)


def _seed_note(source: Source, point: str) -> str:
    n = sum(1 for r in source.runs if r.point == point)
    return f"{point} ({n} seeds)" if n > 1 else point


def _limited(points: list[str], limit: int) -> tuple[list[str], str]:
    if len(points) <= limit:
        return points, ""
    return points[:limit], f" (best {limit} of {len(points)})"


def _ema(values: list[float], span: int) -> list[float]:
    alpha = 2.0 / (span + 1)
    out, acc = [], None
    for v in values:
        acc = v if acc is None else alpha * v + (1 - alpha) * acc
        out.append(acc)
    return out


def chart_train_loss(source: Source):
    runs = [r for r in source.runs if r.steps]
    if not runs:
        return None
    ranked, note = _limited([p for p in _ranked_points(source, source.metric) if any(r.point == p for r in runs)],
                            MAX_CURVES)
    colors = source.colors
    fig = _figure()
    ax = fig.add_subplot()
    labelled = set()
    for point in ranked:
        for run in (r for r in runs if r.point == point):
            steps = [s["step"] for s in run.steps]
            losses = [s["loss"] for s in run.steps]
            span = max(1, len(losses) // 25)
            ax.plot(steps, losses, color=colors[point], alpha=0.18, linewidth=0.8)
            label = None if point in labelled else _seed_note(source, point)
            labelled.add(point)
            ax.plot(steps, _ema(losses, span), color=colors[point], linewidth=1.8, label=label)
    ax.set_title(f"Training loss per step{note}\n(faint: the logged batch losses; solid: smoothed)", fontsize=12)
    ax.set_xlabel("training step (batches)")
    ax.set_ylabel("training loss (binary cross-entropy)")
    ax.grid(alpha=0.3)
    _legend(ax, len(ranked))
    return fig


def chart_valid_auc(source: Source):
    runs = [r for r in source.runs if any(e.get("valid_auc") is not None for e in r.epochs)]
    if not runs:
        return None
    ranked, note = _limited([p for p in _ranked_points(source, source.metric) if any(r.point == p for r in runs)],
                            MAX_CURVES)
    colors = source.colors
    fig = _figure()
    ax = fig.add_subplot()
    labelled = set()
    max_epoch = 1
    for point in ranked:
        for run in (r for r in runs if r.point == point):
            pts = [(e["epoch"], e["valid_auc"]) for e in run.epochs if e.get("valid_auc") is not None]
            xs, ys = zip(*pts)
            max_epoch = max(max_epoch, max(xs))
            label = None if point in labelled else _seed_note(source, point)
            labelled.add(point)
            ax.plot(xs, ys, marker="o", markersize=4, color=colors[point], linewidth=1.5, label=label)
            best = (run.summary or {}).get("best_epoch") or max(pts, key=lambda t: t[1])[0]
            for x, y in pts:
                if x == best:
                    ax.plot([x], [y], marker="*", markersize=13, color=colors[point], markeredgecolor="black",
                            markeredgewidth=0.6, linestyle="none")
    ax.set_title(f"Validation AUC per epoch (star: the run's best epoch){note}", fontsize=12)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation AUC")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=min(max_epoch, 15)))
    ax.set_xlim(0.5, max_epoch + 0.5)
    ax.grid(alpha=0.3)
    _legend(ax, len(ranked))
    return fig


def _per_point_chart(source: Source, key: str, title: str, xlabel: str, bars: bool):
    values = _point_values(source, key)
    ranked = [p for p in _ranked_points(source, key) if values[p]]
    if not ranked:
        return None
    ranked, note = _limited(ranked, MAX_ROWS)
    stats = [mean_std(values[p]) for p in ranked]
    means = [m for m, _ in stats]
    stds = [s or 0.0 for _, s in stats]
    colors = source.colors
    fig = _figure(9.0, max(2.6, 1.3 + 0.42 * len(ranked)))
    ax = fig.add_subplot()
    ys = list(range(len(ranked)))[::-1]  # best on top
    if bars:
        ax.barh(ys, means, xerr=stds, color=[colors[p] for p in ranked], alpha=0.85, capsize=4,
                error_kw={"elinewidth": 1.2})
        ax.set_xlim(0, max(m + s for m, s in zip(means, stds)) * 1.18)
    else:
        for y, p, m, s in zip(ys, ranked, means, stds):
            ax.errorbar([m], [y], xerr=[s], fmt="o", color=colors[p], markersize=8, capsize=5, elinewidth=1.5)
        lo = min(m - s for m, s in zip(means, stds))
        hi = max(m + s for m, s in zip(means, stds))
        pad = max((hi - lo) * 0.25, 0.002)
        ax.set_xlim(lo - pad, hi + pad * 1.6)
    decimals = metric_info(key)[2]
    for y, m, s, p in zip(ys, means, stds, ranked):
        n = len(values[p])
        text = f"{m:,.{decimals}f}" + (f" ± {s:,.{decimals}f}" if n > 1 else "")
        ax.annotate(text, (m + s, y), xytext=(6, 0), textcoords="offset points", va="center", fontsize=9)
    ax.set_yticks(ys, ranked, fontsize=9)
    n_seeds = sorted({len(values[p]) for p in ranked})
    seeds = f"{n_seeds[0]}" if len(n_seeds) == 1 else f"{n_seeds[0]}-{n_seeds[-1]}"
    ax.set_title(f"{title}{note}", fontsize=12)
    ax.set_xlabel(f"{xlabel} (one seed, no error bars)" if seeds == "1"
                  else f"{xlabel} (mean ± std over {seeds} seeds)")
    if bars:
        from matplotlib.ticker import StrMethodFormatter
        ax.xaxis.set_major_formatter(StrMethodFormatter("{x:,.0f}"))
    ax.grid(axis="x", alpha=0.3)
    return fig


def chart_test_auc(source: Source):
    key = "test_auc" if any(_point_values(source, "test_auc").values()) else "valid_auc"
    name = "Test" if key == "test_auc" else "Validation"
    return _per_point_chart(source, key, f"{name} AUC per model or setting", f"{name.lower()} AUC", bars=False)


def task_charts(source: Source) -> list[tuple[str, Any]]:
    """Several labels: one test AUC chart per task (``test_auc_<task>``), when every run has them."""
    tasks = [run_tasks(run.summary) if run.summary else None for run in source.runs]
    if not tasks or any(t != tasks[0] for t in tasks) or not tasks[0]:
        return []
    return [(f"test_auc_{task}", _per_point_chart(source, f"test_auc/{task}", f"Test AUC of {task} per model or setting",
                                                  f"test AUC {task}", bars=False)) for task in tasks[0]]


def chart_throughput(source: Source):
    return _per_point_chart(source, "samples_per_s", "Training throughput per model or setting",
                            "training samples/s", bars=True)


def _partition_order(runs: list[RunData]) -> list[str]:
    """The scored partitions in the order of their store (meta.json ``partitions``), then any other
    by name."""
    import json

    order: list[str] = []
    for store in dict.fromkeys(str(r.summary.get("store")) for r in runs if r.summary.get("store")):
        try:
            meta = json.loads((Path(store) / "meta.json").read_text(encoding="utf-8"))
            order += [p["name"] for p in meta.get("partitions", []) if p["name"] not in order]
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return order


def progressive_points(source: Source) -> dict[str, list[tuple[str, float]]]:
    """Per lineage, its runs' (scored partition, progressive AUC) in the store's partition order
    (several scored partitions: their names joined by '+', placed at the last one)."""
    runs = [r for r in source.runs if r.summary and r.summary.get("progressive_auc") is not None]
    order = _partition_order(runs)

    def rank(name: str) -> tuple[int, str]:
        last = name.split("+")[-1]
        return (order.index(last), name) if last in order else (len(order), name)

    out: dict[str, list[tuple[str, float]]] = {}
    for run in runs:
        label = "+".join(run.summary.get("progressive_partitions") or [run.name])
        out.setdefault(run.lineage or run.point, []).append((label, float(run.summary["progressive_auc"])))
    return {k: sorted(v, key=lambda p: rank(p[0])) for k, v in out.items()}


def chart_progressive_auc(source: Source):
    lines = progressive_points(source)
    if not lines:
        return None
    runs = [r for r in source.runs if r.summary and r.summary.get("progressive_auc") is not None]
    order = _partition_order(runs)
    labels = sorted({x for pts in lines.values() for x, _ in pts},
                    key=lambda n: (order.index(n.split("+")[-1]) if n.split("+")[-1] in order else len(order), n))
    pos = {x: i for i, x in enumerate(labels)}
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    fig = _figure(max(6.0, min(14.0, 3.0 + 0.45 * len(labels))), 4.8)
    ax = fig.add_subplot()
    for i, (name, pts) in enumerate(lines.items()):
        ax.plot([pos[x] for x, _ in pts], [y for _, y in pts], marker="o", markersize=4, linewidth=1.6,
                color=cmap(i % cmap.N), label=name)
    ax.set_xticks(range(len(labels)), labels, fontsize=8, rotation=45 if len(labels) > 10 else 0)
    ax.set_title("Progressive AUC per day\n(each model scored on a partition before it trains on it)", fontsize=11)
    ax.set_xlabel("scored partition")
    ax.set_ylabel("progressive AUC")
    ax.grid(alpha=0.3)
    _legend(ax, len(lines))
    return fig


def sweep_slices(exp_dir: Path, manifest: dict[str, Any]) -> list[tuple[str, Any]]:
    """One chart per sweep axis: the points that differ from the centre (best point for a grid,
    the base for one-at-a-time) only in that axis."""
    axes = manifest.get("axes") or {}
    if manifest.get("kind") != "sweep" or not axes:
        return []
    metric = manifest["metric"]
    per_point: dict[str, dict[str, list[float]]] = {}
    for run in load_experiment_runs(exp_dir, manifest):
        if run["summary"]:
            m = run_metrics(run["summary"])
            for key in (metric, "test_auc"):
                if m.get(key) is not None:
                    per_point.setdefault(run["point"], {}).setdefault(key, []).append(m[key])
    points = {p["name"]: p["settings"] for p in manifest["points"]}
    one_at_a_time = manifest.get("mode") == "one-at-a-time"
    if one_at_a_time:
        centre = dict(manifest.get("base_settings") or {})
    else:
        scored = [p for p in points if per_point.get(p, {}).get(metric)]
        if not scored:
            return []
        higher = METRICS[metric][1]
        best = max(scored, key=lambda p: (1 if higher else -1) * mean_std(per_point[p][metric])[0])
        centre = dict(points[best])
    charts = []
    for axis, values in axes.items():
        xs, series = [], {metric: [], "test_auc": []}
        for value in values:
            wanted = {**centre, axis: value}
            match = None
            for name, settings in points.items():
                full = {**(manifest.get("base_settings") or {}), **settings} if one_at_a_time else settings
                if all(same_value(full.get(k), v) for k, v in wanted.items()):
                    match = name
                    break
            if match is None or not per_point.get(match):
                continue
            xs.append(format_value(value))
            for key in series:
                series[key].append(mean_std(per_point[match].get(key, [])))
        if len(xs) < 2:
            continue
        fig = _figure(7.5, 4.6)
        ax = fig.add_subplot()
        pos = list(range(len(xs)))
        keys = [metric] + (["test_auc"] if metric != "test_auc" else [])
        for key, marker in zip(keys, ("o", "s")):
            stats = series[key]
            if not any(m is not None for m, _ in stats):
                continue
            ms = [m for m, _ in stats]
            ss = [s or 0.0 for _, s in stats]
            ax.errorbar(pos, ms, yerr=ss, marker=marker, capsize=4, linewidth=1.5, label=METRICS[key][0])
        ax.set_xticks(pos, xs, fontsize=9, rotation=20 if max(len(x) for x in xs) > 8 else 0)
        held = "the base config" if one_at_a_time else "the best point"
        ax.set_title(f"{axis} (other settings at {held})", fontsize=12)
        ax.set_xlabel(axis)
        ax.set_ylabel("AUC (mean ± std over seeds)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        charts.append((f"sweep_{slugify(axis)}", fig))
    return charts


def _save(fig, out_dir: Path, stem: str, formats: tuple[str, ...]) -> list[Path]:
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, format=fmt, dpi=DPI, metadata={"Software": "ctrlab"} if fmt == "png" else None)
        paths.append(path)
    return paths


def parse_formats(text: str | None) -> tuple[str, ...]:
    formats = tuple(f.strip().lower() for f in (text or "png").split(",") if f.strip())
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise ValueError(f"--format: {', '.join(bad) or text!r} not supported; choose from {', '.join(FORMATS)}")
    return formats


def have_matplotlib() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def plot_paths(paths: list[str | Path], out_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    """Write every chart that the inputs have data for; returns the files written."""
    if not have_matplotlib():
        raise RuntimeError("charts need matplotlib: pip install matplotlib")
    source = load_sources(paths)
    if not source.runs:
        raise FileNotFoundError(f"nothing to plot in {', '.join(map(str, paths))}: no runs")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    charts = [("test_auc", chart_test_auc(source)), ("valid_auc", chart_valid_auc(source)),
              ("train_loss", chart_train_loss(source)), ("throughput", chart_throughput(source)),
              ("progressive_auc", chart_progressive_auc(source)), *task_charts(source)]
    for exp_dir, manifest in source.manifests:
        charts += sweep_slices(exp_dir, manifest)
    written = []
    for stem, fig in charts:
        if fig is not None:
            written += _save(fig, out_dir, stem, formats)
    if not written:
        raise RuntimeError(f"nothing to plot in {', '.join(map(str, paths))}: no run has finished an epoch yet")
    return written


def plot_experiment(exp_dir: str | Path, out_dir: str | Path, formats: tuple[str, ...] = ("png",)) -> list[Path]:
    return plot_paths([exp_dir], out_dir, formats)
