"""Helpers shared by the controller tests (a unique module name: conftest is ambiguous suite-wide)."""

from __future__ import annotations

import json
import subprocess

import pytest

# Controller subprocesses started by a test (tests append), killed at teardown if still alive.
CONTROLLERS: list[subprocess.Popen[str]] = []


def set_fake(monkeypatch: pytest.MonkeyPatch, **stages: dict[str, object]) -> None:
    """Behaviour of the fake workloads per stage (see ctljobs/__init__.py)."""
    monkeypatch.setenv("CTL_FAKE", json.dumps(stages))
