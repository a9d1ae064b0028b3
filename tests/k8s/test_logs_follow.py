"""`logs -f` that survives dropped streams: resume at sinceTime, each line once, bounded retries."""

from __future__ import annotations

import threading
import time

import pytest
from fakecluster import ClusterDriver

from sailk8s.backends.base import AttemptRef
from sailk8s.backends.kubernetes.backend import KubernetesBackend
from sailk8s.backends.kubernetes.logs import Backoff, LogCursor, split_stamp
from sailk8s.errors import BackendError
from sailk8s.spec import Pipeline
from sailk8s.store.base import ObjectStore
from sailk8s.testing import podstatus as ps
from sailk8s.testing.apiserver import FakeKubernetes

NS = "sail"
C = "pytorch"


@pytest.fixture
def backend(kube: FakeKubernetes, store: ObjectStore) -> KubernetesBackend:
    return KubernetesBackend(
        configuration=kube.client_configuration(),
        namespace=NS,
        store=store,
        retry_seconds=1.5,
        recheck_seconds=0.2,
    )


def T() -> str:
    return "2026-01-01T00:00:00Z"


def running_master(
    backend: KubernetesBackend, cluster: ClusterDriver, pipeline: Pipeline
) -> tuple[AttemptRef, str]:
    ref = backend.submit(pipeline, pipeline.stage("ingest"), 1)
    pod = cluster.add_pod(ref.name, "master", 0, lambda p: ps.running(p, T(), T(), "10.0.0.1"))
    cluster.kube.logs.start(NS, pod, C)
    return ref, pod


def append(kube: FakeKubernetes, pod: str, second: int, *lines: str) -> None:
    """Lines stamped within one second (the fake's stamps have second precision, like sinceTime)."""
    stamp = f"2026-01-01T00:00:{second:02d}Z"
    kube.logs.append(NS, pod, C, "".join(f"{line}\n" for line in lines).encode(), stamp)


def finish(cluster: ClusterDriver, pod: str) -> None:
    """The container exits: its log closes and the pod terminates."""
    cluster.kube.logs.close(NS, pod, C)
    cluster.set_pod_status(pod, ps.terminated(cluster.pod(pod), T(), T(), 0, "Completed"))


def later(delay: float, fn) -> threading.Thread:  # type: ignore[no-untyped-def]
    t = threading.Thread(target=lambda: (time.sleep(delay), fn()), daemon=True)
    t.start()
    return t


def log_requests(kube: FakeKubernetes) -> list[dict[str, str]]:
    return [r.query for r in kube.requests if r.path.endswith("/log") and r.query.get("follow") == "true"]


# -- the cursor and the backoff, without a server ------------------------------------------


def test_split_stamp() -> None:
    assert split_stamp("2026-01-01T00:00:01.123456789Z hello world") == (
        "2026-01-01T00:00:01.123456789Z",
        "hello world",
    )
    assert split_stamp("2026-01-01T00:00:01Z ") == ("2026-01-01T00:00:01Z", "")
    assert split_stamp("no stamp here") == (None, "no stamp here")


def test_cursor_skips_exactly_the_replayed_lines() -> None:
    cur = LogCursor()
    cur.reconnect()
    s1, s2 = "2026-01-01T00:00:01.5Z", "2026-01-01T00:00:02.1Z"
    assert [cur.accept(f"{s1} x"), cur.accept(f"{s2} dup"), cur.accept(f"{s2} dup")] == ["x", "dup", "dup"]
    assert cur.since_time() == "2026-01-01T00:00:02Z"
    cur.reconnect()  # the server replays the whole second, then a third identical line that is new
    got = [cur.accept(f"{s2} dup"), cur.accept(f"{s2} dup"), cur.accept(f"{s2} dup"), cur.accept(f"{s2} y")]
    assert got == [None, None, "dup", "y"]
    assert cur.printed == 5


def test_cursor_without_stamps_resumes_by_count() -> None:
    cur = LogCursor()
    cur.reconnect()
    assert [cur.accept("a"), cur.accept("b")] == ["a", "b"]
    assert cur.since_time() is None
    cur.reconnect()
    assert [cur.accept("a"), cur.accept("b"), cur.accept("c")] == [None, None, "c"]
    assert list(cur.skip_printed(["a", "b", "c", "d"])) == ["d"]


def test_backoff_is_bounded_and_resets() -> None:
    b = Backoff(0.3)
    waits = []
    while True:
        before = b.elapsed()  # read before the decision: a busy machine's late wake-ups don't count
        if (w := b.next_wait()) is None:
            break
        assert before + w < 0.3  # never a wait that ends past the budget
        waits.append(w)
        time.sleep(w)
    assert waits and all(0 <= w <= 5.0 for w in waits)
    b.reset()
    assert b.failures == 0 and b.remaining() > 0.25


# -- through the fake API server -------------------------------------------------------------


def test_follow_cut_mid_stream_prints_every_line_once_and_ends_with_the_pod(
    backend: KubernetesBackend, kube: FakeKubernetes, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref, pod = running_master(backend, cluster, pipeline)
    append(kube, pod, 1, "a", "dup", "dup")
    append(kube, pod, 2, "dup", "b")
    append(kube, pod, 3, "c", "c")
    cut = kube.logs.cut_streams(times=2, after_lines=4, pod=pod)  # abrupt: socket shut mid-body

    def more() -> None:
        append(kube, pod, 3, "c")
        append(kube, pod, 4, "d", "dup")
        finish(cluster, pod)

    later(0.4, more)
    got = list(backend.logs(ref, follow=True))
    assert got == ["a", "dup", "dup", "dup", "b", "c", "c", "c", "d", "dup"]
    assert cut.hits == 2
    queries = log_requests(kube)
    assert all(q.get("timestamps") == "true" for q in queries)
    assert [q.get("sinceTime") for q in queries[:3]] == [None, "2026-01-01T00:00:02Z", "2026-01-01T00:00:03Z"]
    assert len(queries) <= 5  # a constant number of reconnects, not a poll


def test_follow_with_real_clock_stamps_and_clean_server_side_ends(
    backend: KubernetesBackend, kube: FakeKubernetes, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref, pod = running_master(backend, cluster, pipeline)
    cluster.kube.logs.append(NS, pod, C, b"step\nstep\nstep\n", cluster.now())
    cut = kube.logs.cut_streams(times=1, after_lines=3, pod=pod, abrupt=False)  # an API timeout
    kube.logs.cut_streams(times=1, after_lines=5, pod=pod)  # then a dropped connection

    def more() -> None:
        cluster.kube.logs.append(NS, pod, C, b"step\nstep\nlast\n", cluster.now())
        finish(cluster, pod)

    later(0.3, more)
    assert list(backend.logs(ref, follow=True)) == ["step"] * 5 + ["last"]
    assert cut.hits == 1


def test_a_short_5xx_burst_while_reconnecting_is_retried(
    backend: KubernetesBackend, kube: FakeKubernetes, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref, pod = running_master(backend, cluster, pipeline)
    append(kube, pod, 1, "one", "two")
    kube.logs.cut_streams(after_lines=1, pod=pod)
    burst = kube.faults.fail(503, times=2, path=r"/log$")
    finish(cluster, pod)
    it = backend.logs(ref, follow=True)
    assert next(it) == "one"
    assert list(it) == ["two"]
    assert burst.hits == 2


def test_follow_of_a_pod_deleted_mid_stream_ends_with_the_archive(
    backend: KubernetesBackend,
    kube: FakeKubernetes,
    cluster: ClusterDriver,
    store: ObjectStore,
    pipeline: Pipeline,
) -> None:
    ref, pod = running_master(backend, cluster, pipeline)
    append(kube, pod, 1, "l1", "l2", "l3", "l4", "l5")
    kube.logs.cut_streams(after_lines=2, pod=pod)
    it = backend.logs(ref, follow=True)
    assert [next(it), next(it)] == ["l1", "l2"]
    backend.cancel(ref)  # archives the whole log, then deletes the job and its pods
    assert kube.state.find(cluster.pods, NS, pod) is None
    assert store.get("runs/r1/ingest/attempts/1/logs/rank-0.log") == b"l1\nl2\nl3\nl4\nl5\n"
    assert list(it) == ["l3", "l4", "l5"]


def test_follow_of_a_deleted_pod_without_archive_says_so(
    backend: KubernetesBackend, kube: FakeKubernetes, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref, pod = running_master(backend, cluster, pipeline)
    append(kube, pod, 1, "l1", "l2", "l3")
    kube.logs.cut_streams(after_lines=1, pod=pod)
    it = backend.logs(ref, follow=True)
    assert next(it) == "l1"
    kube.state.delete(cluster.pods, NS, pod)
    with pytest.raises(BackendError, match=r"no rank 0 logs for 'r1-ingest-1': its pods are gone"):
        next(it)


def test_an_api_outage_longer_than_the_retry_bound_ends_in_one_clear_line(
    backend: KubernetesBackend, kube: FakeKubernetes, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref, pod = running_master(backend, cluster, pipeline)
    append(kube, pod, 1, "before", "lost")
    kube.logs.cut_streams(after_lines=1, pod=pod)
    it = backend.logs(ref, follow=True)
    got = [next(it)]
    outage = kube.faults.fail(503, times=None, path=r"/log$")  # the API answers 503 from now on
    started = time.monotonic()
    with pytest.raises(BackendError) as info:
        got.extend(it)
    assert time.monotonic() - started < 30  # retried within retry_seconds (1.5 s), then gave up
    assert outage.hits >= 2
    assert got == ["before"]
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"lost the log stream of pod {pod!r} after 1 line(s) and could not reconnect: ")
    assert "kept failing on get pods/log" in msg and "503" in msg and "gave up after" in msg


def test_a_stream_that_keeps_breaking_gives_up_in_bounded_time(
    backend: KubernetesBackend, kube: FakeKubernetes, cluster: ClusterDriver, pipeline: Pipeline
) -> None:
    ref, pod = running_master(backend, cluster, pipeline)
    append(kube, pod, 1, "only")
    cut = kube.logs.cut_streams(times=None, after_lines=1, pod=pod)  # every stream: one line, then cut
    got: list[str] = []
    started = time.monotonic()
    with pytest.raises(
        BackendError, match=rf"the log stream of pod {pod!r} kept breaking \(.*\): no new line"
    ):
        for line in backend.logs(ref, follow=True):
            got.append(line)
    assert got == ["only"]
    assert cut.hits >= 2
    assert time.monotonic() - started < 30  # bounded by retry_seconds (1.5 s), with room for a busy machine


def test_fake_server_since_time_and_since_seconds(kube: FakeKubernetes, cluster: ClusterDriver) -> None:
    """pods/log honours sinceTime (RFC 3339, fractions allowed) and sinceSeconds like the API server."""
    from kubernetes import client as k8s

    kube.state.create(
        cluster.pods, NS, {"metadata": {"name": "p"}, "spec": {"containers": [{"name": C, "image": "x"}]}}
    )
    kube.logs.start(NS, "p", C)
    append(kube, "p", 1, "old")
    append(kube, "p", 2, "new")
    core = k8s.CoreV1Api(k8s.ApiClient(kube.client_configuration()))

    def get(**query: str) -> str:
        data = core.api_client.call_api(
            f"/api/v1/namespaces/{NS}/pods/p/log",
            "GET",
            query_params=list(query.items()),
            response_type="str",
            auth_settings=["BearerToken"],
            _return_http_data_only=True,
            _preload_content=False,
        ).data
        return data.decode()

    assert get(sinceTime="2026-01-01T00:00:01.5Z") == "new\n"
    assert get(sinceTime="2026-01-01T00:00:02Z", timestamps="true") == "2026-01-01T00:00:02Z new\n"
    assert get(sinceSeconds="1") == ""  # both lines are long before the fake clock's now
    with pytest.raises(k8s.ApiException) as info:
        get(sinceTime="yesterday")
    assert info.value.status == 400
    with pytest.raises(k8s.ApiException) as info:
        get(sinceTime="2026-01-01T00:00:02Z", sinceSeconds="5")
    assert info.value.status == 422
