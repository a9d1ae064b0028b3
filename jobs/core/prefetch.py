"""Run the CPU side of a batch loop ahead of the accelerator: a worker thread that stays `depth` ahead.

Image decoding (PIL releases the GIL) and tiling of batch k+1 then overlap generation on batch k,
so the GPU does not wait for the CPU between batches.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")
U = TypeVar("U")

_DONE = object()


class _Failed:
    def __init__(self, err: BaseException) -> None:
        self.err = err


def prefetched(items: Iterable[T], prepare: Callable[[T], U], depth: int = 2) -> Iterator[tuple[T, U]]:
    """(item, prepare(item)) in the items' order; the items are drawn and prepared in a worker thread.

    At most `depth` prepared items wait at a time. An exception in the worker (drawing or preparing)
    is raised here, at its place in the order. Closing the iterator early stops the worker.
    """
    if depth < 1:
        for item in items:
            yield item, prepare(item)
        return
    slots: queue.Queue[object] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(value: object) -> bool:
        while not stop.is_set():
            try:
                slots.put(value, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put((item, prepare(item))):
                    return
        except BaseException as err:  # handed to the consumer, raised there
            put(_Failed(err))
            return
        put(_DONE)

    worker = threading.Thread(target=work, name="prefetch", daemon=True)
    worker.start()
    try:
        while True:
            got = slots.get()
            if got is _DONE:
                return
            if isinstance(got, _Failed):
                raise got.err
            yield got  # type: ignore[misc]
    finally:
        stop.set()
        worker.join()
