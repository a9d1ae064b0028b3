"""Waiting on a condition in tests: poll it until it holds, with a generous hang guard.

A test waits on the condition it asserts, never on time: a busy machine only makes it slower.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def wait_for(
    cond: Callable[[], T],
    timeout: float = 120.0,
    what: str = "condition",
    interval: float = 0.05,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Poll `cond` until it returns something truthy, and return that.

    `timeout` is a hang guard, not a bound on how long things should take: the call returns as
    soon as the condition holds. Exceptions in `ignore` count as "not yet". AssertionError after
    `timeout`, naming `what` and the last value seen.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            last = value = cond()
        except ignore as exc:
            last = exc
        else:
            if value:
                return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def until_empty(probe: Callable[[], list[T]], timeout: float = 60.0, interval: float = 0.2) -> list[T]:
    """Poll `probe` until it returns an empty list or `timeout` passes; return what it last found
    (what is left over once asynchronous clean-up has had `timeout` seconds: a guard, not a bound)."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(interval)
