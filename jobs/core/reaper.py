"""Kill helper processes once the process that owns them is gone (`python -m jobs.core.reaper`).

vLLM's engine processes outlive a parent that dies without shutting them down, and ignore
SIGTERM; a rank that is SIGKILLed cannot clean up itself. A reaper, started beside them in a
session of its own, polls the owner and SIGKILLs the helpers when it disappears, then exits;
it also exits once the helpers are gone (the owner shut them down).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence

POLL_SECONDS = 0.5


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/<pid>/stat), or None when it is gone.

    Pairs with the pid to recognise the same process: a pid alone may be reused.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(pid: int, started: str | None) -> bool:
    now = _start_time(pid)
    return now is not None and now == started


def watch(owner: int, helpers: Sequence[int], poll: float = POLL_SECONDS) -> int:
    """Block until the owner or all helpers are gone; SIGKILL the remaining helpers in the first case."""
    owner_started = _start_time(owner)
    started = {pid: _start_time(pid) for pid in helpers}
    while True:
        alive = [pid for pid in helpers if _alive(pid, started[pid])]
        if not alive:
            return 0
        if not _alive(owner, owner_started):
            for pid in alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            return len(alive)
        time.sleep(poll)


def start_reaper(helpers: Sequence[int]) -> subprocess.Popen[bytes] | None:
    """Start a reaper for `helpers` owned by this process; None when there is nothing to watch."""
    if not helpers:
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.core.reaper", str(os.getpid()), *map(str, helpers)],
        start_new_session=True,  # not in the rank's process group: a group kill must not take it too
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def child_pids() -> list[int]:
    """Every descendant of this process (from /proc: no psutil needed)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            parents.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [os.getpid()]
    while todo:
        for child in parents.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


if __name__ == "__main__":
    owner_pid, *helper_pids = (int(a) for a in sys.argv[1:])
    watch(owner_pid, helper_pids)
