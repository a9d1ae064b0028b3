"""The VLM module: presets, processor, batched inference, save/load, pretrained parts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image
from transformers import AutoProcessor, InternVLForConditionalGeneration

from jobs.vlm.inference import generate_texts, text_logprobs
from jobs.vlm.model import (
    PRESETS,
    VLMProcessor,
    _config,
    build_model,
    build_processor,
    chat_prompt,
    device_and_dtype,
    image_tokens_per_tile,
    load_model,
    save_model,
)
from sailk8s.errors import ConfigError

PROMPTS = ["Describe the image.", "What is this?", "Caption:", "Alt-text: a cat. Rewrite it."]


def test_tiny_preset_shapes(tiny) -> None:
    model, processor = tiny
    cfg = model.config
    assert cfg.vision_config.hidden_size == 32 and cfg.vision_config.num_hidden_layers == 2
    assert cfg.text_config.hidden_size == 64 and cfg.text_config.num_hidden_layers == 2
    assert image_tokens_per_tile(cfg) == processor.image_seq_length == 16  # (64/8)^2 / 4
    assert cfg.image_token_id == processor.image_token_id
    assert cfg.text_config.vocab_size >= len(processor.tokenizer)
    assert sum(p.numel() for p in model.parameters()) < 300_000


def test_sail_vl_2b_preset_has_the_papers_shapes() -> None:
    processor = build_processor("sail-vl-2b")
    config = _config(PRESETS["sail-vl-2b"], processor.tokenizer)
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    vision = sum(p.numel() for p in model.model.vision_tower.parameters())
    llm = sum(p.numel() for p in model.model.language_model.parameters())
    projector = model.model.multi_modal_projector
    assert 0.28e9 < vision < 0.32e9  # InternViT-300M
    assert 1.50e9 < llm < 1.56e9  # Qwen2.5-1.5B (tied embeddings)
    assert projector.linear_1.in_features == 1024 * 4  # 2x2 pixel shuffle of the ViT width
    assert image_tokens_per_tile(config) == processor.image_seq_length == 256


def test_unknown_preset_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown model preset 'huge'.*tiny"):
        build_model("huge")


def test_device_and_dtype_on_cpu() -> None:
    if not torch.cuda.is_available():
        assert device_and_dtype() == (torch.device("cpu"), torch.float32)


def test_dynamic_tiling_expands_one_placeholder_per_tile(tiny, photos) -> None:
    _, processor = tiny
    wide = Image.new("RGB", (256, 64))  # 4:1 -> a 4x1 grid + thumbnail
    enc = processor(images=[wide], text=[chat_prompt(processor, "x")], return_tensors="pt")
    assert enc["pixel_values"].shape == (5, 3, 64, 64)
    n_ctx = int((enc["input_ids"] == processor.image_token_id).sum())
    assert n_ctx == 5 * processor.image_seq_length
    square = processor(images=[Image.new("RGB", (64, 64))], text=[chat_prompt(processor, "x")],
                       return_tensors="pt")
    assert square["pixel_values"].shape[0] == 1  # one tile, no thumbnail


def test_batched_generation_equals_one_at_a_time(noisy_tiny, photos) -> None:
    model, processor = noisy_tiny
    batched = generate_texts(model, processor, photos, PROMPTS, max_new_tokens=6, min_new_tokens=6)
    single = [generate_texts(model, processor, [im], [p], max_new_tokens=6, min_new_tokens=6)[0]
              for im, p in zip(photos, PROMPTS, strict=True)]
    assert batched == single
    assert len(set(batched)) > 1, batched  # outputs depend on the input: the comparison means something


def test_generation_validates_its_inputs(tiny, photos) -> None:
    model, processor = tiny
    assert generate_texts(model, processor, [], []) == []
    with pytest.raises(ValueError, match="2 images but 1 prompts"):
        generate_texts(model, processor, photos[:2], PROMPTS[:1])


def test_text_logprobs_batched_equals_single_and_depends_on_the_image(noisy_tiny, photos) -> None:
    model, processor = noisy_tiny
    texts = ["a woman in a suit", "a cup of coffee on a table", "a cat", "a rocket at night"]
    batched = text_logprobs(model, processor, photos, PROMPTS, texts)
    single = [text_logprobs(model, processor, [im], [p], [t])[0]
              for im, p, t in zip(photos, PROMPTS, texts, strict=True)]
    assert batched == pytest.approx(single, abs=1e-4)
    assert all(x < 0 for x in batched)
    no_image = text_logprobs(model, processor, None, PROMPTS, texts)
    assert no_image != pytest.approx(batched, abs=1e-6)
    # More text to explain costs more log-likelihood: scores are sums, not means.
    short, longer = text_logprobs(model, processor, None, ["x", "x"], ["a cat", "a cat a cat a cat"])
    assert longer < short


def test_text_logprobs_matches_the_models_own_loss(tiny) -> None:
    """Cross-check against the model's built-in loss on the same tokens."""
    model, processor = tiny
    tok = processor.tokenizer
    prompt = chat_prompt(processor, "Say something.", image=False)
    reply = "hello world"
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    r_ids = [*tok(reply, add_special_tokens=False)["input_ids"], tok.eos_token_id]
    ids = torch.tensor([p_ids + r_ids])
    labels = torch.tensor([[-100] * len(p_ids) + r_ids])
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels, use_cache=False).loss
    ours = text_logprobs(model, processor, None, ["Say something."], [reply])[0]
    assert ours == pytest.approx(-float(loss) * len(r_ids), rel=1e-4)


def test_save_then_from_pretrained_gives_the_same_model(tiny, photos, tmp_path: Path) -> None:
    model, processor = tiny
    save_model(model, processor, tmp_path / "m")
    assert (tmp_path / "m" / "model.safetensors").exists()
    reloaded = InternVLForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    proc = AutoProcessor.from_pretrained(tmp_path / "m")
    assert isinstance(proc, VLMProcessor)
    assert proc.tokenizer.get_vocab() == processor.tokenizer.get_vocab()
    for (name, a), b in zip(model.state_dict().items(), reloaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    want = generate_texts(model, processor, photos[:2], PROMPTS[:2], max_new_tokens=5)
    assert generate_texts(reloaded, proc, photos[:2], PROMPTS[:2], max_new_tokens=5) == want


def test_load_model_from_a_store_prefix_is_cached(tiny, tmp_path: Path) -> None:
    from sailk8s.store import open_store

    model, processor = tiny
    local = save_model(model, processor, tmp_path / "export")
    store = open_store(f"file://{tmp_path / 'store'}")
    for f in sorted(local.iterdir()):
        store.put_file(f"models/cap/{f.name}", f)
    uri = f"file://{tmp_path / 'store'}/models/cap"
    m1, p1 = load_model(uri, cache_dir=tmp_path / "cache")
    assert torch.equal(m1.lm_head.weight, model.lm_head.weight)
    assert isinstance(p1, VLMProcessor)
    # Remove the source: the second load must come from the cache, not the store.
    for key in list(store.list("models/cap/")):
        store.delete(key)
    m2, _ = load_model(uri, cache_dir=tmp_path / "cache")
    assert torch.equal(m2.lm_head.weight, model.lm_head.weight)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".fetch-")]


def test_load_model_errors_name_the_cause(tmp_path: Path) -> None:
    from sailk8s.errors import ObjectNotFound

    with pytest.raises(ConfigError, match=r"model not found: .*nowhere"):
        load_model(str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"no config\.json"):
        load_model(tmp_path / "empty")
    with pytest.raises(ObjectNotFound, match="no objects under"):
        load_model(f"file://{tmp_path}/store/none", cache_dir=tmp_path / "cache")


def test_pretrained_vision_and_llm_weights_are_loaded(tiny, tmp_path: Path) -> None:
    donor, _ = build_model("tiny", seed=123)
    donor.model.vision_tower.save_pretrained(tmp_path / "vit")
    # An LLM checkpoint in Qwen2ForCausalLM layout: "model." prefix + lm_head.
    llm_state = {f"model.{k}": v for k, v in donor.model.language_model.state_dict().items()}
    llm_state["lm_head.weight"] = donor.lm_head.weight
    from safetensors.torch import save_file
    (tmp_path / "llm").mkdir()
    save_file({k: v.contiguous().clone() for k, v in llm_state.items()},
              str(tmp_path / "llm" / "model.safetensors"))

    model, _ = build_model("tiny", seed=0, vision_from=tmp_path / "vit", llm_from=tmp_path / "llm")
    fresh, _ = build_model("tiny", seed=0)
    for k, v in donor.model.vision_tower.state_dict().items():
        assert torch.equal(model.model.vision_tower.state_dict()[k], v), k
    for k, v in donor.model.language_model.state_dict().items():
        assert torch.equal(model.model.language_model.state_dict()[k], v), k
    # The projector is not part of either: it keeps its seeded random init.
    for k, v in fresh.model.multi_modal_projector.state_dict().items():
        assert torch.equal(model.model.multi_modal_projector.state_dict()[k], v), k


def test_pretrained_shape_mismatch_names_both_shapes(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    donor, _ = build_model("tiny")
    state = {k: v.clone() for k, v in donor.model.vision_tower.state_dict().items()}
    key = "embeddings.patch_embeddings.projection.weight"
    state[key] = torch.zeros(48, 3, 8, 8)
    (tmp_path / "vit").mkdir()
    save_file(state, str(tmp_path / "vit" / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"vision weights .*projection.weight has shape \(48, 3, 8, 8\) "
                                          r"there but \(32, 3, 8, 8\) in the model"):
        build_model("tiny", vision_from=tmp_path / "vit")


def test_pretrained_errors_for_missing_or_incomplete_weights(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    with pytest.raises(ConfigError, match=r"pretrained weights not found: .*missing"):
        build_model("tiny", llm_from=tmp_path / "missing")
    (tmp_path / "nothing").mkdir()
    with pytest.raises(ConfigError, match="no weights in"):
        build_model("tiny", vision_from=tmp_path / "nothing")
    (tmp_path / "partial").mkdir()
    save_file({"embeddings.cls_token": torch.zeros(1, 1, 32)},
              str(tmp_path / "partial" / "model.safetensors"))
    with pytest.raises(ConfigError, match=r"lack \d+ of \d+ tensors"):
        build_model("tiny", vision_from=tmp_path / "partial")


def test_llm_from_a_store_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import save_file

    from sailk8s.store import open_store

    donor, _ = build_model("tiny", seed=7)
    (tmp_path / "llm").mkdir()
    save_file({k: v.clone() for k, v in donor.model.language_model.state_dict().items()},
              str(tmp_path / "llm" / "model.safetensors"))
    store = open_store(f"file://{tmp_path / 'store'}")
    store.put_file("pretrained/llm/model.safetensors", tmp_path / "llm" / "model.safetensors")
    monkeypatch.setenv("SAIL_MODEL_CACHE", str(tmp_path / "cache"))
    model, _ = build_model("tiny", llm_from=f"file://{tmp_path / 'store'}/pretrained/llm")
    assert len(list((tmp_path / "cache").iterdir())) == 1
    got = model.model.language_model.embed_tokens.weight
    assert torch.equal(got, donor.model.language_model.embed_tokens.weight)


def test_load_model_reads_checkpoints_that_name_the_stock_processor(tiny, photos, tmp_path: Path) -> None:
    """Hub InternVL checkpoints name InternVLProcessor and a torchvision image processor."""
    import json

    model, processor = tiny
    out = save_model(model, processor, tmp_path / "hubstyle")
    cfg = json.loads((out / "processor_config.json").read_text())
    cfg["processor_class"] = "InternVLProcessor"
    cfg["image_processor"]["image_processor_type"] = "GotOcr2ImageProcessorFast"
    (out / "processor_config.json").write_text(json.dumps(cfg))
    loaded, proc = load_model(out)
    assert isinstance(proc, VLMProcessor)
    want = generate_texts(model, processor, photos[:2], PROMPTS[:2], max_new_tokens=4)
    assert generate_texts(loaded, proc, photos[:2], PROMPTS[:2], max_new_tokens=4) == want
