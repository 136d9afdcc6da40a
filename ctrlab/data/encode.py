"""The encoding passes of ``ctrlab prepare`` (:func:`ctrlab.data.prepare.prepare` builds a whole
store with them, :mod:`ctrlab.data.append` a partition).

Pass 1 streams the raw rows once: each row gets its split (seeded, from its global row index,
so the split does not depend on chunk sizes), every column's encoder accumulator sees the
chunk (only training rows count towards the fit) and turns values into provisional codes,
which are written straight into each split's ``sparse.npy`` (raw numeric values go to a
temporary file). The encoders are then fitted, and pass 2 remaps the codes to final ids in
place and transforms the numeric values, with numpy alone. Memory holds a chunk or two plus
the vocabularies being counted; the temporary files are deleted at the end.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np
from tqdm import tqdm

from .. import __version__
from ..hashing import GOLDEN, MASK64, mix64, uniform53
from ..fileio import write_json_atomic
from ..runtime import available_cores
from ..features.encoders import column_values
from ..features.lists import list_values, list_weights, padded
from ..features.pipeline import CodeFinalizer, FeaturePipeline
from ..fields import MISSING_ID, OOV_ID
from ..schema import LABEL, WEIGHTS_SUFFIX, Schema, task_column
from .formats import file_schema
from .readers import RowReader, SkipReport, resolve_inputs
from .store import MISSING_LABEL, SPLITS, NpyAppender

PASS2_ROWS = 1 << 18


def split_uniforms(row_index: np.ndarray, seed: int) -> np.ndarray:
    """A uniform [0, 1) number per global row index, from a splitmix64 hash of (seed, index).

    Counter-based, so a row's split depends only on its position and the seed."""
    with np.errstate(over="ignore"):
        z = row_index.astype(np.uint64) + np.uint64((seed * GOLDEN) & MASK64)
    return uniform53(mix64(z, out=z))


def assign_random_split(n: int, start: int, seed: int, ratios: dict[str, float]) -> np.ndarray:
    """Split codes (index into SPLITS) for rows start..start+n-1, drawn with the given ratios."""
    u = split_uniforms(np.arange(start, start + n, dtype=np.uint64), seed)
    names = [s for s in SPLITS if ratios.get(s, 0) > 0]
    total = sum(ratios[s] for s in names)
    edges = np.cumsum([ratios[s] / total for s in names])
    edges[-1] = 1.0
    which = np.searchsorted(edges, u, side="right")
    codes = np.array([SPLITS.index(s) for s in names], dtype=np.uint8)
    return codes[np.minimum(which, len(names) - 1)]


# what a store directory holds of its own; anything else found there is carried into its replacement
def _build_store(opts: Any, out: Path, progress: bool, *, pipeline: FeaturePipeline | None = None,
                 accumulators: Callable[[FeaturePipeline], dict[str, Any]] | None = None,
                 partition: bool = False) -> tuple[FeaturePipeline, dict[str, Any]]:
    """Parse, fit, encode and write a whole store into the (new, empty) directory ``out``.

    partition=True (``ctrlab.data.append``): every row of ``opts.train`` goes into one partition,
    whose arrays are written straight into ``out``, encoded through ``pipeline`` with the
    accumulators ``accumulators(pipeline)`` returns (growing vocabularies); nothing else is
    written there, and the partition's meta is returned with the pipeline."""
    started = time.perf_counter()
    roles = {"train": opts.train, "valid": opts.valid, "test": opts.test}
    sources = {role: resolve_inputs(paths) for role, paths in roles.items() if paths}
    if "train" not in sources:
        raise ValueError("prepare needs training data (data.train or an INPUT argument)")
    schemas: dict[str, list[tuple[Path, str, Schema]]] = {}
    for role, paths in sources.items():
        schemas[role] = [(p, *file_schema(p, opts.format, opts.schema)) for p in paths]
    train_schema = schemas["train"][0][2]
    for role, items in schemas.items():
        for path, fmt, schema in items:
            if schema.label is None:
                raise ValueError(f"{path}: {role} data needs a label column (format {fmt} has none)")
            several = len(train_schema.labels) > 1  # (one label: its name may differ by format, Label / label)
            if len(schema.labels) != len(train_schema.labels) or (several and schema.labels != train_schema.labels):
                raise ValueError(f"{path}: its label columns {list(schema.labels)} differ from the training "
                                 f"data's {list(train_schema.labels)}")
            if (schema.feature_columns, schema.lists) != (train_schema.feature_columns, train_schema.lists):
                raise ValueError(f"{path}: its columns {list(schema.feature_columns + schema.list_names)} differ "
                                 f"from the training data's {list(train_schema.feature_columns + train_schema.list_names)}")

    if pipeline is None:
        pipeline = FeaturePipeline.from_options(list(train_schema.dense), list(train_schema.sparse),
                                                opts.categorical, opts.numeric, opts.columns, lists=train_schema.lists)
    list_blocks = _list_blocks(pipeline)
    weight_first = _weight_blocks(pipeline)  # weighted list column -> its first weight column
    weight_width = sum(int(column.max_length) for column in pipeline.list_inputs if column.name in weight_first)
    random_ratios = {"train": opts.split[0]}
    if "valid" not in sources:
        random_ratios["valid"] = opts.split[1]
    if "test" not in sources:
        random_ratios["test"] = opts.split[2]
    split_method = "files" if len(random_ratios) == 1 else "random"
    if partition:
        if set(sources) != {"train"}:
            raise ValueError("a partition takes its rows from its input files alone (no valid/test files)")
        random_ratios, split_method = {"train": 1.0}, "partition"
    split_dirs = {s: (out if partition else out / s) for s in SPLITS}

    tmp_dir = out / ".prepare-tmp"
    tmp_dir.mkdir()
    accumulator_locks: dict[int, threading.Lock] = {}
    accs = pipeline.accumulators() if accumulators is None else accumulators(pipeline)
    accumulator_locks.update({id(acc): threading.Lock() for acc in accs.values()})
    width = len(pipeline.sparse_outputs) + sum(column.max_length for column, _ in list_blocks)  # type: ignore[misc]
    dense_in = pipeline.dense_inputs
    dense_out = pipeline.dense_outputs
    sparse_out = pipeline.sparse_outputs
    label_names = list(train_schema.labels)  # the tasks
    label_shape = (len(label_names),) if len(label_names) > 1 else ()  # (several labels: one column per task)
    # Pass 1 writes each split's provisional sparse codes straight into its sparse.npy (pass 2
    # remaps them in place), its labels into label.npy, and its raw dense values to a temp file.
    writers: dict[str, dict[str, NpyAppender]] = {}

    def writer(split_name: str) -> dict[str, NpyAppender]:
        if split_name not in writers:
            split_dirs[split_name].mkdir(exist_ok=True)
            writers[split_name] = {
                "sparse": NpyAppender(split_dirs[split_name] / "sparse.npy", np.int32, (width,)),
                "label": NpyAppender(split_dirs[split_name] / "label.npy", np.uint8, label_shape),
                "raw_dense": NpyAppender(tmp_dir / f"{split_name}.dense.npy", np.float64, (len(dense_out),)),
                "weights": NpyAppender(tmp_dir / f"{split_name}.weights.npy", np.float32, (weight_width,)),
            }
        return writers[split_name]

    skipped = SkipReport()
    source_meta: dict[str, list[dict[str, Any]]] = {}
    rows = 0
    train_rows_seen = 0  # global index over training-source rows, for the seeded split
    bar = tqdm(desc="prepare: parse+fit", unit=" rows", unit_scale=True, disable=not progress, mininterval=0.5)
    pool = ThreadPoolExecutor(max_workers=available_cores())
    write_pool = ThreadPoolExecutor(max_workers=1)
    pending_writes: list[Any] = []
    try:
        for role, items in schemas.items():
            for path, fmt, schema in items:
                reader = RowReader([path], schema, bad_lines=opts.bad_lines)
                for chunk in reader:
                    table = chunk.table
                    n = table.num_rows
                    if role == "train" and split_method == "random":
                        split = assign_random_split(n, train_rows_seen, opts.seed, random_ratios)
                        train_rows_seen += n
                    else:
                        split = np.full(n, SPLITS.index(role), dtype=np.uint8)
                    train_mask = split == 0
                    # rows of each split, so that every column worker scatters its codes straight
                    # into per-split blocks (no extra copy of the chunk); column-major, so that a
                    # column's codes land contiguously (the writer thread makes the rows contiguous)
                    parts = {SPLITS[c]: np.flatnonzero(split == c) for c in np.unique(split)}
                    codes = {s: np.empty((len(ix), width), dtype=np.int32, order="F") for s, ix in parts.items()}
                    raw = {s: np.empty((len(ix), len(dense_out)), dtype=np.float64, order="F") for s, ix in parts.items()}
                    weights = {s: np.empty((len(ix), weight_width), dtype=np.float32, order="F") for s, ix in parts.items()}

                    def work_estimate(j: int) -> int:
                        return -accs[sparse_out[j]].distinct_seen if j < len(sparse_out) else 0

                    def encode(j: int) -> None:  # one column through its accumulator
                        if j >= len(sparse_out) + len(dense_out):  # a list column: its block of codes
                            column, start = list_blocks[j - len(sparse_out) - len(dense_out)]
                            values, offsets = list_values(table.column(column.name))
                            value_mask = np.repeat(train_mask, np.diff(offsets))  # (count training rows)
                            # (a shared vocabulary's accumulator also serves its own column, in
                            # another task: the lock keeps the two updates apart)
                            with accumulator_locks[id(accs[column.name])]:
                                value_codes = accs[column.name].update(values, value_mask)
                            block = padded(value_codes.astype(np.int32), offsets, column.max_length, fill=0)[0]
                            for s, ix in parts.items():
                                codes[s][:, start:start + column.max_length] = block[ix]
                            if column.weight_separator is not None:  # its weights, where its ids are
                                first = weight_first[column.name]
                                block = list_weights(table.column(column.name + WEIGHTS_SUFFIX), column.max_length)
                                for s, ix in parts.items():
                                    weights[s][:, first:first + column.max_length] = block[ix]
                        elif j < len(sparse_out):
                            col = sparse_out[j]
                            with accumulator_locks[id(accs[col])]:
                                values = accs[col].update(column_values(table, col, col in dense_in), train_mask)
                            for s, ix in parts.items():
                                codes[s][:, j] = values[ix]
                        else:
                            k = j - len(sparse_out)
                            values = accs[dense_out[k]].update(column_values(table, dense_out[k], True), train_mask)
                            for s, ix in parts.items():
                                raw[s][:, k] = values[ix]

                    # columns are independent and Arrow/numpy release the GIL: encode them in parallel
                    # longest first (columns with the most distinct values), so that no thread is
                    # left finishing a big column alone at the end of the chunk
                    tasks = range(len(sparse_out) + len(dense_out) + len(list_blocks))
                    list(pool.map(encode, sorted(tasks, key=work_estimate)))
                    label = _labels(table, len(label_names))
                    # writes go to a writer thread (file writes release the GIL), at most two
                    # chunks behind, so the next chunk's encoding overlaps them
                    while len(pending_writes) > 2:
                        pending_writes.pop(0).result()
                    blocks = [(writer(s), codes[s], label[ix], raw[s], weights[s]) for s, ix in parts.items()]
                    pending_writes.append(write_pool.submit(_append_blocks, blocks))
                    rows += n
                    bar.update(n)
                skipped.merge_from(reader.skipped)
                source_meta.setdefault(role, []).extend(
                    {"path": s.path, "format": fmt, "bytes": s.bytes, "sha256": s.sha256, "rows": s.rows,
                     "skipped": s.skipped, **({"truncated": s.truncated} if s.truncated else {})}
                    for s in reader.sources)
        bar.close()
        for future in pending_writes:
            future.result()
        for w in writers.values():
            for appender in w.values():
                appender.close()
        if rows == 0:
            raise ValueError(f"no rows read from {[str(p) for ps in sources.values() for p in ps]}")
        if "train" not in writers:
            raise ValueError(f"no training rows: none of the {rows} rows read from "
                             f"{[str(p) for p in sources['train']]} went to the train split")
        finalizer = pipeline.finish_fit(accs, pool.map)
        meta = _finalize_splits(split_dirs, tmp_dir, list(writers), pipeline, finalizer, pool, progress, label_names)
    finally:
        write_pool.shutdown(cancel_futures=True)
        pool.shutdown(cancel_futures=True)
        bar.close()
        for w in writers.values():
            for appender in w.values():
                appender.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)

    elapsed = time.perf_counter() - started
    if partition:
        meta.update({"sources": source_meta.get("train", []), "skipped": skipped.to_dict(), "rows_read": rows,
                     "seconds": round(elapsed, 3), "schema": train_schema.to_dict()})
        return pipeline, meta
    pipeline.save(out / "pipeline.json")
    meta.update({
        "ctrlab_version": __version__,
        "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "schema": train_schema.to_dict(),
        "sources": source_meta,
        "split": {"method": split_method, "ratios": random_ratios if split_method == "random" else None,
                  "seed": opts.seed},
        "skipped": skipped.to_dict(),
        "rows_read": rows,
        "seconds": round(elapsed, 3),
        "rows_per_second": round(rows / elapsed, 1) if elapsed > 0 else None,
        "spec": pipeline.spec.to_dict(),
    })
    write_json_atomic(out / "meta.json", meta, indent=1)
    return pipeline, meta


def _list_blocks(pipeline: FeaturePipeline) -> list[tuple[Any, int]]:
    """(list column, its block's first column in the sparse matrix), in the pipeline's order."""
    blocks, start = [], len(pipeline.sparse_outputs)
    for column in pipeline.list_inputs:
        blocks.append((column, start))
        start += int(column.max_length)
    return blocks


def _labels(table: Any, n_tasks: int) -> np.ndarray:
    """A chunk's labels (checked 0/1 by the readers; NaN where an optional label is missing) ->
    uint8[n], or uint8[n, T] with MISSING_LABEL for the missing ones."""
    if n_tasks == 1:
        return table.column(LABEL).to_numpy().astype(np.uint8)
    out = np.empty((table.num_rows, n_tasks), dtype=np.uint8)
    for k in range(n_tasks):
        values = table.column(task_column(k)).to_numpy(zero_copy_only=False)
        out[:, k] = np.where(np.isnan(values), MISSING_LABEL, np.nan_to_num(values)).astype(np.uint8)
    return out


def _weight_blocks(pipeline: FeaturePipeline) -> dict[str, int]:
    """Per weighted list column, its first column in the block of weights (which follows the
    numeric features in dense.npy)."""
    blocks, start = {}, 0
    for column in pipeline.list_inputs:
        if column.weight_separator is not None:
            blocks[column.name] = start
            start += int(column.max_length)
    return blocks


def _append_blocks(blocks: list[tuple[dict[str, NpyAppender], np.ndarray, np.ndarray, np.ndarray, np.ndarray]]) -> None:
    for w, sparse, label, raw, weights in blocks:
        w["sparse"].append(sparse)
        w["label"].append(label)
        w["raw_dense"].append(raw)
        w["weights"].append(weights)


def _check_finite_features(dense: np.ndarray, raw: np.ndarray, names: list[str], split: str, first_row: int) -> None:
    """A finite raw value whose fitted transform overflows float32 (e.g. 1e39 passed through) would
    put inf into the store and NaN into every score: refuse it, naming the split row and field."""
    finite = np.isfinite(dense)
    if finite.all():
        return
    row, k = (int(i) for i in np.argwhere(~finite)[0])
    raise ValueError(f"{split} split, row {first_row + row} (0-based, in input order), field {names[k]!r}: "
                     f"value {raw[row, k]!r} encodes to a non-finite feature ({dense[row, k]}); "
                     "choose a transform that bounds it (log1p, log_square_bucket) or fix the input")


def _finalize_splits(dirs: dict[str, Path], tmp_dir: Path, present: list[str], pipeline: FeaturePipeline,
                     finalizer: CodeFinalizer, pool: ThreadPoolExecutor, progress: bool,
                     tasks: list[str]) -> dict[str, Any]:
    """Pass 2: provisional codes -> ids in place in each sparse.npy; raw dense values -> dense.npy;
    per-split statistics."""
    dense_out = pipeline.dense_outputs
    sparse_out = pipeline.sparse_outputs
    spec = pipeline.spec
    width = spec.sparse_width  # single-valued columns, then the list blocks (not counted per column)
    list_filled = {s: np.zeros(len(spec.lists), np.int64) for s in present}  # list values kept, per field
    present = [s for s in SPLITS if s in present]
    starts = np.cumsum([len(sparse_out)] + [f.length for f in spec.lists])
    list_spans = list(zip(starts[:-1].tolist(), starts[1:].tolist()))
    total = sum(NpyAppender.rows_in(dirs[s] / "label.npy") for s in present)
    bar = tqdm(total=total, desc="prepare: encode+write", unit=" rows", unit_scale=True, disable=not progress,
               mininterval=0.5)
    stats: dict[str, dict[str, Any]] = {}
    for s in present:
        # plain reads and writes, not memory maps: the store's pages stay out of this process's RSS
        n_rows = NpyAppender.rows_in(dirs[s] / "label.npy")
        with contextlib.ExitStack() as files:  # closed on errors too
            sparse_file = files.enter_context(open(dirs[s] / "sparse.npy", "r+b"))
            label_file = files.enter_context(open(dirs[s] / "label.npy", "rb"))
            raw_file = files.enter_context(open(tmp_dir / f"{s}.dense.npy", "rb"))
            weights_file = files.enter_context(open(tmp_dir / f"{s}.weights.npy", "rb"))
            for fh in (sparse_file, label_file, raw_file, weights_file):
                fh.seek(NpyAppender.HEADER_BYTES)
            # the numeric features, then the weighted list fields' weights (FeatureSpec.dense_width)
            weight_width = spec.dense_width - len(dense_out)
            dense_writer = NpyAppender(dirs[s] / "dense.npy", np.float32, (spec.dense_width,))
            files.callback(dense_writer.close)
            st = {"rows": n_rows, "positives": np.zeros(len(tasks), np.int64), "labelled": np.zeros(len(tasks), np.int64),
                  "missing": np.zeros(len(sparse_out) + len(dense_out), np.int64),
                  "oov": np.zeros(len(sparse_out), np.int64)}
            for lo in range(0, n_rows, PASS2_ROWS):
                hi = min(n_rows, lo + PASS2_ROWS)
                start = sparse_file.tell()
                block = np.fromfile(sparse_file, dtype=np.int32, count=(hi - lo) * width).reshape(hi - lo, -1)
                raw = np.fromfile(raw_file, dtype=np.float64, count=(hi - lo) * len(dense_out)).reshape(hi - lo, -1)
                label = np.fromfile(label_file, dtype=np.uint8, count=(hi - lo) * len(tasks)).reshape(hi - lo, -1)
                dense = np.empty((hi - lo, spec.dense_width), dtype=np.float32)
                dense[:, len(dense_out):] = np.fromfile(weights_file, dtype=np.float32,
                                                        count=(hi - lo) * weight_width).reshape(hi - lo, -1)

                def finalize(rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                    """One share of the block's rows: ids, numeric features, and their statistics."""
                    part = block[rows]
                    finalizer.ids(part)  # (a view: in place in block)
                    finalizer.features(raw[rows], dense[rows, : len(dense_out)])  # overflows: _check_finite_features reports them
                    single = part[:, : len(sparse_out)]
                    filled = [int(np.count_nonzero(part[:, a:b])) for a, b in list_spans]
                    return ((single == MISSING_ID).sum(axis=0), np.isnan(raw[rows]).sum(axis=0),
                            (single == OOV_ID).sum(axis=0), filled)

                cut = (hi - lo) // 2  # two shares: both cores work on one block
                for missing_sparse, missing_dense, oov, filled in pool.map(finalize, [slice(0, cut), slice(cut, hi - lo)]):
                    st["missing"][: len(sparse_out)] += missing_sparse
                    st["missing"][len(sparse_out):] += missing_dense
                    st["oov"] += oov
                    list_filled[s] += np.asarray(filled, dtype=np.int64)
                _check_finite_features(dense[:, : len(dense_out)], raw, dense_out, s, lo)
                sparse_file.seek(start)
                block.tofile(sparse_file)
                dense_writer.append(dense)
                st["positives"] += (label == 1).sum(axis=0)
                st["labelled"] += (label != MISSING_LABEL).sum(axis=0)
                bar.update(hi - lo)
        stats[s] = st
    bar.close()

    fields: dict[str, Any] = {}
    for j, col in enumerate(sparse_out):
        fields[col] = {
            "output": "sparse", "encoder": pipeline.encoders[col].kind, "vocab_size": spec.vocab_sizes[j],
            "missing_rate": {s: _rate(stats[s]["missing"][j], stats[s]["rows"]) for s in present},
            "oov_rate": {s: _rate(stats[s]["oov"][j], stats[s]["rows"] - stats[s]["missing"][j]) for s in present},
        }
    for j, col in enumerate(dense_out):
        fields[col] = {
            "output": "dense", "encoder": pipeline.encoders[col].kind,
            "missing_rate": {s: _rate(stats[s]["missing"][len(sparse_out) + j], stats[s]["rows"]) for s in present},
        }
    for k, listed in enumerate(spec.lists):
        fields[listed.name] = {
            "output": "list", "kind": listed.kind, "length": listed.length, "vocab_size": listed.vocab_size,
            "shares": listed.shares, "pooling": listed.pooling, **({"weighted": True} if listed.weighted else {}),
            "mean_length": {s: _rate(list_filled[s][k], stats[s]["rows"]) for s in present},
        }
    splits = {s: {"rows": stats[s]["rows"], "positives": int(stats[s]["positives"][0]),
                  "positive_rate": _rate(stats[s]["positives"][0], stats[s]["labelled"][0])} for s in present}
    if len(tasks) > 1:  # (the split's positives above are the first task's; every task's here)
        for s in present:
            splits[s]["tasks"] = {
                task: {"labelled": int(stats[s]["labelled"][k]), "positives": int(stats[s]["positives"][k]),
                       "positive_rate": _rate(stats[s]["positives"][k], stats[s]["labelled"][k])}
                for k, task in enumerate(tasks)}
    return {
        **({"tasks": tasks} if len(tasks) > 1 else {}),
        "splits": splits,
        "vocab_sizes": dict(zip(sparse_out, spec.vocab_sizes)),
        "fields": fields,
    }


def _rate(num: int | np.integer, den: int | np.integer) -> float:
    return round(float(num) / float(den), 6) if den else 0.0
