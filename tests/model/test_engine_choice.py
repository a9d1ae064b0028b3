"""Choosing an engine: auto falls back to hf without a GPU or vLLM; the hf engine matches generate()."""

from __future__ import annotations

import pytest
import torch

from jobs.vlm import engine as eng
from jobs.vlm.engine import HFEngine, Sampling
from jobs.vlm.inference import generate
from sailk8s.errors import ConfigError
from sailk8s.stageconfig.caption import Config as CaptionConfig
from sailk8s.stageconfig.evaluate import Config as EvalConfig
from sailk8s.stageconfig.filter import JudgeFilter


def test_auto_is_hf_without_a_gpu_or_without_vllm(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert eng.resolve_engine("auto") == "hf"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(eng, "vllm_installed", lambda: False)
    assert eng.resolve_engine("auto") == "hf"
    monkeypatch.setattr(eng, "vllm_installed", lambda: True)
    assert eng.resolve_engine("auto") == "vllm"


def test_vllm_missing_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(eng, "vllm_installed", lambda: False)
    with pytest.raises(ConfigError, match="vllm is not installed"):
        eng.resolve_engine("vllm")
    with pytest.raises(ConfigError, match="unknown engine"):
        eng.resolve_engine("lmdeploy")


def test_the_configs_take_an_engine() -> None:
    assert CaptionConfig(preset="tiny").engine == "auto"
    assert CaptionConfig(preset="tiny", engine="vllm").engine == "vllm"
    assert EvalConfig(model="m", engine="hf").engine == "hf"
    assert JudgeFilter(type="judge", preset="tiny", engine="vllm").engine == "vllm"
    with pytest.raises(ValueError):
        CaptionConfig(preset="tiny", engine="sglang")


def test_hf_engine_with_prefetched_input_equals_generate(noisy_tiny, photos) -> None:
    model, processor = noisy_tiny
    prompts = ["Describe this image in detail."] * len(photos)
    engine = HFEngine(model, processor, max_tiles=4)
    prepared = engine.prepare(photos, prompts)
    got = engine.generate_prepared(prepared, Sampling(max_new_tokens=8))
    assert got == generate(model, processor, photos, prompts, max_new_tokens=8, max_tiles=4)


def test_each_ranks_vllm_engine_gets_its_own_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from jobs.vlm.vllm_engine import engine_process_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3,5,7")
    monkeypatch.setenv("LOCAL_RANK", "2")
    monkeypatch.setenv("RANK", "10")
    monkeypatch.setenv("MASTER_PORT", "29500")
    with engine_process_env(gpu=True):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"
        assert "RANK" not in os.environ and "MASTER_PORT" not in os.environ
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2,3,5,7" and os.environ["RANK"] == "10"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    with engine_process_env(gpu=True):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"
