"""Real tokens/s of the training step, stream-packed vs padded batches, tiny model on CPU.

Ours is the training path of jobs.training.train on CPU: stream-packed sequences with per-sample
attention (jobs.vlm.attention). The baseline is what a user would otherwise run: the same samples
in micro batches of 8, each padded to its longest sample, transformers' sdpa attention with the
padding mask. Both run the same forward + backward + AdamW step (plain torch, one process,
one thread), timed in interleaved rounds (median per mode) in CPU seconds of this process: on
a shared machine, other processes' load would otherwise land on one mode more than the other
(with one thread and nothing else running, CPU seconds and wall seconds agree).

Data: the SAIL-VL-like lengths (captions of 50-300 tokens after 1-7 tiles of 256 image tokens,
8192-token sequences) scaled by 1/16 as a whole to the tiny preset, whose tile is 16 tokens:
captions of 3-19 tokens, 1-7 tiles of 16, 512-token sequences. Scaling everything by the same
factor keeps the length distribution's shape (padded fill 0.64, as on the real lengths) and the
image:caption token mix. The tiny vision tower takes about the share of the padded step (~27%
measured) that InternViT-300M's FLOPs take in SAIL-VL-2B's padded step on the real lengths
(32%), so the bound measured here matches the FLOP bound of the real model (both ~1.33).

Why the ratio stays below 1.5 here: packing removes padding from the LLM's work only. The
vision tower sees the same tiles in both modes, so its time is a fixed cost that packing cannot
touch. The benchmark measures that time (vision tower + projector, forward + backward, same
tiles) and reports `bound`: the ratio that removing ALL padding from the rest of the step
would give, T_pad / (T_vision + (T_pad - T_vision) * fill_padded / fill_packed), next to
`text_ratio`, the measured speed-up of the non-vision part. Two freeze policies of the recipe:
"all" (SFT: everything trains; the headline) and "projector" (Pretrain-Alignment: vision tower
and LLM frozen, so the vision tower runs forward only and its share shrinks).

    python benchmarks/train_throughput.py [--quick]
Last stdout line: JSON with "ours" = packed real tokens per CPU second, "baseline" = padded
(freeze "all"), "bound", "text_ratio", "sail_vl_2b_flop_bound", and "projector_only" figures.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from collections.abc import Callable
from itertools import pairwise
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
import torch.nn.functional as F
from gpu_train import Shape, model_shape  # the FLOP model of benchmarks/gpu_train.py

from jobs.training.packing import (
    IGNORE,
    StreamPacker,
    TokenizedSample,
    collate_packed,
    collate_padded,
    fill_rate,
)
from jobs.vlm import model as vlm
from jobs.vlm.attention import use_packed_attention

SCALE = 16  # real SAIL-VL lengths / tiny-preset lengths (256 image tokens per tile -> 16)
SEQ_LEN = 8192 // SCALE
CAPTION = (50 // SCALE, 300 // SCALE)
TILES = (1, 7)
MICRO = 8  # padded micro batch (samples)
CHUNKS = 4  # interleaving groups per timed round
PACKED_ROWS = 2  # packed micro batch (sequences): about as many positions per step as MICRO padded

Batch = dict[str, torch.Tensor]


def make_samples(n: int, processor: object, seed: int = 0) -> list[TokenizedSample]:
    """SAIL-like samples at 1/16 scale: image tiles then a caption (the caption is the target)."""
    tok = processor.tokenizer  # type: ignore[attr-defined]
    per_tile = int(processor.image_seq_length)  # type: ignore[attr-defined]
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        tiles = rng.randint(*TILES)
        ctx = [tok.context_image_token_id] * (per_tile * tiles)
        img = [tok.start_image_token_id, *ctx, tok.end_image_token_id]
        text = [rng.randrange(10, 600) for _ in range(rng.randint(*CAPTION))] + [tok.eos_token_id]
        out.append(TokenizedSample(img + text, [IGNORE] * len(img) + text,
                                   torch.randn(tiles, 3, 64, 64, generator=gen)))
    return out


def loss_of(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Summed token cross-entropy, as jobs.training.train computes it."""
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids", "attention_mask",
                                                      "pixel_values")}
    logits = model(**inputs, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def build(packed: bool, freeze: str) -> torch.nn.Module:
    """The tiny model as jobs.training.train sets it up; freeze "projector" trains the projector only."""
    model, _ = vlm.build_model("tiny", seed=0)
    if packed:  # what jobs.training.train does on CPU when packing
        use_packed_attention(model)
    if freeze == "projector":
        for name, p in model.named_parameters():
            p.requires_grad_("multi_modal_projector" in name)
    model.train()
    return model


def stepper(model: torch.nn.Module) -> Callable[[list[Batch]], float]:
    """A function that runs the training step over batches and returns the seconds it took."""
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)

    def run(batches: list[Batch]) -> float:
        t0 = time.process_time()
        for b in batches:
            loss = loss_of(model, b) / max(int(b["target_tokens"]), 1)
            loss.backward()  # type: ignore[no-untyped-call]
            opt.step()
            opt.zero_grad(set_to_none=True)
        return time.process_time() - t0

    return run


def vision_timer(model: Any) -> Callable[[list[Batch]], float]:
    """Seconds of the vision tower + projector on the batches' tiles, as the training step runs them."""
    trains = any(p.requires_grad for p in model.model.vision_tower.parameters())

    def run(batches: list[Batch]) -> float:
        t0 = time.process_time()
        for b in batches:
            with torch.set_grad_enabled(trains):
                feats = model.model.get_image_features(pixel_values=b["pixel_values"]).pooler_output
            if trains:
                feats.sum().backward()
        took = time.process_time() - t0
        model.zero_grad(set_to_none=True)
        return took

    return run


def chunks(batches: list[Batch], n: int) -> list[list[Batch]]:
    """The batches in n consecutive groups of near-equal count."""
    cuts = [round(i * len(batches) / n) for i in range(n + 1)]
    return [batches[a:b] for a, b in pairwise(cuts)]


def compare(packed: list[Batch], padded: list[Batch], freeze: str, rounds: int) -> dict[str, float]:
    """Median seconds per pass of both modes and of the vision part, timed in interleaved rounds.

    Within a round the modes alternate every few steps (CHUNKS groups), so a burst of load on a
    shared machine lands on both of them rather than on one.
    """
    runs = {"packed": stepper(build(True, freeze)), "padded": stepper(build(False, freeze)),
            "vision": vision_timer(build(False, freeze))}
    data = {"packed": chunks(packed, CHUNKS), "padded": chunks(padded, CHUNKS),
            "vision": chunks(padded, CHUNKS)}
    for name, run in runs.items():  # warm-up, not timed
        run(data[name][0][:1])
    times: dict[str, list[float]] = {name: [] for name in runs}
    for r in range(rounds):
        took = dict.fromkeys(runs, 0.0)
        for i in range(CHUNKS):
            order = ["packed", "padded", "vision"] if (r + i) % 2 == 0 else ["padded", "packed", "vision"]
            for name in order:
                took[name] += runs[name](data[name][i])
        for name, t in took.items():
            times[name].append(t)
    return {k: statistics.median(v) for k, v in times.items()}


def summary(t: dict[str, float], real: int, fill_packed: float, fill_padded: float) -> dict[str, float]:
    """Tokens/s, ratio, and the bound that the fixed vision cost puts on the ratio."""
    rest_pad, rest_pack = t["padded"] - t["vision"], t["packed"] - t["vision"]
    ideal = t["vision"] + rest_pad * fill_padded / fill_packed
    return {"ours": round(real / t["packed"], 1), "baseline": round(real / t["padded"], 1),
            "ratio": round(t["padded"] / t["packed"], 3),
            "vision_share_padded": round(t["vision"] / t["padded"], 3),
            "text_ratio": round(rest_pad / rest_pack, 3) if rest_pack > 0 else float("nan"),
            "bound": round(t["padded"] / ideal, 3)}


def flop_bound(shape: Shape, n: int, freeze: str, seed: int = 0) -> float:
    """The packed/padded ratio of model FLOPs on the REAL SAIL-like lengths for a model's shapes.

    What packing could give at best on that model if time followed FLOPs: the vision tower's
    work is the same in both modes, the LLM's follows the positions (padded micro batches of
    MICRO, stream-packed 8192-token sequences). Attention is counted causal in both (kind to the
    baseline). "projector": vision forward only, LLM forward + input gradients (2x forward).
    """
    rng = random.Random(seed)
    items = [(rng.randint(50, 300) + 2 + 256 * t, t) for t in (rng.randint(*TILES) for _ in range(n))]
    vit_tile = (2.0 * shape.vit_linear * shape.vit_tokens
                + 4.0 * shape.vit_layers * shape.vit_hidden * shape.vit_tokens ** 2
                + 2.0 * shape.projector * shape.tile_tokens)

    def llm(length: int) -> float:
        return (2.0 * (shape.llm_linear + shape.lm_head) * length
                + 2.0 * shape.llm_layers * shape.llm_hidden * length * length)

    vit_mult, llm_mult = (1.0, 2.0) if freeze == "projector" else (3.0, 3.0)
    vision = vit_mult * vit_tile * sum(t for _, t in items)
    packed_fill = _packed_fill([length for length, _ in items], 8192)
    packed = llm_mult * (sum(llm(length) for length, _ in items)
                         + 2.0 * (shape.llm_linear + shape.lm_head) * sum(x for x, _ in items)
                         * (1 / packed_fill - 1))  # the sequences' pad tails
    padded = llm_mult * sum(len(chunk) * llm(max(x for x, _ in chunk))
                            for chunk in (items[i:i + MICRO] for i in range(0, len(items), MICRO)))
    return (vision + padded) / (vision + packed)


def _packed_fill(lengths: list[int], seq_len: int) -> float:
    """Real-token fraction of the stream packer's sequences for these lengths."""

    class _Len:
        def __init__(self, n: int) -> None:
            self.n = n

        def __len__(self) -> int:
            return self.n

    bins = list(StreamPacker(seq_len).pack(_Len(n) for n in lengths))  # type: ignore[misc]
    return sum(lengths) / (len(bins) * seq_len)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    _, processor = vlm.build_model("tiny")
    samples = make_samples(192 if args.quick else 960, processor)
    rounds = 5 if args.quick else 7
    pad = processor.tokenizer.pad_token_id
    bins = list(StreamPacker(SEQ_LEN).pack(samples))
    packed = [collate_packed(bins[i:i + PACKED_ROWS], SEQ_LEN, pad) for i in range(0, len(bins), PACKED_ROWS)]
    padded = [collate_padded(samples[i:i + MICRO], pad) for i in range(0, len(samples), MICRO)]
    real = sum(len(s) for s in samples)
    fills = fill_rate(packed), fill_rate(padded)
    head = summary(compare(packed, padded, "all", rounds), real, *fills)
    align = summary(compare(packed, padded, "projector", rounds), real, *fills)
    real_model, _ = vlm.build_model("sail-vl-2b", device="meta")  # shapes only, no weights
    big = model_shape(real_model)
    head["sail_vl_2b_flop_bound"] = round(flop_bound(big, 4000, "all"), 3)
    align["sail_vl_2b_flop_bound"] = round(flop_bound(big, 4000, "projector"), 3)
    result = {"benchmark": "train_throughput", "unit": "real tokens per CPU second (tiny model, 1 thread)",
              **head,
              "fill_packed": round(fills[0], 4), "fill_padded": round(fills[1], 4),
              "projector_only": align, "samples": len(samples), "seq_len": SEQ_LEN,
              "padded_micro_batch": MICRO, "packed_micro_batch": PACKED_ROWS, "rounds": rounds,
              "target": 1.5,
              "note": "packing removes padding from the LLM's work only; the vision tower's time (same tiles "
                      "in both modes) caps the ratio at 'bound' here and at 'sail_vl_2b_flop_bound' on the "
                      "real model: 1.5 is out of reach on SAIL-like lengths; 'text_ratio' is the non-vision "
                      "speed-up"}
    print(f"train all: packed {head['ours']:.0f} tok/CPU-s vs padded {head['baseline']:.0f} tok/CPU-s, ratio "
          f"{head['ratio']} (vision {head['vision_share_padded']:.0%} of the padded step; bound "
          f"{head['bound']}, text part {head['text_ratio']}x)")
    print(f"projector only: ratio {align['ratio']} (bound {align['bound']}, "
          f"text part {align['text_ratio']}x)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
