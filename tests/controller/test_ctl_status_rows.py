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


def test_each_stage_shows_its_headline_figures_from_its_report(tmp_path: Path) -> None:
    pipeline = parse_pipeline({
        "run": "r1", "store": f"file://{tmp_path}",
        "stages": [{"name": "recaption", "kind": "caption", "inputs": ["raw"], "config": {"preset": "tiny"}},
                   {"name": "filter", "kind": "filter", "depends": ["recaption"], "inputs": ["x"]},
                   {"name": "check", "kind": "evaluate", "inputs": ["e"], "config": {"model": "m"}}],
    })
    store = open_store(pipeline.store)
    store.put("runs/r1/recaption/report.json", json.dumps({"shards": 1, "caption_quality": {
        "captions": 638, "distinct": 3, "input_distinct": 631, "top_share": 0.975, "truncated_share": 1.0,
        "alt_copy_share": 0.0}}).encode())
    store.put("runs/r1/filter/report.json", json.dumps({"shards": 1, "kept": 290, "samples_in": 638,
                                                        "judge_eval": {"pairs": 200, "precision": 0.65,
                                                                       "recall": 0.53}}).encode())
    store.put("runs/r1/check/report.json", json.dumps({"shards": 1, "accuracy": 0.96}).encode())
    rows = {r["stage"]: r["result"] for r in stage_rows(pipeline, store, None, None)}
    assert rows["recaption"] == "3 distinct captions / 631 images, top 98%, 100% cut, 0% copy alt-text"
    assert rows["filter"] == "kept 290/638; judge P 0.65 R 0.53 on 200 pairs"
    assert rows["check"] == "accuracy 0.960"
