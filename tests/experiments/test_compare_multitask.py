"""`ctrlab compare` of multi-task models (several labels, issue 16): one column per task for the
valid and test AUC and logloss, the means over the tasks ranking the rows, a DeLong paired test
per task on that task's labelled rows, per-task scores files that reproduce the runs' metrics, and
the HTML report's per-task columns."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.synth_multitask import write_multitask_synthetic
from ctrlab.experiments.layout import read_scores, scores_auc
from ctrlab.metrics import roc_auc
from ctrlab.schema import GenericSchemaConfig

from test_experiments import cli  # noqa: E402  (tests/experiments is on sys.path under pytest)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
TASKS = ["click", "conversion"]


@pytest.fixture(scope="module")
def compared(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("compare_multitask")
    write_multitask_synthetic(root / "mt.tsv", 4000, seed=3)
    schema = GenericSchemaConfig(label=TASKS, dense=["price"], sparse=["item_id", "cate_id", "device", "hour"])
    prepare(PrepareOptions(train=[str(root / "mt.tsv")], format="tsv", schema=schema), root / "store",
            progress=False, log=lambda _m: None)
    out = root / "exp"
    tiny = ["--set", "model.params.embedding_dim=4", "--set", "train.batch_size=256", "--set", "train.threads=1",
            "--set", "train.eval_batch_size=1000"]
    assert cli("compare", "--data", root / "store", "--models", "mmoe,shared_bottom", "--seeds", "2",
               "--epochs", "1", "--out", out, "--quiet", *tiny) == 0
    return out


def test_the_table_has_a_column_per_task_and_a_test_per_task(compared):
    md = (compared / "results.md").read_text()
    head = next(line for line in md.splitlines() if line.startswith("| model"))
    for task in TASKS:
        assert f"| test AUC {task} |" in head and f"| valid AUC {task} |" in head and f"| test logloss {task} |" in head
    assert "| test AUC click - best ± SE | p | conversion - best ± SE | p | vs best |" in head
    rows = [line for line in md.splitlines() if line.startswith("| mmoe") or line.startswith("| shared_bottom")]
    assert len(rows) == 2 and any(line.rstrip(" |").endswith("best") for line in rows)
    assert "Several labels" in md


def test_the_numbers_are_the_runs_and_their_scores(compared):
    with open(compared / "results.csv", encoding="utf-8") as fh:
        table = {r["model"]: r for r in csv.DictReader(fh)}
    for model in ("mmoe", "shared_bottom"):
        summaries = [json.loads((compared / "runs" / f"{model}_seed{k}" / "summary.json").read_text()) for k in (0, 1)]
        for task in TASKS:
            expected = np.mean([s[f"test_auc/{task}"] for s in summaries])
            assert float(table[model][f"test_auc/{task}_mean"]) == pytest.approx(expected, abs=1e-12)
        for k, summary in enumerate(summaries):
            labels, scores = read_scores(compared / "runs" / f"{model}_seed{k}", "test", summary)
            assert labels.shape == scores.shape and labels.shape[1] == 2
            for t, task in enumerate(TASKS):
                assert roc_auc(labels[:, t], scores[:, t]) == pytest.approx(summary[f"test_auc/{task}"], abs=1e-9)
            assert scores_auc(labels, scores) == pytest.approx(summary["test_auc"], abs=1e-9)


def test_the_report_and_plots_show_the_tasks(compared):
    assert cli("report", compared) == 0
    html = (compared / "report.html").read_text()
    for task in TASKS:
        assert f"test AUC {task}" in html and f"Test AUC of the task {task}" in html
        assert (compared / "plots" / f"test_auc_{task}.png").is_file()
