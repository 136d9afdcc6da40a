"""``ctrlab prepare --engine ray``: the local engine's store, built by Ray tasks on one machine or
many (``pip install 'ctrlab[ray]'``).

Every input file is a shard and a task (a directory of part files is many). The local engine's
passes (:mod:`ctrlab.data.encode`) run per shard, map-reduce style, as Ray Core tasks (not Ray
Data's Dataset API: each file's global row offset and its counting epochs must stay in file order,
which Dataset re-blocking would hide):

1. *Row counts* (random split only): a task per training file counts its rows, so that every row
   gets the global index that seeds its split, as in the local engine.
2. *First pass*, a task per file: parse, split, provisional codes and raw values written into the
   shard's folders, vocabulary counts spilled to disk in epochs (``features/spill.py``), numeric
   statistics kept.
3. *Fit* (the driver): every vocabulary's epochs, in shard order, merged exactly
   (:func:`~ctrlab.features.spill.merge_epochs`); numeric statistics combined.
4. *Second pass*, a task per shard: codes -> ids and raw values -> features, in place, with the
   shard's epochs' remaps.

The store is the local engine's, byte for byte, with each split written as shards
(``STORE/SPLIT/shards/NNNNN/``, :mod:`ctrlab.data.shards`): its shards concatenated are the local
store's arrays, and pipeline.json is the same file (tested). Training reads a sharded store as
one, and with ``--nproc N`` each rank reads its own shards.

The tasks read the input files and write the store's build folder by path: on several machines,
both must be on a filesystem every node mounts (NFS, a cluster filesystem) at the same path. What
scales: parsing and encoding (the bulk of the work) run on as many cores as the cluster has, a
file at a time; the merge of the vocabularies runs in the driver, one hash range at a time (its
memory is the kept vocabulary, its time linear in the distinct values). What does not: one big
file is one task (split it into parts to spread it), and the row counting parses the training
files once more when the split is random (give valid/test files to skip it).
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tqdm import tqdm

from ..fileio import write_json_atomic
from .encode import (FirstPass, StoreInputs, _check_rows_read, add_stats, finalize_rows, new_pipeline, store_inputs,
                     store_meta, summarize)
from .readers import RowReader, SkipReport
from .shards import shard_dir
from .store import SPLITS

RAY_MISSING = "the Ray engine needs Ray: pip install 'ctrlab[ray]' (or pip install 'ray>=2.9')"


def build_store_ray(opts: Any, out: Path, progress: bool, address: str | None = None) -> tuple[Any, dict[str, Any]]:
    """Like :func:`ctrlab.data.encode._build_store`, with Ray tasks; the splits written as shards.

    address: a running cluster's ``HOST:PORT`` (``ray start --head`` printed it), ``auto`` for the
    one this machine belongs to, or None for a local Ray started (and stopped) here."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(RAY_MISSING) from None
    started = time.perf_counter()
    inputs = store_inputs(opts)
    pipeline = new_pipeline(opts, inputs)
    items = [(role, path, fmt, schema) for role, files in inputs.files.items() for path, fmt, schema in files]
    own_ray = not ray.is_initialized()
    if own_ray:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tmp = out / ".ray-tmp"
    tmp.mkdir()
    try:
        count, first, second = (ray.remote(f).options(max_retries=0) for f in (_count_rows, _first_pass, _second_pass))
        starts = [0] * len(items)  # each training file's first global training row
        if inputs.split_method == "random":
            train = [k for k, item in enumerate(items) if item[0] == "train"]
            counted = _gather(ray, [count.remote(items[k][1], items[k][3], opts.bad_lines) for k in train],
                              "prepare (ray): count rows", progress)
            total = 0
            for k, rows in zip(train, counted):
                starts[k], total = total, total + rows
        results = _gather(ray, [first.remote(opts, inputs, pipeline, item, start, tmp / f"shard-{k:05d}")
                                for k, (item, start) in enumerate(zip(items, starts))],
                          "prepare (ray): parse+count", progress)
        passed = SimpleNamespace(rows=sum(r["rows"] for r in results),
                                 writers={s for r in results for s in r["present"]})
        _check_rows_read(passed, inputs)  # type: ignore[arg-type]
        accs = pipeline.accumulators()
        for r in results:  # every shard's counts, in shard order
            absorbed: set[int] = set()
            for name, acc in accs.items():
                if id(acc) not in absorbed:  # (a shared vocabulary once)
                    absorbed.add(id(acc))
                    acc.absorb(r["accs"][name])
        timings = {"parse_and_count": time.perf_counter() - started}
        with ThreadPoolExecutor(max_workers=2) as pool:
            finalizer = pipeline.finish_fit(accs, pool.map)
        timings["fit"] = time.perf_counter() - started - timings["parse_and_count"]
        layout = SimpleNamespace(spec=pipeline.spec, sparse_outputs=pipeline.sparse_outputs,
                                 dense_outputs=pipeline.dense_outputs)
        offsets = [0]
        for r in results:
            offsets.append(offsets[-1] + r["epochs"])
        shard_stats = _gather(ray, [second.remote(tmp / f"shard-{k:05d}", r["present"], layout, finalizer,
                                                  len(inputs.tasks), r["epoch_starts"], offsets[k])
                                    for k, r in enumerate(results)], "prepare (ray): encode+write", progress)
        timings["encode_and_write"] = time.perf_counter() - started - timings["parse_and_count"] - timings["fit"]
    finally:
        if own_ray:
            ray.shutdown()
    stats: dict[str, dict[str, Any]] = {}
    shards: dict[str, list[int]] = {s: [] for s in SPLITS}
    for k, st in enumerate(shard_stats):
        add_stats(stats, st)
        for split, split_stats in st.items():  # the shard's non-empty splits, numbered in order
            target = shard_dir(out / split, len(shards[split]))
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp / f"shard-{k:05d}" / split, target)
            shards[split].append(int(split_stats["rows"]))
    shutil.rmtree(tmp, ignore_errors=True)
    meta = summarize(stats, pipeline, inputs.tasks)
    for split, rows in shards.items():
        if rows:
            meta["splits"][split]["shards"] = rows
    meta["timings"] = {**{k: round(v, 3) for k, v in timings.items()}, "count_epochs": offsets[-1]}
    source_meta: dict[str, list[dict[str, Any]]] = {}
    skipped = SkipReport()
    for r in results:
        for role, entries in r["sources"].items():
            source_meta.setdefault(role, []).extend(entries)
        skipped.merge_from(r["skipped"])
    pipeline.save(out / "pipeline.json")
    meta.update(store_meta(opts, inputs, pipeline, source_meta, skipped, passed.rows, time.perf_counter() - started))
    meta["engine"] = "ray"
    write_json_atomic(out / "meta.json", meta, indent=1)
    return pipeline, meta


def _gather(ray: Any, refs: list[Any], what: str, progress: bool) -> list[Any]:
    """The tasks' results in submission order, with a progress bar; a task's error re-raised as
    itself (a bad line names its file and line, as with the local engine)."""
    with tqdm(total=len(refs), desc=what, unit=" files", disable=not progress) as bar:
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)
                bar.update(len(done))
            return ray.get(refs)
        except ray.exceptions.RayTaskError as exc:
            for ref in pending:
                ray.cancel(ref, force=True)
            cause = getattr(exc, "cause", None)
            raise (cause if isinstance(cause, BaseException) else exc) from None


# the tasks (plain functions: ray.remote wraps them in the driver) ----------------------------

def _count_rows(path: Path, schema: Any, bad_lines: str) -> int:
    return sum(chunk.table.num_rows for chunk in RowReader([path], schema, bad_lines=bad_lines))


def _first_pass(opts: Any, inputs: StoreInputs, pipeline: Any, item: tuple[Any, ...], train_start: int,
                folder: Path) -> dict[str, Any]:
    """Pass 1 over one file into ``folder`` (SPLIT/ arrays, tmp/); every count spilled at the end."""
    role, path, fmt, schema = item
    tmp = folder / "tmp"
    tmp.mkdir(parents=True)
    accs = pipeline.accumulators()
    budget = int(opts.vocab_memory_mib * (1 << 20))
    with ThreadPoolExecutor(max_workers=1) as pool:  # (one core per task: Ray runs tasks side by side)
        first = FirstPass(opts, inputs, pipeline, accs, {s: folder / s for s in SPLITS}, tmp, pool, budget)
        first.train_rows_seen = train_start
        try:
            first.read(role, path, fmt, schema)
        finally:
            first.close()
        first.spill()  # (the file's last epoch: the driver merges spilled counts only)
    return {"accs": accs, "rows": first.rows, "present": [s for s in SPLITS if s in first.writers],
            "epoch_starts": first.epoch_starts, "epochs": len(first.epoch_starts["train"]) - 1,
            "sources": first.source_meta, "skipped": first.skipped}


def _second_pass(folder: Path, present: list[str], layout: Any, finalizer: Any, n_tasks: int,
                 epoch_starts: dict[str, list[int]], epoch_offset: int) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        stats = finalize_rows({s: folder / s for s in SPLITS}, folder / "tmp", present, layout, finalizer, pool,
                              False, n_tasks, epoch_starts, epoch_offset)
    shutil.rmtree(folder / "tmp", ignore_errors=True)
    return stats
