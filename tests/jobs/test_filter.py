"""The filter stage: each filter's reasons, global dedup at any world size, kill + rerun, funnel."""

from __future__ import annotations

import hashlib
import json
import random
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
    png_bytes,
    report,
    run_job,
    start,
    start_stopping_after,
)
from pydantic import ValidationError

from jobs.core import shards as sh
from jobs.filters import dedup
from jobs.filters.basic import Candidate, CaptionCheck, ImageCheck
from jobs.filters.funnel import build_funnel
from jobs.filters.scores import JudgeScorer, parse_ratings
from sailk8s.stageconfig.filter import CaptionFilter, Config, ImageFilter, JudgeFilter


def cand(text: str | None, image: bytes | None = None) -> Candidate:
    files = {"png": image} if image is not None else {}
    return Candidate(sh.Sample("k", {}, "png" if image is not None else None, files), text)


def test_caption_check_reasons() -> None:
    c = CaptionCheck(CaptionFilter(type="caption", min_words=3, max_words=20))
    assert c.check(cand(CAPTION)) is None
    assert c.check(cand(None)) == "caption_missing"
    assert c.check(cand("two words")) == "caption_too_short"
    assert c.check(cand("x " * 30)) in ("caption_too_long", "caption_repetitive")
    assert c.check(cand("the cat the cat the cat the cat the cat")) == "caption_repetitive"
    assert c.check(cand("dog dog dog dog")) == "caption_repetitive"
    assert c.check(cand("<unk> <unk> a photo of")) == "caption_degenerate"
    assert c.check(cand("12345 67890 ### @@@ 000")) == "caption_degenerate"
    assert c.check(cand("As an AI I cannot see images")) == "caption_degenerate"


def test_image_check_reasons() -> None:
    c = ImageCheck(ImageFilter(type="image", min_side=32, max_aspect_ratio=3.0))
    assert c.check(cand("x", png_bytes((48, 48)))) is None
    assert c.check(cand("x", png_bytes((16, 48)))) == "image_too_small"
    assert c.check(cand("x", png_bytes((200, 40)))) == "bad_aspect_ratio"
    assert c.check(cand("x", b"")) == "empty_image"
    assert c.check(cand("x", b"GIF89a garbage")) == "truncated_image"
    assert c.check(cand("x", b"plain text")) == "not_an_image"
    assert c.check(cand("x")) == "missing_image"


def test_dedup_decide_keeps_the_first_of_each_component_and_matches_brute_force() -> None:
    """Duplicates are the connected components of "same pixels" and "pHashes within the
    distance"; each keeps its smallest (shard, key). (Before the partitioned dedup the rule was
    sequential keep-first against kept samples only, which no partitioned algorithm can follow.)"""
    rng = random.Random(0)
    base = [rng.getrandbits(64) for _ in range(40)]
    entries = []
    for i in range(300):
        h = rng.choice(base)
        for _ in range(rng.randint(0, 7)):
            h ^= 1 << rng.randrange(64)
        content = hashlib.sha256(f"c{rng.randint(0, 250)}".encode()).digest()
        entries.append((f"s{i % 5}", f"k{i:04d}", content, h.to_bytes(8, "big")))
    got = dedup.decide(entries, max_distance=4)
    order = sorted(entries)
    parent = list(range(len(order)))

    def find(x: int) -> int:
        while parent[x] != x:
            x = parent[x]
        return x

    for i, a in enumerate(order):  # brute force over every pair
        for j in range(i + 1, len(order)):
            b = order[j]
            distance = bin(int.from_bytes(a[3], "big") ^ int.from_bytes(b[3], "big")).count("1")
            if a[2] == b[2] or distance <= 4:
                ri, rj = find(i), find(j)
                parent[max(ri, rj)] = min(ri, rj)
    expected = {}
    for i, e in enumerate(order):
        root = find(i)  # unions point at the smaller index: a root is its component's first
        if root != i:
            expected[(e[0], e[1])] = (dedup.EXACT_DUPLICATE if e[2] == order[root][2]
                                      else dedup.NEAR_DUPLICATE)
    assert got == expected
    assert dedup.EXACT_DUPLICATE in got.values() and dedup.NEAR_DUPLICATE in got.values()
    assert dedup.decide(list(reversed(entries)), max_distance=4) == got  # input order is irrelevant


def test_parse_ratings_robustly() -> None:
    assert parse_ratings("richness: 4, alignment: 5") == (4, 5)
    assert parse_ratings("Richness - 4/5. Alignment: 2/5") == (4, 2)
    assert parse_ratings("Information richness: 5\nImage-text alignment: No") == (5, 1)
    assert parse_ratings("I'd say 4 out of 5, then 3") == (4, 3)
    assert parse_ratings("alignment 4") == (None, 4)
    assert parse_ratings("ratings 10 and 7, or 2.5") == (None, None)
    assert parse_ratings("") == (None, None)


def test_judge_scorer_applies_sail_vl2_rule() -> None:
    replies = iter(["richness: 4, alignment: 4", "richness: 2, alignment: 5", "richness: 5, alignment: 1",
                    "no idea", "Richness 3/5; alignment 3/5"])
    prompts_seen: list[str] = []

    def fake_generate(images: list[object], prompts: list[str]) -> list[str]:
        prompts_seen.extend(prompts)
        return [next(replies) for _ in prompts]

    cfg = JudgeFilter(type="judge", preset="tiny", min_score=3)
    cands = [cand(f"caption {i}", png_bytes()) for i in range(5)]
    got = JudgeScorer(cfg, generate=fake_generate).score(cands)
    assert got == [None, "judge_low_richness", "judge_low_alignment", "judge_unparseable", None]
    assert cands[0].scores == {"judge_richness": 4, "judge_alignment": 4}
    assert 'caption of the image: "caption 0"' in prompts_seen[0]


def test_config_rules() -> None:
    with pytest.raises(ValidationError, match="dedup must come before"):
        Config.model_validate({"filters": [{"type": "minilm"}, {"type": "dedup"}]})
    with pytest.raises(ValidationError, match="exactly one of"):
        Config.model_validate({"filters": [{"type": "alignment"}]})
    with pytest.raises(ValidationError, match=r"unknown|Extra"):
        Config.model_validate({"filters": [{"type": "image", "min_sid": 3}]})


def test_funnel_rows_in_chain_order() -> None:
    rows = build_funnel(100, {"bad_json": 2, "image_too_small": 3, "exact_duplicate": 5},
                        [("image", ("image_too_small",)), ("dedup", ("exact_duplicate", "near_duplicate"))])
    assert rows == [{"step": "read", "dropped": {"bad_json": 2}, "remaining": 98},
                    {"step": "image", "dropped": {"image_too_small": 3}, "remaining": 95},
                    {"step": "dedup", "dropped": {"exact_duplicate": 5}, "remaining": 90}]


# ---------------------------------------------------------------------------- stage runs
@pytest.fixture(scope="module")
def baseline(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, str], dict, Path]:
    store = tmp_path_factory.mktemp("base")
    expected = make_corpus(store)
    res = run_job("jobs.filter", contract_env(store, stage="filter", kind="filter", inputs=["in"],
                                              outputs=["out"], config={"filters": FILTERS}))
    assert res.returncode == 0, res.stderr
    rep = report(store)
    assert rep["dropped"]["exact_duplicate"] == expected["exact"]
    assert rep["dropped"]["near_duplicate"] == expected["near"] > 0
    assert rep["dropped"]["image_too_small"] > 0 and rep["dropped"]["caption_too_short"] > 0
    assert rep["samples_in"] == 60 == rep["samples_out"] + rep["dropped_total"]
    assert [r["step"] for r in rep["funnel"]] == ["image", "caption", "dedup"]
    png = store / rep["funnel_chart"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return output_digests(store), rep, store


@pytest.mark.slow
def test_same_survivors_at_world_size_two(baseline, tmp_path: Path) -> None:
    digests, rep, _ = baseline
    make_corpus(tmp_path)
    procs = [start(contract_env(tmp_path, stage="filter", kind="filter", inputs=["in"], outputs=["out"],
                                config={"filters": FILTERS}, rank=r, world=2)) for r in range(2)]
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0, out
    assert output_digests(tmp_path) == digests
    assert report(tmp_path)["dropped"] == rep["dropped"]


@pytest.mark.slow
def test_sigkill_mid_run_then_rerun_matches_uninterrupted(baseline, tmp_path: Path) -> None:
    digests, rep, base_store = baseline
    make_corpus(tmp_path)
    env = contract_env(tmp_path, stage="filter", kind="filter", inputs=["in"], outputs=["out"],
                       config={"filters": FILTERS})
    done_dir = tmp_path / "runs/t/filter/done"
    for kill_after_markers in (1, 3):
        # The job stops itself right after its k-th done marker (a busy machine could otherwise let
        # it run to the end between two looks), and is killed there.
        proc = start_stopping_after(env, "*/runs/t/filter/done/*.json", kill_after_markers)
        kill_once_stopped(proc, f"after marker {kill_after_markers}")
        assert len(list(done_dir.glob("*.json"))) < 6  # it really was interrupted
    res = run_job("jobs.filter", env)
    assert res.returncode == 0, res.stderr
    assert output_digests(tmp_path) == digests
    got = report(tmp_path)
    assert (got["samples_in"], got["samples_out"], got["dropped"]) == \
        (rep["samples_in"], rep["samples_out"], rep["dropped"])
    keys = kept_keys(tmp_path)
    assert len(keys) == len(set(keys)) == got["samples_out"]  # nothing duplicated
    assert keys == kept_keys(base_store)  # nothing lost


@pytest.mark.slow
def test_a_rank_takes_over_missing_indexes_of_a_dead_peer(baseline, tmp_path: Path) -> None:
    digests, rep, _ = baseline
    make_corpus(tmp_path)
    filters = [*FILTERS[:2], {**FILTERS[2], "steal_after_seconds": 0.5}]
    # Rank 1 runs alone first: rank 0 never writes its indexes, so rank 1 must build them.
    for rank in (1, 0):
        env = contract_env(tmp_path, stage="filter", kind="filter", inputs=["in"], outputs=["out"],
                           config={"filters": filters}, rank=rank, world=2)
        res = run_job("jobs.filter", env)
        assert res.returncode == 0, res.stderr
        if rank == 1:
            assert "indexing another rank's shard" in res.stderr
    assert output_digests(tmp_path) == digests
    assert report(tmp_path)["dropped"] == rep["dropped"]


@pytest.mark.slow
def test_filter_over_s3_with_transient_faults_matches_local(baseline, tmp_path: Path) -> None:
    from sailk8s.testing.s3 import FaultProxy, s3_server

    digests, rep, _ = baseline
    make_corpus(tmp_path)
    with s3_server() as s3, FaultProxy(s3.endpoint) as proxy:
        store = s3.store("p")
        for shard in sorted((tmp_path / "in").glob("*.tar")):
            store.put_file(f"in/{shard.name}", shard)
        env = contract_env(tmp_path, stage="filter", kind="filter", inputs=["in"], outputs=["out"],
                           config={"filters": FILTERS})
        env.update({"SAIL_STORE_URI": s3.uri("p"), "SAIL_STORE_ENDPOINT": proxy.endpoint,
                    "SAIL_STORE_ACCESS_KEY": s3.access_key, "SAIL_STORE_SECRET_KEY": s3.secret_key,
                    "SAIL_STORE_REGION": s3.region, "SAIL_STORE_RETRY_SECONDS": "20"})
        proxy.inject("503", times=4)
        res = run_job("jobs.filter", env)
        assert res.returncode == 0, res.stderr[-2000:]
        assert s3.secret_key not in res.stderr
        out = tmp_path / "s3out"
        out.mkdir()
        for key in store.list("out/"):
            store.get_file(key, out / key.rsplit("/", 1)[1])
        got = {p.name: sh.file_sha256(p) for p in sorted(out.glob("*.tar"))}
        assert got == digests
        assert json.loads(store.get("runs/t/filter/report.json"))["dropped"] == rep["dropped"]


def test_judge_bounds_per_rating() -> None:
    """min_alignment 1 keeps every alignment rating (measured only); richness still drops."""
    def fake_generate(images: list[object], prompts: list[str]) -> list[str]:
        return ["richness: 4, alignment: 1", "richness: 2, alignment: 5"]

    cfg = JudgeFilter(type="judge", preset="tiny", min_score=3, min_alignment=1)
    assert cfg.bounds() == (3, 1)
    got = JudgeScorer(cfg, generate=fake_generate).score([cand("a", png_bytes()), cand("b", png_bytes())])
    assert got == [None, "judge_low_richness"]


def test_verdict_quality_counts_drops_against_the_truth() -> None:
    from jobs.filter import verdict_quality

    q = verdict_quality([True, True, False, False, True], [True, False, True, False, True])
    assert q == {"pairs": 5, "mismatched": 3, "dropped": 3, "precision": round(2 / 3, 4),
                 "recall": round(2 / 3, 4)}
    assert verdict_quality([False, False], [False, False])["precision"] is None


def test_model_filters_are_measured_on_held_out_pairs(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """judge_eval: the judge's alignment verdict on pairs of known truth, whatever it enforces."""
    from jobs import filter as stage

    make_corpus(tmp_path, n_shards=1)
    (tmp_path / "pairs").mkdir()
    with sh.ShardWriter(tmp_path / "pairs" / "shard-000000.tar") as w:
        for i in range(10):  # pairs 0-3 mismatched; the fake judge calls 0-2 and 8-9 mismatched
            w.write(sh.Sample(f"p{i}", {"caption": f"pair {i}", "mismatched": i < 4}, "png",
                              {"png": pattern_png(i)}))

    def fake_generate(images: list[object], prompts: list[str]) -> list[str]:
        bad = [any(f'"pair {i}"' in p for i in (0, 1, 2, 8, 9)) for p in prompts]
        return [f"richness: 4, alignment: {1 if b else 5}" for b in bad]

    config = {"filters": [*FILTERS, {"type": "judge", "preset": "tiny", "min_alignment": 1,
                                     "eval_prefix": "pairs"}]}
    for k, v in contract_env(tmp_path, stage="filter", kind="filter", inputs=["in"], outputs=["out"],
                             config=config).items():
        monkeypatch.setenv(k, v)
    stage.run(lambda f: JudgeScorer(f, generate=fake_generate))
    rep = report(tmp_path)
    assert rep["judge_eval"] == {"pairs": 10, "mismatched": 4, "dropped": 5, "precision": 0.6, "recall": 0.75}
    assert "judge precision 0.6 recall 0.75" in rep["summary"]
    assert "judge_low_alignment" not in rep["dropped"]  # measured, not enforced (min_alignment 1)
