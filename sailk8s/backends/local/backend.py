"""LocalBackend: runs a stage attempt as local processes with the same command and env as a pod."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import structlog

from sailk8s.backends.archive import archived_logs
from sailk8s.backends.base import AttemptRef, AttemptStatus, Backend, Phase, RunLock
from sailk8s.backends.local import supervisor
from sailk8s.backends.local.procs import kill_tree, pid_alive, proc_start_time
from sailk8s.backends.local.storelock import StoreRunLock
from sailk8s.envcontract import launch_command, stage_env
from sailk8s.errors import BackendError
from sailk8s.exitcodes import FailureClass, classify_exit_code
from sailk8s.spec import Pipeline, Stage
from sailk8s.store.base import ObjectStore

log = structlog.get_logger(__name__)

# A claimed attempt directory without supervisor.json after this long was abandoned mid-submit.
_CLAIM_TIMEOUT = 30.0
_FOLLOW_POLL = 0.2


# An enclosing job's rendezvous (a controller run inside a pod or under torchrun, a test that
# trained in-process) must not leak into the attempt: the launcher's --standalone rendezvous
# makes its own. A leaked MASTER_PORT still held by its owner fails every attempt.
RENDEZVOUS_VARS = frozenset({
    "MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE",
    "GROUP_RANK", "GROUP_WORLD_SIZE", "ROLE_RANK", "ROLE_WORLD_SIZE", "ROLE_NAME",
    "PET_NNODES", "PET_NODE_RANK", "PET_MASTER_ADDR", "PET_MASTER_PORT", "PET_NPROC_PER_NODE",
})


def default_root() -> Path:
    """Where attempt directories live: $SAIL_LOCAL_DIR or ~/.cache/sail-pipeline/local."""
    env = os.environ.get("SAIL_LOCAL_DIR")
    return Path(env) if env else Path.home() / ".cache" / "sail-pipeline" / "local"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _signal_name(code: int) -> str:
    try:
        return signal.Signals(-code if code < 0 else code - 128).name
    except ValueError:
        return f"signal {abs(code)}"


class LocalBackend(Backend):
    """Stage attempts as local process groups under a supervisor; status from the supervisor's files.

    Each attempt gets a directory `<root>/<store-hash>/<run>/<run id>/<stage>/<attempt>/` (root:
    $SAIL_LOCAL_DIR or ~/.cache/sail-pipeline/local; the run id keeps an earlier run of the same
    name and store URI, e.g. before the store was wiped, from being adopted) holding:
        supervisor.json   pid (+ start time, against pid reuse) of the attempt's supervisor
        child.json        pid/process group of the command (the launcher)
        attempt.log       all ranks, `[rank r] ` prefixed; logs/rank-<r>.log one per rank
        exit.json         exit code, cancelled flag, last log line: written once it is over
    The command is the pod's (see `command`); it runs under sailk8s.backends.local.supervisor,
    detached in its own session, so it survives a killed controller. Creating the directory is
    the claim: a second submit of the same attempt adopts it.
    """

    name = "local"

    def __init__(
        self,
        store: ObjectStore,
        root: str | os.PathLike[str] | None = None,
        *,
        jobs_package: str | None = None,
        grace_seconds: float = 10.0,
        python: str = sys.executable,
    ) -> None:
        """`jobs_package` replaces `jobs` in `-m jobs.<kind>` (tests; default $SAIL_JOBS_PACKAGE or jobs)."""
        self.store = store
        self.root = Path(root) if root is not None else default_root()
        self.jobs_package = jobs_package or os.environ.get("SAIL_JOBS_PACKAGE") or "jobs"
        self.grace_seconds = grace_seconds
        self.python = python
        self._children: dict[AttemptRef, subprocess.Popen[bytes]] = {}
        self._store_tag = hashlib.sha256(store.uri.encode()).hexdigest()[:10]

    # -- paths and commands ---------------------------------------------------------------
    def attempt_dir(self, ref: AttemptRef) -> Path:
        """The attempt's local directory (logs, pid and exit records)."""
        return self.root / self._store_tag / ref.run / (ref.run_id or "_") / ref.stage / str(ref.attempt)

    def _stop_namesakes(self, ref: AttemptRef) -> None:
        """Stop the still-running attempts of earlier runs with this attempt's name (never adopted)."""
        for other in sorted((self.root / self._store_tag / ref.run).glob(f"*/{ref.stage}/{ref.attempt}")):
            run_id = other.parent.parent.name
            if run_id == (ref.run_id or "_"):
                continue
            old = AttemptRef(ref.run, ref.stage, ref.attempt, "" if run_id == "_" else run_id)
            if not self.status(old).phase.finished:
                log.warning("stopping an attempt of an earlier run with the same name", attempt=ref.name,
                            other_run_id=run_id, run_id=ref.run_id)
                self.cancel(old)

    def command(self, stage: Stage) -> list[str]:
        """The pod's command (`python -m jobs.launch ... -m jobs.<kind>`), made for one machine.

        Every node's processes run here (N = nodes x procs) behind a standalone rendezvous, and
        `--tee=3` tags each output line with its rank. The launcher exits with the first failed
        rank's own code (128+N for a signal), as it does in a pod.
        """
        nproc = stage.resources.world_size
        pod = launch_command(stage)  # python -m jobs.launch --nproc-per-node=P -m jobs.<kind>
        launcher = pod[1:3]
        args = [a for a in pod[3:] if not a.startswith("--nproc-per-node")]
        args = [f"{self.jobs_package}.{stage.kind}" if a == f"jobs.{stage.kind}" else a for a in args]
        return [self.python, *launcher, "--standalone", f"--nproc-per-node={nproc}", "--tee=3", *args]

    # -- Backend --------------------------------------------------------------------------
    def submit(self, pipeline: Pipeline, stage: Stage, attempt: int, run_id: str = "") -> AttemptRef:
        ref = AttemptRef(pipeline.run, stage.name, attempt, run_id)
        self._stop_namesakes(ref)
        d = self.attempt_dir(ref)
        try:
            d.parent.mkdir(parents=True, exist_ok=True)
            d.mkdir()
        except FileExistsError:
            return ref  # this attempt exists (running or finished): adopt it
        except OSError as err:
            raise BackendError(f"cannot create the attempt directory {d}: {err}") from None
        inherited = {k: v for k, v in os.environ.items()
                     if k not in RENDEZVOUS_VARS and not k.startswith("TORCHELASTIC_")}
        env = {**inherited, **stage_env(pipeline, stage, attempt, run_id)}
        cmd = [
            self.python,
            "-m",
            supervisor.__name__,
            "--grace",
            str(self.grace_seconds),
            str(d),
            "--",
            *self.command(stage),
        ]
        try:
            with open(d / "supervisor.err", "wb") as err_file:
                proc = subprocess.Popen(
                    cmd,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=err_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
        except OSError as err:
            raise BackendError(f"cannot start {ref.name}: {err}") from None
        self._children[ref] = proc
        tmp = d / ".supervisor.json.tmp"
        tmp.write_text(
            json.dumps(
                {
                    "pid": proc.pid,
                    "start_time": proc_start_time(proc.pid),
                    "submitted_at": time.time(),
                    "command": self.command(stage),
                }
            )
        )
        os.replace(tmp, d / "supervisor.json")
        return ref

    def status(self, ref: AttemptRef) -> AttemptStatus:
        child = self._children.get(ref)
        if child is not None:
            child.poll()  # reap our own finished supervisor so it is not a zombie
        d = self.attempt_dir(ref)
        if not d.is_dir():
            return AttemptStatus(Phase.UNKNOWN, reason="NotFound", message=f"no local attempt {ref.name}")
        sup = _read_json(d / "supervisor.json")
        exit_rec = _read_json(d / "exit.json")
        started = float(sup["submitted_at"]) if sup and "submitted_at" in sup else None
        if exit_rec is not None:
            return self._finished(exit_rec, started, d)
        if sup is None:
            if time.time() - d.stat().st_mtime < _CLAIM_TIMEOUT:
                return AttemptStatus(Phase.PENDING, reason="Starting", started_at=started)
            return AttemptStatus(
                Phase.FAILED,
                reason="Lost",
                failure=FailureClass.INFRA,
                message="the attempt was claimed but never started",
                started_at=started,
            )
        if pid_alive(int(sup["pid"]), sup.get("start_time")):
            phase = Phase.RUNNING if (d / "child.json").exists() else Phase.PENDING
            return AttemptStatus(phase, started_at=started, details={"log": str(d / "attempt.log")})
        # The supervisor died without an exit record (kill -9, reboot): the processes are gone.
        exit_rec = _read_json(d / "exit.json")  # it may have finished between the two reads
        if exit_rec is not None:
            return self._finished(exit_rec, started, d)
        return AttemptStatus(
            Phase.FAILED,
            reason="Lost",
            failure=FailureClass.INFRA,
            started_at=started,
            message=f"the attempt's supervisor (pid {sup['pid']}) died without an exit code",
        )

    def _finished(self, rec: dict[str, Any], started: float | None, d: Path) -> AttemptStatus:
        code = int(rec.get("exit_code", 1))
        finished = rec.get("finished_at")
        last = rec.get("last_line")
        details = {"log": str(d / "attempt.log")}
        if rec.get("archive_error"):
            details["archive_error"] = str(rec["archive_error"])
        if code == 0 and not rec.get("cancelled"):
            return AttemptStatus(
                Phase.SUCCEEDED, exit_code=0, started_at=started, finished_at=finished, details=details
            )
        if rec.get("cancelled"):
            return AttemptStatus(
                Phase.CANCELLED,
                reason="Cancelled",
                message="cancelled by request",
                exit_code=code,
                started_at=started,
                finished_at=finished,
                details=details,
            )
        failure = classify_exit_code(code) or FailureClass.APP
        if code < 0 or code >= 128:
            reason, what = "Killed", f"killed by {_signal_name(code)}"
        else:
            reason, what = "ExitCode", f"exit code {code}"
        message = f"{what}: {last}" if last else what
        return AttemptStatus(
            Phase.FAILED,
            reason=reason,
            message=message,
            failure=failure,
            exit_code=code,
            started_at=started,
            finished_at=finished,
            details=details,
        )

    def wait(self, ref: AttemptRef, timeout: float | None = None) -> AttemptStatus:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(ref)
            if st.phase.finished or st.phase is Phase.UNKNOWN:
                return st
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return st
            self._block(ref, left)

    def _block(self, ref: AttemptRef, timeout: float | None) -> None:
        """Sleep until the attempt's supervisor exits or timeout passes (no busy polling)."""
        child = self._children.get(ref)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout)
            return
        sup = _read_json(self.attempt_dir(ref) / "supervisor.json")
        if sup is None:  # being claimed right now: look again shortly
            time.sleep(0.1 if timeout is None else min(0.1, timeout))
            return
        try:
            # A pidfd becomes readable when the process exits, even when it is not our child.
            fd = os.pidfd_open(int(sup["pid"]))
        except ProcessLookupError:
            return
        except (OSError, AttributeError):
            time.sleep(1.0 if timeout is None else min(1.0, timeout))
            return
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            poller.poll(None if timeout is None else max(0, int(timeout * 1000)))
        finally:
            os.close(fd)

    def cancel(self, ref: AttemptRef) -> None:
        st = self.status(ref)
        if st.phase.finished or st.phase is Phase.UNKNOWN:
            return
        d = self.attempt_dir(ref)
        sup = _read_json(d / "supervisor.json")
        if sup is not None and pid_alive(int(sup["pid"]), sup.get("start_time")):
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(sup["pid"]), signal.SIGTERM)
            st = self.wait(ref, timeout=self.grace_seconds + 5)
            if st.phase.finished:
                return
        # The supervisor did not answer: kill everything and record the cancel ourselves.
        for rec in (_read_json(d / "child.json"), sup):
            if rec is not None:
                kill_tree(int(rec["pid"]), signal.SIGKILL)
        tmp = d / ".exit.json.tmp"
        tmp.write_text(
            json.dumps(
                {
                    "exit_code": -9,
                    "cancelled": True,
                    "finished_at": time.time(),
                    "last_line": "killed on cancel: the supervisor did not stop",
                }
            )
        )
        os.replace(tmp, d / "exit.json")

    def logs(self, ref: AttemptRef, *, follow: bool = False, rank: int | None = None) -> Iterator[str]:
        d = self.attempt_dir(ref)
        path = d / "attempt.log" if rank is None else d / "logs" / f"rank-{rank}.log"
        if path.exists():
            yield from self._tail(ref, path, follow)
            return
        if d.is_dir() and follow and not (d / "exit.json").exists():
            while not path.exists() and not self.status(ref).phase.finished:
                time.sleep(_FOLLOW_POLL)
            if path.exists():
                yield from self._tail(ref, path, follow)
                return
        yield from self._archived(ref, rank)

    def _tail(self, ref: AttemptRef, path: Path, follow: bool) -> Iterator[str]:
        with open(path, encoding="utf-8", errors="replace") as f:
            pending = ""
            while True:
                chunk = f.readline()
                if chunk:
                    pending += chunk
                    if pending.endswith("\n"):
                        yield pending.rstrip("\n")
                        pending = ""
                    continue
                if not follow or self.status(ref).phase.finished:
                    rest = f.read()  # anything written between the last read and the end
                    yield from (pending + rest).splitlines()
                    return
                time.sleep(_FOLLOW_POLL)

    def _archived(self, ref: AttemptRef, rank: int | None) -> Iterator[str]:
        """Logs archived in the store once the local files are gone (other machine, cleaned up)."""
        which = "" if rank is None else f" for rank {rank}"
        yield from archived_logs(
            self.store,
            ref,
            rank,
            label_single=True,  # as attempt.log: every line names its rank
            missing=lambda where: (
                f"no logs{which} for attempt {ref.name}: neither local files nor an archive at {where}"
            ),
        )

    def run_lock(self, run: str, holder: str, lease_seconds: float = 30.0) -> RunLock:
        """A lease object in the store at runs/<run>/lock (see StoreRunLock)."""
        return StoreRunLock(self.store, run, holder, lease_seconds)
