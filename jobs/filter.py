"""The `filter` stage (`python -m jobs.filter` / `torchrun -m jobs.filter`).

Applies the chain of sailk8s.stageconfig.filter.Config in order to every sample of every
input shard; a sample's first failing filter names the reason it is dropped. Kept samples
are written unchanged (same image bytes) with the model scores added under `scores`.

With a dedup filter the stage runs two passes (see jobs.filters.dedup):
1. index: each rank hashes the survivors of the filters before dedup in its own shards and
   stores a per-shard index (`runs/<run>/<stage>/dedup/<config hash>/<shard>.json`); it then
   waits for the other ranks' indexes, indexing a missing one itself if nothing new has
   appeared for `steal_after_seconds` (so a dead rank cannot block it forever);
2. the main pass (jobs.core.runtime.StageRun.run_map) drops what the global keep-first decision
   says, identical at any world size because it is a pure function of all indexes.
Rank 0 adds the funnel (in, kept, dropped per reason in chain order) to report.json and
draws it to `runs/<run>/<stage>/artifacts/funnel.png`. A model filter with `eval_prefix` is
measured there too: its verdicts on held-out pairs of known truth give `<type>_eval`
(precision and recall of "drop": how well it finds mismatched captions).
"""

from __future__ import annotations

import hashlib
import io
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

import structlog

from jobs.core.runtime import StageRun, main
from jobs.core.shardio import ShardInput, ShardOutput, ShardStats, WorkUnit, list_input_shards, local_tmp_root
from jobs.core.shards import BadSample, BadSampleError, Sample, read_shard
from jobs.filters import dedup
from jobs.filters.basic import Candidate, CaptionCheck, ImageCheck, pick_text
from jobs.filters.funnel import build_funnel, funnel_png
from jobs.vlm.modelref import resolve_model_ref
from sailk8s.errors import InputError
from sailk8s.stageconfig.filter import (
    AlignmentFilter,
    CaptionFilter,
    Config,
    DedupFilter,
    ImageFilter,
    JudgeFilter,
    MiniLMFilter,
)

log = structlog.get_logger(__name__)


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


def _check(cfg: ImageFilter | CaptionFilter) -> Check:
    return ImageCheck(cfg) if isinstance(cfg, ImageFilter) else CaptionCheck(cfg)


def step_reasons(cfg: Any) -> tuple[str, tuple[str, ...]]:
    """(step name, the reasons it can drop for), without loading any model."""
    from jobs.filters import scores

    if isinstance(cfg, ImageFilter):
        return "image", ImageCheck.reasons
    if isinstance(cfg, CaptionFilter):
        return "caption", CaptionCheck.reasons
    if isinstance(cfg, DedupFilter):
        return "dedup", (dedup.EXACT_DUPLICATE, dedup.NEAR_DUPLICATE)
    if isinstance(cfg, JudgeFilter):
        return "judge", scores.JudgeScorer.reasons
    if isinstance(cfg, AlignmentFilter):
        return "alignment", scores.AlignmentScorer.reasons
    return "minilm", scores.MiniLMScorer.reasons


class Chain:
    """The configured filters, with model scorers loaded on first use."""

    def __init__(self, cfg: Config, scorer_factory: Callable[[Any], Scorer] | None = None) -> None:
        self.cfg = cfg
        self._factory = scorer_factory or self._make_scorer
        self._scorers: dict[int, Scorer] = {}
        types = [f.type for f in cfg.filters]
        self.dedup_at = types.index("dedup") if "dedup" in types else None
        self.checks: dict[int, Check] = {i: _check(f) for i, f in enumerate(cfg.filters)
                                         if isinstance(f, (ImageFilter, CaptionFilter))}

    def _make_scorer(self, f: Any) -> Scorer:
        from jobs.filters import scores

        if isinstance(f, JudgeFilter):
            return scores.JudgeScorer(f, max_pixels=self.cfg.max_pixels)
        if isinstance(f, AlignmentFilter):
            return scores.AlignmentScorer(f, max_pixels=self.cfg.max_pixels)
        assert isinstance(f, MiniLMFilter)
        return scores.MiniLMScorer(f)

    def scorer(self, i: int) -> Scorer:
        """The i-th filter's scorer (loaded once)."""
        if i not in self._scorers:
            self._scorers[i] = self._factory(self.cfg.filters[i])
        return self._scorers[i]

    @cached_property
    def dedup_cfg(self) -> DedupFilter | None:
        f = self.cfg.filters[self.dedup_at] if self.dedup_at is not None else None
        return f if isinstance(f, DedupFilter) else None

    def steps(self) -> list[tuple[str, Sequence[str]]]:
        """(name, reasons) per filter in order, for the funnel."""
        return [step_reasons(f) for f in self.cfg.filters]

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
        """Reason (or None = keep) per candidate, applying filters in chain order."""
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


# ---------------------------------------------------------------------------- dedup pass
def index_shard(stage: StageRun, chain: Chain, unit: WorkUnit) -> list[dedup.IndexEntry]:
    """Hash the survivors of the pre-dedup filters in one input shard."""
    entries: list[dedup.IndexEntry] = []
    assert unit.input_key is not None
    with tempfile.TemporaryDirectory(prefix="sail-index-", dir=local_tmp_root()) as tmp:
        local = Path(tmp) / "input.tar"
        stage.store.get_file(unit.input_key, local)
        shard = ShardInput(unit, local, ShardStats(), lambda: None, need_image=False)
        for sample in shard:
            cand = chain.candidate(sample)
            if chain.pre_dedup(cand) or chain.image_reason(cand):
                continue
            assert cand.image is not None
            entries.append(dedup.IndexEntry(unit.shard_id, sample.key, dedup.content_hash(cand.image),
                                         dedup.perceptual_hash(cand.image)))
    return entries


def build_dedup_decision(stage: StageRun, chain: Chain, units: list[WorkUnit]) -> dict[tuple[str, str], str]:
    """Index own shards, wait for (or take over) the others, then decide globally."""
    cfg = chain.dedup_cfg
    assert cfg is not None
    prefix = stage.stage_key("dedup", chain.fingerprint()) + "/"

    def key(u: WorkUnit) -> str:
        return f"{prefix}{u.shard_id}.json"

    def build(u: WorkUnit) -> None:
        entries = index_shard(stage, chain, u)
        stage.store.put(key(u), json.dumps(dedup.index_doc(entries)).encode())

    present = set(stage.store.list(prefix))
    for u in stage.my_units(units):
        if key(u) not in present:
            build(u)
    missing = [u for u in units if key(u) not in present and u not in stage.my_units(units)]
    last_change = time.monotonic()
    while missing:
        present = set(stage.store.list(prefix))
        still = [u for u in missing if key(u) not in present]
        if len(still) < len(missing):
            last_change = time.monotonic()
        missing = still
        if missing and time.monotonic() - last_change > cfg.steal_after_seconds:
            victim = missing[stage.dist.rank % len(missing)]
            stage.log.warning("indexing another rank's shard", shard=victim.shard_id)
            build(victim)
            last_change = time.monotonic()
        elif missing:
            time.sleep(0.3)
    entries = [e for u in units for e in dedup.parse_index(u.shard_id, json.loads(stage.store.get(key(u))))]
    decision = dedup.decide(entries, exact=cfg.exact, near=cfg.near, max_distance=cfg.max_distance)
    stage.log.info("dedup decision", indexed=len(entries), duplicates=len(decision))
    return decision


# ---------------------------------------------------------------------------- stage
def make_processor(chain: Chain,
                   duplicates: dict[tuple[str, str], str]) -> Callable[[ShardInput, ShardOutput], None]:
    """The per-shard function for StageRun.run_map."""

    def process(shard: ShardInput, out: ShardOutput) -> None:
        cands = [chain.candidate(s) for s in shard]
        reasons = chain.run(shard.shard_id, cands, duplicates)
        for cand, reason in zip(cands, reasons, strict=True):
            if reason is not None:
                out.drop(cand.sample, reason)
                continue
            if cand.scores:
                cand.sample.meta["scores"] = {**cand.sample.meta.get("scores", {}), **cand.scores}
            out.write(cand.sample)

    return process


def verdict_quality(verdicts: Sequence[bool], truth: Sequence[bool]) -> dict[str, Any]:
    """Precision and recall of the verdict "drop" against "truly mismatched"."""
    tp = sum(v and t for v, t in zip(verdicts, truth, strict=True))
    fp = sum(v and not t for v, t in zip(verdicts, truth, strict=True))
    fn = sum(t and not v for v, t in zip(verdicts, truth, strict=True))
    return {"pairs": len(truth), "mismatched": sum(truth), "dropped": tp + fp,
            "precision": round(tp / (tp + fp), 4) if tp + fp else None,
            "recall": round(tp / (tp + fn), 4) if tp + fn else None}


def mismatch_verdict(f: JudgeFilter | AlignmentFilter, cand: Candidate, reason: str | None) -> bool:
    """Whether the filter calls the pair mismatched: the judge by its alignment rating (below 3,
    SAIL-VL2's rule, whatever the filter enforces), the alignment filter by its own drop."""
    if isinstance(f, JudgeFilter):
        align = cand.scores.get("judge_alignment")
        return not isinstance(align, int) or align < 3
    return reason is not None


def evaluate_filter(stage: StageRun, chain: Chain, index: int) -> dict[str, Any]:
    """Run model filter `index` on its held-out pairs; precision/recall of its drop verdicts."""
    f = chain.cfg.filters[index]
    assert isinstance(f, (JudgeFilter, AlignmentFilter)) and f.eval_prefix is not None
    cands: list[Candidate] = []
    truth: list[bool] = []
    for _, key in list_input_shards(stage.store, [f.eval_prefix]):
        for item in read_shard(io.BytesIO(stage.store.get(key))):
            value = item.meta.get(f.eval_truth_field) if isinstance(item, Sample) else None
            if not isinstance(value, bool) or isinstance(item, BadSample):
                raise InputError(f"{f.type} eval pairs under {f.eval_prefix!r}: every sample needs an image, "
                                 f"`{f.eval_text_field}` and a boolean `{f.eval_truth_field}`")
            cands.append(Candidate(item, pick_text(item.meta, [f.eval_text_field])))
            truth.append(value)
    verdicts: list[bool] = []
    for start in range(0, len(cands), f.batch_size):
        batch = cands[start:start + f.batch_size]
        reasons = chain.scorer(index).score(batch)
        verdicts += [mismatch_verdict(f, c, r) for c, r in zip(batch, reasons, strict=True)]
    result = verdict_quality(verdicts, truth)
    stage.log.info("model filter measured on held-out pairs", filter=f.type, **result)
    return result


def finalize_report(stage: StageRun, chain: Chain, report: dict[str, Any]) -> None:
    """Add the funnel (and model filters' held-out measurements) to the report; draw the funnel."""
    for i, f in enumerate(chain.cfg.filters):
        if isinstance(f, (JudgeFilter, AlignmentFilter)) and f.eval_prefix:
            report[f"{f.type}_eval"] = evaluate_filter(stage, chain, i)
    rows = build_funnel(report["samples_in"], report["dropped"], chain.steps())
    report["funnel"] = rows
    report["kept"] = report["samples_out"]
    png = funnel_png(report["samples_in"], rows, f"filter funnel: {stage.ctx.run}/{stage.ctx.stage}")
    key = stage.paths.artifact("funnel.png")
    stage.store.put(key, png)
    report["funnel_chart"] = key
    top = sorted(report["dropped"].items(), key=lambda kv: -kv[1])[:4]
    measured = [f"{k[:-5]} precision {v['precision']} recall {v['recall']}"
                for k, v in report.items() if k.endswith("_eval") and isinstance(v, dict)]
    report["summary"] = "; ".join([f"kept {report['kept']} of {report['samples_in']}",
                                   "dropped " + (", ".join(f"{n} {r}" for r, n in top) or "none"), *measured])


def resolve_models(stage: StageRun, cfg: Config) -> Config:
    """Model filters' `model:` may name a prefix of the run's store (e.g. the captioner export)."""
    filters = [f.model_copy(update={"model": resolve_model_ref(stage.store, f.model, strict=False,
                                                               field=f"config.filters[{i}].model")})
               if isinstance(f, (JudgeFilter, AlignmentFilter)) and f.model else f
               for i, f in enumerate(cfg.filters)]
    return cfg.model_copy(update={"filters": filters})


def run(scorer_factory: Callable[[Any], Scorer] | None = None) -> None:
    """Entry point of `python -m jobs.filter`."""
    stage = StageRun.from_env(Config)
    cfg = resolve_models(stage, stage.typed(Config))
    chain = Chain(cfg, scorer_factory)
    units = stage.input_units()
    duplicates = build_dedup_decision(stage, chain, units) if chain.dedup_cfg else {}
    stage.run_map(make_processor(chain, duplicates), need_image=False, max_pixels=cfg.max_pixels,
                  finalize=lambda report: finalize_report(stage, chain, report))


if __name__ == "__main__":
    main(run)
