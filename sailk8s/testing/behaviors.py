"""What a fake pod does: succeed, fail, get OOM-killed, evicted, preempted, lose its node, hang..."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from enum import StrEnum


class Action(StrEnum):
    """The kinds of pod behaviour the fake operator can play."""

    RUN = "run"  # simulate mode: succeed after the default duration; execute mode: run the command
    SUCCEED = "succeed"
    FAIL = "fail"
    OOM_KILLED = "oom_killed"
    EVICTED = "evicted"
    PREEMPTED = "preempted"
    NODE_LOST = "node_lost"
    IMAGE_PULL = "image_pull"
    CRASH_LOOP = "crash_loop"
    UNSCHEDULABLE = "unschedulable"
    HANG = "hang"


@dataclass(frozen=True)
class PodBehavior:
    """One pod's script: an action, when it happens (`after` seconds of running) and its log lines.

    Arm one on the operator before the pod exists (`operator.script(...)`) or on a live pod
    (`operator.inject(...)`). Times are in the operator clock's seconds (simulated when it is).
    """

    action: Action = Action.RUN
    after: float | None = None  # None: the operator's default duration
    exit_code: int = 0
    reason: str | None = None
    message: str | None = None
    logs: tuple[str, ...] = ()


def run() -> PodBehavior:
    """The default: simulate success after the default duration, or execute the command."""
    return PodBehavior()


def succeed(after: float | None = None, logs: tuple[str, ...] = ()) -> PodBehavior:
    """Exit 0 after `after` seconds, printing `logs`."""
    return PodBehavior(Action.SUCCEED, after, 0, "Completed", logs=logs)


def fail(exit_code: int = 1, after: float = 0.0, logs: tuple[str, ...] = ()) -> PodBehavior:
    """Exit with `exit_code` (1-127 is permanent under restartPolicy ExitCode, >=128 retryable)."""
    return PodBehavior(Action.FAIL, after, exit_code, "Error", logs=logs)


def oom_killed(after: float = 0.0) -> PodBehavior:
    """The container is OOM-killed: terminated reason OOMKilled, exit 137."""
    return PodBehavior(Action.OOM_KILLED, after, 137, "OOMKilled")


def evicted(after: float = 0.0, message: str | None = None) -> PodBehavior:
    """The kubelet evicts the pod: phase Failed, status.reason Evicted."""
    text = message or "The node was low on resource: memory. Threshold quantity: 100Mi, available: 20Mi."
    return PodBehavior(Action.EVICTED, after, 137, "Evicted", text)


def preempted(after: float = 0.0) -> PodBehavior:
    """The scheduler preempts the pod: DisruptionTarget condition, terminated by SIGTERM (143)."""
    return PodBehavior(
        Action.PREEMPTED, after, 143, "PreemptionByScheduler", "Preempted in order to admit critical pod"
    )


def node_lost(after: float = 0.0) -> PodBehavior:
    """The node stops answering: the pod stays phase Running forever with reason NodeLost."""
    return PodBehavior(Action.NODE_LOST, after, 0, "NodeLost")


def image_pull_failure(reason: str = "ImagePullBackOff") -> PodBehavior:
    """The image cannot be pulled: the pod stays Pending, waiting ErrImagePull/ImagePullBackOff."""
    return PodBehavior(Action.IMAGE_PULL, 0.0, 0, reason, "Back-off pulling image")


def crash_loop(exit_code: int = 1, every: float = 1.0) -> PodBehavior:
    """The container keeps crashing: waiting CrashLoopBackOff, restartCount rising every `every` s."""
    return PodBehavior(Action.CRASH_LOOP, every, exit_code, "CrashLoopBackOff")


def unschedulable(message: str = "0/3 nodes are available: 3 Insufficient nvidia.com/gpu.") -> PodBehavior:
    """No node fits: Pending with PodScheduled False, reason Unschedulable."""
    return PodBehavior(Action.UNSCHEDULABLE, 0.0, 0, "Unschedulable", message)


def hang() -> PodBehavior:
    """Running forever with no log output."""
    return PodBehavior(Action.HANG)


@dataclass
class ScriptEntry:
    """Play `behavior` on the next `times` pods (None: all) matching job/replica/index."""

    behavior: PodBehavior
    job: str = "*"  # fnmatch pattern on the job name
    replica: str | None = None  # "master" / "worker"
    index: int | None = None
    times: int | None = 1
    used: int = 0
    namespace: str | None = None
    pods: list[str] = field(default_factory=list)  # pods it was applied to, for tests

    def take(self, namespace: str, job: str, replica: str, index: int, pod: str) -> bool:
        """Consume one use if this entry matches the new pod."""
        if self.times is not None and self.used >= self.times:
            return False
        if self.namespace and self.namespace != namespace:
            return False
        if not fnmatch.fnmatchcase(job, self.job):
            return False
        if self.replica and self.replica.lower() != replica.lower():
            return False
        if self.index is not None and self.index != index:
            return False
        self.used += 1
        self.pods.append(pod)
        return True
