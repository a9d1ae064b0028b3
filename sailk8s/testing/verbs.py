"""The fake API server's collection verbs and patches: list (paged, Table), delete-collection, patch."""

from __future__ import annotations

import base64
import datetime as dt
import json
from typing import TYPE_CHECKING

from sailk8s.testing.apierrors import ApiError
from sailk8s.testing.history import Matcher
from sailk8s.testing.patching import json_patch, merge_patch
from sailk8s.testing.resources import Obj, ResourceType, table
from sailk8s.testing.selectors import labels_match, parse_field_selector, parse_label_selector

if TYPE_CHECKING:
    from sailk8s.testing.apiserver import FakeKubernetes
    from sailk8s.testing.handler import ApiHandler


def serve_list(
    h: ApiHandler, rtype: ResourceType, ns: str | None, query: dict[str, str], matcher: Matcher
) -> None:
    """A list, paged by limit/continue, as objects or as a Table."""
    items, rv = h.kube.state.list(rtype, ns, matcher)
    start = 0
    if query.get("continue"):
        try:
            token = json.loads(base64.urlsafe_b64decode(query["continue"].encode()))
            start, token_rv = int(token["start"]), int(token["rv"])
        except (ValueError, KeyError, TypeError) as exc:
            raise ApiError(400, "BadRequest", "invalid continue token") from exc
        if token_rv < h.kube.state.floor:
            raise ApiError(
                410,
                "Expired",
                "The provided continue parameter is too old to display a consistent list result.",
            )
    meta: Obj = {"resourceVersion": str(rv)}
    limit = int(query.get("limit") or 0)
    if limit > 0 and start + limit < len(items):
        token = json.dumps({"start": start + limit, "rv": rv}).encode()
        meta["continue"] = base64.urlsafe_b64encode(token).decode()
        meta["remainingItemCount"] = len(items) - start - limit
        page = items[start : start + limit]
    else:
        page = items[start:]
    if "as=Table" in h.headers.get("Accept", ""):
        return h.send_json(200, table_view(h, rtype, page, query, meta))
    h.send_json(
        200,
        {"kind": f"{rtype.kind}List", "apiVersion": rtype.api_version, "metadata": meta, "items": page},
    )


def table_view(
    h: ApiHandler, rtype: ResourceType, objects: list[Obj], query: dict[str, str], meta: Obj | None = None
) -> Obj:
    """The Table view of objects, for a list or for one watch event."""
    moment = dt.datetime.fromtimestamp(h.kube.clock.now(), tz=dt.UTC)
    list_meta = meta or {"resourceVersion": objects[0]["metadata"].get("resourceVersion", "")}
    return table(rtype, objects, list_meta, query.get("includeObject", "Metadata"), moment)


def serve_delete_collection(
    h: ApiHandler, rtype: ResourceType, ns: str | None, query: dict[str, str], body: bytes, dry_run: bool
) -> None:
    """DELETE on a collection: every object the selectors pick, each garbage-collecting its own."""
    options = json_body(body) if body else {}
    propagation = query.get("propagationPolicy") or options.get("propagationPolicy") or "Background"
    items, _ = h.kube.state.list(rtype, ns, matcher_for(query))
    deleted = []
    for item in items:
        meta = item["metadata"]
        try:
            deleted.append(
                h.kube.state.delete(
                    rtype, meta.get("namespace"), meta["name"], propagation=propagation, dry_run=dry_run
                )
            )
        except ApiError:
            continue  # deleted meanwhile (e.g. garbage-collected with its owner)
    h.send_json(
        200,
        {
            "kind": f"{rtype.kind}List",
            "apiVersion": rtype.api_version,
            "metadata": {"resourceVersion": str(h.kube.state.resource_version)},
            "items": deleted,
        },
    )


def apply_patch(
    kube: FakeKubernetes,
    rtype: ResourceType,
    ns: str | None,
    name: str,
    body: bytes,
    content_type: str,
    subresource: str | None = None,
    dry_run: bool = False,
) -> Obj:
    """Apply a JSON patch, merge patch (strategic merge is treated as merge) or apply patch."""
    with kube.state.cond:  # read-modify-write atomically against other writers
        if content_type == "application/apply-patch+yaml":
            import yaml

            patch_doc = yaml.safe_load(body or b"{}")
            current = kube.state.find(rtype, ns, name)
            if current is None:
                patch_doc.setdefault("metadata", {}).setdefault("name", name)
                kube.admit(rtype, patch_doc)
                return kube.state.create(rtype, ns, patch_doc, dry_run=dry_run)
        else:
            try:
                patch_doc = json.loads(body or b"{}")
            except ValueError as exc:
                raise ApiError(400, "BadRequest", f"the patch is not valid JSON: {exc}") from exc
            current = kube.state.get(rtype, ns, name)
        if content_type == "application/json-patch+json":
            patched = json_patch(current, patch_doc)
        elif isinstance(patch_doc, dict):
            patched = merge_patch(current, patch_doc)
        else:
            raise ApiError(400, "BadRequest", "a merge patch must be a JSON object")
        if not isinstance(patched, dict):
            raise ApiError(422, "Invalid", "the patched object is not an object")
        wanted = None
        if isinstance(patch_doc, dict):
            wanted = (patch_doc.get("metadata") or {}).get("resourceVersion")
        current_rv = current["metadata"]["resourceVersion"]
        patched.setdefault("metadata", {})["resourceVersion"] = wanted or current_rv
        if subresource is None:
            kube.admit(rtype, patched)
        return kube.state.replace(rtype, ns, name, patched, subresource=subresource, dry_run=dry_run)


def json_body(body: bytes) -> Obj:
    """A request body that must be one JSON object (400 otherwise)."""
    try:
        value = json.loads(body or b"{}")
    except ValueError as exc:
        raise ApiError(400, "BadRequest", f"the request body is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ApiError(400, "BadRequest", "the request body must be a JSON object")
    return value


def success_status(rtype: ResourceType, obj: Obj) -> Obj:
    """The Status a delete of a core object answers with."""
    meta = obj.get("metadata", {})
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": {
            "name": meta.get("name"),
            "group": rtype.group,
            "kind": rtype.plural,
            "uid": meta.get("uid"),
        },
    }


def matcher_for(query: dict[str, str]) -> Matcher:
    """The label and field selectors of a request as one predicate."""
    requirements = parse_label_selector(query.get("labelSelector"))
    field_predicate = parse_field_selector(query.get("fieldSelector"))

    def matcher(obj: Obj) -> bool:
        return labels_match(requirements, obj.get("metadata", {}).get("labels")) and field_predicate(obj)

    return matcher
