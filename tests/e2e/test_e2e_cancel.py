"""`python -m sailk8s cancel` while a stage's job runs, for both job APIs: the job and its pods go,
the run records the cancel, and the pod's log stays readable from the store archive."""

from __future__ import annotations

from pathlib import Path

import pytest
from e2e_support import (
    JOB_APIS,
    NAMESPACE,
    RUN,
    SECRET,
    Cluster,
    events,
    sail,
    start_sail,
    write_pipeline,
)

from sailk8s.ledger.runstate import load_state
from sailk8s.store.local import LocalStore
from sailk8s.testing import behaviors, wait_for

SMALL = {
    "raw_digits": 4,
    "reference_digits": 1,
    "reference_photos": 0,
    "sft_knowledge_digits": 0,
    "sft_instruction_digits": 0,
    "eval_digits": 1,
    "duplicates": 0,
    "thumbnails": 1,
}


def running_pods(cluster: Cluster) -> list[str]:
    return [
        str(p["metadata"]["name"])
        for p in cluster.pods()  # type: ignore[index]
        if (p.get("status") or {}).get("phase") == "Running"
    ]  # type: ignore[union-attr]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.parametrize("job_api", JOB_APIS)
def test_cancel_stops_the_running_job_and_keeps_its_logs(
    tmp_path: Path, cluster: Cluster, job_api: str
) -> None:
    store = tmp_path / "store"
    doc = {
        "run": RUN,
        "backend": "kubernetes",
        "store": f"file://{store}",
        "namespace": NAMESPACE,
        "store_secret": SECRET,
        "kubernetes": {"job_api": job_api},
        "stages": [
            {
                "name": "long",
                "kind": "ingest",
                "outputs": ["data/raw"],
                "resources": {"procs_per_node": 1, "cpu": "1", "memory": "1Gi"},
                "config": {"source": "samples", "shard_size": 4, "sets": ["raw"], "samples": SMALL},
            }
        ],
    }
    path = write_pipeline(tmp_path / "pipeline.yaml", doc)
    # Rank 0 runs (and logs) for ten minutes unless someone stops it.
    cluster.operator.script(
        behaviors.succeed(after=600, logs=("working on shard 0",)), job=f"{RUN}-long-1", replica="master"
    )
    env = cluster.env()
    proc = start_sail("run", "-f", str(path), env=env, log=tmp_path / "run.log")
    wait_for(lambda: running_pods(cluster), timeout=120, what="the stage's pod to run")
    assert [j["metadata"]["name"] for j in cluster.jobs(job_api)] == [f"{RUN}-long-1"]  # type: ignore[index]

    res = sail("cancel", RUN, "-f", str(path), env=env)
    assert res.returncode == 0, res.stderr
    assert f"cancelled run {RUN!r}: {RUN}-long-1" in res.stdout
    proc.wait(timeout=120)
    evs = events((tmp_path / "run.log").read_text())
    assert evs[-1]["event"] == "run_finished" and evs[-1]["status"] == "cancelled", evs[-3:]
    assert cluster.jobs(job_api) == []  # deleted with foreground propagation ...
    wait_for(lambda: not cluster.pods(), timeout=120, what="the pods to be garbage-collected")  # ... pods too
    state = load_state(LocalStore(store), RUN)
    assert state is not None and state.stages["long"].state == "cancelled"

    logs = sail("logs", RUN, "long", "-p", str(path), env=env)
    assert logs.returncode == 0, logs.stderr
    assert "working on shard 0" in logs.stdout  # archived before the delete
