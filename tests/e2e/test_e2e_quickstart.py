"""The reduced quickstart on the fake cluster (real stages in the pods) gives the local backend's outputs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from e2e_support import (
    JOB_APIS,
    NAMESPACE,
    PLURALS,
    RUN,
    TRAIN_STAGES,
    Cluster,
    assert_same_outputs,
    events,
    reduced_quickstart,
    sail,
    start_sail,
    write_pipeline,
)

from sailk8s.ledger.paths import StagePaths
from sailk8s.ledger.runstate import load_state
from sailk8s.store.local import LocalStore
from sailk8s.testing import wait_for


def kubectl_jobs(kubectl: str, cluster: Cluster, job_api: str) -> dict[str, str]:
    """`kubectl get pytorchjobs|trainjobs -l sail.io/run=qs` on the fake cluster: job name -> state column."""
    res = subprocess.run([kubectl, "--kubeconfig", str(cluster.kubeconfig), "get", PLURALS[job_api][0],
                          "-n", NAMESPACE, "-l", f"sail.io/run={RUN}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    assert lines and lines[0].split()[:2] == ["NAME", "STATE"], res.stdout
    return {cols[0]: cols[1] for cols in (line.split() for line in lines[1:])}


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("job_api", JOB_APIS)
def test_quickstart_on_the_fake_cluster_matches_the_local_backend(
        tmp_path: Path, cluster: Cluster, kubectl_bin: str, local_reference: Path, job_api: str) -> None:
    store = tmp_path / "store"
    doc = reduced_quickstart(store, backend="kubernetes", tail=True, job_api=job_api)
    path = write_pipeline(tmp_path / "pipeline.yaml", doc)
    env = cluster.env()
    proc = start_sail("run", "-f", str(path), env=env, log=tmp_path / "run.log")

    # While the run goes on, kubectl (the real binary) lists its jobs through the fake API.
    wait_for(lambda: cluster.jobs(job_api), timeout=120, what="the first job")
    during = kubectl_jobs(kubectl_bin, cluster, job_api)
    assert f"{RUN}-ingest-1" in during

    assert proc.wait(timeout=600) == 0, (tmp_path / "run.log").read_text()[-4000:]
    out = (tmp_path / "run.log").read_text()
    evs = events(out)
    assert evs[-1]["event"] == "run_finished" and evs[-1]["status"] == "succeeded"
    # the CLI prints the equivalent line
    assert f"kubectl get {PLURALS[job_api][0]} -n sail -l sail.io/run=qs" in out

    state = load_state(LocalStore(store), RUN)
    assert state is not None and state.backend == "kubernetes" and state.status == "succeeded"
    names = [s["name"] for s in doc["stages"]]
    assert {n: (st.state, len(st.attempts)) for n, st in state.stages.items()} == \
        {n: ("succeeded", 1) for n in names}

    after = kubectl_jobs(kubectl_bin, cluster, job_api)
    done = {"pytorchjob": "Succeeded", "trainjob": "Complete"}[job_api]  # each API's final condition
    assert after == {f"{RUN}-{n}-1": done for n in names}

    assert_same_outputs(local_reference, store)
    # The training tail trained and evaluated the same model on both backends.
    for stage in TRAIN_STAGES:
        for rep in (local_reference, store):
            assert (rep / "runs" / RUN / stage / "report.json").is_file(), (rep, stage)
    ev_local = json.loads((local_reference / "runs" / RUN / "evaluate" / "report.json").read_bytes())
    ev_k8s = json.loads((store / "runs" / RUN / "evaluate" / "report.json").read_bytes())
    assert ev_local["samples"] == ev_k8s["samples"] > 0
    assert (ev_local["correct"], ev_local["examples"]) == (ev_k8s["correct"], ev_k8s["examples"])

    # The `kubectl logs` line the CLI printed works as printed, while the pods are still there.
    line = next(ln.split(": ", 1)[1] for ln in out.splitlines()
                if ln.startswith("# follow with: kubectl logs") and "sail.io/stage=recaption," in ln)
    res = subprocess.run([kubectl_bin, "--kubeconfig", str(cluster.kubeconfig), *line.split()[1:]],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "shard done" in res.stdout and "report" in res.stdout

    # The pods are gone (job deleted, pods garbage-collected): logs come from the store archive.
    res = subprocess.run([kubectl_bin, "--kubeconfig", str(cluster.kubeconfig), "delete", PLURALS[job_api][0],
                          "-n", NAMESPACE, "-l", f"sail.io/run={RUN}", "--cascade=foreground",
                          "--wait=false"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    wait_for(lambda: not cluster.pods(), timeout=120, what="the pods to be garbage-collected")
    assert LocalStore(store).exists(StagePaths(RUN, "recaption").attempt_log(1, 0))
    logs = sail("logs", RUN, "recaption", "-p", str(path), env=env)
    assert logs.returncode == 0, logs.stderr
    assert "shard done" in logs.stdout and "rank=0" in logs.stdout and "report" in logs.stdout
