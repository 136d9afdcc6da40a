"""Multi-task bundles (issue 16): export of the models with one logit per task.

* the manifest: top-level ``tasks`` (the store's names, in order), outputs ``float32[batch, T]``,
  ``model.params.num_tasks``; the ONNX graph's outputs have the task axis fixed to T;
* every multi-task model exports, and ONNX == torch at batch 1 and 1000 for every task column;
* the int8 variant measures every task; load.py loads a multi-task bundle with torch and onnx;
* a damaged ``tasks`` section is a BundleError naming it.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
import torch

from ctrlab.config import dump_config, load_config
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.store import Store
from ctrlab.export.bundle import export_bundle
from ctrlab.export.load import onnx_session, torch_model
from ctrlab.export.manifest import BundleError, load_manifest, manifest_tasks
from ctrlab.export.onnx_export import onnx_runtime_inputs
from ctrlab.models import build_model, hyperparameter_defaults
from ctrlab.schema import GenericSchemaConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MULTI_TASK_MODELS = ["shared_bottom", "mmoe", "ple", "esmm", "aitm"]
TINY = {"embedding_dim": 4, "expert_units": [8], "tower_units": [8], "num_experts": 2, "hidden_units": [8],
        "num_shared_experts": 1, "num_levels": 1}
ROWS = 1500


def quiet(_msg: str) -> None:
    pass


def write_multitask_tsv(path: Path, rows: int, seed: int = 7) -> None:
    """click, conversion (empty on most unclicked rows: an optional label), user, item, price."""
    rng = np.random.default_rng(seed)
    users, items = rng.integers(0, 40, rows), rng.integers(0, 100, rows)
    price = np.round(rng.uniform(0, 10, rows), 2)
    click = (rng.uniform(size=rows) < 0.1 + 0.3 * (users % 3 == 0)).astype(int)
    conversion = (rng.uniform(size=rows) < 0.3 * click + 0.02).astype(int)
    lines = ["click\tconversion\tuser\titem\tprice"]
    for k in range(rows):
        conv = "" if click[k] == 0 and k % 3 else str(conversion[k])
        lines.append(f"{click[k]}\t{conv}\tu{users[k]}\ti{items[k]}\t{price[k]}")
    path.write_text("\n".join(lines) + "\n")


def multitask_store(root: Path, rows: int = ROWS) -> Path:
    raw = root / "mt.tsv"
    write_multitask_tsv(raw, rows)
    schema = GenericSchemaConfig(label=["click", "conversion"], optional_labels=["conversion"], dense=["price"])
    prepare(PrepareOptions(train=[str(raw)], format="tsv", schema=schema), root / "store", progress=False, log=quiet)
    return root / "store"


def fake_multitask_run(store: Path, run_dir: Path, model: str) -> dict:
    """A run directory with one checkpoint of a seeded (untrained) tiny multi-task model, as
    training will leave it (num_tasks = the store's task count)."""
    valid = hyperparameter_defaults(model)
    params = {k: v for k, v in TINY.items() if k in valid}
    cfg = load_config(None, [f"data.store={json.dumps(str(store))}", f"run_dir={json.dumps(str(run_dir))}",
                             f"model.name={model}"])
    cfg.model.params = params
    (run_dir / "checkpoints").mkdir(parents=True)
    dump_config(cfg, run_dir / "config.yaml")
    torch.manual_seed(0)
    net = build_model(model, Store(store).spec, {**params, "num_tasks": len(Store(store).tasks)})
    torch.save({"model": net.state_dict(), "epoch": 1}, run_dir / "checkpoints" / "epoch_1.pt")
    return params


@pytest.fixture(scope="module")
def mt(tmp_path_factory):
    root = tmp_path_factory.mktemp("mt_export")
    store = multitask_store(root)
    bundles = {}
    for model in MULTI_TASK_MODELS:
        fake_multitask_run(store, root / f"run_{model}", model)
        bundles[model] = root / f"bundle_{model}"
        export_bundle(root / f"run_{model}", bundles[model], golden_rows=300, quantize=model == "mmoe", log=quiet)
    return SimpleNamespace(root=root, store=store, bundles=bundles)


def test_manifest_declares_tasks_and_task_shaped_outputs(mt):
    store = Store(mt.store)
    assert store.tasks == ["click", "conversion"]
    manifest = load_manifest(mt.bundles["mmoe"])
    assert manifest["tasks"] == ["click", "conversion"] and manifest_tasks(manifest) == ["click", "conversion"]
    assert manifest["outputs"] == {"logits": {"dtype": "float32", "shape": ["batch", 2]},
                                   "probabilities": {"dtype": "float32", "shape": ["batch", 2]}}
    assert manifest["model"]["params"]["num_tasks"] == 2
    assert manifest["schema"]["more_labels"] == ["conversion"]
    assert manifest["parity"]["max_abs_diff"] <= 1e-5
    assert manifest["parity"]["rows"] == min(300, len(Store(mt.store).split("valid")))
    # the graph: the task axis is the fixed dimension 2, only the batch axis is symbolic
    graph = onnx.load(str(mt.bundles["mmoe"] / "model.onnx"), load_external_data=False)
    for output in graph.graph.output:
        dims = output.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", ""] and dims[1].dim_value == 2, output.name


@pytest.mark.parametrize("model", MULTI_TASK_MODELS)
def test_every_multitask_model_matches_onnx_at_batch_1_and_1000(model, mt):
    bundle = mt.bundles[model]
    manifest = load_manifest(bundle)
    assert manifest["tasks"] == ["click", "conversion"] and manifest["model"]["name"] == model
    split = Store(mt.store).split("train")
    assert len(split) >= 1000
    dense, sparse = np.array(split.dense[:1000], dtype=np.float32), np.array(split.sparse[:1000], dtype=np.int64)
    net = torch_model(bundle, manifest)
    session = onnx_session(bundle / "model.onnx", threads=1)
    for n in (1, 1000):
        with torch.no_grad():
            logits = net(torch.from_numpy(dense[:n]), torch.from_numpy(sparse[:n])).numpy()
        got_logits, got_probs = session.run(["logits", "probabilities"],
                                            onnx_runtime_inputs(session, dense[:n], sparse[:n]))
        assert got_logits.shape == (n, 2) and got_probs.shape == (n, 2) and got_probs.dtype == np.float32
        np.testing.assert_allclose(got_logits, logits, atol=1e-5, rtol=0)
        np.testing.assert_allclose(got_probs, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-6, rtol=0)
        for t in range(2):  # both columns carry their own task (not one column twice)
            assert np.isfinite(got_probs[:, t]).all()
    assert not np.allclose(got_probs[:, 0], got_probs[:, 1])


def test_int8_variant_measures_every_task(mt):
    manifest = load_manifest(mt.bundles["mmoe"])
    int8 = manifest["int8"]
    assert set(int8["tasks"]) == {"click", "conversion"}
    for task, entry in int8["tasks"].items():
        assert set(entry) == {"auc_fp32", "auc_int8", "auc_change", "logloss_fp32", "logloss_int8", "rows"}
        assert entry["rows"] > 0
    assert int8["auc_fp32"] == pytest.approx(np.mean([e["auc_fp32"] for e in int8["tasks"].values()]))
    session = onnx_session(mt.bundles["mmoe"] / "model.int8.onnx", threads=1)
    dense = np.zeros((3, len(manifest["inputs"]["dense"]["names"])), dtype=np.float32)
    sparse = np.zeros((3, manifest["inputs"]["sparse"]["shape"][1]), dtype=np.int64)
    assert session.run(["probabilities"], onnx_runtime_inputs(session, dense, sparse))[0].shape == (3, 2)


def test_damaged_tasks_section_is_refused(mt, tmp_path):
    import shutil

    bundle = tmp_path / "b"
    shutil.copytree(mt.bundles["esmm"], bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for tasks, words in ((["click", "conversion", "extra"], ["outputs.logits.shape", "[batch, 3]"]),
                         (["click"], ["tasks", "2 or more"]), ("click", ["tasks"])):
        (bundle / "manifest.json").write_text(json.dumps({**manifest, "tasks": tasks}))
        with pytest.raises(BundleError) as err:
            load_manifest(bundle)
        assert all(w in str(err.value) for w in words), str(err.value)


def test_task_count_mismatch_is_refused(mt, tmp_path):
    """A model built for 3 tasks on a 2-task store: export says so and writes nothing."""
    run_dir = tmp_path / "run"
    params = fake_multitask_run(mt.store, run_dir, "mmoe")
    torch.manual_seed(0)
    net = build_model("mmoe", Store(mt.store).spec, {**params, "num_tasks": 3})
    torch.save({"model": net.state_dict(), "epoch": 1}, run_dir / "checkpoints" / "epoch_1.pt")
    cfg = load_config(run_dir / "config.yaml")
    cfg.model.params = {**params, "num_tasks": 3}
    dump_config(cfg, run_dir / "config.yaml")
    with pytest.raises(ValueError, match="3 output column"):
        export_bundle(run_dir, tmp_path / "bundle", log=quiet)
    assert not (tmp_path / "bundle").exists()
