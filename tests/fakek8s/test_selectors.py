"""Label and field selectors: the parser, and the server filtering lists for the real client."""

from __future__ import annotations

import pytest
from fk_support import pod_body
from kubernetes import client

from sailk8s.testing.selectors import SelectorError, labels_match, parse_field_selector, parse_label_selector


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("", ["a", "b", "c", "d"]),
        ("tier=gpu", ["a", "b"]),
        ("tier==gpu", ["a", "b"]),
        ("tier!=gpu", ["c", "d"]),  # includes the pod without the label
        ("tier in (gpu,cpu)", ["a", "b", "c"]),
        ("tier notin (gpu)", ["c", "d"]),
        ("tier", ["a", "b", "c"]),
        ("!tier", ["d"]),
        ("tier=gpu,rank in (0)", ["a"]),
        ("sail.io/run=r1,tier", ["a", "c"]),
    ],
)
def test_label_selectors_through_the_client(
    core: client.CoreV1Api, selector: str, expected: list[str]
) -> None:
    core.create_namespaced_pod("default", pod_body("a", {"tier": "gpu", "rank": "0", "sail.io/run": "r1"}))
    core.create_namespaced_pod("default", pod_body("b", {"tier": "gpu", "rank": "1"}))
    core.create_namespaced_pod("default", pod_body("c", {"tier": "cpu", "sail.io/run": "r1"}))
    core.create_namespaced_pod("default", pod_body("d", {}))
    names = [p.metadata.name for p in core.list_namespaced_pod("default", label_selector=selector).items]
    assert names == expected


def test_field_selector_by_name_and_phase(core: client.CoreV1Api) -> None:
    core.create_namespaced_pod("default", pod_body("a"))
    core.create_namespaced_pod("default", pod_body("b"))
    assert [
        p.metadata.name for p in core.list_namespaced_pod("default", field_selector="metadata.name=b").items
    ] == ["b"]
    assert [
        p.metadata.name for p in core.list_namespaced_pod("default", field_selector="metadata.name!=b").items
    ] == ["a"]
    assert len(core.list_namespaced_pod("default", field_selector="status.phase=Pending").items) == 2


def test_bad_selector_is_400(core: client.CoreV1Api) -> None:
    with pytest.raises(client.ApiException) as info:
        core.list_namespaced_pod("default", label_selector="a in b")
    assert info.value.status == 400


def test_parser_units() -> None:
    reqs = parse_label_selector("a in (x, y),b notin (z),c,!d,e!=f")
    assert [(r.key, r.op, r.values) for r in reqs] == [
        ("a", "in", ("x", "y")),
        ("b", "notin", ("z",)),
        ("c", "exists", ()),
        ("d", "!", ()),
        ("e", "!=", ("f",)),
    ]
    assert labels_match(reqs, {"a": "x", "c": "1"})
    assert not labels_match(reqs, {"a": "x", "c": "1", "d": "1"})
    assert not labels_match(reqs, {"a": "q", "c": "1"})
    with pytest.raises(SelectorError):
        parse_label_selector("a in b")
    predicate = parse_field_selector("metadata.name=x,spec.nodeName!=n1")
    assert predicate({"metadata": {"name": "x"}, "spec": {"nodeName": "n2"}})
    assert not predicate({"metadata": {"name": "x"}, "spec": {"nodeName": "n1"}})
