"""Tests for the inference benchmark (ctrlab.inference.bench, ``ctrlab bench``) and the int8
bundle variant: tiny time budgets, every report field present, errors for bad options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ctrlab.cli as cli
from ctrlab.cli import deploy as cli_deploy
from ctrlab.cli.main import COMMANDS
from ctrlab.inference.bench import BenchOptions, format_report, peak_rss_mb, reset_peak_rss, run_bench
from ctrlab.config import load_config
from ctrlab.export.bundle import export_bundle
from ctrlab.inference import Predictor, predict_file
from ctrlab.train.run import run_training
from conftest import synthetic_store


def quiet(_msg: str) -> None:
    pass


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A tiny DeepFM bundle with its int8 variant, and a raw data file."""
    root = tmp_path_factory.mktemp("bench")
    raw, _store = synthetic_store(root, 2000, seed=4)
    cfg = load_config(None, [f"data.store={json.dumps(str(root / 'store'))}",
                             f"run_dir={json.dumps(str(root / 'run'))}",
                             "model.name=deepfm", "model.params.embedding_dim=4", "model.params.hidden_units=[16]",
                             "train.epochs=1", "train.batch_size=256", "train.threads=1", "train.lr=0.01"])
    run_training(cfg, progress=False, log=quiet)
    manifest = export_bundle(root / "run", root / "bundle", quantize=True, log=quiet)
    return root / "bundle", raw, manifest


def test_int8_variant_is_recorded_with_its_auc_change(quantized):
    bundle, raw, manifest = quantized
    int8 = manifest["int8"]
    assert (bundle / "model.int8.onnx").is_file() and "model.int8.onnx" in manifest["files"]
    assert int8["split"] == "valid" and int8["rows"] > 0
    assert int8["auc_change"] == pytest.approx(int8["auc_int8"] - int8["auc_fp32"], abs=1e-12)
    assert abs(int8["auc_change"]) < 0.05
    fp32 = Predictor(bundle, variant="fp32", threads=1)
    q = Predictor(bundle, variant="int8", threads=1)
    table = fp32.to_table([{"I1": 3, "C1": "05db9164"}] * 4)
    assert np.abs(fp32.predict(table).scores - q.predict(table).scores).max() < 0.05
    with pytest.raises(ValueError, match="use backend='onnx'"):
        Predictor(bundle, backend="torch", variant="int8")


def test_predict_file_with_the_int8_variant(quantized, tmp_path):
    bundle, raw, _ = quantized
    fp32 = predict_file(bundle, [raw], tmp_path / "a.tsv", log=quiet)
    int8 = predict_file(bundle, [raw], tmp_path / "b.tsv", variant="int8", log=quiet)
    assert int8.rows == fp32.rows == 2000
    assert abs(int8.metrics["auc"] - fp32.metrics["auc"]) < 0.05
    a = np.loadtxt(tmp_path / "a.tsv")
    b = np.loadtxt(tmp_path / "b.tsv")
    assert not np.array_equal(a, b) and np.abs(a - b).max() < 0.05


RESULT_KEYS = {"backend", "variant", "provider", "graph_optimization", "threads", "batch_size", "input", "requests",
               "rows", "seconds", "rows_per_s", "latency_ms", "stage_ms", "stage_share", "peak_rss_mb", "rss_mb",
               "peak_rss_reset", "gpu_peak_mb"}


def test_run_bench_measures_every_combination(quantized):
    bundle, raw, _ = quantized
    opts = BenchOptions(backends=["torch", "onnx"], threads=[1], batch_sizes=[1, 3, 40],
                        graph_optimization=[True, False],
                        variants=["fp32", "int8"], seconds=0.02, max_repeats=15, min_repeats=3, warmup=1, rows=120)
    lines: list[str] = []
    report = run_bench(bundle, raw, opts, log=lines.append)
    results = report["results"]
    # torch: 3 batch sizes; onnx: 2 variants x 2 graph-opt settings x 3 batch sizes
    assert len(results) == 3 + 12 == len(lines)
    for r in results:
        assert set(r) == RESULT_KEYS
        assert r["rows_per_s"] > 0 and 3 <= r["requests"] <= 15 and r["rows"] == r["requests"] * r["batch_size"]
        lat = r["latency_ms"]
        assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
        assert set(r["stage_ms"]) == {"parse", "transform", "preprocess", "inference", "postprocess"}
        stages = r["stage_ms"]
        assert stages["preprocess"] == pytest.approx(stages["parse"] + stages["transform"], abs=1e-3)
        assert sum(r["stage_share"].values()) == pytest.approx(1.0, abs=1e-3)
        assert r["peak_rss_mb"] > 0 and r["gpu_peak_mb"] is None
    combos = {(r["backend"], r["variant"], r["graph_optimization"], r["batch_size"]) for r in results}
    assert ("onnx", "int8", False, 40) in combos and ("torch", "fp32", None, 1) in combos
    assert [(q["threads"], q["batch_size"]) for q in report["ratios"]] == [(1, 1), (1, 3), (1, 40)]
    assert all(q["onnx_over_torch_throughput"] > 0 for q in report["ratios"])
    env = report["environment"]
    assert "CPUExecutionProvider" in env["onnxruntime_providers"] and env["cores"] >= 1
    assert set(env["versions"]) >= {"torch", "onnxruntime", "numpy", "pyarrow"}
    assert report["bundle"]["model"]["name"] == "deepfm" and report["data"]["rows_loaded"] == 120
    json.dumps(report)  # JSON-able as it is
    text = format_report(report)
    assert "rows/s" in text and "p99 ms" in text and "onnx / torch" in text and "int8" in text


def test_bench_with_arrow_table_requests(quantized):
    bundle, raw, _ = quantized
    opts = BenchOptions(backends=["onnx"], batch_sizes=[2], seconds=0.01, max_repeats=5, min_repeats=2, warmup=1,
                        rows=50, input_form="table")
    report = run_bench(bundle, raw, opts, log=quiet)
    assert len(report["results"]) == 1 and report["results"][0]["input"] == "table"
    assert report["ratios"] == []  # no torch run to compare with


def test_bench_option_errors(quantized):
    bundle, raw, _ = quantized
    for opts, message in [
        (BenchOptions(backends=["tf"]), "unknown backend 'tf'"),
        (BenchOptions(providers=["NoSuchExecutionProvider"]), r"not available here; available: \["),
        (BenchOptions(batch_sizes=[0]), "must be >= 1"),
        (BenchOptions(variants=["fp16"]), "unknown variant"),
        (BenchOptions(input_form="json"), "--input must be one of"),
    ]:
        with pytest.raises(ValueError, match=message):
            run_bench(bundle, raw, opts, log=quiet)


def test_peak_rss_can_be_reset():
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("peak RSS reset needs Linux /proc")
    # 200 MB touched: far above what the rest of the process may grow or shrink by meanwhile (a 40 MB
    # block once dropped the peak by only ~20 MB late in a long test session)
    block = np.ones(200_000_000 // 8)
    high = peak_rss_mb()
    del block
    assert reset_peak_rss()
    assert peak_rss_mb() < high - 100


def test_cli_bench_prints_a_table_and_writes_json(quantized, monkeypatch, tmp_path, capsys):
    bundle, raw, _ = quantized
    assert cli_deploy.add_bench in COMMANDS
    out = tmp_path / "bench.json"
    argv = ["bench", str(bundle), "--data", str(raw), "--batch-sizes", "1,4", "--threads", "1", "--seconds", "0.02",
            "--repeats", "6", "--rows", "60", "--graph-opt", "on,off", "--variants", "fp32", "--json", str(out)]
    assert cli.main(argv) == 0
    printed = capsys.readouterr().out
    assert "onnx / torch" in printed and f"wrote {out}" in printed
    report = json.loads(out.read_text())
    assert len(report["results"]) == 2 + 4 and len(report["ratios"]) == 2
    assert cli.main(["bench", str(bundle), "--data", str(raw), "--graph-opt", "maybe"]) == 2
    assert "on/off" in capsys.readouterr().err
    if "CUDAExecutionProvider" not in report["environment"]["onnxruntime_providers"]:
        assert cli.main(["bench", str(bundle), "--data", str(raw), "--providers", "CUDAExecutionProvider"]) == 2
        assert "CUDAExecutionProvider" in capsys.readouterr().err
