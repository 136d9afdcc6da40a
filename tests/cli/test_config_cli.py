"""Tests for ctrlab.config (typed YAML config, unknown keys, choices, --set overrides) and the
``ctrlab`` command line (ctrlab.cli: prepare / info / data synth, flags as overrides, flag checks
from the config sections, error exit codes, the demo, ``python -m ctrlab``)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ctrlab.cli import main
from ctrlab.cli.options import merge_overrides
from ctrlab.config import (
    Config,
    ConfigError,
    apply_overrides,
    column_overrides,
    dump_config,
    load_config,
    load_yaml,
    parse_override,
)
from ctrlab.data.store import Store
from ctrlab.features.pipeline import CategoricalOptions, NumericOptions

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------

def test_defaults():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.data.split == [0.8, 0.1, 0.1] and cfg.data.seed == 2024
    assert cfg.data.format == "auto" and cfg.data.bad_lines == "error"
    # the one set of feature defaults (prepare and the ready configs alike)
    assert cfg.features.categorical == CategoricalOptions() == CategoricalOptions(encoder="vocab", min_count=2)
    assert cfg.features.numeric == NumericOptions() == NumericOptions(transform="log1p_standardize", min_count=2)


def test_unknown_key_suggests_nearest(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, ["features.categorical.min_cout=3"])
    message = str(info.value)
    assert "features.categorical.min_cout" in message and "did you mean 'min_count'" in message
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  seeed: 3\n")
    with pytest.raises(ConfigError, match=r"data\.seeed.*did you mean 'seed'"):
        load_config(path)
    path.write_text("dta:\n  seed: 3\n")
    with pytest.raises(ConfigError, match=r"'dta'.*did you mean 'data'"):
        load_config(path)


@pytest.mark.parametrize("override, where, suggestion", [
    ("data.bad_lines=ignore", "data.bad_lines", None),
    ("data.format=criteo_tsv", "data.format", "criteo_csv"),
    ("features.categorical.encoder=hsh", "features.categorical.encoder", "hash"),
    ("features.numeric.transform=log1p_standardise", "features.numeric.transform", "log1p_standardize"),
])
def test_bad_choice(override, where, suggestion):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    message = str(info.value)
    assert message.startswith(where) and "is not one of" in message
    if suggestion:
        assert f"did you mean '{suggestion}'" in message


def test_set_overrides_use_yaml_types():
    cfg = load_config(None, [
        "data.seed=7", "data.split=[0.7, 0.2, 0.1]", "features.numeric.fill_value=1e-4",
        "data.train=a.tsv", "data.valid=[v1.tsv, v2.tsv]", "features.categorical.max_size=null",
        "features.categorical.min_count=5", "data.schema.header=false", "data.schema.columns=[a, b, c]",
        "data.store=runs/x",
    ])
    assert cfg.data.seed == 7 and isinstance(cfg.data.seed, int)
    assert cfg.data.split == [0.7, 0.2, 0.1] and all(isinstance(v, float) for v in cfg.data.split)
    assert cfg.features.numeric.fill_value == 1e-4 and isinstance(cfg.features.numeric.fill_value, float)
    assert cfg.data.train == ["a.tsv"]  # a single string where a list is expected
    assert cfg.data.valid == ["v1.tsv", "v2.tsv"]
    assert cfg.features.categorical.max_size is None
    assert cfg.features.categorical.min_count == 5
    assert cfg.data.schema.header is False and cfg.data.schema.columns == ["a", "b", "c"]
    assert cfg.data.store == "runs/x"
    # later overrides win
    assert load_config(None, ["data.seed=1", "data.seed=2"]).data.seed == 2


def test_set_overrides_over_a_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  seed: 3\n  split: [0.6, 0.2, 0.2]\nfeatures:\n  categorical:\n    min_count: 4\n")
    cfg = load_config(path, ["data.seed=11", "features.columns.I1.transform=log_square_bucket"])
    assert cfg.data.seed == 11 and cfg.data.split == [0.6, 0.2, 0.2]
    assert cfg.features.categorical.min_count == 4
    assert cfg.features.columns == {"I1": {"transform": "log_square_bucket"}}


@pytest.mark.parametrize("override, fragment", [
    ("data.seed=abc", "data.seed: expected an integer"),
    ("data.seed=true", "data.seed: expected an integer"),
    ("data.split=0.8", "data.split: expected a list"),
    ("data.split=[0.8, x, 0.1]", "data.split[1]: expected a number"),
    ("data.seed", "KEY=VALUE"),
    ("=3", "empty key"),
    ("data.seed=[1", "cannot parse"),
    ("features.categorical.min_count=2.5", "expected an integer"),
])
def test_bad_override_values(override, fragment):
    with pytest.raises(ConfigError, match=re_escape(fragment)):
        load_config(None, [override])


def re_escape(text: str) -> str:
    import re
    return re.escape(text)


def test_parse_override():
    assert parse_override("a.b=[1, 2]") == (["a", "b"], [1, 2])
    assert parse_override("a=x=y") == (["a"], "x=y")
    assert parse_override("a.b=") == (["a", "b"], "")
    with pytest.raises(ConfigError):
        load_config(None, ["data.seed=1", "data.seed.x=2"])


def test_column_overrides_typed_and_checked():
    cfg = load_config(None, ["features.numeric.fill_value=0.5", "features.categorical.min_count=3",
                             "features.columns={I1: {transform: log_square_bucket}, C3: {max_size: 10}}"])
    typed = column_overrides(cfg.features, ["I1", "I2"], ["C3"])
    assert typed["I1"] == NumericOptions(transform="log_square_bucket", fill_value=0.5)
    assert typed["C3"] == CategoricalOptions(min_count=3, max_size=10)  # merged over features.categorical
    cfg = load_config(None, ["features.columns.C3.transform=log1p"])
    with pytest.raises(ConfigError, match=r"features\.columns\.C3\.transform.*categorical column"):
        column_overrides(cfg.features, ["I1"], ["C3"])
    with pytest.raises(ConfigError, match=r"features\.columns\.C3\.encoder.*did you mean 'hash'"):
        load_config(None, ["features.columns.C3.encoder=hsh"])  # checked on loading, before any data
    cfg = load_config(None, ["features.columns.C99.min_count=2"])
    with pytest.raises(ConfigError, match="C99: no such column"):
        column_overrides(cfg.features, ["I1"], ["C3"])


def test_dump_and_reload_round_trip(tmp_path):
    cfg = load_config(None, ["data.seed=9", "data.train=[x.tsv]", "data.schema.columns=[label, a]",
                             "features.columns.C1.min_count=2"])
    dump_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_yaml(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_yaml(bad)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------

def test_cli_prepare_writes_store(shared_data, tmp_path, capsys):
    train = shared_data["criteo_train"]
    out = tmp_path / "store"
    assert main(["prepare", str(train), "--out", str(out), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "store: 10,109 rows" in stdout
    assert "split: seeded random (train 0.8, valid 0.1, test 0.1; seed 2024)" in stdout
    assert "features: 13 dense, 26 sparse" in stdout  # the default: counts log1p-standardized
    assert "skipped lines: 0" in stdout
    assert f"wrote {out}" in stdout
    for name in ("meta.json", "pipeline.json", "config.yaml"):
        assert (out / name).is_file(), name
    meta = json.loads((out / "meta.json").read_text())
    assert sum(s["rows"] for s in meta["splits"].values()) == 10109
    cfg = load_config(out / "config.yaml")
    assert cfg.data.train == [str(train)] and cfg.data.store == str(out)
    store = Store(out)
    assert store.spec.vocab_sizes == tuple(meta["vocab_sizes"].values())


def test_cli_prepare_options_reach_the_store(shared_data, tmp_path, capsys):
    out = tmp_path / "store"
    code = main(["prepare", str(shared_data["criteo_train"]), "--out", str(out), "--quiet", "--split", "6:2:2",
                 "--seed", "7", "--min-count", "2", "--numeric", "minmax",
                 "--set", "features.columns.I1.transform=log_square_bucket"])
    assert code == 0, capsys.readouterr().err
    meta = Store(out).meta
    assert meta["split"] == {"method": "random", "ratios": {"train": 6.0, "valid": 2.0, "test": 2.0}, "seed": 7}
    assert meta["fields"]["I1"]["encoder"] == "log_square_bucket"
    assert meta["fields"]["I2"]["encoder"] == "minmax"
    assert meta["spec"]["sparse_names"][0] == "I1"
    cfg = load_config(out / "config.yaml")
    assert cfg.features.categorical.min_count == 2 and cfg.data.split == [6.0, 2.0, 2.0]
    pipe = Store(out).pipeline
    assert pipe.encoders["C1"].min_count == 2


def test_cli_prepare_explicit_files_and_format(shared_data, tmp_path, capsys):
    out = tmp_path / "frappe"
    code = main(["prepare", str(shared_data["frappe_valid"]), "--test", str(shared_data["frappe_test"]),
                 "--format", "csv", "--out", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    meta = Store(out).meta
    assert meta["splits"]["test"]["rows"] == 28860
    assert [s["format"] for s in meta["sources"]["test"]] == ["csv"]


def test_cli_prepare_bad_line_exit_code(shared_data, tmp_path, capsys):
    lines = shared_data["criteo_train"].read_text().split("\n")[:50]
    fields = lines[6].split("\t")
    fields[5] = "abc"
    lines[6] = "\t".join(fields)
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines) + "\n")
    assert main(["prepare", str(bad), "--out", str(tmp_path / "store"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctrlab prepare: error:")
    assert f"{bad}:7:" in err and "'I5'" in err and "'abc'" in err
    assert not (tmp_path / "store" / "meta.json").exists()
    # the same file under --bad-lines skip
    assert main(["prepare", str(bad), "--out", str(tmp_path / "store"), "--quiet", "--bad-lines", "skip"]) == 0
    out = capsys.readouterr().out
    assert "skipped lines: 1" in out and "store: 49 rows" in out


def test_cli_prepare_truncated_real_file(shared_data, tmp_path, capsys):
    path = shared_data["paddle_dnn_test"]
    assert main(["prepare", str(path), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{path}:3:" in err and "expected 40" in err
    assert main(["prepare", str(path), "--out", str(tmp_path / "s"), "--quiet", "--bad-lines", "skip"]) == 0
    assert "skipped lines: 39" in capsys.readouterr().out


@pytest.mark.parametrize("argv_tail, fragment", [
    (["--set", "features.categorical.min_cout=2"], "did you mean 'min_count'"),
    (["--set", "data.split=[0, 1, 1]"], "data.split"),
    (["--format", "criteo_tsv"], "is not one of"),
])
def test_cli_config_errors_exit_2(shared_data, tmp_path, capsys, argv_tail, fragment):
    argv = ["prepare", str(shared_data["paddle_part0"]), "--out", str(tmp_path / "s"), "--quiet", *argv_tail]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ctrlab prepare: error:") and fragment in err


def test_cli_prepare_missing_inputs(tmp_path, capsys):
    missing = tmp_path / "nope.tsv"
    assert main(["prepare", str(missing), "--out", str(tmp_path / "s"), "--quiet"]) == 2
    assert str(missing) in capsys.readouterr().err
    assert main(["prepare", "--out", str(tmp_path / "s"), "--quiet"]) == 2
    assert "no training data" in capsys.readouterr().err
    assert main(["prepare", str(missing), "--quiet"]) == 2
    assert "--out" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["prepare", str(missing), "--bad-lines", "ignore"])
    assert info.value.code == 2


def test_cli_info(shared_data, tmp_path, capsys):
    out = tmp_path / "store"
    assert main(["prepare", str(shared_data["paddle_part0"]), "--out", str(out), "--quiet"]) == 0
    prepared = capsys.readouterr().out
    assert main(["info", str(out)]) == 0
    info = capsys.readouterr().out
    assert "store: 100 rows" in info and "source (train):" in info
    assert info.strip() in prepared  # the same summary prepare printed
    assert main(["info", str(tmp_path / "nothing")]) == 2
    assert "not a ctrlab store" in capsys.readouterr().err


def test_cli_data_synth(tmp_path, capsys):
    out = tmp_path / "x.tsv"
    assert main(["data", "synth", "--rows", "1000", "--out", str(out), "--quiet"]) == 0
    assert "wrote 1,000 rows" in capsys.readouterr().out
    lines = out.read_text().split("\n")
    assert lines[-1] == "" and len(lines) == 1001
    assert all(len(line.split("\t")) == 40 for line in lines[:-1])
    assert {line.split("\t")[0] for line in lines[:-1]} == {"0", "1"}
    unlabeled = tmp_path / "t.tsv"
    assert main(["data", "synth", "--rows", "10", "--out", str(unlabeled), "--no-label", "--quiet"]) == 0
    assert all(len(line.split("\t")) == 39 for line in unlabeled.read_text().splitlines())
    assert main(["data", "synth", "--rows", "-1", "--out", str(out), "--quiet"]) == 2
    # the synthetic file goes straight into prepare
    assert main(["prepare", str(out), "--out", str(tmp_path / "store"), "--quiet"]) == 0
    assert "store: 1,000 rows" in capsys.readouterr().out


def test_python_m_ctrlab_help():
    result = subprocess.run([sys.executable, "-m", "ctrlab", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    for command in ("prepare", "info", "data", "models", "demo"):
        assert command in result.stdout
    result = subprocess.run([sys.executable, "-m", "ctrlab", "prepare", "--help"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0 and "--bad-lines" in result.stdout
    result = subprocess.run([sys.executable, "-m", "ctrlab", "--version"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("ctrlab ")
    result = subprocess.run([sys.executable, "-m", "ctrlab", "nonsense"], capture_output=True, text=True,
                            cwd=REPO, timeout=120)
    assert result.returncode == 2 and "invalid choice" in result.stderr


# --------------------------------------------------------------------------------------------
# flags as overrides
# --------------------------------------------------------------------------------------------

def test_merged_overrides_apply_like_their_layers_in_order():
    texts = ["train.lr=1e-2", "data.store=a", "train={epochs: 4}", "train.lr=3e-3"]
    flags = {"data.store": "b", "run_dir": None, "train.epochs": 2}
    merged = merge_overrides(texts, flags)
    assert merged == {"train": {"epochs": 4}, "train.lr": 3e-3, "data.store": "b", "train.epochs": 2}
    # the same result as laying the texts and then the given flags one after another
    one_by_one = apply_overrides(apply_overrides({}, texts), {"data.store": "b", "train.epochs": 2})
    assert apply_overrides({}, merged) == one_by_one == {"train": {"epochs": 2, "lr": 3e-3}, "data": {"store": "b"}}
    # the layer given last wins (the experiments put --set after --epochs)
    assert merge_overrides({"train.epochs": 2}, ["train.epochs=5"]) == {"train.epochs": 5}


def test_cli_flags_beat_set_texts(shared_data, tmp_path, capsys):
    out = tmp_path / "store"
    code = main(["prepare", str(shared_data["paddle_part0"]), "--out", str(out), "--quiet",
                 "--set", "data.seed=3", "--seed", "7", "--set", "data.store=elsewhere", "--split", "0.6,0.2,0.2"])
    assert code == 0, capsys.readouterr().err
    cfg = load_config(out / "config.yaml")
    assert cfg.data.seed == 7 and cfg.data.store == str(out) and cfg.data.split == [0.6, 0.2, 0.2]


@pytest.mark.parametrize("argv, fragment", [
    (["serve", "BUNDLE", "--workers", "0"], "--workers: 0 is out of range"),
    (["serve", "BUNDLE", "--port", "70000"], "--port: 70000 is out of range"),
    (["serve", "BUNDLE", "--max-body-bytes", "0"], "--max-body-bytes: 0 is out of range"),
    (["serve", "BUNDLE", "--log-level", "loud"], "--log-level: 'loud' is not one of"),
    (["export", "RUN", "--out", "B", "--golden-rows", "0"], "--golden-rows: 0 is out of range"),
    (["export", "RUN", "--out", "B", "--epoch", "0"], "--epoch: 0 is out of range"),
])
def test_cli_section_flags_checked_by_the_section(argv, fragment, tmp_path, capsys):
    """serve / export flags become a ServeConfig / ExportConfig: the section's checks, naming the flag,
    before any bundle or run is read."""
    argv = [str(tmp_path / a) if a in ("BUNDLE", "RUN", "B") else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ctrlab {argv[0]}: error: {fragment}"), err


def test_cli_demo_runs_the_chain_and_scores_over_http(tmp_path, capsys):
    work = tmp_path / "demo"
    assert main(["demo", "--rows", "2000", "--epochs", "1", "--dir", str(work), "--quiet"]) == 0
    out = capsys.readouterr().out
    steps = [line.split("]")[0] + "]" for line in out.splitlines() if line.startswith("[")]
    assert steps == [f"[{k}/6]" for k in range(1, 7)]
    assert "server stopped" in out and out.rstrip().splitlines()[-1].startswith("demo done: deepfm test AUC ")
    # the HTTP answer (serve.client) gives the first held-out rows the probabilities predict wrote for them
    http_line = next(line for line in out.splitlines() if line.startswith("POST "))
    http = json.loads(http_line.split("probabilities ")[1].split("]")[0] + "]")
    offline = [float(v) for v in (work / "heldout_scores.tsv").read_text().split()[:3]]
    assert http == pytest.approx([round(p, 4) for p in offline], abs=1.1e-4)
    assert len((work / "heldout.tsv").read_text().splitlines()) == 20_000
    assert len((work / "synth.tsv").read_text().splitlines()) == 2000
