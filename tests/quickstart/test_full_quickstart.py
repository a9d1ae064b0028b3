"""The README's main job: the full quickstart runs end to end and the model learns.

`make demo` runs `python -m sailk8s run -f examples/quickstart.yaml`; this test runs the same
file (copied, so its relative store lands in tmp_path) and holds it to issue 4's bar: every
stage succeeds and held-out digit accuracy is at least 0.8 (chance is about 0.1).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_quickstart_runs_every_stage_and_learns_the_digits(tmp_path: Path) -> None:
    pipeline = tmp_path / "quickstart.yaml"
    shutil.copy(ROOT / "examples" / "quickstart.yaml", pipeline)
    env = {**os.environ, "SAIL_LOCAL_DIR": str(tmp_path / "local")}
    proc = subprocess.run([sys.executable, "-m", "sailk8s", "run", "-f", str(pipeline)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert events[-1]["event"] == "run_finished" and events[-1]["status"] == "succeeded"
    succeeded = {e["stage"] for e in events if e["event"] == "stage_succeeded"}
    assert succeeded == {"ingest", "captioner", "recaption", "filter", "pretrain", "sft", "evaluate"}

    store = tmp_path / ".sail" / "store"
    report = json.loads((store / "runs" / "quickstart" / "evaluate" / "report.json").read_text())
    assert report["accuracy"] >= 0.8, report["summary"]
    assert "held-out accuracy" in proc.stderr  # the summary line a user sees at the end
    for stage in ("pretrain", "sft"):
        assert (store / "runs" / "quickstart" / stage / "artifacts" / "loss.png").stat().st_size > 0
    assert (store / "runs" / "quickstart" / "filter" / "artifacts" / "funnel.png").stat().st_size > 0
