"""Partitioned stores and ``prepare --append`` (issue 17): a store grows one partition (a day) at a
time through its pipeline extended: new values reaching min_count get new ids, existing ids never
change, counts carry over, nothing encoded is rewritten; eviction retires ids unseen for N
partitions and reuses them; appending is atomic."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from ctrlab.cli.main import main
from ctrlab.data.append import append_partition, vocab_file
from ctrlab.data.formats import file_schema
from ctrlab.data.prepare import PrepareOptions, format_summary, prepare
from ctrlab.data.readers import RowReader
from ctrlab.data.store import Store, StoreError
from ctrlab.data.synth import write_synthetic
from ctrlab.features.pipeline import CategoricalOptions, NumericOptions
from ctrlab.fields import OOV_ID
from ctrlab.schema import GenericSchemaConfig

SCHEMA = GenericSchemaConfig(dense=["x"], sparse=["a", "b"],
                             lists={"tags": {"kind": "multi", "max_length": 3, "weight_separator": ":"},
                                    "hist": {"kind": "sequence", "max_length": 2, "vocab_of": "a"}})
MULTI = GenericSchemaConfig(label=["click", "conv"], optional_labels=["conv"], dense=["x"], sparse=["a", "b"])


def write_day(path, rows, header=("label", "x", "a", "b", "tags", "hist")):
    """rows: tuples in the order of ``header`` (tab-separated, with a header line)."""
    lines = ["\t".join(header)] + ["\t".join(str(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def random_day(rng, day: int, n: int = 300):
    """Rows whose values drift: a stable core (k0..k19), values of the day's range, rare ones."""
    rows = []
    for i in range(n):
        a = f"k{rng.integers(0, 20)}" if rng.random() < 0.6 else f"d{day * 5 + rng.integers(0, 15)}"
        b = f"r{rng.integers(0, 400)}" if rng.random() < 0.3 else f"b{rng.integers(0, 6)}"
        tags = "|".join(f"t{rng.integers(0, 8 + day)}:{rng.integers(1, 5) / 4}" for _ in range(rng.integers(0, 4)))
        hist = "|".join(f"k{rng.integers(0, 30)}" for _ in range(rng.integers(0, 3)))
        rows.append((int(rng.random() < 0.3), round(float(rng.exponential(3)), 2), a, b, tags, hist))
    return rows


def opts(files, **kw):
    return PrepareOptions(train=[str(f) for f in files], format="tsv", schema=SCHEMA,
                          categorical=CategoricalOptions(min_count=2), **kw)


def key_ids(pipeline, column):
    """{key: id} of a vocabulary's live keys (placeholders of retired ids left out)."""
    vocab = pipeline.vocabularies()[column]
    return {k: i + 2 for i, k in enumerate(vocab.keys_.to_pylist()) if not k.startswith("\x00")}


def encode(pipeline, path, schema=SCHEMA):
    tables = [c.table for c in RowReader([path], file_schema(path, "tsv", schema)[1])]
    return [np.concatenate(x) for x in zip(*(pipeline.transform(t) for t in tables))]


@pytest.fixture(scope="module")
def week(tmp_path_factory):
    """Seven days appended with eviction off and with eviction after 2 partitions."""
    root = tmp_path_factory.mktemp("append")
    rng = np.random.default_rng(7)
    days = [write_day(root / f"day{d}.tsv", random_day(rng, d)) for d in range(1, 8)]
    out = {}
    for label, evict in (("keep", None), ("evict", 2)):
        store_dir = root / f"store-{label}"
        prepare(opts(days[:1]), store_dir, progress=False, partition="day1", unseen_partitions=evict)
        versions = [Store(store_dir).pipeline]
        for path in days[1:]:
            versions.append(append_partition(store_dir, opts([path]), progress=False).pipeline)
        out[label] = (store_dir, versions)
    return root, days, out


def test_store_records_partitions_and_versions(week):
    _, _, out = week
    store = Store(out["keep"][0])
    assert store.partitioned and store.partitions == [f"day{d}" for d in range(1, 8)]
    assert store.vocab_version == 7
    assert [p["vocab_version"] for p in store.meta["partitions"]] == list(range(1, 8))
    assert all(len(p["sources"]) == 1 and len(p["sources"][0]["sha256"]) == 64 for p in store.meta["partitions"])
    sizes = [store.vocab_sizes(v)["a"] for v in range(1, 8)]
    assert sizes == sorted(sizes) and sizes[-1] > sizes[0]  # eviction off: ids only grow
    assert store.spec.vocab_sizes[store.spec.sparse_names.index("a")] == sizes[-1]
    assert store.spec_at(1).to_dict() == store.meta["partitions"][0]["spec"]
    # pipeline.json is the latest version's (what a bundle copies), the older ones' are gone
    top = json.loads((store.path / "pipeline.json").read_text())
    assert top == json.loads((store.path / vocab_file("pipeline", 7)).read_text())
    assert not (store.path / vocab_file("pipeline", 6)).exists()
    for name in store.partitions:
        part = store.partition(name)
        assert len(part) == store.partition_meta(name)["rows"] == 300
        assert part.sparse.shape[1] == store.spec.sparse_width and part.dense.shape[1] == store.spec.dense_width
    assert "7 partitions, vocabulary version 7" in format_summary(store.meta)


@pytest.mark.parametrize("label", ["keep", "evict"])
def test_existing_ids_never_change(week, label):
    _, _, out = week
    store_dir, versions = out[label]
    store = Store(store_dir)
    for column in ("a", "b", "tags"):
        for v in range(2, 8):
            before, after = key_ids(versions[v - 2], column), key_ids(versions[v - 1], column)
            changed = set(store.id_changes(v - 1, v).get(column, np.zeros(0)).tolist())
            size = store.vocab_sizes(v - 1)[column]
            for key, i in before.items():
                if key in after:
                    assert after[key] == i, (column, key, v)  # alive: the same id
                else:
                    assert i in changed, (column, key, v)  # retired, and listed
            for key, i in after.items():
                if key not in before:
                    assert i >= size or i in changed, (column, key, v)  # appended, or a freed id reused
            if label == "keep":
                assert not changed and sorted(after.values()) == list(range(2, 2 + len(after)))
        if label == "evict" and column != "tags":  # (every tag is seen every day)
            assert any(len(store.id_changes(v - 1, v).get(column, [])) for v in range(2, 8))


def test_day1_alive_values_keep_their_ids_on_day7(week):
    root, days, out = week
    store_dir, versions = out["keep"]
    store = Store(store_dir)
    day1 = np.asarray(store.partition("day1").sparse)
    _, sparse7 = encode(versions[-1], days[0])
    _, sparse1 = encode(versions[0], days[0])
    assert day1.tolist() == sparse1.tolist()  # the store holds what version 1 gave
    kept = day1 != OOV_ID
    assert (sparse7[kept] == day1[kept]).all()  # every day-1 id is the day-7 pipeline's id
    later = ~kept & (sparse7 != OOV_ID)  # values admitted later: new ids beyond version 1's range
    assert later.any()
    size1 = np.array([store.vocab_sizes(1)[v] for v in store.meta["column_vocabularies"]])
    assert (sparse7 >= size1[None, :])[later].all()
    assert np.array_equal(store.current_ids("day1", day1), day1)  # nothing retired: unchanged


def test_latest_partition_equals_the_latest_pipeline(week):
    _, days, out = week
    for label in ("keep", "evict"):
        store = Store(out[label][0])
        dense, sparse = encode(store.pipeline, days[-1])
        part = store.partition("day7")
        assert np.asarray(part.sparse).tolist() == sparse.tolist()
        assert np.array_equal(np.asarray(part.dense), dense)


def test_admission_counts_carry_over(tmp_path):
    row = lambda a: (0, 1.0, a, "b", "", "")  # noqa: E731
    d1 = write_day(tmp_path / "d1.tsv", [row("u"), row("u"), row("u"), row("v")])
    d2 = write_day(tmp_path / "d2.tsv", [row("v"), row("w"), row("u")])
    d3 = write_day(tmp_path / "d3.tsv", [row("w"), row("w"), row("v")])
    prepare(opts([d1]), tmp_path / "s", progress=False, partition="d1")
    store = append_partition(tmp_path / "s", opts([d2]), progress=False)
    assert key_ids(store.pipeline, "a") == {"u": 2, "v": 3}  # v: 1 on d1 + 1 on d2 reaches min_count 2
    assert np.asarray(store.partition("d1").sparse)[:, 0].tolist() == [2, 2, 2, OOV_ID]
    assert np.asarray(store.partition("d2").sparse)[:, 0].tolist() == [3, OOV_ID, 2]
    store = append_partition(tmp_path / "s", opts([d3]), progress=False)
    assert key_ids(store.pipeline, "a") == {"u": 2, "v": 3, "w": 4}
    assert store.meta["partitions"][-1]["added"]["a"] == 1
    assert np.asarray(store.partition("d3").sparse)[:, 0].tolist() == [4, 4, 3]


def test_eviction_retires_reuses_and_maps_to_oov(tmp_path):
    row = lambda a: (1, 2.0, a, "b", "", "")  # noqa: E731
    days = [["u", "u", "u", "v", "v"], ["u", "u"], ["u", "u"], ["w", "w", "u"], ["v", "v", "u"]]
    paths = [write_day(tmp_path / f"e{i + 1}.tsv", [row(a) for a in values]) for i, values in enumerate(days)]
    prepare(opts(paths[:1]), tmp_path / "s", progress=False, partition="e1", unseen_partitions=2)
    store = None
    for path in paths[1:]:
        store = append_partition(tmp_path / "s", opts([path]), progress=False)
    # v (id 3) unseen on e2 and e3: retired at version 3; w took its id on e4; v came back on e5 as
    # a new value (counted from 0: admitted at once, 2 >= min_count) and got a new id
    p3 = store.meta["partitions"][2]
    assert p3["retired"]["a"] == 1 and p3["reused"]["a"] == 0
    assert store.meta["partitions"][3]["reused"]["a"] == 1
    assert key_ids(store.pipeline, "a") == {"u": 2, "w": 3, "v": 4}
    assert store.vocab_sizes(4)["a"] == 4 and store.vocab_sizes(5)["a"] == 5
    assert store.id_changes(2, 3)["a"].tolist() == [3]
    assert store.id_changes(1)["a"].tolist() == [3]
    assert store.id_changes(3, 5)["a"].tolist() == [3]  # reused on version 4
    assert store.id_changes(4, 5)["a"].tolist() == []
    # the old partition e1 stored v as 3, which now means w: read through current_ids it is OOV
    e1 = np.asarray(store.partition("e1").sparse)
    assert e1[:, 0].tolist() == [2, 2, 2, 3, 3]
    assert store.current_ids("e1", e1)[:, 0].tolist() == [2, 2, 2, OOV_ID, OOV_ID]
    assert e1[:, 0].tolist() == [2, 2, 2, 3, 3]  # (a copy: the stored ids are untouched)


def test_eviction_keeps_the_vocabulary_bounded(week):
    _, _, out = week
    keep, evict = Store(out["keep"][0]), Store(out["evict"][0])
    assert evict.vocab_sizes()["b"] < keep.vocab_sizes()["b"]
    assert sum(p["reused"]["b"] for p in evict.meta["partitions"]) > 0
    # a retired value maps to OOV in the latest pipeline; current_ids of day1 agrees with it
    pipeline = evict.pipeline
    store_day1 = np.asarray(evict.partition("day1").sparse)
    days = week[1]
    _, sparse7 = encode(pipeline, days[0])
    current = evict.current_ids("day1", store_day1)
    alive = current != OOV_ID
    assert (sparse7[alive] == current[alive]).all()
    changed = (store_day1 != current)
    assert changed.any() and (current[changed] == OOV_ID).all()
    state = np.load(evict.path / vocab_file("state", 7))
    assert (state["b::last_seen"] > 7 - 2).all()  # the sidecar forgets what was evicted


def test_duplicate_partition_refused(week, tmp_path):
    root, days, out = week
    store_dir = out["keep"][0]
    before = (store_dir / "meta.json").read_bytes()
    with pytest.raises(ValueError, match="already holds partition 'day3'"):
        append_partition(store_dir, opts([days[2]]), progress=False)
    assert (store_dir / "meta.json").read_bytes() == before


def _snapshot(store_dir):
    return {str(p.relative_to(store_dir)): p.read_bytes() for p in sorted(store_dir.rglob("*")) if p.is_file()}


def test_failed_append_leaves_the_store_as_it_was(tmp_path):
    rng = np.random.default_rng(3)
    d1 = write_day(tmp_path / "d1.tsv", random_day(rng, 1, 100))
    prepare(opts([d1]), tmp_path / "s", progress=False, partition="d1")
    rows = random_day(rng, 2, 100)
    rows[60] = ("notalabel", 1.0, "a", "b", "", "")
    bad = write_day(tmp_path / "d2.tsv", rows)
    before = _snapshot(tmp_path / "s")
    with pytest.raises(Exception, match="d2.tsv"):
        append_partition(tmp_path / "s", opts([bad]), progress=False)
    assert _snapshot(tmp_path / "s") == before
    # and a partition left by a killed append (not in meta.json) is cleared by the next one
    (tmp_path / "s" / "partitions" / "d2").mkdir()
    (tmp_path / "s" / "vocab" / "state-v0002.npz").write_bytes(b"junk")
    good = write_day(tmp_path / "d2.tsv", random_day(rng, 2, 100))
    store = append_partition(tmp_path / "s", opts([good]), progress=False)
    assert store.partitions == ["d1", "d2"] and len(store.partition("d2")) == 100


def test_store_verifies_partitions(tmp_path):
    rng = np.random.default_rng(4)
    d1 = write_day(tmp_path / "d1.tsv", random_day(rng, 1, 50))
    prepare(opts([d1]), tmp_path / "s", progress=False, partition="d1")
    sparse = tmp_path / "s" / "partitions" / "d1" / "sparse.npy"
    os.truncate(sparse, sparse.stat().st_size - 8)
    with pytest.raises(StoreError, match="truncated"):
        Store(tmp_path / "s")


def test_append_refuses_a_split_store_and_other_columns(tmp_path):
    rng = np.random.default_rng(5)
    d1 = write_day(tmp_path / "d1.tsv", random_day(rng, 1, 60))
    prepare(opts([d1]), tmp_path / "plain", progress=False)
    with pytest.raises(ValueError, match="not as partitions"):
        append_partition(tmp_path / "plain", opts([d1]), "d2", progress=False)
    prepare(opts([d1]), tmp_path / "s", progress=False, partition="d1")
    other = write_day(tmp_path / "o.tsv", [(0, 1.0, "a", "b", "", "")], header=("label", "x", "a", "c", "tags", "hist"))
    schema = GenericSchemaConfig(dense=["x"], sparse=["a", "c"], lists=SCHEMA.lists)
    with pytest.raises(ValueError, match="differ from the store"):
        append_partition(tmp_path / "s", PrepareOptions(train=[str(other)], format="tsv", schema=schema), progress=False)
    with pytest.raises(ValueError, match="partition name"):
        append_partition(tmp_path / "s", opts([d1]), "../x", progress=False)


def test_multitask_partitions(tmp_path):
    rng = np.random.default_rng(6)
    header = ("click", "conv", "x", "a", "b")
    paths = []
    for d in range(1, 4):
        rows = []
        for _ in range(80):
            click = int(rng.random() < 0.4)
            rows.append((click, (int(rng.random() < 0.5) if click else ""), 1.5, f"a{rng.integers(0, 5 + 3 * d)}",
                         f"b{rng.integers(0, 4)}"))
        paths.append(write_day(tmp_path / f"m{d}.tsv", rows, header=header))
    mopts = lambda files: PrepareOptions(train=[str(f) for f in files], format="tsv", schema=MULTI,  # noqa: E731
                                         numeric=NumericOptions(transform="log1p"))
    prepare(mopts(paths[:1]), tmp_path / "s", progress=False, partition="m1")
    for path in paths[1:]:
        store = append_partition(tmp_path / "s", mopts([path]), progress=False)
    assert store.multi_task and store.tasks == ["click", "conv"]
    label = np.asarray(store.partition("m3").label)
    assert label.shape == (80, 2)
    assert store.meta["partitions"][-1]["tasks"]["conv"]["labelled"] == int((label[:, 0] == 1).sum())
    _, sparse = encode(store.pipeline, paths[-1], MULTI)
    assert np.asarray(store.partition("m3").sparse).tolist() == sparse.tolist()


def test_cli_partition_and_append(tmp_path, capsys):
    days = [tmp_path / f"day0{d}.tsv" for d in (1, 2)]
    for d, path in enumerate(days):
        write_synthetic(path, 400, seed=d, progress=False)
    out = tmp_path / "store"
    assert main(["prepare", str(days[0]), "--out", str(out), "--partition", "day01", "--evict-after", "3",
                 "--quiet"]) == 0
    assert main(["prepare", "--append", str(out), str(days[1]), "--quiet"]) == 0
    stdout = capsys.readouterr().out
    assert "appended partition day02" in stdout and "2 partitions, vocabulary version 2" in stdout
    store = Store(out)
    assert store.partitions == ["day01", "day02"] and store.meta["eviction"] == {"unseen_partitions": 3}
    assert main(["prepare", "--append", str(out), str(days[1]), "--quiet"]) != 0  # day02 again: refused


def test_concurrent_append_refused(tmp_path):
    rng = np.random.default_rng(8)
    d1 = write_day(tmp_path / "d1.tsv", random_day(rng, 1, 40))
    d2 = write_day(tmp_path / "d2.tsv", random_day(rng, 2, 40))
    prepare(opts([d1]), tmp_path / "s", progress=False, partition="d1")
    (tmp_path / "s" / ".append.lock").write_text(str(os.getppid()))  # a live process holds it
    with pytest.raises(ValueError, match="another append"):
        append_partition(tmp_path / "s", opts([d2]), progress=False)
    (tmp_path / "s" / ".append.lock").write_text("999999999")  # a dead one: taken over
    assert append_partition(tmp_path / "s", opts([d2]), progress=False).partitions == ["d1", "d2"]
    assert not (tmp_path / "s" / ".append.lock").exists()


def test_bucketized_and_hashed_columns_grow(tmp_path):
    """Integer bucket keys (log_square_bucket) retire and reuse like strings; hash buckets need no
    state; the online lane (few rows) reads retired placeholders as the vectorized one does."""
    paths = []
    for d in range(4):
        paths.append(tmp_path / f"c{d}.tsv")
        write_synthetic(paths[-1], 600, seed=d % 2, progress=False)
    copts = lambda f: PrepareOptions(train=[str(f)], numeric=NumericOptions(transform="log_square_bucket"),  # noqa: E731
                                     columns={"C1": CategoricalOptions(encoder="hash", hash_buckets=50)})
    prepare(copts(paths[0]), tmp_path / "s", progress=False, partition="c0", unseen_partitions=1)
    for d in range(1, 4):
        store = append_partition(tmp_path / "s", copts(paths[d]), f"c{d}", progress=False)
    assert "C1" not in store.vocab_sizes() and store.spec.vocab_sizes[store.spec.sparse_names.index("C1")] == 52
    assert sum(p["reused"]["C3"] for p in store.meta["partitions"]) > 0
    schema = file_schema(paths[3], "auto", None)[1]
    table = next(iter(RowReader([paths[3]], schema))).table.slice(0, 40)
    _, online = store.pipeline.transform(table)  # (40 rows: the online lane)
    _, vectorized = store.pipeline.encode_vectorized(table)
    assert np.array_equal(online, vectorized)
    assert np.array_equal(np.asarray(store.partition("c3").sparse)[:40], online)
