"""Killing a workload at an exact point: it stops itself (SIGSTOP) right after a given store write.

A test that kills a job "after its k-th marker" by polling for the marker races the job: a busy
machine can let it write the rest, or finish, between two looks. Here the job itself stops right
after its `count`-th write to the local store whose path matches `pattern` (fnmatch, `*` spans
folders); the test waits for the stop and kills it there.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from sailk8s.testing.waiting import wait_for

_STOP_AFTER = """
import fnmatch, os, runpy, signal, sys
import sailk8s.store.local as local
pattern, count, module = sys.argv[1], int(sys.argv[2]), sys.argv[3]
written = []
real = local.write_atomic
def write_atomic(path, *args, **kwargs):
    result = real(path, *args, **kwargs)
    if fnmatch.fnmatch(str(path), pattern):
        written.append(path)
        if len(written) == count:
            os.kill(os.getpid(), signal.SIGSTOP)
    return result
local.write_atomic = write_atomic
sys.argv = [module]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def start_stopping_after(env: dict[str, str], pattern: str, count: int, module: str,
                         cwd: str | os.PathLike[str] | None = None) -> subprocess.Popen[str]:
    """Start `python -m module`; it stops itself after its `count`-th local-store write matching
    `pattern` (the store must be a file:// store; output captured, text)."""
    return subprocess.Popen([sys.executable, "-c", _STOP_AFTER, pattern, str(count), module], env=env,
                            cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def kill_once_stopped(proc: subprocess.Popen[str], what: str, timeout: float = 300.0) -> str:
    """Wait until the job stopped itself (or ended), SIGKILL it, check that the kill is what ended
    it, and return its output."""

    def state() -> str:
        try:
            return Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return "gone"

    wait_for(lambda: proc.poll() is not None or state() == "T", timeout=timeout,
             what=f"the job to stop ({what})")
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
    out, _ = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"{what}: the job ended before its stop point\n{out[-3000:]}"
    return out
