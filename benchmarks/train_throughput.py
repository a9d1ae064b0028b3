"""Real tokens/s of the training step, stream-packed vs padded batches, tiny model on CPU.

Ours is the training path of jobs.train on CPU: stream-packed 512-token sequences with
per-sample attention (jobs.attention). Samples follow the SAIL-VL-like shape scaled to the tiny preset: a caption of 12-75 tokens
after 1-7 image tiles (16 image tokens each on the tiny model, 256 on the real one). Both
modes run the same forward + backward + AdamW step (plain torch, one process) for the same
number of samples; packed uses 512-token sequences, padded pads each micro batch of 8 to its
longest sample.

    python benchmarks/train_throughput.py [--quick]
Last stdout line: JSON with "ours" = packed real tokens/s, "baseline" = padded.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
import torch.nn.functional as F

from jobs import model as vlm
from jobs.attention import use_packed_attention
from jobs.packing import IGNORE, StreamPacker, TokenizedSample, collate_packed, collate_padded

SEQ_LEN = 512
MICRO = 8


def make_samples(n: int, processor: object, seed: int = 0) -> list[TokenizedSample]:
    tok = processor.tokenizer  # type: ignore[attr-defined]
    per_tile = int(processor.image_seq_length)  # type: ignore[attr-defined]
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        tiles = rng.randint(1, 7)
        ctx = [tok.context_image_token_id] * (per_tile * tiles)
        img = [tok.start_image_token_id, *ctx, tok.end_image_token_id]
        text = [rng.randrange(10, 600) for _ in range(rng.randint(12, 75))] + [tok.eos_token_id]
        out.append(TokenizedSample(img + text, [IGNORE] * len(img) + text,
                                   torch.randn(tiles, 3, 64, 64, generator=gen)))
    return out


def loss_of(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids", "attention_mask",
                                                      "pixel_values")}
    logits = model(**inputs, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


def run(batches: list[dict[str, torch.Tensor]], packed_attention: bool) -> float:
    """Real tokens per second over the batches (after one warm-up step)."""
    model, _ = vlm.build_model("tiny", seed=0)
    if packed_attention:  # what jobs.train does on CPU when packing
        use_packed_attention(model)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

    def step(b: dict[str, torch.Tensor]) -> None:
        loss = loss_of(model, b) / max(int(b["target_tokens"]), 1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up, not timed
    t0 = time.perf_counter()
    for b in batches:
        step(b)
    elapsed = time.perf_counter() - t0
    return sum(int(b["real_tokens"]) for b in batches) / elapsed


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    _, processor = vlm.build_model("tiny")
    samples = make_samples(160 if args.quick else 800, processor)
    pad = processor.tokenizer.pad_token_id
    bins = list(StreamPacker(SEQ_LEN).pack(samples))
    packed = [collate_packed(bins[i:i + 2], SEQ_LEN, pad) for i in range(0, len(bins), 2)]
    padded = [collate_padded(samples[i:i + MICRO], pad) for i in range(0, len(samples), MICRO)]
    ours = run(packed, True)
    baseline = run(padded, False)
    result = {"benchmark": "train_throughput", "unit": "real tokens/s (tiny model, CPU, 1 thread)",
              "ours": round(ours, 1), "baseline": round(baseline, 1), "ratio": round(ours / baseline, 3),
              "samples": len(samples), "seq_len": SEQ_LEN, "padded_micro_batch": MICRO}
    print(f"packed {ours:.0f} tok/s vs padded {baseline:.0f} tok/s")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
