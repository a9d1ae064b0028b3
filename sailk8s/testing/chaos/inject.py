"""Fire one drawn fault into a running world: processes, pods, API server, store proxy, controller."""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

from sailk8s.testing import behaviors
from sailk8s.testing.chaos.catalogue import BEFORE_MARKER, CHECKPOINT, CONTAINERS, RUNNING, SHARD, START
from sailk8s.testing.chaos.scenario import Strike
from sailk8s.testing.chaos.world import BUCKET, NAMESPACE, Proc, World, tagged
from sailk8s.testing.containers import oom_kill

HUGE = 1_000_000


def ranks(w: World, stage: str) -> list[Proc]:
    """The stage's live rank processes, lowest pid first."""
    return sorted((p for p in tagged(w.tag) if p.stage == stage and p.is_rank), key=lambda p: p.pid)


def _count(w: World, prefix: str, suffix: str) -> int:
    return sum(1 for k in w.store.list(prefix) if k.endswith(suffix))


def reached(w: World, run: str, strike: Strike) -> bool:
    """True once the strike's moment has come: the stage has a live rank and the progress is there."""
    m = strike.moment
    if m.at == START:
        return True
    if not ranks(w, m.stage):
        return False
    if m.at in (RUNNING, BEFORE_MARKER):
        return True
    if m.at == SHARD:
        return _count(w, f"runs/{run}/{m.stage}/done/", ".json") >= m.count
    if m.at == CHECKPOINT:
        return _count(w, f"runs/{run}/{m.stage}/ckpt/", "manifest.json") >= m.count
    return False


def _kill(procs: list[Proc], sig: int) -> bool:
    done = False
    for p in procs:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(p.pid, sig)
            done = True
    return done


def _pod(w: World, stage: str) -> str | None:
    """The running master pod of the stage's newest PyTorchJob."""
    assert w.kube is not None
    items, _ = w.kube.state.list(w.kube.type("pods"), NAMESPACE)
    found = [p for p in items if p["metadata"].get("labels", {}).get("sail.io/stage") == stage
             and p["metadata"]["name"].endswith("-master-0")
             and p.get("status", {}).get("phase") == "Running"]
    found.sort(key=lambda p: p["metadata"]["name"])
    return found[-1]["metadata"]["name"] if found else None


def _later(seconds: float, fn: Callable[[], Any]) -> None:
    t = threading.Timer(seconds, fn)
    t.daemon = True
    t.start()


def _marker_lost(w: World, run: str, stage: str) -> bool:
    """Hold the stage's next marker PUT for 4 s and kill its ranks while it is held."""
    match = f"PUT /{BUCKET}/runs/{run}/{stage}/done/"
    seen = len(w.proxy.log)
    w.proxy.inject("slow", 1, delay_s=4.0, match=match)
    deadline = time.monotonic() + 60
    idle_since: float | None = None
    while time.monotonic() < deadline:
        if any(match in line for line in w.proxy.log[seen:]):
            return _kill(ranks(w, stage), signal.SIGKILL)
        if ranks(w, stage):
            idle_since = None
        elif idle_since is None:
            idle_since = time.monotonic()
        elif time.monotonic() - idle_since > 3:  # the stage is over: nothing left to strike
            break
        time.sleep(0.05)
    w.proxy.clear()
    return False


def _corrupt_checkpoint(w: World, run: str, stage: str, n: int) -> bool:
    """Overwrite the weights of the stage's n-th checkpoint (after its manifest), then kill its ranks."""
    manifests = sorted(k for k in w.store.list(f"runs/{run}/{stage}/ckpt/") if k.endswith("manifest.json"))
    if len(manifests) < n:
        return False
    key = manifests[n - 1].rsplit("/", 1)[0] + "/model.safetensors"
    w.store.put(key, b"\0corrupted by chaos\0" * 64)
    return _kill(ranks(w, stage), signal.SIGKILL)


def _no_more_writes(pid: int) -> None:
    """RLIMIT_FSIZE 0 on `pid`: the kernel refuses its next file write (EFBIG, SIGXFSZ)."""
    hard = resource.prlimit(pid, resource.RLIMIT_FSIZE)[1]
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (0, hard))


def _no_more_writes_as_owner(pid: int) -> bool:
    """`_no_more_writes` from a child that takes `pid`'s uid and gid first: another user's limits
    need CAP_SYS_RESOURCE, which root may lack (a container's rank runs as uid 10001)."""
    owner = os.stat(f"/proc/{pid}")
    child = os.fork()
    if child == 0:  # only system calls here, then _exit: safe in a threaded parent
        code = 1
        try:
            os.setgroups([])
            os.setresgid(owner.st_gid, owner.st_gid, owner.st_gid)
            os.setresuid(owner.st_uid, owner.st_uid, owner.st_uid)
            _no_more_writes(pid)
            code = 0
        finally:
            os._exit(code)
    return os.waitpid(child, 0)[1] == 0


def _disk_full(w: World, stage: str) -> bool:
    done = False
    for p in ranks(w, stage):
        with contextlib.suppress(ProcessLookupError, OSError):
            try:
                _no_more_writes(p.pid)
                done = True
            except PermissionError:
                done = _no_more_writes_as_owner(p.pid) or done
    return done


def fire(w: World, run: str, strike: Strike, controller: Callable[[str], bool]) -> bool:
    """Inject `strike` now; False when it found nothing to strike (the stage had moved on)."""
    kind, stage, param = strike.kind, strike.moment.stage, strike.param
    op, kube = w.operator, w.kube
    if kind in ("rank_sigkill", "rank_sigterm"):
        found = ranks(w, stage)[:1]
        return _kill(found, signal.SIGKILL if kind == "rank_sigkill" else signal.SIGTERM)
    if kind == "launcher_sigkill":
        return _kill([p for p in tagged(w.tag) if p.stage == stage and p.is_launcher], signal.SIGKILL)
    if kind in ("controller_sigkill", "second_controller", "twin_controllers"):
        return controller(kind)
    if kind == "store_5xx":
        w.proxy.inject("503" if int(param) % 2 else "500", int(param))
        return True
    if kind == "store_reset":
        w.proxy.inject("reset", int(param))
        return True
    if kind == "store_slow":
        w.proxy.inject("slow", 5, delay_s=param)
        return True
    if kind in ("store_down", "store_outage"):
        w.proxy.inject("503", HUGE)
        _later(param if kind == "store_down" else 40.0, w.proxy.clear)
        return True
    if kind == "marker_lost":
        return _marker_lost(w, run, stage)
    if kind == "checkpoint_corrupt":
        return _corrupt_checkpoint(w, run, stage, strike.moment.count)
    if kind == "disk_full":
        return _disk_full(w, stage)
    if kind == "oom_killed" and w.backend == CONTAINERS:  # the kernel's OOM killer, at the pod's limit
        found = ranks(w, stage)[:1]
        try:
            return bool(found) and oom_kill(found[0].pid)
        except (FileNotFoundError, ProcessLookupError):
            return False  # the rank ended before it could be struck
    if kind == "multipart_partial":
        w.proxy.inject("reset", 1, match="partNumber=")
        return True
    assert op is not None and kube is not None, f"{kind} needs the fake cluster"
    if kind == "image_pull_error":
        op.script(behaviors.image_pull_failure(), job=f"{run}-{stage}-*", replica="master", times=None)
        return _kill(ranks(w, stage), signal.SIGKILL)  # the next attempt's pod will not pull
    if kind == "api_5xx_burst":
        kube.faults.fail(503, int(param), watch=False)
        return True
    if kind == "create_conflict_409":
        kube.faults.conflict_on_create(path="pytorchjobs")
        return True
    if kind == "watch_gone_410":
        kube.faults.expire_watch(2)
        return True
    if kind == "watch_cut":
        kube.faults.drop_watch(2)
        return True
    if kind == "api_throttle_429":
        kube.faults.throttle(3, retry_after=1)
        return True
    pod = _pod(w, stage)
    if pod is None:
        return False
    if kind == "pod_deleted":
        kube.state.delete(kube.type("pods"), NAMESPACE, pod)
        return True
    make = {"evicted": behaviors.evicted, "preempted": behaviors.preempted, "node_lost": behaviors.node_lost,
            "oom_killed": behaviors.oom_killed}[kind]
    op.inject(pod, make(), NAMESPACE)
    return True
