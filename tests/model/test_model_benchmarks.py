"""The benchmarks' own logic: gpu_train's FLOP accounting, and both scripts' JSON lines."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from jobs.training.packing import collate_padded
from jobs.vlm.model import build_model

REPO = Path(__file__).resolve().parents[2]


def load_benchmark(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "benchmarks" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_train_flops_match_torchs_flop_counter() -> None:
    """Our analytic count vs torch's FlopCounterMode on a real forward + backward (eager attention,
    which torch counts as full, non-causal matmuls)."""
    g = load_benchmark("gpu_train")
    model, processor = build_model("tiny", attn_implementation="eager")
    shape = g.model_shape(model)
    samples = g.synthetic_samples(processor, 2, 64, shape.tile_tokens, 0, (40, 60), 7)
    inputs = g.to_device(collate_padded(samples[:1], processor.tokenizer.pad_token_id),
                         torch.device("cpu"), torch.float32)
    with FlopCounterMode(display=False) as counter:
        model(**inputs, use_cache=False).loss.backward()
    counted = counter.get_total_flops()
    ours = g.train_flops(shape, samples[:1], causal=False)
    # The only known difference: no gradient w.r.t. the input pixels (the patch conv's dX).
    tiles = samples[0].pixel_values.shape[0]
    conv = model.model.vision_tower.embeddings.patch_embeddings.projection.weight.numel()
    no_input_grad = 2.0 * conv * (shape.vit_tokens - 1) * tiles
    assert counted == pytest.approx(ours - no_input_grad, rel=0.01)
    assert g.train_flops(shape, samples[:1]) < ours  # causal attention is cheaper


@pytest.mark.slow
@pytest.mark.parametrize("script", ["caption_batching", "gpu_train"])
def test_benchmark_quick_prints_its_json_line(script: str) -> None:
    proc = subprocess.run([sys.executable, f"benchmarks/{script}.py", "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == script
    assert {"unit", "ours", "baseline", "ratio"} <= set(result)
    assert result["ratio"] == pytest.approx(result["ours"] / result["baseline"], rel=0.01)
    if script == "gpu_train":
        assert result["device"] == "cpu" and result["preset"] == "tiny"
        assert result["fill_packed"] > result["fill_padded"]
    else:
        assert result["identical_captions"] is True
