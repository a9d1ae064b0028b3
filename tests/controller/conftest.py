"""Fixtures for controller tests: a file store, the fake workloads on PYTHONPATH, cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from ctl_support import CONTROLLERS

from sailk8s.store.local import LocalStore

HERE = Path(__file__).resolve().parent


@pytest.fixture
def local_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Path]]:
    """Env for LocalBackend runs with the fake workloads (ctljobs); kills leftovers afterwards."""
    local = tmp_path / "local"
    monkeypatch.setenv("SAIL_LOCAL_DIR", str(local))
    monkeypatch.setenv("SAIL_JOBS_PACKAGE", "ctljobs")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])))
    monkeypatch.setenv("SAIL_PROGRESS_SECONDS", "0.2")
    monkeypatch.setenv("CTL_FAKE", "{}")
    CONTROLLERS.clear()
    yield {"local": local, "store": tmp_path / "store"}
    # Stop only the processes these tests started: controllers first (so none retries), then
    # the attempts, by the pids their records hold.
    for proc in CONTROLLERS:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    CONTROLLERS.clear()
    for rec in list(local.rglob("child.json")) + list(local.rglob("supervisor.json")):
        with contextlib.suppress(Exception):
            pid = int(json.loads(rec.read_text())["pid"])
            os.killpg(pid, signal.SIGKILL)
    # torchrun starts each rank in a session of its own: a rank whose launcher was killed
    # outlives its group. Every attempt process carries this test's SAIL_LOCAL_DIR.
    for pid in _started_under(local):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)


def _started_under(local: Path) -> list[int]:
    """Processes whose environment names `local` as SAIL_LOCAL_DIR (not this one)."""
    marker = f"SAIL_LOCAL_DIR={local}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


@pytest.fixture
def file_store(local_env: dict[str, Path]) -> LocalStore:
    return LocalStore(local_env["store"], durable=False)
