"""``ctrlab prepare``: raw logs -> fitted FeaturePipeline + encoded store, in one parse (the
passes: :mod:`ctrlab.data.encode`). All of it happens in a new directory beside the target,
swapped in whole when complete (see :func:`prepare`); a partitioned store (``--partition``) is
built by :mod:`ctrlab.data.append`, which also adds partitions to it.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..fileio import DiskFullError, is_disk_full, recover_dir, replace_dir, stale_siblings, sync_tree
from ..features.pipeline import CategoricalOptions, NumericOptions
from ..schema import GenericSchemaConfig
from .append import build_partitioned_store
from .encode import _build_store
from .store import SPLITS, Store


@dataclass
class PrepareOptions:
    """Everything prepare needs (built from the config's ``data`` and ``features`` sections)."""

    train: list[str]
    valid: list[str] = field(default_factory=list)
    test: list[str] = field(default_factory=list)
    format: str = "auto"
    schema: GenericSchemaConfig | None = None
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 2024
    bad_lines: str = "error"
    vocab_memory_mib: int = 512  # counting vocabularies past this spills to disk (features/spill.py); 0: never
    categorical: CategoricalOptions = field(default_factory=CategoricalOptions)
    numeric: NumericOptions = field(default_factory=NumericOptions)
    columns: dict[str, CategoricalOptions | NumericOptions] = field(default_factory=dict)


STORE_ENTRIES = frozenset({"meta.json", "pipeline.json", "config.yaml", ".prepare-tmp", ".ray-tmp", "partitions", "vocab",
                           ".append.lock", *SPLITS})


def prepare(opts: PrepareOptions, out_dir: str | os.PathLike, *, progress: bool = True,
            log: Callable[[str], None] = print, before_swap: Callable[[Path], None] | None = None,
            partition: str | None = None, unseen_partitions: int | None = None,
            engine: str = "local", address: str | None = None) -> Store:
    """Prepare a store from raw files; returns it (its ``meta`` holds the summary).

    partition: make a partitioned store whose first partition (of that name) is the whole input,
    to which ``ctrlab.data.append.append_partition`` adds more; unseen_partitions: its eviction
    policy (see ``ctrlab.data.append``). engine: ``local`` (this process) or ``ray`` (Ray tasks, the
    same store written as shards: :mod:`ctrlab.data.ray_engine`; ``address``: the cluster's).

    The store is built beside ``out_dir`` in ``.NAME.prepare-PID`` and swapped in whole at the end
    (``before_swap(build_dir)`` may add files to it first, e.g. config.yaml): an error, an interrupt
    or a full disk removes the temporaries and leaves a previous store at ``out_dir`` as it was."""
    if engine not in ("local", "ray"):
        raise ValueError(f"engine must be 'local' or 'ray', got {engine!r}")
    if engine == "ray" and partition is not None:
        raise ValueError("partitioned stores (--partition / --append) are built by the local engine only")
    out = _store_target(out_dir)
    recover_dir(out)  # a previous swap that died half-way
    for stale in stale_siblings(out, "prepare") + stale_siblings(out, "old"):  # of processes killed earlier
        shutil.rmtree(stale, ignore_errors=True)
    build = out.with_name(f".{out.name}.prepare-{os.getpid()}")
    shutil.rmtree(build, ignore_errors=True)
    try:
        build.mkdir(parents=True)
        if partition is not None:
            build_partitioned_store(opts, build, partition, unseen_partitions=unseen_partitions, progress=progress)
        elif engine == "ray":
            from .ray_engine import build_store_ray  # (Ray is an optional extra)

            build_store_ray(opts, build, progress, address)
        else:
            _build_store(opts, build, progress)
        if before_swap is not None:
            before_swap(build)
        sync_tree(build)
        _carry_over(out, build)
        replace_dir(build, out)
    except BaseException as exc:
        shutil.rmtree(build, ignore_errors=True)
        if is_disk_full(exc):  # name the store, not the temporary that no longer exists
            raise DiskFullError(out_dir) from exc
        raise
    return Store(out_dir)


def _store_target(out_dir: str | os.PathLike) -> Path:
    """The directory a store will be swapped into (absolute; a symlink's target)."""
    out = Path(os.path.abspath(out_dir))
    if out.is_symlink():
        out = out.resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out_dir}: exists and is not a directory; a store is a directory")
    if os.path.ismount(out):
        raise ValueError(f"{out_dir}: is a mount point, which cannot be swapped for a new store; "
                         "prepare into a directory inside it")
    cwd = Path.cwd().resolve()
    if cwd == out.resolve() or out.resolve() in cwd.parents:
        raise ValueError(f"{out_dir}: is (or holds) the current directory, which a new store would replace; "
                         "prepare into another directory")
    return out


def _carry_over(old: Path, new: Path) -> None:
    """Hard-link into the new store whatever else the old directory holds (a ledger of created
    files, data kept there), so that swapping the store keeps them."""
    if not old.is_dir():
        return
    for entry in old.iterdir():
        if entry.name in STORE_ENTRIES or (new / entry.name).exists():
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=os.link)
        else:
            os.link(entry, new / entry.name, follow_symlinks=False)


def format_summary(meta: dict[str, Any]) -> str:
    """A human summary of a store's metadata (what `ctrlab prepare` prints)."""
    lines = []
    total = sum(s["rows"] for s in meta["splits"].values())
    if meta.get("layout") == "partitions":  # ctrlab.data.append: the partitions, the last one's timing
        last = meta["partitions"][-1]
        evict = meta.get("eviction", {}).get("unseen_partitions")
        lines.append(f"store: {meta['rows_read']:,} rows in {len(meta['partitions'])} partitions, vocabulary version "
                     f"{meta['vocab_version']} (eviction: " + (f"ids unseen for {evict} partitions" if evict else "off")
                     + f"); {last['name']} took {last['seconds']:.1f} s")
        for p in meta["partitions"]:
            grew = sum(p.get("added", {}).values())
            retired, reused = sum(p.get("retired", {}).values()), sum(p.get("reused", {}).values())
            lines.append(f"  {p['name']:<12} {p['rows']:>12,} rows  positive rate {p['positive_rate']:.4f}  v{p['vocab_version']}: "
                         f"+{grew:,} ids, {retired:,} retired, {reused:,} reused")
    else:
        lines.append(f"store: {total:,} rows in {meta['seconds']:.1f} s ({meta['rows_per_second']:,.0f} rows/s)"
                     + (" with the Ray engine" if meta.get("engine") == "ray" else ""))
        t = meta.get("timings")
        if t:
            epochs = t["count_epochs"]
            lines.append(f"  passes: parse+count {t['parse_and_count']:.1f} s, fit {t['fit']:.1f} s, encode+write "
                         f"{t['encode_and_write']:.1f} s" + (f" (vocabulary counts spilled: {epochs} epochs)"
                                                            if epochs > 1 else ""))
    for name, s in meta["splits"].items():
        if "tasks" in s:  # several labels: each task's positive rate over its labelled rows
            rates = ", ".join(f"{t} {v['positive_rate']:.4f}" + (f" ({v['labelled']:,} labelled)"
                                                                  if v["labelled"] < s["rows"] else "")
                              for t, v in s["tasks"].items())
            lines.append(f"  {name:<5} {s['rows']:>12,} rows  positive rates: {rates}")
        else:
            lines.append(f"  {name:<5} {s['rows']:>12,} rows  positive rate {s['positive_rate']:.4f}")
    split = meta["split"]
    if split["method"] == "partitions":
        pass
    elif split["method"] == "random":
        ratios = ", ".join(f"{k} {v:g}" for k, v in split["ratios"].items())
        lines.append(f"  split: seeded random ({ratios}; seed {split['seed']})")
    else:
        lines.append("  split: from the given files")
    spec = meta["spec"]
    lines.append(f"features: {len(spec['dense_names'])} dense, {len(spec['sparse_names'])} sparse, "
                 f"{sum(spec['vocab_sizes']):,} ids in total")
    lines.append(f"  {'field':<8} {'encoder':<18} {'vocab':>10} {'missing':>8} {'OOV(valid)':>10} {'OOV(test)':>9}")
    for name, f in meta["fields"].items():
        if f["output"] == "list":  # a list field: its kind, length, table and mean length
            shares = f"shares {f['shares']}'s ids" if f["shares"] else f"{f['vocab_size']:,} ids"
            mean = f["mean_length"].get("train", next(iter(f["mean_length"].values()), 0.0))
            lines.append(f"  {name:<8} {f['kind']} of up to {f['length']} ({shares}; {f['pooling']} pooled); "
                         f"mean length {mean:.2f}")
            continue
        vocab = f"{f['vocab_size']:,}" if "vocab_size" in f else "-"
        oov = f.get("oov_rate", {})
        miss = f["missing_rate"].get("train", next(iter(f["missing_rate"].values()), 0.0))
        ov = f"{oov['valid']:.4f}" if "valid" in oov else "-"
        ot = f"{oov['test']:.4f}" if "test" in oov else "-"
        lines.append(f"  {name:<8} {f['encoder']:<18} {vocab:>10} {miss:>8.4f} {ov:>10} {ot:>9}")
    sk = meta["skipped"]
    if sk["total"]:
        lines.append(f"skipped lines: {sk['total']:,}")
        for reason, n in sk["by_reason"].items():
            lines.append(f"  {n:>10,}  {reason}")
        for ex in sk["examples"][:5]:
            lines.append(f"  e.g. {ex}")
    else:
        lines.append("skipped lines: 0")
    for role, items in meta["sources"].items():
        for s in items:
            lines.append(f"source ({role}): {s['path']} [{s['format']}] {s['bytes']:,} bytes, {s['rows']:,} rows, "
                         f"sha256 {str(s['sha256'])[:16]}...")
            for column, n in s.get("truncated", {}).items():
                lines.append(f"  {n:,} rows' {column} cut to its max_length (the most recent kept)")
    return "\n".join(lines)
