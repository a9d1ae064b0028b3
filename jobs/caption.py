"""The `caption` stage (`python -m jobs.caption`): (re)describe every image with a VLM captioner."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from PIL import Image

from jobs.core.prefetch import prefetched
from jobs.core.runtime import StageRun, main
from jobs.core.shardio import ShardInput, ShardOutput, local_tmp_root
from jobs.core.shards import Sample
from jobs.filters.captionquality import CaptionQuality, gate_problems
from jobs.vlm.engine import Engine, ModelSource, Sampling, open_engine
from jobs.vlm.modelref import MODEL_CACHE_ENV, resolve_model_ref
from sailk8s.errors import QualityError
from sailk8s.stageconfig.caption import Config

log = structlog.get_logger(__name__)

def alt_text_of(meta: dict[str, Any], field: str, max_chars: int) -> str | None:
    """The sample's usable alt-text (whitespace collapsed, truncated), or None."""
    value = meta.get(field)
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    return text[:max_chars] if text else None


def prompt_for(cfg: Config, meta: dict[str, Any]) -> tuple[str, str]:
    """(mode, user prompt) for one sample under the stage config, as in SAIL-VL's captioner.

    `caption`: the image alone, with `caption_prompt`; `recaption`: the image plus its alt-text,
    through `recaption_prompt`. A sample without a usable alt-text falls back to `caption`.
    """
    if cfg.mode == "recaption":
        alt = alt_text_of(meta, cfg.alt_text_field, cfg.max_alt_text_chars)
        if alt is not None:
            return "recaption", cfg.recaption_prompt.format(alt_text=alt)
    return "caption", cfg.caption_prompt


@dataclass
class Captioner:
    """A loaded captioner (an inference engine) plus the stage's generation settings."""

    engine: Engine
    cfg: Config

    @classmethod
    def from_config(cls, cfg: Config, cache_dir: Path | None = None) -> Captioner:
        """Load (or, for a preset, build) the model in the configured engine, on this rank's device."""
        source = ModelSource(model=cfg.model, preset=cfg.preset_name() or "tiny", seed=cfg.seed,
                             dtype=cfg.dtype, max_tiles=cfg.max_tiles, cache_dir=cache_dir)
        engine = open_engine(cfg.engine, source, max_new_tokens=cfg.max_new_tokens)
        log.info("captioner ready", captioner=cfg.captioner(), engine=engine.name)
        return cls(engine, cfg)

    @property
    def sampling(self) -> Sampling:
        cfg = self.cfg
        return Sampling(max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                        temperature=cfg.temperature, top_p=cfg.top_p,
                        repetition_penalty=cfg.repetition_penalty)

    def prepare(self, batch: Sequence[tuple[Sample, Image.Image]]) -> Prepared:
        """The batch's modes and prompts and the engine's CPU work (tiling): may run in a prefetch thread."""
        modes, prompts = zip(*(prompt_for(self.cfg, s.meta) for s, _ in batch), strict=True)
        engine_input = self.engine.prepare([im for _, im in batch], list(prompts))
        return Prepared(list(modes), list(prompts), engine_input)

    def caption_batch(self, batch: Sequence[tuple[Sample, Image.Image]], seed: int | None = None,
                      quality: Sequence[CaptionQuality] = (), prepared: Prepared | None = None) -> None:
        """Caption a batch in one call, add the output fields to each json, count it in `quality`.

        Every input field is kept; `recaption`, `captioner`, `mode` and `prompt` are added.
        """
        ready = prepared if prepared is not None else self.prepare(batch)
        seeds = None if seed is None else [(seed + i) % 2**32 for i in range(len(batch))]
        outs = self.engine.generate_prepared(ready.engine_input, self.sampling, seeds)
        name = self.cfg.captioner()
        for (sample, _), mode, prompt, out in zip(batch, ready.modes, ready.prompts, outs, strict=True):
            sample.meta.update(recaption=out.text, captioner=name, mode=mode, prompt=prompt)
            alt = alt_text_of(sample.meta, self.cfg.alt_text_field, self.cfg.max_alt_text_chars)
            digest = hashlib.blake2b(sample.image_bytes, digest_size=16).hexdigest()
            for q in quality:
                q.add(sample.key, digest, prompt, out.text, alt, truncated=not out.finished)

    def close(self) -> None:
        self.engine.close()


@dataclass(frozen=True)
class Prepared:
    """A batch made ready for generation: its modes, prompts and the engine's input."""

    modes: list[str]
    prompts: list[str]
    engine_input: Any


def batch_seed(shard_id: str, index: int) -> int:
    """A stable per-(shard, batch) seed: a redone shard samples the same captions."""
    return int.from_bytes(hashlib.sha256(f"{shard_id}/{index}".encode()).digest()[:4], "big")


class Gate:
    """The quality gate of one rank in one attempt: judges its first `min_samples` captions once."""

    def __init__(self, cfg: Config, rank: int) -> None:
        self.cfg, self.rank = cfg.quality_gate, rank
        self.seen = CaptionQuality()
        self.judged = not self.cfg.enabled

    def check(self) -> None:
        """QualityError (permanent) when the first captions are degenerate; judged once."""
        if self.judged or self.seen.captions < self.cfg.min_samples:
            return
        self.judged = True
        problems = gate_problems(self.seen, self.cfg)
        if problems:
            raise QualityError(
                f"caption quality gate: after {self.seen.captions} captions on rank {self.rank}: "
                + "; ".join(problems) + ". The captioner's output is degenerate: check its training "
                "(final loss, its held-out check), the prompts and max_new_tokens; "
                "config.quality_gate sets the bounds (enabled: false turns the gate off)")
        log.info("caption quality gate passed", rank=self.rank, captions=self.seen.captions,
                 **{k: v for k, v in self.seen.figures().items() if k in ("distinct", "top_share")})


def process_shard(captioner: Captioner, shard: ShardInput, out: ShardOutput,
                  gate: Gate | None = None) -> None:
    """Caption one shard batch by batch; every decoded sample is written with its caption.

    The shard's caption-quality summary goes into its stats; the gate (if any) is checked
    after each batch, so a degenerate captioner stops before this shard is committed.
    """
    quality = CaptionQuality()
    # Decoding and tiling of the next batches run in a worker thread during generation.
    batches = prefetched(shard.batches(captioner.cfg.batch_size), captioner.prepare,
                         depth=captioner.cfg.prefetch_batches)
    for index, (batch, prepared) in enumerate(batches):
        tracked = (quality, gate.seen) if gate is not None and not gate.judged else (quality,)
        captioner.caption_batch(batch, seed=batch_seed(shard.shard_id, index), quality=tracked,
                                prepared=prepared)
        if gate is not None:
            gate.check()
        for sample, _ in batch:
            out.count(f"mode_{sample.meta['mode']}")
            if not sample.meta["recaption"]:
                out.count("empty_captions")  # kept: the filter stage decides (and names why)
            out.write(sample)
    out.stats.summary["caption_quality"] = quality.to_json()


def quality_report(summaries: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The stage's caption-quality figures, merged from its shards' summaries."""
    total = CaptionQuality()
    for s in summaries:
        if "caption_quality" in s:
            total.merge(CaptionQuality.from_json(s["caption_quality"]))
    return total.figures()


def model_cache_dir(stage: StageRun) -> tuple[Path, bool]:
    """Where a store-hosted captioner is downloaded, and whether this attempt owns (removes) it.

    $SAIL_MODEL_CACHE (e.g. a volume) is shared and kept: it assumes a prefix's content never
    changes. Otherwise the cache is per attempt, so a captioner re-exported to the same prefix
    is never served stale; the ranks of one node still share a single download.
    """
    shared = os.environ.get(MODEL_CACHE_ENV)
    if shared:
        return Path(shared), False
    ctx = stage.ctx
    return local_tmp_root() / "sail-models" / f"{ctx.run}-{ctx.stage}-{ctx.attempt}", True


def run() -> None:
    """Stage entry: env contract -> config -> the shard loop (captioner loaded at the first shard).

    The captioner (`config.model`) is a prefix of the run's store (e.g. an sft stage's export), a
    store URI, a local path or a hub id; a store-hosted one is downloaded once per node and attempt.
    """
    stage = StageRun.from_env(Config)
    cfg = stage.typed(Config)
    if cfg.model is not None:  # a prefix of this run's store (e.g. a fine-tuned captioner) -> its URI
        cfg = cfg.model_copy(update={"model": resolve_model_ref(stage.store, cfg.model, strict=False)})
    cache_dir, owned = model_cache_dir(stage)
    loaded: list[Captioner] = []
    gate = Gate(cfg, stage.dist.rank)

    def process(shard: ShardInput, out: ShardOutput) -> None:
        # Lazily: a rank whose shards are all done never spends time or GPU memory on a model.
        if not loaded:
            loaded.append(Captioner.from_config(cfg, cache_dir))
        process_shard(loaded[0], shard, out, gate)

    def finalize(report: dict[str, Any]) -> None:
        q = quality_report(stage.shard_summaries)
        report["caption_quality"] = q
        report["summary"] = (f"{q['captions']} captions, {q['distinct']} distinct for {q['input_distinct']} "
                             f"distinct images; most common {q['top_share']:.0%}; median {q['words']['p50']} "
                             f"words; {q['truncated_share']:.0%} cut at max_new_tokens; "
                             f"{q['alt_copy_share']:.0%} copy the alt-text")

    try:
        report = stage.run_map(process, max_pixels=cfg.max_image_pixels, finalize=finalize)
    finally:
        for captioner in loaded:  # an engine's processes must not outlive the rank
            captioner.close()
    # Rank 0 returns a report only once every rank's shards are done: nobody reads the cache now.
    if report is not None and owned:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main(run)
