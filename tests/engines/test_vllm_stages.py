"""The stages with `engine: vllm`: caption killed mid-shard and rerun, judge filter, evaluate."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "train"))

# A caption rank that SIGKILLs itself after KILL_AFTER captions: mid-shard, engine running.
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
        print("engine processes:", __import__("jobs.core.reaper").core.reaper.child_pids(), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
c.Captioner.caption_batch = caption_then_maybe_die
main(c.run)
"""


def _env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(var, None)
    return env


def spawn(env: dict[str, str], rank: int, world: int,
          kill_after: int | None = None) -> subprocess.Popen[bytes]:
    full = {**_env(env), "RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)}
    if kill_after is None:
        cmd = [sys.executable, "-m", "jobs.caption"]
    else:
        full["KILL_AFTER"] = str(kill_after)
        cmd = [sys.executable, "-c", KILLER]
    return subprocess.Popen(cmd, env=full, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def finish(proc: subprocess.Popen[bytes], timeout: float = 300) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(errors="replace")


def descendants_of(pid: int) -> list[int]:
    """Live processes whose ancestry includes pid (what a rank left behind)."""
    parents = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if stat[0] != "Z":
                parents[int(entry)] = int(stat[1])
    out = []
    for p in parents:
        q = p
        while q in parents and q > 1:
            q = parents[q]
            if q == pid:
                out.append(p)
                break
    return out


def test_caption_stage_killed_mid_shard_reruns_byte_identical(export: Path, tmp_path: Path) -> None:
    from captionkit import make_input_shards, open_file_store, read_outputs, stage_env

    uri, store = open_file_store(tmp_path / "store")
    keys = make_input_shards(store, "data/raw", shards=3, per_shard=8)
    cfg = {"model": str(export), "engine": "vllm", "dtype": "float32", "batch_size": 4,
           "max_new_tokens": 6, "max_tiles": 4, "mode": "recaption", "quality_gate": {"enabled": False}}
    env = {**stage_env(uri, cfg), "SAIL_TMPDIR": str(tmp_path / "tmp")}

    # Attempt 1, two ranks: rank 0 owns shards 0 and 2 and dies inside shard 2 (after 12 captions).
    r1 = spawn(env, rank=1, world=2)
    r0 = spawn(env, rank=0, world=2, kill_after=12)
    pid0 = r0.pid
    code0, log0 = finish(r0)
    assert code0 == -signal.SIGKILL, log0[-3000:]
    assert "engine processes: []" in log0  # on CPU the engine runs inside the rank
    assert descendants_of(pid0) == []  # nothing of the killed rank survives it
    code1, log1 = finish(r1)
    assert code1 == 0, log1[-3000:]
    done = sorted(k.rsplit("/", 1)[-1] for k in store.list("runs/r1/recaption/done/"))
    assert done == ["shard-000000.json", "shard-000001.json"]
    assert not store.exists("data/recaptioned/shard-000002.tar")
    first = store.get("data/recaptioned/shard-000000.tar")

    # Attempt 2 with the pod's launcher, as the local backend runs it: only shard 2 is redone.
    env2 = _env({**env, "SAIL_ATTEMPT": "2"})
    proc = subprocess.run([sys.executable, "-m", "jobs.launch", "--standalone", "--nproc-per-node=2",
                           "-m", "jobs.caption"], env=env2, cwd=REPO, capture_output=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout + proc.stderr).decode()[-3000:]
    outs = read_outputs(store, "data/recaptioned", tmp_path)
    written = [s.key for shard in outs.values() for s in shard]
    assert sorted(written) == sorted(keys) and len(written) == len(set(written))
    assert store.get("data/recaptioned/shard-000000.tar") == first
    report = json.loads(store.get("runs/r1/recaption/report.json"))
    assert report["shards_this_attempt"] == 1 and report["attempt"] == 2
    assert {s.meta["captioner"] for shard in outs.values() for s in shard} == {str(export)}

    # Byte-identical to an uninterrupted run.
    clean = {**env, "SAIL_RUN": "clean", "SAIL_OUTPUTS": json.dumps(["data/clean"])}
    code, log = finish(spawn(clean, rank=0, world=1))
    assert code == 0, log[-3000:]
    for i in range(3):
        name = f"shard-{i:06d}.tar"
        assert store.get(f"data/clean/{name}") == store.get(f"data/recaptioned/{name}"), name


def test_judge_filter_through_vllm_gives_the_hf_verdicts(export: Path) -> None:
    from vllmkit import mixed_images

    from jobs.core.shards import Sample
    from jobs.filters.basic import Candidate
    from jobs.filters.scores import JudgeScorer
    from sailk8s.stageconfig.filter import JudgeFilter

    images = mixed_images(12)

    def cands() -> list[Candidate]:
        return [Candidate(Sample(f"k{i}", {}), f"a handwritten digit {i % 10}", image=im)
                for i, im in enumerate(images)]

    verdicts = {}
    for engine in ("hf", "vllm"):
        scorer = JudgeScorer(JudgeFilter(type="judge", model=str(export), engine=engine, max_new_tokens=12,
                                         on_unparseable="keep"))
        try:
            batch = cands()
            reasons = scorer.score(batch)
        finally:
            scorer.close()
        verdicts[engine] = (reasons, [c.scores for c in batch])
    assert verdicts["vllm"] == verdicts["hf"]
    assert any("judge_reply" in s for s in verdicts["vllm"][1])  # replies were compared, not just None


def _qa_store(tmp_path: Path, export: Path) -> Path:
    from vllmkit import mixed_images

    from jobs.core.shards import Sample, ShardWriter, encode_image

    store = tmp_path / "store"
    (store / "data/qa").mkdir(parents=True)
    images = mixed_images(16)
    for s in range(2):
        with ShardWriter(store / f"data/qa/shard-{s:06d}.tar") as w:
            for i in range(s * 8, s * 8 + 8):
                meta: dict[str, Any] = {"question": "<image> Which digit is this?", "answer": str(i % 10)}
                if s == 0:  # shard 0 is multiple choice, shard 1 free answers (metric auto)
                    meta["choices"] = [str((i + k) % 10) for k in range(4)]
                w.write(Sample(f"q{i:03d}", meta, "png", {"png": encode_image(images[i])}))
    return store


def test_evaluate_through_vllm_predicts_what_hf_predicts(export: Path, tmp_path: Path) -> None:
    """Multiple choice (prompt log-likelihoods) on shard 0, generated answers on shard 1."""
    from train_helpers import run_stage

    from jobs.core import shards as sh

    store = _qa_store(tmp_path, export)
    preds = {}
    for engine in ("hf", "vllm"):
        stage = {"name": f"ev-{engine}", "kind": "evaluate", "inputs": ["data/qa"],
                 "outputs": [f"preds/{engine}"],
                 "config": {"model": str(export), "engine": engine, "metric": "auto", "max_new_tokens": 4,
                            "batch_size": 4, "max_tiles": 2}}
        proc = run_stage(store, stage, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
        preds[engine] = [item.meta for key in sorted((store / "preds" / engine).glob("*.tar"))
                         for item in sh.read_shard(io.BytesIO(key.read_bytes()), need_image=False)
                         if not isinstance(item, sh.BadSample)]
    assert len(preds["vllm"]) == 16
    assert preds["vllm"] == preds["hf"]
    assert any(p.get("choices") for p in preds["vllm"]) and any(not p.get("choices") for p in preds["vllm"])
