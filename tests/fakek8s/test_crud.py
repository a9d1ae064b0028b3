"""CRUD through the real kubernetes client: server-set metadata, errors as Status, patches, GC."""

from __future__ import annotations

import json

import pytest
from fk_support import GROUP, PLURAL, VERSION, pod_body, pytorchjob
from kubernetes import client

from sailk8s.testing import FakeKubernetes


def _status(exc: client.ApiException) -> dict[str, object]:
    body = json.loads(exc.body)
    assert body["kind"] == "Status"
    return body


def test_create_sets_server_metadata_and_get_returns_it(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_pod("default", pod_body("p1", {"app": "x"}))
    assert created.metadata.uid and created.metadata.creation_timestamp is not None
    assert int(created.metadata.resource_version) > 0
    assert created.metadata.generation == 1
    assert created.status.phase == "Pending"
    fetched = core.read_namespaced_pod("p1", "default")
    assert fetched.metadata.uid == created.metadata.uid


def test_create_twice_is_409_already_exists(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod_body("p1"))
    with pytest.raises(client.ApiException) as info:
        core.create_namespaced_pod("default", pod_body("p1"))
    assert info.value.status == 409
    assert _status(info.value)["reason"] == "AlreadyExists"


def test_missing_object_is_404_status(core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    with pytest.raises(client.ApiException) as info:
        core.read_namespaced_pod("nope", "default")
    assert info.value.status == 404
    assert _status(info.value)["message"] == 'pods "nope" not found'
    with pytest.raises(client.ApiException) as job_info:
        custom.get_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, "nope")
    assert _status(job_info.value)["message"] == 'pytorchjobs.kubeflow.org "nope" not found'


def test_create_in_missing_namespace_is_404(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as info:
        core.create_namespaced_pod("ghost", pod_body("p1"))
    assert info.value.status == 404
    assert 'namespaces "ghost" not found' in _status(info.value)["message"]  # type: ignore[operator]


def test_invalid_name_is_422(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as info:
        core.create_namespaced_pod("default", pod_body("Bad_Name"))
    assert info.value.status == 422


def test_replace_with_stale_resource_version_is_409_conflict(core: client.CoreV1Api) -> None:
    created = core.create_namespaced_config_map("default", {"metadata": {"name": "cm"}, "data": {"a": "1"}})
    created.data = {"a": "2"}
    updated = core.replace_namespaced_config_map("cm", "default", created)
    assert updated.data == {"a": "2"}
    assert int(updated.metadata.resource_version) > int(created.metadata.resource_version)
    created.data = {"a": "3"}  # still carries the old resourceVersion
    with pytest.raises(client.ApiException) as info:
        core.replace_namespaced_config_map("cm", "default", created)
    assert info.value.status == 409
    assert _status(info.value)["reason"] == "Conflict"


def test_patches_merge_strategic_and_json(core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    core.create_namespaced_pod("default", pod_body("p1", {"a": "1"}))
    patched = core.patch_namespaced_pod("p1", "default", {"metadata": {"labels": {"b": "2"}}})
    assert patched.metadata.labels == {"a": "1", "b": "2"}
    patched = core.patch_namespaced_pod("p1", "default", [{"op": "remove", "path": "/metadata/labels/a"}])
    assert patched.metadata.labels == {"b": "2"}
    custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, pytorchjob("j1"))
    job = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "j1", {"metadata": {"labels": {"x": "y"}}}
    )
    assert job["metadata"]["labels"] == {"x": "y"}


def test_status_subresource_separates_spec_and_status(custom: client.CustomObjectsApi) -> None:
    created = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, pytorchjob("j1"))
    assert created["metadata"]["generation"] == 1
    ignored = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "j1", {"status": {"conditions": [{"type": "Running"}]}}
    )
    assert "status" not in ignored  # the main resource ignores status writes
    with_status = custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        "default",
        PLURAL,
        "j1",
        {"status": {"conditions": [{"type": "Created", "status": "True"}]}},
    )
    assert with_status["status"]["conditions"][0]["type"] == "Created"
    assert with_status["metadata"]["generation"] == 1  # status writes leave generation alone
    bumped = custom.patch_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "j1", {"spec": {"nprocPerNode": "4"}}
    )
    assert bumped["metadata"]["generation"] == 2
    assert bumped["status"]["conditions"][0]["type"] == "Created"


def test_foreground_delete_garbage_collects_dependents(
    core: client.CoreV1Api, custom: client.CustomObjectsApi, kube: FakeKubernetes
) -> None:
    job = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, pytorchjob("j1"))
    owner = {
        "apiVersion": "kubeflow.org/v1",
        "kind": "PyTorchJob",
        "name": "j1",
        "uid": job["metadata"]["uid"],
    }
    body = pod_body("j1-master-0")
    body["metadata"]["ownerReferences"] = [owner]
    core.create_namespaced_pod("default", body)
    core.create_namespaced_pod("default", pod_body("unrelated"))
    deleted = custom.delete_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "j1", propagation_policy="Foreground"
    )
    assert deleted["metadata"]["deletionTimestamp"]
    assert "foregroundDeletion" in deleted["metadata"]["finalizers"]
    assert [p.metadata.name for p in core.list_namespaced_pod("default").items] == ["unrelated"]
    assert custom.list_namespaced_custom_object(GROUP, VERSION, "default", PLURAL)["items"] == []


def test_orphan_delete_keeps_dependents(core: client.CoreV1Api, custom: client.CustomObjectsApi) -> None:
    job = custom.create_namespaced_custom_object(GROUP, VERSION, "default", PLURAL, pytorchjob("j1"))
    body = pod_body("j1-master-0")
    body["metadata"]["ownerReferences"] = [
        {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": "j1", "uid": job["metadata"]["uid"]}
    ]
    core.create_namespaced_pod("default", body)
    custom.delete_namespaced_custom_object(
        GROUP, VERSION, "default", PLURAL, "j1", propagation_policy="Orphan"
    )
    assert [p.metadata.name for p in core.list_namespaced_pod("default").items] == ["j1-master-0"]


def test_dry_run_writes_nothing(core: client.CoreV1Api, kube: FakeKubernetes) -> None:
    before = kube.state.resource_version
    result = core.create_namespaced_pod("default", pod_body("p1"), dry_run="All")
    assert result.metadata.name == "p1"
    assert kube.state.resource_version == before
    assert core.list_namespaced_pod("default").items == []


def test_generate_name_and_pagination(core: client.CoreV1Api) -> None:
    names = {
        core.create_namespaced_pod(
            "default",
            {"metadata": {"generateName": "w-"}, "spec": {"containers": [{"name": "c", "image": "i"}]}},
        ).metadata.name
        for _ in range(5)
    }
    assert len(names) == 5 and all(n.startswith("w-") for n in names)
    first = core.list_namespaced_pod("default", limit=2)
    assert len(first.items) == 2 and first.metadata._continue
    seen = [p.metadata.name for p in first.items]
    token = first.metadata._continue
    while token:
        page = core.list_namespaced_pod("default", limit=2, _continue=token)
        seen += [p.metadata.name for p in page.items]
        token = page.metadata._continue
    assert sorted(seen) == sorted(names)


def test_leases_for_controller_election(api: client.ApiClient) -> None:
    coordination = client.CoordinationV1Api(api)
    lease = client.V1Lease(
        metadata=client.V1ObjectMeta(name="sail-run-r1"),
        spec=client.V1LeaseSpec(holder_identity="controller-a", lease_duration_seconds=15),
    )
    created = coordination.create_namespaced_lease("default", lease)
    assert created.spec.holder_identity == "controller-a"
    created.spec.holder_identity = "controller-b"
    replaced = coordination.replace_namespaced_lease("sail-run-r1", "default", created)
    assert replaced.spec.holder_identity == "controller-b"
    stale = created
    stale.spec.holder_identity = "controller-c"  # carries the old resourceVersion: loses the race
    with pytest.raises(client.ApiException) as info:
        coordination.replace_namespaced_lease("sail-run-r1", "default", stale)
    assert info.value.status == 409


def test_namespaces_and_events(core: client.CoreV1Api) -> None:
    core.create_namespace({"metadata": {"name": "team"}})
    core.create_namespaced_pod("team", pod_body("p1"))
    event = {
        "metadata": {"name": "p1.1"},
        "involvedObject": {"kind": "Pod", "name": "p1", "namespace": "team"},
        "reason": "Started",
        "message": "hi",
        "type": "Normal",
    }
    core.create_namespaced_event("team", event)
    found = core.list_namespaced_event("team", field_selector="involvedObject.name=p1").items
    assert [e.reason for e in found] == ["Started"]
    core.delete_namespace("team")
    assert core.list_pod_for_all_namespaces().items == []


def test_request_log_counts_calls(core: client.CoreV1Api, kube: FakeKubernetes) -> None:
    kube.clear_requests()
    core.list_namespaced_pod("default")
    core.list_namespaced_pod("default", label_selector="a=b")
    assert kube.request_count(method="GET", path_contains="/pods") == 2
    assert kube.requests[-1].query == {"labelSelector": "a=b"}
    assert kube.request_count(method="POST") == 0


def test_bearer_token_is_required_when_set() -> None:
    with FakeKubernetes(token="s3cret") as kube:
        with client.ApiClient(kube.client_configuration()) as good:
            assert client.CoreV1Api(good).list_namespace().items
        config = kube.client_configuration()
        config.api_key = {}
        with client.ApiClient(config) as bad, pytest.raises(client.ApiException) as info:
            client.CoreV1Api(bad).list_namespace()
        assert info.value.status == 401


def test_stopped_server_is_unreachable() -> None:
    kube = FakeKubernetes().start()
    api_client = client.ApiClient(kube.client_configuration())
    client.CoreV1Api(api_client).list_namespace()
    kube.stop()
    with pytest.raises(Exception) as info:  # urllib3 MaxRetryError / connection refused
        client.CoreV1Api(api_client).list_namespace(_request_timeout=2)
    assert "refused" in str(info.value).lower() or "max retries" in str(info.value).lower()


def test_malformed_query_is_400(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as info:
        core.list_namespaced_pod("default", limit="many")  # type: ignore[arg-type]
    assert info.value.status == 400
