"""``ctrlab prepare --engine ray``: the local engine's store, built by Ray tasks on one machine or
many (``pip install 'ctrlab[ray]'``).

Every input file is a shard and a task (a directory of part files is many; a big plain-text file
is cut into pieces at line boundaries, a shard each: :mod:`ctrlab.data.pieces`). The local engine's
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
file or piece at a time; the merge of the vocabularies runs in the driver, one hash range at a time
(its memory is the kept vocabulary, its time linear in the distinct values). What does not: a gzip
or Parquet file is one task, and the row counting parses the training files once more when the
split is random (give valid/test files to skip it).
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from tqdm import tqdm

from ..fileio import write_json_atomic
from .encode import (FirstPass, StoreInputs, add_stats, check_rows_read, finalize_rows, new_pipeline, store_inputs,
                     store_meta, summarize, vocab_budget)
from ..fileio import sha256_file
from .pieces import LineMap, Piece, count_lines, merge_sources, piece_file, plan_pieces, remove_copy
from .readers import DataError, RowReader, SkipReport
from .shards import shard_dir
from .store import SPLITS

RAY_MISSING = "the Ray engine needs Ray: pip install 'ctrlab[ray]' (or pip install 'ray>=2.9')"


def build_store_ray(opts: Any, out: Path, progress: bool, address: str | None = None,
                    piece_bytes: int | None = None) -> tuple[Any, dict[str, Any]]:
    """Like :func:`ctrlab.data.encode._build_store`, with Ray tasks; the splits written as shards.

    address: a running cluster's ``HOST:PORT`` (``ray start --head`` printed it), ``auto`` for the
    one this machine belongs to, or None for a local Ray started (and stopped) here. piece_bytes:
    plain-text files larger than this are read as pieces of about this size (default
    :data:`~ctrlab.data.pieces.PIECE_BYTES`)."""
    try:
        import ray
    except ImportError:
        raise RuntimeError(RAY_MISSING) from None
    started = time.perf_counter()
    inputs = store_inputs(opts)
    pipeline = new_pipeline(opts, inputs)
    # the units of work: each input file, or each piece of a big plain-text one (pieces.py)
    items = [(role, piece, fmt, schema) for role, files in inputs.files.items() for path, fmt, schema in files
             for piece in plan_pieces(path, fmt, bool(schema.header), piece_bytes)]
    own_ray = not ray.is_initialized()
    if own_ray:
        _check_reachable(address)
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    tmp = out / ".ray-tmp"
    tmp.mkdir()
    try:
        tasks = (_count, _first_pass, _second_pass, sha256_file)
        count, first, second, digest = (ray.remote(f).options(max_retries=0) for f in tasks)
        random = inputs.split_method == "random"
        # training rows (a random split: each row's global index seeds its split) and lines (a piece's
        # first line) of every item that needs them
        needs = [k for k, (role, piece, _, _) in enumerate(items) if (random and role == "train") or not piece.whole]
        counted = dict(zip(needs, _gather(ray, [count.remote(items[k][1], items[k][3], opts.bad_lines,
                                                             random and items[k][0] == "train", tmp / f"count-{k:05d}")
                                                for k in needs], "prepare (ray): count rows", progress)))
        split_files = sorted({str(piece.path) for _, piece, _, _ in items if not piece.whole})
        digests = {path: digest.remote(path) for path in split_files}
        starts, first_lines, total = [], [], 0
        for k, (role, piece, _, _) in enumerate(items):
            rows, lines = counted.get(k, (0, 0))
            starts.append(total)
            total += rows
            first_lines.append(1 if piece.index == 0 else first_lines[-1] + counted[k - 1][1])
        results = _gather(ray, [first.remote(opts, inputs, pipeline, item, start, line, tmp / f"shard-{k:05d}")
                                for k, (item, start, line) in enumerate(zip(items, starts, first_lines))],
                          "prepare (ray): parse+count", progress)
        sha256 = dict(zip(digests, ray.get(list(digests.values()))))
        rows_read = sum(r["rows"] for r in results)
        check_rows_read(rows_read, {s for r in results for s in r["present"]}, inputs)
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
    pieces: dict[str, list[tuple[Any, dict[str, Any]]]] = {}
    skipped = SkipReport()
    for (role, piece, _, _), r in zip(items, results):
        pieces.setdefault(role, []).extend((piece, entry) for entry in r["sources"].get(role, []))
        skipped.merge_from(r["skipped"])
    source_meta = {role: merge_sources(entries, sha256) for role, entries in pieces.items()}
    pipeline.save(out / "pipeline.json")
    meta.update(store_meta(opts, inputs, pipeline, source_meta, skipped, rows_read, time.perf_counter() - started))
    meta["engine"] = "ray"
    write_json_atomic(out / "meta.json", meta, indent=1)
    return pipeline, meta


def _check_reachable(address: str | None, seconds: float = 5.0) -> None:
    """A HOST:PORT that nothing answers on is an error now (Ray itself would retry for minutes)."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=seconds):
            pass
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"--address {address}: no Ray cluster answers there ({exc}); start one with "
                           f"`ray start --head --port {port}` on that node, or leave --address out for a local "
                           "Ray") from None


def _gather(ray: Any, refs: list[Any], what: str, progress: bool) -> list[Any]:
    """The tasks' results in submission order, with a progress bar. When tasks fail, the error of
    the earliest one in that order is raised as itself (a bad line names its file and line, and the
    first bad line of the input, as with the local engine); the tasks after it are cancelled."""
    position = {ref: k for k, ref in enumerate(refs)}
    failed: dict[int, BaseException] = {}
    with tqdm(total=len(refs), desc=what, unit=" tasks", disable=not progress) as bar:
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            try:
                ray.get(done)
            except ray.exceptions.RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                k = position[done[0]]
                failed[k] = cause if isinstance(cause, BaseException) else exc
                for ref in [r for r in pending if position[r] > k]:  # (their errors would come later)
                    ray.cancel(ref, force=True)
                pending = [r for r in pending if position[r] < k]
            bar.update(len(done))
    if failed:
        raise failed[min(failed)] from None
    return ray.get(refs)


# the tasks (plain functions: ray.remote wraps them in the driver) ----------------------------

def _count(piece: Piece, schema: Any, bad_lines: str, rows: bool, folder: Path) -> tuple[int, int]:
    """(rows, lines) of a piece: its rows when asked (a parse), the newlines of its bytes."""
    n = 0
    if rows:
        copy = piece_file(piece, folder)
        try:
            n = sum(chunk.table.num_rows for chunk in RowReader([copy], schema, bad_lines=bad_lines))
        except DataError:
            n = -1  # (the first pass meets it again and names the file's line, which it knows)
        finally:
            remove_copy(piece, copy)
    return n, count_lines(piece)


def _first_pass(opts: Any, inputs: StoreInputs, pipeline: Any, item: tuple[Any, ...], train_start: int,
                first_line: int, folder: Path) -> dict[str, Any]:
    """Pass 1 over one file or piece into ``folder`` (SPLIT/ arrays, tmp/); every count spilled at the end."""
    role, piece, fmt, schema = item
    tmp = folder / "tmp"
    tmp.mkdir(parents=True)
    accs = pipeline.accumulators()
    budget = vocab_budget(opts)
    copy = piece_file(piece, folder / "piece")
    lines = LineMap(piece, copy, first_line)
    with ThreadPoolExecutor(max_workers=1) as pool:  # (one core per task: Ray runs tasks side by side)
        first = FirstPass(opts, inputs, pipeline, accs, {s: folder / s for s in SPLITS}, tmp, pool, budget)
        first.train_rows_seen = train_start
        try:
            first.read(role, copy, fmt, schema)
        except DataError as exc:
            raise lines.error(exc) from None
        finally:
            first.close()
            remove_copy(piece, copy)
        first.spill()  # (the file's last epoch: the driver merges spilled counts only)
    return {"accs": accs, "rows": first.rows, "present": [s for s in SPLITS if s in first.writers],
            "epoch_starts": first.epoch_starts, "epochs": len(first.epoch_starts["train"]) - 1,
            "sources": first.source_meta, "skipped": lines.skipped(first.skipped)}


def _second_pass(folder: Path, present: list[str], layout: Any, finalizer: Any, n_tasks: int,
                 epoch_starts: dict[str, list[int]], epoch_offset: int) -> dict[str, Any]:
    with ThreadPoolExecutor(max_workers=1) as pool:
        stats = finalize_rows({s: folder / s for s in SPLITS}, folder / "tmp", present, layout, finalizer, pool,
                              False, n_tasks, epoch_starts, epoch_offset)
    shutil.rmtree(folder / "tmp", ignore_errors=True)
    return stats
