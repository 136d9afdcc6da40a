"""The day-over-day chart of ``ctrlab plot`` (issue 17): ``progressive_auc.png`` for runs continued
day by day, one line per lineage (a folder of runs, or run directories chained by their parents),
x = the scored partition in the store's order, y = the summaries' ``progressive_auc``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ctrlab.config import load_config
from ctrlab.data.append import append_partition
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.synth_days import write_daily_synthetic
from ctrlab.experiments import plots
from ctrlab.features.pipeline import CategoricalOptions
from ctrlab.train.run import run_training

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def opts(path: Path) -> PrepareOptions:
    return PrepareOptions(train=[str(path)], format="criteo", categorical=CategoricalOptions(min_count=2))


def train(store: Path, run_dir: Path, *overrides: str) -> dict:
    base = [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(run_dir))}", "model.name=fm",
            "model.params.embedding_dim=4", "train.threads=1", "train.epochs=1", "train.batch_size=128",
            "train.eval_batch_size=256", "train.lr=0.01"]
    return run_training(load_config(None, base + list(overrides)), progress=False, log=lambda _m: None)


def cont(parent: Path) -> str:
    return f"train.continue_from={json.dumps(str(parent))}"


@pytest.fixture(scope="module")
def daily(tmp_path_factory):
    """Three days: a continual lineage (day01 -> day02 -> day03, folder ``continual``) and a frozen
    one (the day-1 model scored on day02 and day03 by lr-0 continued runs, folder ``frozen``)."""
    root = tmp_path_factory.mktemp("progressive_plot")
    write_daily_synthetic(root / "days", 3, 300, seed=3)
    store = root / "store"
    prepare(opts(root / "days" / "day01.tsv"), store, progress=False, log=lambda _m: None, partition="day01")
    cont_dir, frozen_dir = root / "continual", root / "frozen"
    train(store, cont_dir / "d1", "data.partitions=[day01]")
    summaries = {"continual": {}, "frozen": {}}
    for day, prev in (("day02", "d1"), ("day03", "d2")):
        append_partition(store, opts(root / "days" / f"{day}.tsv"), progress=False)
        summaries["continual"][day] = train(store, cont_dir / f"d{day[-1]}", cont(cont_dir / prev),
                                            f"data.partitions=[{day}]")
        summaries["frozen"][day] = train(store, frozen_dir / f"score_{day}", cont(cont_dir / "d1"),
                                         f"data.partitions=[{day}]", "train.lr=0")
    return {"root": root, "summaries": summaries}


def test_points_per_lineage_are_the_summaries(daily):
    source = plots.load_sources([daily["root"] / "continual", daily["root"] / "frozen"])
    points = plots.progressive_points(source)
    assert list(points) == ["continual", "frozen"]
    for lineage, by_day in daily["summaries"].items():
        assert points[lineage] == [(day, by_day[day]["progressive_auc"]) for day in ("day02", "day03")]
    # the day-1 runs have no progressive score: not drawn
    assert all(len(v) == 2 for v in points.values())


def test_run_dirs_given_alone_chain_by_parent(daily):
    root, c = daily["root"], daily["summaries"]["continual"]
    source = plots.load_sources([root / "frozen" / "score_day03", root / "continual" / "d1",
                                 root / "continual" / "d2", root / "continual" / "d3"])
    points = plots.progressive_points(source)
    # d2 and d3 chain to d1 (given before them): one lineage named after its first run; the frozen
    # scoring run's parent was not given before it: a line of its own
    assert points == {"score_day03": [("day03", daily["summaries"]["frozen"]["day03"]["progressive_auc"])],
                      "d1": [("day02", c["day02"]["progressive_auc"]), ("day03", c["day03"]["progressive_auc"])]}


def test_chart_written_with_the_summaries_values(daily, tmp_path):
    pytest.importorskip("matplotlib")
    root = daily["root"]
    written = plots.plot_paths([root / "continual", root / "frozen"], tmp_path / "plots")
    png = tmp_path / "plots" / "progressive_auc.png"
    assert png in written and png.stat().st_size > 0
    fig = plots.chart_progressive_auc(plots.load_sources([root / "continual", root / "frozen"]))
    ax = fig.axes[0]
    drawn = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.get_lines()}
    assert [t.get_text() for t in ax.get_xticklabels()] == ["day02", "day03"]
    for lineage, by_day in daily["summaries"].items():
        xs, ys = drawn[lineage]
        assert xs == [0, 1]
        assert ys == [by_day["day02"]["progressive_auc"], by_day["day03"]["progressive_auc"]]


def test_no_chart_without_progressive_scores(daily, tmp_path):
    pytest.importorskip("matplotlib")
    written = plots.plot_paths([daily["root"] / "continual" / "d1"], tmp_path / "plots")
    assert not any(p.name.startswith("progressive_auc") for p in written)
