"""The fake training operator: pods, env, conditions, restart policies, run policies, execute mode."""

from __future__ import annotations

import datetime as dt
import os
import sys
import time
from pathlib import Path

import pytest
from fk_support import GROUP, PLURAL, VERSION, pytorchjob, wait_for_phase, wait_for_pod
from kubernetes import client, watch

from sailk8s.testing import FakeKubernetes, FakeTrainingOperator, SimulatedClock, behaviors, wait_for


def _create(custom: client.CustomObjectsApi, body: dict[str, object]) -> dict[str, object]:
    return custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, body)  # type: ignore[no-any-return]


def _conditions(job: dict[str, object]) -> list[tuple[str, str, str]]:
    return [(c["type"], c["status"], c["reason"]) for c in job["status"]["conditions"]]  # type: ignore[index]


def test_job_moves_created_running_succeeded(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    rv = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"][
        "resourceVersion"
    ]
    with FakeTrainingOperator(kube, duration=0.3) as operator:
        # Every pod runs until told to finish: "Running" needs all three pods running at once, which
        # a fixed duration leaves to chance on a busy machine (the master could end before a worker
        # started). The workers end first, then the master, so the job succeeds with all three done.
        operator.script(behaviors.hang(), job="j1", times=None)
        _create(custom, pytorchjob("j1", workers=2, nproc="2", labels={"sail.io/run": "r1"}))
        seen: list[str] = []
        stream = watch.Watch()
        for event in stream.stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            "default",
            PLURAL,
            resource_version=rv,
            timeout_seconds=120,
        ):
            conditions = (event["object"].get("status") or {}).get("conditions") or []
            current = [c["type"] for c in conditions if c["status"] == "True"]
            if current and current[-1] not in seen:
                seen.append(current[-1])
                if current[-1] == "Running":
                    for worker in ("j1-worker-0", "j1-worker-1"):
                        operator.inject(worker, behaviors.succeed())
                    for worker in ("j1-worker-0", "j1-worker-1"):
                        wait_for_phase(core, worker, "Succeeded")
                    operator.inject("j1-master-0", behaviors.succeed())
            if "Succeeded" in current:
                stream.stop()
        job = operator.wait_for_job("j1")
    assert seen == ["Created", "Running", "Succeeded"]
    assert _conditions(job) == [
        ("Created", "True", "PyTorchJobCreated"),
        ("Running", "False", "PyTorchJobRunning"),
        ("Succeeded", "True", "PyTorchJobSucceeded"),
    ]
    assert job["status"]["conditions"][-1]["message"] == "PyTorchJob default/j1 successfully completed."
    assert job["status"]["replicaStatuses"]["Worker"]["succeeded"] == 2
    pods = {
        p.metadata.name: p for p in core.list_namespaced_pod("default", label_selector="sail.io/run=r1").items
    }
    assert sorted(pods) == ["j1-master-0", "j1-worker-0", "j1-worker-1"]
    worker = pods["j1-worker-1"]
    assert worker.metadata.labels["training.kubeflow.org/job-name"] == "j1"
    assert worker.metadata.labels["training.kubeflow.org/replica-type"] == "worker"
    assert worker.metadata.labels["training.kubeflow.org/replica-index"] == "1"
    assert worker.metadata.labels["training.kubeflow.org/operator-name"] == "pytorchjob"
    assert worker.metadata.owner_references[0].kind == "PyTorchJob"
    assert worker.spec.restart_policy == "Never"  # ExitCode: the operator, not the kubelet, restarts
    env = {e.name: e.value for e in worker.spec.containers[0].env}
    assert env["MASTER_ADDR"] == "j1-master-0" and env["MASTER_PORT"] == "23456"
    assert env["WORLD_SIZE"] == "6" and env["RANK"] == "2" and env["PET_NNODES"] == "3"
    assert env["PET_NPROC_PER_NODE"] == "2" and env["PET_NODE_RANK"] == "2"
    assert pods["j1-master-0"].metadata.labels["training.kubeflow.org/job-role"] == "master"
    assert core.read_namespaced_service("j1-master-0", "default").spec.cluster_ip == "None"
    reasons = {e.reason for e in core.list_namespaced_event("default").items}
    assert {"SuccessfulCreatePod", "PyTorchJobCreated", "PyTorchJobSucceeded", "Scheduled"} <= reasons
    assert operator.errors == []


def test_simulated_clock_runs_ten_minutes_fast(custom: client.CustomObjectsApi) -> None:
    with (
        FakeKubernetes(clock=SimulatedClock(speed=1200)) as kube,
        client.ApiClient(kube.client_configuration()) as api,
        FakeTrainingOperator(kube, duration=600) as operator,
    ):
        started = time.monotonic()
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, pytorchjob("long")
        )
        job = operator.wait_for_job("long", timeout=120)
    real = time.monotonic() - started
    assert real < 60  # ten simulated minutes took seconds, not minutes, even on a busy machine
    start = dt.datetime.fromisoformat(job["status"]["startTime"].replace("Z", "+00:00"))
    end = dt.datetime.fromisoformat(job["status"]["completionTime"].replace("Z", "+00:00"))
    # The full ten minutes ran, on the simulated clock: no more than the real time it took, sped up
    # (a fixed upper bound breaks when a busy machine delays a reconcile: 0.1 s real is 2 min here).
    assert 590 <= (end - start).total_seconds() <= real * 1200 + 2


def test_exit_code_policy_restarts_retryable_exits(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    with FakeTrainingOperator(kube, duration=0.2) as operator:
        entry = operator.script(behaviors.oom_killed(after=0.05), job="j1", replica="master")
        job = _create(custom, pytorchjob("j1"))
        done = operator.wait_for_job("j1")
    assert entry.pods == ["j1-master-0"]
    assert operator.restarts(job["metadata"]["uid"]) == 1  # type: ignore[index]
    assert _conditions(done)[-1] == ("Succeeded", "True", "PyTorchJobSucceeded")
    reasons = [e.reason for e in core.list_namespaced_event("default").items]
    assert "PyTorchJobRestarting" in reasons


def test_exit_code_policy_fails_on_permanent_exit(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    with FakeTrainingOperator(kube, duration=0.2) as operator:
        operator.script(behaviors.fail(exit_code=2, after=0.05), job="j1", replica="worker")
        _create(custom, pytorchjob("j1", workers=1))
        job = operator.wait_for_job("j1", "Failed")
    assert (
        job["status"]["conditions"][-1]["message"]
        == "PyTorchJob default/j1 is failed because 1 Worker replica(s) failed."
    )
    worker = core.read_namespaced_pod("j1-worker-0", "default")
    assert worker.status.container_statuses[0].state.terminated.exit_code == 2


def test_backoff_limit_stops_endless_restarts(kube: FakeKubernetes, custom: client.CustomObjectsApi) -> None:
    with FakeTrainingOperator(kube, duration=0.2) as operator:
        operator.script(behaviors.oom_killed(after=0.02), job="j1", times=None)
        _create(custom, pytorchjob("j1", run_policy={"backoffLimit": 2}))
        job = operator.wait_for_job("j1", "Failed")
    last = job["status"]["conditions"][-1]
    assert last["reason"] == "BackoffLimitExceeded"
    assert "reached the specified backoff limit" in last["message"]


def test_on_failure_restarts_in_place(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    with FakeTrainingOperator(kube, duration=0.2) as operator:
        operator.script(behaviors.fail(exit_code=1, after=0.05), job="j1")
        _create(custom, pytorchjob("j1", policy="OnFailure"))
        operator.wait_for_job("j1")
    status = core.read_namespaced_pod("j1-master-0", "default").status.container_statuses[0]
    assert status.restart_count == 1
    previous = core.read_namespaced_pod_log("j1-master-0", "default", previous=True)
    assert "exited with code 1" in previous


def test_active_deadline_fails_a_hanging_job(custom: client.CustomObjectsApi) -> None:
    with (
        FakeKubernetes(clock=SimulatedClock(speed=100)) as kube,
        client.ApiClient(kube.client_configuration()) as api,
        FakeTrainingOperator(kube) as operator,
    ):
        operator.script(behaviors.hang(), job="j1")
        client.CustomObjectsApi(api).create_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, pytorchjob("j1", run_policy={"activeDeadlineSeconds": 60})
        )
        job = operator.wait_for_job("j1", "Failed", timeout=120)
    assert job["status"]["conditions"][-1]["reason"] == "DeadlineExceeded"


def test_clean_pod_policy_and_ttl(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    with FakeTrainingOperator(kube, duration=0.1) as operator:
        _create(
            custom,
            pytorchjob("j1", workers=1, run_policy={"cleanPodPolicy": "All", "ttlSecondsAfterFinished": 1}),
        )
        operator.wait_for_job("j1")
        wait_for(lambda: not core.list_namespaced_pod("default").items, what="the pods cleaned up")
        wait_for(
            lambda: not custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"],
            what="the job deleted by its TTL",
        )


def test_execute_mode_runs_the_command_with_the_pod_env(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    core.create_namespaced_secret("default", {"metadata": {"name": "store"}, "stringData": {"key": "s3cr3t"}})
    script = (
        "import os, sys; print('rank', os.environ['RANK'], 'world', os.environ['WORLD_SIZE'], "
        "'secret', os.environ['AWS_SECRET_ACCESS_KEY'], 'extra', os.environ['EXTRA'], 'args', sys.argv[1:])"
    )
    env = [{"name": "AWS_SECRET_ACCESS_KEY", "valueFrom": {"secretKeyRef": {"name": "store", "key": "key"}}}]
    with FakeTrainingOperator(kube, mode="execute", extra_env={"EXTRA": "yes"}) as operator:
        _create(
            custom, pytorchjob("j1", ["python", "-c", script, "--nnodes=3"], workers=2, nproc="1", env=env)
        )
        operator.wait_for_job("j1", timeout=120)
        # The job succeeds with its master: wait for the simulated worker's own end.
        wait_for_phase(core, "j1-worker-1", "Succeeded")
    log = core.read_namespaced_pod_log("j1-master-0", "default")
    # The master ran alone as a one-node world: --nnodes rewritten, WORLD_SIZE = nproc.
    assert log.strip() == "rank 0 world 1 secret s3cr3t extra yes args ['--nnodes=1']"
    assert core.read_namespaced_pod("j1-worker-1", "default").status.phase == "Succeeded"
    assert operator.errors == []


def test_execute_mode_failure_sets_exit_code(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    with FakeTrainingOperator(kube, mode="execute") as operator:
        _create(custom, pytorchjob("j1", ["python", "-c", "import sys; print('bad config'); sys.exit(3)"]))
        operator.wait_for_job("j1", "Failed", timeout=120)
    pod = core.read_namespaced_pod("j1-master-0", "default")
    assert pod.status.container_statuses[0].state.terminated.exit_code == 3
    assert core.read_namespaced_pod_log("j1-master-0", "default").strip() == "bad config"


def test_execute_mode_logs_follow_while_running(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    script = "import time\nfor i in range(3):\n    print('step', i, flush=True)\n    time.sleep(0.2)\n"
    with FakeTrainingOperator(kube, mode="execute") as operator:
        _create(custom, pytorchjob("j1", ["python", "-c", script]))
        wait_for_phase(core, "j1-master-0", "Running")
        response = core.read_namespaced_pod_log("j1-master-0", "default", follow=True, _preload_content=False)
        lines = [line.decode().strip() for line in response.stream() if line.strip()]
        operator.wait_for_job("j1", timeout=120)
    assert [ln for ln in "\n".join(lines).splitlines() if ln] == ["step 0", "step 1", "step 2"]


def test_deleting_a_job_kills_its_processes(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi, tmp_path: Path
) -> None:
    pid_file = tmp_path / "pid"
    script = f"import os, time; open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    with FakeTrainingOperator(kube, mode="execute", kill_grace=1.0):
        _create(custom, pytorchjob("j1", ["python", "-c", script]))
        pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="the pid file"))
        custom.delete_namespaced_custom_object(
            GROUP, VERSION, "default", PLURAL, "j1", propagation_policy="Foreground"
        )
        assert core.list_namespaced_pod("default").items == []
        wait_for(lambda: not _alive(pid), what=f"process {pid} to end")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is dead for our purpose
            return stat.read().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped between the two looks
        return False


@pytest.mark.slow
def test_execute_mode_runs_torchrun_as_one_node(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi, tmp_path: Path
) -> None:
    # One write per line: both ranks share the pod's stdout, unbuffered, so print()'s pieces
    # could interleave between them (CI once saw "torchrun rank 1 torchrun rankof 2 local 1").
    (tmp_path / "rankprint.py").write_text(
        "import os\ne = os.environ\n"
        "line = f\"torchrun rank {e['RANK']} of {e['WORLD_SIZE']} local {e['LOCAL_RANK']}\\n\"\n"
        "os.write(1, line.encode())\n"
    )
    command = ["torchrun", "--nproc-per-node=2", "--nnodes=2", "-m", "rankprint"]
    extra = {"PYTHONPATH": str(tmp_path), "OMP_NUM_THREADS": "1"}
    with FakeTrainingOperator(kube, mode="execute", cwd=str(tmp_path), extra_env=extra) as operator:
        _create(custom, pytorchjob("tr", command, workers=1, nproc="2"))
        operator.wait_for_job("tr", timeout=120)
    log = core.read_namespaced_pod_log("tr-master-0", "default")
    assert sorted(line for line in log.splitlines() if line.startswith("torchrun rank")) == [
        "torchrun rank 0 of 2 local 0",
        "torchrun rank 1 of 2 local 1",
    ]
    assert sys.executable  # torchrun ran from this interpreter (default_rewrite)


def test_execute_all_replicas_runs_every_pod(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi, tmp_path: Path
) -> None:
    # A PyTorchJob succeeds when its master does, and the operator then ends a worker still running:
    # the master waits until the worker has printed (a busy machine could start the worker late).
    printed = tmp_path / "worker-printed"
    script = (
        "import os, pathlib, time; e = os.environ\n"
        "print('rank', e['RANK'], 'of', e['PET_NNODES'], e['MASTER_ADDR'], flush=True)\n"
        f"flag = pathlib.Path({str(printed)!r})\n"
        "if e['RANK'] != '0':\n    flag.touch()\n"
        "while not flag.exists():\n    time.sleep(0.02)\n"
    )
    with FakeTrainingOperator(kube, mode="execute", execute_replicas="all") as operator:
        _create(custom, pytorchjob("j1", ["python", "-c", script], workers=1))
        operator.wait_for_job("j1", timeout=120)
        # The worker's own end, before its log is read.
        wait_for_phase(core, "j1-worker-0", "Succeeded")
    assert core.read_namespaced_pod_log("j1-master-0", "default").strip() == "rank 0 of 2 127.0.0.1"
    assert core.read_namespaced_pod_log("j1-worker-0", "default").strip() == "rank 1 of 2 127.0.0.1"


def test_scripted_logs_and_startup_delay(
    kube: FakeKubernetes, core: client.CoreV1Api, custom: client.CustomObjectsApi
) -> None:
    # The startup is long against any scheduling delay of a busy machine: "still starting" must
    # hold when we look, however late the look comes.
    with FakeTrainingOperator(kube, duration=0.1, startup=3.0) as operator:
        operator.script(
            behaviors.succeed(after=0.1, logs=("loss=2.0", "loss=1.5")), job="j1", replica="master"
        )
        _create(custom, pytorchjob("j1"))
        pod = wait_for_pod(core, "j1-master-0")
        assert pod.status.phase == "Pending"  # still starting
        operator.wait_for_job("j1")
    assert core.read_namespaced_pod_log("j1-master-0", "default").splitlines()[:2] == ["loss=2.0", "loss=1.5"]
