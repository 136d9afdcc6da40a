"""Faults in input rows (issue items 2, 3, 7, 15): every output line joins back to its input line,
non-finite values are bad values everywhere, broken gzip / UTF-8 / stray carriage returns are named
by file and line, and inputs that do not fit the bundle are warned about.

Real Criteo and PaddleRec rows come from ../shared/data (skipped when absent); crafted variants are
written to tmp_path. The bundle is a tiny untrained DeepFM over a synthetic Criteo store (scores need
not be good, only consistent)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch

from ctrlab.cli import main
from ctrlab.config import dump_config, load_config
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.readers import DataError, RowReader
from ctrlab.data.store import Store
from ctrlab.export.bundle import export_bundle
from ctrlab.features.encoders import NumericTransform
from ctrlab.models import build_model
from ctrlab.inference import InputError, Predictor, predict_file
from ctrlab.schema import PRESETS
from conftest import synthetic_store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quiet(_msg: str) -> None:
    pass


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    raw, _store = synthetic_store(root, 800, seed=5)
    run = root / "run"
    cfg = load_config(None, [f"data.store={json.dumps(str(root / 'store'))}", f"run_dir={json.dumps(str(run))}",
                             "model.name=deepfm"])
    cfg.model.params = {"embedding_dim": 4, "hidden_units": [8]}
    (run / "checkpoints").mkdir(parents=True)
    dump_config(cfg, run / "config.yaml")
    torch.manual_seed(0)
    net = build_model("deepfm", Store(root / "store").spec, cfg.model.params)
    torch.save({"model": net.state_dict(), "epoch": 1}, run / "checkpoints" / "epoch_1.pt")
    export_bundle(run, root / "bundle", log=quiet)
    return SimpleNamespace(root=root, raw=raw, path=root / "bundle", predictor=Predictor(root / "bundle", threads=1))


@pytest.fixture
def criteo_lines(shared_data) -> list[bytes]:
    return shared_data["criteo_train"].read_bytes().split(b"\n")[:60]


def write(path: Path, lines: list[bytes], gz: bool = False) -> Path:
    data = b"\n".join(lines) + b"\n"
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def read_all(path: Path, bad_lines: str, schema=PRESETS["criteo"]):
    reader = RowReader([path], schema, bad_lines=bad_lines)
    chunks = list(reader)
    lines = [int(x) for c in chunks for x in c.lines]
    skipped = [s for c in chunks for s in c.skipped]
    return lines, skipped, reader


# --------------------------------------------------------------------------------------------
# item 2: skipped lines keep their place; ids are input line numbers; \r is one bad line
# --------------------------------------------------------------------------------------------

def test_predict_skip_keeps_every_line_in_place(bundle, criteo_lines, tmp_path, capsys):
    lines = list(criteo_lines)
    lines[10] = lines[10][:40]  # line 11: damaged (too few fields)
    bad = write(tmp_path / "bad.tsv", lines)
    out = tmp_path / "scores.tsv"
    assert main(["predict", str(bundle.path), str(bad), "--out", str(out), "--bad-lines", "skip",
                 "--id-column", "--header"]) == 0
    assert "skipped 1 bad lines" in capsys.readouterr().out
    rows = [line.split("\t") for line in out.read_text().splitlines()]
    assert rows[0] == ["id", "probability", "skipped"]
    assert len(rows) == 61 and [r[0] for r in rows[1:]] == [str(k) for k in range(1, 61)]
    assert rows[11][1] == "" and "wrong field count" in rows[11][2]
    # every other line's score is that line's own score
    own = bundle.predictor.predict(pa.concat_tables(c.table for c in RowReader(
        [write(tmp_path / "good.tsv", lines[:10] + lines[11:])], PRESETS["criteo"]))).scores
    got = np.array([float(r[1]) for k, r in enumerate(rows[1:]) if k != 10], dtype=np.float32)
    np.testing.assert_allclose(got, own, rtol=1e-6)
    assert all(r[2] == "" for k, r in enumerate(rows[1:]) if k != 10)


def test_several_files_ids_are_file_and_line(bundle, criteo_lines, tmp_path):
    a = write(tmp_path / "a.tsv", criteo_lines[:5])
    b = write(tmp_path / "b.tsv", criteo_lines[5:8])
    predict_file(bundle.path, [a, b], tmp_path / "o.tsv", id_column=True, predictor=bundle.predictor, log=quiet)
    ids = [line.split("\t")[0] for line in (tmp_path / "o.tsv").read_text().splitlines()]
    assert ids == [f"{a}:{k}" for k in range(1, 6)] + [f"{b}:{k}" for k in range(1, 4)]


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("where", ["dense", "sparse", "end"])
def test_bare_carriage_return_is_one_bad_line(criteo_lines, tmp_path, gz, where):
    lines = list(criteo_lines)
    fields = lines[10].split(b"\t")
    if where == "dense":
        fields[3] = fields[3] + b"\r7"
    elif where == "sparse":
        fields[20] = b"ab\rcd"
    else:
        fields[-1] = fields[-1] + b"\r\r"
    lines[10] = b"\t".join(fields)
    path = write(tmp_path / "cr.tsv", lines, gz)
    with pytest.raises(DataError) as err:
        read_all(path, "error")
    assert err.value.line == 11 and str(path) in str(err.value)
    got, skipped, reader = read_all(path, "skip")
    assert got == [k for k in range(1, 61) if k != 11]
    assert [line for line, _ in skipped] == [11] and reader.skipped.total == 1


def test_chunk_lines_exact_after_skips_fast_and_slow(criteo_lines, tmp_path):
    lines = list(criteo_lines)
    lines[4] = b"\t".join([b"1", b"nan"] + lines[4].split(b"\t")[2:])  # fast path: non-finite value
    lines[20] = b""  # empty line: the line parser takes over
    lines[30] = lines[30][:25]
    got, skipped, reader = read_all(write(tmp_path / "x.tsv", lines), "skip")
    assert got == [k for k in range(1, 61) if k not in (5, 21, 31)]
    assert [line for line, _ in skipped] == [5, 21, 31]
    assert reader.skipped.total == 3


# --------------------------------------------------------------------------------------------
# item 3: non-finite values are bad values everywhere
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text", [b"1e400", b"inf", b"-inf", b"nan", b"NaN"])
def test_reader_non_finite_numbers_are_bad(criteo_lines, tmp_path, text):
    lines = list(criteo_lines)
    fields = lines[10].split(b"\t")
    fields[5] = text  # I5
    lines[10] = b"\t".join(fields)
    path = write(tmp_path / "n.tsv", lines)
    with pytest.raises(DataError) as err:
        read_all(path, "error")
    assert (err.value.line, err.value.field) == (11, "I5") and str(path) in str(err.value)
    got, _, reader = read_all(path, "skip")
    assert 11 not in got and len(got) == 59 and reader.skipped.counts == Counter({"not a number": 1})


@pytest.mark.parametrize("text", ["1e400", "inf", "nan"])
def test_slot_non_finite_numbers_are_bad(shared_data, tmp_path, text):
    lines = shared_data["paddle_slot"].read_text().splitlines()[:20]
    tokens = lines[3].split()
    k = next(i for i, t in enumerate(tokens) if t.startswith("dense_feature:"))
    tokens[k] = f"dense_feature:{text}"
    lines[3] = " ".join(tokens)
    path = tmp_path / "slot.txt"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as err:
        read_all(path, "error", PRESETS["slot"])
    assert err.value.line == 4 and err.value.field == "I1"
    got, skipped, _ = read_all(path, "skip", PRESETS["slot"])
    assert 4 not in got and [line for line, _ in skipped] == [4]


@pytest.mark.parametrize("value", ["1e400", "inf", "nan", float("inf"), float("nan"), 10**400, np.float64("inf")])
def test_predictor_rejects_non_finite_values(bundle, value):
    rows = [{"I1": 1}, {"I1": 2, "I5": value}]
    with pytest.raises(InputError, match=r"row 1, field 'I5'"):
        bundle.predictor.predict(rows)


def test_predictor_rejects_non_finite_arrow_values(bundle):
    table = pa.concat_tables(c.table for c in RowReader([bundle.raw], PRESETS["criteo"])).slice(0, 4)
    column = table.column("I3").to_pylist()
    column[2] = float("inf")
    table = table.set_column(table.schema.get_field_index("I3"), "I3", pa.array(column, type=pa.float64()))
    with pytest.raises(InputError, match=r"row 2, field 'I3'"):
        bundle.predictor.predict(table)


@pytest.fixture
def passthrough_predictor(bundle) -> Predictor:
    """The bundle with I2 passed through: a finite raw value beyond float32 overflows its feature."""
    predictor = Predictor(bundle.path, threads=1)
    predictor.pipeline.encoders["I2"] = NumericTransform("passthrough")
    return predictor


def test_feature_overflow_is_a_bad_value(bundle, passthrough_predictor, criteo_lines, tmp_path):
    with pytest.raises(InputError, match=r"row 1, field 'I2'.*non-finite"):
        passthrough_predictor.predict([{"I2": 3}, {"I2": 1e39}])
    lines = list(criteo_lines)
    fields = lines[6].split(b"\t")
    fields[2] = b"1e39"  # I2
    lines[6] = b"\t".join(fields)
    path = write(tmp_path / "big.tsv", lines)
    with pytest.raises(DataError) as err:
        predict_file(bundle.path, [path], tmp_path / "o", predictor=passthrough_predictor, log=quiet)
    assert (err.value.line, err.value.field) == (7, "I2")
    result = predict_file(bundle.path, [path], tmp_path / "o", predictor=passthrough_predictor, bad_lines="skip",
                          log=quiet)
    out = (tmp_path / "o").read_text().splitlines()
    assert result.rows == 59 and len(out) == 60 and out[6].startswith("\t") and "non-finite" in out[6]
    assert all(np.isfinite(float(line.split("\t")[0])) for k, line in enumerate(out) if k != 6)


def test_server_answers_non_finite_with_4xx(bundle):
    from fastapi.testclient import TestClient

    from ctrlab.serve.app import create_app

    with TestClient(create_app(bundle.path, threads=1)) as client:
        for row in ('{"I1": "1e400"}', '{"I2": 1e999}', '{"I3": NaN}', '{"I4": -Infinity}'):
            answer = client.post("/v1/predict", content='{"rows": [{"I1": 1}, ' + row + ']}',
                                 headers={"content-type": "application/json"})
            assert answer.status_code in (400, 422), answer.text
            assert "row 1" in answer.json()["detail"] and row[2:4] in answer.json()["detail"]


# --------------------------------------------------------------------------------------------
# item 7: broken gzip and invalid UTF-8
# --------------------------------------------------------------------------------------------

@pytest.fixture
def big_gz(criteo_lines, tmp_path) -> tuple[bytes, list[bytes]]:
    lines = criteo_lines * 40
    return gzip.compress(b"\n".join(lines) + b"\n"), lines


@pytest.mark.parametrize("damage", ["flip", "truncate"])
@pytest.mark.parametrize("policy", ["error", "skip"])
def test_broken_gzip_names_the_file_in_prepare_and_predict(bundle, big_gz, tmp_path, damage, policy):
    data = bytearray(big_gz[0])
    if damage == "flip":
        for k in range(len(data) // 2, len(data) // 2 + 8):
            data[k] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    path = tmp_path / "broken.tsv.gz"
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"broken\.tsv\.gz: corrupt or truncated gzip data after line \d+"):
        predict_file(bundle.path, [path], tmp_path / "o", bad_lines=policy, predictor=bundle.predictor, log=quiet)
    assert not (tmp_path / "o").exists()
    with pytest.raises(DataError, match=r"broken\.tsv\.gz: corrupt or truncated gzip data"):
        prepare(PrepareOptions(train=[str(path)], bad_lines=policy), tmp_path / "store", progress=False, log=quiet)


@pytest.mark.parametrize("gz", [False, True])
def test_invalid_utf8_is_a_bad_line(bundle, criteo_lines, tmp_path, gz):
    lines = list(criteo_lines)
    lines[10] = lines[10][:50] + b"\xff\xfe" + lines[10][50:]
    path = write(tmp_path / ("u.tsv.gz" if gz else "u.tsv"), lines, gz)
    with pytest.raises(DataError) as err:
        predict_file(bundle.path, [path], tmp_path / "o", predictor=bundle.predictor, log=quiet)
    assert err.value.line == 11 and "UTF-8" in str(err.value) and str(path) in str(err.value)
    result = predict_file(bundle.path, [path], tmp_path / "o", bad_lines="skip", predictor=bundle.predictor, log=quiet)
    assert result.rows == 59 and result.skipped.counts == Counter({"invalid UTF-8": 1})
    assert "UTF-8" in (tmp_path / "o").read_text().splitlines()[10]
    store = prepare(PrepareOptions(train=[str(path)], bad_lines="skip"), tmp_path / "store", progress=False, log=quiet)
    assert store.meta["skipped"]["total"] == 1


# --------------------------------------------------------------------------------------------
# item 15: inputs that do not fit the bundle
# --------------------------------------------------------------------------------------------

def test_manifest_has_input_rates(bundle):
    rates = bundle.predictor.input_rates
    assert set(rates) == set(bundle.predictor.columns)
    assert rates["C1"]["oov"] is not None and rates["I2"]["oov"] is None
    assert 0.0 <= rates["C1"]["missing"] <= 1.0


def test_predict_warns_when_inputs_do_not_fit(bundle, shared_data, tmp_path):
    logs: list[str] = []
    predict_file(bundle.path, [shared_data["paddle_slot"]], tmp_path / "o", predictor=Predictor(bundle.path),
                 log=logs.append)
    warning = [line for line in logs if line.startswith("warning:")]
    assert len(warning) == 1 and "C1 OOV" in warning[0] and "C26 OOV" in warning[0]
    # rows like the training rows: no warning
    logs.clear()
    predict_file(bundle.path, [bundle.raw], tmp_path / "o", predictor=bundle.predictor, log=logs.append)
    assert not [line for line in logs if line.startswith("warning:")]


def test_old_bundle_without_rates_loads_and_scores(bundle, tmp_path):
    import shutil

    old = tmp_path / "old"
    shutil.copytree(bundle.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["input_rates"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    predictor = Predictor(old)
    assert predictor.input_rates == {}
    logs: list[str] = []
    predict_file(old, [bundle.raw], tmp_path / "o", predictor=predictor, log=logs.append)
    assert not [line for line in logs if line.startswith("warning:")]


def test_server_metrics_count_missing_and_oov_per_field(bundle):
    from fastapi.testclient import TestClient

    from ctrlab.serve.app import create_app

    with TestClient(create_app(bundle.path, threads=1)) as client:
        rows = [{"I1": 1, "C1": "never-seen-value"}, {"I1": 2, "C1": "another-unseen"}, {"C2": "x"}]
        assert client.post("/v1/predict", json={"rows": rows}).status_code == 200
        text = client.get("/metrics").text
    assert 'ctrlab_input_rows_total{field="C1"} 3' in text
    assert 'ctrlab_input_oov_total{field="C1"} 2' in text
    assert 'ctrlab_input_missing_total{field="C1"} 1' in text
    assert 'ctrlab_input_missing_total{field="I1"} 1' in text
    assert 'ctrlab_input_trained_oov_rate{field="C1"}' in text


def test_prepare_refuses_a_feature_that_overflows(criteo_lines, tmp_path):
    """prepare's own transform path (pass 2) refuses a value whose feature is not finite, naming the
    split row and field, and the store is not written."""
    from ctrlab.features.pipeline import NumericOptions

    lines = list(criteo_lines)
    fields = lines[6].split(b"\t")
    fields[2] = b"1e39"  # I2, finite as float64, inf as a float32 feature when passed through
    lines[6] = b"\t".join(fields)
    path = write(tmp_path / "big.tsv", lines)
    opts = PrepareOptions(train=[str(path)], split=(1.0, 0.0, 0.0), numeric=NumericOptions(transform="passthrough"))
    with pytest.raises(ValueError, match=r"train split, row 6 .*field 'I2'.*non-finite"):
        prepare(opts, tmp_path / "store", progress=False, log=quiet)
    assert not (tmp_path / "store").exists()
    # the same value is fine where the transform bounds it
    opts.numeric = NumericOptions(transform="log1p")
    store = prepare(opts, tmp_path / "store", progress=False, log=quiet)
    assert np.isfinite(np.load(Path(store.path) / "train" / "dense.npy")).all()


# --------------------------------------------------------------------------------------------
# offline predict reads small chunks (inference starts sooner): the same bytes as whole chunks
# --------------------------------------------------------------------------------------------

def test_read_chunk_size_does_not_change_the_output(bundle, tmp_path, monkeypatch):
    from ctrlab.data.readers import CHUNK_ROWS
    from ctrlab.data.synth import write_synthetic
    from ctrlab.inference import offline

    raw = tmp_path / "rows.tsv"
    write_synthetic(raw, 12_000, seed=3, progress=False)  # > 2 Arrow blocks: several chunks, prefetched
    lines = raw.read_bytes().split(b"\n")
    lines[6001] = b"1\tnot-a-number\t" + lines[6001].split(b"\t", 2)[-1]  # one bad line mid-file
    raw.write_bytes(b"\n".join(lines))
    outputs = {}
    for chunk_rows in (1, CHUNK_ROWS):  # 1: every Arrow block is a chunk, batches span chunks
        monkeypatch.setattr(offline, "READ_CHUNK_ROWS", chunk_rows)
        chunks = list(offline.score_files(bundle.predictor, raw, bad_lines="skip", batch_size=1000))
        assert (len(chunks) > 1) == (chunk_rows == 1)
        assert [c.rows_before for c in chunks] == list(np.cumsum([0] + [len(c.probabilities) for c in chunks[:-1]]))
        out = tmp_path / f"scores-{chunk_rows}.tsv"
        predict_file(bundle.path, [raw], out, bad_lines="skip", id_column=True, batch_size=1000,
                     predictor=bundle.predictor, log=quiet)
        outputs[chunk_rows] = out.read_bytes()
    assert outputs[1] == outputs[CHUNK_ROWS]
    assert outputs[1].count(b"\n") == 12_000 and outputs[1].count(b"expected a number") == 1
