"""Local process liveness, shared by the local backend and the store run lock (Linux /proc)."""

from __future__ import annotations

import os
from pathlib import Path


def proc_start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # Field 22; the command name (field 2) may contain spaces, so split after its ')'.
    return stat.rsplit(")", 1)[1].split()[19]


def pid_alive(pid: int, start_time: str | None = None) -> bool:
    """Whether pid runs and is the process we started (not a zombie, not a reused pid)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            return False
    except OSError:
        pass
    return start_time is None or proc_start_time(pid) in (None, start_time)
