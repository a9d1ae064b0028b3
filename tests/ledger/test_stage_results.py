"""StageResults: the one place that reads, writes and deletes a stage's results."""

from __future__ import annotations

import json
from typing import Any

from sailk8s.ledger import ShardLedger, StageResults, input_identity, sha256_bytes
from sailk8s.ledger.claims import claim_outputs


def fill(store: Any, run: str = "r1", stage: str = "filter") -> StageResults:
    """A stage with one of every kind of result, and two attempts' records."""
    results = StageResults(store, run, stage)
    store.put("data/out/shard-000000.tar", b"shard")
    results.shards.mark_done("shard-000000", "data/out/shard-000000.tar", "0" * 64, 3, attempt=2)
    results.write_report(2, {"shards": 1})
    results.archive_log(1, 0, b"attempt one")
    results.archive_log(2, 1, b"attempt two, rank one")
    for key in ("stats/shard-000000.json", "ckpt/step-00000010/model.safetensors", "ckpt/LATEST",
                "progress/rank-0.json", "progress.json", "dedup/abc/shard-000000.json",
                "artifacts/funnel.png", "something-new-next-year/x.bin"):
        store.put(results.paths.key(key), b"{}")
    return results


def test_reset_deletes_the_whole_stage_prefix_but_its_attempts(store: Any) -> None:
    results = fill(store)
    other = fill(store, stage="recaption")
    assert results.complete()
    deleted = results.reset()
    left = sorted(store.list(results.paths.prefix))
    assert left == ["runs/r1/filter/attempts/1/logs/rank-0.log", "runs/r1/filter/attempts/2/logs/rank-1.log",
                    "runs/r1/filter/attempts/2/report.json"]
    assert deleted == 10  # marker, report, stats, ckpt x2, progress x2, dedup, artifact, new kind
    assert not results.complete() and results.read_report() is None
    assert results.read_report(attempt=2) == {"shards": 1, "attempt": 2}  # history stays readable
    assert other.complete()  # another stage of the run is untouched


def test_complete_needs_every_shard_and_an_exported_model(store: Any) -> None:
    results = StageResults(store, "r1", "sft")
    assert not results.complete() and "no report" in (results.missing() or "")
    results.write_report(1, {"shards": 0, "exported_to": "models/sft"})
    assert not results.complete()
    assert "exported model is missing" in (results.missing() or "")
    store.put("models/sft/config.json", b"{}")
    assert results.complete() and results.missing() is None
    shards = StageResults(store, "r1", "caption")
    shards.write_report(1, {"shards": 2})
    store.put("d/shard-000000.tar", b"x")
    shards.shards.mark_done("shard-000000", "d/shard-000000.tar", "1" * 64, 1, attempt=1)
    assert shards.missing() == "1 of 2 shards have a done marker"


def test_archived_logs_by_rank(store: Any) -> None:
    results = fill(store)
    assert results.archived_ranks(2) == [1] and results.archived_ranks(1) == [0]
    assert results.read_archived_log(2, 1) == b"attempt two, rank one"
    assert results.read_archived_log(2, 0) is None
    store.put(results.paths.attempt_logs_prefix(2) + "notes.txt", b"not a rank log")
    assert results.archived_ranks(2) == [1]


def test_derived_prefix_is_keyed_by_its_whole_basis(store: Any) -> None:
    results = StageResults(store, "r1", "filter")
    a = results.derived_prefix("dedup", {"config": {"near": True}, "inputs": "digest-1"})
    assert a.startswith("runs/r1/filter/dedup/") and a.endswith("/")
    assert a == results.derived_prefix("dedup", {"inputs": "digest-1", "config": {"near": True}})
    assert a != results.derived_prefix("dedup", {"config": {"near": True}, "inputs": "digest-2"})
    assert a != results.derived_prefix("dedup", {"config": {"near": False}, "inputs": "digest-1"})


def test_input_identity_from_markers_or_from_bytes(store: Any) -> None:
    """A claimed prefix is known by its producer's markers (nothing read); other shards by bytes."""
    claim_outputs(store, "r1", "ingest", ["data/raw"])
    ledger = ShardLedger(store, "r1", "ingest")
    for i in range(2):
        key = f"data/raw/shard-{i:06d}.tar"
        store.put(key, f"shard {i}".encode())
        ledger.mark_done(f"shard-{i:06d}", key, sha256_bytes(f"shard {i}".encode()), 5, attempt=1)
    store.put("data/handmade/shard-000000.tar", b"made by hand")
    keys = ["data/raw/shard-000000.tar", "data/raw/shard-000001.tar", "data/handmade/shard-000000.tar"]
    first = input_identity(store, keys)
    assert first == input_identity(store, list(reversed(keys)))
    # Rewritten input: the producer's new marker (a rerun of ingest) changes the identity.
    store.put("data/raw/shard-000001.tar", b"new content")
    ledger.mark_done("shard-000001", "data/raw/shard-000001.tar", sha256_bytes(b"new content"), 6, attempt=2)
    second = input_identity(store, keys)
    assert second != first
    # An unclaimed shard is hashed from its bytes.
    store.put("data/handmade/shard-000000.tar", b"edited by hand")
    assert input_identity(store, keys) != second
    assert json.loads(store.get("runs/r1/ingest/done/shard-000001.json"))["attempt"] == 2
