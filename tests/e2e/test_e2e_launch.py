"""jobs.launch (the pods' torchrun) exits with the failed rank's own code, which torchrun alone loses."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import ROOT, sail_env

from sailk8s.backends.kubernetes.manifest import build_pytorchjob
from sailk8s.exitcodes import FailureClass, classify_exit_code
from sailk8s.spec import parse_pipeline

RANKS = """
import os, signal, sys, time
rank, mode = int(os.environ["RANK"]), sys.argv[1]
if mode == "exit3" and rank == 1:
    sys.exit(3)
if mode == "kill" and rank == 0:
    os.kill(os.getpid(), signal.SIGKILL)
if mode != "ok":
    time.sleep(60)  # the other rank: torchrun stops it once its peer failed
"""


def launch(tmp_path: Path, mode: str, module: str = "jobs.launch") -> subprocess.CompletedProcess[str]:
    script = tmp_path / "ranks.py"
    script.write_text(RANKS)
    argv = [sys.executable, "-m", module, "--standalone", "--nproc-per-node=2", str(script), mode]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=sail_env(), cwd=ROOT)


@pytest.mark.slow
def test_launch_keeps_the_failed_ranks_exit_code(tmp_path: Path) -> None:
    assert launch(tmp_path, "ok").returncode == 0
    bad = launch(tmp_path, "exit3")
    assert bad.returncode == 3 and classify_exit_code(3) is FailureClass.PERMANENT, bad.stderr[-2000:]
    assert "rank 1 failed first, exiting with its code 3" in bad.stderr
    assert "exitcode" in bad.stderr  # torchrun's root-cause summary is still printed
    killed = launch(tmp_path, "kill")
    assert killed.returncode == 137 and classify_exit_code(137) is FailureClass.INFRA, killed.stderr[-2000:]
    # What the pods ran before: torchrun itself turns the permanent failure into an app one.
    plain = launch(tmp_path, "exit3", module="torch.distributed.run")
    assert plain.returncode == 1 and classify_exit_code(1) is FailureClass.APP


def test_pod_command_goes_through_the_launcher() -> None:
    pipeline = parse_pipeline({"run": "r1", "backend": "kubernetes", "store": "s3://bucket/x",
                               "stages": [{"name": "f", "kind": "filter", "resources": {"nodes": 2}}]})
    job = build_pytorchjob(pipeline, pipeline.stage("f"), 1)
    for replica in ("Master", "Worker"):
        (container,) = job["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]["containers"]
        assert container["command"][:3] == ["python", "-m", "jobs.launch"]
        assert container["command"][-2:] == ["-m", "jobs.filter"]
