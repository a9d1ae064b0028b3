"""InternVL-family VLMs for the workloads: presets, offline processor, save/load, batched inference.

Public API (other stages build on these names):

    PRESETS: dict[str, Preset]                  # "tiny" (CPU tests) and "sail-vl-2b"
    build_model(preset="tiny", *, vision_from=None, llm_from=None, seed=0, dtype=None,
                attn_implementation=None, max_tiles=None, device=None)
        -> (InternVLForConditionalGeneration, VLMProcessor)
        random init from the preset's config; vision_from / llm_from: local paths or store URIs
        (file://, s3://) holding pretrained weights (safetensors), loaded and shape-checked.
    build_tokenizer(vocab_size=1024)            # jobs.vlm.tokenizer: offline byte-level BPE
    build_processor(preset="tiny", tokenizer=None, max_tiles=None) -> VLMProcessor
    save_model(model, processor, out_dir)       # transformers format; after `import jobs.vlm.model`,
        InternVLForConditionalGeneration.from_pretrained + AutoProcessor.from_pretrained load it
    load_model(path_or_uri, *, device="cpu", dtype=None, cache_dir=None) -> (model, processor)
        local dir | store prefix (file:// or s3://, downloaded once into a cache) | hub id
    fetch_prefix(uri, cache_dir=None) -> Path   # a store prefix as a local dir (cached, atomic)
    chat_prompt(processor, prompt, *, image=True) -> str   # chat-templated user turn + "assistant"
    generate_texts(model, processor, images, prompts, max_new_tokens=64, **gen) -> list[str]
        batched (left padding); prompts are raw user text, templated here
    generate(...) -> list[Generated]            # the same, with token counts and `finished`
    text_logprobs(model, processor, images | None, prompts, texts) -> list[float]
        sum log p(text | prompt[, image]) per sample, batched
    device_and_dtype() -> (device, dtype)       # cuda + bf16 on GPU, cpu + fp32 otherwise
    image_tokens_per_tile(config) -> int

Prompts: an image goes first in the user turn (InternVL style); `<IMG_CONTEXT>` is expanded by
the processor to `<img>` + N context tokens per tile + `</img>`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    AutoProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedTokenizerFast,
)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.internvl.processing_internvl import InternVLProcessor
from transformers.processing_utils import ProcessorMixin

from jobs.vlm.tokenizer import add_internvl_tokens, build_tokenizer
from jobs.vlm.weights import load_pretrained_part
from sailk8s.errors import ConfigError, ObjectNotFound

log = logging.getLogger(__name__)

MODEL_CACHE_ENV = "SAIL_MODEL_CACHE"


@dataclass(frozen=True)
class Preset:
    """Shapes of one named model: vision tower, projector ratio, LLM, tiling defaults."""

    name: str
    vision: dict[str, Any]
    text: dict[str, Any]
    image_size: int
    patch_size: int
    max_tiles: int
    downsample_ratio: float = 0.5
    # None: the model's vocabulary is sized to the tokenizer (tiny); else the real LLM's size.
    vocab_size: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


PRESETS: dict[str, Preset] = {
    "tiny": Preset(
        name="tiny",
        vision={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
        text={
            "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "intermediate_size": 128, "max_position_embeddings": 4096,
        },
        image_size=64, patch_size=8, max_tiles=4,
    ),
    # SAIL-VL-2B: InternViT-300M-448px + 2-layer MLP projector (2x2 pixel shuffle) + Qwen2.5-1.5B.
    "sail-vl-2b": Preset(
        name="sail-vl-2b",
        vision={
            "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
            "intermediate_size": 4096,
            "attention_bias": True, "layer_scale_init_value": 0.1, "norm_type": "layer_norm",
        },
        text={
            "hidden_size": 1536, "num_hidden_layers": 28, "num_attention_heads": 12, "num_key_value_heads": 2,
            "intermediate_size": 8960, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        },
        image_size=448, patch_size=14, max_tiles=6, vocab_size=151936,
    ),
}


def _preset(name: str) -> Preset:
    """The named preset, or ConfigError listing the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown model preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def image_tokens_per_tile(config: InternVLConfig) -> int:
    """Visual tokens one tile becomes: (image/patch)^2 patches, pixel-shuffled by the ratio."""
    vc = config.vision_config
    side = vc.image_size[0] // vc.patch_size[0]
    return int(side * side * config.downsample_ratio**2)


def device_and_dtype() -> tuple[torch.device, torch.dtype]:
    """cuda + bf16 where a GPU is visible (this rank's LOCAL_RANK), else cpu + fp32."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))), torch.bfloat16
    return torch.device("cpu"), torch.float32


class VLMProcessor(InternVLProcessor):
    """InternVLProcessor without a video processor (whose import needs torchvision)."""

    attributes = ["image_processor", "tokenizer"]  # noqa: RUF012  (ProcessorMixin contract)

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        image_seq_length: int = 256,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("video_processor", None)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template, **kwargs)
        self.image_seq_length = image_seq_length
        self.start_image_token = tokenizer.start_image_token
        self.end_image_token = tokenizer.end_image_token
        self.start_image_token_id = tokenizer.start_image_token_id
        self.end_image_token_id = tokenizer.end_image_token_id
        self.image_token = tokenizer.context_image_token
        self.video_token = tokenizer.video_token
        self.image_token_id = tokenizer.context_image_token_id
        self.multimodal_pattern = re.compile(
            f"(?P<image>{re.escape(self.image_token)})|(?P<video>{re.escape(self.video_token)})"
        )


# AutoProcessor finds our class for InternVL checkpoints only after this registration.
AutoProcessor.register(InternVLConfig, VLMProcessor, exist_ok=True)


def build_image_processor(image_size: int, max_tiles: int) -> GotOcr2ImageProcessorPil:
    """InternVL dynamic tiling: up to max_tiles tiles + a thumbnail, ImageNet normalisation."""
    return GotOcr2ImageProcessorPil(
        size={"height": image_size, "width": image_size},
        crop_to_patches=max_tiles > 1,
        min_patches=1,
        max_patches=max_tiles,
        do_convert_rgb=True,
        image_mean=[0.485, 0.456, 0.406],
        image_std=[0.229, 0.224, 0.225],
    )


def build_processor(
    preset: str = "tiny", tokenizer: PreTrainedTokenizerFast | None = None, max_tiles: int | None = None
) -> VLMProcessor:
    """Tokenizer (built offline unless given) + image processor sized for the preset."""
    p = _preset(preset)
    tok = add_internvl_tokens(tokenizer) if tokenizer is not None else build_tokenizer()
    side = p.image_size // p.patch_size
    seq = int(side * side * p.downsample_ratio**2)
    return VLMProcessor(
        image_processor=build_image_processor(p.image_size, max_tiles or p.max_tiles),
        tokenizer=tok,
        image_seq_length=seq,
        chat_template=tok.chat_template,
    )


def _config(p: Preset, tokenizer: PreTrainedTokenizerFast) -> InternVLConfig:
    """The InternVLConfig of a preset, with token ids taken from the tokenizer."""
    vocab = p.vocab_size or (len(tokenizer) + 63) // 64 * 64  # round up: friendlier matmul shapes
    if vocab < len(tokenizer):
        raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but preset {p.name!r} has vocab {vocab}")
    text = {
        "model_type": "qwen2", "vocab_size": vocab, "tie_word_embeddings": True,
        "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": None, **p.text,
    }
    vision = {"image_size": p.image_size, "patch_size": p.patch_size, **p.vision}
    return InternVLConfig(
        vision_config=vision,
        text_config=text,
        image_token_id=tokenizer.context_image_token_id,
        image_seq_length=int((p.image_size // p.patch_size) ** 2 * p.downsample_ratio**2),
        downsample_ratio=p.downsample_ratio,
        tie_word_embeddings=True,
        **p.extra,
    )


def build_model(
    preset: str = "tiny",
    *,
    vision_from: str | os.PathLike[str] | None = None,
    llm_from: str | os.PathLike[str] | None = None,
    seed: int = 0,
    dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    max_tiles: int | None = None,
    device: str | torch.device | None = None,
) -> tuple[InternVLForConditionalGeneration, VLMProcessor]:
    """A model of the preset's shapes, random init (seeded) or with pretrained vision/LLM weights.

    `device` builds the weights there directly (a 2B model initialises in seconds on a GPU).
    """
    p = _preset(preset)
    llm_dir = _local_dir(llm_from) if llm_from is not None else None
    tokenizer = None
    if llm_dir is not None and (llm_dir / "tokenizer.json").exists():
        # A real LLM comes with its own vocabulary: its embeddings only make sense with it.
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(llm_dir), padding_side="left")
    processor = build_processor(preset, tokenizer, max_tiles=max_tiles)
    config = _config(p, processor.tokenizer)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.manual_seed_all(seed)
    with torch.device(device or "cpu"):
        model = InternVLForConditionalGeneration(config)
    if vision_from is not None:
        load_pretrained_part(model, "vision", _local_dir(vision_from))
    if llm_dir is not None:
        load_pretrained_part(model, "llm", llm_dir)
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    if dtype is not None:
        model = model.to(dtype)
    return model, processor


def save_model(
    model: InternVLForConditionalGeneration, processor: VLMProcessor, out_dir: str | os.PathLike[str]
) -> Path:
    """Write model + processor in transformers format (safetensors) to out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def _cache_root(cache_dir: str | os.PathLike[str] | None) -> Path:
    """Where downloaded store prefixes live: argument, $SAIL_MODEL_CACHE, or ~/.cache/sail-pipeline."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get(MODEL_CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "sail-pipeline" / "models"


def fetch_prefix(uri: str, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Download every object under a store prefix once; later calls reuse the cached copy.

    The copy is made in a temp dir beside the target and renamed into place, so a reader (or a
    second rank racing on the same node) never sees a half-downloaded model.
    """
    from sailk8s.store import open_store  # the store layer: file:// and s3:// behind one contract

    root = _cache_root(cache_dir)
    target = root / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
    if (target / ".complete").exists():
        return target
    store = open_store(uri)
    keys = list(store.list(""))
    if not keys:
        raise ObjectNotFound(f"no objects under {uri}: not a model prefix")
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".fetch-", dir=root))
    try:
        for key in keys:
            dest = tmp / key
            dest.parent.mkdir(parents=True, exist_ok=True)
            store.get_file(key, dest)
        (tmp / ".complete").write_text(uri)
        try:
            tmp.rename(target)
        except OSError:
            if not (target / ".complete").exists():  # lost a race to a complete copy: fine; else retry
                shutil.rmtree(target, ignore_errors=True)
                tmp.rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("fetched %d objects from %s into %s", len(keys), uri, target)
    return target


def _local_dir(path_or_uri: str | os.PathLike[str], cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """A local directory for a path or store URI; ConfigError when a local path is missing."""
    s = os.fspath(path_or_uri)
    if "://" in s:
        return fetch_prefix(s, cache_dir)
    path = Path(s).expanduser()
    if not path.exists():
        raise ConfigError(f"pretrained weights not found: {s} does not exist")
    return path


def load_model(
    path_or_uri: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
) -> tuple[InternVLForConditionalGeneration, VLMProcessor]:
    """Load a saved model + processor from a local dir, a store prefix or (with internet) a hub id."""
    s = os.fspath(path_or_uri)
    if "://" in s:
        src: str = str(fetch_prefix(s, cache_dir))
    elif Path(s).expanduser().exists():
        src = str(Path(s).expanduser())
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", s) and not s.startswith((".", "/")):
        src = s  # a hub id: needs a cluster with internet (HF_HUB_OFFLINE unset)
    else:
        raise ConfigError(f"model not found: {s} is not a directory, store URI or hub id")
    if Path(src).is_dir() and not (Path(src) / "config.json").exists():
        raise ConfigError(f"model not found: {s} has no config.json (not a transformers model dir)")
    try:
        model = InternVLForConditionalGeneration.from_pretrained(src, dtype=dtype or torch.float32)
        # Our class directly, not AutoProcessor: hub checkpoints name the stock InternVLProcessor,
        # which insists on a video processor (torchvision). Ours reads the same files.
        processor = VLMProcessor.from_pretrained(src)
    except OSError as err:  # hub ids offline, unreadable files
        raise ConfigError(f"cannot load model {s}: {str(err).splitlines()[0]}") from None
    if processor.image_seq_length != image_tokens_per_tile(model.config):
        raise ConfigError(f"model {s}: the processor expands an image tile to {processor.image_seq_length} "
                          f"tokens but the model makes {image_tokens_per_tile(model.config)}")
    model.to(device)
    model.eval()
    return model, processor


def chat_prompt(processor: VLMProcessor, prompt: str, *, image: bool = True) -> str:
    """A one-turn chat prompt ending with the assistant header (image first when given)."""
    content: list[dict[str, str]] = [{"type": "image"}] if image else []
    content.append({"type": "text", "text": prompt})
    text: str = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return text


def _model_inputs(
    model: InternVLForConditionalGeneration, enc: Any
) -> dict[str, torch.Tensor]:
    """Move processor output to the model's device, pixels in the model's dtype."""
    out: dict[str, torch.Tensor] = {}
    for k, v in enc.items():
        if k == "pixel_values":
            out[k] = v.to(model.device, dtype=model.dtype)
        else:
            out[k] = v.to(model.device)
    return out


@dataclass(frozen=True)
class Generated:
    """One generated reply: its text, how many tokens it took, and whether it ended by itself."""

    text: str
    tokens: int
    finished: bool  # False: cut at max_new_tokens


def generate_texts(
    model: InternVLForConditionalGeneration,
    processor: VLMProcessor,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    *,
    max_tiles: int | None = None,
    **gen: Any,
) -> list[str]:
    """Generate one text per (image, prompt) pair in ONE batched call (left padding)."""
    return [g.text for g in generate(model, processor, images, prompts, max_new_tokens,
                                     max_tiles=max_tiles, **gen)]


@torch.inference_mode()
def generate(
    model: InternVLForConditionalGeneration,
    processor: VLMProcessor,
    images: Sequence[Image.Image],
    prompts: Sequence[str],
    max_new_tokens: int = 64,
    *,
    max_tiles: int | None = None,
    **gen: Any,
) -> list[Generated]:
    """Like `generate_texts`, with each reply's token count and whether it ended before the cap."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not prompts:
        return []
    texts = [chat_prompt(processor, p, image=True) for p in prompts]
    img_kwargs = {"max_patches": max_tiles, "crop_to_patches": max_tiles > 1} if max_tiles else {}
    enc = processor(images=list(images), text=texts, padding=True, padding_side="left",
                    return_tensors="pt", **img_kwargs)
    inputs = _model_inputs(model, enc)
    gen.setdefault("do_sample", False)
    gen.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    gen.setdefault("eos_token_id", processor.tokenizer.eos_token_id)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, **gen)
    new = out[:, inputs["input_ids"].shape[1]:]
    decoded: list[str] = processor.tokenizer.batch_decode(new, skip_special_tokens=True)
    eos = gen["eos_token_id"]
    stops = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    result = []
    for row, text in zip(new.tolist(), decoded, strict=True):
        end = next((i for i, t in enumerate(row) if t in stops), None)
        result.append(Generated(text.strip(), len(row) if end is None else end + 1, end is not None))
    return result


@torch.inference_mode()
def text_logprobs(
    model: InternVLForConditionalGeneration,
    processor: VLMProcessor,
    images: Sequence[Image.Image] | None,
    prompts: Sequence[str],
    texts: Sequence[str],
) -> list[float]:
    """Sum of log p(text | chat prompt[, image]) per sample, in one batched forward pass.

    The text is scored as the assistant's reply (followed by the end-of-turn token, so a text
    that should end there is rewarded); the filter stage compares with and without the image.
    """
    if len(prompts) != len(texts) or (images is not None and len(images) != len(texts)):
        raise ValueError("images, prompts and texts must have the same length")
    if not texts:
        return []
    tok = processor.tokenizer
    chat = [chat_prompt(processor, p, image=images is not None) for p in prompts]
    if images is not None:
        enc = processor(
            images=list(images), text=chat, padding=True, padding_side="right", return_tensors="pt"
        )
        lengths = enc["attention_mask"].sum(dim=1).tolist()
        prompt_ids: list[list[int]] = [
            row[:n].tolist() for row, n in zip(enc["input_ids"], lengths, strict=True)
        ]
        pixel_values = enc["pixel_values"].to(model.device, dtype=model.dtype)
    else:
        prompt_ids = [list(x) for x in tok(chat, add_special_tokens=False)["input_ids"]]
        pixel_values = None
    reply_ids = [[*x, tok.eos_token_id] for x in tok(list(texts), add_special_tokens=False)["input_ids"]]
    seqs = [p + r for p, r in zip(prompt_ids, reply_ids, strict=True)]
    width = max(len(s) for s in seqs)
    # Right padding: positions are then the plain 0..n-1 of each sample, as in training.
    ids = torch.full((len(seqs), width), tok.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompt_ids, reply_ids, strict=True)):
        n = len(p) + len(r)
        ids[i, :n] = torch.tensor(p + r)
        mask[i, :n] = 1
        labels[i, len(p):n] = torch.tensor(r)
    kwargs: dict[str, Any] = {"input_ids": ids.to(model.device), "attention_mask": mask.to(model.device)}
    if pixel_values is not None:
        kwargs["pixel_values"] = pixel_values
    logits = model(**kwargs, use_cache=False).logits.float()
    logp = torch.log_softmax(logits[:, :-1], dim=-1)
    target = labels[:, 1:].to(model.device)
    picked = logp.gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    picked = picked.masked_fill(target == -100, 0.0)
    return [float(x) for x in picked.sum(dim=1).cpu()]
