"""Helpers for the training tests: run a stage as `python -m jobs.<kind>` with the env contract."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sailk8s.envcontract import stage_env
from sailk8s.spec import Pipeline

ROOT = Path(__file__).resolve().parents[2]


def stage_process_env(store: Path, run: str, stage: dict[str, Any], attempt: int = 1) -> dict[str, str]:
    """The env a backend would give one attempt of `stage` (a dict as in a pipeline file)."""
    pipeline = Pipeline.model_validate({"run": run, "store": f"file://{store}", "stages": [stage]})
    env = {**os.environ, **stage_env(pipeline, pipeline.stages[0], attempt)}
    env.update({"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "SAIL_LOG_FORMAT": "console",
                "SAIL_TMPDIR": str(store.parent / "tmp")})
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def run_stage(store: Path, stage: dict[str, Any], *, run: str = "t", attempt: int = 1,
              timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run one stage attempt to completion; returns the finished process (output captured)."""
    env = stage_process_env(store, run, stage, attempt)
    return subprocess.run([sys.executable, "-m", f"jobs.{stage['kind']}"], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def run_stage_torchrun(store: Path, stage: dict[str, Any], *, nproc: int = 2, run: str = "t",
                       timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run one stage attempt as `torchrun --standalone --nproc-per-node=N -m jobs.<kind>`."""
    env = stage_process_env(store, run, stage)
    torchrun = str(Path(sys.executable).parent / "torchrun")
    cmd = [torchrun, "--standalone", f"--nproc-per-node={nproc}", "-m", f"jobs.{stage['kind']}"]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def read_json(store: Path, key: str) -> Any:
    return json.loads((store / key).read_text())
