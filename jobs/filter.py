"""The `filter` stage (`python -m jobs.filter`): the configured filter chain over every input shard."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from jobs.core.runtime import StageRun, main
from jobs.core.shardio import ShardInput, ShardOutput, list_input_shards
from jobs.core.shards import BadSample, Sample, read_shard
from jobs.filters.basic import Candidate, pick_text
from jobs.filters.chain import Chain, Scorer
from jobs.filters.deduppass import Duplicates, run_dedup
from jobs.filters.funnel import build_funnel, funnel_png
from jobs.vlm.modelref import resolve_model_ref
from sailk8s.errors import InputError
from sailk8s.stageconfig.filter import AlignmentFilter, Config, JudgeFilter

log = structlog.get_logger(__name__)


# ---------------------------------------------------------------------------- stage
def make_processor(chain: Chain, duplicates: Duplicates | None) -> Callable[[ShardInput, ShardOutput], None]:
    """The per-shard function for StageRun.run_map.

    Kept samples are written unchanged (same image bytes), their model scores added under `scores`.
    """

    def process(shard: ShardInput, out: ShardOutput) -> None:
        cands = [chain.candidate(s) for s in shard]
        mine = duplicates.of(shard.shard_id, [c.sample.key for c in cands]) if duplicates is not None else {}
        reasons = chain.run(shard.shard_id, cands, mine)
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
    """Add the funnel (and model filters' held-out measurements) to the report; draw the funnel.

    The funnel: samples in, kept, dropped per reason in chain order, drawn to artifacts/funnel.png.
    A model filter with `eval_prefix` adds `<type>_eval`: its precision and recall of "drop" on
    held-out pairs of known truth.
    """
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
    try:
        duplicates = run_dedup(stage, chain, units) if chain.dedup_cfg else None
        stage.run_map(make_processor(chain, duplicates), need_image=False, max_pixels=cfg.max_pixels,
                      finalize=lambda report: finalize_report(stage, chain, report))
    finally:
        chain.close()


if __name__ == "__main__":
    main(run)
