"""PaddleRec's dmr folder (config.yaml + alimama_sampled_train.txt, unchanged) through ctrlab: its
267-column layout read with lists built from column blocks (``ListColumn.columns``, padding "0"),
checked against the raw file read with the csv module; its hyper_parameters mapped or noted;
``ctrlab train -m config.yaml`` end to end (model din until ctrlab's dmr is registered, then dmr)."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml

from ctrlab.cli import main
from ctrlab.config import load_config, paddlerec_to_native
from ctrlab.config.paddlerec import DMR_BLOCKS, DMR_COLUMNS, DMR_HISTORY_LENGTH
from ctrlab.data.formats import file_schema
from ctrlab.data.readers import RowReader
from ctrlab.models import list_models
from ctrlab.schema import GenericSchemaConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DMR = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "PaddlePaddle__PaddleRec" / "models" / "rank" / "dmr"
SAMPLE = DMR / "data" / "sample_data" / "alimama_sampled_train.txt"
HISTORIES = {"btag_his": None, "cate_his": "cate_id", "brand_his": "brand"}  # list -> the vocabulary it shares


@pytest.fixture(scope="module")
def raw_rows() -> list[list[str]]:
    if not SAMPLE.is_file():
        pytest.skip(f"{SAMPLE} is not available")
    with open(SAMPLE, newline="") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def mapped() -> tuple[dict, list[str]]:
    if not (DMR / "config.yaml").is_file():
        pytest.skip(f"{DMR / 'config.yaml'} is not available")
    return paddlerec_to_native(yaml.safe_load((DMR / "config.yaml").read_text()), DMR)


def block(rows: list[list[str]], name: str) -> np.ndarray:
    start = DMR_BLOCKS.index(name) * DMR_HISTORY_LENGTH
    return np.array([[float(v) for v in r[start:start + DMR_HISTORY_LENGTH]] for r in rows])


def test_padding_is_the_history_mask(raw_rows):
    """Why ``padding: "0"`` replaces the mask columns: on the sample, a history step is 0 in each
    of the three histories exactly where the history mask is 0 (padded steps come first)."""
    assert len(raw_rows) == 500 and {len(r) for r in raw_rows} == {len(DMR_COLUMNS)} == {267}
    mask = block(raw_rows, "mask")
    assert set(np.unique(mask)) == {0.0, 1.0}
    for name in HISTORIES:
        assert np.array_equal(block(raw_rows, name) == 0, mask == 0), name
    lengths = mask.sum(axis=1).astype(int)
    assert all((m[DMR_HISTORY_LENGTH - n:] == 1).all() for m, n in zip(mask, lengths))  # right-aligned
    assert (block(raw_rows, "match_mask") <= mask).all()  # (the match mask, unused, only marks real steps)


def test_config_maps_or_notes_every_key(mapped):
    out, notes = mapped
    cfg = load_config(None, [], base=out)
    assert cfg.model.name == "dmr" and cfg.model.params == {"embedding_dim": 32}  # main_embedding_size
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size) == ("adam", 0.008, 100)
    assert cfg.data.format == "csv"
    hyper = yaml.safe_load((DMR / "config.yaml").read_text())["hyper_parameters"]
    for key in (k for k in hyper if k.endswith("_size") and k not in ("main_embedding_size", "other_embedding_size")):
        assert any(n.startswith(f"hyper_parameters.{key} (") and "derived from the data" in n for n in notes), key
    assert any(n.startswith("hyper_parameters.other_embedding_size (8) differs") for n in notes)
    assert any("history mask columns are not read" in n and "nor are the match mask columns" in n for n in notes)
    unused = [n for n in notes if "not used by ctrlab" in n]
    assert unused == ["hyper_parameters.optimizer.strategy is not used by ctrlab"], unused


def test_reader_builds_the_histories_from_their_columns(mapped, raw_rows):
    out, _ = mapped
    _, schema = file_schema(SAMPLE, out["data"]["format"], GenericSchemaConfig(**out["data"]["schema"]))
    assert schema.list_names == tuple(HISTORIES) and schema.dense == ("price",)
    assert {c.name: c.vocab_of for c in schema.lists} == HISTORIES
    assert not set(schema.sparse) & set(schema.list_sources)
    reader = RowReader([SAMPLE], schema)
    table = next(iter(reader)).table
    assert table.num_rows == 500 and reader.sources[0].rows == 500 and not reader.sources[0].truncated
    lengths = [len(v) for v in table.column("cate_his").to_pylist()]
    assert np.mean(lengths) > 1 and min(lengths) >= 1
    for name in HISTORIES:  # the non-padded source values, oldest first, of the first rows
        start = DMR_BLOCKS.index(name) * DMR_HISTORY_LENGTH
        expected = [[v for v in r[start:start + DMR_HISTORY_LENGTH] if v != "0"] for r in raw_rows[:20]]
        assert table.column(name).to_pylist()[:20] == expected, name
    assert table.column("brand").to_pylist()[:3] == [r[263] for r in raw_rows[:3]]
    assert table.column("price").to_pylist()[:3] == [float(r[264]) for r in raw_rows[:3]]
    assert table.column("label").to_pylist()[:20] == [float(r[266]) for r in raw_rows[:20]]


def _train(tmp_path, monkeypatch, *extra: str) -> Path:
    if not (DMR / "config.yaml").is_file() or not SAMPLE.is_file():
        pytest.skip(f"{DMR} is not available")
    shutil.copytree(DMR, tmp_path / "dmr")  # (into tmp_path: never into the repository)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-m", str(tmp_path / "dmr" / "config.yaml"), "--quiet", "--set", "train.threads=1",
                 *extra]) == 0
    return tmp_path / "output_model_dmr"


def _check_run(run: Path, model: str, capsys) -> None:
    from ctrlab.data.store import Store

    assert "PaddleRec's dmr reader layout" in capsys.readouterr().err
    store = Store(run / "store")
    assert [(f.name, f.shares, f.length) for f in store.spec.lists] == [
        (name, shares, DMR_HISTORY_LENGTH) for name, shares in HISTORIES.items()]
    assert store.meta["splits"]["train"]["rows"] == 500  # every line read
    assert yaml.safe_load((run / "config.yaml").read_text())["model"]["name"] == model


def test_dmr_config_trains_unchanged_with_din(tmp_path, monkeypatch, capsys):
    """The data path alone: the dmr layout trained by din (its histories attend to cate_id and brand)."""
    _check_run(_train(tmp_path, monkeypatch, "--set", "model.name=din"), "din", capsys)


def test_dmr_config_trains_unchanged_with_dmr(tmp_path, monkeypatch, capsys):
    if "dmr" not in list_models():
        pytest.skip("ctrlab.models has no 'dmr' model registered yet (ctrlab/models/dmr.py is being written)")
    _check_run(_train(tmp_path, monkeypatch), "dmr", capsys)
