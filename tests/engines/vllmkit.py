"""Helpers for the vLLM tests: a tiny exported model vLLM's CPU attention serves, real images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def noisy_tiny_export(out: Path, seed: int = 1) -> Path:
    """The `tiny-vllm` preset (text head_dim 32) with large random weights, saved to `out`.

    At the default init a random model emits the same token whatever it sees; large weights make
    greedy captions differ from image to image, so comparing engines is not vacuous.
    """
    from jobs.vlm.model import build_model, save_model

    model, processor = build_model("tiny-vllm", seed=seed)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    save_model(model.eval(), processor, out)
    return out


def distinct(image: Image.Image, seed: int) -> Image.Image:
    """The image with faint seeded noise: every image differs, so no engine serves one from a cache."""
    arr = np.asarray(image, dtype=np.int16)
    noise = np.random.default_rng(seed).integers(-2, 3, size=arr.shape)
    return Image.fromarray((arr + noise).clip(0, 255).astype(np.uint8))


def mixed_images(n: int, start: int = 0) -> list[Image.Image]:
    """n distinct real images: upscaled scikit-learn digits, every fourth a scikit-image photo (1-4 tiles)."""
    from skimage import data
    from sklearn.datasets import load_digits

    digits = load_digits().images
    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.camera()]
    out = []
    for i in range(start, start + n):
        if i % 4 == 3:
            im = Image.fromarray(np.asarray(photos[i % len(photos)])).convert("RGB")
            scale = (2 + i % 3) * 32 / max(im.size)
            im = im.resize((max(8, int(im.width * scale)), max(8, int(im.height * scale))))
            out.append(distinct(im, i))
        else:
            arr = (255 - digits[i % len(digits)] * 16).clip(0, 255).astype(np.uint8)
            out.append(Image.fromarray(arr).convert("RGB").resize((64, 64), Image.NEAREST))
    return out
