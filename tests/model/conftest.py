"""Fixtures for the model and caption tests: one thread, a tiny model, real package images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny():
    """A tiny InternVL model (random init, eval mode) and its processor."""
    from jobs.vlm.model import build_model

    model, processor = build_model("tiny", seed=0)
    model.eval()
    return model, processor


@pytest.fixture(scope="session")
def photos() -> list[Image.Image]:
    """Real photos of different sizes and aspect ratios from scikit-image."""
    from skimage import data

    arrays = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    images = [Image.fromarray(np.asarray(a)).convert("RGB") for a in arrays]
    # Shrink so CPU tests stay fast, but keep the aspect ratios (tiling depends on them).
    return [im.resize((max(8, im.width // 4), max(8, im.height // 4))) for im in images]


@pytest.fixture(scope="session")
def noisy_tiny():
    """A tiny model with large random weights, so greedy outputs differ from input to input.

    (At the default init a random model emits the same token whatever it is shown, which
    would make batched-vs-single comparisons vacuous.)
    """
    from jobs.vlm.model import build_model

    model, processor = build_model("tiny", seed=1)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    model.eval()
    return model, processor
