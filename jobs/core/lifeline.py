"""A rank dies with its launcher: torchrun gives ranks sessions of their own, so they outlive a killed one."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with_launcher() -> None:
    """Under torchrun on Linux, ask the kernel to SIGKILL this process when its parent dies.

    Best effort (elsewhere a no-op): a rank left behind keeps writing shards nobody waits for,
    and holds its GPU memory, while the retried attempt runs beside it.
    """
    if not sys.platform.startswith("linux") or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
            return
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the launcher died before the request took effect
        os._exit(128 + int(signal.SIGKILL))
