"""JSON merge patch and JSON patch semantics the server applies."""

from __future__ import annotations

import pytest

from sailk8s.testing.patching import PatchError, json_patch, merge_patch


def test_merge_patch_merges_deletes_and_replaces() -> None:
    target = {"a": {"b": 1, "c": 2}, "list": [1, 2], "gone": True}
    assert merge_patch(target, {"a": {"c": None, "d": 3}, "list": [3], "gone": None}) == {
        "a": {"b": 1, "d": 3},
        "list": [3],
    }
    assert target["gone"] is True  # the input is not modified


def test_json_patch_operations() -> None:
    doc = {"metadata": {"labels": {"a/b": "1"}}, "items": [1, 2]}
    result = json_patch(
        doc,
        [
            {"op": "add", "path": "/items/-", "value": 3},
            {"op": "replace", "path": "/items/0", "value": 0},
            {"op": "remove", "path": "/metadata/labels/a~1b"},
            {"op": "copy", "from": "/items/2", "path": "/copied"},
            {"op": "move", "from": "/copied", "path": "/moved"},
            {"op": "test", "path": "/moved", "value": 3},
        ],
    )
    assert result == {"metadata": {"labels": {}}, "items": [0, 2, 3], "moved": 3}
    assert doc["items"] == [1, 2]


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "remove", "path": "/missing"}],
        [{"op": "test", "path": "/a", "value": 2}],
        [{"op": "replace", "path": "/list/5", "value": 1}],
        [{"op": "frobnicate", "path": "/a"}],
        {"op": "add"},
    ],
)
def test_json_patch_errors(ops: object) -> None:
    with pytest.raises(PatchError):
        json_patch({"a": 1, "list": []}, ops)
