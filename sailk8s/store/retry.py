"""The one retry helper for store calls: exponential backoff with full jitter, bounded total time."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

import structlog
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)
from tenacity.stop import stop_base

from sailk8s.errors import StoreUnavailable

T = TypeVar("T")

log = structlog.get_logger(__name__)

# First backoff is up to INITIAL_WAIT seconds, doubling per failure up to MAX_WAIT.
INITIAL_WAIT = 0.2
MAX_WAIT = 8.0


def call_with_retry(
    fn: Callable[[], T],
    *,
    is_transient: Callable[[BaseException], bool],
    deadline_s: float,
    what: str,
    initial_wait: float = INITIAL_WAIT,
    max_wait: float = MAX_WAIT,
    describe: Callable[[BaseException | None], str] | None = None,
    give_up: Callable[[BaseException, float], str | None] | None = None,
) -> T:
    """Run fn, retrying transient failures until deadline_s seconds have passed since the first try.

    `what` names the operation for messages (endpoint and key, never credentials); `describe`
    renders an error for them (default: one_line). A permanent error propagates unchanged at
    once; when time runs out, StoreUnavailable names `what`, the attempts and the last cause.
    `give_up(err, elapsed)` may end the retries early: the reason it returns joins the message.
    """
    start = time.monotonic()
    explain = describe or one_line

    def before_sleep(state: RetryCallState) -> None:
        err = state.outcome.exception() if state.outcome else None
        log.warning("store call failed, retrying", what=what, attempt=state.attempt_number,
                    wait_s=round(state.upcoming_sleep, 3), error=explain(err))

    backoff = wait_random_exponential(multiplier=initial_wait, max=max_wait)

    def wait(state: RetryCallState) -> float:
        # Never sleep past the deadline: the last try happens at the deadline, so the total
        # time stays within deadline_s plus one (timeout-bounded) attempt.
        remaining = deadline_s - (time.monotonic() - start)
        return max(0.0, min(backoff(state), remaining))

    early: list[str] = []

    class StopEarly(stop_base):
        def __call__(self, state: RetryCallState) -> bool:
            err = state.outcome.exception() if state.outcome else None
            reason = give_up(err, time.monotonic() - start) if give_up and err is not None else None
            if reason:
                early.append(reason)
            return reason is not None

    retrying = Retrying(
        stop=stop_after_delay(max(deadline_s, 0.0)) | StopEarly(),
        wait=wait,
        retry=retry_if_exception(is_transient),
        before_sleep=before_sleep,
        reraise=True,
    )
    attempts = 0

    def counted() -> T:
        nonlocal attempts
        attempts += 1
        return fn()

    try:
        return retrying(counted)
    except BaseException as err:
        if not is_transient(err):
            raise
        elapsed = time.monotonic() - start
        why = f" ({early[0]})" if early else ""
        raise StoreUnavailable(
            f"{what}: gave up after {attempts} attempt(s) in {elapsed:.1f}s{why}: {explain(err)}"
        ) from err


def one_line(err: BaseException | None) -> str:
    """A short single-line description of an exception for messages and logs."""
    if err is None:
        return "unknown error"
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(err).__name__}: {text}"
