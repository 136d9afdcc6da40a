"""``prepare --engine ray`` (issue 18) on a local Ray cluster of 2 workers: the store is the local
engine's byte for byte (shards concatenated, pipeline.json, meta.json but for timings and shard
lists), with counts spilled inside the tasks too, and a bad line is reported as the local engine
reports it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ctrlab.cli import main
from ctrlab.data.prepare import PrepareOptions, prepare
from ctrlab.data.readers import DataError
from ctrlab.data.store import SPLITS, Store
from ctrlab.data.synth import write_synthetic
from ctrlab.data.synth_sequence import write_sequence_synthetic
from ctrlab.features.pipeline import CategoricalOptions, NumericOptions
from ctrlab.schema import GenericSchemaConfig

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def _same_store(local, sharded) -> None:
    a, b = Store(local), Store(sharded)
    assert (local / "pipeline.json").read_bytes() == (sharded / "pipeline.json").read_bytes()
    for split in SPLITS:
        x, y = a.split(split), b.split(split)
        assert b.meta["splits"][split]["shards"] and sum(b.meta["splits"][split]["shards"]) == len(x)
        assert (sharded / split / "shards" / "00000" / "sparse.npy").is_file()
        for name in ("dense", "sparse", "label"):
            assert np.asarray(getattr(x, name)).tobytes() == np.asarray(getattr(y, name)).tobytes(), (split, name)
    drop = {"seconds", "rows_per_second", "created", "engine", "splits", "timings"}
    ma, mb = (json.loads((p / "meta.json").read_text()) for p in (local, sharded))
    assert mb["engine"] == "ray" and "engine" not in ma
    assert {k: v for k, v in ma.items() if k not in drop} == {k: v for k, v in mb.items() if k not in drop}
    assert ma["splits"] == {s: {k: v for k, v in entry.items() if k != "shards"} for s, entry in mb["splits"].items()}


def test_random_split_over_part_files_gives_the_local_store(tmp_path):
    files = [tmp_path / f"part-{i}.tsv" for i in range(3)]
    for i, path in enumerate(files):
        write_synthetic(path, 3000 + 500 * i, seed=i, progress=False)
    opts = PrepareOptions(train=[str(p) for p in files], categorical=CategoricalOptions(min_count=2),
                          columns={"C7": CategoricalOptions(max_size=30), "I2": NumericOptions(transform="log_square_bucket")})
    prepare(opts, tmp_path / "local", progress=False)
    prepare(opts, tmp_path / "ray", progress=False, engine="ray")
    _same_store(tmp_path / "local", tmp_path / "ray")
    assert len(Store(tmp_path / "ray").meta["splits"]["train"]["shards"]) == 3


def test_lists_split_files_and_spilled_counts_give_the_local_store(tmp_path):
    files = {name: tmp_path / f"{name}.tsv" for name in ("a", "b", "valid", "test")}
    for seed, path in enumerate(files.values()):
        write_sequence_synthetic(path, 1200, seed=seed, max_history=15)
    lists = {"hist_item_id": {"kind": "sequence", "max_length": 10, "vocab_of": "item_id"}}
    schema = GenericSchemaConfig(dense=["price"], sparse=["user_id", "item_id", "cate_id"], lists=lists)

    def opts(budget):
        return PrepareOptions(train=[str(files["a"]), str(files["b"])], valid=[str(files["valid"])],
                              test=[str(files["test"])], format="tsv", schema=schema, vocab_memory_mib=budget)
    prepare(opts(0), tmp_path / "local", progress=False)
    prepare(opts(1e-6), tmp_path / "ray", progress=False, engine="ray")  # (a spill after every chunk)
    _same_store(tmp_path / "local", tmp_path / "ray")


def test_cli_engine_ray_and_a_bad_line(tmp_path, capsys):
    good = tmp_path / "good.tsv"
    write_synthetic(good, 2000, seed=4, progress=False)
    assert main(["prepare", str(good), "--engine", "ray", "--out", str(tmp_path / "store"), "--quiet"]) == 0
    assert "store:" in capsys.readouterr().out and Store(tmp_path / "store").meta["engine"] == "ray"
    bad = tmp_path / "bad.tsv"
    lines = good.read_text().splitlines(keepends=True)
    bad.write_text("".join(lines[:700]) + "1\tnot-a-number" + "\t" * 38 + "\n" + "".join(lines[700:]))
    with pytest.raises(DataError) as local_error:
        prepare(PrepareOptions(train=[str(good), str(bad)]), tmp_path / "s1", progress=False)
    with pytest.raises(DataError) as ray_error:
        prepare(PrepareOptions(train=[str(good), str(bad)]), tmp_path / "s2", progress=False, engine="ray")
    assert str(ray_error.value) == str(local_error.value) and "bad.tsv" in str(ray_error.value)
    assert "701" in str(ray_error.value)
    assert not (tmp_path / "s2").exists() and not list(tmp_path.glob(".s2*"))  # nothing left behind


def _criteo_csv(tsv, csv) -> None:
    """The TSV rows as Criteo CSV with a header line (format criteo_csv): pieces after the first
    read with the header in front."""
    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    csv.write_text(",".join(names) + "\n" + tsv.read_text().replace("\t", ","))


@pytest.mark.parametrize("with_header", [False, True])
def test_a_big_file_read_in_pieces_gives_the_local_store(tmp_path, monkeypatch, with_header):
    import ctrlab.data.pieces as pieces

    src = tmp_path / "day.tsv"
    write_synthetic(src, 6000, seed=5, progress=False)
    if with_header:
        _criteo_csv(src, tmp_path / "day.csv")
        src = tmp_path / "day.csv"
    monkeypatch.setattr(pieces, "PIECE_BYTES", src.stat().st_size // 4 + 1)
    assert len(pieces.plan_pieces(src, "criteo", with_header)) == 4
    opts = PrepareOptions(train=[str(src)])
    prepare(opts, tmp_path / "local", progress=False)
    prepare(opts, tmp_path / "ray", progress=False, engine="ray")
    _same_store(tmp_path / "local", tmp_path / "ray")  # (sources too: one entry, the file's size and sha256)
    assert len(Store(tmp_path / "ray").meta["splits"]["train"]["shards"]) == 4


def test_bad_lines_in_pieces_are_named_by_the_files_lines(tmp_path, monkeypatch):
    import ctrlab.data.pieces as pieces

    good = tmp_path / "good.tsv"
    write_synthetic(good, 6000, seed=6, progress=False)
    lines = good.read_text().splitlines(keepends=True)
    for at in (4200, 5100, 1800):  # (file lines 4201, 5102, 1801 in the end: inserted in this order)
        lines.insert(at, "1\tnan-or-worse" + "\t" * 38 + "\n")
    bad = tmp_path / "bad.tsv"
    bad.write_text("".join(lines))
    monkeypatch.setattr(pieces, "PIECE_BYTES", bad.stat().st_size // 5 + 1)
    with pytest.raises(DataError) as local_error:
        prepare(PrepareOptions(train=[str(bad)]), tmp_path / "s1", progress=False)
    with pytest.raises(DataError) as ray_error:
        prepare(PrepareOptions(train=[str(bad)]), tmp_path / "s2", progress=False, engine="ray")
    assert str(ray_error.value) == str(local_error.value) and ray_error.value.line == 1801  # the first, in file order
    skip = PrepareOptions(train=[str(bad)], bad_lines="skip")
    prepare(skip, tmp_path / "local", progress=False)
    prepare(skip, tmp_path / "ray", progress=False, engine="ray")
    local, ray_meta = (Store(tmp_path / name).meta for name in ("local", "ray"))
    assert ray_meta["skipped"]["total"] == local["skipped"]["total"] == 3
    assert ray_meta["sources"] == local["sources"]
    for example in ray_meta["skipped"]["examples"]:  # each names the file and a line that is bad there
        path, line, _ = example.split(":", 2)
        assert path == str(bad) and "nan-or-worse" in lines[int(line) - 1]
    _same_store_arrays(tmp_path / "local", tmp_path / "ray")


def _same_store_arrays(local, sharded) -> None:
    a, b = Store(local), Store(sharded)
    assert (local / "pipeline.json").read_bytes() == (sharded / "pipeline.json").read_bytes()
    for split in SPLITS:
        for name in ("dense", "sparse", "label"):
            assert np.asarray(getattr(a.split(split), name)).tobytes() == np.asarray(getattr(b.split(split), name)).tobytes()


def test_gzip_and_parquet_parts_give_the_local_store(tmp_path):
    """Whole-file tasks for formats that cannot be cut: gzip text and a directory of Parquet parts."""
    import gzip

    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    plain = tmp_path / "a.tsv"
    write_synthetic(plain, 3000, seed=8, progress=False)
    packed = tmp_path / "b.tsv.gz"
    write_synthetic(packed, 2500, seed=9, progress=False)
    assert packed.read_bytes()[:2] == b"\x1f\x8b"
    opts = PrepareOptions(train=[str(plain), str(packed)])
    prepare(opts, tmp_path / "local", progress=False)
    prepare(opts, tmp_path / "ray", progress=False, engine="ray")
    _same_store(tmp_path / "local", tmp_path / "ray")

    parts = tmp_path / "parts"
    parts.mkdir()
    names = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
    table = pcsv.read_csv(gzip.open(packed), read_options=pcsv.ReadOptions(column_names=names),
                          parse_options=pcsv.ParseOptions(delimiter="\t"),
                          convert_options=pcsv.ConvertOptions(column_types={f"C{i}": "string" for i in range(1, 27)}))
    for k, lo in enumerate(range(0, table.num_rows, 1000)):
        pq.write_table(table.slice(lo, 1000), parts / f"part-{k}.parquet")
    schema = GenericSchemaConfig(label="label", dense=names[1:14], sparse=names[14:])
    opts = PrepareOptions(train=[str(parts)], format="parquet", schema=schema)
    prepare(opts, tmp_path / "local_pq", progress=False)
    prepare(opts, tmp_path / "ray_pq", progress=False, engine="ray")
    _same_store(tmp_path / "local_pq", tmp_path / "ray_pq")
    assert len(Store(tmp_path / "ray_pq").meta["splits"]["train"]["shards"]) == 3


def test_an_address_nothing_answers_on_is_an_error_at_once():
    import socket

    from ctrlab.data.ray_engine import _check_reachable

    with socket.socket() as free:  # a port nobody listens on
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    with pytest.raises(RuntimeError, match=f"127.0.0.1:{port}: no Ray cluster answers there"):
        _check_reachable(f"127.0.0.1:{port}", seconds=2)
    _check_reachable(None)
    _check_reachable("auto")  # (Ray's own lookups: nothing to check here)
