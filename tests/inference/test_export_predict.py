"""Tests for the deployable bundle (ctrlab.export), the Predictor and offline predict
(ctrlab.inference), and the ``export``/``predict`` commands (ctrlab.cli.deploy):

* every registered model exports (tiny params) and passes the ONNX parity check;
* the manifest's contents, weights_only loading, refusal on a parity failure, tamper and version
  checks on load;
* predict on every input format (real rows from ../shared/data where available, generated rows
  otherwise): row counts, ids, skip policy, printed AUC/logloss equal sklearn's;
* online/offline consistency: training-time evaluation of the store split, the torch bundle and
  the ONNX bundle agree within 1e-5 on the same raw rows;
* Predictor input forms (table, dicts, lists) give identical scores; bad inputs give clear errors.
(The small-input encoding lane is tested against the vectorized one in test_online.py.)
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pytest
import torch
from sklearn.metrics import log_loss as sk_log_loss
from sklearn.metrics import roc_auc_score

import ctrlab.cli as cli
import ctrlab.export.bundle as bundle_mod
from ctrlab.cli import deploy as cli_deploy
from ctrlab.cli.main import COMMANDS
from ctrlab.config import dump_config, load_config
from ctrlab.data.encode import assign_random_split
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.formats import detect_format, schema_for_file
from ctrlab.data.readers import DataError, RowReader
from ctrlab.data.store import SPLITS, Store
from ctrlab.data.synth import write_synthetic
from ctrlab.export.bundle import export_bundle
from ctrlab.export.manifest import FORMAT_VERSION, BundleError, load_manifest
from ctrlab.features.pipeline import CategoricalOptions, NumericOptions
from ctrlab.fileio import sha256_file
from ctrlab.models import build_model, flat_models, hyperparameter_defaults
import ctrlab.inference.predictor as predictor_mod
from ctrlab.features.online import SMALL_INPUT_ROWS
from ctrlab.inference import InputError, Predictor, predict_file, rows_to_table
from ctrlab.schema import CRITEO_DENSE, CRITEO_SPARSE
from ctrlab.metrics import LOGLOSS_EPS
from ctrlab.train.run import run_training
from ctrlab.train.evaluate import predict_split
from ctrlab.train.trainer import load_weights

ROWS = 3000
SEED = 2024  # prepare's default split seed


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def quiet(_msg: str) -> None:
    pass


def run_config(store: Path, run_dir: Path, model: str, *extra: str):
    base = [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(run_dir))}", f"model.name={model}",
            "model.params.embedding_dim=4", "train.threads=1", "train.epochs=2", "train.batch_size=256",
            "train.eval_batch_size=100", "train.lr=0.01", "train.log_every=1000"]
    return load_config(None, base + list(extra))


def read_scores(path: Path) -> np.ndarray:
    return np.array([float(line.split("\t")[-1]) for line in path.read_text().splitlines()], dtype=np.float32)


# --------------------------------------------------------------------------------------------
# fixtures: a Criteo-shaped store (every encoder kind), a trained DeepFM run and its bundle
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def criteo(tmp_path_factory):
    root = tmp_path_factory.mktemp("deploy")
    raw = root / "synth.tsv"
    write_synthetic(raw, ROWS, seed=3, progress=False)
    opts = PrepareOptions(train=[str(raw)], seed=SEED,
                          columns={"I1": NumericOptions("log_square_bucket"), "I2": NumericOptions("minmax"),
                                   "C3": CategoricalOptions("hash", hash_buckets=50)})
    prepare(opts, root / "store", progress=False, log=quiet)
    run_dir = root / "run"
    cfg = run_config(root / "store", run_dir, "deepfm", "model.params.hidden_units=[16]")
    summary = run_training(cfg, progress=False, log=quiet)
    bundle = root / "bundle"
    manifest = export_bundle(run_dir, bundle, log=quiet)
    return SimpleNamespace(root=root, raw=raw, store=root / "store", run=run_dir, cfg=cfg, summary=summary,
                           bundle=bundle, manifest=manifest)


@pytest.fixture(scope="module")
def raw_table(criteo):
    """All raw rows of the synthetic file as one Arrow table (canonical columns)."""
    schema = schema_for_file(criteo.raw, detect_format(criteo.raw))
    return pa.concat_tables(c.table for c in RowReader([criteo.raw], schema)).combine_chunks()


@pytest.fixture(scope="module")
def onnx_predictor(criteo):
    return Predictor(criteo.bundle, backend="onnx", threads=1)


@pytest.fixture(scope="module")
def torch_predictor(criteo):
    return Predictor(criteo.bundle, backend="torch")


# --------------------------------------------------------------------------------------------
# export: every model, the manifest, refusal, tamper and version checks
# --------------------------------------------------------------------------------------------

TINY = {"embedding_dim": 4, "hidden_units": [8], "cross_layers": 1, "low_rank": 2, "num_experts": 2,
        "cin_layer_units": [4, 4], "attention_layers": 1, "attention_heads": 2, "attention_dim": 4,
        "bottom_mlp_units": [8], "top_mlp_units": [8], "mlp1_hidden_units": [8], "mlp2_hidden_units": [8],
        "fs_hidden_units": [8], "fusion_heads": 2}


def fake_run(store: Path, run_dir: Path, model: str, *, batch_norm: bool = False) -> None:
    """A run directory with one checkpoint of a seeded (untrained) tiny model."""
    valid = hyperparameter_defaults(model)
    params = {k: v for k, v in TINY.items() if k in valid}
    if batch_norm and "batch_norm" in valid:
        params["batch_norm"] = True
    cfg = load_config(None, [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(run_dir))}",
                             f"model.name={model}"])
    cfg.model.params = params
    (run_dir / "checkpoints").mkdir(parents=True)
    dump_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(0)
    net = build_model(model, Store(store).spec, params)
    for module in net.modules():  # non-trivial BatchNorm statistics, so eval mode matters
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    torch.save({"model": net.state_dict(), "epoch": 1}, run_dir / "checkpoints" / "epoch_1.pt")


FLAT_MODELS = flat_models()


@pytest.mark.parametrize("model", FLAT_MODELS)  # (sequence models: tests/e2e/test_consistency_lists.py)
def test_every_model_exports_and_passes_parity(model, criteo, raw_table, tmp_path):
    fake_run(criteo.store, tmp_path / "run", model, batch_norm=True)
    manifest = export_bundle(tmp_path / "run", tmp_path / "bundle", golden_rows=200, log=quiet)
    assert manifest["parity"]["max_abs_diff"] <= 1e-5 and manifest["parity"]["rows"] == 200
    assert manifest["parity"]["split"] == "valid"
    assert manifest["model"]["name"] == model
    rows = raw_table.slice(0, 40)
    scores_onnx = Predictor(tmp_path / "bundle", backend="onnx", threads=1).predict(rows).scores
    scores_torch = Predictor(tmp_path / "bundle", backend="torch").predict(rows).scores
    assert scores_onnx.shape == (40,) and scores_onnx.dtype == np.float32
    np.testing.assert_allclose(scores_onnx, scores_torch, atol=1e-5, rtol=0)


def test_manifest_contents(criteo):
    manifest = criteo.manifest
    store = Store(criteo.store)
    assert manifest["format_version"] == FORMAT_VERSION
    assert set(manifest["versions"]) >= {"ctrlab", "torch", "onnx", "onnxruntime", "numpy", "pyarrow"}
    assert manifest["schema"] == store.meta["schema"]
    spec = store.spec
    assert manifest["inputs"]["dense"] == {"dtype": "float32", "shape": ["batch", spec.n_dense],
                                           "names": list(spec.dense_names)}
    assert manifest["inputs"]["sparse"]["dtype"] == "int64"
    assert manifest["inputs"]["sparse"]["shape"] == ["batch", spec.n_sparse]
    assert manifest["inputs"]["sparse"]["vocab_sizes"] == list(spec.vocab_sizes)
    assert set(manifest["outputs"]) == {"logits", "probabilities"}
    assert manifest["model"]["name"] == "deepfm"
    assert manifest["model"]["params"] == {"embedding_dim": 4, "hidden_units": [16]}
    assert manifest["created"] and manifest["source"]["epoch"] == criteo.summary["best_epoch"]
    assert set(manifest["files"]) == {"pipeline.json", "config.yaml", "model.pt", "model.onnx"}
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == sha256_file(criteo.bundle / name)
    assert (criteo.bundle / "pipeline.json").read_bytes() == (criteo.store / "pipeline.json").read_bytes()
    assert load_config(criteo.bundle / "config.yaml").model.name == "deepfm"
    # metrics of the exported (best) epoch: its epochs.jsonl record and the run's test metrics
    best = criteo.summary["best_epoch"]
    record = next(h for h in criteo.summary["history"] if h["epoch"] == best)
    metrics = manifest["metrics"]
    assert metrics["epoch"] == best and metrics["valid_auc"] == record["valid_auc"]
    assert metrics["valid_logloss"] == record["valid_logloss"]
    assert metrics["test_auc"] == criteo.summary["test_auc"]
    assert metrics["test_logloss"] == criteo.summary["test_logloss"]
    assert not any(p.name.startswith(".") for p in criteo.bundle.parent.iterdir())  # no temp dirs left


def test_export_of_another_epoch_has_its_own_metrics_and_no_test_metrics(criteo, tmp_path):
    best = criteo.summary["best_epoch"]
    other = 1 if best == 2 else 2
    manifest = export_bundle(criteo.run, tmp_path / "b", epoch=other, log=quiet)
    record = next(h for h in criteo.summary["history"] if h["epoch"] == other)
    assert manifest["metrics"]["epoch"] == other and manifest["metrics"]["valid_auc"] == record["valid_auc"]
    assert "test_auc" not in manifest["metrics"]
    weights = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    expected = load_weights(criteo.run / "checkpoints" / f"epoch_{other}.pt")
    assert weights.keys() == expected.keys() and all(torch.equal(weights[k], expected[k]) for k in weights)
    with pytest.raises(FileNotFoundError, match="saved epochs: \\[1, 2\\]"):
        export_bundle(criteo.run, tmp_path / "c", epoch=7, log=quiet)


def test_model_pt_is_a_plain_state_dict_loadable_weights_only(criteo):
    state = torch.load(criteo.bundle / "model.pt", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    best = load_weights(criteo.run / "checkpoints" / f"epoch_{criteo.summary['best_epoch']}.pt")
    assert state.keys() == best.keys() and all(torch.equal(state[k], best[k]) for k in state)


def test_onnx_graph_has_dynamic_batch(criteo):
    import onnx

    graph = onnx.load(str(criteo.bundle / "model.onnx")).graph
    assert [v.name for v in graph.input] == ["dense", "sparse"]
    assert [v.name for v in graph.output] == ["logits", "probabilities"]
    assert all(v.type.tensor_type.shape.dim[0].dim_param == "batch" for v in graph.input)


def test_export_refuses_when_parity_fails_and_writes_nothing(criteo, tmp_path, monkeypatch):
    monkeypatch.setattr(bundle_mod, "onnx_parity", lambda *a, **k: 0.5)
    with pytest.raises(RuntimeError, match="export refused.*0.5.*no bundle was written"):
        export_bundle(criteo.run, tmp_path / "bad", log=quiet)
    assert not (tmp_path / "bad").exists()
    assert list(tmp_path.iterdir()) == []  # the temporary directory is gone too


def test_export_does_not_overwrite_without_force(criteo, tmp_path):
    out = tmp_path / "b"
    export_bundle(criteo.run, out, log=quiet)
    with pytest.raises(FileExistsError, match="--force"):
        export_bundle(criteo.run, out, log=quiet)
    export_bundle(criteo.run, out, force=True, log=quiet)
    load_manifest(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]


def test_tampered_file_is_detected_with_expected_and_actual_hash(criteo, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(criteo.bundle, copy)
    expected = criteo.manifest["files"]["model.onnx"]["sha256"]
    with open(copy / "model.onnx", "r+b") as fh:  # flip one byte
        fh.seek(100)
        byte = fh.read(1)
        fh.seek(100)
        fh.write(bytes([byte[0] ^ 0xFF]))
    actual = sha256_file(copy / "model.onnx")
    with pytest.raises(BundleError) as err:
        Predictor(copy)
    message = str(err.value)
    assert "model.onnx: sha256 mismatch" in message and expected in message and actual in message
    assert "pipeline.json" not in message  # only the changed file is named
    (copy / "pipeline.json").unlink()
    with pytest.raises(BundleError, match="pipeline.json: missing"):
        load_manifest(copy)
    load_manifest(copy, verify=False)  # the hash check can be skipped explicitly


def test_format_version_mismatch_is_explained(criteo, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(criteo.bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match=r"format_version 99 is not supported.*reads format_version 1.*Re-export"):
        Predictor(copy)
    (copy / "manifest.json").unlink()
    with pytest.raises(BundleError, match="not a ctrlab bundle"):
        load_manifest(copy)


# --------------------------------------------------------------------------------------------
# online/offline consistency
# --------------------------------------------------------------------------------------------

def test_store_eval_torch_bundle_and_onnx_bundle_agree(criteo, raw_table, onnx_predictor, torch_predictor, tmp_path):
    """Training-time evaluation of the valid split (encoded by prepare) vs the bundles scoring the
    same raw rows (found in the raw file with prepare's seeded split)."""
    store = Store(criteo.store)
    ratios = store.meta["split"]["ratios"]
    which = assign_random_split(raw_table.num_rows, 0, store.meta["split"]["seed"], ratios)
    valid_rows = raw_table.filter(pa.array(which == SPLITS.index("valid")))
    assert valid_rows.num_rows == len(store.split("valid"))

    model = build_model("deepfm", store.spec, criteo.cfg.model.params)
    model.load_state_dict(load_weights(criteo.run / "checkpoints" / f"epoch_{criteo.summary['best_epoch']}.pt"))
    offline = predict_split(model, store.split("valid"), 100, torch.device("cpu"))

    # the bundle's encoding reproduces the store's arrays exactly
    dense, sparse = onnx_predictor.encode(valid_rows)
    np.testing.assert_array_equal(sparse, store.split("valid").sparse)
    np.testing.assert_array_equal(dense, store.split("valid").dense)

    by_torch = torch_predictor.predict(valid_rows).scores
    by_onnx = onnx_predictor.predict(valid_rows).scores
    np.testing.assert_allclose(by_torch, offline, atol=1e-5, rtol=0)
    np.testing.assert_allclose(by_onnx, offline, atol=1e-5, rtol=0)

    # and the file path (ctrlab predict) gives the same scores for those rows
    predict_file(criteo.bundle, [criteo.raw], tmp_path / "s.tsv", log=quiet, predictor=onnx_predictor)
    from_file = read_scores(tmp_path / "s.tsv")
    np.testing.assert_allclose(from_file[which == SPLITS.index("valid")], offline, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------------------------
# predict on every input format
# --------------------------------------------------------------------------------------------

def tsv_lines(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def write_layouts(raw: Path, folder: Path, rows: int = 300) -> dict[str, Path]:
    """The first rows of a Criteo TSV in every Criteo layout."""
    lines = tsv_lines(raw)[:rows]
    names = list(CRITEO_DENSE + CRITEO_SPARSE)
    out = {"criteo": folder / "a.tsv", "criteo_test": folder / "b.txt", "kaggle": folder / "c.csv",
           "kaggle_test": folder / "d.csv", "criteo_csv": folder / "e.csv"}
    out["criteo"].write_text("".join("\t".join(f) + "\n" for f in lines))
    out["criteo_test"].write_text("".join("\t".join(f[1:]) + "\n" for f in lines))
    out["kaggle"].write_text("Id,Label," + ",".join(names) + "\n" +
                             "".join(f"{60000000 + i},{f[0]}," + ",".join(f[1:]) + "\n" for i, f in enumerate(lines)))
    out["kaggle_test"].write_text("Id," + ",".join(names) + "\n" +
                                  "".join(f"{60000000 + i}," + ",".join(f[1:]) + "\n" for i, f in enumerate(lines)))
    as_float = [[f[0]] + [f"{float(v):.1f}" if v else "" for v in f[1:14]] + f[14:] for f in lines]
    out["criteo_csv"].write_text("label," + ",".join(names) + "\n" + "".join(",".join(f) + "\n" for f in as_float))
    return out


def test_predict_every_criteo_layout_gives_the_same_scores(criteo, onnx_predictor, tmp_path):
    files = write_layouts(criteo.raw, tmp_path)
    labels = np.array([float(f[0]) for f in tsv_lines(files["criteo"])])
    scores = {}
    for name, path in files.items():
        logs: list[str] = []
        result = predict_file(criteo.bundle, [path], tmp_path / f"{name}.out", id_column=name.startswith("kaggle"),
                              log=logs.append, predictor=onnx_predictor)
        assert result.rows == 300 and len((tmp_path / f"{name}.out").read_text().splitlines()) == 300
        scores[name] = read_scores(tmp_path / f"{name}.out")
        labelled = name in ("criteo", "kaggle", "criteo_csv")
        assert (result.metrics is not None) == labelled
        assert any(line.startswith("AUC") for line in logs) == labelled
        if name.startswith("kaggle"):  # the Id column comes first
            ids = [line.split("\t")[0] for line in (tmp_path / f"{name}.out").read_text().splitlines()]
            assert ids == [str(60000000 + i) for i in range(300)]
    assert set(result.formats.values()) == {"criteo_csv"}
    for name in files:
        np.testing.assert_array_equal(scores[name], scores["criteo"], err_msg=name)
    auc = roc_auc_score(labels, scores["criteo"])
    assert auc == pytest.approx(predict_file(criteo.bundle, [files["criteo"]], tmp_path / "x", log=quiet,
                                             predictor=onnx_predictor).metrics["auc"], abs=1e-9)


def test_printed_auc_and_logloss_equal_sklearn(criteo, onnx_predictor, tmp_path):
    logs: list[str] = []
    predict_file(criteo.bundle, [criteo.raw], tmp_path / "s.tsv", log=logs.append, predictor=onnx_predictor)
    scores = read_scores(tmp_path / "s.tsv")
    labels = np.array([float(f[0]) for f in tsv_lines(criteo.raw)])
    assert len(scores) == ROWS
    printed_auc = float(next(line for line in logs if line.startswith("AUC")).split()[-1])
    printed_ll = float(next(line for line in logs if line.startswith("logloss")).split()[-1])
    assert printed_auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    clipped = np.clip(scores.astype(np.float64), LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    assert printed_ll == pytest.approx(sk_log_loss(labels, clipped), abs=1e-6)


def test_predict_real_criteo_files(criteo, onnx_predictor, shared_data, tmp_path):
    """Real Criteo rows in three layouts: Kaggle train.txt head (TSV), Kaggle CSV with Id and Label,
    DeepCTR's criteo_csv (ints written as floats)."""
    sources = {"criteo_train": 400, "kaggle_tr_rx": None, "deepctr_sample": None}
    for key, head in sources.items():
        src = shared_data[key]
        path = src
        if head:
            path = tmp_path / f"{key}.txt"
            with open(src, encoding="utf-8") as fh:
                path.write_text("".join(next(fh) for _ in range(head)))
        result = predict_file(criteo.bundle, [path], tmp_path / f"{key}.out", id_column=True, log=quiet,
                              predictor=onnx_predictor)
        lines = (tmp_path / f"{key}.out").read_text().splitlines()
        n_input = sum(1 for _ in open(path, encoding="utf-8")) - (0 if head else 1)  # header lines
        assert result.rows == n_input == len(lines), key
        scores = np.array([float(line.split("\t")[1]) for line in lines])
        labels = np.concatenate([c.table.column("label").to_numpy() for c in RowReader(
            [path], schema_for_file(path, detect_format(path)))])
        assert result.metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6), key
    kaggle_ids = [line.split("\t")[0] for line in (tmp_path / "kaggle_tr_rx.out").read_text().splitlines()]
    with open(shared_data["kaggle_tr_rx"], encoding="utf-8") as fh:
        assert kaggle_ids == [line.split(",")[0] for line in list(fh)[1:]]


def _slot_lines(shared) -> list[str]:
    try:
        path = shared["paddle_slot"] if shared is not None else None
    except pytest.skip.Exception:
        path = None
    if path is not None:
        return [line.rstrip("\n") for line in open(path, encoding="utf-8") if line.strip()]
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(300):
        dense = " ".join(f"dense_feature:{v:.3f}" for v in rng.random(13))
        ids = " ".join(f"{k}:{rng.integers(0, 30)}" for k in range(1, 27))
        lines.append(f"click:{int(rng.random() < 0.3)} {dense} {ids}")
    return lines


@pytest.fixture(scope="module")
def maybe_shared(request):
    try:
        return request.getfixturevalue("shared_data")
    except pytest.skip.Exception:
        return None


def test_predict_slot_format_with_a_slot_trained_bundle(maybe_shared, tmp_path):
    lines = _slot_lines(maybe_shared)
    train = tmp_path / "slot.txt"
    train.write_text("\n".join(lines) + "\n")
    prepare(PrepareOptions(train=[str(train)], split=(0.7, 0.3, 0.0)), tmp_path / "store", progress=False, log=quiet)
    cfg = run_config(tmp_path / "store", tmp_path / "run", "fm", "train.epochs=1")
    run_training(cfg, progress=False, log=quiet)
    export_bundle(tmp_path / "run", tmp_path / "bundle", log=quiet)
    labelled = predict_file(tmp_path / "bundle", [train], tmp_path / "a.out", log=quiet)
    assert labelled.formats == {str(train): "slot"} and labelled.rows == len(lines)
    scores = read_scores(tmp_path / "a.out")
    labels = np.array([float(line.split()[0].split(":")[1]) for line in lines])
    assert labelled.metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    unlabelled = tmp_path / "slot_nolabel.txt"
    unlabelled.write_text("\n".join(line.split(" ", 1)[1] for line in lines) + "\n")
    result = predict_file(tmp_path / "bundle", [unlabelled], tmp_path / "b.out", fmt="slot", log=quiet)
    assert result.rows == len(lines) and result.metrics is None
    np.testing.assert_array_equal(read_scores(tmp_path / "b.out"), scores)


def _frappe_lines(shared) -> list[str]:
    if shared is not None:
        try:
            path = shared["frappe_test"]
            with open(path, encoding="utf-8") as fh:
                return [next(fh).rstrip("\r\n") for _ in range(1201)]
        except pytest.skip.Exception:
            pass
    rng = np.random.default_rng(1)
    header = "label,user,item,daytime,weekday,isweekend,homework,cost,weather,country,city"
    rows = [",".join([str(int(rng.random() < 0.33))] + [str(rng.integers(0, 40) + 100 * j) for j in range(10)])
            for _ in range(1200)]
    return [header] + rows


def test_predict_generic_csv_with_a_frappe_style_bundle(maybe_shared, criteo, tmp_path):
    lines = _frappe_lines(maybe_shared)
    data = tmp_path / "frappe.csv"
    data.write_text("\n".join(lines) + "\n")
    prepare(PrepareOptions(train=[str(data)], format="csv", split=(0.8, 0.2, 0.0)), tmp_path / "store",
            progress=False, log=quiet)
    cfg = run_config(tmp_path / "store", tmp_path / "run", "fm", "train.epochs=1")
    run_training(cfg, progress=False, log=quiet)
    export_bundle(tmp_path / "run", tmp_path / "bundle", log=quiet)
    manifest = load_manifest(tmp_path / "bundle")
    assert manifest["inputs"]["dense"]["shape"] == ["batch", 0]
    result = predict_file(tmp_path / "bundle", [data], tmp_path / "a.out", log=quiet)
    assert result.formats == {str(data): "csv"} and result.rows == len(lines) - 1
    scores = read_scores(tmp_path / "a.out")
    labels = np.array([float(line.split(",")[0]) for line in lines[1:]])
    assert result.metrics["auc"] == pytest.approx(roc_auc_score(labels, scores), abs=1e-6)
    no_label = tmp_path / "frappe_nolabel.csv"
    no_label.write_text("\n".join(line.split(",", 1)[1] for line in lines) + "\n")
    result = predict_file(tmp_path / "bundle", [no_label], tmp_path / "b.out", log=quiet)
    assert result.rows == len(lines) - 1 and result.metrics is None
    np.testing.assert_array_equal(read_scores(tmp_path / "b.out"), scores)
    # a Criteo file does not fit this bundle, and a Frappe file does not fit a Criteo bundle
    with pytest.raises(ValueError, match="differ from the bundle's inputs"):
        predict_file(tmp_path / "bundle", [criteo.raw], tmp_path / "c.out", log=quiet)
    with pytest.raises(ValueError, match="differ from the bundle's inputs"):
        predict_file(criteo.bundle, [data], tmp_path / "d.out", fmt="csv", log=quiet)
    assert not (tmp_path / "d.out").exists()


def test_bad_lines_error_and_skip_policies(criteo, onnx_predictor, tmp_path):
    lines = criteo.raw.read_text().splitlines()[:200]
    fields = lines[10].split("\t")
    fields[5] = "abc"  # I5
    lines[10] = "\t".join(fields)
    lines[50] = "\t".join(lines[50].split("\t")[:30])  # too few fields
    bad = tmp_path / "bad.tsv"
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"bad.tsv:11: field 'I5': expected a number, got 'abc'"):
        predict_file(criteo.bundle, [bad], tmp_path / "a.out", log=quiet, predictor=onnx_predictor)
    assert not (tmp_path / "a.out").exists() and not (tmp_path / "a.out.tmp").exists()
    logs: list[str] = []
    result = predict_file(criteo.bundle, [bad], tmp_path / "b.out", bad_lines="skip", log=logs.append,
                          predictor=onnx_predictor)
    # skipped lines keep their place: one output line per input line, empty probability + reason
    out_lines = (tmp_path / "b.out").read_text().splitlines()
    assert result.rows == 198 and len(out_lines) == 200
    assert out_lines[10].startswith("\t") and "expected a number, got 'abc'" in out_lines[10]
    assert out_lines[50].startswith("\t") and "wrong field count" in out_lines[50]
    assert result.skipped.total == 2
    assert any("skipped 2 bad lines" in line for line in logs)
    assert any("not a number" in line for line in logs) and any("wrong field count" in line for line in logs)
    # the scored rows are the good ones, in order
    good = tmp_path / "good.tsv"
    good.write_text("\n".join(line for i, line in enumerate(lines) if i not in (10, 50)) + "\n")
    predict_file(criteo.bundle, [good], tmp_path / "c.out", log=quiet, predictor=onnx_predictor)
    scored = np.array([float(line.split("\t")[0]) for i, line in enumerate(out_lines) if i not in (10, 50)],
                      dtype=np.float32)
    np.testing.assert_array_equal(scored, read_scores(tmp_path / "c.out"))


def test_several_inputs_keep_input_order_and_row_indices(criteo, onnx_predictor, tmp_path):
    files = write_layouts(criteo.raw, tmp_path, rows=120)
    result = predict_file(criteo.bundle, [files["criteo"], files["criteo_test"]], tmp_path / "s.tsv",
                          id_column=True, header=True, batch_size=7, log=quiet, predictor=onnx_predictor)
    lines = (tmp_path / "s.tsv").read_text().splitlines()
    assert lines[0] == "id\tprobability" and len(lines) == 241 and result.rows == 240
    # ids: file:line (several inputs; criteo files have no header, so data line k is line k)
    assert [line.split("\t")[0] for line in lines[1:]] == [f"{files[name]}:{k}" for name in ("criteo", "criteo_test")
                                                           for k in range(1, 121)]
    scores = np.array([float(line.split("\t")[1]) for line in lines[1:]])
    np.testing.assert_array_equal(scores[:120], scores[120:])
    assert result.metrics is None  # one input has no labels


# --------------------------------------------------------------------------------------------
# Predictor input forms and errors
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n", [1, 5, 100])
def test_predictor_input_forms_give_identical_scores(onnx_predictor, torch_predictor, raw_table, n):
    table = raw_table.slice(17, n)
    dicts = table.to_pylist()
    lists = [[row[c] for c in onnx_predictor.columns] for row in dicts]
    # raw text forms, as a JSON request might carry them: numbers as strings, missing as ""
    text = [{c: ("" if v is None else (repr(v) if isinstance(v, float) else v)) for c, v in row.items()}
            for row in dicts]
    for predictor in (onnx_predictor, torch_predictor):
        prediction = predictor.predict(table)
        expected = prediction.scores
        assert expected.shape == (n,) and expected.dtype == np.float32
        # the stage timings belong to this call (a value, not the predictor's state)
        stages = dataclasses.astuple(prediction.timings)
        assert len(stages) == 4 and all(s >= 0 for s in stages) and prediction.timings.transform > 0
        for form in (dicts, lists, [tuple(r) for r in lists], text, table.to_batches()[0]):
            np.testing.assert_array_equal(predictor.predict(form).scores, expected)
    np.testing.assert_allclose(onnx_predictor.predict(dicts).scores, torch_predictor.predict(dicts).scores,
                               atol=1e-5, rtol=0)
    assert onnx_predictor.predict([]).scores.shape == (0,)


def test_predictor_bad_inputs_name_row_and_field(onnx_predictor, raw_table):
    row = raw_table.slice(0, 1).to_pylist()[0]
    good = dict(row)
    cases = [
        ([good, dict(row, I5="abc")], r"row 1, field 'I5': expected a number, got 'abc'"),
        ([dict(row, I5=True)], r"row 0, field 'I5': expected a number, a numeric string or None, got bool"),
        ([dict(row, I2=float("inf"))], r"row 0, field 'I2': expected a finite number"),
        ([dict(row, C7=2.5)], r"row 0, field 'C7': expected a string"),
        ([good, dict(row, C99="x")], r"row 1: unknown column\(s\) \['C99'\]"),
        ([[1, 2, 3]], r"row 0: expected 39 values \(in the order I1, I2"),
        ([good, [1]], r"row 1: expected a dict like row 0"),
        ([5], r"row 0 is a int"),
        (good, r"not a single dict"),
        ("I1,I2", r"got str"),
        (raw_table.drop_columns(["C26"]), r"lacks column\(s\) \['C26'\]"),
        (raw_table.set_column(1, "I1", pa.array(["x"] * raw_table.num_rows)), r"column 'I1': expected numbers"),
    ]
    for rows, message in cases:
        with pytest.raises(InputError, match=message):
            onnx_predictor.predict(rows)
    # absent keys are missing values; label and id are accepted and ignored
    partial = {k: v for k, v in row.items() if k not in ("I3", "C4")}
    explicit = dict(row, I3=None, C4=None)
    np.testing.assert_array_equal(onnx_predictor.predict([partial]).scores, onnx_predictor.predict([explicit]).scores)
    onnx_predictor.predict([dict(row, label=1.0, id="x")])


def test_many_row_dicts_keys_and_errors(onnx_predictor, raw_table):
    """Past the small-request lane (rows_to_table): label/id keys are ignored, "" is missing, and
    an unknown key is named whether or not its row also leaves a column out."""
    n = SMALL_INPUT_ROWS + 40
    dicts = raw_table.slice(0, n).to_pylist()
    expected = onnx_predictor.predict(dicts).scores
    with_ids = [dict(r, label=1.0, id=str(i)) if i % 3 == 0 else r for i, r in enumerate(dicts)]
    np.testing.assert_array_equal(onnx_predictor.predict(with_ids).scores, expected)
    empty = [dict(r, C5="", I4="") if i % 4 == 0 else r for i, r in enumerate(dicts)]
    none = [dict(r, C5=None, I4=None) if i % 4 == 0 else r for i, r in enumerate(dicts)]
    np.testing.assert_array_equal(onnx_predictor.predict(empty).scores, onnx_predictor.predict(none).scores)
    partial = {k: v for k, v in dicts[-1].items() if k != "C2"}
    cases = [
        (dicts[:-1] + [dict(partial, C99="x")], rf"row {n - 1}: unknown column\(s\) \['C99'\]"),
        (dicts[:7] + [dict(dicts[7], C99="x", label=0)] + dicts[8:], r"row 7: unknown column\(s\) \['C99'\]"),
        (with_ids[:5] + [[1, 2]] + dicts[6:], r"row 5: expected a dict like row 0"),
    ]
    for rows, message in cases:
        with pytest.raises(InputError, match=message):
            onnx_predictor.predict(rows)


@pytest.mark.parametrize("n", [1, 5, SMALL_INPUT_ROWS])
def test_small_requests_take_the_lane_with_the_table_paths_scores_and_counts(criteo, raw_table, monkeypatch, n):
    """Up to SMALL_INPUT_ROWS rows skip the Arrow table (rows_to_table is never called) and give the
    table path's scores, encodings and input counts (missing / OOV per field) exactly."""
    rng = np.random.default_rng(n)
    dicts = []
    for row in raw_table.slice(40, n).to_pylist():
        for col in list(row):
            u = rng.random()
            if u < 0.1:
                del row[col]  # left out: missing
            elif u < 0.2:
                row[col] = "" if rng.random() < 0.5 else None
            elif u < 0.3:
                row[col] = "unseen-value" if col in CRITEO_SPARSE else "2.5"
        dicts.append(row)
    table_path, lane = Predictor(criteo.bundle, threads=1), Predictor(criteo.bundle, threads=1)
    table = rows_to_table(dicts, CRITEO_DENSE, CRITEO_SPARSE)
    expected, expected_encoding = table_path.predict(table).scores, table_path.encode(table)
    monkeypatch.setattr(predictor_mod, "rows_to_table", None)  # the lane must not need it
    scores, encoding = lane.predict(dicts).scores, lane.encode(dicts)
    assert scores.tobytes() == expected.tobytes()
    assert all(a.tobytes() == b.tobytes() for a, b in zip(encoding, expected_encoding))
    assert lane.input_counts.snapshot() == table_path.input_counts.snapshot()
    counts = lane.input_counts.snapshot()
    assert counts["C1"]["rows"] == 2 * n and sum(c["missing"] for c in counts.values()) > 0


def test_predictor_options_are_checked(criteo):
    with pytest.raises(ValueError, match="unknown backend 'tf'"):
        Predictor(criteo.bundle, backend="tf")
    with pytest.raises(BundleError, match="lists no int8 model"):
        Predictor(criteo.bundle, variant="int8")
    with pytest.raises(ValueError, match="not available here"):
        Predictor(criteo.bundle, providers=["NoSuchExecutionProvider"])
    with pytest.raises(FileNotFoundError):
        Predictor(criteo.root / "nothing")


# --------------------------------------------------------------------------------------------
# the commands
# --------------------------------------------------------------------------------------------

@pytest.fixture()
def main():
    """ctrlab's main (the deploy commands are registered in cli.COMMANDS)."""
    assert cli_deploy.add_export in COMMANDS and cli_deploy.add_predict in COMMANDS
    return cli.main


def test_cli_export_and_predict(criteo, main, tmp_path, capsys):
    bundle = tmp_path / "bundle"
    assert main(["export", str(criteo.run), "--out", str(bundle)]) == 0
    out = capsys.readouterr().out
    assert f"exported deepfm epoch {criteo.summary['best_epoch']} -> {bundle}" in out and "model.onnx" in out
    assert main(["export", str(criteo.run), "--out", str(bundle)]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(criteo.run), "--out", str(bundle), "--epoch", "1", "--force"]) == 0
    assert load_manifest(bundle)["metrics"]["epoch"] == 1
    capsys.readouterr()

    files = write_layouts(criteo.raw, tmp_path, rows=150)
    scores_path = tmp_path / "s.tsv"
    assert main(["predict", str(bundle), str(files["kaggle"]), "--out", str(scores_path), "--id-column",
                 "--backend", "torch", "--batch-size", "64", "--json"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(out[-1])
    assert summary["rows"] == 150 and summary["skipped"]["total"] == 0
    assert any(line.startswith("AUC") for line in out) and any(line.startswith("logloss") for line in out)
    lines = scores_path.read_text().splitlines()
    assert len(lines) == 150 and lines[0].split("\t")[0] == "60000000"
    labels = np.array([float(f[0]) for f in tsv_lines(files["criteo"])])
    assert summary["metrics"]["auc"] == pytest.approx(roc_auc_score(labels, [float(x.split("\t")[1]) for x in lines]),
                                                      abs=1e-9)


def test_cli_errors_exit_2_with_a_message(criteo, main, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    lines = criteo.raw.read_text().splitlines()[:20]
    lines[3] = lines[3].replace("\t", "\tzz\t", 1)  # one field too many
    bad.write_text("\n".join(lines) + "\n")
    cases = [
        (["predict", str(tmp_path / "nothing"), str(criteo.raw), "--out", str(tmp_path / "o")], "no such bundle"),
        (["predict", str(criteo.bundle), str(tmp_path / "missing.tsv"), "--out", str(tmp_path / "o")], "missing.tsv"),
        (["predict", str(criteo.bundle), str(bad), "--out", str(tmp_path / "o")], "bad.tsv"),
        (["predict", str(criteo.bundle), str(criteo.raw), "--out", str(tmp_path / "o"), "--batch-size", "0"],
         "--batch-size must be >= 1"),
        (["export", str(tmp_path), "--out", str(tmp_path / "b")], "not a training run"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"ctrlab {argv[0]}: error:" in err and message in err, err
    assert main(["predict", str(criteo.bundle), str(bad), "--out", str(tmp_path / "o"), "--bad-lines", "skip"]) == 0
    assert "skipped 1 bad lines" in capsys.readouterr().out
    out_lines = (tmp_path / "o").read_text().splitlines()
    assert len(out_lines) == 20 and out_lines[3] == "\twrong field count (got 41, expected 40)"


@pytest.mark.parametrize("command", ["export", "predict", "bench"])
def test_cli_help_has_examples(main, command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "examples:" in capsys.readouterr().out


def test_small_requests_counted_together_equal_counted_alone(criteo, raw_table, monkeypatch):
    """Counts of small inputs wait (up to PENDING_ROWS rows) and are counted together: the same
    totals as counting every request at once, whether read before or after a flush."""
    monkeypatch.setattr(predictor_mod, "PENDING_ROWS", 7)
    dicts = raw_table.slice(0, 40).to_pylist()
    for i, row in enumerate(dicts):
        if i % 3 == 0:
            row["C2"] = None
        if i % 4 == 0:
            row["C5"] = "unseen-value"
    one_by_one, together = Predictor(criteo.bundle, threads=1), Predictor(criteo.bundle, threads=1)
    for i, row in enumerate(dicts):
        one_by_one.predict([row])
        if i == 20:  # read midway: pending rows are counted, later ones still add up
            midway = one_by_one.input_counts.snapshot()
            assert midway["C1"]["rows"] == 21
    together.predict(rows_to_table(dicts, CRITEO_DENSE, CRITEO_SPARSE))
    assert one_by_one.input_counts.snapshot() == together.input_counts.snapshot()
    counts = together.input_counts.snapshot()
    assert counts["C2"]["missing"] >= 14 and counts["C5"]["oov"] >= 10
