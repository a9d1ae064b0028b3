"""Load pretrained vision-tower or LLM weights into an InternVL model, shape-checked."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from sailk8s.errors import ConfigError

log = logging.getLogger(__name__)

_PREFIXES = {
    "vision": ("model.vision_tower.", "vision_tower.", "vision_model.", ""),
    "llm": ("model.language_model.", "language_model.model.", "language_model.", "model.", ""),
}


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a weights file or transformers model directory.

    `model.safetensors`, a sharded `model.safetensors.index.json`, or `pytorch_model.bin` read with
    `weights_only=True` (never unpickling arbitrary objects).
    """
    if path.is_file():
        files = [path]
    elif (path / "model.safetensors.index.json").exists():
        index = json.loads((path / "model.safetensors.index.json").read_text())
        files = [path / f for f in sorted(set(index["weight_map"].values()))]
    elif (path / "model.safetensors").exists():
        files = [path / "model.safetensors"]
    elif (path / "pytorch_model.bin").exists():
        files = [path / "pytorch_model.bin"]
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise ConfigError(
            f"no weights in {path}: expected model.safetensors (or an index, or pytorch_model.bin)"
        )
    state: dict[str, torch.Tensor] = {}
    for f in files:
        if not f.exists():
            raise ConfigError(f"weights file missing: {f}")
        if f.suffix == ".safetensors":
            state.update(load_file(str(f)))
        else:
            state.update(torch.load(f, map_location="cpu", weights_only=True))
    return state


def _target(model: Any, part: str) -> nn.Module:
    """The submodule a part fills (an InternVLForConditionalGeneration's tower or LLM)."""
    if part == "vision":
        module: nn.Module = model.model.vision_tower
    elif part == "llm":
        module = model.model.language_model
    else:
        raise ValueError(f"unknown part {part!r}")
    return module


def _best_prefix(keys: set[str], wanted: set[str], part: str) -> str:
    """The source prefix under which the most of the wanted keys appear."""
    def hits(prefix: str) -> int:
        return sum(1 for k in wanted if prefix + k in keys)
    return max(_PREFIXES[part], key=hits)


def load_pretrained_part(model: Any, part: str, path: Path) -> None:
    """Copy the vision tower's ('vision') or LLM's ('llm') weights from path into model.

    The key prefixes of the usual layouts (a bare InternVLVisionModel or Qwen2ForCausalLM, or a
    whole InternVL checkpoint) are recognised automatically.

    Every tensor of the part must be present with the same shape; otherwise a ConfigError
    names the first offending key and both shapes.
    """
    source = read_state_dict(path)
    module = _target(model, part)
    target = module.state_dict()
    prefix = _best_prefix(set(source), set(target), part)
    loaded: dict[str, torch.Tensor] = {}
    missing = []
    for key, tensor in target.items():
        src = source.get(prefix + key)
        if src is None:
            missing.append(key)
            continue
        if tuple(src.shape) != tuple(tensor.shape):
            raise ConfigError(
                f"pretrained {part} weights in {path} do not fit the model: {key} has shape "
                f"{tuple(src.shape)} there but {tuple(tensor.shape)} in the model"
            )
        loaded[key] = src.to(tensor.dtype)
    if missing:
        raise ConfigError(
            f"pretrained {part} weights in {path} lack {len(missing)} of {len(target)} tensors "
            f"(e.g. {', '.join(missing[:3])})"
        )
    module.load_state_dict(loaded, strict=True)
    if part == "llm":
        head = source.get("lm_head.weight")
        lm_head = model.lm_head
        tied = lm_head.weight.data_ptr() == model.model.language_model.embed_tokens.weight.data_ptr()
        if head is not None and not tied:
            if tuple(head.shape) != tuple(lm_head.weight.shape):
                raise ConfigError(
                    f"pretrained llm weights in {path} do not fit the model: lm_head.weight has shape "
                    f"{tuple(head.shape)} there but {tuple(lm_head.weight.shape)} in the model"
                )
            lm_head.weight.data.copy_(head)
    log.info("loaded %d %s tensors from %s", len(loaded), part, path)
