"""Caption throughput, batched vs one image at a time: the caption stage's generation path.

Both sides run `jobs.caption.Captioner.caption_batch` (prompt building, processor with dynamic
tiling, one `generate` call, decoding, json fields) with the same tiny model, the same real
images (scikit-learn digits and scikit-image photos of mixed sizes and aspect ratios), the same
prompts and greedy decoding; only the batch size differs. Captions must come out identical.

    python benchmarks/caption_batching.py [--quick] [--batch-size 32] [--threads 1]

The last stdout line is one JSON object: benchmark, unit (samples/s), ours (batched),
baseline (batch size 1), ratio (ours/baseline, higher is better).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from PIL import Image

from jobs.caption import Captioner
from jobs.core.shards import Sample
from jobs.vlm.engine import HFEngine
from jobs.vlm.model import build_model
from sailk8s.stageconfig.caption import Config


def real_images(n: int) -> list[Image.Image]:
    """n real images: mostly upscaled digits, every fourth a photo at a varied size."""
    from skimage import data
    from sklearn.datasets import load_digits

    digits = load_digits().images
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.camera()]
    out = []
    for i in range(n):
        if i % 4 == 3:
            arr = np.asarray(photos[i % len(photos)])
            im = Image.fromarray(arr).convert("RGB")
            scale = (2 + i % 3) * 32 / max(im.size)  # 64-128 px on the long side: 1-4 tiles
            out.append(im.resize((max(8, int(im.width * scale)), max(8, int(im.height * scale)))))
        else:
            arr = (255 - digits[i % len(digits)] * 16).clip(0, 255).astype(np.uint8)
            out.append(Image.fromarray(arr).convert("RGB").resize((64, 64), Image.NEAREST))
    return out


def throughput(captioner: Captioner, samples: list[Sample], images: list[Image.Image],
               batch_size: int) -> tuple[float, list[str]]:
    """samples/s of captioning everything in batches of batch_size, and the captions."""
    pairs = list(zip(samples, images, strict=True))
    t0 = time.perf_counter()
    for i in range(0, len(pairs), batch_size):
        captioner.caption_batch(pairs[i:i + batch_size])
    seconds = time.perf_counter() - t0
    return len(pairs) / seconds, [s.meta["recaption"] for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images (well under a minute)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    n = 64 if args.quick else 256

    model, processor = build_model("tiny", seed=0)
    # Large random weights: outputs vary with the input instead of one repeated token.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.eval()
    cfg = Config(preset="tiny", mode="recaption", max_new_tokens=args.max_new_tokens, max_tiles=4)
    captioner = Captioner(HFEngine(model, processor, cfg.max_tiles), cfg)
    images = real_images(n)

    def fresh() -> list[Sample]:
        return [Sample(f"s{i:05d}", {"alt_text": f"handwritten digit {i % 10}"} if i % 5 else {})
                for i in range(n)]

    with torch.inference_mode():
        throughput(captioner, fresh()[:8], images[:8], 4)  # warm-up: allocator, kernels
        ours, batched = throughput(captioner, fresh(), images, args.batch_size)
        base, single = throughput(captioner, fresh(), images, 1)
    same = batched == single
    print(f"batched (batch {args.batch_size}): {ours:.1f} samples/s; one at a time: {base:.1f} samples/s; "
          f"identical captions: {same}")
    print(json.dumps({
        "benchmark": "caption_batching", "unit": "samples/s", "ours": round(ours, 2),
        "baseline": round(base, 2), "ratio": round(ours / base, 2), "batch_size": args.batch_size,
        "images": n, "max_new_tokens": args.max_new_tokens, "identical_captions": same,
        "device": "cpu", "threads": args.threads, "model": "tiny",
    }))


if __name__ == "__main__":
    main()
