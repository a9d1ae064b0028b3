"""jobs.evaluate on the shard runtime: ranks split the shards, predictions are kept, resumes redo the rest."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
from train_helpers import read_json, run_stage, run_stage_torchrun

from jobs.core import shards as sh
from jobs.vlm.model import build_model, save_model

MODEL = "models/eval-tiny"


@pytest.fixture(scope="module")
def eval_store(sample_store: Path) -> Path:
    """The sample store plus a random tiny model and the eval set split into 4 shards + 1 corrupt image."""
    model, processor = build_model("tiny", seed=3)
    save_model(model, processor, sample_store / MODEL)
    samples = [item for key in sorted((sample_store / "data/samples/eval").glob("*.tar"))
               for item in sh.read_shard(io.BytesIO(key.read_bytes()))
               if not isinstance(item, sh.BadSample)]
    assert len(samples) == 40
    out = sample_store / "data/eval4"
    out.mkdir(parents=True)
    for i in range(4):
        with sh.ShardWriter(out / f"shard-{i:06d}.tar") as writer:
            writer.write_all(samples[i * 10:(i + 1) * 10])
            if i == 3:
                writer.write(sh.Sample("corrupt", {"question": "<image> which digit?", "answer": "1"},
                                       "png", {"png": b"not a png"}))
    return sample_store


def evaluate(name: str, **config: Any) -> dict[str, Any]:
    return {"name": name, "kind": "evaluate", "inputs": ["data/eval4"], "outputs": [f"preds/{name}"],
            "config": {"model": MODEL, "max_new_tokens": 3, "batch_size": 4, **config}}


def predictions(store: Path, name: str) -> list[dict[str, Any]]:
    return [item.meta for key in sorted((store / "preds" / name).glob("*.tar"))
            for item in sh.read_shard(io.BytesIO(key.read_bytes()), need_image=False)
            if not isinstance(item, sh.BadSample)]


@pytest.mark.slow
def test_two_ranks_score_what_one_process_scores(eval_store: Path) -> None:
    one = run_stage(eval_store, evaluate("ev1"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_stage_torchrun(eval_store, evaluate("ev2"))
    assert two.returncode == 0, two.stderr[-3000:]
    r1, r2 = read_json(eval_store, "runs/t/ev1/report.json"), read_json(eval_store, "runs/t/ev2/report.json")
    assert r2["world_size"] == 2 and r2["shards"] == 4
    for r in (r1, r2):
        # Every input accounted for: 40 scored, the corrupt image dropped under its reason.
        assert (r["samples_in"], r["samples"], r["dropped_total"]) == (41, 40, 1)
        assert r["predictions"].startswith("preds/")
    for field in ("correct", "per_answer", "examples"):
        assert r1[field] == r2[field], field
    assert predictions(eval_store, "ev1") == predictions(eval_store, "ev2")
    recs = predictions(eval_store, "ev1")
    assert len(recs) == 40 and {"question", "answer", "prediction", "correct"} <= recs[0].keys()
    assert r1["correct"] == sum(r["correct"] for r in recs)
    ranks = {read_json(eval_store, f"runs/t/ev2/stats/shard-{i:06d}.json")["rank"] for i in range(4)}
    assert ranks == {0, 1}  # the shards really were split


def test_a_resumed_attempt_scores_only_the_shards_left(eval_store: Path) -> None:
    first = run_stage(eval_store, evaluate("ev-resume"))
    assert first.returncode == 0, first.stderr[-3000:]
    before = read_json(eval_store, "runs/t/ev-resume/report.json")
    # As if attempt 1 had died before shard 2's marker: its output and marker are gone.
    (eval_store / "runs/t/ev-resume/done/shard-000002.json").unlink()
    (eval_store / "preds/ev-resume/shard-000002.tar").unlink()
    second = run_stage(eval_store, evaluate("ev-resume"), attempt=2)
    assert second.returncode == 0, second.stderr[-3000:]
    after = read_json(eval_store, "runs/t/ev-resume/report.json")
    assert after["shards_this_attempt"] == 1 and after["attempt"] == 2
    assert (after["samples"], after["correct"]) == (before["samples"], before["correct"])


def test_limit_spreads_over_the_shards(eval_store: Path) -> None:
    proc = run_stage(eval_store, evaluate("ev-limit", limit=6))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = read_json(eval_store, "runs/t/ev-limit/report.json")
    assert report["samples"] == 6  # the first 6 records in shard order...
    assert len(predictions(eval_store, "ev-limit")) == 8  # ...of 2 scored per shard (ceil(6 / 4))
    assert "held-out accuracy" in proc.stdout


def test_names_answer_counts_a_caption_that_names_the_answer_and_no_other_choice() -> None:
    from jobs.evaluate import names_only

    digits, words = [str(d) for d in range(10)], {"7": ["seven"], "1": ["one"]}
    assert names_only("A handwritten digit 7 (seven) in thin strokes", "7", digits, words)
    assert names_only("the number SEVEN", "7", digits, words)
    assert not names_only("A handwritten digit 7 (one)", "7", digits, words)  # names another too
    assert not names_only("A handwritten digit 1 (one)", "7", digits, words)
    assert not names_only("digit 17", "7", digits, words)  # whole words only
    assert not names_only("", "7", digits, words)


def test_min_accuracy_fails_the_stage_as_permanent_after_writing_its_report(eval_store: Path) -> None:
    """A random model scores about chance: the gate stops what depends on it (exit 5)."""
    from sailk8s import exitcodes

    res = run_stage(eval_store, evaluate("ev-gate", metric="exact_match", min_accuracy=0.9))
    assert res.returncode == exitcodes.QUALITY, res.stderr[-2000:]
    assert "below min_accuracy 0.9" in res.stderr and MODEL in res.stderr
    report = read_json(eval_store, "runs/t/ev-gate/report.json")  # written first: the user sees why
    assert report["accuracy"] < 0.9 and report["samples"] == 40
