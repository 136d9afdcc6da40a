"""Shared fixtures for the ctrlab test suite.

``shared_data`` locates the real CTR files in ``<repo>/../shared/data`` (see its PROVENANCE.md)
and skips the test when they are absent. Those files are never copied into the repository;
tests that need crafted variants write them to ``tmp_path``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Paths of the real files, relative to SHARED_DATA.
REAL_FILES = {
    "criteo_train": "ChanghuiLi__classic_recalgorithm_inTF2/dataset/Criteo/train.txt",
    "paddle_part0": "PaddlePaddle__PaddleRec/tools/dataset/utils/part-0",
    "paddle_dnn_test": "PaddlePaddle__PaddleRec/models/rank/dnn/data/test/sample_test.txt",
    "paddle_dnn_train": "PaddlePaddle__PaddleRec/models/rank/dnn/data/train/sample_train.txt",
    "paddle_slot": "PaddlePaddle__PaddleRec/models/rank/wide_deep/data/sample_data/train/sample_train.txt",
    "paddle_feat_idx": "PaddlePaddle__PaddleRec/models/rank/dataset/Criteo_data/sample_data/train/sample_train.txt",
    "kaggle_tr_rx": "ChenglongChen__kaggle-2014-criteo/tr.rx.csv",
    "kaggle_va_rx": "ChenglongChen__kaggle-2014-criteo/va.rx.csv",
    "deepctr_sample": "shenweichen__DeepCTR/examples/criteo_sample.txt",
    "frappe_valid": "reczoo_Frappe_x1_from_AFN/valid.csv",
    "frappe_test": "reczoo_Frappe_x1_from_AFN/test.csv",
    "paddle_din": "PaddlePaddle__PaddleRec/models/rank/din/data/train_data/sample_data.txt",
}


class SharedData:
    """The shared data folder; ``data["criteo_train"]`` gives a real file's path (skips if absent)."""

    def __init__(self, root: Path):
        self.root = root

    def __getitem__(self, name: str) -> Path:
        path = self.root / REAL_FILES[name]
        if not path.is_file():
            pytest.skip(f"real data file {path} is not available")
        return path


@pytest.fixture(scope="session")
def shared_data() -> SharedData:
    """The real CTR data in ../shared/data; skips the test when the folder is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared real data not found at {SHARED_DATA}")
    return SharedData(SHARED_DATA)


@pytest.fixture
def one_torch_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread (restored afterwards; training
    itself sets torch's thread count from train.threads)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def synthetic_store(root: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """A synthetic Criteo-shaped file ``root/synth.tsv`` of ``rows`` rows and its store ``root/store``
    prepared with the defaults (8:1:1 split): the small data most module fixtures start from."""
    from ctrlab.data.prepare import PrepareOptions, prepare
    from ctrlab.data.synth import write_synthetic

    raw = root / "synth.tsv"
    write_synthetic(raw, rows, seed=seed, progress=False)
    prepare(PrepareOptions(train=[str(raw)]), root / "store", progress=False, log=lambda _msg: None)
    return raw, root / "store"


def tiny_bundle(root: Path, rows: int, seed: int) -> tuple[Path, Path]:
    """``synthetic_store`` plus a 1-epoch tiny DeepFM trained on it and exported to ``root/bundle``:
    the bundle the serving tests start from. Returns (raw file, bundle)."""
    from ctrlab.config import load_config
    from ctrlab.export.bundle import export_bundle
    from ctrlab.train.run import run_training

    raw, store = synthetic_store(root, rows, seed)
    cfg = load_config(None, {"data.store": str(store), "run_dir": str(root / "run"), "model.name": "deepfm",
                             "model.params.embedding_dim": 4, "model.params.hidden_units": [8],
                             "train.threads": 1, "train.epochs": 1, "train.batch_size": 256,
                             "train.log_every": 1000, "train.eval_batch_size": 500})
    run_training(cfg, progress=False, log=lambda _m: None)
    export_bundle(root / "run", root / "bundle", epoch=1, log=lambda _m: None)
    return raw, root / "bundle"


# a simulated crash, shared by the resume tests (train/) and the fault tests (export/)
class Crash(Exception):
    pass


def crashing_iterator(epoch_index: int, after_batches: int):
    """A BatchIterator that raises after ``after_batches`` training batches of 0-based epoch ``epoch_index``."""
    import ctrlab.train.trainer as trainer_mod  # (torch: only the tests that crash a run need it)

    base = trainer_mod.BatchIterator

    class CrashingBatchIterator(base):
        def __iter__(self):
            for i, batch in enumerate(super().__iter__()):
                if self.shuffle and self.epoch == epoch_index and i == after_batches:
                    raise Crash(f"simulated crash in epoch {epoch_index + 1}")
                yield batch

    return CrashingBatchIterator
