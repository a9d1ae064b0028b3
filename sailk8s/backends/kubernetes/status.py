"""Pure: a PyTorchJob and its pods (JSON dicts as the API returns them) -> one AttemptStatus."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sailk8s.backends.base import AttemptStatus, Phase
from sailk8s.backends.kubernetes.jobkinds import LABEL_COMPLETION_INDEX, TRAINER_NODE
from sailk8s.backends.kubernetes.manifest import (
    CONTAINER,
    LABEL_KUEUE_QUEUE,
    LABEL_REPLICA_INDEX,
    LABEL_REPLICA_TYPE,
)
from sailk8s.exitcodes import FailureClass, classify_exit_code

Obj = dict[str, Any]

IMAGE_REASONS = frozenset({"ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull"})
CONFIG_REASONS = frozenset({"CreateContainerConfigError", "CreateContainerError"})
PREEMPTION_REASONS = frozenset({"PreemptionByScheduler", "PreemptionByKubeScheduler"})
NODE_LOST_REASONS = frozenset({"DeletionByTaintManager", "DeletionByPodGC", "NodeLost"})
EVICTION_REASONS = frozenset({"EvictionByEvictionAPI", "TerminationByKubelet", "Evicted"})
DEFAULT_UNSCHEDULABLE_AFTER = 900.0
DEFAULT_NODE_LOST_AFTER = 300.0


def parse_time(value: str | None) -> float | None:
    """RFC 3339 (as the API writes it) -> epoch seconds; None stays None."""
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def pod_order_key(pod: Obj) -> tuple[int, int, str]:
    """Master (or a TrainJob's node 0) first, then workers by index, so rank 0's evidence and logs
    come first."""
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    if LABEL_COMPLETION_INDEX in labels:  # a TrainJob's node: the Job's completion index is its rank
        try:
            rank = int(labels[LABEL_COMPLETION_INDEX])
        except ValueError:
            rank = 0
        return (0 if rank == 0 else 1, rank, str(meta.get("name", "")))
    rtype = str(labels.get(LABEL_REPLICA_TYPE, "")).lower()
    try:
        index = int(labels.get(LABEL_REPLICA_INDEX, "0"))
    except ValueError:
        index = 0
    return (0 if rtype == "master" else 1, index, str(meta.get("name", "")))


def conditions(obj: Obj) -> dict[str, Obj]:
    """An object's status conditions by type."""
    return {c.get("type", ""): c for c in (obj.get("status") or {}).get("conditions") or []}


def is_true(conds: dict[str, Obj], kind: str) -> bool:
    """Whether condition `kind` is there with status True."""
    return str((conds.get(kind) or {}).get("status")) == "True"


def _container_statuses(pod: Obj) -> list[Obj]:
    status = pod.get("status") or {}
    statuses = list(status.get("initContainerStatuses") or []) + list(status.get("containerStatuses") or [])
    # The training container first: its exit code is the one that classifies the attempt.
    return sorted(statuses, key=lambda c: c.get("name") not in (CONTAINER, TRAINER_NODE))


@dataclass(frozen=True)
class PodVerdict:
    """What one pod says about its attempt: fatal (the attempt has failed) or informational."""

    fatal: bool
    reason: str
    message: str
    failure: FailureClass | None = None
    exit_code: int | None = None
    pod: str = ""


def _disruption(
    name: str, pod: Obj, conds: dict[str, Obj], now: float, node_lost_after: float
) -> PodVerdict | None:
    status = pod.get("status") or {}
    target = conds.get("DisruptionTarget")
    why = str((target or {}).get("reason", "")) if is_true(conds, "DisruptionTarget") else ""
    why = why or str(status.get("reason") or "")
    detail = (target or {}).get("message") or status.get("message") or why
    node = (pod.get("spec") or {}).get("nodeName") or "?"
    if why in PREEMPTION_REASONS or why == "Preempted":
        return PodVerdict(
            True,
            "Preempted",
            f"pod {name} was preempted on node {node}: {detail}",
            FailureClass.INFRA,
            pod=name,
        )
    if why in NODE_LOST_REASONS:
        return PodVerdict(
            True, "NodeLost", f"pod {name} lost its node {node}: {detail}", FailureClass.INFRA, pod=name
        )
    if why in EVICTION_REASONS:
        return PodVerdict(
            True,
            "Evicted",
            f"pod {name} was evicted from node {node}: {detail}",
            FailureClass.INFRA,
            pod=name,
        )
    ready = conds.get("Ready") or {}
    if ready.get("reason") == "NodeNotReady" or str(ready.get("status")) == "Unknown":
        since = parse_time(ready.get("lastTransitionTime"))
        if since is not None and now - since >= node_lost_after:
            return PodVerdict(
                True,
                "NodeLost",
                f"pod {name}: node {node} not ready for {now - since:.0f}s",
                FailureClass.INFRA,
                pod=name,
            )
    return None


def _containers(name: str, pod: Obj) -> PodVerdict | None:
    for cs in _container_statuses(pod):
        state, last = cs.get("state") or {}, cs.get("lastState") or {}
        waiting = state.get("waiting") or {}
        wreason, wmsg = str(waiting.get("reason") or ""), waiting.get("message") or ""
        if wreason in IMAGE_REASONS:
            return PodVerdict(
                True,
                wreason,
                f"pod {name}: image {cs.get('image', '?')!r} cannot be pulled "
                f"({wreason}: {wmsg or 'check the image name and pull secret'})",
                FailureClass.PERMANENT,
                pod=name,
            )
        if wreason in CONFIG_REASONS:
            return PodVerdict(
                True,
                wreason,
                f"pod {name}: container cannot start ({wreason}: {wmsg})",
                FailureClass.PERMANENT,
                pod=name,
            )
        for term in (state.get("terminated") or {}, last.get("terminated") or {}):
            if term.get("reason") == "OOMKilled":
                return PodVerdict(
                    True,
                    "OOMKilled",
                    f"pod {name}: container {cs.get('name')} was OOMKilled: "
                    "raise resources.memory or lower the batch size",
                    FailureClass.APP,
                    exit_code=term.get("exitCode"),
                    pod=name,
                )
        if wreason == "CrashLoopBackOff":
            code = (last.get("terminated") or {}).get("exitCode")
            failure = classify_exit_code(code) if isinstance(code, int) else FailureClass.APP
            return PodVerdict(
                True,
                "CrashLoopBackOff",
                f"pod {name}: container {cs.get('name')} keeps "
                f"crashing (last exit code {code}): {wmsg}".rstrip(": "),
                failure or FailureClass.APP,
                exit_code=code,
                pod=name,
            )
    return None


def _unschedulable(name: str, conds: dict[str, Obj], now: float, after: float) -> PodVerdict | None:
    sched = conds.get("PodScheduled") or {}
    if str(sched.get("status")) != "False" or sched.get("reason") != "Unschedulable":
        return None
    since = parse_time(sched.get("lastTransitionTime"))
    waited = now - since if since is not None else 0.0
    msg = f"pod {name} unschedulable for {waited:.0f}s: {sched.get('message') or 'no node fits'}"
    return PodVerdict(
        waited >= after, "Unschedulable", msg, FailureClass.INFRA if waited >= after else None, pod=name
    )


def pod_verdict(
    pod: Obj,
    now: float,
    *,
    unschedulable_after: float = DEFAULT_UNSCHEDULABLE_AFTER,
    node_lost_after: float = DEFAULT_NODE_LOST_AFTER,
) -> PodVerdict | None:
    """The most telling thing one pod says, or None if it looks healthy.

    The job's conditions alone miss what users complain about (a job "Running" after its node is
    gone, a gang half-started for hours, an image that will never pull), so the pods are read too:

    | pod evidence                                   | phase  | reason            | class     |
    |------------------------------------------------|--------|-------------------|-----------|
    | DisruptionTarget PreemptionBy*                 | Failed | Preempted         | infra     |
    | DisruptionTarget DeletionByTaintManager/PodGC, | Failed | NodeLost          | infra     |
    |   status.reason NodeLost, NotReady node > N s  |        |                   |           |
    | status.reason Evicted, EvictionByEvictionAPI,  | Failed | Evicted           | infra     |
    |   TerminationByKubelet                         |        |                   |           |
    | ErrImagePull, ImagePullBackOff, InvalidImage.. | Failed | ImagePullBackOff..| permanent |
    | CreateContainerConfigError (missing Secret...) | Failed | CreateContainer.. | permanent |
    | terminated OOMKilled (now or last state)       | Failed | OOMKilled         | app       |
    | CrashLoopBackOff                               | Failed | CrashLoopBackOff  | by exit code, else app |
    | PodScheduled=False Unschedulable > N s         | Failed | Unschedulable     | infra     |

    OOMKilled is `app`, not `infra`: the container outgrew its own memory limit, so the fix is in
    the stage (batch size, resources.memory), and in-place restarts would only repeat it.
    """
    name = str((pod.get("metadata") or {}).get("name", "?"))
    conds = conditions(pod)
    return (
        _disruption(name, pod, conds, now, node_lost_after)
        or _containers(name, pod)
        or _unschedulable(name, conds, now, unschedulable_after)
    )


def job_finished(job: Obj) -> bool:
    """Whether the operator has marked the job Succeeded (a TrainJob: Complete) or Failed."""
    conds = conditions(job)
    return is_true(conds, "Succeeded") or is_true(conds, "Complete") or is_true(conds, "Failed")


def failed_exit_code(pods: Iterable[Obj]) -> int | None:
    """The first non-zero exit code of the training container, master first."""
    for pod in sorted(pods, key=pod_order_key):
        for cs in _container_statuses(pod):
            for state in (cs.get("state") or {}, cs.get("lastState") or {}):
                code = (state.get("terminated") or {}).get("exitCode")
                if isinstance(code, int) and code != 0:
                    return code
    return None


def suspended_message(job: Obj, cond: Obj) -> str:
    """Why a suspended job waits: Kueue admission when it names a queue (Kueue suspends it until then)."""
    queue = ((job.get("metadata") or {}).get("labels") or {}).get(LABEL_KUEUE_QUEUE)
    if queue:
        return f"waiting for Kueue admission (queue {queue})"
    return str(cond.get("message") or "queued (suspended)")


def pod_verdicts(
    pods: Iterable[Obj],
    now: float,
    *,
    unschedulable_after: float = DEFAULT_UNSCHEDULABLE_AFTER,
    node_lost_after: float = DEFAULT_NODE_LOST_AFTER,
) -> list[PodVerdict]:
    """pod_verdict of each pod that says something, in the pods' order."""
    out = (pod_verdict(p, now, unschedulable_after=unschedulable_after, node_lost_after=node_lost_after)
           for p in pods)
    return [v for v in out if v]


def fatal_status(fatal: PodVerdict, t0: float | None, t1: float | None) -> AttemptStatus:
    """The FAILED status a fatal pod verdict decides."""
    return AttemptStatus(
        Phase.FAILED,
        reason=fatal.reason,
        message=fatal.message,
        failure=fatal.failure,
        exit_code=fatal.exit_code,
        details={"pod": fatal.pod},
        started_at=t0,
        finished_at=t1,
    )


def failed_condition_status(
    cond: Obj, pods: Iterable[Obj], t0: float | None, t1: float | None
) -> AttemptStatus:
    """A job's Failed condition, classified by the failed rank's exit code (deadline: app)."""
    text = str(cond.get("message") or "the job failed")
    code = failed_exit_code(pods)
    if "deadline" in text.lower() or cond.get("reason") == "DeadlineExceeded":
        return AttemptStatus(
            Phase.FAILED,
            reason="DeadlineExceeded",
            message=text,
            failure=FailureClass.APP,
            exit_code=code,
            started_at=t0,
            finished_at=t1,
        )
    # Without an exit code (pods already cleaned up) we cannot tell: count it as app.
    failure = classify_exit_code(code) if code is not None else FailureClass.APP
    return AttemptStatus(
        Phase.FAILED,
        reason="ExitCode" if code is not None else str(cond.get("reason")),
        message=text if code is None else f"exit code {code}: {text}",
        failure=failure or FailureClass.APP,
        exit_code=code,
        started_at=t0,
        finished_at=t1,
    )


def derive_status(
    job: Obj | None,
    pods: Iterable[Obj],
    *,
    now: float,
    unschedulable_after: float = DEFAULT_UNSCHEDULABLE_AFTER,
    node_lost_after: float = DEFAULT_NODE_LOST_AFTER,
    seen: Iterable[PodVerdict] = (),
) -> AttemptStatus:
    """One status from the job's conditions and its pods' states (pod evidence: see pod_verdict).

    `seen` holds fatal verdicts a watcher saw on pod states that no longer exist (an OOMKilled
    pod the operator already recreated): they still decide the attempt, unless it succeeded.
    """
    if job is None:
        return AttemptStatus(Phase.UNKNOWN, reason="NotFound", message="no such PyTorchJob")
    pods = sorted(pods, key=pod_order_key)
    status = job.get("status") or {}
    conds = conditions(job)
    t0, t1 = parse_time(status.get("startTime")), parse_time(status.get("completionTime"))
    if is_true(conds, "Succeeded"):
        return AttemptStatus(
            Phase.SUCCEEDED,
            reason="Succeeded",
            message=conds["Succeeded"].get("message"),
            started_at=t0,
            finished_at=t1,
        )
    verdicts = pod_verdicts(
        pods, now, unschedulable_after=unschedulable_after, node_lost_after=node_lost_after
    )
    fatal = next((v for v in [*verdicts, *seen] if v.fatal), None)
    if fatal is not None:
        return fatal_status(fatal, t0, t1)
    if is_true(conds, "Failed"):
        return failed_condition_status(conds["Failed"], pods, t0, t1)
    info = verdicts[0] if verdicts else None
    if is_true(conds, "Restarting"):
        return AttemptStatus(
            Phase.RUNNING,
            reason="Restarting",
            message=conds["Restarting"].get("message"),
            started_at=t0,
            finished_at=t1,
        )
    if is_true(conds, "Running"):
        return AttemptStatus(
            Phase.RUNNING,
            reason="Running",
            message=conds["Running"].get("message"),
            started_at=t0,
            finished_at=t1,
        )
    if is_true(conds, "Suspended"):
        return AttemptStatus(
            Phase.PENDING,
            reason="Suspended",
            message=suspended_message(job, conds["Suspended"]),
            started_at=t0,
            finished_at=t1,
        )
    return AttemptStatus(
        Phase.PENDING,
        reason=info.reason if info else "Created",
        message=info.message if info else (conds.get("Created") or {}).get("message"),
        started_at=t0,
        finished_at=t1,
    )


def next_deadline(
    pods: Iterable[Obj],
    *,
    unschedulable_after: float = DEFAULT_UNSCHEDULABLE_AFTER,
    node_lost_after: float = DEFAULT_NODE_LOST_AFTER,
) -> float | None:
    """When a time-based verdict (unschedulable, node not ready) would next turn fatal."""
    times: list[float] = []
    for pod in pods:
        conds = conditions(pod)
        sched, ready = conds.get("PodScheduled") or {}, conds.get("Ready") or {}
        if str(sched.get("status")) == "False" and sched.get("reason") == "Unschedulable":
            since = parse_time(sched.get("lastTransitionTime"))
            if since is not None:
                times.append(since + unschedulable_after)
        if ready.get("reason") == "NodeNotReady" or str(ready.get("status")) == "Unknown":
            since = parse_time(ready.get("lastTransitionTime"))
            if since is not None:
                times.append(since + node_lost_after)
    return min(times) if times else None
