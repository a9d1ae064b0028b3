"""Kill a caption rank mid-shard, rerun, and prove no sample is lost or duplicated."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from captionkit import make_input_shards, open_file_store, read_outputs, stage_env

from jobs.vlm.model import save_model

REPO = Path(__file__).resolve().parents[2]

# A real caption rank that SIGKILLs itself once it has captioned KILL_AFTER samples: the kill
# lands inside a shard, after some batches are generated and before the shard is uploaded.
KILLER = """
import os, signal
import jobs.caption as c
from jobs.core.runtime import main
limit, seen = int(os.environ["KILL_AFTER"]), [0]
original = c.Captioner.caption_batch
def caption_then_maybe_die(self, batch, seed=None, **kwargs):
    original(self, batch, seed, **kwargs)
    seen[0] += len(batch)
    if seen[0] >= limit:
        os.kill(os.getpid(), signal.SIGKILL)
c.Captioner.caption_batch = caption_then_maybe_die
main(c.run)
"""


def spawn(env: dict[str, str], rank: int, world: int,
          kill_after: int | None = None) -> subprocess.Popen[bytes]:
    """Start one rank as a plain process (the runtime reads RANK/WORLD_SIZE like torchrun sets them)."""
    full = {**os.environ, **env, "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank),
            "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    if kill_after is None:
        cmd = [sys.executable, "-m", "jobs.caption"]
    else:
        full["KILL_AFTER"] = str(kill_after)
        cmd = [sys.executable, "-c", KILLER]
    return subprocess.Popen(cmd, env=full, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], timeout: float = 120) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace")


@pytest.mark.slow
def test_killed_rank_rerun_loses_and_duplicates_nothing(noisy_tiny, tmp_path: Path) -> None:
    model, processor = noisy_tiny
    save_model(model, processor, tmp_path / "captioner")
    uri, store = open_file_store(tmp_path / "store")
    keys = make_input_shards(store, "data/raw", shards=3, per_shard=8)
    cfg = {"model": str(tmp_path / "captioner"), "batch_size": 4, "max_new_tokens": 4, "mode": "recaption"}
    env = {**stage_env(uri, cfg), "SAIL_TMPDIR": str(tmp_path / "tmp")}

    # Attempt 1, world size 2: rank 0 owns shards 0 and 2, rank 1 owns shard 1. Rank 0 dies
    # after 12 captions: all 8 of shard 0 (done), then the first batch of 4 of shard 2.
    r1 = spawn(env, rank=1, world=2)
    r0 = spawn(env, rank=0, world=2, kill_after=12)
    code0, log0 = finish(r0)
    assert code0 == -signal.SIGKILL, log0
    code1, log1 = finish(r1)
    assert code1 == 0, log1  # a non-main rank exits after its own shards
    done = sorted(k.rsplit("/", 1)[-1] for k in store.list("runs/r1/recaption/done/"))
    assert done == ["shard-000000.json", "shard-000001.json"]
    assert not store.exists("data/recaptioned/shard-000002.tar")  # no partial output visible
    assert not store.exists("runs/r1/recaption/report.json")
    first_bytes = store.get("data/recaptioned/shard-000000.tar")

    # Attempt 2 under torchrun, as the backends run it: only shard 2 is redone.
    env2 = {**os.environ, **env, "SAIL_ATTEMPT": "2", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node=2", "-m", "jobs.caption"],
                          env=env2, cwd=REPO, capture_output=True, timeout=180)
    assert proc.returncode == 0, proc.stdout.decode() + proc.stderr.decode()

    outs = read_outputs(store, "data/recaptioned", tmp_path)
    written = [s.key for shard in outs.values() for s in shard]
    assert sorted(written) == sorted(keys)  # every sample exactly once
    assert len(written) == len(set(written))
    assert store.get("data/recaptioned/shard-000000.tar") == first_bytes  # done shard untouched
    report = json.loads(store.get("runs/r1/recaption/report.json"))
    assert report["samples_in"] == report["samples_out"] == len(keys)
    assert report["shards_this_attempt"] == 1 and report["attempt"] == 2

    # The interrupted run's output is byte-identical to an uninterrupted one.
    clean_env = {**env, "SAIL_RUN": "clean", "SAIL_OUTPUTS": json.dumps(["data/clean"])}
    code, log = finish(spawn(clean_env, rank=0, world=1))
    assert code == 0, log
    for i in range(3):
        name = f"shard-{i:06d}.tar"
        assert store.get(f"data/clean/{name}") == store.get(f"data/recaptioned/{name}"), name
