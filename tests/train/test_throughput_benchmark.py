"""benchmarks/train_throughput.py: its scaled data, its bound arithmetic, its JSON line."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_train_throughput",
                                                  REPO / "benchmarks" / "train_throughput.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_samples_are_the_sail_like_lengths_at_one_sixteenth(bench: ModuleType) -> None:
    from jobs.vlm.model import build_model

    _, processor = build_model("tiny")
    samples = bench.make_samples(200, processor)
    per_tile = processor.image_seq_length
    for s in samples:
        tiles = int(s.pixel_values.shape[0])
        assert 1 <= tiles <= 7
        caption = len(s) - 2 - per_tile * tiles  # <img> ... </img>, then the caption (+ eos)
        assert 50 // 16 + 1 <= caption <= 300 // 16 + 1
        assert s.target_tokens == caption
    assert bench.SEQ_LEN * 16 == 8192


def test_bound_is_the_fill_ratio_without_vision_and_falls_with_vision_time(bench: ModuleType) -> None:
    t = {"packed": 2.0, "padded": 3.0, "vision": 0.0}
    no_vision = bench.summary(t, real=1000, fill_packed=0.98, fill_padded=0.64)
    assert no_vision["bound"] == pytest.approx(0.98 / 0.64, abs=1e-3)
    assert no_vision["ratio"] == pytest.approx(1.5, abs=1e-3)
    with_vision = bench.summary({**t, "vision": 1.0}, real=1000, fill_packed=0.98, fill_padded=0.64)
    assert with_vision["bound"] < no_vision["bound"]
    assert with_vision["text_ratio"] == pytest.approx(2.0, abs=1e-3)  # (3 - 1) / (2 - 1)


def test_flop_bound_of_the_real_model_is_below_the_fill_ratio(bench: ModuleType) -> None:
    from jobs.vlm.model import build_model

    shape = bench.model_shape(build_model("sail-vl-2b", device="meta")[0])
    full = bench.flop_bound(shape, 800, "all")
    frozen = bench.flop_bound(shape, 800, "projector")
    no_vit = bench.flop_bound(dataclasses.replace(shape, vit_linear=0, vit_layers=0, projector=0), 800, "all")
    assert 1.2 < full < frozen < no_vit  # a frozen vision tower (forward only) weighs less
    assert no_vit > 1.5  # without the vision tower, packing alone would pass the target


@pytest.mark.slow
def test_quick_run_prints_its_json_line() -> None:
    proc = subprocess.run([sys.executable, "benchmarks/train_throughput.py", "--quick"], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["benchmark"] == "train_throughput"
    assert result["ratio"] == pytest.approx(result["ours"] / result["baseline"], rel=0.01)
    assert result["fill_packed"] > 0.95 > 0.7 > result["fill_padded"]
    assert 0 < result["vision_share_padded"] < 1 and result["bound"] > 1
    assert result["projector_only"]["ratio"] > 1
