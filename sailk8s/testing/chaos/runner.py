"""Run a scenario: the controller as `python -m sailk8s run`, faults fired at their moments, then checks."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sailk8s.spec import Pipeline
from sailk8s.testing.chaos import invariants
from sailk8s.testing.chaos.catalogue import BY_NAME, CONTAINERS
from sailk8s.testing.chaos.inject import fire, reached
from sailk8s.testing.chaos.scenario import Scenario, Strike
from sailk8s.testing.chaos.world import NAMESPACE, World
from sailk8s.testing.containers import fake_pod_containers
from sailk8s.testing.waiting import until_empty

GLOBAL_KINDS = frozenset({"store_5xx", "store_reset", "store_slow", "store_down", "store_outage",
                          "controller_sigkill", "second_controller", "twin_controllers", "api_5xx_burst",
                          "create_conflict_409", "watch_gone_410", "watch_cut", "api_throttle_429"})


@dataclass
class Result:
    """What happened: exit codes, faults fired and missed, violations, wall time."""

    scenario: Scenario
    exit_code: int | None = None
    rerun_exit_code: int | None = None
    fired: list[str] = field(default_factory=list)
    missed: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    seconds: float = 0.0
    extra_controllers: list[int | None] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the test log."""
        return (f"{self.scenario}: exit {self.exit_code} (rerun {self.rerun_exit_code}), fired {self.fired},"
                f" missed {self.missed}, {len(self.violations)} violations, {self.seconds:.0f}s")


class _Controllers:
    """The scenario's current controller; controller faults replace it or start a rival."""

    def __init__(self, w: World, path: Path) -> None:
        self.w, self.path = w, path
        self.lock = threading.Lock()
        self.current = w.start_controller(path)
        self.rivals: list[subprocess.Popen[bytes]] = []

    def strike(self, kind: str) -> bool:
        with self.lock:
            if self.current.poll() is not None:
                return False
            if kind == "controller_sigkill":
                self.current.kill()
                self.current.wait(timeout=10)
                self.current = self.w.start_controller(self.path, "--lock-wait", "60")
            else:
                self.rivals.append(self.w.start_controller(self.path))
            return True

    def wait(self, timeout: float) -> int | None:
        """The exit code of the controller that drove the run: a refused one hands over to its rival."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                rc = self.current.poll()
                if rc not in (0, None):
                    rival = next((r for r in self.rivals if r.poll() in (0, None)), None)
                    if rival is not None:  # the rival won the lock: it drives the run now
                        self.rivals[self.rivals.index(rival)] = self.current
                        self.current, rc = rival, None
            if rc is not None:
                return rc
            time.sleep(0.2)
        return None


def _injector(w: World, run: str, strikes: list[Strike], ctl: _Controllers, res: Result,
              stop: threading.Event) -> None:
    pending = list(strikes)
    firing: list[threading.Thread] = []

    def strike_now(strike: Strike) -> None:  # one thread each: a fault that waits blocks no other
        try:
            (res.fired if fire(w, run, strike, ctl.strike) else res.missed).append(str(strike))
        except Exception as exc:  # a fault that could not be fired is a harness problem: say so
            res.violations.append(f"harness: firing {strike} raised {exc!r}")

    while pending and not stop.is_set():
        for strike in list(pending):
            try:
                due = reached(w, run, strike)
            except Exception as exc:
                pending.remove(strike)
                res.violations.append(f"harness: probing {strike} raised {exc!r}")
                continue
            if due:
                pending.remove(strike)
                firing.append(threading.Thread(target=strike_now, args=(strike,), daemon=True))
                firing[-1].start()
        time.sleep(0.05)
    for thread in firing:
        thread.join(timeout=70)
    res.missed.extend(str(s) for s in pending)


def _disarm_pods(w: World) -> None:
    if w.operator is not None:
        for entry in w.operator.scripts:
            entry.times = entry.used


def _disarm(w: World) -> None:
    w.proxy.clear()
    _disarm_pods(w)
    if w.kube is not None:
        w.kube.faults.clear()


def submitted_names(logs: list[str]) -> list[str]:
    """Attempt names the controllers submitted, from their JSON event lines."""
    names = []
    for text in logs:
        for line in text.splitlines():
            if line.startswith("{") and '"attempt_submitted"' in line:
                names.append(json.loads(line)["name"])
    return names


def allowed_classes(scenario: Scenario, fired: list[str], stages: list[str]) -> invariants.Allowed:
    """Per stage, one entry per attempt a fired fault may end: the failure classes it may show."""
    allowed: invariants.Allowed = {s: [] for s in stages}
    for strike in scenario.strikes:
        kind = BY_NAME[strike.kind]
        if str(strike) not in fired or not kind.classes:
            continue
        for stage in (stages if strike.kind in GLOBAL_KINDS else [strike.moment.stage]):
            allowed[stage].append(kind.classes)
            if kind.permanent:  # the attempt it struck was killed first (infra), the next one fails
                allowed[stage].append(frozenset({"infra"}))
    return allowed


def _cluster_leftovers(w: World, wait: float = 60.0) -> list[str]:
    """Pods still running or pending and leases still held, once `wait` seconds have not cleared
    them (deletion and garbage collection are asynchronous: a busy machine makes them late)."""
    return until_empty(lambda: _cluster_leftovers_now(w), wait)


def _cluster_leftovers_now(w: World) -> list[str]:
    if w.kube is None:
        return []
    bad = []
    pods, _ = w.kube.state.list(w.kube.type("pods"), NAMESPACE)
    for pod in pods:
        phase = pod.get("status", {}).get("phase")
        if phase in ("Running", "Pending"):
            bad.append(f"pod {pod['metadata']['name']} left {phase}")
    leases, _ = w.kube.state.list(w.kube.type("leases", "coordination.k8s.io"), NAMESPACE)
    for lease in leases:
        if lease.get("spec", {}).get("holderIdentity"):
            bad.append(f"lease {lease['metadata']['name']} still held by {lease['spec']['holderIdentity']}")
    return bad


def run_scenario(w: World, doc: dict[str, Any], pipeline: Pipeline, scenario: Scenario,
                 reference: invariants.Snapshot | None, timeout: float = 420.0) -> Result:
    """Run the pipeline under the scenario's faults, recover, and check every invariant."""
    start = time.monotonic()
    res = Result(scenario)
    path, _ = w.write_pipeline(doc)
    ctl = _Controllers(w, path)
    stop = threading.Event()
    thread = threading.Thread(target=_injector, args=(w, pipeline.run, scenario.strikes, ctl, res, stop),
                              daemon=True)
    thread.start()
    res.exit_code = ctl.wait(timeout)
    if res.exit_code not in (0, None) and scenario.permanent:
        # The permanent fault failed the run: lift it and run again, the other faults still armed.
        _disarm_pods(w)
        with ctl.lock:
            ctl.current = w.start_controller(path)
        res.rerun_exit_code = ctl.wait(timeout)
        if res.rerun_exit_code != 0:
            res.violations.append(f"the rerun after the permanent fault failed (exit {res.rerun_exit_code})")
    elif res.exit_code not in (0, None):
        res.violations.append(f"the run failed (exit {res.exit_code}) under recoverable faults")
    stop.set()
    thread.join(timeout=70)
    _disarm(w)
    for rival in ctl.rivals:
        try:
            res.extra_controllers.append(rival.wait(timeout=120))
        except subprocess.TimeoutExpired:
            res.extra_controllers.append(None)
            res.violations.append("a second controller did not finish")
    if res.exit_code is None or (scenario.permanent and res.exit_code and res.rerun_exit_code is None):
        res.violations.append(f"the run did not finish within {timeout:g}s")
    res.violations += check(w, pipeline, scenario, res, reference)
    res.seconds = time.monotonic() - start
    return res


def check(w: World, pipeline: Pipeline, scenario: Scenario, res: Result,
          reference: invariants.Snapshot | None) -> list[str]:
    """Every invariant of a finished scenario (see invariants)."""
    bad: list[str] = []
    left = w.leftovers()
    bad += [f"process {p.pid} left behind: {' '.join(p.argv)[:120]}" for p in left]
    bad += _cluster_leftovers(w)
    if w.backend == CONTAINERS:
        names = until_empty(lambda: fake_pod_containers(f"{pipeline.run}-"))  # removal is asynchronous
        bad += [f"container {name} left behind" for name in names]
    if w.store.exists(f"runs/{pipeline.run}/lock"):
        bad.append("the run's store lock was left behind")
    for rc in res.extra_controllers:
        if rc not in (0, 1, 2, 75, None):
            bad.append(f"a second controller exited {rc}")
    snap = invariants.snapshot(w.store, pipeline)
    if reference is not None:
        bad += invariants.compare_outputs(reference, snap)
    bad += invariants.check_accounting(snap, pipeline)
    names = [s.name for s in pipeline.stages]
    bad += invariants.check_attempts(snap.state, pipeline, allowed_classes(scenario, res.fired, names))
    bad += invariants.check_names(submitted_names(w.logs()))
    if w.kube is not None:
        created = [r for r in w.kube.requests if r.method == "POST"
                   and r.path.endswith("/pytorchjobs") and r.status == 201]
        stages = snap.state.stages.values() if snap.state else []
        state_names = [a.name for st in stages for a in st.attempts]
        if len(created) != len(set(state_names)):
            bad.append(f"{len(created)} PyTorchJobs created for {len(set(state_names))} attempts")
    return bad
