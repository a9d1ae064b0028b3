"""Each failure class through the whole stack: `python -m sailk8s run` + KubernetesBackend + fake cluster.

Infra (eviction) and app (exit 1) faults are injected by the fake operator on the first attempt;
the retries run the real stages. The permanent failures are a real stage exiting 3 (bad
config) and an image that cannot be pulled. `python -m sailk8s status` shows each cause.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e_support import JOB_APIS, RUN, Cluster, events, sail, write_pipeline

from sailk8s.ledger.runstate import load_state
from sailk8s.store.local import LocalStore
from sailk8s.testing import behaviors

RETRY = {"max_attempts": 3, "backoff_base_seconds": 0.5, "backoff_cap_seconds": 2, "max_infra_retries": 3}
SMALL = {"raw_digits": 8, "reference_digits": 1, "reference_photos": 0, "sft_knowledge_digits": 0,
         "sft_instruction_digits": 0, "eval_digits": 1, "duplicates": 0, "thumbnails": 1}
RES = {"procs_per_node": 1, "cpu": "1", "memory": "1Gi"}


def pipeline(store: Path, job_api: str) -> dict[str, Any]:
    ingest = {"kind": "ingest", "resources": RES, "retry": RETRY,
              "config": {"source": "samples", "shard_size": 4, "sets": ["raw"], "samples": SMALL}}
    return {
        "run": RUN, "backend": "kubernetes", "store": f"file://{store}", "namespace": "sail",
        "store_secret": "sail-store-credentials", "kubernetes": {"job_api": job_api},
        "stages": [
            # infra: evicted on attempt 1, then the real ingest
            {"name": "evicted", **ingest, "outputs": ["data/raw"]},
            # app: exit 1 on attempt 1, then the real filter over the ingested shards
            {"name": "crashes", "kind": "filter", "depends": ["evicted"], "inputs": ["data/raw/raw"],
             "outputs": ["data/kept"], "resources": RES, "retry": RETRY,
             "config": {"text_fields": ["alt_text"], "filters": [{"type": "image", "min_side": 32}]}},
            # permanent: the real ingest exits 3 (no outputs to write to); its dependant never starts
            {"name": "badconfig", **ingest},
            {"name": "after-bad", **ingest, "depends": ["badconfig"], "outputs": ["data/never"]},
            # permanent: the image cannot be pulled
            {"name": "nopull", **ingest, "outputs": ["data/nopull"]},
        ],
    }


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("job_api", JOB_APIS)
def test_each_failure_class_through_the_cli(tmp_path: Path, cluster: Cluster, job_api: str) -> None:
    store = tmp_path / "store"
    path = write_pipeline(tmp_path / "pipeline.yaml", pipeline(store, job_api))
    op = cluster.operator
    op.script(behaviors.evicted(after=0.5), job=f"{RUN}-evicted-1", replica="master")
    op.script(behaviors.fail(exit_code=1, after=0.5, logs=("Traceback: boom",)), job=f"{RUN}-crashes-1",
              replica="master")
    op.script(behaviors.image_pull_failure(), job=f"{RUN}-nopull-*", replica="master", times=None)

    res = sail("run", "-f", str(path), env=cluster.env(), timeout=300)
    assert res.returncode == 1, res.stdout[-3000:] + res.stderr[-3000:]
    evs = events(res.stdout)
    assert evs[-1]["event"] == "run_finished" and evs[-1]["status"] == "failed"
    retrying = {e["stage"]: e for e in evs if e["event"] == "stage_retrying"}
    assert sorted(retrying) == ["crashes", "evicted"]  # the permanent ones were never retried
    assert retrying["crashes"]["delay"] == pytest.approx(0.5)  # backoff_base * 2**0
    assert "app" in retrying["crashes"]["cause"] and "infra" in retrying["evicted"]["cause"]

    st = load_state(LocalStore(store), RUN)
    assert st is not None
    names = ("evicted", "crashes", "badconfig", "after-bad", "nopull")
    ev, cr, bad, after, nopull = (st.stages[n] for n in names)
    # infra: retried, not counted as an app failure
    assert (ev.state, ev.infra_failures, ev.app_failures) == ("succeeded", 1, 0)
    assert [a.failure for a in ev.attempts] == ["infra", None] and ev.attempts[0].reason == "Evicted"
    # app: retried after a backoff, the second attempt ran the real filter
    assert (cr.state, cr.app_failures, [a.failure for a in cr.attempts]) == ("succeeded", 1, ["app", None])
    assert list((store / "data" / "kept").glob("shard-*.tar"))
    # permanent: one attempt, stopped at once, the dependant blocked
    assert (bad.state, len(bad.attempts), bad.attempts[0].failure) == ("failed", 1, "permanent")
    assert (after.state, after.attempts) == ("blocked", [])
    assert (nopull.state, len(nopull.attempts), nopull.attempts[0].failure) == ("failed", 1, "permanent")

    # Through the API: 2 + 2 + 1 + 1 jobs were created. The two that failed on pod evidence while
    # the job itself still ran (eviction, image pull) were deleted, so no gang keeps holding GPUs.
    assert cluster.created(job_api) == 6
    jobs = sorted(j["metadata"]["name"] for j in cluster.jobs(job_api))  # type: ignore[index]
    assert jobs == [f"{RUN}-badconfig-1", f"{RUN}-crashes-1", f"{RUN}-crashes-2", f"{RUN}-evicted-2"]

    status = sail("status", "-f", str(path), "--json", env=cluster.env())
    assert status.returncode == 0, status.stderr
    rows = {r["stage"]: r for r in json.loads(status.stdout.strip().splitlines()[-1])["stages"]}
    assert rows["evicted"]["state"] == "succeeded" and rows["evicted"]["attempts"] == 2
    assert rows["crashes"]["state"] == "succeeded" and rows["crashes"]["attempts"] == 2
    assert rows["badconfig"]["state"] == "failed"
    assert "permanent" in rows["badconfig"]["last_error"] and "exit code 3" in rows["badconfig"]["last_error"]
    assert rows["nopull"]["state"] == "failed"
    assert "permanent" in rows["nopull"]["last_error"] and "ImagePull" in rows["nopull"]["last_error"]
    assert rows["after-bad"]["state"] == "blocked"
