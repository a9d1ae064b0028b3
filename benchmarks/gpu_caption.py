"""Caption throughput per GPU of an InternVL2/3-8B-shaped model: vLLM vs transformers generate().

What runs: `build_model("internvl-8b")` (InternViT-300M-448px + MLP projector + Qwen2.5-7B shapes,
random init, bf16) saved once to local disk; images of 1344x896 px, which tile to 6 tiles of 448 px
plus a thumbnail (7 tiles, 1792 image tokens); the caption stage's recaption prompt; every reply
exactly --tokens long (150 by default: min = max new tokens, since a random model's replies end
at random). transformers runs the hf engine (left-padded batches of --hf-batch); vLLM runs the
vllm engine with --vllm-batch requests per generate call (the caption stage's batch_size). Both
go through `jobs.vlm.engine`, as the stage does. Goal: >= 10 images/s per H100 with vLLM, >= 5x
transformers.

    python benchmarks/gpu_caption.py            # a GPU with >= 40 GB; a few minutes
    python benchmarks/gpu_caption.py --quick    # no GPU: the same code on tiny-vllm, CPU, fp32

Without vLLM here, the script re-runs itself in the vLLM venv (`make vllm-venv`, CPU only).
The last stdout line is one JSON object: benchmark, unit (images/s), ours (vLLM), baseline
(transformers), ratio, goal_met, device, ...
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from caption_engines import reexec_in_vllm_venv


def images_of(n: int, size: tuple[int, int], start: int = 0) -> list:
    """n distinct real photos (scikit-image) resized to `size` (the same tiling for every image).

    Each gets faint seeded noise, so vLLM's encoder cache never serves a repeated image.
    """
    import numpy as np
    from PIL import Image
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.camera()]
    resized = [Image.fromarray(np.asarray(p)).convert("RGB").resize(size) for p in photos]
    out = []
    for i in range(start, start + n):
        arr = np.asarray(resized[i % len(photos)], dtype=np.int16)
        noise = np.random.default_rng(i).integers(-2, 3, size=arr.shape)
        out.append(Image.fromarray((arr + noise).clip(0, 255).astype(np.uint8)))
    return out


def timed(engine, images, prompts, sampling, batch: int) -> tuple[float, int]:
    """(images/s, generated tokens) of captioning everything in batches of `batch`."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    tokens = 0
    for i in range(0, len(images), batch):
        tokens += sum(g.tokens for g in engine.generate(images[i:i + batch], prompts[i:i + batch], sampling))
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - t0), tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny-vllm on CPU: checks the code path")
    parser.add_argument("--tokens", type=int, default=150, help="generated tokens per caption")
    parser.add_argument("--hf-images", type=int, default=64)
    parser.add_argument("--hf-batch", type=int, default=16)
    parser.add_argument("--vllm-images", type=int, default=512)
    parser.add_argument("--vllm-batch", type=int, default=256)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    args = parser.parse_args()
    reexec_in_vllm_venv()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    from jobs.caption import prompt_for
    from jobs.vlm.engine import HFEngine, ModelSource, Sampling, open_engine
    from jobs.vlm.model import build_model, save_model
    from sailk8s.stageconfig.caption import Config

    gpu = torch.cuda.is_available() and not args.quick
    if args.quick:
        preset, size, max_tiles, dtype = "tiny-vllm", (192, 128), 6, torch.float32
        args.tokens, args.hf_images, args.vllm_images = min(args.tokens, 16), 16, 32
        args.hf_batch, args.vllm_batch = 8, 32
        torch.set_num_threads(1)
        os.environ.update(OMP_NUM_THREADS="1", VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1",
                          VLLM_CPU_OMP_THREADS_BIND="nobind")
    else:
        if not gpu:
            sys.exit("gpu_caption: no GPU visible (use --quick to check the code path on CPU)")
        preset, size, max_tiles, dtype = "internvl-8b", (1344, 896), 6, torch.bfloat16
    device = "cuda" if gpu else "cpu"
    cfg = Config(preset=preset, mode="recaption", max_tiles=max_tiles)
    prompt = prompt_for(cfg, {"alt_text": "a photo of an astronaut in a white suit beside a flag"})[1]
    sampling = Sampling(max_new_tokens=args.tokens, min_new_tokens=args.tokens)
    n = max(args.hf_images, args.vllm_images)
    images, prompts = images_of(n, size), [prompt] * n

    with tempfile.TemporaryDirectory(prefix="gpu-caption-", dir=os.environ.get("SAIL_TMPDIR")) as tmp:
        t0 = time.perf_counter()
        model, processor = build_model(preset, seed=0, dtype=dtype, max_tiles=max_tiles, device=device)
        model.eval()
        save_model(model, processor, Path(tmp) / "model")
        built = time.perf_counter() - t0
        tiles = int(processor.image_processor.get_number_of_image_patches(size[1], size[0], {}))
        hf = HFEngine(model, processor, max_tiles=max_tiles)
        warm = images_of(4, size, start=n)  # warm-up on other images
        timed(hf, warm[:2], prompts[:2], Sampling(max_new_tokens=4), args.hf_batch)
        base, base_tokens = timed(hf, images[:args.hf_images], prompts[:args.hf_images], sampling,
                                  args.hf_batch)
        hf.close()
        del hf, model
        gc.collect()
        if gpu:
            torch.cuda.empty_cache()
        t0 = time.perf_counter()
        source = ModelSource(model=str(Path(tmp) / "model"), dtype="bfloat16" if gpu else "float32",
                             max_tiles=max_tiles)
        vllm = open_engine("vllm", source, max_new_tokens=args.tokens,
                           gpu_memory_utilization=args.gpu_memory_utilization)
        start = time.perf_counter() - t0
        try:
            timed(vllm, warm, prompts[:4], Sampling(max_new_tokens=4), 4)  # warm-up
            ours, our_tokens = timed(vllm, images[:args.vllm_images], prompts[:args.vllm_images], sampling,
                                     args.vllm_batch)
        finally:
            vllm.close()
    name = torch.cuda.get_device_name() if gpu else "cpu"
    print(f"{preset} on {name}: {tiles} tiles/image, {args.tokens} tokens/caption; vLLM {ours:.2f} images/s "
          f"(batch {args.vllm_batch}, engine start {start:.0f} s), transformers {base:.2f} images/s "
          f"(batch {args.hf_batch}); ratio {ours / base:.2f}")
    print(json.dumps({
        "benchmark": "gpu_caption", "unit": "images/s", "ours": round(ours, 3), "baseline": round(base, 3),
        "ratio": round(ours / base, 3), "goal": {"vllm_images_per_s": 10, "ratio": 5},
        "goal_met": bool(ours >= 10 and ours / base >= 5) if gpu else None,
        "tokens_per_s": {"vllm": round(ours * our_tokens / args.vllm_images, 1),
                         "hf": round(base * base_tokens / args.hf_images, 1)},
        "model": preset, "dtype": str(dtype).removeprefix("torch."), "tiles_per_image": tiles,
        "tokens_per_caption": args.tokens, "hf_batch": args.hf_batch, "vllm_batch": args.vllm_batch,
        "images": {"vllm": args.vllm_images, "hf": args.hf_images}, "device": name,
        "build_and_save_s": round(built, 1), "vllm_start_s": round(start, 1),
    }))


if __name__ == "__main__":
    main()
