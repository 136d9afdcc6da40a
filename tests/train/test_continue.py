"""Continual training on a partitioned store (issue 17): ``data.partitions`` / ``valid_partition``,
``train.continue_from`` (``ctrlab train --continue``): a 3-day loop with eviction on, embedding rows
of surviving ids carried bit for bit, new and reset rows fresh, progressive validation, resume of
a continued run, refusals, ``ctrlab eval --partition`` and a multi-task store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ctrlab.cli import main
from ctrlab.config import ConfigError, load_config
from ctrlab.data.append import append_partition
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.store import Store
from ctrlab.data.synth_days import write_daily_synthetic
from ctrlab.features.pipeline import CategoricalOptions, NumericOptions
from ctrlab.fields import OOV_ID
from ctrlab.metrics import evaluate_scores
from ctrlab.models import build_model
from ctrlab.nn.embedding import table_layout
from ctrlab.schema import GenericSchemaConfig
from ctrlab.train.evaluate import predict_split
from ctrlab.train.rundir import RunDir
from ctrlab.train.run import run_training
from ctrlab.train.trainer import load_weights, set_seed
from conftest import Crash, crashing_iterator

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROWS = 500
PARAMS = {"embedding_dim": 4}


def quiet(_msg: str) -> None:
    pass


def opts(path) -> PrepareOptions:
    return PrepareOptions(train=[str(path)], format="criteo", categorical=CategoricalOptions(min_count=2))


def cfg_for(store: Path, run_dir: Path, *overrides: str, model: str = "fm"):
    base = [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(run_dir))}", f"model.name={model}",
            "model.params.embedding_dim=4", "train.threads=1", "train.epochs=1", "train.batch_size=128",
            "train.eval_batch_size=256", "train.lr=0.01", "train.log_every=5"]
    return load_config(None, base + list(overrides))


def train(store, run_dir, *overrides, model="fm", **kw):
    return run_training(cfg_for(store, run_dir, *overrides, model=model), progress=False, log=quiet, **kw)


def table_rows(state, spec, key="linear.sparse_weight.weight"):
    """{(vocabulary column name, id): row} of a fused table laid out for ``spec``."""
    sizes, columns, names = table_layout(spec)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    return {t: state[key][offsets[t]: offsets[t] + sizes[t]] for t in range(len(sizes))}


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """Day 1 prepared (eviction after 1 partition) and trained; day 2 appended and continued (lr
    0.01 and lr 0); day 3 appended and continued from the lr-0 run with lr 0."""
    root = tmp_path_factory.mktemp("continue")
    write_daily_synthetic(root / "days", 3, ROWS, seed=5)
    store = root / "store"
    prepare(opts(root / "days" / "day01.tsv"), store, progress=False, partition="day01", unseen_partitions=1)
    out = {"root": root, "store": store}
    out["r1"] = train(store, root / "r1", "train.epochs=2")
    append_partition(store, opts(root / "days" / "day02.tsv"), progress=False)
    out["r2"] = train(store, root / "r2", f"train.continue_from={json.dumps(str(root / 'r1'))}",
                      "data.partitions=[day02]")
    out["r2z"] = train(store, root / "r2z", f"train.continue_from={json.dumps(str(root / 'r1'))}",
                       "data.partitions=[day02]", "train.lr=0")
    append_partition(store, opts(root / "days" / "day03.tsv"), progress=False)
    out["r3z"] = train(store, root / "r3z", f"train.continue_from={json.dumps(str(root / 'r2z'))}", "train.lr=0")
    return out


def test_first_day_records_its_lineage(loop):
    lineage = RunDir(loop["root"] / "r1").read_lineage()
    assert lineage["vocab_version"] == 1 and lineage["trained_partitions"] == ["day01"]
    assert loop["r1"]["trained_partitions"] == ["day01"] and loop["r1"]["vocab_version"] == 1
    assert "parent" not in loop["r1"] and "progressive_auc" not in loop["r1"]


def test_continued_run_records_parent_and_progressive_metrics(loop):
    s = loop["r2"]
    root, store = loop["root"], Store(loop["store"])
    assert s["parent"]["run_dir"] == str(root / "r1") and s["parent"]["epoch"] == loop["r1"]["best_epoch"] == 2
    assert s["parent"]["vocab_version"] == 1 and s["vocab_version"] == 2
    assert s["trained_partitions"] == ["day02"] and s["progressive_partitions"] == ["day02"]
    assert s["progressive_is_training_data"] is False
    # the parent model as it was (the spec of version 1), on day02 with the ids it did not know as OOV
    model = build_model("fm", store.spec_at(1), PARAMS)
    model.load_state_dict(load_weights(RunDir(root / "r1").checkpoint(2)))
    part = store.partition("day02")
    sizes = np.asarray(store.spec_at(1).column_vocab_sizes)
    sparse = np.array(part.sparse)
    changed = store.id_changes(1, 2)
    for j, vocab in enumerate(store.meta["column_vocabularies"]):
        sparse[sparse[:, j] >= sizes[j], j] = OOV_ID
        if vocab in changed:
            sparse[np.isin(sparse[:, j], changed[vocab]), j] = OOV_ID
    from ctrlab.data.store import SplitArrays
    probs = predict_split(model, SplitArrays(part.dense, sparse, part.label), 256, torch.device("cpu"))
    expected = evaluate_scores(np.asarray(part.label), probs)
    assert s["progressive_auc"] == pytest.approx(expected["auc"], abs=1e-12)
    assert s["progressive_logloss"] == pytest.approx(expected["logloss"], abs=1e-12)
    assert s["progressive_rows"] == ROWS
    config = load_config(str(root / "r2" / "config.yaml"))
    assert config.train.continue_from == str(root / "r1") and config.data.partitions == ["day02"]
    assert RunDir(root / "r2").read_lineage()["warm_start"]["optimizer_state"] == "carried"


def check_growth(store, parent, old_version, child, new_version, fresh=True):
    """Every row of ``child`` (lr 0) is ``parent``'s row of the same id when the id kept its meaning
    from ``old_version`` to ``new_version``, else (``fresh``) the child's fresh model's row."""
    changed = store.id_changes(old_version, new_version)
    set_seed(2024)  # the run's seed: its fresh model
    init_state = build_model("fm", store.spec_at(new_version), PARAMS).state_dict()
    vocabs = store.meta["column_vocabularies"]
    counts = {"kept": 0, "reset": 0, "new": 0}
    for key in ("linear.sparse_weight.weight", "embedding.sparse.weight"):
        old = table_rows(parent, store.spec_at(old_version), key)
        new, init = table_rows(child, store.spec_at(new_version), key), table_rows(init_state, store.spec_at(new_version), key)
        for t in old:
            gone = set(changed.get(vocabs[t], np.zeros(0)).tolist())
            for i in range(new[t].shape[0]):
                if i < old[t].shape[0] and i not in gone:
                    assert torch.equal(new[t][i], old[t][i]), (key, vocabs[t], i)
                    counts["kept"] += 1
                elif fresh:
                    assert torch.equal(new[t][i], init[t][i]), (key, vocabs[t], i)
                    counts["reset" if i < old[t].shape[0] else "new"] += 1
    assert torch.equal(child["linear.bias"], parent["linear.bias"])
    return counts


def test_three_day_loop_keeps_rows_of_surviving_ids(loop):
    """lr 0 on days 2 and 3: every id not retired or reused since keeps its row bit for bit (day 1's
    rows on day 3 too); new and reset rows are each run's fresh model's (its constructor's draw)."""
    store = Store(loop["store"])
    assert store.vocab_version == 3
    assert sum(len(v) for v in store.id_changes(1, 3).values()) > 0  # eviction reused / retired some ids
    r1 = load_weights(RunDir(loop["root"] / "r1").checkpoint(2))
    r2 = load_weights(RunDir(loop["root"] / "r2z").checkpoint(1))
    r3 = load_weights(RunDir(loop["root"] / "r3z").checkpoint(1))
    day2 = check_growth(store, r1, 1, r2, 2)
    day3 = check_growth(store, r2, 2, r3, 3)
    assert day2["kept"] and day2["new"] and day3["kept"] and day3["new"] and day2["reset"] + day3["reset"] > 0
    assert check_growth(store, r1, 1, r3, 3, fresh=False)["kept"] > 0  # day-1 rows alive on day 3


def test_progressive_scores_match_eval_partition(loop, capsys):
    """``ctrlab eval RUN --partition day03`` of the day-2 run is the day-3 run's progressive score."""
    root = loop["root"]
    assert main(["eval", str(root / "r2z"), "--partition", "day03", "--json", "--set", "train.threads=1"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res[-1]["partitions"] == ["day03"]
    assert res[-1]["auc"] == pytest.approx(loop["r3z"]["progressive_auc"], abs=1e-12)
    assert loop["r3z"]["trained_partitions"] == ["day03"]  # default: what the parent's lineage did not train


def test_resume_of_a_continued_run(loop, tmp_path, monkeypatch):
    import ctrlab.train.trainer as trainer_mod

    root, store = loop["root"], loop["store"]
    args = (f"train.continue_from={json.dumps(str(root / 'r1'))}", "data.partitions=[day02]", "train.epochs=2",
            "data.valid_partition=day03")
    whole = train(store, tmp_path / "whole", *args)
    with monkeypatch.context() as m:
        m.setattr(trainer_mod, "BatchIterator", crashing_iterator(1, 1))
        with pytest.raises(Crash):
            train(store, tmp_path / "crashed", *args)
    assert (tmp_path / "crashed" / "checkpoints" / "last.pt").is_file()
    resumed = train(store, tmp_path / "crashed", *args)
    for key in ("progressive_auc", "progressive_logloss", "parent", "valid_auc"):
        assert resumed[key] == whole[key], key
    a = load_weights(RunDir(tmp_path / "whole").checkpoint(2))
    b = load_weights(RunDir(tmp_path / "crashed").checkpoint(2))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_partition_trained_again_is_warned(loop, tmp_path):
    s = train(loop["store"], tmp_path / "again", f"train.continue_from={json.dumps(str(loop['root'] / 'r2'))}",
              "data.partitions=[day02]", "data.test_partition=day03")
    assert s["progressive_is_training_data"] is True
    assert s["test_partition"] == "day03" and s["test_rows"] == ROWS and s["test_auc"] is not None
    assert any("already trained on" in w for w in s["warnings"])


def test_refusals(loop, tmp_path):
    root = loop["root"]
    # a different pipeline (min_count 3): not the parent's store lineage
    other = tmp_path / "other"
    other_opts = lambda p: PrepareOptions(train=[str(p)], format="criteo",  # noqa: E731
                                          categorical=CategoricalOptions(min_count=3))
    prepare(other_opts(root / "days" / "day01.tsv"), other, progress=False, partition="day01")
    append_partition(other, other_opts(root / "days" / "day02.tsv"), progress=False)
    with pytest.raises(ConfigError, match="lineage"):
        train(other, tmp_path / "x", f"train.continue_from={json.dumps(str(root / 'r1'))}", "data.partitions=[day02]")
    # a split store with partitions named
    split = tmp_path / "split"
    prepare(PrepareOptions(train=[str(root / "days" / "day01.tsv")], format="criteo"), split, progress=False)
    with pytest.raises(ConfigError, match="not a partitioned store"):
        train(split, tmp_path / "y", "data.partitions=[day01]")
    with pytest.raises(ConfigError, match="not a partitioned store"):
        train(split, tmp_path / "y2", f"train.continue_from={json.dumps(str(root / 'r1'))}")
    # unknown partition, a held-out partition trained on, the parent's own directory
    with pytest.raises(ConfigError, match="no partition 'day09'"):
        train(loop["store"], tmp_path / "z", "data.partitions=[day09]")
    with pytest.raises(ConfigError, match="also a training partition"):
        train(loop["store"], tmp_path / "z", "data.partitions=[day01,day02]", "data.valid_partition=day02")
    with pytest.raises(ConfigError, match="its own run directory"):
        train(loop["store"], root / "r1", f"train.continue_from={json.dumps(str(root / 'r1'))}")
    with pytest.raises(ConfigError, match="keeps the parent's model"):
        train(loop["store"], tmp_path / "m", f"train.continue_from={json.dumps(str(root / 'r1'))}", model="deepfm")
    # an unfinished parent
    (tmp_path / "unfinished").mkdir()
    import shutil
    shutil.copytree(root / "r1", tmp_path / "unfinished" / "r1")
    (tmp_path / "unfinished" / "r1" / "summary.json").unlink()
    with pytest.raises(ConfigError, match="unfinished"):
        train(loop["store"], tmp_path / "u", f"train.continue_from={json.dumps(str(tmp_path / 'unfinished' / 'r1'))}")


def test_cli_daily_loop(tmp_path, capsys):
    write_daily_synthetic(tmp_path / "days", 2, 300, seed=9)
    store, days = tmp_path / "store", tmp_path / "days"
    flags = ["--set", "model.params.embedding_dim=4", "--set", "train.threads=1", "--set", "train.batch_size=128",
             "--epochs", "1", "--quiet"]
    assert main(["prepare", str(days / "day01.tsv"), "--format", "criteo", "--out", str(store), "--partition", "day01",
                 "--evict-after", "2", "--quiet"]) == 0
    assert main(["train", "--data", str(store), "--model", "fm", "--partitions", "day01", "--out",
                 str(tmp_path / "r1"), *flags]) == 0
    assert main(["prepare", "--append", str(store), str(days / "day02.tsv"), "--format", "criteo", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["train", "--continue", str(tmp_path / "r1"), "--data", str(store), "--partitions", "day02",
                 "--out", str(tmp_path / "r2"), *flags]) == 0
    out = capsys.readouterr().out
    assert "progressive validation (parent on day02, before training): AUC" in out
    summary = json.loads((tmp_path / "r2" / "summary.json").read_text())
    assert summary["parent"]["run_dir"] == str(tmp_path / "r1") and "progressive_auc" in summary
    assert main(["train", "--continue", str(tmp_path / "r1"), "--data", str(store), *flags]) != 0  # no --out
    assert "needs --out" in capsys.readouterr().err


MULTI = GenericSchemaConfig(label=["click", "conv"], optional_labels=["conv"], dense=["x"], sparse=["a", "b"])


def test_multitask_continue(tmp_path):
    rng = np.random.default_rng(6)
    paths = []
    for d in range(1, 3):
        lines = ["click\tconv\tx\ta\tb"]
        for _ in range(200):
            a = int(rng.integers(0, 5 + 3 * d))
            click = int(rng.random() < 0.2 + 0.05 * (a % 4))
            conv = (int(rng.random() < 0.5) if click else "")
            lines.append(f"{click}\t{conv}\t{rng.exponential(2):.2f}\ta{a}\tb{rng.integers(0, 4)}")
        paths.append(tmp_path / f"m{d}.tsv")
        paths[-1].write_text("\n".join(lines) + "\n")
    mopts = lambda p: PrepareOptions(train=[str(p)], format="tsv", schema=MULTI,  # noqa: E731
                                     numeric=NumericOptions(transform="log1p"))
    prepare(mopts(paths[0]), tmp_path / "s", progress=False, partition="m1")
    extra = ["model.params.hidden_units=[8]", "model.params.tower_units=[4]"]
    train(tmp_path / "s", tmp_path / "r1", *extra, model="shared_bottom")
    append_partition(tmp_path / "s", mopts(paths[1]), progress=False)
    s = train(tmp_path / "s", tmp_path / "r2", *extra, f"train.continue_from={json.dumps(str(tmp_path / 'r1'))}",
              model="shared_bottom")
    assert s["trained_partitions"] == ["m2"] and s["tasks"] == ["click", "conv"]
    for key in ("progressive_auc/click", "progressive_auc/conv", "progressive_logloss/click", "progressive_auc"):
        assert key in s, key
