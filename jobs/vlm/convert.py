"""Original InternVL / SAIL-VL checkpoints (`InternVLChatModel`) to transformers' native InternVL layout.

Our own mapping (after reading transformers' `convert_internvl_weights_to_hf.py`): the InternViT
keys are renamed and its fused `qkv` split, the `mlp1` projector becomes `multi_modal_projector`,
and the Qwen2 LLM moves under `model.language_model` (its head to `lm_head`). InternLM2 LLMs
(InternVL2-8B's) are not handled. `original_state_dict` is the inverse, for round-trip tests.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch
from transformers import InternVLConfig, PreTrainedTokenizerFast

from sailk8s.errors import ConfigError

# Applied in order to the part of a key after "vision_model." (one regex each).
_VISION_RENAMES = [
    (r"^embeddings\.class_embedding$", "embeddings.cls_token"),
    (r"^embeddings\.position_embedding$", "embeddings.position_embeddings"),
    (r"^embeddings\.patch_embedding\.", "embeddings.patch_embeddings.projection."),
    (r"^encoder\.layers\.(\d+)\.", r"encoder.layer.\1."),
    (r"\.ls(\d)$", r".lambda_\1"),
    (r"\.attn\.proj\.", ".attention.projection_layer."),
    (r"\.attn\.(q_norm|k_norm)\.", r".attention.\1."),
    (r"\.norm1\.", ".layernorm_before."),
    (r"\.norm2\.", ".layernorm_after."),
]
_PROJECTOR = {"mlp1.0.": "layer_norm.", "mlp1.1.": "linear_1.", "mlp1.3.": "linear_2."}
VISION, PROJECTOR, LLM = "model.vision_tower.", "model.multi_modal_projector.", "model.language_model."


def is_original_layout(path: Path) -> bool:
    """Whether the folder holds an original-format InternVL / SAIL-VL checkpoint."""
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return "InternVLChatModel" in (config.get("architectures") or [])


def native_state_dict(original: dict[str, torch.Tensor], vision_hidden: int) -> dict[str, torch.Tensor]:
    """The transformers-native state dict of an original-layout one (tensors shared, not copied)."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in original.items():
        if key.startswith("vision_model."):
            rest = key.removeprefix("vision_model.")
            m = re.fullmatch(r"encoder\.layers\.(\d+)\.attn\.qkv\.(weight|bias)", rest)
            if m:  # fused q, k, v (each vision_hidden rows) -> three projections
                for i, name in enumerate(("q_proj", "k_proj", "v_proj")):
                    part = tensor[i * vision_hidden:(i + 1) * vision_hidden]
                    out[f"{VISION}encoder.layer.{m.group(1)}.attention.{name}.{m.group(2)}"] = part
                continue
            out[VISION + _rename_vision(rest)] = tensor
        elif key.startswith("mlp1."):
            prefix = next((p for p in _PROJECTOR if key.startswith(p)), None)
            if prefix is None:
                raise ConfigError(f"unknown projector tensor {key} (expected mlp1.0, mlp1.1, mlp1.3)")
            out[PROJECTOR + _PROJECTOR[prefix] + key.removeprefix(prefix)] = tensor
        elif key.startswith("language_model.model."):
            out[LLM + key.removeprefix("language_model.model.")] = tensor
        elif key == "language_model.lm_head.weight":
            out["lm_head.weight"] = tensor
        elif key.startswith("language_model.") and ("attention.wqkv" in key or "tok_embeddings" in key):
            raise ConfigError("an InternLM2 language model (InternVL2-8B style): not supported by this "
                              "converter; convert with transformers' own script")
        else:
            raise ConfigError(f"unexpected tensor {key} in an InternVLChatModel checkpoint")
    return out


def _rename_vision(rest: str) -> str:
    for pattern, repl in _VISION_RENAMES:
        rest = re.sub(pattern, repl, rest)
    return rest.replace(".attn.", ".attention.")


def original_state_dict(native: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The inverse of `native_state_dict` (q, k, v fused back into qkv)."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[str, dict[str, torch.Tensor]] = {}
    inverse_vision = [
        (r"^embeddings\.cls_token$", "embeddings.class_embedding"),
        (r"^embeddings\.position_embeddings$", "embeddings.position_embedding"),
        (r"^embeddings\.patch_embeddings\.projection\.", "embeddings.patch_embedding."),
        (r"^encoder\.layer\.(\d+)\.", r"encoder.layers.\1."),
        (r"\.lambda_(\d)$", r".ls\1"),
        (r"\.attention\.projection_layer\.", ".attn.proj."),
        (r"\.attention\.", ".attn."),
        (r"\.layernorm_before\.", ".norm1."),
        (r"\.layernorm_after\.", ".norm2."),
    ]
    for key, tensor in native.items():
        if key.startswith(VISION):
            rest = key.removeprefix(VISION)
            m = re.search(r"\.attention\.(q_proj|k_proj|v_proj)\.(weight|bias)$", rest)
            if m:
                base = rest[:m.start()]
                qkv.setdefault(f"{base}|{m.group(2)}", {})[m.group(1)] = tensor
                continue
            for pattern, repl in inverse_vision:
                rest = re.sub(pattern, repl, rest)
            out["vision_model." + rest] = tensor
        elif key.startswith(PROJECTOR):
            rest = key.removeprefix(PROJECTOR)
            prefix = next(p for p, n in _PROJECTOR.items() if rest.startswith(n))
            out[prefix + rest.removeprefix(_PROJECTOR[prefix])] = tensor
        elif key.startswith(LLM):
            out["language_model.model." + key.removeprefix(LLM)] = tensor
        elif key == "lm_head.weight":
            out["language_model.lm_head.weight"] = tensor
    for name, parts in qkv.items():
        base, kind = name.split("|")
        base = re.sub(r"^encoder\.layer\.(\d+)", r"encoder.layers.\1", base)
        fused = torch.cat([parts["q_proj"], parts["k_proj"], parts["v_proj"]])
        out[f"vision_model.{base}.attn.qkv.{kind}"] = fused
    return out


def native_config(original: dict[str, Any], tokenizer: PreTrainedTokenizerFast) -> InternVLConfig:
    """InternVLConfig from an InternVLChatModel config.json (InternViT + a Qwen2 LLM)."""
    vc, lc = dict(original.get("vision_config") or {}), dict(original.get("llm_config") or {})
    if lc.get("model_type") not in ("qwen2", None) or "Qwen2" not in str(lc.get("architectures", ["Qwen2"])):
        raise ConfigError(f"language model {lc.get('architectures')}: only Qwen2 LLMs are converted")
    if original.get("ps_version", "v2") != "v2":
        raise ConfigError(f"ps_version {original.get('ps_version')}: only InternVL's v2 pixel shuffle "
                          "is converted")
    size = int(original.get("force_image_size") or vc["image_size"])
    patch = int(vc["patch_size"])
    vision = {
        "hidden_size": vc["hidden_size"], "num_hidden_layers": vc["num_hidden_layers"],
        "num_attention_heads": vc["num_attention_heads"], "intermediate_size": vc["intermediate_size"],
        "image_size": [size, size], "patch_size": [patch, patch],
        "attention_bias": bool(vc.get("qkv_bias", True)),
        "use_qk_norm": bool(vc.get("qk_normalization", False)),
        "norm_type": vc.get("norm_type", "layer_norm"), "layer_norm_eps": vc.get("layer_norm_eps", 1e-6),
        "hidden_act": vc.get("hidden_act", "gelu"), "use_absolute_position_embeddings": True,
        "layer_scale_init_value": 0.1,  # init only: the ls1/ls2 weights are loaded
    }
    keep = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
            "intermediate_size", "max_position_embeddings", "rms_norm_eps", "rope_theta", "rope_scaling",
            "rope_parameters", "hidden_act", "tie_word_embeddings", "sliding_window", "use_sliding_window",
            "bos_token_id", "eos_token_id", "attention_dropout")
    text = {"model_type": "qwen2", **{k: lc[k] for k in keep if k in lc}}
    if "rope_theta" in text and "rope_parameters" not in text:
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": text.pop("rope_theta")}
    text["eos_token_id"] = tokenizer.eos_token_id
    text["pad_token_id"] = tokenizer.pad_token_id
    ratio = float(original.get("downsample_ratio", 0.5))
    select = int(original.get("select_layer", -1))
    return InternVLConfig(
        vision_config=vision, text_config=text, image_token_id=tokenizer.context_image_token_id,
        image_seq_length=int((size // patch) ** 2 * ratio**2), downsample_ratio=ratio,
        vision_feature_layer=select, tie_word_embeddings=bool(lc.get("tie_word_embeddings", False)),
    )
