"""The prefetching worker keeps order and errors; the reaper kills helpers whose owner died."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from jobs.core.prefetch import prefetched
from jobs.core.reaper import _start_time

REPO = Path(__file__).resolve().parents[2]


def test_prefetched_keeps_order_and_runs_ahead_in_a_thread() -> None:
    seen: list[str] = []

    def prepare(x: int) -> int:
        seen.append(threading.current_thread().name)
        return x * 10

    out = list(prefetched(range(20), prepare, depth=3))
    assert out == [(i, i * 10) for i in range(20)]
    assert set(seen) == {"prefetch"}


def test_prefetched_stays_at_most_depth_ahead() -> None:
    drawn: list[int] = []

    def items():
        for i in range(100):
            drawn.append(i)
            yield i

    it = prefetched(items(), lambda x: x, depth=2)
    assert next(it) == (0, 0)
    time.sleep(0.3)
    assert len(drawn) <= 4  # one handed out, two waiting, one being put
    it.close()  # stops the worker


def test_prefetched_raises_the_workers_error_in_place() -> None:
    def items():
        yield 1
        yield 2
        raise ValueError("broken shard")

    it = prefetched(items(), lambda x: x, depth=2)
    assert next(it) == (1, 1) and next(it) == (2, 2)
    with pytest.raises(ValueError, match="broken shard"):
        next(it)


def test_prefetched_depth_zero_runs_inline() -> None:
    names: list[str] = []
    out = list(prefetched([1, 2], lambda x: names.append(threading.current_thread().name) or x, depth=0))
    assert out == [(1, 1), (2, 2)] and set(names) == {threading.current_thread().name}


OWNER = textwrap.dedent("""
    import subprocess, sys, time
    from jobs.core.reaper import child_pids, start_reaper
    # A helper that ignores SIGTERM, like vLLM's engine process.
    helper = subprocess.Popen([sys.executable, "-c",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)"])
    time.sleep(0.3)
    assert helper.pid in child_pids()
    start_reaper([helper.pid])
    print(helper.pid, flush=True)
    time.sleep(600)
""")


def state_of(pid: int) -> str:
    """A process's state letter from /proc (Z: a zombie), or 'gone'."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def test_reaper_kills_helpers_of_a_killed_owner() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    owner = subprocess.Popen([sys.executable, "-c", OWNER], env=env, stdout=subprocess.PIPE, text=True)
    assert owner.stdout is not None
    helper = int(owner.stdout.readline())
    assert _start_time(helper) is not None
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=60)
    deadline = time.monotonic() + 120  # a hang guard: the loop ends as soon as the helper is gone
    while time.monotonic() < deadline:
        if state_of(helper) in ("gone", "Z"):  # a zombie waits for init to reap it: it no longer runs
            break
        time.sleep(0.1)
    else:
        os.kill(helper, signal.SIGKILL)
        pytest.fail("the helper outlived its owner")
