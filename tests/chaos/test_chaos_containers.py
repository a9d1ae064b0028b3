"""Chaos in real containers: the pod-level faults on the fake cluster's container mode, each pod a
podman container of its stage's image, where a SIGKILL, an OOM kill or a full disk is the kernel's.
The outputs must still equal the fault-free local run's, and no container may be left.

Skipped without podman or without the images (`make images-test` builds them).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sailk8s.ledger.runstate import load_state
from sailk8s.spec import parse_pipeline
from sailk8s.store.base import ObjectStore
from sailk8s.testing.chaos import Moment, Scenario, Snapshot, Strike, chaos_pipeline, run_scenario, world
from sailk8s.testing.chaos.catalogue import CHECKPOINT, CONTAINERS, RUNNING, SHARD
from sailk8s.testing.containers import ci_image, images_present

ROOT = Path(__file__).resolve().parents[2]

# Fixed scenarios, so that CI always covers the kinds the kernel carries out: an OOM kill at the
# pod's memory limit, SIGKILL and SIGTERM of a rank, a full disk; and the kubelet's: eviction, a
# deleted pod. `--seeds N` adds drawn container scenarios (tests/chaos/conftest.py).
SCENARIOS = {
    # The ingest is done in seconds: its faults strike once it runs, not at a shard it may pass.
    "kernel": [Strike("oom_killed", Moment("captioner", CHECKPOINT, 1)),
               Strike("disk_full", Moment("filter", SHARD, 1)),
               Strike("rank_sigkill", Moment("ingest", RUNNING))],
    "kubelet": [Strike("evicted", Moment("captioner", RUNNING)),
                Strike("pod_deleted", Moment("filter", SHARD, 1)),
                Strike("rank_sigterm", Moment("ingest", RUNNING))],
}

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not images_present([ci_image("filter"), ci_image("train")]),
                       reason="needs podman and the images sail-filter and sail-train (make images-test)"),
]


def _attempts(store: ObjectStore) -> dict[str, list[tuple[str | None, str | None, int | None]]]:
    """Each stage's attempts as (failure class, reason, exit code)."""
    state = load_state(store, "chaos")
    stages = state.stages.items() if state is not None else []
    return {name: [(a.failure, a.reason, a.exit_code) for a in st.attempts] for name, st in stages}


def _run(scenario: Scenario, tmp_path: Path, reference: Snapshot) -> None:
    doc = chaos_pipeline(CONTAINERS)
    with world(tmp_path, CONTAINERS, ROOT) as w:
        result = run_scenario(w, doc, parse_pipeline(doc), scenario, reference, timeout=600)
        print(result.summary())
        logs = "\n".join(w.logs())[-6000:]
        attempts = _attempts(w.store)
    assert result.violations == [], f"{result.summary()}\n{logs}"
    assert result.missed == [], result.summary()
    if any(s.kind == "oom_killed" for s in scenario.strikes):
        # The kernel's OOM kill reads as the kubelet's would: exit 137, OOMKilled, an app failure.
        assert ("app", "OOMKilled", 137) in attempts["captioner"], attempts


@pytest.mark.timeout(1500)
@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_pod_faults_in_containers(name: str, tmp_path: Path, reference: Snapshot) -> None:
    _run(Scenario(0, CONTAINERS, list(SCENARIOS[name])), tmp_path, reference)
