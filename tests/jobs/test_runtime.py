"""The workload runtime: dist env, shard assignment, the kill-safe loop, reports, exit codes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from jobs_helpers import png_bytes, raw_tar, run_job

from jobs.core import shards as sh
from jobs.core.dist import DistInfo, assign_shards
from jobs.core.runtime import StageRun
from jobs.core.shardio import ShardInput, ShardOutput
from sailk8s import exitcodes
from sailk8s.errors import ConfigError, InputError, StoreUnavailable
from sailk8s.exitcodes import exit_code_for
from sailk8s.stageconfig.filter import Config as FilterConfig


def write_input(store: Path, prefix: str, n_shards: int, per_shard: int, bad_every: int = 0) -> None:
    """Input shards with per_shard samples each; every bad_every-th sample has a broken json."""
    d = store / prefix
    d.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        with sh.ShardWriter(d / sh.shard_name(s)) as w:
            for i in range(per_shard):
                n = s * per_shard + i
                w.write(sh.Sample(f"s{n:05d}", {"alt_text": f"a photo of thing number {n}"}, "png",
                                  {"png": png_bytes(color=(n % 256, 7, 7))}))


def test_dist_info_from_env() -> None:
    assert DistInfo.from_env({}) == DistInfo(0, 1, 0)
    assert DistInfo.from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"}) == DistInfo(3, 4, 1)
    with pytest.raises(ConfigError, match="RANK"):
        DistInfo.from_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        DistInfo.from_env({"WORLD_SIZE": "two"})


def test_assign_shards_partitions_deterministically() -> None:
    shards = [f"shard-{i:06d}" for i in range(11)]
    for world in (1, 2, 3, 7, 16):
        parts = [assign_shards(list(reversed(shards)), r, world) for r in range(world)]
        assert sorted(s for p in parts for s in p) == shards  # each exactly once
        assert parts == [assign_shards(shards, r, world) for r in range(world)]  # order-independent
    with pytest.raises(ValueError):
        assign_shards(shards, 2, 2)


def test_exit_codes() -> None:
    assert exit_code_for(ConfigError("x")) == exitcodes.BAD_CONFIG
    assert exit_code_for(InputError("x")) == exitcodes.BAD_INPUT
    assert exit_code_for(StoreUnavailable("x")) == exitcodes.TEMPFAIL
    assert exit_code_for(RuntimeError("x")) == exitcodes.APP_ERROR


def _stage(env: dict[str, str]) -> StageRun:
    return StageRun.from_env(FilterConfig, env)


def test_run_map_accounts_for_every_sample_and_skips_done(store_dir: Path, make_env) -> None:
    write_input(store_dir, "in", 3, 5)
    env = make_env(stage="copy", kind="filter", inputs=["in"], outputs=["out"])
    calls: list[str] = []

    def process(shard: ShardInput, out: ShardOutput) -> None:
        calls.append(shard.shard_id)
        for i, sample in enumerate(shard):
            if i % 2:
                out.drop(sample, "odd")
            else:
                out.write(sample)

    report = _stage(env).run_map(process)
    assert report is not None
    assert (report["samples_in"], report["samples_out"], report["dropped"]) == (15, 9, {"odd": 6})
    assert sorted(p.name for p in (store_dir / "out").iterdir()) == [sh.shard_name(i) for i in range(3)]
    done = sorted(p.name for p in (store_dir / "runs/t/copy/done").iterdir())
    assert done == [f"shard-00000{i}.json" for i in range(3)]
    progress = json.loads((store_dir / "runs/t/copy/progress.json").read_bytes())
    assert (progress["done"], progress["total"]) == (3, 3)
    assert json.loads((store_dir / "runs/t/copy/attempts/1/report.json").read_bytes()) == report
    # A rerun does nothing but still reports the whole stage.
    again = _stage(env).run_map(process)
    assert calls == ["shard-000000", "shard-000001", "shard-000002"]
    assert again is not None and again["samples_in"] == 15 and again["shards_this_attempt"] == 3


def test_a_shard_that_loses_samples_fails_loudly(store_dir: Path, make_env) -> None:
    write_input(store_dir, "in", 1, 3)
    env = make_env(stage="lossy", kind="filter", inputs=["in"], outputs=["out"])
    with pytest.raises(RuntimeError, match="neither written nor dropped"):
        _stage(env).run_map(lambda shard, out: [None for _ in shard])
    assert not (store_dir / "runs/t/lossy/done").exists()


def test_bad_samples_are_counted_by_reason(store_dir: Path, make_env) -> None:
    d = store_dir / "in"
    d.mkdir()
    ok = json.dumps({"alt_text": "x"}).encode()
    raw_tar(d / sh.shard_name(0), [("good.png", png_bytes()), ("good.json", ok),
                                   ("zero.png", b""), ("zero.json", ok),
                                   ("latin.png", png_bytes()), ("latin.json", b"\xff\xfe")])
    (d / sh.shard_name(1)).write_bytes(b"")  # an empty shard: a shard-level event, no samples
    env = make_env(stage="bad", kind="filter", inputs=["in"], outputs=["out"])
    report = _stage(env).run_map(lambda shard, out: [out.write(s) for s, _img in shard.decoded()])
    assert report is not None
    assert report["dropped"] == {"empty_image": 1, "json_not_utf8": 1}
    assert report["events"] == {"empty_shard": 1}
    assert (report["samples_in"], report["samples_out"]) == (3, 1)


def test_exit_code_bad_config(make_env) -> None:
    bad = {"filters": [{"type": "x"}]}
    env = make_env(stage="f", kind="filter", inputs=["in"], outputs=["out"], config=bad)
    res = run_job("jobs.filter", env)
    assert res.returncode == exitcodes.BAD_CONFIG, res.stderr
    assert "config.filters" in res.stderr.strip().splitlines()[-1]


def test_exit_code_missing_input(make_env) -> None:
    env = make_env(stage="f", kind="filter", inputs=["nothing/here"], outputs=["out"])
    res = run_job("jobs.filter", env)
    assert res.returncode == exitcodes.BAD_INPUT, res.stderr
    assert "input prefix 'nothing/here' has no shards" in res.stderr.strip().splitlines()[-1]


def test_exit_code_store_unreachable(make_env) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = make_env(stage="f", kind="filter", inputs=["in"], outputs=["out"])
    env.update({"SAIL_STORE_URI": "s3://bucket/p", "SAIL_STORE_ENDPOINT": f"http://127.0.0.1:{port}",
                "SAIL_STORE_ACCESS_KEY": "k", "SAIL_STORE_SECRET_KEY": "secret-value",
                "SAIL_STORE_RETRY_SECONDS": "1"})
    res = run_job("jobs.filter", env)
    assert res.returncode == exitcodes.TEMPFAIL, res.stderr
    assert "secret-value" not in res.stderr
