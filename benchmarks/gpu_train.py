"""Training throughput and MFU of the sail-vl-2b preset on one GPU: packed 8k sequences vs padded.

What runs: `jobs.vlm.model.build_model("sail-vl-2b")` (InternViT-300M + MLP projector + Qwen2.5-1.5B
shapes, random init) in bf16 with AdamW, every part trainable (Pretrain-Advance style), on a
synthetic stream shaped like SAIL-VL's pretraining data: captions of 50-300 tokens plus 256
image tokens per 448 px tile, 1-7 tiles (+ a thumbnail when more than one). The stream goes
through the training stages' own packing (`jobs.training.packing.StreamPacker` + `collate_packed`):
8192-token sequences, position ids reset per sample, no attention mask, `use_cache=False`.
The baseline feeds the same samples as padded batches (`collate_padded`) of about as many
samples per step. Both report real (non-pad) tokens per second; MFU counts the model FLOPs of
those real tokens (ViT, projector, LLM linear layers, lm_head and causal attention per sample,
x3 for forward + backward) over the GPU's dense bf16 peak.

    python benchmarks/gpu_train.py                 # GPU: sail-vl-2b, a few minutes at most
    python benchmarks/gpu_train.py --quick         # no GPU: the same code on the tiny preset, CPU

With sdpa, a packed sequence's block-diagonal mask is dense, so attention also computes the
masked cross-sample blocks (about 25% extra work at 8k for this model, not counted as model
FLOPs); `--attn flex_attention` skips them where torch.compile/triton work on the machine.
If a step runs out of GPU memory the run switches on gradient checkpointing (as the training
stages would) and says so; MFU still counts model FLOPs only (recomputation excluded).
The last stdout line is one JSON object: benchmark, unit, ours (packed), baseline (padded),
ratio, mfu, device, ...
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from jobs.training.packing import IGNORE, Bin, StreamPacker, TokenizedSample, collate_packed, collate_padded
from jobs.vlm.model import build_model, chat_prompt, image_tokens_per_tile

# Dense bf16 peak, FLOP/s, by device name (no sparsity).
PEAKS = {"H200": 989e12, "H100 PCIe": 756e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12,
         "A10G": 125e12, "L4": 121e12}


@dataclass(frozen=True)
class Shape:
    """What a step's FLOPs depend on."""

    llm_linear: int  # weights in the LLM's transformer linear layers (no embeddings)
    lm_head: int  # hidden * vocab
    llm_layers: int
    llm_hidden: int
    vit_linear: int  # weights in the ViT's linear/conv layers
    vit_layers: int
    vit_hidden: int
    vit_tokens: int  # per tile, with the class token
    projector: int  # weights of the MLP projector
    tile_tokens: int  # LLM tokens per tile after pixel shuffle


def matmul_weights(module: nn.Module) -> int:
    """Weights that multiply every token: Linear and Conv2d (patch embedding) layers."""
    return sum(m.weight.numel() for m in module.modules() if isinstance(m, (nn.Linear, nn.Conv2d)))


def model_shape(model: Any) -> Shape:
    """Read the FLOP-relevant sizes off a built InternVL model."""
    cfg = model.config
    vc, tc = cfg.vision_config, cfg.text_config
    side = vc.image_size[0] // vc.patch_size[0]
    return Shape(
        llm_linear=matmul_weights(model.model.language_model), lm_head=tc.hidden_size * tc.vocab_size,
        llm_layers=tc.num_hidden_layers, llm_hidden=tc.hidden_size,
        vit_linear=matmul_weights(model.model.vision_tower), vit_layers=vc.num_hidden_layers,
        vit_hidden=vc.hidden_size, vit_tokens=side * side + 1,
        projector=matmul_weights(model.model.multi_modal_projector), tile_tokens=image_tokens_per_tile(cfg),
    )


def train_flops(shape: Shape, samples: Sequence[TokenizedSample], causal: bool = True) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward) over real tokens.

    Attention counts each sample against itself only (that is what packing buys); causal
    attention does half the QK^T and AV work of full attention.
    """
    fwd = 0.0
    for s in samples:
        n = len(s)
        tiles = 0 if s.pixel_values is None else int(s.pixel_values.shape[0])
        fwd += 2.0 * (shape.llm_linear + shape.lm_head) * n
        fwd += (2.0 if causal else 4.0) * shape.llm_layers * shape.llm_hidden * n * n  # QK^T + AV
        t = shape.vit_tokens
        fwd += tiles * (2.0 * shape.vit_linear * t + 4.0 * shape.vit_layers * shape.vit_hidden * t * t)
        fwd += tiles * 2.0 * shape.projector * shape.tile_tokens
    return 3.0 * fwd


def synthetic_samples(processor: Any, count: int, image_size: int, tile_tokens: int, seed: int,
                      caption_range: tuple[int, int], max_tiles: int) -> list[TokenizedSample]:
    """SAIL-like samples: chat prompt with the image's tokens, a caption as the only target."""
    rng = random.Random(seed)
    tok = processor.tokenizer
    head, tail = chat_prompt(processor, "Describe the image.").split(processor.image_token)
    head_ids = tok(head, add_special_tokens=False)["input_ids"]
    tail_ids = tok(tail, add_special_tokens=False)["input_ids"]
    start, end, ctx = processor.start_image_token_id, processor.end_image_token_id, processor.image_token_id
    eos = tok.eos_token_id
    special = set(tok.all_special_ids)
    vocab = [i for i in range(len(tok)) if i not in special]
    gen = torch.Generator().manual_seed(seed)
    bank = torch.randn((max_tiles + 1, 3, image_size, image_size), generator=gen)  # shared pixels
    out = []
    for _ in range(count):
        grid = rng.randint(1, max_tiles)
        tiles = grid + (1 if grid > 1 else 0)  # InternVL adds a thumbnail to multi-tile images
        caption = [rng.choice(vocab) for _ in range(rng.randint(*caption_range))] + [eos]
        prompt = [*head_ids, start, *([ctx] * (tiles * tile_tokens)), end, *tail_ids]
        out.append(TokenizedSample(input_ids=prompt + caption, labels=[IGNORE] * len(prompt) + caption,
                                   pixel_values=bank[:tiles]))
    return out


def to_device(batch: dict[str, torch.Tensor], device: torch.device,
              dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Model inputs on the device (pixels in the model's dtype); bookkeeping keys removed."""
    out = {}
    for k, v in batch.items():
        if k in ("real_tokens", "target_tokens"):
            continue
        out[k] = v.to(device, dtype=dtype) if k == "pixel_values" else v.to(device, non_blocking=True)
    return out


def sync(device: torch.device) -> None:
    """Wait for queued GPU work (timings must include it)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_steps(model: Any, opt: torch.optim.Optimizer,
              batches: Sequence[tuple[dict[str, torch.Tensor], float]],
              device: torch.device, dtype: torch.dtype, warmup: int) -> dict[str, float]:
    """Train on the batches; time all but the first `warmup`. Returns tokens/s, FLOP/s, loss."""
    model.train()
    tokens = flops = 0.0
    loss_value = float("nan")
    t0 = 0.0
    for i, (batch, step_flops) in enumerate(batches):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        inputs = to_device(batch, device, dtype)
        loss = model(**inputs, use_cache=False).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i >= warmup:
            tokens += float(batch["real_tokens"])
            flops += step_flops
        loss_value = float(loss.detach())
    sync(device)
    seconds = time.perf_counter() - t0
    return {"tokens_per_s": tokens / seconds, "flops_per_s": flops / seconds, "seconds": seconds,
            "loss": loss_value}


def peak_flops(device: torch.device, override_tflops: float | None) -> float | None:
    """The device's dense bf16 peak, from --peak-tflops or its name (None when unknown)."""
    if override_tflops:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, value in PEAKS.items():
        if key in name:
            return value
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU smoke run of the same code: tiny preset")
    parser.add_argument("--preset", default=None, help="default: sail-vl-2b on GPU, tiny with --quick/CPU")
    parser.add_argument("--seq-len", type=int, default=None, help="packed length (8192; 1024 for tiny)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per mode (8; 4 quick)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--peak-tflops", type=float, default=None, help="override the GPU's bf16 peak")
    parser.add_argument("--grad-ckpt", action="store_true", help="gradient checkpointing from the start")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (CPU runs)")
    parser.add_argument("--attn", default="sdpa",
                        help="attention implementation: sdpa (packed: block-diagonal mask) or flex_attention")
    args = parser.parse_args()

    gpu = torch.cuda.is_available() and not args.quick
    device = torch.device("cuda", 0) if gpu else torch.device("cpu")
    dtype = torch.bfloat16 if gpu else torch.float32
    preset = args.preset or ("sail-vl-2b" if gpu else "tiny")
    seq_len = args.seq_len or (8192 if preset == "sail-vl-2b" else 1024)
    steps = args.steps or (8 if gpu else 4)
    torch.set_num_threads(args.threads)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True

    t_build = time.perf_counter()
    model, processor = build_model(preset, seed=0, dtype=dtype, attn_implementation=args.attn, device=device)
    build_s = time.perf_counter() - t_build
    shape = model_shape(model)
    params = sum(p.numel() for p in model.parameters())
    image_size = model.config.vision_config.image_size[0]
    # The caption range scales with the model: SAIL-like for 2B, shrunk for the 1k-token tiny run.
    captions = (50, 300) if seq_len >= 4096 else (10, 60)
    max_tiles = 7

    # Enough samples for warmup + steps packed sequences; the padded run reuses them.
    per_seq = max(1, seq_len // (captions[1] // 2 + 4 * shape.tile_tokens + 24))
    samples = synthetic_samples(processor, (args.warmup + steps + 2) * per_seq * 2, image_size,
                                shape.tile_tokens, 0, captions, max_tiles)
    samples = [s for s in samples if len(s) <= seq_len]
    bins: list[Bin] = list(StreamPacker(seq_len, window=16).pack(samples))[: args.warmup + steps]
    used = [s for b in bins for s in b.items]
    packed = [(collate_packed([b], seq_len, processor.tokenizer.pad_token_id), train_flops(shape, b.items))
              for b in bins]
    k = max(1, round(len(used) / len(bins)))  # same samples per step on average
    groups = [used[i:i + k] for i in range(0, len(used), k)][: args.warmup + steps]
    padded = [(collate_padded(g, processor.tokenizer.pad_token_id), train_flops(shape, g)) for g in groups]
    fill_packed = sum(float(b["real_tokens"]) for b, _ in packed) / (len(packed) * seq_len)
    fill_padded = (sum(float(b["real_tokens"]) for b, _ in padded)
                   / sum(b["input_ids"].numel() for b, _ in padded))

    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=gpu)
    grad_ckpt = args.grad_ckpt
    if grad_ckpt:
        model.gradient_checkpointing_enable()
    while True:
        try:
            ours = run_steps(model, opt, packed, device, dtype, args.warmup)
            base = run_steps(model, opt, padded, device, dtype, args.warmup)
            break
        except torch.OutOfMemoryError:
            if grad_ckpt:
                raise
        # Outside the except block, so the failed step's activations (held by the traceback) are freed.
        print("out of GPU memory: retrying with gradient checkpointing", flush=True)
        opt.zero_grad(set_to_none=True)
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        model.gradient_checkpointing_enable()
        grad_ckpt = True

    peak = peak_flops(device, args.peak_tflops)
    mfu = ours["flops_per_s"] / peak if peak else None
    mfu_base = base["flops_per_s"] / peak if peak else None
    name = torch.cuda.get_device_name(device) if gpu else "cpu"
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if gpu else None
    print(f"{preset} on {name}: {params / 1e6:.1f}M params, built in {build_s:.1f}s; seq {seq_len}; "
          f"packed {ours['tokens_per_s']:.0f} tok/s (fill {fill_packed:.3f}), "
          f"padded {base['tokens_per_s']:.0f} tok/s (fill {fill_padded:.3f}); "
          f"MFU {'n/a' if mfu is None else f'{mfu:.3f}'}; grad ckpt {grad_ckpt}; "
          f"loss {ours['loss']:.3f}/{base['loss']:.3f}" + (f"; peak mem {mem:.1f} GiB" if mem else ""))
    if not math.isfinite(ours["loss"]) or not math.isfinite(base["loss"]):
        raise SystemExit("non-finite loss: the benchmark's training step is broken")
    print(json.dumps({
        "benchmark": "gpu_train", "unit": "real tokens/s", "ours": round(ours["tokens_per_s"], 1),
        "baseline": round(base["tokens_per_s"], 1),
        "ratio": round(ours["tokens_per_s"] / base["tokens_per_s"], 3),
        "mfu": None if mfu is None else round(mfu, 4),
        "baseline_mfu": None if mfu_base is None else round(mfu_base, 4),
        "model_tflops_per_s": round(ours["flops_per_s"] / 1e12, 3), "device": "cuda" if gpu else "cpu",
        "device_name": name, "preset": preset, "params": params, "seq_len": seq_len, "steps": steps,
        "dtype": str(dtype).removeprefix("torch."), "grad_ckpt": grad_ckpt,
        "fill_packed": round(fill_packed, 4),
        "fill_padded": round(fill_padded, 4), "peak_tflops": None if peak is None else peak / 1e12,
        "peak_mem_gib": None if mem is None else round(mem, 2), "attn": args.attn,
    }))


if __name__ == "__main__":
    main()
