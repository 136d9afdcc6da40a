"""Process-level settings shared by the commands that run models."""

from __future__ import annotations

import os
import queue
import threading
from typing import Any, Iterator


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity), not the machine's total."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def configure_torch_threads(threads: int | None = None) -> int:
    """Make torch's intra-op threads follow the available cores (or ``threads``)."""
    import torch

    n = threads or available_cores()
    torch.set_num_threads(n)
    return n


def prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run an iterator in a background thread, ``depth`` items ahead of the consumer.

    Arrow's parser releases the GIL, so parsing the next chunk overlaps the consumer's numpy
    work on this one. Exceptions reach the consumer; closing the consumer stops the producer.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        q.put((item, None), timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            q.put((done, None))
        except BaseException as exc:  # handed to the consumer
            q.put((done, exc))

    thread = threading.Thread(target=produce, name="ctrlab-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, exc = q.get()
            if item is done:
                if exc is not None:
                    raise exc
                return
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                q.get_nowait()
            except queue.Empty:
                thread.join(0.05)
