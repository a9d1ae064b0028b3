"""Pure: a TrainJob and its JobSet-created pods (JSON as the API returns them) -> one AttemptStatus,
in the same vocabulary as status.derive_status gives a PyTorchJob."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sailk8s.backends.base import AttemptStatus, Phase
from sailk8s.backends.kubernetes.status import (
    DEFAULT_NODE_LOST_AFTER,
    DEFAULT_UNSCHEDULABLE_AFTER,
    PodVerdict,
    conditions,
    failed_condition_status,
    fatal_status,
    is_true,
    parse_time,
    pod_order_key,
    pod_verdicts,
    suspended_message,
)

Obj = dict[str, Any]


def _times(job: Obj, pods: list[Obj]) -> tuple[float | None, float | None]:
    """A TrainJob has no start/completion time: its first pod's start and its final condition's time."""
    starts = [
        t for t in (parse_time((p.get("status") or {}).get("startTime")) for p in pods) if t is not None
    ]
    conds = conditions(job)
    final = next((conds[k] for k in ("Complete", "Failed") if is_true(conds, k)), None)
    return (min(starts) if starts else None), parse_time((final or {}).get("lastTransitionTime"))


def _running(job: Obj, pods: list[Obj]) -> bool:
    """Whether a node Job has active pods (jobsStatus) or a pod runs, which the watch may see first."""
    jobs = (job.get("status") or {}).get("jobsStatus") or []
    if any((j.get("active") or 0) > 0 or (j.get("ready") or 0) > 0 for j in jobs):
        return True
    return any((p.get("status") or {}).get("phase") == "Running" for p in pods)


def derive_trainjob_status(
    job: Obj | None,
    pods: Iterable[Obj],
    *,
    now: float,
    unschedulable_after: float = DEFAULT_UNSCHEDULABLE_AFTER,
    node_lost_after: float = DEFAULT_NODE_LOST_AFTER,
    seen: Iterable[PodVerdict] = (),
) -> AttemptStatus:
    """One status from the TrainJob's conditions (Created, Suspended, Complete, Failed), its
    jobsStatus and its pods' states (pod evidence as in status.pod_verdict, same classes)."""
    if job is None:
        return AttemptStatus(Phase.UNKNOWN, reason="NotFound", message="no such TrainJob")
    pods = sorted(pods, key=pod_order_key)
    conds = conditions(job)
    t0, t1 = _times(job, pods)
    if is_true(conds, "Complete"):
        cond = conds["Complete"]
        return AttemptStatus(
            Phase.SUCCEEDED, reason="Succeeded", message=cond.get("message"), started_at=t0, finished_at=t1
        )
    verdicts = pod_verdicts(
        pods, now, unschedulable_after=unschedulable_after, node_lost_after=node_lost_after
    )
    fatal = next((v for v in [*verdicts, *seen] if v.fatal), None)
    if fatal is not None:
        return fatal_status(fatal, t0, t1)
    if is_true(conds, "Failed"):
        return failed_condition_status(conds["Failed"], pods, t0, t1)
    if is_true(conds, "Suspended"):
        return AttemptStatus(
            Phase.PENDING,
            reason="Suspended",
            message=suspended_message(job, conds["Suspended"]),
            started_at=t0,
        )
    if _running(job, pods):
        return AttemptStatus(Phase.RUNNING, reason="Running", message="trainer nodes running", started_at=t0)
    info = verdicts[0] if verdicts else None
    return AttemptStatus(
        Phase.PENDING,
        reason=info.reason if info else "Created",
        message=info.message if info else (conds.get("Created") or {}).get("message"),
        started_at=t0,
    )
