"""`status` rows: shard stages count shards, training stages show their steps or tokens."""

from __future__ import annotations

import json
from pathlib import Path

from sailk8s.cli.status import stage_rows
from sailk8s.spec import parse_pipeline
from sailk8s.store import open_store


def test_training_stage_progress_is_shown_in_its_own_unit(tmp_path: Path) -> None:
    pipeline = parse_pipeline({
        "run": "r1", "store": f"file://{tmp_path}",
        "stages": [{"name": "sft", "kind": "sft", "config": {
            "stages": [{"name": "a", "mix": [{"prefix": "d"}], "max_steps": 400}]}}],
    })
    store = open_store(pipeline.store)
    store.put("runs/r1/sft/progress.json", json.dumps(
        {"done": 100, "total": 400, "unit": "steps", "eta_seconds": 30}).encode())
    (row,) = stage_rows(pipeline, store, None, None)
    assert row["work"] == "100/400 steps"
    assert row["percent"] == 25.0
    assert row["state"] == "pending" and row["shards_done"] == 0
