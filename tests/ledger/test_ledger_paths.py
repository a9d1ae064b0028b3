"""The shared key layout."""

from __future__ import annotations

import pytest

from sailk8s.errors import StoreKeyError
from sailk8s.ledger import RunPaths, StagePaths, ckpt_dir_name, parse_ckpt_dir_name, shard_key


def test_layout_matches_the_documented_keys() -> None:
    run = RunPaths("r1")
    assert (run.state, run.lock) == ("runs/r1/state.json", "runs/r1/lock")
    p = run.stage("caption")
    assert p == StagePaths("r1", "caption")
    assert p.done("shard-000003") == "runs/r1/caption/done/shard-000003.json"
    assert p.progress == "runs/r1/caption/progress.json"
    assert p.rank_progress(2) == "runs/r1/caption/progress/rank-2.json"
    assert p.report == "runs/r1/caption/report.json"
    assert p.attempt_report(3) == "runs/r1/caption/attempts/3/report.json"
    assert p.attempt_log(3, 1) == "runs/r1/caption/attempts/3/logs/rank-1.log"
    assert p.ckpt_dir(120) == "runs/r1/caption/ckpt/step-00000120"
    assert p.ckpt_manifest(120) == "runs/r1/caption/ckpt/step-00000120/manifest.json"
    assert p.ckpt_latest == "runs/r1/caption/ckpt/LATEST"
    assert p.artifact("funnel.png") == "runs/r1/caption/artifacts/funnel.png"
    assert p.key("stats", "s.json") == "runs/r1/caption/stats/s.json"
    assert shard_key("data/caption/", 7) == "data/caption/shard-000007.tar"


def test_marker_keys_round_trip_to_shard_ids() -> None:
    p = StagePaths("r", "s")
    assert p.shard_id_of(p.done("x-1")) == "x-1"
    assert p.shard_id_of("runs/r/s/done/sub/x.json") is None
    assert p.shard_id_of("runs/r/s/progress.json") is None


def test_checkpoint_names_sort_by_step() -> None:
    names = [ckpt_dir_name(s) for s in (9, 10, 100, 2)]
    assert sorted(names) == [ckpt_dir_name(s) for s in (2, 9, 10, 100)]
    assert parse_ckpt_dir_name("step-00000042") == 42
    assert parse_ckpt_dir_name("step-42") is None and parse_ckpt_dir_name("LATEST") is None


@pytest.mark.parametrize("bad", ["", "a/b", "..", "x\n"])
def test_names_must_be_single_safe_segments(bad: str) -> None:
    with pytest.raises(StoreKeyError):
        StagePaths("run", bad)
    with pytest.raises(StoreKeyError):
        StagePaths("run", "s").done(bad)
