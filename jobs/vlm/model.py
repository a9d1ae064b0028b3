"""InternVL-family models: presets, the offline processor, building, saving and loading."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoImageProcessor,
    AutoProcessor,
    InternVLConfig,
    InternVLForConditionalGeneration,
    PreTrainedTokenizerFast,
)
from transformers.models.got_ocr2.image_processing_pil_got_ocr2 import GotOcr2ImageProcessorPil
from transformers.models.internvl.processing_internvl import InternVLProcessor
from transformers.processing_utils import ProcessorMixin

from jobs.vlm.modelref import fetch_prefix, local_dir
from jobs.vlm.tokenizer import add_internvl_tokens, build_tokenizer
from jobs.vlm.weights import load_pretrained_part
from sailk8s.errors import ConfigError


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


# "tiny" builds in a second for CPU tests; "sail-vl-2b" has the shapes of the paper's model.
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
    # "tiny" with text head_dim 32 (2 heads, 1 KV head): vLLM's CPU attention has no head_dim 16.
    "tiny-vllm": Preset(
        name="tiny-vllm",
        vision={"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
        text={
            "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
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
    # InternVL3-8B's shapes: InternViT-300M-448px + Qwen2.5-7B (for GPU benchmarks, random weights).
    "internvl-8b": Preset(
        name="internvl-8b",
        vision={
            "hidden_size": 1024, "num_hidden_layers": 24, "num_attention_heads": 16,
            "intermediate_size": 4096,
            "attention_bias": True, "layer_scale_init_value": 0.1, "norm_type": "layer_norm",
        },
        text={
            "hidden_size": 3584, "num_hidden_layers": 28, "num_attention_heads": 28, "num_key_value_heads": 4,
            "intermediate_size": 18944, "max_position_embeddings": 32768, "rms_norm_eps": 1e-6,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0},
        },
        image_size=448, patch_size=14, max_tiles=6, vocab_size=152064,
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
# Our exports name the PIL image processor; where torchvision is installed (vLLM's images),
# transformers would still pick its torchvision twin for that name, whose pixels differ by up to
# 0.12 (enough to change greedy captions). Both backends resolve to the PIL one here, so the hf
# and vllm engines (and training) tile and normalise identically.
AutoImageProcessor.register(
    InternVLConfig, image_processor_classes={"pil": GotOcr2ImageProcessorPil,
                                             "torchvision": GotOcr2ImageProcessorPil}, exist_ok=True)


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

    `vision_from` / `llm_from`: local paths or store URIs (file://, s3://) of pretrained weights
    (safetensors), loaded and shape-checked. `device` builds the weights there directly (a 2B
    model initialises in seconds on a GPU).
    """
    p = _preset(preset)
    llm_dir = local_dir(llm_from) if llm_from is not None else None
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
        load_pretrained_part(model, "vision", local_dir(vision_from))
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
    """Write model + processor in transformers format (safetensors) to out_dir.

    Once this module is imported, InternVLForConditionalGeneration.from_pretrained and
    AutoProcessor.from_pretrained load the result too; so do vLLM and the stock InternVLProcessor,
    offline (config, weights, generation config, tokenizer, chat template, image processor, and
    the video processor config that the stock processor insists on).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _name_pil_image_processor(out / "processor_config.json")
    (out / "video_preprocessor_config.json").write_text(
        json.dumps(video_processor_config(processor.image_processor), indent=2, sort_keys=True) + "\n")
    return out


def _name_pil_image_processor(path: Path) -> None:
    """Record the image processor as the PIL one it is (transformers writes the backend-less name)."""
    if not path.exists():
        return
    doc = json.loads(path.read_text())
    ip = doc.get("image_processor")
    if isinstance(ip, dict) and ip.get("image_processor_type") == "GotOcr2ImageProcessor":
        ip["image_processor_type"] = "GotOcr2ImageProcessorPil"
        path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")


def video_processor_config(image_processor: Any) -> dict[str, Any]:
    """InternVL's video processor settings matching our image processor (frames are one tile each)."""
    return {
        "video_processor_type": "InternVLVideoProcessor",
        "size": dict(image_processor.size),
        "image_mean": list(image_processor.image_mean),
        "image_std": list(image_processor.image_std),
        "do_resize": True, "do_rescale": True, "do_normalize": True, "do_convert_rgb": True,
        "rescale_factor": image_processor.rescale_factor,
        "resample": int(image_processor.resample),
    }


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
    """A one-turn chat prompt ending with the assistant header (image first when given).

    The processor expands the image placeholder to `<img>` + N context tokens per tile + `</img>`.
    """
    content: list[dict[str, str]] = [{"type": "image"}] if image else []
    content.append({"type": "text", "text": prompt})
    text: str = processor.tokenizer.apply_chat_template(
        [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
    )
    return text
