"""The chaos fault catalogue: every kind, where it strikes and how it is injected."""

from __future__ import annotations

from dataclasses import dataclass

LOCAL = "local"
KUBE = "kubernetes"
# The Kubernetes backend with each pod a podman container of its stage's image (the fake kubelet's
# container mode): signals, OOM kills and file-size limits are the kernel's, in real cgroups.
CONTAINERS = "containers"
BOTH = frozenset({LOCAL, KUBE})
KUBE_ONLY = frozenset({KUBE})

# Where a fault may strike, by the stage's progress (see scenario.Moment).
START = "start"  # the moment the run is started
RUNNING = "running"  # the stage's attempt has a live rank
SHARD = "shard"  # a data stage has written k shard markers (during shard k+1)
CHECKPOINT = "checkpoint"  # a training stage has written checkpoint n's manifest
BEFORE_MARKER = "before_marker"  # a shard's output is uploaded, its completion marker not yet


@dataclass(frozen=True)
class FaultKind:
    """One kind of fault: what it does, where it may strike, how it is injected, what it counts as."""

    name: str
    description: str
    strikes: tuple[str, ...]  # the moments it may be drawn at
    injection: str  # how the harness injects it
    backends: frozenset[str] = BOTH
    classes: frozenset[str] = frozenset({"infra"})  # failure classes an attempt it ends may show
    permanent: bool = False  # the run is expected to fail; a clean rerun must then finish
    data_only: bool = False  # needs a data stage (shards, markers)
    train_only: bool = False  # needs a training stage (checkpoints)
    drawn: bool = True  # False: listed, injectable by hand, but never drawn for the chaos pipeline
    in_containers: str = ""  # how it strikes a pod that is a real container ("": not drawn there)

    def line(self) -> str:
        """One line for `--list`: name, backends, moments and what it does."""
        where = ",".join(self.strikes)
        backends = "+".join(sorted(self.backends | ({CONTAINERS} if self.in_containers else set())))
        line = f"{self.name:22} [{backends}] at {where}: {self.description} ({self.injection})"
        return line + (f"; in containers: {self.in_containers}" if self.in_containers else "")


_PROGRESS = (RUNNING, SHARD, CHECKPOINT)
_ANY = frozenset({"infra", "app"})
ABSORBED: frozenset[str] = frozenset()  # retried inside the attempt or the controller: no attempt may fail

CATALOGUE: tuple[FaultKind, ...] = (
    FaultKind("rank_sigkill", "one rank is killed -9 mid-work", _PROGRESS,
              "os.kill(rank pid, SIGKILL) found by the run's tag in /proc",
              in_containers="the same kill of the rank's host pid (rootful podman: a host process)"),
    FaultKind("rank_sigterm", "one rank gets SIGTERM and its grace period", _PROGRESS,
              "os.kill(rank pid, SIGTERM)",
              in_containers="the same signal to the rank's host pid"),
    FaultKind("launcher_sigkill", "the attempt's launcher is killed -9; its ranks must die with it",
              _PROGRESS, "os.kill(jobs.launch pid, SIGKILL)",
              in_containers="SIGKILL to the container's jobs.launch, its main process: the container ends"),
    FaultKind("pod_deleted", "the master pod is deleted through the API", _PROGRESS,
              "DELETE pods/<job>-master-0 on the fake API server", KUBE_ONLY,
              in_containers="the kubelet stops the container: podman stop, SIGTERM, SIGKILL after the grace"),
    FaultKind("evicted", "the kubelet evicts the master pod", _PROGRESS,
              "operator.inject(pod, behaviors.evicted())", KUBE_ONLY,
              in_containers="podman stop (SIGTERM, SIGKILL after the grace), then the pod reads Evicted"),
    FaultKind("preempted", "the scheduler preempts the master pod (SIGTERM, 143)", _PROGRESS,
              "operator.inject(pod, behaviors.preempted())", KUBE_ONLY,
              in_containers="podman stop (SIGTERM, SIGKILL after the grace), then DisruptionTarget, 143"),
    FaultKind("node_lost", "the master pod's node stops answering (Running, reason NodeLost)", _PROGRESS,
              "operator.inject(pod, behaviors.node_lost())", KUBE_ONLY,
              in_containers="the container is stopped (its node is gone); the pod stays Running, NodeLost"),
    FaultKind("oom_killed", "the master container is OOM-killed (exit 137, OOMKilled)", _PROGRESS,
              "operator.inject(pod, behaviors.oom_killed())", KUBE_ONLY, frozenset({"app"}),
              in_containers="containers.oom_kill: the rank is made the OOM killer's first choice and its"
              " memory cgroup filled to the pod's limit: the kernel kills it, the cgroup's OOM event"
              " makes it OOMKilled"),
    FaultKind("image_pull_error", "the stage's next pod cannot pull its image", (RUNNING,),
              "operator.script(behaviors.image_pull_failure(), job=<run>-<stage>-*), then a clean rerun",
              KUBE_ONLY, frozenset({"permanent"}), permanent=True,
              in_containers="the same script: the pod waits ErrImagePull and no container starts"),
    FaultKind("api_5xx_burst", "the API server answers a burst of requests 503", _PROGRESS,
              "kube.faults.fail(503, times=3..8, watch=False)", KUBE_ONLY, classes=ABSORBED),
    FaultKind("create_conflict_409", "the next PyTorchJob create answers 409 AlreadyExists", (RUNNING,),
              "kube.faults.conflict_on_create(path=pytorchjobs)", KUBE_ONLY, classes=ABSORBED),
    FaultKind("watch_gone_410", "watch streams end with 410 Gone", _PROGRESS,
              "kube.faults.expire_watch(times=2)", KUBE_ONLY, classes=ABSORBED),
    FaultKind("watch_cut", "watch streams are cut mid-stream", _PROGRESS,
              "kube.faults.drop_watch(times=2)", KUBE_ONLY, classes=ABSORBED),
    FaultKind("api_throttle_429", "the API server throttles with 429 and Retry-After", _PROGRESS,
              "kube.faults.throttle(times=3, retry_after=1)", KUBE_ONLY, classes=ABSORBED),
    FaultKind("controller_sigkill", "the controller is killed -9; a new one is started and adopts", _PROGRESS,
              "Popen.kill() on `python -m sailk8s run`, then `run --lock-wait 60`", classes=ABSORBED),
    FaultKind("second_controller", "a second controller is started on the same run at once", _PROGRESS,
              "a second `python -m sailk8s run` (it must refuse or find nothing to do)", classes=ABSORBED),
    FaultKind("twin_controllers", "two controllers are started on the same run in the same instant", (START,),
              "a second `python -m sailk8s run` started right after the first", classes=ABSORBED),
    FaultKind("store_5xx", "the store answers a burst of requests 503/500", _PROGRESS,
              "FaultProxy.inject('503'/'500', times=3..8)", classes=ABSORBED),
    FaultKind("store_reset", "store connections are reset after the request is read", _PROGRESS,
              "FaultProxy.inject('reset', times=2..5)", classes=ABSORBED),
    FaultKind("store_slow", "store requests take seconds (latency)", _PROGRESS,
              "FaultProxy.inject('slow', times=3..6, delay_s=1..3)", classes=ABSORBED),
    FaultKind("store_down", "the store is down for seconds (every request 503), then back", _PROGRESS,
              "FaultProxy.inject('503', times=huge) for 4..12 s, then clear()", classes=ABSORBED),
    FaultKind("store_outage", "the store is down longer than the workloads' retry budget (30 s), then back",
              _PROGRESS, "FaultProxy.inject('503', times=huge) for 40 s, then clear(); exit 75 is infra"),
    FaultKind("marker_lost", "a shard's output is uploaded and the rank dies before its marker",
              (BEFORE_MARKER,), "FaultProxy 'slow' on the marker PUT, SIGKILL of the ranks meanwhile",
              data_only=True,
              in_containers="the same, the ranks' host pids killed"),
    FaultKind("multipart_partial", "a multipart (part) upload is reset half-way", (RUNNING, CHECKPOINT),
              "FaultProxy.inject('reset', match='partNumber='); objects > 8 MiB only, so not drawn for the"
              " tiny pipeline", train_only=True, drawn=False, classes=ABSORBED),
    FaultKind("checkpoint_corrupt",
              "a checkpoint's weights are corrupted after its manifest, then the rank dies",
              (CHECKPOINT,), "overwrite ckpt/step-N/model.safetensors in the store, SIGKILL the rank",
              train_only=True,
              in_containers="the same, the rank's host pid killed"),
    FaultKind("disk_full", "the rank can write no more local files (EFBIG / SIGXFSZ, as a full disk)",
              _PROGRESS, "prlimit(rank pid, RLIMIT_FSIZE, 0)", classes=_ANY,
              in_containers="the same prlimit on the rank's host pid: the kernel refuses its next write"),
)

BY_NAME: dict[str, FaultKind] = {k.name: k for k in CATALOGUE}


def kinds_for(backend: str) -> list[FaultKind]:
    """The kinds drawn for `backend` (for CONTAINERS: the pod-level kinds, those the containers
    make real; the API and store kinds act the same whatever runs the pods)."""
    if backend == CONTAINERS:
        return [k for k in CATALOGUE if k.in_containers and k.drawn]
    return [k for k in CATALOGUE if backend in k.backends and k.drawn]
