"""Helpers for the end-to-end tests: a reduced quickstart, the CLI as a subprocess, output comparison.

(A unique module name: `conftest` is ambiguous suite-wide.)
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from sailk8s.testing import FakeKubernetes, FakeTrainingOperator

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
DATA_STAGES = ("ingest", "captioner", "recaption", "filter")
TRAIN_STAGES = ("pretrain", "sft", "evaluate")
RUN = "qs"
NAMESPACE = "sail"
SECRET = "sail-store-credentials"
# The two job APIs every Kubernetes e2e test runs under (kubernetes.job_api), with their resource.
JOB_APIS = ("pytorchjob", "trainjob")
PLURALS = {"pytorchjob": ("pytorchjobs", "kubeflow.org"), "trainjob": ("trainjobs", "trainer.kubeflow.org")}

# Small sets: ~30 raw images in 16-sample shards (several shards per stage, split over 2 ranks).
SAMPLES = {"raw_digits": 24, "reference_digits": 16, "reference_photos": 0, "sft_knowledge_digits": 8,
           "sft_instruction_digits": 8, "eval_digits": 6, "duplicates": 3, "thumbnails": 2}
# Controller subprocesses a test started; the fixtures kill leftovers at teardown.
CONTROLLERS: list[subprocess.Popen[str]] = []


def reduced_quickstart(store: Path, *, backend: str, tail: bool = False, captioner_steps: int = 30,
                       run: str = RUN, job_api: str = "pytorchjob") -> dict[str, Any]:
    """examples/quickstart.yaml with small sets and few steps: the data stages (+ the training tail)."""
    doc = yaml.safe_load(QUICKSTART.read_text())
    keep = DATA_STAGES + (TRAIN_STAGES if tail else ())
    stages = [copy.deepcopy(s) for s in doc["stages"] if s["name"] in keep]
    for stage in stages:
        cfg = stage["config"]
        name = stage["name"]
        # The captioner's check and the judge are left out: their quality bars need the full
        # training (tests/quickstart), and these tests are about the platform, not the models.
        stage["depends"] = [d for d in stage.get("depends", []) if d in keep]
        if name == "ingest":
            cfg["shard_size"] = 16
            cfg["samples"] = dict(SAMPLES)
            if not tail:
                cfg["sets"] = ["raw", "reference"]
        elif name == "captioner":
            cfg["checkpoint_every"] = 5
            for sub in cfg["stages"]:
                sub.update(max_steps=captioner_steps, global_batch=4, micro_batch=4)
        elif name == "recaption":
            cfg.update(batch_size=16, max_new_tokens=8)
        elif name == "filter":
            cfg["filters"] = [f for f in cfg["filters"] if f["type"] != "judge"]
            for flt in cfg["filters"]:
                if flt["type"] == "caption":  # a 30-step captioner loops: keep its captions anyway
                    flt["max_repeated_ngram_ratio"] = 0.9
                if flt["type"] == "alignment":
                    flt.update(batch_size=16, min_score=None)  # a 30-step captioner: record only
                    flt.pop("eval_prefix", None)
        elif name == "pretrain":
            for sub in cfg["substages"]:
                sub.update(token_budget=1500, global_batch=4, micro_batch=4)
        elif name == "sft":
            for sub in cfg["stages"]:
                sub.pop("token_budget", None)
                sub.update(max_steps=3, global_batch=4, micro_batch=4)
        elif name == "evaluate":
            cfg["max_new_tokens"] = 2
    out: dict[str, Any] = {"run": run, "backend": backend, "store": f"file://{store}", "stages": stages}
    if backend == "kubernetes":
        out.update(namespace=NAMESPACE, store_secret=SECRET, kubernetes={"job_api": job_api})
    return out


def write_pipeline(path: Path, doc: dict[str, Any]) -> Path:
    """Write a pipeline document as YAML; returns the path."""
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def sail_env(**extra: str) -> dict[str, str]:
    """The environment for `python -m sailk8s` and the stage processes it starts."""
    env = os.environ.copy()
    env.update({"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
                "OMP_NUM_THREADS": "1", "SAIL_LOG_FORMAT": "json", **extra})
    return env


def sail(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run `python -m sailk8s ARGS` to completion."""
    return subprocess.run([sys.executable, "-m", "sailk8s", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def start_sail(*args: str, env: dict[str, str], log: Path) -> subprocess.Popen[str]:
    """Start `python -m sailk8s ARGS` in the background, output to `log` (no pipe to fill up)."""
    out = log.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "sailk8s", *args], stdout=out, stderr=subprocess.STDOUT,
                            text=True, env=env, cwd=ROOT)
    out.close()
    CONTROLLERS.append(proc)
    return proc


def events(out: str) -> list[dict[str, Any]]:
    """Controller events from piped `run` output (JSON lines)."""
    found = []
    for line in out.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            if "event" in obj and "run" in obj:
                found.append(obj)
    return found


@dataclass
class Cluster:
    """A fake API server, its training operator running pods as local processes, and a kubeconfig."""

    kube: FakeKubernetes
    operator: FakeTrainingOperator
    kubeconfig: Path

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a controller subprocess talking to this cluster."""
        # A short lease: a restarted controller takes over from a killed one in seconds.
        return sail_env(KUBECONFIG=str(self.kubeconfig), SAIL_LEASE_SECONDS="2", **extra)

    def jobs(self, job_api: str = "pytorchjob") -> list[dict[str, object]]:
        """The PyTorchJobs (or TrainJobs) in the namespace, as the API holds them."""
        items, _ = self.kube.state.list(self.kube.type(*PLURALS[job_api]), NAMESPACE)
        return list(items)

    def created(self, job_api: str = "pytorchjob") -> int:
        """How many jobs of that API were created through the HTTP API (201s)."""
        plural = PLURALS[job_api][0]
        return len([r for r in self.kube.requests
                    if r.method == "POST" and r.path.endswith(f"/{plural}") and r.status == 201])

    def pods(self) -> list[dict[str, object]]:
        """The pods in the namespace, as the API holds them."""
        items, _ = self.kube.state.list(self.kube.type("pods"), NAMESPACE)
        return list(items)


# -- comparing two stores ---------------------------------------------------------------------

# Fields that legitimately differ between two runs of the same pipeline.
TIMING_FIELDS = frozenset({"time", "updated_at", "started_at", "finished_at", "elapsed", "elapsed_seconds",
                           "seconds", "rate", "eta_seconds", "samples_per_s", "tokens_per_s"})


def normalize(value: Any, store_uri: str) -> Any:
    """A JSON value with timing fields dropped and this run's store location replaced by <store>."""
    if isinstance(value, dict):
        return {k: normalize(v, store_uri) for k, v in value.items() if k not in TIMING_FIELDS}
    if isinstance(value, list):
        return [normalize(v, store_uri) for v in value]
    if isinstance(value, str):
        return value.replace(store_uri, "<store>").replace(store_uri.removeprefix("file://"), "<store>")
    return value


def shard_contents(path: Path, store_uri: str) -> list[tuple[str, Any]]:
    """A WebDataset shard as (member name, parsed+normalized json | sha256 of the bytes), in order."""
    out: list[tuple[str, Any]] = []
    with tarfile.open(fileobj=io.BytesIO(path.read_bytes())) as tar:
        for member in tar.getmembers():
            data = tar.extractfile(member)
            assert data is not None, member.name
            raw = data.read()
            if member.name.endswith(".json"):
                out.append((member.name, normalize(json.loads(raw), store_uri)))
            else:
                out.append((member.name, hashlib.sha256(raw).hexdigest()))
    return out


def data_shards(store: Path) -> dict[str, Path]:
    """Every data shard under the store's data/ prefix, by key."""
    return {p.relative_to(store).as_posix(): p for p in sorted((store / "data").rglob("*.tar"))}


def done_markers(store: Path, run: str = RUN) -> dict[str, dict[str, Any]]:
    """Every shard completion marker of the run, by key."""
    runs = store / "runs" / run
    return {p.relative_to(store).as_posix(): json.loads(p.read_bytes())
            for p in sorted(runs.glob("*/done/*.json"))}


def check_markers_match_outputs(store: Path, run: str = RUN) -> None:
    """Each done marker names an output that exists with the sha256 the marker recorded."""
    for key, marker in done_markers(store, run).items():
        out = store / marker["output"]
        assert out.is_file(), f"{key}: output {marker['output']} missing"
        if "sha256" in marker:
            assert hashlib.sha256(out.read_bytes()).hexdigest() == marker["sha256"], key


def assert_same_outputs(local: Path, other: Path, run: str = RUN) -> None:
    """Same data shards (samples and fields), same exported weights, same ledger markers."""
    local_uri, other_uri = f"file://{local}", f"file://{other}"
    a, b = data_shards(local), data_shards(other)
    assert sorted(a) == sorted(b), "different data shards"
    assert a, "no data shards were written"
    for key in a:
        assert shard_contents(a[key], local_uri) == shard_contents(b[key], other_uri), key
    # Exported models: the training stages are deterministic on CPU, so the bytes match.
    models = sorted(p.relative_to(local) for p in (local / "models").rglob("*.safetensors"))
    assert models, "no model was exported"
    for rel in models:
        assert (local / rel).read_bytes() == (other / rel).read_bytes(), rel
    ma, mb = done_markers(local, run), done_markers(other, run)
    assert sorted(ma) == sorted(mb), "different done markers"
    for key in ma:
        # The sha256 covers the shard bytes, which embed the store location (the captioner's
        # URI): compared through check_markers_match_outputs instead.
        strip = {"sha256"}
        assert ({k: v for k, v in normalize(ma[key], local_uri).items() if k not in strip}
                == {k: v for k, v in normalize(mb[key], other_uri).items() if k not in strip}), key
    check_markers_match_outputs(local, run)
    check_markers_match_outputs(other, run)
