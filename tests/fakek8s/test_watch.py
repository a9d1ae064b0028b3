"""Watch through kubernetes.watch.Watch: resourceVersion resume, filters, 410 Gone, dropped streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from fk_support import GROUP, PLURAL, VERSION, pod_body, pytorchjob
from kubernetes import client, watch

from sailk8s.testing import FakeKubernetes, wait_for


def _later(action: Callable[[], object], delay: float = 0.2) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), action()), daemon=True)
    thread.start()
    return thread


def test_watch_from_resource_version_streams_changes(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod_body("old"))
    rv = core.list_namespaced_pod("default").metadata.resource_version

    def changes() -> None:
        core.create_namespaced_pod("default", pod_body("p1"))
        core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"x": "1"}}})
        core.delete_namespaced_pod("p1", "default")

    _later(changes)
    seen = []
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=60):
        seen.append((event["type"], event["object"].metadata.name))
        if event["type"] == "DELETED":
            stream.stop()
    assert seen == [("ADDED", "p1"), ("MODIFIED", "p1"), ("DELETED", "p1")]  # "old" is before rv


def test_watch_without_resource_version_lists_current_state_first(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod_body("a"))
    events = list(watch.Watch().stream(core.list_namespaced_pod, "default", timeout_seconds=0.3))
    assert [(e["type"], e["object"].metadata.name) for e in events] == [("ADDED", "a")]


def test_watch_with_label_selector_sees_objects_enter_and_leave(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod_body("p1", {"run": "r0"}))
    rv = core.list_namespaced_pod("default").metadata.resource_version

    def relabel() -> None:
        core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"run": "r1"}}})
        core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"run": "r2"}}})

    _later(relabel)
    seen = []
    stream = watch.Watch()
    for event in stream.stream(
        core.list_namespaced_pod, "default", label_selector="run=r1", resource_version=rv, timeout_seconds=60
    ):
        seen.append(event["type"])
        if len(seen) == 2:
            stream.stop()
    assert seen == ["ADDED", "DELETED"]


def test_custom_object_watch(custom: client.CustomObjectsApi) -> None:
    rv = custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["metadata"][
        "resourceVersion"
    ]
    _later(
        lambda: custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, pytorchjob("j1"))
    )
    stream = watch.Watch()
    for event in stream.stream(
        custom.list_namespaced_custom_object,
        GROUP,
        VERSION,
        "default",
        PLURAL,
        resource_version=rv,
        timeout_seconds=60,
    ):
        assert (event["type"], event["object"]["metadata"]["name"]) == ("ADDED", "j1")
        stream.stop()
        break
    else:
        pytest.fail("no event")


def test_compacted_resource_version_is_410_gone(core: client.CoreV1Api, kube: FakeKubernetes) -> None:
    rv = core.list_namespaced_pod("default").metadata.resource_version
    core.create_namespaced_pod("default", pod_body("p1"))
    kube.compact()
    with pytest.raises(client.ApiException) as info:
        list(
            watch.Watch().stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=2)
        )
    assert info.value.status == 410
    # A re-list gives a fresh resourceVersion that watches fine.
    fresh = core.list_namespaced_pod("default").metadata.resource_version
    assert (
        list(
            watch.Watch().stream(
                core.list_namespaced_pod, "default", resource_version=fresh, timeout_seconds=1
            )
        )
        == []
    )


def test_history_overflow_expires_old_versions() -> None:
    with FakeKubernetes(history=10) as kube, client.ApiClient(kube.client_configuration()) as api:
        core = client.CoreV1Api(api)
        rv = core.list_namespaced_pod("default").metadata.resource_version
        for i in range(15):
            core.create_namespaced_pod("default", pod_body(f"p{i}"))
        with pytest.raises(client.ApiException) as info:
            list(
                watch.Watch().stream(
                    core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=1
                )
            )
        assert info.value.status == 410


def test_injected_410_on_watch(core: client.CoreV1Api, kube: FakeKubernetes) -> None:
    fault = kube.faults.expire_watch(path="/pods")
    rv = core.list_namespaced_pod("default").metadata.resource_version
    with pytest.raises(client.ApiException) as info:
        list(
            watch.Watch().stream(core.list_namespaced_pod, "default", resource_version=rv, timeout_seconds=2)
        )
    assert info.value.status == 410 and fault.hits == 1


def test_dropped_watch_mid_stream(core: client.CoreV1Api, kube: FakeKubernetes) -> None:
    core.create_namespaced_pod("default", pod_body("a"))
    core.create_namespaced_pod("default", pod_body("b"))
    kube.faults.drop_watch(after_events=1)
    got = []
    with pytest.raises(Exception) as info:  # urllib3 ProtocolError: the connection broke mid-body
        for event in watch.Watch().stream(core.list_namespaced_pod, "default", timeout_seconds=3):
            got.append(event["object"].metadata.name)
    assert got == ["a"]
    assert "ProtocolError" in type(info.value).__name__ or "Connection" in str(info.value)


def test_clean_watch_end_lets_the_client_resume(core: client.CoreV1Api, kube: FakeKubernetes) -> None:
    kube.faults.drop_watch(abrupt=False)  # the stream ends cleanly at once, the client reconnects
    rv = core.list_namespaced_pod("default").metadata.resource_version
    _later(lambda: core.create_namespaced_pod("default", pod_body("p1")), delay=0.5)
    stream = watch.Watch()
    for event in stream.stream(core.list_namespaced_pod, "default", resource_version=rv):
        assert event["object"].metadata.name == "p1"
        stream.stop()
        break
    assert kube.request_count(watch=True) == 2


def test_close_watches_ends_open_streams(core: client.CoreV1Api, kube: FakeKubernetes) -> None:
    done = threading.Event()

    def consume() -> None:
        list(watch.Watch().stream(core.list_namespaced_pod, "default", timeout_seconds=600))
        done.set()

    threading.Thread(target=consume, daemon=True).start()
    wait_for(lambda: kube.open_watches() > 0, what="the watch to open")
    kube.close_watches()
    assert done.wait(120)  # a hang guard, far below the 600 s the watch would otherwise run
