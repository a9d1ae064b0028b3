"""The images for real: the controller drives ingest, filter and a short sft on the fake cluster,
each pod a podman container of its stage's image (non-root, read-only where the pod says so), the
store on the S3 test server reached from inside the containers. The sft first runs under a memory
limit it cannot live in: the kernel OOM-kills it, and the attempt is an `OOMKilled` app failure
(README: raise the memory). Raised, the rerun resumes and the outputs equal a local-backend run's.

Skipped without podman or without the images (`make images-test` builds them).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from e2e_support import NAMESPACE, SECRET, Cluster, events, sail, sail_env, write_pipeline

from sailk8s.ledger.runstate import load_state
from sailk8s.testing import FakeKubernetes, FakeTrainingOperator
from sailk8s.testing.containers import ci_image, fake_pod_containers, images_present
from sailk8s.testing.history import WatchEvent
from sailk8s.testing.s3 import S3Server, s3_server

IMAGES = {"filter": ci_image("filter"), "train": ci_image("train")}
RUN = "ctr"
# Fields that differ between two runs of one pipeline (wall-clock times, rates, where it ran).
VOLATILE = frozenset({"time", "updated_at", "started_at", "finished_at", "elapsed", "elapsed_seconds",
                      "seconds", "rate", "eta_seconds", "samples_per_s", "tokens_per_s", "host", "hostname",
                      "attempt", "run_id", "store", "pid", "wall_seconds", "samples_per_second"})
SAMPLES = {"raw_digits": 24, "reference_digits": 0, "reference_photos": 0, "sft_knowledge_digits": 8,
           "sft_instruction_digits": 0, "eval_digits": 1, "caption_eval_digits": 0, "judge_eval_pairs": 0,
           "duplicates": 3, "thumbnails": 2}
OOM_MEMORY = "256Mi"  # torch alone needs more: the sft dies while it loads
MEMORY = "3Gi"


pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(not images_present(list(IMAGES.values())),
                       reason=f"needs podman and the images {sorted(IMAGES.values())} (make images-test)"),
]


def pipeline(store: str, backend: str, sft_memory: str = MEMORY) -> dict[str, Any]:
    """ingest (sail-filter) -> filter over 2 ranks (sail-filter) | sft of a tiny VLM with DeepSpeed
    ZeRO-2 (sail-train): 4 steps, about 10 s in a container here."""
    retry = {"max_attempts": 1, "backoff_base_seconds": 0.5, "max_infra_retries": 2}

    def res(image: str, memory: str = "2Gi", procs: int = 1) -> dict[str, Any]:
        return {"procs_per_node": procs, "cpu": "1", "memory": memory, "shm_size": "256Mi",
                **({"image": IMAGES[image]} if backend == "kubernetes" else {})}

    stages = [
        {"name": "ingest", "kind": "ingest", "outputs": ["data/samples"], "resources": res("filter"),
         "retry": retry, "config": {"source": "samples", "shard_size": 8, "samples": SAMPLES,
                                    "sets": ["raw", "sft-knowledge"]}},
        {"name": "filter", "kind": "filter", "depends": ["ingest"], "inputs": ["data/samples/raw"],
         "outputs": ["data/filtered"], "resources": res("filter", procs=2), "retry": retry,
         "config": {"text_fields": ["caption", "alt_text"], "filters": [
             {"type": "image", "min_side": 16},
             {"type": "caption", "min_words": 1, "min_alpha_ratio": 0.2},
             {"type": "dedup", "exact": True, "near": True, "max_distance": 2, "partitions": 4},
             {"type": "minilm", "min_similarity": None}]}},
        {"name": "sft", "kind": "sft", "depends": ["ingest"], "inputs": ["data/samples/sft-knowledge"],
         "outputs": ["models/sft"], "resources": res("train", memory=sft_memory), "retry": retry,
         "config": {"model": {"preset": "tiny"}, "seq_len": 256, "zero_stage": 2, "checkpoint_every": 2,
                    "stages": [{"name": "knowledge", "max_steps": 4, "lr": 2.0e-3, "global_batch": 4,
                                "micro_batch": 4, "mix": [{"prefix": "data/samples/sft-knowledge"}]}]}},
    ]
    doc: dict[str, Any] = {"run": RUN, "backend": backend, "store": store, "stages": stages}
    if backend == "kubernetes":
        doc.update(namespace=NAMESPACE, store_secret=SECRET, image=IMAGES["train"])
    return doc


def store_env(s3: S3Server) -> dict[str, str]:
    return {"SAIL_STORE_ENDPOINT": s3.endpoint, "SAIL_STORE_ACCESS_KEY": s3.access_key,
            "SAIL_STORE_SECRET_KEY": s3.secret_key, "SAIL_STORE_REGION": s3.region}


@pytest.fixture
def s3() -> Iterator[S3Server]:
    with s3_server() as server:
        yield server


@pytest.fixture
def container_cluster(tmp_path: Path, s3: S3Server) -> Iterator[Cluster]:
    """The fake API server with the store Secret, and the operator in container mode."""
    with FakeKubernetes(namespaces=(NAMESPACE,)) as kube:
        data = {k: base64.b64encode(v.encode()).decode() for k, v in store_env(s3).items()
                if k in ("SAIL_STORE_ACCESS_KEY", "SAIL_STORE_SECRET_KEY")}
        kube.state.create(kube.type("secrets"), NAMESPACE, {"metadata": {"name": SECRET}, "data": data})
        kubeconfig = kube.kubeconfig(tmp_path / "kubeconfig", namespace=NAMESPACE)
        # One thread per rank, as the local reference run has (sail_env): the same float sums.
        operator = FakeTrainingOperator(kube, mode="container", kill_grace=2.0,
                                        extra_env={"OMP_NUM_THREADS": "1"})
        with operator:
            yield Cluster(kube, operator, kubeconfig)
        assert operator.errors == []
    assert kube.errors == []


def snapshot(s3: S3Server, bucket: str) -> dict[str, Any]:
    """A run's results in the store: shards, weights and checkpoints by sha256; JSON (markers,
    reports, manifests) without volatile fields; dedup index arrays by content."""
    store = _store(s3, bucket)
    out: dict[str, Any] = {}
    for key in sorted(store.list("")):
        name = key.rsplit("/", 1)[-1]
        # Attempt records, locks, claims, logs, the run state and live progress say where and
        # when it ran, not what it made.
        # TensorBoard event files are named and stamped by host and wall clock.
        if key.startswith("_sail/") or "/attempts/" in key or "/logs/" in key or "progress" in key \
                or "/tensorboard/" in key:
            continue
        if key == f"runs/{RUN}/state.json":
            continue
        raw = store.get(key)
        if name == "manifest.json":
            # A checkpoint's JSON files hold timings: their bytes are compared stripped, below.
            doc = json.loads(raw)
            doc["files"] = {f: v for f, v in doc["files"].items() if not f.endswith(".json")}
            out[key] = _strip(doc)
        elif name.endswith(".json"):
            out[key] = _strip(json.loads(raw))
        elif name.endswith(".npz"):  # a zip whose entries carry the time they were written
            with np.load(io.BytesIO(raw)) as arrays:
                out[key] = {k: hashlib.sha256(arrays[k].tobytes()).hexdigest() for k in sorted(arrays.files)}
        else:
            out[key] = hashlib.sha256(raw).hexdigest()
    return out


def _store(s3: S3Server, bucket: str) -> Any:
    from sailk8s.store.s3 import S3Store

    return S3Store(bucket, "", endpoint=s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key,
                   region=s3.region)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


class PodEnds:
    """Every container end the API server saw, by job: (exit code, reason), kept after deletion
    (the controller deletes a job whose pod evidence already decided the attempt)."""

    def __init__(self, kube: FakeKubernetes) -> None:
        self.seen: dict[str, set[tuple[int, str]]] = {}
        kube.state.subscribe(self._on_change)

    def _on_change(self, event: WatchEvent) -> None:
        if event.rtype.kind != "Pod":
            return
        job = (event.obj["metadata"].get("labels") or {}).get("training.kubeflow.org/job-name", "")
        for cs in (event.obj.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated")
            if term:
                self.seen.setdefault(job, set()).add((term["exitCode"], term["reason"]))


def test_stages_run_in_their_images_against_s3(tmp_path: Path, s3: S3Server,
                                              container_cluster: Cluster) -> None:
    cluster = container_cluster
    ends = PodEnds(cluster.kube)
    started = time.monotonic()
    # The reference: the same pipeline on the local backend, in another bucket of the same server.
    local_bucket = s3.make_bucket()
    local = write_pipeline(tmp_path / "local.yaml", pipeline(f"s3://{local_bucket}", "local"))
    res = sail("run", "-f", str(local), env=sail_env(SAIL_LOCAL_DIR=str(tmp_path / "local"), **store_env(s3)),
               timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    local_seconds = time.monotonic() - started

    # 1. In containers, the sft under a memory limit torch alone outgrows: a real OOM kill.
    env = cluster.env(**store_env(s3))
    oom = write_pipeline(tmp_path / "oom.yaml", pipeline(s3.uri(), "kubernetes", sft_memory=OOM_MEMORY))
    res = sail("run", "-f", str(oom), env=env, timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode == 1, out[-4000:]
    assert s3.secret_key not in out
    finished = [e for e in events(res.stdout) if e["event"] == "run_finished"]
    assert finished and finished[-1]["status"] == "failed", out[-3000:]
    assert ends.seen[f"{RUN}-sft-1"] == {(137, "OOMKilled")}
    assert ends.seen[f"{RUN}-ingest-1"] == ends.seen[f"{RUN}-filter-1"] == {(0, "Completed")}
    state = load_state(s3.store(), RUN)
    assert state is not None
    sft = state.stages["sft"]
    assert (sft.state, sft.attempts[-1].failure, sft.attempts[-1].reason) == ("failed", "app", "OOMKilled")
    assert (state.stages["ingest"].state, state.stages["filter"].state) == ("succeeded", "succeeded")
    status = sail("status", "-f", str(oom), "--json", env=env)
    rows = {r["stage"]: r for r in json.loads(status.stdout.strip().splitlines()[-1])["stages"]}
    assert "OOMKilled" in rows["sft"]["last_error"] and "raise resources.memory" in rows["sft"]["last_error"]
    # What kubectl and `logs` read is the container's own output.
    logs = sail("logs", RUN, "ingest", "-p", str(oom), env=env)
    assert logs.returncode == 0, logs.stderr[-2000:]
    assert "shard done" in logs.stdout and "report" in logs.stdout, logs.stdout[-2000:]
    container_seconds = time.monotonic() - started - local_seconds

    # 2. The memory raised (resources are not part of a stage's definition): the rerun keeps
    #    ingest and filter, runs the sft again, and everything equals the local run.
    fixed = write_pipeline(tmp_path / "fixed.yaml", pipeline(s3.uri(), "kubernetes"))
    res = sail("run", "-f", str(fixed), env=env, timeout=600)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]
    state = load_state(s3.store(), RUN)
    assert state is not None
    assert [len(state.stages[s].attempts) for s in ("ingest", "filter", "sft")] == [1, 1, 2]
    assert ends.seen[f"{RUN}-sft-2"] == {(0, "Completed")}

    ours, reference = snapshot(s3, s3.bucket), snapshot(s3, local_bucket)
    assert any(k.startswith("data/filtered/") and k.endswith(".tar") for k in ours)
    assert any(k.startswith("models/sft/") and k.endswith(".safetensors") for k in ours)
    assert sorted(ours) == sorted(reference)
    assert [k for k, v in ours.items() if v != reference[k]] == []
    assert fake_pod_containers(f"{RUN}-") == []
    print(f"\ncontainer e2e: local run {local_seconds:.0f} s, containers with the OOM run "
          f"{container_seconds:.0f} s, whole test {time.monotonic() - started:.0f} s")
