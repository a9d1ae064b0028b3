"""One inference interface over two engines: transformers `generate()` (hf) and vLLM (vllm).

Both take the raw user prompts and images; the chat template (`chat_prompt`), the image tiling
and the image processor are ours in both, and replies are decoded by our tokenizer, so a stage's
output does not depend on the engine beyond the model's own numerics.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import structlog
import torch
from PIL import Image

from jobs.vlm.inference import Generated, encode_for_generation, generate_encoded, text_logprobs
from jobs.vlm.model import VLMProcessor, build_model, device_and_dtype, load_model, save_model
from sailk8s.errors import ConfigError

log = structlog.get_logger(__name__)

ENGINES = ("hf", "vllm", "auto")
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


@dataclass(frozen=True)
class Sampling:
    """How replies are generated: greedy by default; the same settings mean the same in both engines."""

    max_new_tokens: int = 64
    min_new_tokens: int = 0  # benchmarks: a fixed reply length whatever the (random) model says
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    repetition_penalty: float = 1.0


@dataclass(frozen=True)
class ModelSource:
    """Where an engine's model comes from: a saved model (path or store URI) or a preset (random init)."""

    model: str | None = None
    preset: str | None = None
    seed: int = 0
    dtype: str = "auto"  # auto: bf16 on a GPU, fp32 on CPU
    max_tiles: int | None = None  # None: the processor's own
    cache_dir: str | os.PathLike[str] | None = None  # where store-hosted models are downloaded


def vllm_installed() -> bool:
    """Whether vLLM can be imported here (without importing it; a bare `vllm/` folder is not vLLM)."""
    spec = importlib.util.find_spec("vllm")
    return spec is not None and spec.origin is not None


def resolve_engine(choice: str) -> str:
    """`auto` -> vllm when it is installed and a GPU is visible, else hf; others stay, checked."""
    if choice == "auto":
        return "vllm" if vllm_installed() and torch.cuda.is_available() else "hf"
    if choice not in ("hf", "vllm"):
        raise ConfigError(f"engine: unknown engine {choice!r}; choose one of {', '.join(ENGINES)}")
    if choice == "vllm" and not vllm_installed():
        raise ConfigError("engine: vllm is not installed in this image (the caption image has it; "
                          "locally `make vllm-venv`); use engine: hf or auto")
    return choice


def torch_dtype(name: str) -> torch.dtype:
    """The dtype a config names; `auto` is bf16 on a GPU, fp32 on CPU."""
    return device_and_dtype()[1] if name == "auto" else DTYPES[name]


class Engine(ABC):
    """Generates replies and scores given replies, batched, for (image, prompt) pairs."""

    name: str
    processor: VLMProcessor  # our tokenizer, chat template and image processor, in both engines

    def prepare(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> Any:
        """CPU work for `generate_prepared` that may run ahead in a prefetching thread."""
        return list(images), list(prompts)

    @abstractmethod
    def generate_prepared(self, prepared: Any, sampling: Sampling,
                          seeds: Sequence[int] | None = None) -> list[Generated]:
        """Replies for a `prepare`d batch; `seeds` (one per sample) make sampling repeatable."""

    def generate(self, images: Sequence[Image.Image], prompts: Sequence[str], sampling: Sampling,
                 seeds: Sequence[int] | None = None) -> list[Generated]:
        """One reply per (image, prompt) pair, in one batched call."""
        return self.generate_prepared(self.prepare(images, prompts), sampling, seeds)

    @abstractmethod
    def text_logprobs(self, images: Sequence[Image.Image] | None, prompts: Sequence[str],
                      texts: Sequence[str]) -> list[float]:
        """Sum of log p(text + end of turn | chat prompt[, image]) per sample."""

    @abstractmethod
    def close(self) -> None:
        """Release the model (and any engine process)."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, _t: type[BaseException] | None, _v: BaseException | None,
                 _tb: TracebackType | None) -> None:
        self.close()


class HFEngine(Engine):
    """transformers `generate()` with left padding: the reference engine, on any device."""

    name = "hf"

    def __init__(self, model: Any, processor: VLMProcessor, max_tiles: int | None = None) -> None:
        self.model, self.processor, self.max_tiles = model, processor, max_tiles

    @classmethod
    def open(cls, source: ModelSource) -> HFEngine:
        """Load (or build) the model on this rank's device in the source's dtype."""
        device, _ = device_and_dtype()
        dtype = torch_dtype(source.dtype)
        if source.model is not None:
            model, processor = load_model(source.model, device=device, dtype=dtype,
                                          cache_dir=source.cache_dir)
        else:
            model, processor = build_model(source.preset or "tiny", seed=source.seed, dtype=dtype)
            model.to(device)
        model.eval()
        return cls(model, processor, source.max_tiles)

    def prepare(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> Any:
        return encode_for_generation(self.processor, images, prompts, max_tiles=self.max_tiles)

    def generate_prepared(self, prepared: Any, sampling: Sampling,
                          seeds: Sequence[int] | None = None) -> list[Generated]:
        gen: dict[str, Any] = {"do_sample": sampling.do_sample,
                               "repetition_penalty": sampling.repetition_penalty}
        if sampling.min_new_tokens:
            gen["min_new_tokens"] = sampling.min_new_tokens
        if sampling.do_sample:
            gen.update(temperature=sampling.temperature, top_p=sampling.top_p)
            if seeds:
                torch.manual_seed(seeds[0])  # one generator for the batch: the batch's first seed
        return generate_encoded(self.model, self.processor, prepared, sampling.max_new_tokens, **gen)

    def text_logprobs(self, images: Sequence[Image.Image] | None, prompts: Sequence[str],
                      texts: Sequence[str]) -> list[float]:
        return text_logprobs(self.model, self.processor, images, prompts, texts, max_tiles=self.max_tiles)

    def close(self) -> None:
        self.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def model_dir(source: ModelSource,
              tmp_root: str | os.PathLike[str] | None = None) -> tuple[Path, Path | None]:
    """A local directory holding the source's model, and a temp dir to remove after use (or None).

    A preset is built (seeded) and saved, so an engine that loads from disk (vLLM) serves the
    same weights as the hf engine builds in memory.
    """
    from jobs.vlm.modelref import local_dir

    if source.model is not None:
        s = os.fspath(source.model)
        if "://" in s or Path(s).expanduser().exists():
            return local_dir(s, source.cache_dir), None
        return Path(s), None  # a hub id: the engine resolves it (needs internet)
    tmp = Path(tempfile.mkdtemp(prefix="sail-preset-", dir=tmp_root))
    model, processor = build_model(source.preset or "tiny", seed=source.seed, max_tiles=source.max_tiles)
    save_model(model, processor, tmp)
    return tmp, tmp


def open_engine(choice: str, source: ModelSource, **vllm_options: Any) -> Engine:
    """The engine a stage config names (`hf`, `vllm` or `auto`), loaded with the source's model."""
    name = resolve_engine(choice)
    log.info("inference engine", engine=name, requested=choice,
             model=source.model or f"preset:{source.preset}")
    if name == "vllm":
        from jobs.vlm.vllm_engine import VLLMEngine  # vLLM lives in its own image / venv

        return VLLMEngine.open(source, **vllm_options)
    return HFEngine.open(source)
