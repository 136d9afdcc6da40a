"""Behaviour histories from an interaction log (issue 15): ``ctrlab data history``.

A log of interactions (one row per user, item and time, e.g. torch-rechub's Amazon Electronics
sample ``user_id,item_id,time,cate_id``) has no label and no history column. This turns it into
rows a sequence model trains on:

* every interaction after a user's first is a positive (label 1) whose target is that item and
  whose history is the user's items of strictly EARLIER times, oldest first, the most recent
  ``max_length`` of them: no later interaction, and none at the same time, leaks into a history;
* each positive gets ``negatives`` rows with the same history and a target drawn uniformly from
  the items of the whole log that this user never interacted with (label 0);
* a category column (optional) follows its item: ``hist_cate_id`` aligned with ``hist_item_id``
  and ``cate_id`` for the target (an item's category is the one the log gives it).

Output: a TSV with a header, ``label user_id item_id [cate_id] hist_item_id [hist_cate_id]``,
histories ``|``-joined, written whole or not at all. Read it with ``data.format: tsv`` and
``data.schema.lists`` (``hist_item_id: {kind: sequence, max_length: N, vocab_of: item_id}``).
The whole log is held in memory (a per-user pass in Python: logs of millions of rows, not
billions).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.csv as pa_csv

from ..fileio import atomic_write


def build_histories(source: str | os.PathLike, out: str | os.PathLike, *, user: str = "user_id",
                    item: str = "item_id", time: str = "time", category: str | None = "cate_id",
                    max_length: int = 50, negatives: int = 1, seed: int = 0) -> dict[str, Any]:
    """Write the rows described in the module docstring from the CSV log ``source`` to ``out``;
    returns counts (users, interactions, positives, negatives, rows)."""
    if max_length < 1 or negatives < 0:
        raise ValueError(f"max_length must be >= 1 and negatives >= 0, got {max_length} and {negatives}")
    table = pa_csv.read_csv(str(source), convert_options=pa_csv.ConvertOptions(
        column_types={user: "string", item: "string", **({category: "string"} if category else {})},
        strings_can_be_null=True))  # (an empty value is null: refused below, by row)
    needed = [c for c in (user, item, time, category) if c]
    lacking = [c for c in needed if c not in table.column_names]
    if lacking:
        raise ValueError(f"{source}: no column(s) {lacking}; its columns are {table.column_names}")
    for column in needed:
        if table.column(column).null_count:
            raise ValueError(f"{source}: column {column!r} has empty values (row "
                             f"{int(np.flatnonzero(np.asarray(table.column(column).is_null()))[0]) + 2} of the file)")
    users = np.asarray(table.column(user).to_pylist(), dtype=object)
    items = np.asarray(table.column(item).to_pylist(), dtype=object)
    times = table.column(time).to_numpy()
    cates = np.asarray(table.column(category).to_pylist(), dtype=object) if category else None
    category_of = dict(zip(items, cates)) if cates is not None else {}
    pool = np.array(sorted(set(items)), dtype=object)
    rng = np.random.default_rng(seed)
    order = np.lexsort((times, users))  # by user, then time (ties keep the file's order)
    lines = ["\t".join(["label", user, item, *([category] if category else []), "hist_" + item,
                        *(["hist_" + category] if category else [])])]
    counts = {"users": 0, "interactions": len(order), "positives": 0, "negatives": 0}
    starts = np.flatnonzero(np.r_[True, users[order][1:] != users[order][:-1]])
    for lo, hi in zip(starts, np.r_[starts[1:], len(order)]):
        events = order[lo:hi]
        counts["users"] += 1
        seen = set(items[events])
        event_times = times[events]
        for k in range(1, len(events)):
            earlier = int(np.searchsorted(event_times, event_times[k], side="left"))  # strictly earlier times
            if earlier == 0:
                continue  # nothing happened before: no history to learn from
            history = items[events[max(0, earlier - max_length):earlier]].tolist()
            targets = [(1, items[events[k]])]
            for _ in range(negatives):
                candidate = _unseen(pool, seen, rng)
                if candidate is not None:
                    targets.append((0, candidate))
            for label, target in targets:
                fields = [str(label), users[events[k]], target]
                if category:
                    fields.append(category_of[target])
                fields.append("|".join(history))
                if category:
                    fields.append("|".join(category_of[h] for h in history))
                lines.append("\t".join(fields))
                counts["positives" if label else "negatives"] += 1
    atomic_write(out, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n", encoding="utf-8"))
    counts["rows"] = counts["positives"] + counts["negatives"]
    return counts


def _unseen(pool: np.ndarray, seen: set, rng: np.random.Generator, tries: int = 20) -> Any:
    """An item drawn uniformly from ``pool`` that is not in ``seen`` (None if ``tries`` draws fail)."""
    for _ in range(tries):
        candidate = pool[rng.integers(len(pool))]
        if candidate not in seen:
            return candidate
    return None
