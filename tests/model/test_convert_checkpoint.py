"""Original InternVL / SAIL-VL checkpoints to the native layout: key set, shapes, round trip, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from jobs.convert_checkpoint import main as convert_main
from jobs.vlm.convert import native_state_dict, original_state_dict
from jobs.vlm.inference import generate
from jobs.vlm.model import load_model

# The original InternVL layout of one InternViT layer and the projector (modeling_intern_vit.py,
# modeling_internvl_chat.py): what the converter must read.
ORIGINAL_VISION_LAYER = {
    "attn.qkv.weight", "attn.proj.weight", "attn.proj.bias", "ls1", "ls2", "mlp.fc1.weight",
    "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "norm1.weight", "norm1.bias", "norm2.weight",
    "norm2.bias",
}


def test_the_original_layout_is_internvls(noisy_tiny) -> None:
    model, _ = noisy_tiny
    orig = original_state_dict(model.state_dict())
    layer0 = {k.removeprefix("vision_model.encoder.layers.0.") for k in orig
              if k.startswith("vision_model.encoder.layers.0.")}
    assert layer0 == ORIGINAL_VISION_LAYER
    assert {k for k in orig if k.startswith("vision_model.embeddings.")} == {
        "vision_model.embeddings.class_embedding", "vision_model.embeddings.position_embedding",
        "vision_model.embeddings.patch_embedding.weight", "vision_model.embeddings.patch_embedding.bias"}
    projector = {f"mlp1.{i}.{p}" for i in (0, 1, 3) for p in ("weight", "bias")}
    assert {k for k in orig if k.startswith("mlp1.")} == projector
    assert "language_model.lm_head.weight" in orig and "language_model.model.norm.weight" in orig
    hidden = model.config.vision_config.hidden_size
    assert orig["vision_model.encoder.layers.0.attn.qkv.weight"].shape == (3 * hidden, hidden)


def test_native_keys_and_shapes_match_a_config_built_model_and_round_trip(noisy_tiny) -> None:
    model, _ = noisy_tiny
    native = model.state_dict()
    back = native_state_dict(original_state_dict(native), model.config.vision_config.hidden_size)
    assert set(back) == set(native)
    for key, tensor in native.items():
        assert back[key].shape == tensor.shape, key
        assert torch.equal(back[key], tensor), key


def write_original(model, processor, out: Path) -> Path:
    """`model` saved as an original-layout InternVLChatModel folder (config, safetensors, tokenizer)."""
    out.mkdir(parents=True)
    vc, tc = model.config.vision_config, model.config.text_config
    config = {
        "architectures": ["InternVLChatModel"], "model_type": "internvl_chat", "template": "internvl2_5",
        "downsample_ratio": model.config.downsample_ratio, "ps_version": "v2", "select_layer": -1,
        "force_image_size": vc.image_size[0], "max_dynamic_patch": 4, "dynamic_image_size": True,
        "use_thumbnail": True,
        "vision_config": {"hidden_size": vc.hidden_size, "num_hidden_layers": vc.num_hidden_layers,
                          "num_attention_heads": vc.num_attention_heads,
                          "intermediate_size": vc.intermediate_size, "image_size": vc.image_size[0],
                          "patch_size": vc.patch_size[0], "qkv_bias": vc.attention_bias,
                          "qk_normalization": vc.use_qk_norm, "norm_type": vc.norm_type,
                          "layer_norm_eps": vc.layer_norm_eps, "hidden_act": vc.hidden_act},
        "llm_config": {**tc.to_dict(), "architectures": ["Qwen2ForCausalLM"]},
    }
    (out / "config.json").write_text(json.dumps(config))
    tensors = {k: v.contiguous().clone() for k, v in original_state_dict(model.state_dict()).items()}
    save_file(tensors, str(out / "model.safetensors"))
    processor.tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_convert_checkpoint_end_to_end_generates_what_the_source_did(noisy_tiny, photos, tmp_path) -> None:
    model, processor = noisy_tiny
    src = write_original(model, processor, tmp_path / "original")
    assert convert_main([str(src), str(tmp_path / "native")]) == 0
    loaded, loaded_processor = load_model(tmp_path / "native")
    prompts = ["Describe this image in detail."] * len(photos)
    want = generate(model, processor, photos, prompts, max_new_tokens=8, max_tiles=4)
    got = generate(loaded, loaded_processor, photos, prompts, max_new_tokens=8, max_tiles=4)
    assert got == want
    assert (tmp_path / "native" / "video_preprocessor_config.json").exists()
    # Not original layout: a message, exit 3.
    assert convert_main([str(tmp_path / "native"), str(tmp_path / "again")]) == 3
