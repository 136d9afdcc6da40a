"""The encoding passes of ``ctrlab prepare`` (:func:`ctrlab.data.prepare.prepare` builds a whole
store with them, :mod:`ctrlab.data.append` a partition).

Pass 1 streams the raw rows once: each row gets its split (seeded, from its global row index,
so the split does not depend on chunk sizes), every column's encoder accumulator sees the
chunk (only training rows count towards the fit) and turns values into provisional codes,
which are written straight into each split's ``sparse.npy`` (raw numeric values go to a
temporary file). The encoders are then fitted, and pass 2 remaps the codes to final ids in
place and transforms the numeric values, with numpy alone. Memory holds a chunk or two plus
the vocabularies being counted, up to ``vocab_memory_mib``: past it their counts spill to disk in
epochs (:mod:`ctrlab.features.spill`), and pass 2 remaps each epoch's rows through its own table.
The temporary files are deleted at the end. The passes are pieces (:class:`FirstPass`,
:func:`finalize_rows`, :func:`summarize`) that :mod:`ctrlab.data.ray_engine` runs per shard too.
"""

from __future__ import annotations

import contextlib
import shutil
import threading
import time
from dataclasses import dataclass
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


@dataclass
class StoreInputs:
    """A store's checked inputs: per role its files (path, format, schema), how rows are split."""

    files: dict[str, list[tuple[Path, str, Schema]]]
    train_schema: Schema
    random_ratios: dict[str, float]
    split_method: str  # random | files | partition

    @property
    def tasks(self) -> list[str]:
        return list(self.train_schema.labels)


def store_inputs(opts: Any, partition: bool = False) -> StoreInputs:
    """Resolve and check ``opts``' inputs: every file's schema agrees with the training data's."""
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
    return StoreInputs(schemas, train_schema, random_ratios, split_method)


def new_pipeline(opts: Any, inputs: StoreInputs) -> FeaturePipeline:
    schema = inputs.train_schema
    return FeaturePipeline.from_options(list(schema.dense), list(schema.sparse), opts.categorical, opts.numeric,
                                        opts.columns, lists=schema.lists)


class FirstPass:
    """Pass 1 of a store (or of a shard of one, ``ctrlab.data.ray_engine``): reads input files chunk
    by chunk, gives each row its split (seeded, from its global index over the training files'
    rows: ``train_rows_seen``, which a shard starts where its file starts), feeds every column to its
    accumulator and writes each split's provisional codes, labels, raw numeric values and list
    weights into ``split_dirs[split]`` (arrays) and ``tmp_dir`` (temporaries). When the vocabularies'
    counting state passes ``budget`` bytes they spill (``features/spill.py``): ``epoch_starts``
    holds, per split, the first row of each counting epoch."""

    def __init__(self, opts: Any, inputs: StoreInputs, pipeline: FeaturePipeline, accs: dict[str, Any],
                 split_dirs: dict[str, Path], tmp_dir: Path, pool: ThreadPoolExecutor, budget: int):
        self.opts, self.inputs, self.pipeline, self.accs = opts, inputs, pipeline, accs
        self.split_dirs, self.tmp_dir, self.pool, self.budget = split_dirs, tmp_dir, pool, budget
        self.locks = {id(acc): threading.Lock() for acc in accs.values()}
        self.spillable = [acc for acc in {id(a): a for a in accs.values()}.values() if hasattr(acc, "spill")]
        self.list_blocks = _list_blocks(pipeline)
        self.weight_first = _weight_blocks(pipeline)  # weighted list column -> its first weight column
        self.weight_width = sum(int(column.max_length) for column in pipeline.list_inputs
                                if column.name in self.weight_first)
        self.width = len(pipeline.sparse_outputs) + sum(column.max_length for column, _ in self.list_blocks)  # type: ignore[misc]
        n_tasks = len(inputs.tasks)
        self.label_shape = (n_tasks,) if n_tasks > 1 else ()  # (several labels: one column per task)
        self.writers: dict[str, dict[str, NpyAppender]] = {}
        self.split_rows = dict.fromkeys(SPLITS, 0)  # rows written to each split so far
        self.epoch_starts: dict[str, list[int]] = {s: [0] for s in SPLITS}
        self.spilled: list[list[Path]] = [[] for _ in self.spillable]  # per spillable accumulator: its epochs
        self.skipped = SkipReport()
        self.source_meta: dict[str, list[dict[str, Any]]] = {}
        self.rows = 0
        self.train_rows_seen = 0
        self.write_pool = ThreadPoolExecutor(max_workers=1)
        self.pending: list[Any] = []

    def writer(self, split_name: str) -> dict[str, NpyAppender]:
        # pass 1 writes each split's provisional sparse codes straight into its sparse.npy (pass 2
        # remaps them in place), its labels into label.npy, and its raw dense values to a temp file
        if split_name not in self.writers:
            self.split_dirs[split_name].mkdir(exist_ok=True, parents=True)
            self.writers[split_name] = {
                "sparse": NpyAppender(self.split_dirs[split_name] / "sparse.npy", np.int32, (self.width,)),
                "label": NpyAppender(self.split_dirs[split_name] / "label.npy", np.uint8, self.label_shape),
                "raw_dense": NpyAppender(self.tmp_dir / f"{split_name}.dense.npy", np.float64,
                                         (len(self.pipeline.dense_outputs),)),
                "weights": NpyAppender(self.tmp_dir / f"{split_name}.weights.npy", np.float32, (self.weight_width,)),
            }
        return self.writers[split_name]

    def read(self, role: str, path: Path, fmt: str, schema: Schema, bar: Any = None) -> None:
        """All rows of one input file of ``role`` (train / valid / test)."""
        reader = RowReader([path], schema, bad_lines=self.opts.bad_lines)
        for chunk in reader:
            self._chunk(role, chunk.table)
            if bar is not None:
                bar.update(chunk.table.num_rows)
        self.skipped.merge_from(reader.skipped)
        self.source_meta.setdefault(role, []).extend(
            {"path": s.path, "format": fmt, "bytes": s.bytes, "sha256": s.sha256, "rows": s.rows,
             "skipped": s.skipped, **({"truncated": s.truncated} if s.truncated else {})}
            for s in reader.sources)

    def _chunk(self, role: str, table: Any) -> None:
        accs, pipeline, list_blocks, weight_first = self.accs, self.pipeline, self.list_blocks, self.weight_first
        sparse_out, dense_out, dense_in = pipeline.sparse_outputs, pipeline.dense_outputs, pipeline.dense_inputs
        n = table.num_rows
        if role == "train" and self.inputs.split_method == "random":
            split = assign_random_split(n, self.train_rows_seen, self.opts.seed, self.inputs.random_ratios)
            self.train_rows_seen += n
        else:
            split = np.full(n, SPLITS.index(role), dtype=np.uint8)
        train_mask = split == 0
        # rows of each split, so that every column worker scatters its codes straight into
        # per-split blocks (no extra copy of the chunk); column-major, so that a column's codes
        # land contiguously (the writer thread makes the rows contiguous)
        parts = {SPLITS[c]: np.flatnonzero(split == c) for c in np.unique(split)}
        codes = {s: np.empty((len(ix), self.width), dtype=np.int32, order="F") for s, ix in parts.items()}
        raw = {s: np.empty((len(ix), len(dense_out)), dtype=np.float64, order="F") for s, ix in parts.items()}
        weights = {s: np.empty((len(ix), self.weight_width), dtype=np.float32, order="F") for s, ix in parts.items()}

        def work_estimate(j: int) -> int:
            return -accs[sparse_out[j]].distinct_seen if j < len(sparse_out) else 0

        def encode(j: int) -> None:  # one column through its accumulator
            if j >= len(sparse_out) + len(dense_out):  # a list column: its block of codes
                column, start = list_blocks[j - len(sparse_out) - len(dense_out)]
                values, offsets = list_values(table.column(column.name))
                value_mask = np.repeat(train_mask, np.diff(offsets))  # (count training rows)
                # (a shared vocabulary's accumulator also serves its own column, in another
                # task: the lock keeps the two updates apart)
                with self.locks[id(accs[column.name])]:
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
                with self.locks[id(accs[col])]:
                    values = accs[col].update(column_values(table, col, col in dense_in), train_mask)
                for s, ix in parts.items():
                    codes[s][:, j] = values[ix]
            else:
                k = j - len(sparse_out)
                values = accs[dense_out[k]].update(column_values(table, dense_out[k], True), train_mask)
                for s, ix in parts.items():
                    raw[s][:, k] = values[ix]

        # columns are independent and Arrow/numpy release the GIL: encode them in parallel longest
        # first (columns with the most distinct values), so that no thread is left finishing a big
        # column alone at the end of the chunk
        tasks = range(len(sparse_out) + len(dense_out) + len(list_blocks))
        list(self.pool.map(encode, sorted(tasks, key=work_estimate)))
        label = _labels(table, len(self.inputs.tasks))
        # writes go to a writer thread (file writes release the GIL), at most two chunks behind,
        # so the next chunk's encoding overlaps them
        while len(self.pending) > 2:
            self.pending.pop(0).result()
        blocks = [(self.writer(s), codes[s], label[ix], raw[s], weights[s]) for s, ix in parts.items()]
        self.pending.append(self.write_pool.submit(_append_blocks, blocks))
        for s, ix in parts.items():
            self.split_rows[s] += len(ix)
        self.rows += n
        if self.budget and self.spillable and sum(acc.nbytes() for acc in self.spillable) > self.budget:
            self.spill()

    def spill(self) -> None:
        """Every vocabulary writes its counting epoch to disk and starts the next one."""
        spillable, directory = self.spillable, self.tmp_dir
        list(self.pool.map(lambda k: spillable[k].spill(directory / f"vocab-{k}"), range(len(spillable))))
        for s in SPLITS:
            self.epoch_starts[s].append(self.split_rows[s])

    def close(self) -> None:
        """Wait for the writes and close the arrays (also after an error)."""
        try:
            for future in self.pending:
                future.result()
        finally:
            self.write_pool.shutdown(cancel_futures=True)
            for w in self.writers.values():
                for appender in w.values():
                    appender.close()


def _build_store(opts: Any, out: Path, progress: bool, *, pipeline: FeaturePipeline | None = None,
                 accumulators: Callable[[FeaturePipeline], dict[str, Any]] | None = None,
                 partition: bool = False) -> tuple[FeaturePipeline, dict[str, Any]]:
    """Parse, fit, encode and write a whole store into the (new, empty) directory ``out``.

    partition=True (``ctrlab.data.append``): every row of ``opts.train`` goes into one partition,
    whose arrays are written straight into ``out``, encoded through ``pipeline`` with the
    accumulators ``accumulators(pipeline)`` returns (growing vocabularies); nothing else is
    written there, and the partition's meta is returned with the pipeline."""
    started = time.perf_counter()
    inputs = store_inputs(opts, partition)
    if pipeline is None:
        pipeline = new_pipeline(opts, inputs)
    split_dirs = {s: (out if partition else out / s) for s in SPLITS}
    tmp_dir = out / ".prepare-tmp"
    tmp_dir.mkdir()
    accs = pipeline.accumulators() if accumulators is None else accumulators(pipeline)
    budget = vocab_budget(opts) if not partition else 0  # (appends grow in memory)
    bar = tqdm(desc="prepare: parse+fit", unit=" rows", unit_scale=True, disable=not progress, mininterval=0.5)
    pool = ThreadPoolExecutor(max_workers=available_cores())
    first = FirstPass(opts, inputs, pipeline, accs, split_dirs, tmp_dir, pool, budget)
    try:
        try:
            for role, items in inputs.files.items():
                for path, fmt, schema in items:
                    first.read(role, path, fmt, schema, bar)
        finally:
            bar.close()
            first.close()
        check_rows_read(first.rows, first.writers, inputs)
        timings = {"parse_and_count": time.perf_counter() - started}
        finalizer = pipeline.finish_fit(accs, pool.map)
        timings["fit"] = time.perf_counter() - started - timings["parse_and_count"]
        present = [s for s in SPLITS if s in first.writers]
        stats = finalize_rows(split_dirs, tmp_dir, present, pipeline, finalizer, pool, progress,
                              len(inputs.tasks), first.epoch_starts)
        timings["encode_and_write"] = time.perf_counter() - started - timings["parse_and_count"] - timings["fit"]
        meta = summarize(stats, pipeline, inputs.tasks)
        meta["timings"] = {**{k: round(v, 3) for k, v in timings.items()}, "count_epochs": len(first.epoch_starts["train"])}
    finally:
        pool.shutdown(cancel_futures=True)
        shutil.rmtree(tmp_dir, ignore_errors=True)

    elapsed = time.perf_counter() - started
    rows = first.rows
    if partition:
        meta.update({"sources": first.source_meta.get("train", []), "skipped": first.skipped.to_dict(),
                     "rows_read": rows, "seconds": round(elapsed, 3), "schema": inputs.train_schema.to_dict()})
        return pipeline, meta
    pipeline.save(out / "pipeline.json")
    meta.update(store_meta(opts, inputs, pipeline, first.source_meta, first.skipped, rows, elapsed))
    write_json_atomic(out / "meta.json", meta, indent=1)
    return pipeline, meta


def check_rows_read(rows: int, splits: Any, inputs: StoreInputs) -> None:
    """Some rows were read (``rows``), and some went to the train split (``splits``: those written)."""
    if rows == 0:
        raise ValueError(f"no rows read from {[str(p) for ps in inputs.files.values() for p, _, _ in ps]}")
    if "train" not in splits:
        raise ValueError(f"no training rows: none of the {rows} rows read from "
                         f"{[str(p) for p, _, _ in inputs.files['train']]} went to the train split")


def vocab_budget(opts: Any) -> int:
    """Bytes the vocabularies may count in before they spill (``data.vocab_memory_mib``; 0: never)."""
    return int(opts.vocab_memory_mib * (1 << 20))


def store_meta(opts: Any, inputs: StoreInputs, pipeline: FeaturePipeline, source_meta: dict[str, Any],
               skipped: SkipReport, rows: int, elapsed: float) -> dict[str, Any]:
    """What meta.json holds besides the splits' and fields' statistics (:func:`summarize`)."""
    return {
        "ctrlab_version": __version__,
        "format_version": 1,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "schema": inputs.train_schema.to_dict(),
        "sources": source_meta,
        "split": {"method": inputs.split_method,
                  "ratios": inputs.random_ratios if inputs.split_method == "random" else None, "seed": opts.seed},
        "skipped": skipped.to_dict(),
        "rows_read": rows,
        "seconds": round(elapsed, 3),
        "rows_per_second": round(rows / elapsed, 1) if elapsed > 0 else None,
        "spec": pipeline.spec.to_dict(),
    }


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


def _epoch_runs(starts: list[int], lo: int, hi: int) -> list[tuple[int, int, int]]:
    """Rows lo..hi-1 of a split as runs of one epoch each: (epoch, first, end) relative to lo."""
    runs = []
    for epoch, (a, b) in enumerate(zip(starts, starts[1:] + [hi])):
        a, b = max(a, lo), min(b, hi)
        if a < b:
            runs.append((epoch, a - lo, b - lo))
    return runs


def finalize_rows(dirs: dict[str, Path], tmp_dir: Path, present: list[str], pipeline: FeaturePipeline | Any,
                  finalizer: CodeFinalizer, pool: ThreadPoolExecutor, progress: bool, n_tasks: int,
                  epoch_starts: dict[str, list[int]], epoch_offset: int = 0) -> dict[str, dict[str, Any]]:
    """Pass 2: provisional codes -> ids in place in each sparse.npy; raw dense values -> dense.npy;
    per-split statistics (:func:`summarize` turns them into meta.json's). epoch_starts: per split,
    the first row of each vocabulary counting epoch (rows of epoch e hold its codes:
    ``finalizer.at_epoch(epoch_offset + e)``). pipeline: the fitted pipeline, or anything with its
    ``spec``, ``sparse_outputs`` and ``dense_outputs`` (a shard's task gets only those)."""
    dense_out = pipeline.dense_outputs
    sparse_out = pipeline.sparse_outputs
    spec = pipeline.spec
    width = spec.sparse_width  # single-valued columns, then the list blocks (not counted per column)
    present = [s for s in SPLITS if s in present]
    starts = np.cumsum([len(sparse_out)] + [f.length for f in spec.lists])
    list_spans = list(zip(starts[:-1].tolist(), starts[1:].tolist()))
    total = sum(NpyAppender.rows_in(dirs[s] / "label.npy") for s in present)
    bar = tqdm(total=total, desc="prepare: encode+write", unit=" rows", unit_scale=True, disable=not progress,
               mininterval=0.5)
    stats: dict[str, dict[str, Any]] = {}
    loaded: dict[int, CodeFinalizer] = {}  # the current epoch's finalizer

    def epoch_finalizer(epoch: int) -> CodeFinalizer:
        with load_lock:
            if epoch not in loaded:
                loaded[epoch] = finalizer.at_epoch(epoch_offset + epoch)
                if len(loaded) > 2:  # the oldest (the rows go through the epochs in order)
                    del loaded[next(iter(loaded))]
            return loaded[epoch]

    load_lock = threading.Lock()
    for s in present:
        # plain reads and writes, not memory maps: the store's pages stay out of this process's RSS
        n_rows = NpyAppender.rows_in(dirs[s] / "label.npy")
        starts_of = epoch_starts[s]
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
            st = {"rows": n_rows, "positives": np.zeros(n_tasks, np.int64), "labelled": np.zeros(n_tasks, np.int64),
                  "missing": np.zeros(len(sparse_out) + len(dense_out), np.int64),
                  "oov": np.zeros(len(sparse_out), np.int64), "list_filled": np.zeros(len(spec.lists), np.int64)}
            for lo in range(0, n_rows, PASS2_ROWS):
                hi = min(n_rows, lo + PASS2_ROWS)
                start = sparse_file.tell()
                block = np.fromfile(sparse_file, dtype=np.int32, count=(hi - lo) * width).reshape(hi - lo, -1)
                raw = np.fromfile(raw_file, dtype=np.float64, count=(hi - lo) * len(dense_out)).reshape(hi - lo, -1)
                label = np.fromfile(label_file, dtype=np.uint8, count=(hi - lo) * n_tasks).reshape(hi - lo, -1)
                dense = np.empty((hi - lo, spec.dense_width), dtype=np.float32)
                dense[:, len(dense_out):] = np.fromfile(weights_file, dtype=np.float32,
                                                        count=(hi - lo) * weight_width).reshape(hi - lo, -1)

                def finalize(rows: slice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
                    """One share of the block's rows: ids, numeric features, and their statistics."""
                    part = block[rows]
                    for epoch, a, b in _epoch_runs(starts_of, lo + rows.start, lo + rows.stop):
                        epoch_finalizer(epoch).ids(part[a:b])  # (a view: in place in block)
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
                    st["list_filled"] += np.asarray(filled, dtype=np.int64)
                _check_finite_features(dense[:, : len(dense_out)], raw, dense_out, s, lo)
                sparse_file.seek(start)
                block.tofile(sparse_file)
                dense_writer.append(dense)
                st["positives"] += (label == 1).sum(axis=0)
                st["labelled"] += (label != MISSING_LABEL).sum(axis=0)
                bar.update(hi - lo)
        stats[s] = st
    bar.close()
    return stats


def add_stats(total: dict[str, dict[str, Any]], more: dict[str, dict[str, Any]]) -> None:
    """Add one shard's per-split statistics (:func:`finalize_rows`) into ``total``."""
    for split, st in more.items():
        if split not in total:
            total[split] = {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in st.items()}
        else:
            for key, value in st.items():
                total[split][key] = total[split][key] + value


def summarize(stats: dict[str, dict[str, Any]], pipeline: FeaturePipeline, tasks: list[str]) -> dict[str, Any]:
    """meta.json's splits, vocabulary sizes and per-field statistics from :func:`finalize_rows`'."""
    present = [s for s in SPLITS if s in stats]
    sparse_out, dense_out, spec = pipeline.sparse_outputs, pipeline.dense_outputs, pipeline.spec
    list_filled = {s: stats[s]["list_filled"] for s in present}
    fields: dict[str, Any] = {}
    for j, col in enumerate(sparse_out):
        fields[col] = {
            "output": "sparse", "encoder": pipeline.encoders[col].kind, "vocab_size": spec.vocab_sizes[j],
            **_distinct(pipeline.encoders[col]),
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


def _distinct(encoder: Any) -> dict[str, int]:
    """A vocabulary's count of distinct values in the training rows, as fitted (``{}`` otherwise)."""
    vocab = getattr(encoder, "vocab", encoder)
    seen = getattr(vocab, "seen_", None)
    return {} if seen is None else {"distinct_train": seen}


def _rate(num: int | np.integer, den: int | np.integer) -> float:
    return round(float(num) / float(den), 6) if den else 0.0
