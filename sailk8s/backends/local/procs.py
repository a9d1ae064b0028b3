"""Local process liveness and killing, for the local backend and the store run lock (Linux /proc)."""

from __future__ import annotations

import contextlib
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


def descendants(pid: int) -> list[int]:
    """Every live process below pid (children first), from one scan of /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = [pid]
    while todo:
        kids = children.get(todo.pop(0), [])
        found += kids
        todo += kids
    return found


def kill_tree(pid: int, sig: int, *, tree: bool = True) -> None:
    """Signal pid's process group and, with `tree`, the group of every process below it.

    torchrun starts each rank in a session of its own, so signalling the launcher's group alone
    misses them. The tree is read before any signal: a dead parent's children are re-parented.
    """
    own = os.getpgrp()
    for target in [pid, *(descendants(pid) if tree else [])]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            group = os.getpgid(target)
            if group != own:  # never our own group (a caller that shares it)
                os.killpg(group, sig)
            else:
                os.kill(target, sig)
