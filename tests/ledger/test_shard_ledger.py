"""ShardLedger: markers after outputs, one listing for pending(), missing/corrupt outputs redone."""

from __future__ import annotations

import re
from typing import Any

import pytest
from structlog.testing import capture_logs

from sailk8s.errors import ObjectNotFound
from sailk8s.ledger import ShardLedger, sha256_bytes

IDS = [f"shard-{i:06d}" for i in range(20)]


def out_key(sid: str) -> str:
    return f"data/out/{sid}.tar"


def finish(store: Any, ledger: ShardLedger, sid: str, data: bytes | None = None,
           attempt: int = 1) -> None:
    data = data if data is not None else sid.encode() * 10
    store.put(out_key(sid), data)
    ledger.mark_done(sid, out_key(sid), sha256_bytes(data), samples=10, attempt=attempt)


def test_nothing_done_means_everything_pending(store: Any) -> None:
    ledger = ShardLedger(store, "r1", "caption")
    assert ledger.pending(IDS) == IDS
    assert ledger.done() == []


def test_marker_requires_the_output_first(store: Any) -> None:
    ledger = ShardLedger(store, "r1", "caption")
    with pytest.raises(ObjectNotFound, match=re.escape("data/out/shard-000000.tar does not exist")):
        ledger.mark_done("shard-000000", out_key("shard-000000"), "0" * 64, 1, 1)
    assert ledger.done() == []


def test_pending_lists_once_and_reads_no_markers_when_outputs_are_known(store: Any) -> None:
    ledger = ShardLedger(store, "r1", "caption")
    for sid in IDS[::2]:
        finish(store, ledger, sid)
    fresh = ShardLedger(store, "r1", "caption")  # a rerun: nothing cached
    store.calls.clear()
    pending = fresh.pending(IDS, outputs={sid: out_key(sid) for sid in IDS})
    assert pending == IDS[1::2]
    assert store.calls == {"list": 2}  # one over done/, one over the outputs' directory


def test_pending_reads_markers_once_then_caches(store: Any) -> None:
    ledger = ShardLedger(store, "r1", "caption")
    for sid in IDS[:5]:
        finish(store, ledger, sid)
    fresh = ShardLedger(store, "r1", "caption")
    store.calls.clear()
    assert fresh.pending(IDS) == IDS[5:]
    assert store.calls == {"list": 2, "get": 5}
    store.calls.clear()
    assert fresh.pending(IDS) == IDS[5:]  # rank 0 polling: markers are not re-read
    assert store.calls == {"list": 2}


def test_marker_with_missing_output_is_not_done(store: Any) -> None:
    ledger = ShardLedger(store, "r1", "filter")
    for sid in IDS[:3]:
        finish(store, ledger, sid)
    store.delete(out_key(IDS[1]))
    with capture_logs() as logs:
        assert ledger.pending(IDS[:3]) == [IDS[1]]
    assert any("output is missing" in e["event"] for e in logs)
    assert ledger.pending(IDS[:3], outputs={s: out_key(s) for s in IDS[:3]}) == [IDS[1]]


def test_checksum_mismatch_is_not_done_when_verifying(store: Any) -> None:
    ledger = ShardLedger(store, "r1", "filter")
    for sid in IDS[:3]:
        finish(store, ledger, sid)
    store.put(out_key(IDS[2]), b"overwritten by something else")
    assert ledger.pending(IDS[:3]) == []  # existence only
    with capture_logs() as logs:
        assert ledger.pending(IDS[:3], verify=True) == [IDS[2]]
    assert any("checksum mismatch" in e["event"] for e in logs)


def test_corrupt_marker_is_not_done(store: Any) -> None:
    ledger = ShardLedger(store, "r1", "filter")
    finish(store, ledger, IDS[0])
    finish(store, ledger, IDS[1])
    store.put(ledger.paths.done(IDS[1]), b"{not json")
    fresh = ShardLedger(store, "r1", "filter")
    assert fresh.pending(IDS[:2]) == [IDS[1]]
    assert fresh.read_marker(IDS[1]) is None


def test_marker_naming_another_output_is_not_done(store: Any) -> None:
    ledger = ShardLedger(store, "r1", "filter")
    finish(store, ledger, IDS[0])
    assert ledger.pending(IDS[:1], outputs={IDS[0]: "data/other/x.tar"}, verify=True) == IDS[:1]


def test_marker_content_and_invalidate(store: Any) -> None:
    clock = iter([1000.0, 2000.0])
    ledger = ShardLedger(store, "r1", "sft", clock=lambda: next(clock))
    finish(store, ledger, "s1", b"payload", attempt=3)
    marker = ledger.read_marker("s1")
    assert marker is not None
    assert (marker.shard, marker.output, marker.samples, marker.attempt, marker.time) == (
        "s1", out_key("s1"), 10, 3, 1000.0)
    assert marker.sha256 == sha256_bytes(b"payload")
    ledger.invalidate("s1")
    assert ledger.pending(["s1"]) == ["s1"]


def test_pending_keeps_order_and_ignores_unknown_markers(store: Any) -> None:
    ledger = ShardLedger(store, "r1", "caption")
    finish(store, ledger, "b")
    finish(store, ledger, "zz-not-asked")
    assert ledger.pending(["c", "b", "a", "c"]) == ["c", "a"]
    assert ledger.done() == ["b", "zz-not-asked"]
