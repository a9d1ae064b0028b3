"""Fixtures of the vLLM tests (run in the vLLM venv: `make test-vllm`); one engine per session.

The test modules skip themselves where vLLM is not installed (the main venv).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # vllmkit
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))  # captionkit

# vLLM on CPU: the engine in this process, a small KV cache, one thread (stable, shared cores).
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


@pytest.fixture(scope="session")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from vllmkit import noisy_tiny_export

    return noisy_tiny_export(tmp_path_factory.mktemp("tiny-vllm") / "model")


@pytest.fixture(scope="session")
def engines(export: Path):
    """(hf engine, vllm engine) over the same export, fp32, up to 4 tiles."""
    import torch

    from jobs.vlm.engine import ModelSource, open_engine

    torch.set_num_threads(1)
    source = ModelSource(model=str(export), dtype="float32", max_tiles=4)
    hf = open_engine("hf", source)
    vllm = open_engine("vllm", source, max_new_tokens=64)
    yield hf, vllm
    vllm.close()
    hf.close()
