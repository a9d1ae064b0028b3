"""Runs a fake pod's container with podman, in its own image, and tells a real OOM kill apart."""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from sailk8s.testing.containerargs import ContainerPlan, PodSpecError, plan_container
from sailk8s.testing.executor import PodProcess, single_node

Obj = dict[str, Any]

LABEL = "io.sailk8s.fake-pod"  # on every container the fake starts: `podman ps -a --filter label=...`
CGROUP_DIR = "sail-fake"


def podman_available(podman: str = "podman") -> bool:
    """Whether podman runs here (installed, and configured enough to answer `podman info`)."""
    if shutil.which(podman) is None:
        return False
    try:
        return subprocess.run([podman, "info"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ci_image(name: str) -> str:
    """The image `make images-test` builds for `name` (filter, train, caption, controller);
    SAIL_TEST_IMAGE_PREFIX and SAIL_TEST_IMAGE_TAG point tests at others."""
    prefix = os.environ.get("SAIL_TEST_IMAGE_PREFIX", "localhost/sail/sail-")
    return f"{prefix}{name}:{os.environ.get('SAIL_TEST_IMAGE_TAG', 'ci')}"


def images_present(images: list[str], podman: str = "podman") -> bool:
    """Whether podman runs here and has every one of `images` in local storage."""
    return podman_available(podman) and all(
        subprocess.run([podman, "image", "exists", i], capture_output=True).returncode == 0 for i in images
    )


def fake_pod_containers(prefix: str = "", podman: str = "podman") -> list[str]:
    """Names of the containers a fake kubelet started that still exist (running or not), those
    whose name (`<pod>-<hex>`) starts with `prefix`."""
    argv = [podman, "ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.Names}}"]
    res = subprocess.run(argv, capture_output=True, text=True)
    return [name for name in res.stdout.split() if name.startswith(prefix)]


def image_user(image: str, podman: str = "podman") -> str | None:
    """The image's USER ("" for root), or None when the image is not in local storage."""
    res = subprocess.run(
        [podman, "image", "inspect", "--format", "{{.Config.User}}", image], capture_output=True, text=True
    )
    return res.stdout.strip() if res.returncode == 0 else None


def _cgroup_v1_mounts() -> dict[str, str]:
    """Mount point of each cgroup v1 hierarchy, by its controllers ("memory", "cpu,cpuacct"...)."""
    mounts: dict[str, str] = {}
    with open("/proc/self/mountinfo") as fh:
        for line in fh:
            left, _, right = line.partition(" - ")
            fstype, _source, options = [*right.split(), "", "", ""][:3]
            if fstype == "cgroup":
                controllers = [o for o in options.split(",") if o not in ("rw", "ro", "relatime")]
                mounts[",".join(controllers)] = left.split()[4]
    return mounts


class MemoryCgroup:
    """A cgroup v1 memory cgroup around one container, like a kubelet's pod cgroup: the limit is
    set here, and an eventfd on its memory.oom_control says whether the OOM killer ran in it.

    (On this hybrid-cgroup host podman's own `State.OOMKilled` stays false after a real OOM kill.)
    """

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        root = self.memory_root()
        if root is None:
            raise OSError("no cgroup v1 memory hierarchy")
        self.path = os.path.join(root, CGROUP_DIR, name)
        os.makedirs(self.path, exist_ok=True)
        self._write("memory.limit_in_bytes", limit)
        if os.path.exists(os.path.join(self.path, "memory.memsw.limit_in_bytes")):
            self._write("memory.memsw.limit_in_bytes", limit)  # no swap, as on a kubelet's node
        self._event = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self._control = os.open(os.path.join(self.path, "memory.oom_control"), os.O_RDONLY | os.O_CLOEXEC)
        self._write("cgroup.event_control", f"{self._event} {self._control}")
        self._ooms = 0

    @staticmethod
    def memory_root() -> str | None:
        """The cgroup v1 memory hierarchy's mount point, None on a unified (v2) host."""
        try:
            mounts = _cgroup_v1_mounts()
        except OSError:
            return None
        return next((path for names, path in mounts.items() if "memory" in names.split(",")), None)

    @property
    def parent(self) -> str:
        """The `--cgroup-parent` that puts a container in here."""
        return f"/{CGROUP_DIR}/{self.name}"

    def _write(self, name: str, value: object) -> None:
        with open(os.path.join(self.path, name), "w") as fh:
            fh.write(str(value))

    def oom_killed(self) -> bool:
        """Whether the OOM killer ran in this cgroup (so far)."""
        with contextlib.suppress(BlockingIOError, OSError):
            self._ooms += os.eventfd_read(self._event)
        return self._ooms > 0

    def remove(self) -> None:
        """Close the eventfd and remove this cgroup (and podman's) from every hierarchy."""
        self.oom_killed()
        for fd in (self._event, self._control):
            with contextlib.suppress(OSError):
                os.close(fd)
        for mount in _cgroup_v1_mounts().values():
            top = os.path.join(mount, CGROUP_DIR, self.name)
            for dirpath, _dirs, _files in sorted(os.walk(top, topdown=False), key=lambda w: -len(w[0])):
                with contextlib.suppress(OSError):
                    os.rmdir(dirpath)


def memory_cgroup_of(pid: int) -> str | None:
    """The folder of the memory cgroup `pid` is in (cgroup v1's memory hierarchy, or v2's)."""
    try:
        with open(f"/proc/{pid}/cgroup") as fh:
            lines = [line.rstrip("\n").split(":", 2) for line in fh]
    except OSError:
        return None
    root = MemoryCgroup.memory_root()
    for _id, controllers, path in lines:
        if root is not None and "memory" in controllers.split(","):
            return os.path.join(root, path.lstrip("/"))
        if root is None and controllers == "":  # unified hierarchy: one line, "0::/path"
            return os.path.join("/sys/fs/cgroup", path.lstrip("/"))
    return None


# Run by `oom_kill` in the victim's memory cgroup: it writes a memfd 1 MiB at a time until the
# victim is gone (or `cap` bytes are written, or the deadline passes), then exits: 0 once the
# victim is gone, else 3. The memfd's pages are charged to the cgroup but are not in the filler's
# RSS, so the OOM killer's choice is not the filler (it cannot be made -1000 without
# CAP_SYS_RESOURCE); small writes let it stop as soon as the victim is gone.
_FILLER = """
import os, sys, time
procs, victim, cap = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
deadline = time.monotonic() + float(sys.argv[4])
with open(procs, "w") as fh:
    fh.write(str(os.getpid()))
def alive():
    try:
        with open(f"/proc/{victim}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False
fd, chunk, written = os.memfd_create("sail-oom-filler"), b"\\1" * (1 << 20), 0
while alive() and written < cap and time.monotonic() < deadline:
    written += os.write(fd, chunk)
sys.exit(0 if not alive() else 3)
"""


def memory_limit(folder: str) -> int | None:
    """The tightest memory limit on a cgroup folder and its parents (None: unlimited)."""
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limits = []
    while folder.startswith("/sys/fs/cgroup/") and os.path.isdir(folder):
        for name in ("memory.limit_in_bytes", "memory.max"):  # v1, v2
            with contextlib.suppress(OSError, ValueError), open(os.path.join(folder, name)) as fh:
                limits.append(int(fh.read().strip()))  # v2's "max" is no limit: ValueError
        folder = os.path.dirname(folder)
    limit = min(limits, default=total)
    return limit if limit < total else None


def oom_kill(pid: int, *, most: int = 8 << 30, timeout: float = 60.0) -> bool:
    """Make the kernel's OOM killer kill `pid`, as a memory spike at its limit would: `pid` is made
    the OOM killer's first choice (oom_score_adj 1000, which outweighs any usage under the limit),
    and a filler process joins `pid`'s memory cgroup and fills memory until the limit is hit.
    Needs root, and a memory limit of at most `most` bytes on that cgroup or above it (the filler
    may take that much: OSError otherwise). True once `pid` is gone."""
    folder = memory_cgroup_of(pid)
    limit = None if folder is None else memory_limit(folder)
    if folder is None or limit is None or limit > most:
        raise OSError(f"process {pid} has no memory limit of at most {most} bytes to be OOM-killed at")
    with open(f"/proc/{pid}/oom_score_adj", "w") as fh:
        fh.write("1000")
    procs = os.path.join(folder, "cgroup.procs")
    filler = subprocess.run(
        [sys.executable, "-c", _FILLER, procs, str(pid), str(limit), str(timeout)],
        capture_output=True,
        timeout=timeout + 30,
    )
    if not _alive(pid):  # the filler may be killed too, after its victim, on a busy machine
        return True
    if filler.returncode != 3:
        raise OSError(f"the memory filler failed: {filler.stderr.decode(errors='replace')[-500:]}")
    return False


def _alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except OSError:
        return False


class PodContainer(PodProcess):
    """One pod's container under `podman run` (attached: its output is the pod log).

    The memory limit goes on a MemoryCgroup around the container where cgroup v1 is mounted
    (else on podman's `--memory`, whose OOMKilled flag is read back): `oom_killed` is then the
    kubelet's `OOMKilled`. Killing is `podman stop` (SIGTERM, SIGKILL after the grace period), and
    a finished container is removed with its cgroup and scratch folders.
    """

    def __init__(
        self,
        image: str,
        plan: ContainerPlan,
        name: str,
        env: Mapping[str, str],
        on_output: Callable[[bytes], None],
        *,
        podman: str = "podman",
        scratch: list[str] | None = None,
    ) -> None:
        self.name = name
        self.podman = podman
        self._scratch = list(scratch or [])
        self._memcg: MemoryCgroup | None = None
        self._oom = False
        self._paused = False
        self._finished = False
        self._cleanup_lock = threading.Lock()
        options = [*plan.options, f"--label={LABEL}={name}"]
        if plan.memory_limit is not None:
            root = MemoryCgroup.memory_root()
            if root is not None and os.access(root, os.W_OK):  # rootless podman cannot: --memory
                self._memcg = MemoryCgroup(name, plan.memory_limit)
                options.append(f"--cgroup-parent={self._memcg.parent}")
            else:
                options += [f"--memory={plan.memory_limit}", f"--memory-swap={plan.memory_limit}"]
        # The env values travel in podman's environment (`--env NAME` copies them), never in argv.
        argv = [podman, "run", *options, image, *plan.args]
        # conmon writes a file named `oom` into its working directory when the container is
        # OOM-killed: give it a folder of its own, removed with the container.
        self._scratch.append(tempfile.mkdtemp(prefix="sail-fake-conmon-"))
        try:
            super().__init__(argv, {**os.environ, **env}, self._scratch[-1], on_output)
        except OSError:
            self._cleanup()
            raise

    @property
    def oom_killed(self) -> bool:
        """Whether the container ended because the OOM killer ran at its memory limit."""
        return self._oom

    def returncode(self) -> int | None:
        code = super().returncode()
        if code is not None:
            self._cleanup()
        return code

    def _cleanup(self) -> None:
        with self._cleanup_lock:
            if not self._finished:
                self._remove()

    def _remove(self) -> None:
        self._finished = True
        if self._memcg is not None:
            self._oom = self._memcg.oom_killed()
        else:
            res = subprocess.run(
                [self.podman, "inspect", "--format", "{{.State.OOMKilled}}", self.name],
                capture_output=True,
                text=True,
            )
            self._oom = res.stdout.strip() == "true"
        self._rm()
        if self._memcg is not None:
            self._memcg.remove()
        for folder in self._scratch:
            shutil.rmtree(folder, ignore_errors=True)

    def _rm(self, attempts: int = 60) -> None:
        """`podman rm --force` until `podman container exists` says the container is gone, since
        the removal's own exit status is ignored. Added for a leftover container seen under load
        after an OOM kill; that leftover still appeared once with the retry, so its cause is not
        this (see the closing note of stop 20)."""
        for _ in range(attempts):
            subprocess.run([self.podman, "rm", "--force", "--time=0", self.name], capture_output=True)
            exists = subprocess.run([self.podman, "container", "exists", self.name], capture_output=True)
            if exists.returncode:
                return
            time.sleep(0.5)

    def pause(self, paused: bool = True) -> None:
        """`podman pause` (the cgroup freezer) or `podman unpause`."""
        if self._proc.poll() is None:
            verb = "pause" if paused else "unpause"
            subprocess.run([self.podman, verb, self.name], capture_output=True, timeout=60)
            self._paused = paused

    def kill(self, grace: float = 2.0) -> None:
        """`podman stop` (SIGTERM, then SIGKILL after `grace`), then remove the container."""
        if self._proc.poll() is None:
            if self._paused:  # a frozen container cannot take its SIGTERM
                subprocess.run([self.podman, "unpause", self.name], capture_output=True, timeout=60)
            subprocess.run(
                [self.podman, "stop", f"--time={math.ceil(grace)}", self.name],
                capture_output=True,
                timeout=grace + 60,
            )
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                super().kill(grace)  # the podman client itself hangs: end it
        self._cleanup()


def scratch_dir(prefix: str) -> str:
    """A fresh host folder for a disk emptyDir, writable by any uid (as a kubelet makes them)."""
    path = tempfile.mkdtemp(prefix=f"sail-fake-{prefix}-")
    os.chmod(path, 0o777)
    return path


def container_problem(pod: Obj, podman: str = "podman") -> tuple[str, str] | None:
    """Why the pod's container cannot be created, as a kubelet's waiting (reason, message)."""
    container = (pod.get("spec", {}).get("containers") or [{}])[0]
    image = str(container.get("image", ""))
    user = image_user(image, podman)
    if user is None:
        return "ErrImageNeverPull", f'Container image "{image}" is not present with pull policy of Never'
    try:
        plan_container(pod, [], name="probe", scratch=lambda _v: "/nonexistent", image_user=user)
    except PodSpecError as exc:
        return "CreateContainerConfigError", str(exc)
    return None


def start_container(
    pod: Obj,
    env: Mapping[str, str],
    on_output: Callable[[bytes], None],
    *,
    one_node: bool,
    podman: str = "podman",
) -> PodContainer:
    """Run the pod's first container (its command and args with `--nnodes` made 1 if `one_node`)."""
    spec = pod.get("spec") or {}
    container = dict((spec.get("containers") or [{}])[0])
    if one_node:
        for key in ("command", "args"):
            if container.get(key):
                container[key] = single_node(list(container[key]))
    pod = {**pod, "spec": {**spec, "containers": [container]}}
    image = str(container.get("image", ""))
    name = f"{pod['metadata']['name']}-{secrets.token_hex(3)}"
    scratch: list[str] = []

    def new_scratch(volume: str) -> str:
        scratch.append(scratch_dir(volume))
        return scratch[-1]

    user = image_user(image, podman) or ""
    plan = plan_container(pod, env, name=name, scratch=new_scratch, image_user=user)
    return PodContainer(image, plan, name, env, on_output, podman=podman, scratch=scratch)
