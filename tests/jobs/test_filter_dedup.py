"""The filter stage's partitioned dedup: any world size, kill in every pass, input identity."""

from __future__ import annotations

from pathlib import Path

import pytest
from jobs_helpers import (
    CAPTION,
    FILTERS,
    contract_env,
    kept_keys,
    kill_once_stopped,
    make_corpus,
    output_digests,
    pattern_png,
    report,
    run_job,
    start,
    start_stopping_after,
)

from jobs.core import shards as sh

# Few partitions, so that ranks share them unevenly; a short steal delay for the kill tests.
DEDUP = [*FILTERS[:2], {**FILTERS[2], "partitions": 5, "steal_after_seconds": 1.0}]


def env_for(store: Path, **kw: int) -> dict[str, str]:
    return contract_env(store, stage="filter", kind="filter", inputs=["in"], outputs=["out"],
                        config={"filters": DEDUP}, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def single(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict, list[str]]:
    store = tmp_path_factory.mktemp("w1")
    make_corpus(store)
    res = run_job("jobs.filter", env_for(store))
    assert res.returncode == 0, res.stderr
    return output_digests(store), report(store), kept_keys(store)


@pytest.mark.slow
@pytest.mark.parametrize("world", [2, 3])
def test_same_survivors_at_world_sizes_one_two_and_three(single, tmp_path: Path, world: int) -> None:
    digests, rep, _ = single
    make_corpus(tmp_path)
    procs = [start(env_for(tmp_path, rank=r, world=world)) for r in range(world)]
    for p in procs:
        out, _ = p.communicate(timeout=180)
        assert p.returncode == 0, out
    assert output_digests(tmp_path) == digests
    assert report(tmp_path)["dropped"] == rep["dropped"]
    prefixes = list((tmp_path / "runs/t/filter/dedup").iterdir())
    assert len(prefixes) == 1 and len(list((prefixes[0] / "adj").glob("*._done"))) == 5


# The first two passes, killed for real; the resolve's rounds and final decisions are cut at every
# kind of write in tests/jobs/test_dedup_resolve.py.
PASS_MARKERS = {"index": "*/index/*._done", "adj": "*/adj/*._done"}


@pytest.mark.slow
@pytest.mark.parametrize("pass_name", ["index", "adj"])
def test_killed_in_a_dedup_pass_then_rerun_is_byte_identical(single, tmp_path: Path, pass_name: str) -> None:
    """SIGKILL after the first unit of the index (or decision) pass; the rerun redoes the rest."""
    digests, rep, keys = single
    make_corpus(tmp_path)
    dedup_dir = tmp_path / "runs/t/filter/dedup"
    pattern = PASS_MARKERS[pass_name]
    # The job stops itself right after the pass's first unit, and is killed there.
    proc = start_stopping_after(env_for(tmp_path), "*/runs/t/filter/dedup/" + pattern, 1)
    kill_once_stopped(proc, pass_name)
    finished = len(list(dedup_dir.glob(pattern)))
    assert 1 <= finished < (6 if pass_name == "index" else 5)  # it really was interrupted mid-pass
    assert not (tmp_path / "runs/t/filter/done").exists()
    res = run_job("jobs.filter", env_for(tmp_path))
    assert res.returncode == 0, res.stderr
    assert output_digests(tmp_path) == digests
    assert report(tmp_path)["dropped"] == rep["dropped"]
    assert kept_keys(tmp_path) == keys


@pytest.mark.slow
def test_a_changed_input_is_never_deduped_against_the_old_index(tmp_path: Path) -> None:
    """The issue's silent failure: results deleted but the dedup index of the OLD input kept."""
    d = tmp_path / "in"
    d.mkdir()
    with sh.ShardWriter(d / sh.shard_name(0)) as w:
        for n in range(8):
            w.write(sh.Sample(f"k{n:04d}", {"recaption": CAPTION}, "png", {"png": pattern_png(n)}))
    assert run_job("jobs.filter", env_for(tmp_path)).returncode == 0
    assert report(tmp_path)["dropped"] == {}
    # The input changes: k0001..k0003 become copies of k0000; unique images leave the shard.
    with sh.ShardWriter(d / sh.shard_name(0)) as w:
        for n in range(8):
            w.write(sh.Sample(f"k{n:04d}", {"recaption": CAPTION}, "png",
                              {"png": pattern_png(0 if n < 4 else n)}))
    # Only the shard results go, as a reset before the ledger owned every artefact did.
    for sub in ("done", "stats"):
        for p in (tmp_path / "runs/t/filter" / sub).glob("*"):
            p.unlink()
    (tmp_path / "runs/t/filter/report.json").unlink()
    res = run_job("jobs.filter", env_for(tmp_path))
    assert res.returncode == 0, res.stderr
    assert report(tmp_path)["dropped"] == {"exact_duplicate": 3}
    assert kept_keys(tmp_path) == ["k0000", "k0004", "k0005", "k0006", "k0007"]
    assert len(list((tmp_path / "runs/t/filter/dedup").iterdir())) == 2  # the old index was not reused
