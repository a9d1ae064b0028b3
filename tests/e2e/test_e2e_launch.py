"""jobs.launch (the pods' torchrun) exits with the failed rank's own code, which torchrun alone loses."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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


HANG = """
import os, pathlib, sys, time
from jobs.core.runtime import main

def work():
    pathlib.Path(sys.argv[1], f"rank-{os.environ['RANK']}.pid").write_text(str(os.getpid()))
    time.sleep(600)

main(work)
"""


def _alive(pid: int) -> bool:
    """Whether the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


@pytest.mark.slow
def test_ranks_die_with_a_killed_launcher(tmp_path: Path) -> None:
    """torchrun starts ranks in sessions of their own: without the parent-death signal a rank
    outlives a SIGKILLed launcher (the local backend's attempt, a pod's main process)."""
    script = tmp_path / "hang.py"
    script.write_text(HANG)
    argv = [sys.executable, "-m", "jobs.launch", "--standalone", "--nproc-per-node=2", str(script),
            str(tmp_path)]
    proc = subprocess.Popen(argv, env=sail_env(), cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while len(pids := sorted(tmp_path.glob("rank-*.pid"))) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, "the ranks never started"
            time.sleep(0.1)
        ranks = [int(p.read_text()) for p in pids]
        proc.kill()
        proc.wait(timeout=30)
        deadline = time.monotonic() + 60
        while any(_alive(pid) for pid in ranks) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in ranks if _alive(pid)]
    finally:
        for pid in [int(p.read_text()) for p in tmp_path.glob("rank-*.pid")]:
            if _alive(pid):
                os.kill(pid, 9)
        if proc.poll() is None:
            proc.kill()


def test_pod_command_goes_through_the_launcher() -> None:
    pipeline = parse_pipeline({"run": "r1", "backend": "kubernetes", "store": "s3://bucket/x",
                               "stages": [{"name": "f", "kind": "filter", "resources": {"nodes": 2}}]})
    job = build_pytorchjob(pipeline, pipeline.stage("f"), 1)
    for replica in ("Master", "Worker"):
        (container,) = job["spec"]["pytorchReplicaSpecs"][replica]["template"]["spec"]["containers"]
        assert container["command"][:3] == ["python", "-m", "jobs.launch"]
        assert container["command"][-2:] == ["-m", "jobs.filter"]
