"""The fake operator's container mode: pod specs become `podman run` (pure), and pods really run in
the project's images (skipped without podman or without the images `make images-test` builds)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from fk_support import GROUP, PLURAL, VERSION, pytorchjob
from kubernetes import client

from sailk8s.backends.kubernetes.status import derive_status
from sailk8s.exitcodes import FailureClass
from sailk8s.testing import FakeKubernetes, FakeTrainingOperator, wait_for
from sailk8s.testing.containerargs import PodSpecError, plan_container
from sailk8s.testing.containers import (
    PodContainer,
    ci_image,
    fake_pod_containers,
    images_present,
    oom_kill,
    podman_available,
)
from sailk8s.testing.waiting import until_empty

IMAGE = ci_image("train")


def _pod(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    base = {"name": "pytorch", "image": "img:1", **container}
    return {"metadata": {"name": "j1-master-0"}, "spec": {"containers": [base], **spec}}


# -- the translation, without podman ---------------------------------------------------------


def test_plan_keeps_command_args_env_names_and_limits() -> None:
    pod = _pod(
        {
            "command": ["python", "-m", "jobs.launch"],
            "args": ["--nproc-per-node=2"],
            "workingDir": "/opt/sail",
            "resources": {"limits": {"memory": "2Gi", "cpu": "1500m"}, "requests": {"cpu": "1"}},
            "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"}],
        },
        volumes=[{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}},
                 {"name": "tmp", "emptyDir": {}}],
    )
    plan = plan_container(pod, ["SAIL_STORE_SECRET_KEY"], name="c1", scratch=lambda v: f"/scratch/{v}")
    assert plan.memory_limit == 2 * 2**30
    assert plan.args == ["--nproc-per-node=2"]
    assert '--entrypoint=["python", "-m", "jobs.launch"]' in plan.options
    assert "--env=SAIL_STORE_SECRET_KEY" in plan.options  # the name only: values never reach argv
    assert {"--network=host", "--pull=never", "--hostname=j1-master-0", "--cpus=1.5", "--workdir=/opt/sail",
            f"--mount=type=tmpfs,destination=/dev/shm,tmpfs-mode=1777,tmpfs-size={2**30}",
            "--mount=type=bind,source=/scratch/tmp,destination=/tmp"} <= set(plan.options)


def test_plan_maps_the_security_context() -> None:
    pod = _pod(
        {"securityContext": {"runAsUser": 10001, "readOnlyRootFilesystem": True,
                             "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}},
        securityContext={"runAsUser": 5, "runAsGroup": 10001, "fsGroup": 10001, "runAsNonRoot": True},
    )
    plan = plan_container(pod, [], name="c1", scratch=str, image_user="10001:10001")
    assert plan.user == "10001:10001"  # the container's runAsUser wins, the pod's group stays
    assert {"--user=10001:10001", "--group-add=10001", "--read-only", "--read-only-tmpfs=false",
            "--security-opt=no-new-privileges", "--cap-drop=all"} <= set(plan.options)


@pytest.mark.parametrize(
    ("context", "image_user", "message"),
    [
        ({"runAsNonRoot": True}, "", "image will run as root"),
        ({"runAsNonRoot": True}, "sail", r"non-numeric user \(sail\)"),
        ({"runAsNonRoot": True, "runAsUser": 0}, "10001", "runAsUser breaks non-root policy"),
    ],
)
def test_plan_refuses_what_a_kubelet_refuses(context: dict[str, Any], image_user: str, message: str) -> None:
    with pytest.raises(PodSpecError, match=message):
        plan_container(_pod({"securityContext": context}), [], name="c", scratch=str, image_user=image_user)


def test_plan_refuses_volumes_it_cannot_provide() -> None:
    pod = _pod({"volumeMounts": [{"name": "cfg", "mountPath": "/etc/sail"}]},
               volumes=[{"name": "cfg", "configMap": {"name": "sail"}}])
    with pytest.raises(PodSpecError, match="only emptyDir"):
        plan_container(pod, [], name="c", scratch=str)


# -- pods in real containers -----------------------------------------------------------------


needs_images = pytest.mark.skipif(
    not images_present([IMAGE]),
    reason=f"needs podman and {IMAGE} (make images-test builds it)",
)


def _job(name: str, script: str, *, memory: str | None = None, **kwargs: Any) -> dict[str, Any]:
    body = pytorchjob(name, ["python", "-c", script], **kwargs)
    for spec in body["spec"]["pytorchReplicaSpecs"].values():
        container = spec["template"]["spec"]["containers"][0]
        container["image"] = IMAGE
        container["securityContext"] = {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}, "runAsUser": 10001}
        container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
        spec["template"]["spec"]["volumes"] = [{"name": "dshm",
                                                "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}]
        if memory:
            container["resources"] = {"limits": {"memory": memory}}
    return body


@pytest.mark.slow
@needs_images
def test_container_mode_runs_the_pod_in_its_image(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    core.create_namespaced_secret("default", {"metadata": {"name": "store"}, "stringData": {"key": "s3cr3t"}})
    script = (
        "import os, sys, shutil\n"
        "try:\n    open('/opt/sail/x', 'w')\nexcept OSError as e:\n    ro = e.errno == 30\n"
        "caps = [l.split()[1] for l in open('/proc/self/status') if l.startswith('CapEff')][0]\n"
        "print('uid', os.getuid(), 'ro', ro, 'caps', caps, 'shm', shutil.disk_usage('/dev/shm').total,"
        " 'rank', os.environ['RANK'], 'secret', os.environ['AWS_SECRET_ACCESS_KEY'],"
        " 'host', os.environ.get('HOSTNAME', ''), 'args', sys.argv[1:], flush=True)\n"
        "sys.exit(3)\n"
    )
    env = [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "store", "key": "key"}}}]
    with FakeTrainingOperator(kube, mode="container", kill_grace=1.0) as operator:
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, _job("j1", script, env=env))
        operator.wait_for_job("j1", "Failed", timeout=60)
        assert operator.errors == []
    log = core.read_namespaced_pod_log("j1-master-0", "default").strip()
    assert log == (f"uid 10001 ro True caps 0000000000000000 shm {64 * 2**20} rank 0 secret s3cr3t "
                   "host j1-master-0 args []")
    state = core.read_namespaced_pod("j1-master-0", "default").status.container_statuses[0].state
    assert (state.terminated.exit_code, state.terminated.reason) == (3, "Error")
    assert fake_pod_containers("j1-") == []


@pytest.mark.slow
@needs_images
def test_container_mode_reports_a_real_oom_kill(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    script = "print('allocating', flush=True); x = bytearray(512 * 2**20); print('survived')"
    with FakeTrainingOperator(kube, mode="container") as operator:
        body = _job("j1", script, memory="128Mi", run_policy={"backoffLimit": 0, "cleanPodPolicy": "None"})
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
        operator.wait_for_job("j1", "Failed", timeout=60)
    pod = core.read_namespaced_pod("j1-master-0", "default")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")
    assert core.read_namespaced_pod_log("j1-master-0", "default").strip() == "allocating"
    # The controller's reading of it: OOMKilled, an app failure (README: raise the memory).
    api = client.ApiClient()
    job = custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "j1")
    status = derive_status(job, [api.sanitize_for_serialization(pod)], now=time.time())
    assert (status.reason, status.failure) == ("OOMKilled", FailureClass.APP)
    assert fake_pod_containers("j1-") == []
    assert not (Path.cwd() / "oom").exists()  # conmon's OOM note stays in the container's own folder


@pytest.mark.slow
@needs_images
def test_container_mode_deleting_the_job_stops_the_container(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    with FakeTrainingOperator(kube, mode="container", kill_grace=1.0):
        body = _job("j1", "import time; print('up', flush=True); time.sleep(120)")
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
        deadline = time.monotonic() + 60
        while "up" not in _log(core) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert fake_pod_containers("j1-") != []
        custom.delete_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "j1",
                                               propagation_policy="Foreground")
        while fake_pod_containers("j1-") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert fake_pod_containers("j1-") == []


def test_container_mode_without_the_image_waits_as_err_image_never_pull(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    if not podman_available():
        pytest.skip("needs podman")
    body = pytorchjob("j1", ["python", "-c", "pass"])
    body["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["image"] = (
        "localhost/sail/no-such-image:0"
    )
    with FakeTrainingOperator(kube, mode="container"):
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
        deadline = time.monotonic() + 20
        waiting = None
        while waiting is None and time.monotonic() < deadline:
            statuses = _statuses(core)
            waiting = statuses[0].state.waiting if statuses else None
            time.sleep(0.05)
    assert waiting is not None and waiting.reason == "ErrImageNeverPull"


def _statuses(core: client.CoreV1Api) -> list[Any]:
    try:
        return core.read_namespaced_pod("j1-master-0", "default").status.container_statuses or []
    except client.ApiException:
        return []


def _log(core: client.CoreV1Api) -> str:
    try:
        return str(core.read_namespaced_pod_log("j1-master-0", "default"))
    except client.ApiException:
        return ""


@pytest.mark.slow
@needs_images
def test_oom_kill_has_the_kernel_kill_a_running_pod_at_its_limit(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    # The pod lives well inside its limit: only the filler oom_kill adds to its cgroup brings the
    # kernel's OOM killer, and it must pick the process named, not the filler.
    script = "import time; print('up', flush=True); time.sleep(300); print('survived')"
    with FakeTrainingOperator(kube, mode="container", kill_grace=1.0) as operator:
        body = _job("j1", script, memory="256Mi", run_policy={"backoffLimit": 0, "cleanPodPolicy": "None"})
        custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)
        wait_for(lambda: "up" in _log(core), timeout=60, what="the pod's first line")
        uid = core.read_namespaced_pod("j1-master-0", "default").metadata.uid
        live = operator.kubelet.live_run(uid)
        assert live is not None and isinstance(live.process, PodContainer)
        pid = int(subprocess.run(["podman", "inspect", "--format", "{{.State.Pid}}", live.process.name],
                                 capture_output=True, text=True, check=True).stdout)
        assert oom_kill(pid)
        operator.wait_for_job("j1", "Failed", timeout=60)
    pod = core.read_namespaced_pod("j1-master-0", "default")
    terminated = pod.status.container_statuses[0].state.terminated
    assert (terminated.exit_code, terminated.reason) == (137, "OOMKilled")
    assert _log(core).strip() == "up"
    # Removal can finish in a kubelet thread after the job reads Failed (seen in CI: the container
    # was gone moments later): wait for it, a guard and not a bound.
    assert until_empty(lambda: fake_pod_containers("j1-")) == []


def test_oom_kill_refuses_a_process_without_a_small_enough_limit() -> None:
    # The filler takes memory up to the limit: a process with none, or one above `most`, is refused
    # before anything is written (no cgroup's limit is 1 MiB).
    with pytest.raises(OSError, match="no memory limit of at most 1048576 bytes"):
        oom_kill(os.getpid(), most=1 << 20)
    assert Path(f"/proc/{os.getpid()}/oom_score_adj").read_text().strip() == "0"
