"""CheckpointLedger: manifest last, LATEST after, pruning, verified loads with fallback."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from sailk8s.errors import StoreError, StoreKeyError
from sailk8s.ledger import MANIFEST, CheckpointLedger, sha256_file


def make_ckpt(root: Path, step: int) -> Path:
    d = root / f"local-{step}"
    (d / "model").mkdir(parents=True)
    (d / "model" / "weights.bin").write_bytes(bytes([step % 256]) * (1000 + step))
    (d / "trainer_state.json").write_text(json.dumps({"step": step}))
    return d


def test_save_uploads_files_then_manifest_then_latest(store: Any, tmp_path: Path) -> None:
    order: list[str] = []
    real_put, real_put_file = store.put, store.put_file
    store.put = lambda k, d: (order.append(k), real_put(k, d))[1]
    store.put_file = lambda k, p: (order.append(k), real_put_file(k, p))[1]
    ledger = CheckpointLedger(store, "r1", "pretrain")
    src = make_ckpt(tmp_path, 5)
    manifest = ledger.save(src, 5)
    base = "runs/r1/pretrain/ckpt/step-00000005"
    assert order == [f"{base}/model/weights.bin", f"{base}/trainer_state.json", f"{base}/{MANIFEST}",
                     "runs/r1/pretrain/ckpt/LATEST"]
    assert store.get("runs/r1/pretrain/ckpt/LATEST") == b"step-00000005"
    assert manifest.files["model/weights.bin"].sha256 == sha256_file(src / "model" / "weights.bin")
    assert manifest.files["model/weights.bin"].size == 1005
    assert ledger.latest() == 5 and ledger.steps() == [5]


def test_load_round_trip_replaces_target(store: Any, tmp_path: Path) -> None:
    ledger = CheckpointLedger(store, "r1", "pretrain")
    ledger.save(make_ckpt(tmp_path, 1), 1)
    ledger.save(make_ckpt(tmp_path, 2), 2)
    target = tmp_path / "restore"
    target.mkdir()
    (target / "stale.txt").write_text("old")
    assert ledger.load(target) == 2
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file()) == [
        "model/weights.bin", "trainer_state.json"]
    assert json.loads((target / "trainer_state.json").read_text()) == {"step": 2}
    assert ledger.load(tmp_path / "older", step=1) == 1
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp dirs left


def test_no_checkpoint_loads_nothing(store: Any, tmp_path: Path) -> None:
    ledger = CheckpointLedger(store, "r1", "pretrain")
    assert ledger.latest() is None
    assert ledger.load(tmp_path / "x") is None
    assert not (tmp_path / "x").exists()


def test_corrupt_latest_falls_back_to_previous_with_warning(store: Any, tmp_path: Path) -> None:
    ledger = CheckpointLedger(store, "r1", "sft")
    ledger.save(make_ckpt(tmp_path, 10), 10)
    ledger.save(make_ckpt(tmp_path, 20), 20)
    store.put("runs/r1/sft/ckpt/step-00000020/model/weights.bin", b"bit rot")
    with capture_logs() as logs:
        assert ledger.load(tmp_path / "restore") == 10
    warn = [e for e in logs if e["log_level"] == "warning"]
    assert warn and warn[0]["step"] == 20 and "does not match its manifest" in warn[0]["reason"]
    assert json.loads((tmp_path / "restore" / "trainer_state.json").read_text()) == {"step": 10}


def test_partial_checkpoint_is_skipped(store: Any, tmp_path: Path) -> None:
    """An upload killed before its manifest: LATEST still names the old one; load ignores the new."""
    ledger = CheckpointLedger(store, "r1", "sft")
    ledger.save(make_ckpt(tmp_path, 10), 10)
    store.put_file("runs/r1/sft/ckpt/step-00000030/model/weights.bin",
                   make_ckpt(tmp_path, 30) / "model" / "weights.bin")
    assert ledger.latest() == 10 and ledger.steps() == [10]
    assert ledger.load(tmp_path / "restore") == 10
    with capture_logs() as logs:
        assert ledger.load(tmp_path / "restore2", step=30) == 10
    assert any("partial" in e.get("reason", "") for e in logs)


def test_missing_file_and_latest_without_manifest(store: Any, tmp_path: Path) -> None:
    ledger = CheckpointLedger(store, "r1", "sft")
    ledger.save(make_ckpt(tmp_path, 1), 1)
    ledger.save(make_ckpt(tmp_path, 2), 2)
    store.delete("runs/r1/sft/ckpt/step-00000002/trainer_state.json")
    assert ledger.load(tmp_path / "a") == 1
    store.delete("runs/r1/sft/ckpt/step-00000002/manifest.json")
    with capture_logs() as logs:
        assert ledger.latest() == 1
    assert any("without a manifest" in e["event"] for e in logs)
    store.put("runs/r1/sft/ckpt/LATEST", b"garbage")
    assert ledger.latest() == 1


def test_keep_latest_k_prunes_but_never_latest(store: Any, tmp_path: Path) -> None:
    ledger = CheckpointLedger(store, "r1", "pretrain")
    for step in (1, 2, 3, 4):
        ledger.save(make_ckpt(tmp_path, step), step)
    # Debris of a crashed older upload, and an upload in progress newer than everything.
    store.put("runs/r1/pretrain/ckpt/step-00000000/x", b"debris")
    store.put("runs/r1/pretrain/ckpt/step-00000009/x", b"uploading")
    store.put("runs/r1/pretrain/ckpt/LATEST", b"step-00000002")  # e.g. a rollback
    deleted = ledger.keep_latest_k(1)
    assert deleted == [0, 1, 3]
    assert ledger.steps() == [2, 4]
    assert store.exists("runs/r1/pretrain/ckpt/step-00000009/x")
    assert ledger.load(tmp_path / "r") == 2


def test_save_with_keep_latest_k(store: Any, tmp_path: Path) -> None:
    ledger = CheckpointLedger(store, "r1", "pretrain")
    for step in range(1, 5):
        ledger.save(make_ckpt(tmp_path, step), step, keep_latest_k=2)
    assert ledger.steps() == [3, 4]
    assert [k for k in store.list("runs/r1/pretrain/ckpt/step-00000001")] == []


def test_bad_inputs_are_clear(store: Any, tmp_path: Path) -> None:
    ledger = CheckpointLedger(store, "r1", "pretrain")
    with pytest.raises(StoreError, match="does not exist"):
        ledger.save(tmp_path / "nope", 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(StoreError, match="is empty"):
        ledger.save(tmp_path / "empty", 1)
    d = make_ckpt(tmp_path, 3)
    (d / MANIFEST).write_text("{}")
    with pytest.raises(StoreKeyError, match="reserved"):
        ledger.save(d, 3)
    with pytest.raises(ValueError, match="k >= 1"):
        ledger.keep_latest_k(0)
    assert ledger.latest() is None
