"""Stores for the dashboard tests (a real controller run with a retried stage) and a served dashboard."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path
from typing import Any

import yaml

from sailk8s.ledger import ProgressRecord, ShardLedger, StageResults
from sailk8s.ledger.runstate import AttemptRecord, RunState, StageState, save_state
from sailk8s.store.local import LocalStore
from sailk8s.testing import wait_for

ROOT = Path(__file__).resolve().parents[2]
CTLJOBS = ROOT / "tests" / "controller"  # the fake workloads (ctljobs) the controller tests use
RETRY = {"max_attempts": 2, "backoff_base_seconds": 0.1, "backoff_cap_seconds": 0.2}


def png(width: int = 8, height: int = 8, rgb: tuple[int, int, int] = (220, 40, 40)) -> bytes:
    """A plain-colour PNG (stdlib only): the sample browser shows it beside its alt-text."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = b"".join(b"\0" + bytes(rgb) * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


FUNNEL = [{"step": "read", "dropped": {"bad_json": 1}, "remaining": 11},
          {"step": "caption", "dropped": {"caption_too_short": 3}, "remaining": 8},
          {"step": "judge", "dropped": {"judge_mismatch": 2}, "remaining": 6}]
QUALITY = {"captions": 12, "distinct": 11, "distinct_ratio": 0.9167, "input_distinct": 12,
           "distinct_vs_input": 0.9167, "top_share": 0.1667, "top_caption": "a red square",
           "empty_share": 0.0, "truncated_share": 0.0833, "alt_copy_share": 0.25,
           "repeated_ngram_ratio": 0.01, "words": {"p5": 4, "p50": 9, "p95": 15},
           "samples": [{"key": "s000", "prompt": "Describe.", "caption": "a small red square on white"}]}


def artifacts_dir(name: str) -> Path:
    """Where a test keeps its screenshots: $SAIL_TEST_ARTIFACTS or build/test-artifacts, per test."""
    base = Path(os.environ.get("SAIL_TEST_ARTIFACTS") or ROOT / "build" / "test-artifacts")
    out = base / "dashboard" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    return out


def run_env(local_dir: Path, fake: dict[str, Any]) -> dict[str, str]:
    """The environment of a LocalBackend run with the fake workloads."""
    env = os.environ.copy()
    env.update({"SAIL_LOCAL_DIR": str(local_dir), "SAIL_JOBS_PACKAGE": "ctljobs",
                "SAIL_PROGRESS_SECONDS": "0.2", "CTL_FAKE": json.dumps(fake),
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), str(CTLJOBS),
                                                            env.get("PYTHONPATH")]))})
    return env


def retried_run(tmp: Path, run: str = "r1") -> LocalStore:
    """A finished run through the real controller: ingest -> caption (attempt 1 fails, 2 succeeds)
    -> filter and evaluate; then the figures real workloads report, written through the ledger."""
    store_dir, local = tmp / "store", tmp / "local"
    stages = [
        {"name": "ingest", "kind": "ingest", "outputs": ["data/a"], "retry": RETRY},
        {"name": "caption", "kind": "caption", "depends": ["ingest"], "inputs": ["data/a"],
         "outputs": ["data/b"], "config": {"preset": "tiny"}, "retry": RETRY},
        {"name": "filter", "kind": "filter", "depends": ["caption"], "inputs": ["data/b"],
         "outputs": ["data/c"], "retry": RETRY},
        {"name": "evaluate", "kind": "evaluate", "depends": ["caption"], "inputs": ["data/b"],
         "config": {"model": "models/none"}, "retry": RETRY},
    ]
    path = tmp / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"run": run, "backend": "local", "store": f"file://{store_dir}",
                                    "stages": stages}))
    env = run_env(local, {"caption": {"fail": {"1": 1}, "fail_after": 1}})
    res = subprocess.run([sys.executable, "-m", "sailk8s", "run", "-f", str(path)], env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    store = LocalStore(store_dir, durable=False)
    add_figures(store, run)
    return store


def shard_tar(samples: list[dict[str, Any]]) -> bytes:
    """A WebDataset shard: `<key>.png` + `<key>.json` per sample."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for meta in samples:
            files = ((f"{meta['key']}.png", png()), (f"{meta['key']}.json", json.dumps(meta).encode()))
            for name, data in files:
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def add_figures(store: LocalStore, run: str) -> None:
    """What the real caption/filter/evaluate workloads add to their reports (the fakes write none):
    caption quality, the funnel with a kept shard to browse, accuracy with example predictions."""
    cap = StageResults(store, run, "caption")
    cap.write_report(2, {**(cap.read_report() or {}), "caption_quality": QUALITY})
    captioned = [{"key": f"s{i:03d}", "alt_text": f"alt text {i}", "recaption": f"a red square number {i}"}
                 for i in range(8)]
    tar = shard_tar(captioned)  # what caption wrote; the filter keeps s000..s005 and drops s006, s007
    store.put("data/b/shard-000000.tar", tar)
    ShardLedger(store, run, "caption").mark_done("shard-000000", "data/b/shard-000000.tar",
                                                 hashlib.sha256(tar).hexdigest(), len(captioned), 2)
    samples = [{**s, "scores": {"judge_alignment": 0.91 - i / 100}} for i, s in enumerate(captioned[:6])]
    tar = shard_tar(samples)
    store.put("data/c/shard-000000.tar", tar)
    ShardLedger(store, run, "filter").mark_done("shard-000000", "data/c/shard-000000.tar",
                                                hashlib.sha256(tar).hexdigest(), len(samples), 1)
    flt = StageResults(store, run, "filter")
    flt.write_report(1, {**(flt.read_report() or {}), "samples_in": 12, "kept": 6, "funnel": FUNNEL,
                         "dropped": {"bad_json": 1, "caption_too_short": 3, "judge_mismatch": 2},
                         "summary": "kept 6 of 12 samples"})
    ev = StageResults(store, run, "evaluate")
    ev.write_report(1, {**(ev.read_report() or {}), "accuracy": 0.75, "correct": 3, "samples": 4,
                        "examples": [{"question": "colour?", "answer": "red", "prediction": "red"},
                                     {"question": "shape?", "answer": "square", "prediction": "circle"}]})


def live_run(store: LocalStore, run: str = "live", done: float = 10.0) -> StageResults:
    """A run whose `train` stage is running (state and progress as a controller and trainer write them)."""
    now = time.time()
    st = StageState(name="train", kind="pretrain", state="running", started_at=now,
                    attempts=[AttemptRecord(attempt=1, name=f"{run}-train-1", phase="Running",
                                            submitted_at=now)])
    save_state(store, RunState(run=run, run_id="live-id", status="running", started_at=now,
                               stages={"train": st}))
    results = StageResults(store, run, "train")
    set_progress(results, done)
    return results


def set_progress(results: StageResults, done: float) -> None:
    """The trainer's progress record: `done` of 100 tokens."""
    results.write_progress(0, ProgressRecord(done=done, total=100, unit="tokens", rate=5.0,
                                             eta_seconds=(100 - done) / 5, updated_at=time.time(), attempt=1))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Dashboard:
    """`python -m sailk8s ui --store URI` in a subprocess, stopped on exit."""

    def __init__(self, store_uri: str, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([sys.executable, "-m", "sailk8s", "ui", "--store", store_uri,
                                      "--port", str(self.port), *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=env)

    def __enter__(self) -> Dashboard:
        wait_for(self._up, timeout=60, what=f"the dashboard on {self.url}")
        return self

    def _up(self) -> bool:
        if self.proc.poll() is not None:
            raise AssertionError(f"dashboard exited: {self.proc.stdout.read() if self.proc.stdout else ''}")
        try:
            with urllib.request.urlopen(self.url + "/api/runs", timeout=5) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, ConnectionError):
            return False

    def get(self, path: str) -> tuple[int, str]:
        """(status, body) of a GET."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=30) as resp:
                return resp.status, resp.read().decode()
        except urllib.error.HTTPError as err:
            return err.code, err.read().decode()

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def trained_run(store: LocalStore, run: str = "trained") -> None:
    """A finished run of one pretrain stage with two sub-stages, its report as jobs.pretrain writes it."""
    now = time.time()
    st = StageState(name="pretrain", kind="pretrain", state="succeeded", started_at=now - 60, finished_at=now,
                    attempts=[AttemptRecord(attempt=1, name=f"{run}-pretrain-1", phase="Succeeded",
                                            submitted_at=now - 60, finished_at=now)])
    save_state(store, RunState(run=run, run_id="trained-id", status="succeeded", started_at=now - 60,
                               finished_at=now, stages={"pretrain": st}))
    losses = [[i, 6.0 - 0.2 * i] for i in range(1, 9)]
    StageResults(store, run, "pretrain").write_report(1, {
        "kind": "pretrain", "losses": losses, "final_loss": losses[-1][1], "global_steps": 8,
        "substages": [{"substage": "alignment", "steps": 3}, {"substage": "advance", "steps": 5}],
        "summary": "alignment, advance: 8 steps, final loss 4.4"})


def stop_local_run(controller: subprocess.Popen[str], local_dir: Path) -> None:
    """Kill a LocalBackend run started by a test: its controller, then its attempts by the pids
    their records hold, then any process that still carries this run's SAIL_LOCAL_DIR."""
    if controller.poll() is None:
        controller.kill()
        controller.wait(timeout=30)
    for rec in list(local_dir.rglob("child.json")) + list(local_dir.rglob("supervisor.json")):
        with contextlib.suppress(Exception):
            os.killpg(int(json.loads(rec.read_text())["pid"]), signal.SIGKILL)
    marker = f"SAIL_LOCAL_DIR={local_dir}".encode()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (entry / "environ").read_bytes().split(b"\0"):
                    os.kill(int(entry.name), signal.SIGKILL)
