"""Model filters with real models: the likelihood alignment score and MiniLM text similarity."""

from __future__ import annotations

import pytest
from jobs_helpers import pattern_png

from jobs.core import shards as sh
from jobs.filters.basic import Candidate
from sailk8s.stageconfig.filter import AlignmentFilter, MiniLMFilter


def cand(text: str, alt: str = "", seed: int = 0) -> Candidate:
    return Candidate(sh.Sample("k", {"alt_text": alt}, "png", {"png": pattern_png(seed, 64)}), text)


@pytest.mark.slow
def test_alignment_score_is_the_per_token_likelihood_gain() -> None:
    import torch

    from jobs.filters.scores import AlignmentScorer
    from jobs.vlm import inference

    torch.manual_seed(0)
    torch.set_num_threads(1)
    scorer = AlignmentScorer(AlignmentFilter(type="alignment", preset="tiny", min_score=0.0))
    cands = [cand("a red square", seed=1), cand("digits on paper", seed=2)]
    reasons = scorer.score(cands)
    images = [c.load_image(10**7) for c in cands]
    prompts = [scorer.cfg.prompt] * 2
    texts = [c.text or "" for c in cands]
    with_img = inference.text_logprobs(scorer.engine.model, scorer.processor, images, prompts, texts)
    without = inference.text_logprobs(scorer.engine.model, scorer.processor, None, prompts, texts)
    for c, r, a, b, t in zip(cands, reasons, with_img, without, texts, strict=True):
        n = len(scorer.processor.tokenizer(t, add_special_tokens=False)["input_ids"]) + 1
        assert c.scores["alignment"] == pytest.approx((a - b) / n, abs=1e-4)
        assert r == ("low_alignment" if c.scores["alignment"] < 0 else None)


@pytest.mark.slow
def test_minilm_similarity_separates_related_from_unrelated() -> None:
    from jobs.filters.scores import MiniLMScorer

    scorer = MiniLMScorer(MiniLMFilter(type="minilm", min_similarity=0.3))
    cands = [cand("an orange cat lying on a sofa", "a tabby cat sleeping on the couch"),
             cand("an orange cat lying on a sofa", "quarterly tax report spreadsheet"),
             cand("a handwritten digit seven", "")]
    reasons = scorer.score(cands)
    assert cands[0].scores["text_similarity"] > 0.5 > cands[1].scores["text_similarity"]
    assert reasons == [None, "low_text_similarity", None]
    assert "text_similarity" not in cands[2].scores  # no alt-text: kept, unscored


@pytest.mark.slow
def test_judge_with_a_real_tiny_vlm_records_its_reply() -> None:
    import torch

    from jobs.filters.scores import JudgeScorer
    from sailk8s.stageconfig.filter import JudgeFilter

    torch.set_num_threads(1)
    scorer = JudgeScorer(JudgeFilter(type="judge", preset="tiny", on_unparseable="keep", max_new_tokens=8))
    cands = [cand("a red square", seed=1), cand("digits", seed=2)]
    reasons = scorer.score(cands)  # a random tiny model answers gibberish: kept, as configured
    for c, r in zip(cands, reasons, strict=True):
        rich, align = c.scores["judge_richness"], c.scores["judge_alignment"]
        if rich is None or align is None:
            assert r is None and isinstance(c.scores["judge_reply"], str)
        else:
            low = "judge_low_richness" if rich < 3 else "judge_low_alignment"
            assert r == (None if min(rich, align) >= 3 else low)
