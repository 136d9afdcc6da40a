"""PaddleRec's ``feat_idx`` lines (logistic_regression's criteo_lr_reader) and slot_dnn's
``feasign:slot`` lines, on the real samples in ../shared/data: row counts, labels and rows
compared with a direct parse; crafted bad lines and gzip variants; a prepare -> predict round
trip per format; and PaddleRec's logistic_regression config.yaml trained unchanged."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest

from ctrlab.data.formats import detect_format, file_schema, input_schema
from ctrlab.data.readers import DataError, RowReader
from ctrlab.schema import CRITEO_DENSE, CRITEO_SPARSE, GenericSchemaConfig

RANK = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "PaddlePaddle__PaddleRec" / "models" / "rank"
LR = RANK / "logistic_regression"
FEASIGN = RANK / "slot_dnn" / "data" / "demo_10"


def _read(path: Path, fmt: str = "auto", cfg: GenericSchemaConfig | None = None, bad_lines: str = "error"):
    fmt, schema = file_schema(path, fmt, cfg)
    reader = RowReader([path], schema, bad_lines=bad_lines)
    chunks = list(reader)
    return fmt, schema, [r for c in chunks for r in c.table.to_pylist()], reader


def _feat_idx_direct(line: str) -> dict:
    tokens = [t.split(":") for t in line.split()]
    idx = [int(v) for k, v in tokens if k == "feat_idx"]
    val = [float(v) for k, v in tokens if k == "feat_value"]
    row = {"label": float(next(v for k, v in tokens if k == "label"))}
    for k, name in enumerate((*CRITEO_DENSE, *CRITEO_SPARSE)):
        if idx[k] == 0:
            row[name] = None
        else:
            row[name] = val[k] if k < 13 else str(idx[k])
    return row


def test_feat_idx_sample(shared_data):
    path = shared_data["paddle_feat_idx"]
    fmt, schema, rows, reader = _read(path, "feat_idx")
    assert fmt == "feat_idx" and schema.dense == CRITEO_DENSE and schema.sparse == CRITEO_SPARSE
    assert len(rows) == 100 and sum(r["label"] for r in rows) == 22  # PROVENANCE: 100 rows, 0.22 positive
    lines = path.read_text().splitlines()
    for k in (0, 1, 17, 99):
        assert rows[k] == _feat_idx_direct(lines[k])


def _feasign_direct(line: str) -> tuple[float, dict[str, list[str]]]:
    slots: dict[str, list[str]] = {}
    label = None
    for token in line.split():
        feasign, slot = token.split(":")
        if slot == "1":
            label = float(feasign)
        else:
            slots.setdefault(f"s{slot}", []).append(feasign)
    return label, slots


def test_feasign_sample():
    if not FEASIGN.is_file():
        pytest.skip(f"{FEASIGN} is not available")
    fmt, schema, rows, reader = _read(FEASIGN)
    assert fmt == "feasign" and detect_format(FEASIGN) == "feasign"
    assert schema.sparse == () and len(schema.lists) > 200
    assert all(c.kind == "multi" and c.pooling == "sum" for c in schema.lists)
    lines = FEASIGN.read_text().splitlines()
    assert len(rows) == 10
    cut = 0
    for row, line in zip(rows, lines):
        label, slots = _feasign_direct(line)
        assert row["label"] == label
        for column in schema.lists:
            want = slots.get(column.name, [])  # a missing slot: an empty list
            cut += len(want) > column.max_length
            assert row[column.name] == want[-column.max_length:]
    assert [r["label"] for r in rows] == [float(line.split()[0].split(":")[0]) for line in lines]
    assert sum(reader.sources[0].truncated.values()) == cut


def test_feasign_field_map_and_single_slots(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("1:1 11:2 12:2 7:3 5:4\n0:1 13:2\n")
    cfg = GenericSchemaConfig(fields={"label": 1, "tags": 2, "user": 3, "count": 4}, sparse=["user"], dense=["count"])
    _, schema, rows, _ = _read(path, "feasign", cfg)
    assert schema.sparse == ("user",) and schema.list_names == ("tags",)
    assert rows == [{"label": 1.0, "count": 5.0, "user": "7", "tags": ["11", "12"]},
                    {"label": 0.0, "count": None, "user": None, "tags": ["13"]}]


@pytest.mark.parametrize("fmt, line, field, words", [
    ("feat_idx", None, "label", "0/1"),
    ("feat_idx", "short", None, "expected 39 feat_idx"),
    ("feat_idx", "catvalue", "C1", "expected 1"),
    ("feat_idx", "badidx", "I2", "integer"),
    ("feasign", "3:1 5:2", "label", "0/1 click"),
    ("feasign", "1:1 5:999", None, "unknown slot 999"),
    ("feasign", "1:1 x:2", None, "expected feasign:slot"),
    ("feasign", "1:1 0:1", "label", "appears twice"),
])
@pytest.mark.parametrize("gz", [False, True])
def test_bad_lines_name_file_line_and_field(tmp_path, fmt, line, field, words, gz):
    good = " ".join([*(f"feat_idx:{k}" for k in range(1, 40)), *("feat_value:1.0" for _ in range(39)), "label:1"])
    if fmt == "feat_idx":
        bad = {None: good.replace("label:1", "label:3"),
               "short": " ".join(good.split()[1:]),
               "catvalue": good.replace("feat_value:1.0", "feat_value:0.5").replace(
                   "feat_value:0.5", "feat_value:1.0", 13),
               "badidx": good.replace("feat_idx:2 ", "feat_idx:x ")}[line]
        lines, cfg = [good, bad, good], None
    else:
        lines, cfg = ["1:1 5:2 6:2", line, "0:1 7:2"], GenericSchemaConfig(fields={"label": 1, "s2": 2})
    data = ("\n".join(lines) + "\n").encode()
    path = tmp_path / ("bad.txt.gz" if gz else "bad.txt")
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as err:
        _read(path, fmt, cfg)
    assert str(err.value).startswith(f"{path}:2: ") and err.value.field == field and words in str(err.value)
    _, _, rows, reader = _read(path, fmt, cfg, bad_lines="skip")
    assert len(rows) == 2 and reader.skipped.total == 1


def test_gzip_reads_like_plain(shared_data, tmp_path):
    path = shared_data["paddle_feat_idx"]
    packed = tmp_path / "sample.gz"
    packed.write_bytes(gzip.compress(path.read_bytes()))
    assert _read(packed, "feat_idx")[2] == _read(path, "feat_idx")[2]
    if FEASIGN.is_file():
        slots = tmp_path / "demo_10.gz"
        slots.write_bytes(gzip.compress(FEASIGN.read_bytes()))
        assert _read(slots)[2] == _read(FEASIGN)[2]


def _round_trip(root: Path, train: Path, fmt: str, score: Path) -> np.ndarray:
    from ctrlab.config import load_config
    from ctrlab.export.bundle import export_bundle
    from ctrlab.inference import Predictor, score_files
    from ctrlab.train.run import run_training

    cfg = load_config(None, {"data.train": [str(train)], "data.format": fmt, "data.split": [0.8, 0.2, 0.0],
                             "run_dir": str(root / "run"), "model.name": "lr", "train.threads": 1,
                             "train.epochs": 1, "train.batch_size": 16, "train.log_every": 1000})
    run_training(cfg, progress=False, log=lambda _m: None)
    export_bundle(root / "run", root / "bundle", epoch=1, log=lambda _m: None)
    predictor = Predictor(root / "bundle", threads=1)
    return np.concatenate([c.probabilities for c in score_files(predictor, score)])


@pytest.mark.usefixtures("one_torch_thread")
def test_feat_idx_prepare_then_predict(shared_data, tmp_path):
    path = shared_data["paddle_feat_idx"]
    unlabelled = tmp_path / "score.txt"
    unlabelled.write_text("\n".join(" ".join(t for t in line.split() if not t.startswith("label:"))
                                    for line in path.read_text().splitlines()[:5]) + "\n")
    probs = _round_trip(tmp_path, path, "feat_idx", unlabelled)
    assert probs.shape == (5,) and np.isfinite(probs).all()
    from ctrlab.inference import Predictor

    predictor = Predictor(tmp_path / "bundle", threads=1)
    _, schema = input_schema(unlabelled, "auto", predictor.schema, predictor.pipeline.dense_inputs,
                             predictor.pipeline.sparse_inputs)
    assert schema.label is None


@pytest.mark.usefixtures("one_torch_thread")
def test_feasign_prepare_then_predict(tmp_path):
    if not FEASIGN.is_file():
        pytest.skip(f"{FEASIGN} is not available")
    train = tmp_path / "demo_40"
    train.write_text(FEASIGN.read_text() * 4)
    probs = _round_trip(tmp_path, train, "feasign", FEASIGN)
    assert probs.shape == (10,) and np.isfinite(probs).all()


@pytest.mark.usefixtures("one_torch_thread")
def test_logistic_regression_config_trains_unchanged(tmp_path, monkeypatch, capsys):
    from ctrlab.cli import main

    if not (LR / "config.yaml").is_file():
        pytest.skip(f"{LR} is not available")
    shutil.copytree(LR, tmp_path / "logistic_regression")  # (into tmp_path: never into the repository)
    monkeypatch.chdir(tmp_path)
    assert main(["train", "-m", str(tmp_path / "logistic_regression" / "config.yaml"), "--quiet",
                 "--set", "train.threads=1"]) == 0
    assert "criteo_lr_reader layout" in capsys.readouterr().err
    run = tmp_path / "output_model_lr"
    assert (run / "checkpoints" / "epoch_3.pt").is_file()
    from ctrlab.data.store import Store

    store = Store(run / "store")
    assert store.meta["sources"]["train"][0]["format"] == "feat_idx"
    assert store.meta["sources"]["train"][0]["rows"] == 100 and store.meta["schema"]["format"] == "feat_idx"
