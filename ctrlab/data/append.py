"""Partitioned stores: one partition per log (a day), appended with a growing vocabulary.

``ctrlab prepare LOG --out STORE --partition day01`` makes a store whose training data is a list
of named partitions (the whole input becomes the first one; no random split);
``ctrlab prepare --append STORE day02.tsv [--partition day02]`` adds one, encoded with the
store's pipeline *extended*, without reading or rewriting anything already encoded::

    STORE/
      meta.json        "layout": "partitions", "partitions": [{name, rows, positives, vocab_version,
                       vocab_sizes, retired/reused/added per vocabulary, sources (sha256), seconds,
                       ...}, ...] in order, "vocab_version" (the latest), "eviction", and the latest
                       "spec" / "vocab_sizes" / "fields"
      pipeline.json    the latest pipeline (a copy of vocab/pipeline-vNNNN.json: what a bundle needs)
      vocab/
        pipeline-vNNNN.json   the pipeline at the latest version NNNN
        state-vNNNN.npz       the sidecar: what the vocabularies remember between partitions
        changes-vNNNN.npz     per version: the ids retired and the ids reused (kept for every version)
      partitions/NAME/{dense,sparse,label}.npy   as a split's arrays (label [N, T] with several tasks)

Vocabulary versions: partition k (1-based) was encoded at version k; appending bumps it.

Sidecar (``state-vNNNN.npz``): for every vocabulary (a sparse column's by its name, a list
column's own by the list's name; a shared one is its column's) the arrays ``NAME::hashes`` (uint64
key hash), ``NAME::counts`` (int64 cumulative count over the partitions), ``NAME::last_seen``
(int32 version the value was last seen in), ``NAME::ids`` (int32 id, 0 = a candidate still below
min_count) and ``NAME::free`` (retired ids waiting for reuse). Loading it is O(distinct values).

Admission: a value's count carries over from partition to partition (kept values and candidates
alike); when its cumulative count reaches its vocabulary's ``min_count`` (in pipeline.json) in the
partition being appended, it is admitted: most frequent first (ties by key hash), into the lowest
freed id, else the next id at the end of the field's range; ``max_size`` caps the live ids.
Existing ids never change; numeric transforms stay as the first partition fitted them. The
partition's rows are encoded with the vocabulary *after* admission (as prepare encodes with the
fitted vocabulary), so the latest pipeline's ``transform`` of its raw rows equals what is stored.

Eviction (``--evict-after N``, meta ``eviction.unseen_partitions``; default off): a value unseen
in the last N partitions is forgotten at the next append: a kept one's id is *retired* (its key in
pipeline.json becomes a placeholder, so the value maps to OOV in the pipeline and the bundle from
then on) and goes to the free list, to be reused by a later new value; a candidate is dropped.
With eviction on, the vocabularies and the sidecar stay bounded over a long run; with it off,
ids only grow and the sidecar keeps every value ever seen. A retired value that comes back starts
again as a new candidate.

Old partitions after reuse: their arrays are never rewritten, so an id retired or reused since a
partition's version means something else (or nothing) now. :meth:`Store.id_changes` gives those
ids (the trainer resets their embedding rows when continuing), and
:meth:`Store.current_ids` maps them to OOV in a block of an old partition's sparse ids, which is
how an old partition is to be read once ids were reused (tested).

Atomicity: the new partition is built in ``partitions/.NAME.append-PID``, the new vocabulary
files under new names; then the partition directory is renamed into place and meta.json (the
one commit point) is replaced; pipeline.json is refreshed after it. A failure before the commit
removes what was built and leaves the store as it was; leftovers of a killed append (an
unlisted partition directory, vocabulary files newer than meta.json's version) are removed by
the next append, and Store reads the versioned pipeline, so they are never trusted. One append
runs at a time per store (``STORE/.append.lock`` holds its process id; a dead holder's lock is
taken over); a partition name already in meta.json is refused.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from .. import __version__
from ..features.encoders import VocabState
from ..features.pipeline import FeaturePipeline
from ..fileio import atomic_write, pid_alive, sync_tree, write_bytes_atomic, write_json_atomic
from .encode import _build_store
from .formats import file_schema
from .readers import resolve_inputs
from .store import Store, StoreError

PARTITIONS = "partitions"
VOCAB = "vocab"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_KEEP = object()  # append_partition: keep the store's eviction policy


def vocab_file(kind: str, version: int) -> str:
    """``vocab/`` file names: ``pipeline-v0003.json``, ``state-v0003.npz``, ``changes-v0003.npz``."""
    ext = "json" if kind == "pipeline" else "npz"
    return f"{VOCAB}/{kind}-v{version:04d}.{ext}"


def check_partition_name(name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"partition name {name!r}: use letters, digits, '.', '_' or '-' (starting with a letter "
                         "or digit), at most 100 characters")
    return name


def default_partition_name(files: list[str]) -> str:
    """The first input file's name without its extensions (day02.tsv.gz -> day02)."""
    paths = resolve_inputs(files)
    name = paths[0].name.split(".")[0] if paths else ""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name) or "partition"


def load_states(path: Path, names: list[str]) -> dict[str, VocabState]:
    if not path.is_file():
        raise StoreError(f"{path}: missing; the store's vocabulary state is gone (prepare the store again)")
    with np.load(path) as data:
        return {name: VocabState.from_arrays(data, name) for name in names if f"{name}::hashes" in data.files}


def _save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    atomic_write(path, write)


def _encode(opts: Any, build: Path, name: str, pipeline: FeaturePipeline, states: dict[str, VocabState],
            version: int, unseen_partitions: int | None, progress: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """Encode ``opts.train`` into ``build`` (arrays) through ``pipeline`` grown to ``version``;
    writes the vocabulary files of that version into ``build.parent.parent / vocab`` under new names
    (returned in the second dict with the new states' arrays) and returns the partition's entry."""
    accs: dict[str, Any] = {}

    def accumulators(p: FeaturePipeline) -> dict[str, Any]:
        accs.update(p.growing_accumulators(states, version, unseen_partitions))
        return accs

    build.mkdir(parents=True)
    pipeline, meta = _build_store(opts, build, progress, pipeline=pipeline, accumulators=accumulators, partition=True)
    vocabularies = pipeline.vocabularies()
    grown = {}
    for acc in {id(a): a for a in accs.values()}.values():
        inner = getattr(acc, "inner", None)
        grower = acc if hasattr(acc, "changes") else inner if hasattr(inner, "changes") else None
        if grower is not None:
            for vname, vocab in vocabularies.items():
                if vocab is grower.vocab:
                    grown[vname] = grower
    state_arrays: dict[str, np.ndarray] = {}
    change_arrays: dict[str, np.ndarray] = {}
    for vname, grower in grown.items():
        state_arrays.update(grower.state.arrays(vname))
        change_arrays[f"{vname}::retired"] = grower.changes["retired"]
        change_arrays[f"{vname}::reused"] = grower.changes["reused"]
    split = meta["splits"]["train"]
    spec = pipeline.spec
    entry = {
        "name": name, "rows": split["rows"], "positives": split["positives"], "positive_rate": split["positive_rate"],
        **({"tasks": split["tasks"]} if "tasks" in split else {}),
        "vocab_version": version,
        "vocab_sizes": {vname: int(v.size_) for vname, v in vocabularies.items()},
        "added": {vname: g.changes["added"] for vname, g in grown.items()},
        "retired": {vname: int(len(g.changes["retired"])) for vname, g in grown.items()},
        "reused": {vname: int(len(g.changes["reused"])) for vname, g in grown.items()},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "sources": meta["sources"], "skipped": meta["skipped"], "seconds": meta["seconds"],
        "spec": spec.to_dict(),
    }
    return entry, {"pipeline": pipeline, "meta": meta, "states": state_arrays, "changes": change_arrays}


def _write_vocab(root: Path, version: int, result: dict[str, Any]) -> list[Path]:
    (root / VOCAB).mkdir(exist_ok=True)
    paths = [root / vocab_file(k, version) for k in ("pipeline", "state", "changes")]
    result["pipeline"].save(paths[0])
    _save_npz(paths[1], result["states"])
    _save_npz(paths[2], result["changes"])
    return paths


def _store_meta(previous: dict[str, Any] | None, entry: dict[str, Any], result: dict[str, Any],
                unseen_partitions: int | None, started: float) -> dict[str, Any]:
    meta = dict(previous or {})
    pipeline: FeaturePipeline = result["pipeline"]
    part = result["meta"]
    partitions = list(meta.get("partitions", [])) + [entry]
    sources = [s for p in partitions for s in p["sources"]]
    rows = sum(p["rows"] for p in partitions)
    meta.update({
        "ctrlab_version": __version__, "format_version": 1, "layout": "partitions",
        "created": meta.get("created") or time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "schema": meta.get("schema") or part["schema"],
        **({"tasks": part["tasks"]} if "tasks" in part else {}),
        "partitions": partitions,
        "vocab_version": entry["vocab_version"],
        "eviction": {"unseen_partitions": unseen_partitions},
        "column_vocabularies": pipeline.vocabulary_of_column(),
        "splits": {},
        "split": {"method": "partitions", "ratios": None, "seed": None},
        "sources": {"train": sources},
        "skipped": entry["skipped"],
        "rows_read": rows,
        "seconds": round(time.perf_counter() - started, 3),
        "spec": pipeline.spec.to_dict(),
        "vocab_sizes": part["vocab_sizes"],
        "fields": part["fields"],
    })
    meta["rows_per_second"] = round(entry["rows"] / meta["seconds"], 1) if meta["seconds"] > 0 else None
    return meta


def build_partitioned_store(opts: Any, build: Path, name: str, *, unseen_partitions: int | None = None,
                            progress: bool = True) -> None:
    """A new partitioned store in the (new, empty) directory ``build``: its first partition ``name``
    is every row of ``opts.train`` (``prepare(..., partition=name)`` swaps it into place)."""
    check_partition_name(name)
    _check_policy(unseen_partitions)
    if opts.valid or opts.test:
        raise ValueError("a partitioned store takes its training data as partitions: no valid/test files "
                         "(hold a later partition out instead)")
    started = time.perf_counter()
    paths = resolve_inputs(opts.train)
    _, schema = file_schema(paths[0], opts.format, opts.schema)
    pipeline = FeaturePipeline.from_options(list(schema.dense), list(schema.sparse), opts.categorical, opts.numeric,
                                            opts.columns, lists=schema.lists)
    (build / PARTITIONS).mkdir()
    entry, result = _encode(opts, build / PARTITIONS / name, name, pipeline, {}, 1, unseen_partitions, progress)
    _write_vocab(build, 1, result)
    result["pipeline"].save(build / "pipeline.json")
    write_json_atomic(build / "meta.json", _store_meta(None, entry, result, unseen_partitions, started), indent=1)


def _check_policy(unseen_partitions: int | None) -> None:
    if unseen_partitions is not None and (not isinstance(unseen_partitions, int) or unseen_partitions < 1):
        raise ValueError(f"eviction: unseen_partitions must be an integer >= 1 or null (off), got {unseen_partitions!r}")


def clean_leftovers(store: Store) -> None:
    """Remove what a killed append left (unlisted partition directories, vocabulary files of a
    version newer than meta.json's, older versions' pipeline/state) and refresh pipeline.json."""
    root, version = store.path, store.vocab_version
    listed = set(store.partitions)
    folder = root / PARTITIONS
    for entry in folder.iterdir() if folder.is_dir() else ():
        if entry.name not in listed:
            shutil.rmtree(entry, ignore_errors=True) if entry.is_dir() else entry.unlink(missing_ok=True)
    for entry in (root / VOCAB).iterdir():
        m = re.match(r"^(pipeline|state|changes)-v(\d+)\.(json|npz)$", entry.name)
        if m is None or int(m.group(2)) > version or (m.group(1) != "changes" and int(m.group(2)) < version):
            entry.unlink(missing_ok=True)
    current = root / vocab_file("pipeline", version)
    top = root / "pipeline.json"
    if not top.is_file() or top.stat().st_size != current.stat().st_size:
        write_bytes_atomic(top, current.read_bytes())


def append_partition(store_dir: str | os.PathLike, opts: Any, name: str | None = None, *,
                     unseen_partitions: Any = _KEEP, progress: bool = True) -> Store:
    """Add ``opts.train`` (files) as partition ``name`` (default: the first file's stem) to the
    partitioned store at ``store_dir``; returns the store reopened. unseen_partitions: change the
    store's eviction policy from this append on (default: keep it). See the module docstring."""
    started = time.perf_counter()
    store = Store(store_dir)
    if not store.partitioned:
        raise ValueError(f"{store_dir}: was prepared as one fitted store (train/valid/test splits), not as partitions; "
                         "make a partitioned store with `ctrlab prepare FILE --out STORE --partition NAME` first")
    if unseen_partitions is _KEEP:
        unseen_partitions = store.meta.get("eviction", {}).get("unseen_partitions")
    _check_policy(unseen_partitions)
    name = check_partition_name(name or default_partition_name(opts.train))
    if name in store.partitions:
        raise ValueError(f"{store_dir}: already holds partition {name!r} (partitions: {', '.join(store.partitions)}); "
                         "a partition is appended once: choose another name with --partition")
    if opts.valid or opts.test:
        raise ValueError("an appended partition takes its rows from its input files alone (no valid/test files)")
    expected = store.meta["schema"]
    for path in resolve_inputs(opts.train):
        fmt, schema = file_schema(path, opts.format, opts.schema)
        if schema.to_dict() != expected:
            raise ValueError(f"{path}: its columns ({fmt}: {schema.to_dict()}) differ from the store's ({expected}); "
                             "a partition must have the store's columns")
    root = store.path
    with _append_lock(root):
        return _append_locked(Store(root), opts, name, unseen_partitions, progress, started)


@contextlib.contextmanager
def _append_lock(root: Path) -> Iterator[None]:
    """One append at a time per store: ``STORE/.append.lock`` holds the appending process's id (a
    lock whose process is gone is taken over)."""
    lock = root / ".append.lock"
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                holder = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                holder = 0
            if holder and pid_alive(holder) and holder != os.getpid():
                raise ValueError(f"{root}: another append (process {holder}) is running; wait for it") from None
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as fh:
            fh.write(str(os.getpid()))
        break
    else:
        raise ValueError(f"{root}: could not take the append lock {lock}")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def _append_locked(store: Store, opts: Any, name: str, unseen_partitions: int | None, progress: bool,
                   started: float) -> Store:
    if name in store.partitions:  # (again, under the lock)
        raise ValueError(f"{store.path}: already holds partition {name!r}; choose another name with --partition")
    clean_leftovers(store)
    root = store.path
    version = store.vocab_version + 1
    pipeline = FeaturePipeline.load(root / vocab_file("pipeline", store.vocab_version))
    states = load_states(root / vocab_file("state", store.vocab_version), list(pipeline.vocabularies()))
    build = root / PARTITIONS / f".{name}.append-{os.getpid()}"
    final = root / PARTITIONS / name
    written: list[Path] = []
    committed = False
    try:
        entry, result = _encode(opts, build, name, pipeline, states, version, unseen_partitions, progress)
        written = _write_vocab(root, version, result)
        sync_tree(build)
        os.rename(build, final)
        meta = _store_meta(store.meta, entry, result, unseen_partitions, started)
        write_json_atomic(root / "meta.json", meta, indent=1)  # the commit
        committed = True
    finally:
        if not committed:
            shutil.rmtree(build, ignore_errors=True)
            if final.exists() and name not in Store(root).partitions:
                shutil.rmtree(final, ignore_errors=True)
            for path in written:
                path.unlink(missing_ok=True)
    write_bytes_atomic(root / "pipeline.json", (root / vocab_file("pipeline", version)).read_bytes())
    for old in ("pipeline", "state"):
        (root / vocab_file(old, version - 1)).unlink(missing_ok=True)
    return Store(root)
