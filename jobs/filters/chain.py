"""The filter chain: one implementation per filter config type, applied in order to a shard's samples."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Protocol

from jobs.core.shards import BadSampleError, Sample
from jobs.filters import dedup
from jobs.filters.basic import Candidate, CaptionCheck, ImageCheck, pick_text
from jobs.filters.scores import AlignmentScorer, JudgeScorer, MiniLMScorer
from sailk8s.stageconfig.filter import (
    AlignmentFilter,
    CaptionFilter,
    Config,
    DedupFilter,
    ImageFilter,
    JudgeFilter,
    MiniLMFilter,
)


class Check(Protocol):
    """A per-sample filter."""

    name: str
    reasons: tuple[str, ...]

    def check(self, cand: Candidate) -> str | None: ...


class Scorer(Protocol):
    """A batched model filter."""

    name: str
    reasons: tuple[str, ...]

    def score(self, cands: Sequence[Candidate]) -> list[str | None]: ...


@dataclass(frozen=True)
class FilterKind:
    """How the chain applies one filter config type: its funnel step, drop reasons and implementation."""

    step: str
    reasons: tuple[str, ...]
    check: Callable[[Any], Check] | None = None  # per-sample filters: built from the config
    scorer: Callable[[Any, int], Scorer] | None = None  # model filters: (config, max_pixels), loaded lazily


# Dedup has neither: it needs every shard's index first (jobs.filter builds the decision).
KINDS: dict[type, FilterKind] = {
    ImageFilter: FilterKind("image", ImageCheck.reasons, check=ImageCheck),
    CaptionFilter: FilterKind("caption", CaptionCheck.reasons, check=CaptionCheck),
    DedupFilter: FilterKind("dedup", (dedup.EXACT_DUPLICATE, dedup.NEAR_DUPLICATE)),
    JudgeFilter: FilterKind("judge", JudgeScorer.reasons,
                            scorer=lambda f, max_pixels: JudgeScorer(f, max_pixels=max_pixels)),
    AlignmentFilter: FilterKind("alignment", AlignmentScorer.reasons,
                                scorer=lambda f, max_pixels: AlignmentScorer(f, max_pixels=max_pixels)),
    MiniLMFilter: FilterKind("minilm", MiniLMScorer.reasons, scorer=lambda f, _max_pixels: MiniLMScorer(f)),
}


def kind_of(cfg: Any) -> FilterKind:
    """The implementation of a filter config (one of the types of `Config.filters`)."""
    return KINDS[type(cfg)]


class Chain:
    """The configured filters, with model scorers loaded on first use."""

    def __init__(self, cfg: Config, scorer_factory: Callable[[Any], Scorer] | None = None) -> None:
        self.cfg = cfg
        self._factory = scorer_factory or self._make_scorer
        self._scorers: dict[int, Scorer] = {}
        self.kinds = [kind_of(f) for f in cfg.filters]
        types = [f.type for f in cfg.filters]
        self.dedup_at = types.index("dedup") if "dedup" in types else None
        self.checks: dict[int, Check] = {}
        for i, (f, kind) in enumerate(zip(cfg.filters, self.kinds, strict=True)):
            if kind.check is not None:
                self.checks[i] = kind.check(f)

    def _make_scorer(self, f: Any) -> Scorer:
        """The default scorer factory: the filter type's own scorer."""
        make = kind_of(f).scorer
        assert make is not None, f"{f.type} is not a model filter"
        return make(f, self.cfg.max_pixels)

    def scorer(self, i: int) -> Scorer:
        """The i-th filter's scorer (loaded once)."""
        if i not in self._scorers:
            self._scorers[i] = self._factory(self.cfg.filters[i])
        return self._scorers[i]

    def close(self) -> None:
        """Release the loaded scorers' models (an inference engine's processes must not outlive the rank)."""
        for scorer in self._scorers.values():
            close = getattr(scorer, "close", None)
            if close is not None:
                close()
        self._scorers.clear()

    @cached_property
    def dedup_cfg(self) -> DedupFilter | None:
        f = self.cfg.filters[self.dedup_at] if self.dedup_at is not None else None
        return f if isinstance(f, DedupFilter) else None

    def steps(self) -> list[tuple[str, Sequence[str]]]:
        """(name, reasons) per filter in order, for the funnel."""
        return [(kind.step, kind.reasons) for kind in self.kinds]

    def fingerprint(self) -> str:
        """Hash of what the dedup index depends on: filters before dedup, text fields, limits."""
        end = self.dedup_at if self.dedup_at is not None else len(self.cfg.filters)
        basis = {"pre": [f.model_dump() for f in self.cfg.filters[:end]],
                 "text_fields": self.cfg.text_fields, "max_pixels": self.cfg.max_pixels}
        return hashlib.sha256(json.dumps(basis, sort_keys=True).encode()).hexdigest()[:12]

    def candidate(self, sample: Sample) -> Candidate:
        """Wrap a read sample with the caption under judgement."""
        return Candidate(sample, pick_text(sample.meta, self.cfg.text_fields))

    def image_reason(self, cand: Candidate) -> str | None:
        """Decode for filters that need pixels; the decode reason if that fails."""
        try:
            cand.load_image(self.cfg.max_pixels)
        except BadSampleError as err:
            return err.reason
        return None

    def pre_dedup(self, cand: Candidate) -> str | None:
        """Apply the per-sample filters before dedup (they are all per-sample by validation)."""
        end = self.dedup_at if self.dedup_at is not None else len(self.cfg.filters)
        for i in range(end):
            if i in self.checks:
                reason = self.checks[i].check(cand)
                if reason:
                    return reason
        return None

    def run(self, shard_id: str, cands: list[Candidate],
            duplicates: dict[tuple[str, str], str]) -> list[str | None]:
        """Reason (or None = keep) per candidate: its first failing filter, in chain order."""
        reasons: list[str | None] = [None] * len(cands)
        for i, f in enumerate(self.cfg.filters):
            alive = [j for j, r in enumerate(reasons) if r is None]
            if not alive:
                break
            if i in self.checks:
                for j in alive:
                    reasons[j] = self.checks[i].check(cands[j])
            elif isinstance(f, DedupFilter):
                for j in alive:
                    key = (shard_id, cands[j].sample.key)
                    reasons[j] = self.image_reason(cands[j]) or duplicates.get(key)
            else:
                for j in alive:  # model filters need pixels and a caption
                    reasons[j] = self.image_reason(cands[j])
                alive = [j for j in alive if reasons[j] is None]
                size = getattr(f, "batch_size", 16)
                for start in range(0, len(alive), size):
                    idx = alive[start:start + size]
                    got = self.scorer(i).score([cands[j] for j in idx])
                    for j, r in zip(idx, got, strict=True):
                        reasons[j] = r
            for j in alive:
                if reasons[j] is not None:
                    cands[j].image = None  # free pixels of dropped samples early
        return reasons
