"""The fake cluster's kubelet (and scheduler) for operator-made pods: start each, play its
behaviour or run its command, and end it the way a kubelet reports it."""

from __future__ import annotations

import copy
import dataclasses
import os
import socket
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sailk8s.testing import podstatus
from sailk8s.testing.behaviors import Action, PodBehavior, ScriptEntry, run
from sailk8s.testing.containers import container_problem, start_container
from sailk8s.testing.events import record_event
from sailk8s.testing.executor import PodProcess, Rewriter, default_rewrite, single_node, world_env
from sailk8s.testing.nodes import ensure_node, lose_node, node_for
from sailk8s.testing.podspecs import container_env, container_name, pod_identity
from sailk8s.testing.simresults import write_simulated_report

if TYPE_CHECKING:
    from sailk8s.testing.apiserver import FakeKubernetes

Obj = dict[str, Any]


@dataclass
class PodRun:
    """What the kubelet remembers about one pod incarnation."""

    namespace: str
    name: str
    uid: str
    job: str
    replica: str
    index: int
    behavior: PodBehavior
    created_at: float
    started_at: float | None = None
    started_stamp: str = ""
    node: str = ""
    ip: str = ""
    process: PodProcess | None = None
    executes: bool = False
    restarts: int = 0
    marked: bool = False  # one-shot states (node lost, unschedulable) already written
    done: bool = False


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeKubelet:
    """Runs the pods of the fake training operator: scripted behaviours, or their commands.

    Modes: "simulate" (pods succeed after `duration` clock seconds, or follow a script),
    "execute" (each pod's container command runs as a local process with the container env,
    secrets resolved, plus `extra_env`; its output is the pod log) and "container" (the same, in
    a podman container of the pod's own image: containers.py). When commands run, only the
    master runs, as a one-node world (`--nnodes` rewritten to 1) unless `execute_replicas="all"`;
    non-executed workers mirror the master. Deleting a pod kills its process.
    """

    def __init__(
        self,
        kube: FakeKubernetes,
        *,
        mode: str = "simulate",
        duration: float = 1.0,
        startup: float = 0.0,
        cwd: str | None = None,
        extra_env: dict[str, str] | None = None,
        execute_replicas: str = "master",
        rewrite: Rewriter = default_rewrite,
        kill_grace: float = 2.0,
        podman: str = "podman",
    ) -> None:
        if mode not in ("simulate", "execute", "container"):
            raise ValueError("mode must be 'simulate', 'execute' or 'container'")
        if execute_replicas not in ("master", "all"):
            raise ValueError("execute_replicas must be 'master' or 'all'")
        self.kube = kube
        self.clock = kube.clock
        self.mode = mode
        self.duration = duration
        self.startup = startup
        self.cwd = cwd
        self.extra_env = dict(extra_env or {})
        self.execute_replicas = execute_replicas
        self.rewrite = rewrite
        self.kill_grace = kill_grace
        self.podman = podman
        self.runs_commands = mode in ("execute", "container")
        self.scripts: list[ScriptEntry] = []
        self._runs: dict[str, PodRun] = {}
        self._ports: dict[str, int] = {}
        self._lock = threading.RLock()
        self._jobs = kube.type("pytorchjobs", "kubeflow.org")
        self._pods = kube.type("pods")

    # -- faults and lifecycle -----------------------------------------------------------------
    def script(self, entry: ScriptEntry) -> ScriptEntry:
        """Arm a scripted behaviour for future pods."""
        with self._lock:
            self.scripts.append(entry)
        return entry

    def inject(self, pod: str, behavior: PodBehavior, namespace: str = "default") -> None:
        """Switch a live pod to a fault `behavior` now (its `after` counts from this moment)."""
        if behavior.action == Action.RUN:
            raise ValueError("inject() takes a fault behaviour (evicted, oom_killed, hang...), not run()")
        process: PodProcess | None = None
        with self._lock:
            for pod_run in self._runs.values():
                if (pod_run.namespace, pod_run.name) == (namespace, pod) and not pod_run.done:
                    process, pod_run.process, pod_run.executes = pod_run.process, None, False
                    elapsed = 0.0 if pod_run.started_at is None else self.clock.now() - pod_run.started_at
                    pod_run.behavior = dataclasses.replace(behavior, after=elapsed + (behavior.after or 0.0))
                    break
            else:
                raise KeyError(f"no live pod {namespace}/{pod}")
        if process is not None:  # outside the lock: killing waits up to kill_grace
            process.kill(self.kill_grace)

    def pause(self, pod: str, namespace: str = "default", paused: bool = True) -> bool:
        """Freeze (or thaw) a live pod's processes, which the API still shows Running: a test's
        gate. False when the pod has no live process (not started yet, or ended)."""
        with self._lock:
            found = [r.process for r in self._runs.values()
                     if (r.namespace, r.name) == (namespace, pod) and not r.done and r.process is not None]
        for process in found:
            process.pause(paused)
        return bool(found)

    def forget(self, uid: str) -> None:
        """The pod was deleted (by anyone: user, GC, eviction): kill its process."""
        with self._lock:
            pod_run = self._runs.pop(uid, None)
        if pod_run is not None and pod_run.process is not None:
            threading.Thread(target=pod_run.process.kill, args=(self.kill_grace,), daemon=True).start()

    def stop(self) -> None:
        """Kill every process still running."""
        with self._lock:
            runs = list(self._runs.values())
        for pod_run in runs:
            if pod_run.process is not None:
                pod_run.process.kill(self.kill_grace)

    def live_run(self, uid: str) -> PodRun | None:
        """The pod's current incarnation, if it has one."""
        with self._lock:
            return self._runs.get(uid)

    # -- a pod's life -------------------------------------------------------------------------
    def _run_for(self, pod: Obj) -> PodRun:
        """The pod's incarnation, created (with the next matching script) on first sight."""
        meta = pod["metadata"]
        with self._lock:
            pod_run = self._runs.get(meta["uid"])
            if pod_run is None:
                job, replica, index = pod_identity(meta.get("labels") or {})
                behavior = self._take_script(meta["namespace"], job, replica, index, meta["name"])
                pod_run = PodRun(
                    meta["namespace"],
                    meta["name"],
                    meta["uid"],
                    job,
                    replica,
                    index,
                    behavior,
                    self.clock.now(),
                )
                self._runs[meta["uid"]] = pod_run
            return pod_run

    def _take_script(self, ns: str, job: str, replica: str, index: int, pod: str) -> PodBehavior:
        with self._lock:
            for entry in self.scripts:
                if entry.take(ns, job, replica, index, pod):
                    return entry.behavior
        return run()

    def advance(self, pod: Obj, job: Obj, master: Obj | None) -> None:
        """One step of the pod's life: start it, or play its behaviour or watch its process."""
        phase = pod.get("status", {}).get("phase")
        pod_run = self._run_for(pod)
        if phase in ("Succeeded", "Failed") or pod_run.done:
            return
        now = self.clock.now()
        stamp = self.clock.timestamp()
        behavior = pod_run.behavior
        if pod_run.started_at is None:
            self._start(pod, pod_run, job, now, stamp)
            return
        elapsed = now - pod_run.started_at
        action = behavior.action
        after = behavior.after if behavior.after is not None else self.duration
        if action == Action.HANG:
            return
        if action == Action.NODE_LOST:
            if elapsed >= after and not pod_run.marked:
                pod_run.marked = True
                self._set_pod_status(
                    pod, podstatus.node_lost(pod["status"], stamp, pod_run.node, pod_run.name)
                )
                record_event(self.kube, pod, "Warning", "NodeNotReady", f"Node is not ready: {pod_run.node}")
                lose_node(self.kube, pod_run.node, stamp)
            return
        if action == Action.CRASH_LOOP:
            if elapsed >= after * (pod_run.restarts + 1):
                pod_run.restarts += 1
                self.kube.logs.start(pod_run.namespace, pod_run.name, container_name(pod))
                self._log(pod, pod_run, f"fatal: crashed with exit code {behavior.exit_code}")
                self._set_pod_status(
                    pod,
                    podstatus.crash_loop(
                        pod, stamp, pod_run.started_stamp, pod_run.ip, pod_run.restarts, behavior.exit_code
                    ),
                )
                record_event(self.kube, pod, "Warning", "BackOff", "Back-off restarting failed container")
            return
        if action == Action.RUN and self.runs_commands:
            if pod_run.executes:
                process = pod_run.process
                code = process.returncode() if process is not None else 127
                if code is not None:
                    oom = process is not None and process.oom_killed
                    reason = "OOMKilled" if oom else "Completed" if code == 0 else "Error"
                    self.finish(pod, pod_run, code, reason)
            elif master is not None and master.get("status", {}).get("phase") == "Succeeded":
                self.finish(pod, pod_run, 0, "Completed")  # a mirrored worker ends with its master
            return
        if elapsed < after:
            return
        if action in (Action.RUN, Action.SUCCEED):
            self.finish(pod, pod_run, 0, "Completed")
        elif action == Action.FAIL:
            self.finish(pod, pod_run, behavior.exit_code, "Error")
        elif action == Action.OOM_KILLED:
            self.finish(pod, pod_run, 137, "OOMKilled")
        elif action == Action.EVICTED:
            record_event(self.kube, pod, "Warning", "Evicted", behavior.message or "Evicted")
            self.finish(
                pod, pod_run, 137, "Error", pod_reason="Evicted", pod_message=behavior.message
            )
        elif action == Action.PREEMPTED:
            record_event(self.kube, pod, "Normal", "Preempted", behavior.message or "Preempted")
            self.finish(
                pod,
                pod_run,
                143,
                "Error",
                disruption=("PreemptionByScheduler", behavior.message or "Preempted"),
            )

    def _start(self, pod: Obj, pod_run: PodRun, job: Obj, now: float, stamp: str) -> None:
        """Schedule, pull and start: or stop at the step the behaviour says fails."""
        behavior = pod_run.behavior
        if behavior.action == Action.UNSCHEDULABLE:
            if not pod_run.marked:
                pod_run.marked = True
                message = behavior.message or "0/1 nodes are available"
                self._set_pod_status(pod, podstatus.unschedulable(pod, stamp, message))
                record_event(
                    self.kube, pod, "Warning", "FailedScheduling", message, component="default-scheduler"
                )
            return
        if now - pod_run.created_at < self.startup:
            return
        node = node_for(pod_run.index)
        ensure_node(self.kube, node, stamp)
        image = ((pod.get("spec", {}).get("containers") or [{}])[0]).get("image", "")
        if behavior.action == Action.IMAGE_PULL:
            if not pod_run.marked:
                pod_run.marked = True
                message = f'Back-off pulling image "{image}"'
                reason = behavior.reason or "ImagePullBackOff"
                self._set_pod_status(pod, podstatus.waiting(pod, stamp, node, reason, message))
                record_event(self.kube,
                    pod,
                    "Warning",
                    "Failed",
                    f'Failed to pull image "{image}": rpc error: code = '
                    "NotFound desc = failed to pull and unpack image",
                )
            return
        env, missing = container_env(self.kube, pod)
        if missing is not None:
            self._set_pod_status(
                pod, podstatus.waiting(pod, stamp, node, "CreateContainerConfigError", missing)
            )
            return
        if self.mode == "container" and behavior.action == Action.RUN:
            problem = None if pod_run.marked else container_problem(pod, self.podman)
            if problem is not None or pod_run.marked:  # checked once: a kubelet would back off
                pod_run.marked = True
                if problem is not None:
                    self._set_pod_status(pod, podstatus.waiting(pod, stamp, node, *problem))
                return
        pod_run.started_at = now
        pod_run.started_stamp = stamp
        pod_run.node = node
        pod_run.ip = f"10.244.{pod_run.index % 250}.{abs(hash(pod_run.uid)) % 250 + 2}"
        container = container_name(pod)
        self.kube.logs.start(pod_run.namespace, pod_run.name, container)
        self.kube.state.mutate(
            self._pods, pod_run.namespace, pod_run.name, lambda o: o["spec"].__setitem__("nodeName", node)
        )
        self._set_pod_status(pod, podstatus.running(pod, stamp, stamp, pod_run.ip))
        record_event(self.kube,
            pod,
            "Normal",
            "Scheduled",
            f"Successfully assigned {pod_run.namespace}/{pod_run.name} to {node}",
            component="default-scheduler",
        )
        record_event(
            self.kube, pod, "Normal", "Started", f"Started container {container}", component="kubelet"
        )
        if behavior.action == Action.RUN and self.runs_commands:
            pod_run.executes = pod_run.replica == "Master" or self.execute_replicas == "all"
            if pod_run.executes:
                self._spawn(pod, pod_run, job, env)
            return
        if behavior.action != Action.HANG:
            lines = behavior.logs or (f"simulated {pod_run.replica.lower()} {pod_run.index} started",)
            for line in lines:
                self._log(pod, pod_run, line)

    def _spawn(self, pod: Obj, pod_run: PodRun, job: Obj, env: dict[str, str]) -> None:
        """Run the container command (locally, or in a container), as a one-node world unless
        all replicas run."""
        container = (pod.get("spec", {}).get("containers") or [{}])[0]
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        with self._lock:
            port = self._ports.setdefault(job["metadata"]["uid"], _free_port())
        one_node = self.execute_replicas == "master"
        env = {**env, **world_env(env, port, one_node=one_node), **self.extra_env}
        name = container.get("name", "")

        def on_output(data: bytes) -> None:
            self.kube.logs.append(pod_run.namespace, pod_run.name, name, data, self.clock.timestamp())

        try:
            if self.mode == "container":
                pod_run.process = start_container(pod, env, on_output, one_node=one_node, podman=self.podman)
                return
            if not argv:
                self._log(pod, pod_run, "error: the container has no command to execute")
                return
            argv = single_node(argv) if one_node else argv
            pod_run.process = PodProcess(self.rewrite(argv), {**os.environ, **env}, self.cwd, on_output)
        except OSError as exc:
            self._log(pod, pod_run, f"exec {argv[0] if argv else container.get('image')!r} failed: {exc}")

    def finish(
        self,
        pod: Obj,
        pod_run: PodRun,
        exit_code: int,
        reason: str,
        *,
        pod_reason: str | None = None,
        pod_message: str | None = None,
        disruption: tuple[str, str] | None = None,
    ) -> None:
        """The container ended: restart it in place (OnFailure/Always) or terminate the pod."""
        stamp = self.clock.timestamp()
        policy = pod.get("spec", {}).get("restartPolicy", "Never")
        container = container_name(pod)
        in_place = (
            exit_code != 0 and pod_reason is None and disruption is None and policy in ("OnFailure", "Always")
        )
        if in_place:
            pod_run.restarts += 1
            last = podstatus.terminated_state(exit_code, reason, pod_run.started_stamp, stamp)
            self._log(pod, pod_run, f"container exited with code {exit_code}; restarting")
            self.kube.logs.close(pod_run.namespace, pod_run.name, container)
            self.kube.logs.start(pod_run.namespace, pod_run.name, container)
            pod_run.behavior = self._take_script(
                pod_run.namespace, pod_run.job, pod_run.replica, pod_run.index, pod_run.name
            )
            pod_run.started_at = self.clock.now()
            pod_run.started_stamp = stamp
            self._set_pod_status(
                pod, podstatus.running(pod, stamp, stamp, pod_run.ip, pod_run.restarts, last)
            )
            if pod_run.executes:
                job = self.kube.state.find(self._jobs, pod_run.namespace, pod_run.job)
                env, _ = container_env(self.kube, pod)
                if job is not None:
                    self._spawn(pod, pod_run, job, env)
            return
        pod_run.done = True
        if self.mode == "simulate" and pod_run.behavior.action in (Action.RUN, Action.SUCCEED, Action.FAIL):
            if exit_code == 0:  # as a real workload, a success leaves its report in the store
                problem = write_simulated_report(container_env(self.kube, pod)[0])
                if problem:
                    self._log(pod, pod_run, f"simulated report not written: {problem}")
            self._log(pod, pod_run, f"simulated {pod_run.replica.lower()} {pod_run.index} exited {exit_code}")
        self.kube.logs.close(pod_run.namespace, pod_run.name, container)
        self._set_pod_status(
            pod,
            podstatus.terminated(
                pod,
                stamp,
                pod_run.started_stamp or stamp,
                exit_code,
                reason,
                pod_run.restarts,
                pod_reason,
                pod_message,
                disruption,
            ),
        )

    def _set_pod_status(self, pod: Obj, status: Obj) -> None:
        meta = pod["metadata"]
        updated = self.kube.state.mutate(
            self._pods,
            meta["namespace"],
            meta["name"],
            lambda o: o.__setitem__("status", copy.deepcopy(status)),
        )
        pod["status"] = updated.get("status", {})

    def _log(self, pod: Obj, pod_run: PodRun, line: str) -> None:
        self.kube.logs.append(
            pod_run.namespace,
            pod_run.name,
            container_name(pod),
            line.encode() + b"\n",
            self.clock.timestamp(),
        )
