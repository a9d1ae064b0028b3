"""Pure builders of the pod status a kubelet and scheduler would write, for each pod state."""

from __future__ import annotations

from typing import Any

Obj = dict[str, Any]


def condition(
    kind: str, status: bool, now: str, reason: str | None = None, message: str | None = None
) -> Obj:
    """One pod condition (PodScheduled, Initialized, ContainersReady, Ready, DisruptionTarget)."""
    cond: Obj = {
        "type": kind,
        "status": "True" if status else "False",
        "lastProbeTime": None,
        "lastTransitionTime": now,
    }
    if reason:
        cond["reason"] = reason
    if message:
        cond["message"] = message
    return cond


def _container_names(pod: Obj) -> list[str]:
    return [c.get("name", "") for c in pod.get("spec", {}).get("containers") or []]


def _images(pod: Obj) -> dict[str, str]:
    return {c.get("name", ""): c.get("image", "") for c in pod.get("spec", {}).get("containers") or []}


def _container_statuses(
    pod: Obj, state: Obj, ready: bool, restarts: int, last: Obj | None = None
) -> list[Obj]:
    images = _images(pod)
    statuses = []
    for name in _container_names(pod):
        status: Obj = {
            "name": name,
            "image": images.get(name, ""),
            "imageID": "",
            "ready": ready,
            "restartCount": restarts,
            "started": "running" in state,
            "state": state,
            "lastState": last or {},
        }
        if "running" in state or "terminated" in state:
            status["containerID"] = f"containerd://{abs(hash((pod['metadata']['name'], name, restarts))):x}"
        statuses.append(status)
    return statuses


def unschedulable(pod: Obj, now: str, message: str) -> Obj:
    """Pending: the scheduler found no node."""
    return {
        "phase": "Pending",
        "qosClass": "Burstable",
        "conditions": [condition("PodScheduled", False, now, "Unschedulable", message)],
    }


def waiting(pod: Obj, now: str, node: str, reason: str, message: str) -> Obj:
    """Pending on a node: the container cannot start (ErrImagePull, CreateContainerConfigError...)."""
    return {
        "phase": "Pending",
        "qosClass": "Burstable",
        "hostIP": "10.0.0.1",
        "startTime": now,
        "conditions": [
            condition("PodScheduled", True, now),
            condition("Initialized", True, now),
            condition(
                "ContainersReady",
                False,
                now,
                "ContainersNotReady",
                f"containers with unready status: {_container_names(pod)}",
            ),
            condition(
                "Ready",
                False,
                now,
                "ContainersNotReady",
                f"containers with unready status: {_container_names(pod)}",
            ),
        ],
        "containerStatuses": _container_statuses(
            pod, {"waiting": {"reason": reason, "message": message}}, False, 0
        ),
    }


def running(pod: Obj, now: str, started: str, ip: str, restarts: int = 0, last: Obj | None = None) -> Obj:
    """Running and ready."""
    return {
        "phase": "Running",
        "qosClass": "Burstable",
        "hostIP": "10.0.0.1",
        "podIP": ip,
        "podIPs": [{"ip": ip}],
        "startTime": started,
        "conditions": [
            condition("PodScheduled", True, started),
            condition("Initialized", True, started),
            condition("ContainersReady", True, now),
            condition("Ready", True, now),
        ],
        "containerStatuses": _container_statuses(pod, {"running": {"startedAt": now}}, True, restarts, last),
    }


def terminated_state(
    exit_code: int, reason: str, started: str, finished: str, message: str | None = None
) -> Obj:
    """A containerStatuses[].state.terminated block."""
    state: Obj = {"exitCode": exit_code, "reason": reason, "startedAt": started, "finishedAt": finished}
    if message:
        state["message"] = message
    return {"terminated": state}


def terminated(
    pod: Obj,
    now: str,
    started: str,
    exit_code: int,
    reason: str,
    restarts: int = 0,
    pod_reason: str | None = None,
    pod_message: str | None = None,
    disruption: tuple[str, str] | None = None,
) -> Obj:
    """Succeeded (exit 0) or Failed; optional pod-level reason (Evicted) and DisruptionTarget."""
    phase = "Succeeded" if exit_code == 0 else "Failed"
    state = terminated_state(exit_code, reason, started, now)
    conditions = [
        condition("PodScheduled", True, started),
        condition("Initialized", True, started),
        condition("ContainersReady", False, now, "PodCompleted" if exit_code == 0 else "PodFailed"),
        condition("Ready", False, now, "PodCompleted" if exit_code == 0 else "PodFailed"),
    ]
    if disruption:
        conditions.append(condition("DisruptionTarget", True, now, disruption[0], disruption[1]))
    status: Obj = {
        "phase": phase,
        "qosClass": "Burstable",
        "hostIP": "10.0.0.1",
        "startTime": started,
        "conditions": conditions,
        "containerStatuses": _container_statuses(pod, state, False, restarts),
    }
    if pod_reason:
        status["reason"] = pod_reason
    if pod_message:
        status["message"] = pod_message
    return status


def node_lost(status: Obj, now: str, node: str, pod_name: str) -> Obj:
    """A Running pod whose node stopped answering: still Running, not Ready, reason NodeLost."""
    message = f"Node {node} which was running pod {pod_name} is unresponsive"
    result = dict(status)
    result["reason"] = "NodeLost"
    result["message"] = message
    result["conditions"] = [
        c
        if c["type"] not in ("Ready", "ContainersReady")
        else condition(c["type"], False, now, "NodeLost", message)
        for c in status.get("conditions") or []
    ]
    result["conditions"].append(
        condition(
            "DisruptionTarget",
            True,
            now,
            "DeletionByTaintManager",
            "Taint manager: deleting due to NoExecute taint",
        )
    )
    return result


def crash_loop(pod: Obj, now: str, started: str, ip: str, restarts: int, exit_code: int) -> Obj:
    """Running phase, container waiting in CrashLoopBackOff after its last crash."""
    status = running(pod, now, started, ip, restarts)
    last = terminated_state(exit_code, "Error", started, now)
    names = _container_names(pod)
    message = f"back-off 10s restarting failed container={names[0] if names else ''}"
    status["containerStatuses"] = _container_statuses(
        pod, {"waiting": {"reason": "CrashLoopBackOff", "message": message}}, False, restarts, last
    )
    status["conditions"] = [
        c
        if c["type"] not in ("Ready", "ContainersReady")
        else condition(c["type"], False, now, "ContainersNotReady")
        for c in status["conditions"]
    ]
    return status
