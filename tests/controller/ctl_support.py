"""Helpers shared by the controller tests (a unique module name: conftest is ambiguous suite-wide)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

# Controller subprocesses started by a test (tests append), killed at teardown if still alive.
CONTROLLERS: list[subprocess.Popen[str]] = []


def set_fake(monkeypatch: pytest.MonkeyPatch, **stages: dict[str, object]) -> None:
    """Behaviour of the fake workloads per stage (see ctljobs/__init__.py)."""
    monkeypatch.setenv("CTL_FAKE", json.dumps(stages))


FAST_RETRY = {"max_attempts": 2, "backoff_base_seconds": 0.1, "backoff_cap_seconds": 0.2}


def write_pipeline(tmp: Path, store: Path, **overrides: dict[str, Any]) -> Path:
    stages = [
        {"name": "a", "kind": "ingest", "outputs": ["data/a"], "retry": FAST_RETRY},
        {"name": "b", "kind": "caption", "depends": ["a"], "inputs": ["data/a"], "outputs": ["data/b"],
         "config": {"preset": "tiny"},
         "retry": FAST_RETRY},
        {"name": "c", "kind": "filter", "outputs": ["data/c"], "retry": FAST_RETRY},
    ]
    for s in stages:
        s.update(overrides.get(str(s["name"]), {}))
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"run": "r1", "backend": "local", "store": f"file://{store}",
                                    "stages": stages}))
    return path


def sail(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "sailk8s", *args], capture_output=True, text=True,
                          timeout=timeout, env=os.environ.copy())
