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


def _identity(pid: int) -> tuple[str, str] | None:
    """(state, start time) from /proc/<pid>/stat, or None when the process is gone.

    The start time pairs with the pid to recognise the same process (a pid alone may be reused).
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return fields[0], fields[19]


def _start_time(pid: int) -> str | None:
    ident = _identity(pid)
    return None if ident is None else ident[1]


def _alive(pid: int, started: str | None) -> bool:
    """The same process still runs: a zombie (dead, not yet waited for by its parent) does not."""
    ident = _identity(pid)
    return ident is not None and ident[1] == started and ident[0] != "Z"


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
    """Every live descendant of this process (from /proc: no psutil needed)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                state, ppid = fields[0], int(fields[1])
            except (OSError, ValueError, IndexError):
                continue
            if state != "Z":  # a zombie has exited already
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
