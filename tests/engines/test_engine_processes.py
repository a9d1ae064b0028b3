"""No vLLM engine process survives its rank, however the rank ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

# A rank with vLLM's multiprocessing engine (its default on GPUs): the engine core runs in a
# process of its own, which ignores SIGTERM and would outlive a SIGKILLed rank without the reaper.
# vLLM spawns that process: the script guards its entry point, as `python -m jobs.<stage>` does.
RANK = """
import os, signal, sys
from jobs.core.reaper import child_pids
from jobs.vlm.engine import ModelSource, Sampling, open_engine
from PIL import Image

def engine_pids():
    out = []
    for p in child_pids():
        try:
            with open(f"/proc/{p}/cmdline", "rb") as f:
                if f.read().startswith(b"VLLM::"):
                    out.append(p)
        except OSError:
            pass
    return out

if __name__ == "__main__":
    source = ModelSource(model=sys.argv[1], dtype="float32", max_tiles=1)
    engine = open_engine("vllm", source, max_new_tokens=4)
    engine.generate([Image.new("RGB", (64, 64), "red")], ["Describe this image."], Sampling(max_new_tokens=4))
    print("engine", *engine_pids(), flush=True)
    if sys.argv[2] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    engine.close()
    print("left", *engine_pids(), flush=True)
"""


def state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"


def run_rank(export: Path, how: str, tmp: Path) -> tuple[int, dict[str, list[int]], str]:
    """Run the rank script; its return code, the pid lists it printed, and its output."""
    script = tmp / "rank.py"
    script.write_text(RANK)
    env = {**os.environ, "PYTHONPATH": str(REPO), "VLLM_ENABLE_V1_MULTIPROCESSING": "1",
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(script), str(export), how], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    pids = {line.split()[0]: [int(p) for p in line.split()[1:]] for line in proc.stdout.splitlines()
            if line.startswith(("engine", "left"))}
    return proc.returncode, pids, proc.stdout + proc.stderr[-3000:]


def gone_within(pids: list[int], seconds: float) -> list[int]:
    deadline = time.monotonic() + seconds
    alive = pids
    while alive and time.monotonic() < deadline:
        alive = [p for p in pids if state(p) not in ("gone", "Z")]
        time.sleep(0.2)
    return alive


def test_a_killed_rank_leaves_no_engine_process(export: Path, tmp_path: Path) -> None:
    code, pids, log = run_rank(export, "kill", tmp_path)
    assert code == -signal.SIGKILL, log
    assert pids.get("engine"), "expected an engine process in multiprocessing mode\n" + log
    survivors = gone_within(pids["engine"], 120)  # a hang guard: returns once they are gone
    for p in survivors:  # do not leak ~700 MB processes into the rest of the suite
        os.kill(p, signal.SIGKILL)
    assert survivors == []


def test_close_shuts_the_engine_processes_down(export: Path, tmp_path: Path) -> None:
    code, pids, log = run_rank(export, "close", tmp_path)
    assert code == 0, log
    assert pids.get("engine") and pids.get("left") == [], log
    assert gone_within(pids["engine"], 120) == []  # a hang guard: returns once they are gone
