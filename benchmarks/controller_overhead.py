"""Controller overhead: API requests to follow one stage attempt, and store requests to find done shards.

API: one PyTorchJob attempt that runs DURATION simulated minutes on the fake cluster (the
simulated training operator; a SimulatedClock makes a minute pass in a fraction of a second).
Ours: `KubernetesBackend.submit` + `wait` (list+watch on the job and its pods). Baseline: submit
then a 1-second polling loop (one GET of the job per simulated second, the cheapest poll
there is; each poll moves the simulated clock one second) until the job finishes. Both count
every HTTP request the fake API server answers.
Ours is measured for several durations to show it does not grow with them.

Store: which of 10,000 shards are done, 6,000 of them marked. Ours: one
`ShardLedger.pending` (one listing of done/ plus one of the outputs' folder). Baseline: one
`exists()` per shard marker. Both count calls on the same local store (on S3, one listing of
10,000 keys costs 10 LIST pages, still 1,000x fewer than 10,000 HEADs).

    python benchmarks/controller_overhead.py [--quick] [--minutes 10] [--shards 10000]

The last stdout line is one JSON object: benchmark, unit (requests), ours/baseline/ratio for the
API side (baseline/ours: higher is better), store_ours/store_baseline/store_ratio, and ours for
each duration.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from sailk8s.backends.base import Phase
from sailk8s.backends.kubernetes.backend import KubernetesBackend
from sailk8s.backends.kubernetes.manifest import GROUP, PLURAL, VERSION
from sailk8s.ledger import ShardLedger
from sailk8s.ledger.paths import StagePaths
from sailk8s.spec import Pipeline, parse_pipeline
from sailk8s.store.local import LocalStore
from sailk8s.testing.apiserver import FakeKubernetes
from sailk8s.testing.clock import SimulatedClock
from sailk8s.testing.operator import FakeTrainingOperator
from sailk8s.testing.stores import CountingStore

NS = "sail"


def pipeline(run: str) -> Pipeline:
    return parse_pipeline({
        "run": run, "backend": "kubernetes", "store": "s3://bench/runs", "namespace": NS,
        "store_secret": None,
        "stages": [{"name": "recaption", "kind": "caption", "outputs": ["data/out"],
                    "config": {"model": "models/captioner"},
                    "resources": {"nodes": 4, "gpus_per_node": 8}, "scheduling": {"gang": True}}],
    })


def cluster(speed: float) -> tuple[FakeKubernetes, SimulatedClock]:
    clock = SimulatedClock(speed=speed)
    return FakeKubernetes(namespaces=(NS,), clock=clock), clock


def ours(minutes: float, speed: float) -> int:
    """Requests made by submit + wait for one attempt of `minutes` simulated minutes."""
    kube, clock = cluster(speed)
    with kube, FakeTrainingOperator(kube, mode="simulate", duration=minutes * 60):
        backend = KubernetesBackend(configuration=kube.client_configuration(), namespace=NS, clock=clock.now)
        p = pipeline("ours")
        ref = backend.submit(p, p.stages[0], 1)
        status = backend.wait(ref, timeout=minutes * 60 / speed + 60)
        assert status.phase == Phase.SUCCEEDED, status
        return len(kube.requests)


def baseline(minutes: float, speed: float) -> int:
    """Requests made by submit + GET of the job every simulated second until it finishes."""
    kube, clock = cluster(speed)
    with kube, FakeTrainingOperator(kube, mode="simulate", duration=minutes * 60):
        backend = KubernetesBackend(configuration=kube.client_configuration(), namespace=NS, clock=clock.now)
        p = pipeline("base")
        ref = backend.submit(p, p.stages[0], 1)
        api = k8s.CustomObjectsApi(backend.client.api)
        while True:
            job = api.get_namespaced_custom_object(GROUP, VERSION, NS, PLURAL, ref.name)
            conds = {c["type"] for c in (job.get("status") or {}).get("conditions") or []
                     if c.get("status") == "True"}
            if conds & {"Succeeded", "Failed"}:
                break
            # One poll per simulated second, however long a request takes in real time.
            clock.advance(1.0)
            time.sleep(0.002)  # let the operator's reconcile tick see the new time
        return len(kube.requests)


def store_requests(shards: int, done_fraction: float = 0.6) -> tuple[int, int, float, float]:
    """(ours, baseline) store calls to decide which shards are done, and their seconds."""
    with tempfile.TemporaryDirectory(prefix="sail-bench-") as tmp:
        root = Path(tmp)
        paths = StagePaths("r1", "filter")
        ids = [f"shard-{i:06d}" for i in range(shards)]
        outputs = {sid: f"data/filtered/{sid}.tar" for sid in ids}
        done = ids[: int(shards * done_fraction)]
        # Set up on disk directly: the setup is not what is measured.
        (root / "data" / "filtered").mkdir(parents=True)
        (root / paths.done_prefix).mkdir(parents=True)
        for sid in done:
            (root / outputs[sid]).write_bytes(b"tar")
            (root / paths.done(sid)).write_text(json.dumps({
                "shard": sid, "output": outputs[sid], "sha256": "0" * 64, "samples": 1, "attempt": 1,
                "time": 0.0}))
        store = CountingStore(LocalStore(str(root)))
        t0 = time.perf_counter()
        pending = ShardLedger(store, "r1", "filter").pending(ids, outputs)
        t_ours = time.perf_counter() - t0
        ours_calls = sum(store.calls.values())
        store.calls.clear()
        t0 = time.perf_counter()
        base_pending = [sid for sid in ids if not store.exists(paths.done(sid))]
        t_base = time.perf_counter() - t0
        assert pending == base_pending and len(pending) == shards - len(done)
        return ours_calls, sum(store.calls.values()), t_ours, t_base


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer durations (under a minute)")
    ap.add_argument("--minutes", type=float, default=10.0, help="simulated run time of the attempt")
    ap.add_argument("--shards", type=int, default=10_000)
    args = ap.parse_args()
    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(30))  # warnings only

    # The baseline's clock barely runs on its own: its polls advance it, one second each.
    base = baseline(args.minutes, speed=1.0)
    durations = [1.0, args.minutes] if args.quick else [1.0, args.minutes, 60.0, 240.0]
    per_duration: dict[str, Any] = {f"ours_{m:g}min": ours(m, speed=600.0) for m in durations}
    main_ours = per_duration[f"ours_{args.minutes:g}min"]
    s_ours, s_base, t_ours, t_base = store_requests(args.shards)
    print(f"API requests for one {args.minutes:g}-minute attempt: ours {main_ours} (submit + list+watch "
          f"of job and pods), 1 s polling {base}")
    print("ours by duration: " + ", ".join(f"{k.removeprefix('ours_')}={v}" for k, v in per_duration.items()))
    print(f"store calls to find done shards among {args.shards}: ours {s_ours} ({t_ours * 1000:.0f} ms), "
          f"baseline {s_base} ({t_base * 1000:.0f} ms)")
    print(json.dumps({
        "benchmark": "controller_overhead", "unit": "requests",
        "ours": main_ours, "baseline": base, "ratio": round(base / main_ours, 1),
        "minutes": args.minutes, **per_duration,
        "store_ours": s_ours, "store_baseline": s_base, "store_ratio": round(s_base / s_ours, 1),
        "store_ours_ms": round(t_ours * 1000, 1), "store_baseline_ms": round(t_base * 1000, 1),
        "shards": args.shards,
    }))


if __name__ == "__main__":
    main()
