"""Runs a fake pod's container command as a local process and feeds its output to the pod log."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Mapping, Sequence

Rewriter = Callable[[list[str]], list[str]]


def default_rewrite(argv: list[str]) -> list[str]:
    """Run `torchrun`/`python` from this interpreter, as the image's entry points would."""
    if not argv:
        return argv
    head = os.path.basename(argv[0])
    if head == "torchrun":
        return [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    if head in ("python", "python3"):
        return [sys.executable, *argv[1:]]
    return argv


def single_node(argv: list[str]) -> list[str]:
    """Rewrite `--nnodes=N` / `--nnodes N` to one node (the master runs alone on this machine)."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(argv):
        if skip:
            skip = False
            continue
        if arg.startswith("--nnodes="):
            out.append("--nnodes=1")
        elif arg == "--nnodes" and i + 1 < len(argv):
            out += ["--nnodes", "1"]
            skip = True
        else:
            out.append(arg)
    return out


def world_env(env: Mapping[str, str], port: int, *, one_node: bool) -> dict[str, str]:
    """What a pod's env becomes on this machine: the master at 127.0.0.1:`port` and, when the
    master runs alone (`one_node`), a one-node world of PET_NPROC_PER_NODE ranks."""
    out = {"MASTER_ADDR": "127.0.0.1", "PET_MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(port), "PET_MASTER_PORT": str(port)}
    if one_node:
        nproc = env.get("PET_NPROC_PER_NODE", "1")
        out.update({"WORLD_SIZE": nproc if nproc.isdigit() else "1", "PET_NNODES": "1",
                    "RANK": "0", "PET_NODE_RANK": "0"})
    return out


class PodProcess:
    """One container's process: output goes line by line to `on_output`, exit to `returncode`."""

    def __init__(
        self, argv: Sequence[str], env: Mapping[str, str], cwd: str | None, on_output: Callable[[bytes], None]
    ) -> None:
        self.argv = list(argv)
        self._on_output = on_output
        self._proc = subprocess.Popen(  # the pod's own command, as a kubelet runs it
            self.argv,
            env=dict(env),
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # own group: torchrun's children die too
        self._reader = threading.Thread(target=self._pump, name=f"pod-log-{self._proc.pid}", daemon=True)
        self._reader.start()

    def _pump(self) -> None:
        assert self._proc.stdout is not None
        for line in iter(self._proc.stdout.readline, b""):
            self._on_output(line)
        self._proc.stdout.close()

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def oom_killed(self) -> bool:
        """A local process has no memory limit of its own: never OOMKilled by one."""
        return False

    def returncode(self) -> int | None:
        """None while running; the exit code (128+signal when killed) once finished and drained."""
        code = self._proc.poll()
        if code is None:
            return None
        self._reader.join(timeout=5)
        return 128 - code if code < 0 else code

    def pause(self, paused: bool = True) -> None:
        """SIGSTOP (or SIGCONT) the whole process group: a test's gate, holding the pod at a
        point it chose while it stays Running."""
        if self._proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._proc.pid, signal.SIGSTOP if paused else signal.SIGCONT)

    def kill(self, grace: float = 2.0) -> None:
        """SIGTERM the process group, SIGKILL it after `grace` seconds."""
        if self._proc.poll() is not None:
            return
        try:
            os.killpg(self._proc.pid, signal.SIGTERM)
            os.killpg(self._proc.pid, signal.SIGCONT)  # a paused group must see its SIGTERM now
        except ProcessLookupError:
            return
        try:
            self._proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(self._proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            self._proc.wait(timeout=5)
