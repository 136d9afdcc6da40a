"""Large initializers (embedding tables) leave the graph for one page-aligned external data file
that onnxruntime memory-maps: listed and checked in the manifest like every bundle file, scored
exactly like the inline graph, and mapped (file-backed, shareable) rather than copied."""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import onnx
import pytest

from conftest import tiny_bundle

from ctrlab.export import onnx_export
from ctrlab.export.manifest import BundleError, load_manifest
from ctrlab.inference import Predictor


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(onnx_export, "EXTERNAL_MIN_BYTES", 4096)  # the tiny model's embedding table goes out
        raw, bundle = tiny_bundle(tmp_path_factory.mktemp("external"), 2000, seed=3)
    return raw, bundle


def test_large_initializers_are_page_aligned_external_data(bundle):
    _, folder = bundle
    data = folder / "model.onnx.data"
    assert data.is_file() and "model.onnx.data" in load_manifest(folder)["files"]
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    external = [t for t in graph.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external, "no initializer moved out"
    for tensor in external:
        entries = {e.key: e.value for e in tensor.external_data}
        assert entries["location"] == "model.onnx.data"
        assert int(entries["offset"]) % mmap.ALLOCATIONGRANULARITY == 0
    inline = [t for t in graph.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL]
    assert all(len(t.raw_data) < 4096 for t in inline)


def test_scores_equal_torch_and_the_data_file_is_mapped(bundle):
    raw, folder = bundle
    rows = [line.split("\t")[1:] for line in raw.read_text().splitlines()[:300]]
    onnx_predictor = Predictor(folder, threads=1)
    columns = onnx_predictor.columns
    dicts = [{c: (float(v) if i < 13 else v) if v else None for i, (c, v) in enumerate(zip(columns, row))}
             for row in rows]
    scores = onnx_predictor.predict(dicts).scores
    torch_scores = Predictor(folder, backend="torch", threads=1).predict(dicts).scores
    assert np.abs(scores - torch_scores).max() < 1e-6
    maps = Path(f"/proc/{os.getpid()}/maps")
    if maps.exists():  # Linux: the data file is mapped into this process (file-backed pages)
        assert str((folder / "model.onnx.data").resolve()) in maps.read_text()


def test_a_changed_data_file_is_refused(bundle, tmp_path):
    import shutil

    _, folder = bundle
    copy = tmp_path / "bundle"
    shutil.copytree(folder, copy)
    data = copy / "model.onnx.data"
    blob = bytearray(data.read_bytes())
    blob[-1] ^= 0xFF
    data.write_bytes(bytes(blob))
    with pytest.raises(BundleError, match="model.onnx.data"):
        Predictor(copy)
