"""The vLLM engine: offline batched generation and prompt log-probabilities with vLLM's `LLM`.

Imported only where `engine: vllm` is chosen (vLLM lives in the caption image and, for the CPU
tests, in its own venv). The prompts are our chat template's, the images go through our PIL
image processor (`backend: pil`, the tiling of the stage) and replies are decoded by our
tokenizer, exactly as in the hf engine.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import structlog
import torch
from PIL import Image

from jobs.core.reaper import child_pids, start_reaper
from jobs.vlm.engine import Engine, ModelSource, Sampling, model_dir, torch_dtype
from jobs.vlm.inference import Generated, decode_reply, tiling_kwargs
from jobs.vlm.model import VLMProcessor, chat_prompt
from sailk8s.errors import ConfigError

log = structlog.get_logger(__name__)

_DTYPE_NAMES = {torch.bfloat16: "bfloat16", torch.float16: "float16", torch.float32: "float32"}


def engine_environment(gpu: bool) -> dict[str, str]:
    """vLLM settings this engine needs, where the environment does not set them already.

    CPU: the engine runs in this process (no spawned engine process: 4-8 s to start instead of
    18-38 s, nothing to outlive the rank), a 1 GiB KV cache, and no core pinning (the cores are
    shared with the stage's other work). GPU: an engine process (vLLM's default), which overlaps
    input processing with generation and is the only way to give each rank its own GPU once this
    process has touched CUDA; a reaper makes sure it dies with the rank.
    """
    env = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    if gpu:
        env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1"
    else:
        env.update(VLLM_ENABLE_V1_MULTIPROCESSING="0", VLLM_CPU_KVCACHE_SPACE="1",
                   VLLM_CPU_OMP_THREADS_BIND="nobind")
    return {k: v for k, v in env.items() if k not in os.environ}


# torchrun's variables: the engine process must not take itself for a rank of the stage's group.
_LAUNCHER_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "ROLE_RANK",
                  "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID")


@contextmanager
def engine_process_env(gpu: bool) -> Iterator[None]:
    """The environment vLLM's engine process is spawned with, restored afterwards.

    On a GPU each rank's engine gets only the rank's own GPU (CUDA_VISIBLE_DEVICES narrowed to
    the LOCAL_RANK-th visible device: vLLM itself would put every rank's engine on GPU 0), and
    none of torchrun's rank variables.
    """
    saved = dict(os.environ)
    try:
        if gpu:
            local = int(os.environ.get("LOCAL_RANK", "0"))
            visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
            os.environ["CUDA_VISIBLE_DEVICES"] = visible[local] if local < len(visible) else str(local)
        for var in _LAUNCHER_VARS:
            os.environ.pop(var, None)
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def check_loadable(path: Path) -> dict[str, Any]:
    """The model's config.json; ConfigError when vLLM and our processor cannot serve the folder."""
    try:
        config: dict[str, Any] = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise ConfigError(f"model {path}: no readable config.json ({err})") from None
    arch = (config.get("architectures") or ["?"])[0]
    if arch == "InternVLChatModel":
        raise ConfigError(
            f"model {path} is in the original InternVL / SAIL-VL layout (InternVLChatModel): convert it "
            "once with `python -m jobs.convert_checkpoint SRC DST` and point the stage at DST")
    if arch != "InternVLForConditionalGeneration":
        raise ConfigError(f"model {path}: architecture {arch}, expected InternVLForConditionalGeneration")
    return config


def default_max_model_len(config: dict[str, Any], processor: VLMProcessor, max_tiles: int | None,
                          max_new_tokens: int) -> int:
    """Room for the largest tiled image, 2048 prompt tokens and the reply, within the LLM's context."""
    tiles = max_tiles or processor.image_processor.max_patches
    image_tokens = processor.image_seq_length * (tiles + (1 if tiles > 1 else 0)) + 2
    context = int(config.get("text_config", {}).get("max_position_embeddings") or 32768)
    return min(context, image_tokens + 2048 + max_new_tokens)


class VLLMEngine(Engine):
    """vLLM's offline `LLM` over a saved transformers-native InternVL folder."""

    name = "vllm"

    def __init__(self, llm: Any, processor: VLMProcessor, stops: set[int],
                 cleanup: Path | None = None, reaper: subprocess.Popen[bytes] | None = None) -> None:
        self.llm, self.processor, self.stops = llm, processor, stops
        self._cleanup, self._reaper = cleanup, reaper

    @classmethod
    def open(cls, source: ModelSource, *, max_new_tokens: int = 512, max_model_len: int | None = None,
             gpu_memory_utilization: float = 0.9) -> VLLMEngine:
        """Start vLLM on the source's model (a preset is built and saved to a temp dir first)."""
        gpu = torch.cuda.is_available()
        os.environ.update(engine_environment(gpu))
        path, cleanup = model_dir(source)
        try:
            config = check_loadable(path)
            processor = VLMProcessor.from_pretrained(str(path))
            from vllm import LLM  # late: the environment above is read at import and engine start

            dtype = _DTYPE_NAMES[torch_dtype(source.dtype)]
            limit = max_model_len or default_max_model_len(config, processor, source.max_tiles,
                                                           max_new_tokens)
            before = set(child_pids())
            with engine_process_env(gpu):
                llm = LLM(
                    model=str(path), dtype=dtype, seed=source.seed, max_model_len=limit,
                    limit_mm_per_prompt={"image": 1, "video": 0},
                    # The stage's tiling; the image processor is the PIL one (jobs.vlm.model registers it).
                    mm_processor_kwargs=tiling_kwargs(source.max_tiles) or None,
                    enforce_eager=not gpu, gpu_memory_utilization=gpu_memory_utilization,
                )
        except BaseException:
            if cleanup is not None:
                shutil.rmtree(cleanup, ignore_errors=True)
            raise
        # Engine processes (when vLLM runs with multiprocessing) must not outlive this rank.
        helpers = [p for p in child_pids() if p not in before]
        reaper = start_reaper(helpers)
        tok = processor.tokenizer
        stops = {tok.eos_token_id}
        log.info("vllm engine ready", model=str(path), dtype=dtype, max_model_len=limit,
                 engine_processes=len(helpers))
        return cls(llm, processor, stops, cleanup, reaper)

    def _request(self, image: Image.Image | None, prompt: str, suffix: str = "") -> dict[str, Any]:
        request: dict[str, Any] = {"prompt": chat_prompt(self.processor, prompt, image=image is not None)
                                   + suffix}
        if image is not None:
            request["multi_modal_data"] = {"image": image}
        return request

    def prepare(self, images: Sequence[Image.Image], prompts: Sequence[str]) -> Any:
        if len(images) != len(prompts):
            raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
        # vLLM tiles inside `generate`; the images are decoded (and RGB) by now.
        return [self._request(im, p) for im, p in zip(images, prompts, strict=True)]

    def generate_prepared(self, prepared: Any, sampling: Sampling,
                          seeds: Sequence[int] | None = None) -> list[Generated]:
        from vllm import SamplingParams

        if not prepared:
            return []
        params = [SamplingParams(
            max_tokens=sampling.max_new_tokens, min_tokens=sampling.min_new_tokens,
            temperature=sampling.temperature if sampling.do_sample else 0.0,
            top_p=sampling.top_p if sampling.do_sample else 1.0,
            repetition_penalty=sampling.repetition_penalty,
            seed=(seeds[i] if seeds and sampling.do_sample else None),
            detokenize=False,  # our tokenizer decodes, as in the hf engine
        ) for i in range(len(prepared))]
        outs = self.llm.generate(prepared, params, use_tqdm=False)
        return [decode_reply(self.processor, list(o.outputs[0].token_ids), self.stops) for o in outs]

    def text_logprobs(self, images: Sequence[Image.Image] | None, prompts: Sequence[str],
                      texts: Sequence[str]) -> list[float]:
        from vllm import SamplingParams

        if len(prompts) != len(texts) or (images is not None and len(images) != len(texts)):
            raise ValueError("images, prompts and texts must have the same length")
        if not texts:
            return []
        tok = self.processor.tokenizer
        reply_ids = tok(list(texts), add_special_tokens=False)["input_ids"]
        replies = [[*ids, tok.eos_token_id] for ids in reply_ids]
        requests = [self._request(None if images is None else images[i], p, texts[i] + tok.eos_token)
                    for i, p in enumerate(prompts)]
        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate(requests, params, use_tqdm=False)
        scores: list[float] = []
        for out, reply in zip(outs, replies, strict=True):
            ids = list(out.prompt_token_ids)
            if ids[-len(reply):] != reply:
                raise RuntimeError("the reply tokenised differently inside the prompt than alone: "
                                   f"{ids[-len(reply):]} != {reply}")
            steps = out.prompt_logprobs[-len(reply):]
            scores.append(float(sum(step[t].logprob for step, t in zip(steps, reply, strict=True))))
        return scores

    def close(self) -> None:
        """Shut the engine down explicitly (its processes ignore SIGTERM and outlive the rank otherwise)."""
        if self.llm is not None:
            try:
                self.llm.llm_engine.engine_core.shutdown()
            finally:
                self.llm = None
                gc.collect()
        if self._reaper is not None:
            try:
                self._reaper.wait(timeout=10)  # it exits once the engine processes are gone
            except subprocess.TimeoutExpired:
                self._reaper.kill()
            self._reaper = None
        if self._cleanup is not None:
            shutil.rmtree(self._cleanup, ignore_errors=True)
            self._cleanup = None
