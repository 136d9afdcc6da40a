"""Micro-batching of small /v1/predict requests: those that arrive within a short window are scored
in one :meth:`Predictor.predict` call and the scores split back (as Triton's dynamic batcher does;
by row: a multi-task bundle's float32[N, T] splits into each request's [n, T]).

A 5-row request spends most of its model time on per-call work (building the columns, one
onnxruntime run), so ten such requests scored together cost about what two cost alone. Every
request still gets exactly its own answer: the rows of a batch are scored together only when all
of them are valid; when the joint call fails, each request is scored alone, so a bad row fails its
own request (with its own row numbers in the message) and no other. Requests are batched per
served model (a reload in the window starts a new group) and per row form (dicts or lists).
A row's score may differ from its score alone by a float32 ulp (onnxruntime's kernels round by
batch size): within the project's 1e-6, which is why batching is off unless configured.

The batcher runs on the event loop: :meth:`MicroBatcher.score` queues ``rows`` and waits; the
first request of a batch sets a timer of ``window_s``; the batch is scored when it fires or as
soon as it holds ``max_rows`` rows.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np

from .model import LoadedModel
from .scoring import score_rows

# rows scored in one call at most: beyond this a batch gains nothing and delays its first request
BATCH_MAX_ROWS = 1024


class MicroBatcher:
    """Queue of (model, rows, future) scored together after ``window_s`` seconds (see module doc)."""

    def __init__(self, window_s: float, max_rows: int = BATCH_MAX_ROWS):
        if window_s <= 0:
            raise ValueError(f"window must be > 0 seconds, got {window_s}")
        self.window_s = window_s
        self.max_rows = max_rows
        self._pending: list[tuple[LoadedModel, list[Any], asyncio.Future]] = []
        self._rows = 0
        self._timer: asyncio.TimerHandle | None = None

    async def score(self, loaded: LoadedModel, rows: list[Any]) -> tuple[np.ndarray, dict[str, float]]:
        """What ``score_rows(loaded, rows)`` returns or raises, scored with the requests that arrive
        in the same window (the timings are those of the joint call)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((loaded, rows, future))
        self._rows += len(rows)
        if self._rows >= self.max_rows:
            self._flush()
        elif self._timer is None:
            self._timer = loop.call_later(self.window_s, self._flush)
        return await future

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending, self._rows = self._pending, [], 0
        groups: dict[tuple[int, type], list[tuple[LoadedModel, list[Any], asyncio.Future]]] = {}
        for item in pending:
            if not item[2].done():  # (a client that went away cancels its future)
                groups.setdefault((id(item[0]), type(item[1][0])), []).append(item)
        for group in groups.values():
            _score_group(group)


def _score_group(group: list[tuple[LoadedModel, list[Any], asyncio.Future]]) -> None:
    """Score one model's requests together, or each alone when that fails (own errors)."""
    if len(group) > 1:
        try:
            probs, timing = score_rows(group[0][0], [row for _, rows, _ in group for row in rows])
        except Exception:  # some request holds a bad row: each is scored alone below
            pass
        else:
            start = 0
            for _, rows, future in group:
                future.set_result((probs[start:start + len(rows)], timing))
                start += len(rows)
            return
    for loaded, rows, future in group:
        try:
            future.set_result(score_rows(loaded, rows))
        except Exception as exc:  # the route's exception handlers answer it, as for an unbatched request
            future.set_exception(exc)
