"""The caption stage: (re)describe every image with a VLM captioner (`python -m jobs.caption`).

Run by the local backend or a PyTorchJob as `torchrun --nproc-per-node N -m jobs.caption`;
each rank takes its share of the input shards through the shared runtime (`jobs.runtime`),
so a killed rank's unfinished shard is redone from scratch by the next attempt and finished
ones are skipped. Two modes, as in SAIL-VL's captioner:

- `caption`: the image alone, with `caption_prompt`;
- `recaption`: the image plus its alt-text, through `recaption_prompt` (`{alt_text}`); a sample
  without usable alt-text falls back to `caption` (its `mode` field says so).

Samples are captioned in batches of `batch_size` (one batched `generate`), large images are
tiled (`max_tiles`), and the model runs in bf16 on GPU. Output shards keep every input field
and add `recaption`, `captioner`, `mode` and `prompt` to the json. Sampling (`do_sample`) is
seeded per shard and batch, so a redone shard gets the same captions.

The captioner (`config.model`) is a prefix of the run's store (e.g. an sft stage's export), a
store URI, a local path or a hub id; store-hosted models are downloaded once per node and
attempt (or into $SAIL_MODEL_CACHE). Each rank loads it at its first pending shard.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
import torch
from PIL import Image
from transformers import InternVLForConditionalGeneration

from jobs.model import (
    MODEL_CACHE_ENV,
    VLMProcessor,
    build_model,
    device_and_dtype,
    generate_texts,
    load_model,
)
from jobs.runtime import ShardInput, ShardOutput, StageRun, local_tmp_root, main
from jobs.shards import Sample
from sailk8s.stageconfig.caption import Config

log = structlog.get_logger(__name__)

_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def alt_text_of(meta: dict[str, Any], field: str, max_chars: int) -> str | None:
    """The sample's usable alt-text (whitespace collapsed, truncated), or None."""
    value = meta.get(field)
    if not isinstance(value, str):
        return None
    text = " ".join(value.split())
    return text[:max_chars] if text else None


def prompt_for(cfg: Config, meta: dict[str, Any]) -> tuple[str, str]:
    """(mode, user prompt) for one sample under the stage config."""
    if cfg.mode == "recaption":
        alt = alt_text_of(meta, cfg.alt_text_field, cfg.max_alt_text_chars)
        if alt is not None:
            return "recaption", cfg.recaption_prompt.format(alt_text=alt)
    return "caption", cfg.caption_prompt


@dataclass
class Captioner:
    """A loaded captioner plus the stage's generation settings."""

    model: InternVLForConditionalGeneration
    processor: VLMProcessor
    cfg: Config

    @classmethod
    def from_config(cls, cfg: Config, cache_dir: Path | None = None) -> Captioner:
        """Load (or, for a preset, build) the model on this rank's device, in the chosen dtype."""
        device, auto_dtype = device_and_dtype()
        dtype = auto_dtype if cfg.dtype == "auto" else _DTYPES[cfg.dtype]
        if cfg.model is not None:
            model, processor = load_model(cfg.model, device=device, dtype=dtype, cache_dir=cache_dir)
        else:
            preset = cfg.preset_name() or "tiny"  # the config guarantees model or preset
            model, processor = build_model(preset, seed=cfg.seed, dtype=dtype)
            model.to(device)
        model.eval()
        log.info("captioner ready", captioner=cfg.captioner(), device=str(device), dtype=str(dtype),
                 parameters=sum(p.numel() for p in model.parameters()))
        return cls(model, processor, cfg)

    def generate(
        self, images: Sequence[Image.Image], prompts: Sequence[str], seed: int | None = None
    ) -> list[str]:
        """One batched generate call over (image, prompt) pairs."""
        cfg = self.cfg
        gen: dict[str, Any] = {"do_sample": cfg.do_sample, "repetition_penalty": cfg.repetition_penalty}
        if cfg.do_sample:
            gen.update(temperature=cfg.temperature, top_p=cfg.top_p)
            if seed is not None:
                torch.manual_seed(seed)
        return generate_texts(self.model, self.processor, images, prompts,
                              max_new_tokens=cfg.max_new_tokens, max_tiles=cfg.max_tiles, **gen)

    def caption_batch(self, batch: Sequence[tuple[Sample, Image.Image]], seed: int | None = None) -> None:
        """Caption a batch in one call and add the output fields to each sample's json."""
        modes, prompts = zip(*(prompt_for(self.cfg, s.meta) for s, _ in batch), strict=True)
        texts = self.generate([im for _, im in batch], list(prompts), seed=seed)
        name = self.cfg.captioner()
        for (sample, _), mode, prompt, text in zip(batch, modes, prompts, texts, strict=True):
            sample.meta.update(recaption=text, captioner=name, mode=mode, prompt=prompt)


def batch_seed(shard_id: str, index: int) -> int:
    """A stable per-(shard, batch) seed: a redone shard samples the same captions."""
    return int.from_bytes(hashlib.sha256(f"{shard_id}/{index}".encode()).digest()[:4], "big")


def process_shard(captioner: Captioner, shard: ShardInput, out: ShardOutput) -> None:
    """Caption one shard batch by batch; every decoded sample is written with its caption."""
    for index, batch in enumerate(shard.batches(captioner.cfg.batch_size)):
        captioner.caption_batch(batch, seed=batch_seed(shard.shard_id, index))
        for sample, _ in batch:
            out.count(f"mode_{sample.meta['mode']}")
            if not sample.meta["recaption"]:
                out.count("empty_captions")  # kept: the filter stage decides (and names why)
            out.write(sample)


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
    """Stage entry: env contract -> config -> the shard loop (captioner loaded at the first shard)."""
    stage = StageRun.from_env(Config)
    cfg = stage.typed(Config)
    if cfg.model is not None:  # a prefix of this run's store (e.g. a fine-tuned captioner) -> its URI
        from jobs.modelref import resolve_model_ref

        cfg = cfg.model_copy(update={"model": resolve_model_ref(stage.store, cfg.model, strict=False)})
    cache_dir, owned = model_cache_dir(stage)
    loaded: list[Captioner] = []

    def process(shard: ShardInput, out: ShardOutput) -> None:
        # Lazily: a rank whose shards are all done never spends time or GPU memory on a model.
        if not loaded:
            loaded.append(Captioner.from_config(cfg, cache_dir))
        process_shard(loaded[0], shard, out)

    report = stage.run_map(process, max_pixels=cfg.max_image_pixels)
    # Rank 0 returns a report only once every rank's shards are done: nobody reads the cache now.
    if report is not None and owned:
        shutil.rmtree(cache_dir, ignore_errors=True)


if __name__ == "__main__":
    main(run)
