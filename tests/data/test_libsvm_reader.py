"""libsvm / libFM (``label idx:val``) and libffm (``label field:idx:val``) input: field maps,
the one weighted ``features`` list without a map, values and weights, bad lines named by file,
line and field, gzip, detection, the Frappe libsvm lines giving the CSV path's ids, and a
prepare -> predict round trip per format."""

from __future__ import annotations

import csv
import gzip
from pathlib import Path

import numpy as np
import pytest

from ctrlab.data.formats import detect_format, file_schema
from ctrlab.data.readers import WEIGHTS_SUFFIX, DataError, RowReader
from ctrlab.schema import GenericSchemaConfig

FIELDS = {"user": [0, 9], "item": [10, 99], "tags": [100, 199], "age": [200, 200]}


def _write(path: Path, lines: list[str], gz: bool = False) -> Path:
    data = ("\n".join(lines) + "\n").encode()
    if gz:
        path.write_bytes(gzip.compress(data))
    else:
        path.write_bytes(data)
    return path


def _read(path: Path, cfg: GenericSchemaConfig | None, fmt: str = "auto", bad_lines: str = "error"):
    fmt, schema = file_schema(path, fmt, cfg)
    reader = RowReader([path], schema, bad_lines=bad_lines)
    chunks = list(reader)
    rows = [r for c in chunks for r in c.table.to_pylist()]
    return fmt, schema, rows, reader, chunks


def _map_cfg(**extra) -> GenericSchemaConfig:
    return GenericSchemaConfig(fields=dict(FIELDS), dense=["age"],
                               lists={"tags": {"kind": "multi", "max_length": 2, "weight_separator": ":"}}, **extra)


@pytest.mark.parametrize("gz", [False, True])
def test_libsvm_with_a_field_map(tmp_path, gz):
    path = _write(tmp_path / ("a.libsvm" + (".gz" if gz else "")), [
        "1 3:1 17:1 100:0.5 105:2 200:31", "0 4:1 150:1", "-1 12:1 101:1 102:1 103:0.25", "+1 200:7.5"], gz)
    fmt, schema, rows, reader, _ = _read(path, _map_cfg())
    assert fmt == "libsvm" and schema.sparse == ("user", "item") and schema.dense == ("age",)
    assert [r["label"] for r in rows] == [1.0, 0.0, 0.0, 1.0]
    assert rows[0] == {"label": 1.0, "age": 31.0, "user": "3", "item": "17", "tags": ["100", "105"],
                       "tags" + WEIGHTS_SUFFIX: [0.5, 2.0]}
    assert rows[1]["item"] is None and rows[1]["age"] is None and rows[1]["tags"] == ["150"]
    assert rows[2]["tags"] == ["102", "103"] and rows[2]["tags" + WEIGHTS_SUFFIX] == [1.0, 0.25]  # last 2 kept
    assert reader.sources[0].truncated == {"tags": 1} and reader.sources[0].rows == 4
    assert rows[3]["user"] is None and rows[3]["tags"] == []


def test_libsvm_without_a_field_map_is_one_weighted_list(tmp_path):
    path = _write(tmp_path / "b.txt", ["1 3:1 17:0.5 900:2", "0 5:1"])
    cfg = GenericSchemaConfig(lists={"features": {"max_length": 2}})
    fmt, schema, rows, reader, _ = _read(path, cfg)
    assert fmt == "libsvm" and schema.list_names == ("features",) and schema.lists[0].kind == "multi"
    assert rows[0]["features"] == ["17", "900"] and rows[0]["features" + WEIGHTS_SUFFIX] == [0.5, 2.0]
    assert rows[1]["features"] == ["5"] and reader.sources[0].truncated == {"features": 1}
    with pytest.raises(ValueError, match="max_length"):
        file_schema(path, "libsvm", GenericSchemaConfig())


@pytest.mark.parametrize("line, field, words", [
    ("2 3:1", "label", "0/1"),
    ("1 3:1 4:1", "user", "appears twice"),
    ("1 3:0.5", "user", "categorical field takes 1"),
    ("1 500:1", None, "in no field"),
    ("1 3:x", "user", "expected a number"),
    ("1 a:1", None, "expected idx:val"),
    ("1 200:abc", "age", "expected a number"),
    ("1 100:nan", "tags", "expected a number"),
])
def test_libsvm_bad_lines_name_file_line_and_field(tmp_path, line, field, words):
    path = _write(tmp_path / "bad.libsvm", ["1 3:1", line, "0 4:1"])
    with pytest.raises(DataError) as err:
        _read(path, _map_cfg(), fmt="libsvm")
    assert err.value.line == 2 and err.value.field == field and words in str(err.value)
    assert str(err.value).startswith(f"{path}:2: ")
    _, _, rows, reader, chunks = _read(path, _map_cfg(), fmt="libsvm", bad_lines="skip")
    assert len(rows) == 2 and reader.skipped.total == 1 and chunks[0].skipped[0][0] == 2
    assert list(chunks[0].lines) == [1, 3]


def test_field_maps_are_checked(tmp_path):
    path = _write(tmp_path / "c.libsvm", ["1 3:1"])
    with pytest.raises(ValueError, match="overlap"):
        file_schema(path, "libsvm", GenericSchemaConfig(fields={"a": [0, 10], "b": [10, 20]}))
    with pytest.raises(ValueError, match="one index"):
        file_schema(path, "libsvm", GenericSchemaConfig(fields={"a": [0, 10]}, dense=["a"]))
    with pytest.raises(ValueError, match="first <= last"):
        file_schema(path, "libsvm", GenericSchemaConfig(fields={"a": [5, 1]}))
    with pytest.raises(ValueError, match="not fields"):
        file_schema(path, "libsvm", GenericSchemaConfig(fields={"a": [0, 5]}, dense=["b"]))


@pytest.mark.parametrize("gz", [False, True])
def test_libffm_fields_from_the_line_or_a_name_map(tmp_path, gz):
    path = _write(tmp_path / ("a.ffm" + (".gz" if gz else "")), ["1 0:3:1 1:17:1 2:5:0.5 2:8:1", "0 0:4:1"], gz)
    cfg = GenericSchemaConfig(lists={"f2": {"kind": "multi", "max_length": 4, "weight_separator": ":"}})
    fmt, schema, rows, _, _ = _read(path, cfg)
    assert fmt == "libffm" and schema.sparse == ("f0", "f1") and schema.list_names == ("f2",)
    assert rows[0] == {"label": 1.0, "f0": "3", "f1": "17", "f2": ["5", "8"], "f2" + WEIGHTS_SUFFIX: [0.5, 1.0]}
    assert rows[1] == {"label": 0.0, "f0": "4", "f1": None, "f2": [], "f2" + WEIGHTS_SUFFIX: []}
    named = GenericSchemaConfig(fields={"user": 0, "item": 1, "tags": 2},
                                lists={"tags": {"kind": "multi", "max_length": 4, "weight_separator": ":"}})
    _, schema, rows, _, _ = _read(path, named, fmt="libffm")
    assert schema.sparse == ("user", "item") and rows[0]["item"] == "17" and rows[0]["tags"] == ["5", "8"]


@pytest.mark.parametrize("line, field, words", [
    ("1 0:3:1 9:1:1", None, "unknown field 9"),
    ("1 0:3", None, "expected field:idx:val"),
    ("1 0:3:0.5", "f0", "categorical field takes 1"),
    ("1 0:3:1 0:4:1", "f0", "appears twice"),
    ("x 0:3:1", "label", "0/1"),
])
def test_libffm_bad_lines(tmp_path, line, field, words):
    path = _write(tmp_path / "bad.ffm", ["1 0:3:1 1:2:1", line])
    cfg = GenericSchemaConfig(fields={"f0": 0, "f1": 1})
    with pytest.raises(DataError) as err:
        _read(path, cfg, fmt="libffm")
    assert err.value.line == 2 and err.value.field == field and words in str(err.value)
    _, _, rows, reader, _ = _read(path, cfg, fmt="libffm", bad_lines="skip")
    assert len(rows) == 1 and reader.skipped.total == 1


def test_detection(tmp_path):
    assert detect_format(_write(tmp_path / "a", ["1 3:1 17:0.5"])) == "libsvm"
    assert detect_format(_write(tmp_path / "b", ["0 0:3:1 1:7:1"])) == "libffm"
    assert detect_format(_write(tmp_path / "c.gz", ["-1 3:1"], gz=True)) == "libsvm"


FRAPPE_FIELDS = {"user": [0, 956], "item": [957, 5038], "daytime": [5039, 5045], "weekday": [5046, 5052],
                 "isweekend": [5053, 5054], "homework": [5055, 5057], "cost": [5058, 5059],
                 "weather": [5060, 5068], "country": [5069, 5145], "city": [5146, 5381]}


def test_frappe_libsvm_lines_give_the_csv_ids(shared_data, tmp_path):
    """Frappe_x1's CSVs are conversions of AFN's libsvm files (``y f1:1 ... f10:1``): rebuilt
    libsvm lines, read with a field map, give the CSV path's ids, in the store too."""
    from ctrlab.data.prepare import PrepareOptions, prepare

    with open(shared_data["frappe_valid"], newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:201]
    head_csv = tmp_path / "head.csv"
    head_csv.write_text("\n".join(",".join(r) for r in [header, *body]) + "\n")
    lines = [" ".join([r[0], *(f"{v}:1" for v in r[1:])]) for r in body]
    libsvm = _write(tmp_path / "head.libsvm", lines)
    cfg = GenericSchemaConfig(fields=dict(FRAPPE_FIELDS))
    _, schema, got, _, _ = _read(libsvm, cfg)
    _, _, want, _, _ = _read(head_csv, GenericSchemaConfig(), fmt="csv")
    assert schema.sparse == tuple(header[1:]) and len(got) == 200
    assert got == want
    stores = {}
    for name, path, fmt, scfg in (("csv", head_csv, "csv", GenericSchemaConfig()), ("libsvm", libsvm, "libsvm", cfg)):
        prepare(PrepareOptions(train=[str(path)], format=fmt, schema=scfg, split=(1.0, 0.0, 0.0)),
                tmp_path / name, progress=False)
        stores[name] = tmp_path / name
    for part in ("sparse.npy", "label.npy"):
        assert np.array_equal(np.load(stores["csv"] / "train" / part), np.load(stores["libsvm"] / "train" / part))


def _round_trip(root: Path, path: Path, fmt: str, schema: dict, score_path: Path) -> np.ndarray:
    from ctrlab.config import load_config
    from ctrlab.export.bundle import export_bundle
    from ctrlab.inference import Predictor, score_files
    from ctrlab.train.run import run_training

    cfg = load_config(None, {"data.train": [str(path)], "data.format": fmt, "data.schema": schema,
                             "data.split": [0.8, 0.2, 0.0], "run_dir": str(root / "run"), "model.name": "lr",
                             "train.threads": 1, "train.epochs": 1, "train.batch_size": 16,
                             "train.log_every": 1000})
    run_training(cfg, progress=False, log=lambda _m: None)
    export_bundle(root / "run", root / "bundle", epoch=1, log=lambda _m: None)
    predictor = Predictor(root / "bundle", threads=1)
    return np.concatenate([c.probabilities for c in score_files(predictor, score_path)])


def _random_lines(n: int, fmt: str, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        user, item, tag = rng.integers(0, 10), rng.integers(10, 30), rng.integers(100, 110)
        if fmt == "libsvm":
            out.append(f"{rng.integers(0, 2)} {user}:1 {item}:1 {tag}:{rng.random():.3f} 200:{rng.integers(18, 70)}")
        else:
            out.append(f"{rng.integers(0, 2)} 0:{user}:1 1:{item}:1 2:{tag}:{rng.random():.3f}")
    return out


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("fmt", ["libsvm", "libffm"])
def test_prepare_then_predict(tmp_path, fmt):
    train = _write(tmp_path / f"train.{fmt}", _random_lines(120, fmt))
    score = _write(tmp_path / f"score.{fmt}.gz", _random_lines(7, fmt, seed=1), gz=True)
    lists = {"tags" if fmt == "libsvm" else "f2": {"kind": "multi", "max_length": 2, "weight_separator": ":"}}
    schema = {"fields": FIELDS, "dense": ["age"], "lists": lists} if fmt == "libsvm" else {"lists": lists}
    probs = _round_trip(tmp_path, train, fmt, schema, score)
    assert probs.shape == (7,) and np.isfinite(probs).all() and ((probs > 0) & (probs < 1)).all()
    from fastapi.testclient import TestClient

    from ctrlab.serve.app import create_app

    with TestClient(create_app(tmp_path / "bundle", threads=1)) as client:  # /upload: the same readers
        body = gzip.decompress(score.read_bytes())
        answer = client.post("/upload", files={"file": ("rows.txt", body, "text/plain")})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose(np.float32(answer.json()["data"]).ravel(), probs, rtol=1e-6)
        bad = client.post("/upload", files={"file": ("rows.txt", body.replace(b"\n", b" x\n", 1), "text/plain")})
        assert bad.status_code == 422 and "upload:1: expected" in bad.json()["detail"], bad.text
