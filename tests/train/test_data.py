"""Sample encoding: image-token expansion, label masking, too-long and mismatch policies."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from jobs.training.encoding import IMAGE_TOKEN_MISMATCH, TOO_LONG, TOO_LONG_IMAGE, Dropped, SampleEncoder
from jobs.training.packing import IGNORE, TokenizedSample
from jobs.vlm import model as vlm

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def processor() -> vlm.VLMProcessor:
    return vlm.build_model("tiny")[1]


def _targets(p: vlm.VLMProcessor, s: TokenizedSample) -> str:
    return str(p.tokenizer.decode([x for x in s.labels if x != IGNORE]))


IMG = Image.new("RGB", (64, 64), (200, 30, 30))
CONV = {"conversations": [{"from": "human", "value": "<image>\nWhich digit is this?"},
                          {"from": "gpt", "value": "7"},
                          {"from": "human", "value": "Odd or even?"},
                          {"from": "gpt", "value": "odd"}]}


def test_sft_targets_are_the_assistant_turns_only(processor: vlm.VLMProcessor) -> None:
    s = SampleEncoder(processor, seq_len=256).encode(CONV, IMG)
    assert isinstance(s, TokenizedSample)
    assert _targets(processor, s) == "7<|im_end|>odd<|im_end|>"


def test_sft_tokens_match_what_generation_sees(processor: vlm.VLMProcessor) -> None:
    s = SampleEncoder(processor, seq_len=256).encode(CONV, IMG)
    assert isinstance(s, TokenizedSample)
    prompt = vlm.chat_prompt(processor, "Which digit is this?")
    ref = processor(images=[IMG], text=[prompt], return_tensors="pt")
    n = ref["input_ids"].shape[1]
    assert s.input_ids[:n] == ref["input_ids"][0].tolist()
    assert s.pixel_values is not None and torch.equal(s.pixel_values, ref["pixel_values"])


def test_caption_targets_and_image_token_count(processor: vlm.VLMProcessor) -> None:
    enc = SampleEncoder(processor, seq_len=512, max_tiles=4)
    s = enc.encode({"caption": "a wide red banner"}, Image.new("RGB", (200, 64)))
    assert isinstance(s, TokenizedSample) and s.pixel_values is not None
    tiles = s.pixel_values.shape[0]
    assert tiles > 1  # dynamic tiling: grid + thumbnail
    assert s.input_ids.count(processor.tokenizer.context_image_token_id) == tiles * processor.image_seq_length
    assert _targets(processor, s) == "a wide red banner<|im_end|>"


def test_placeholder_image_mismatch_is_dropped_with_a_reason(processor: vlm.VLMProcessor) -> None:
    enc = SampleEncoder(processor, seq_len=256)
    no_placeholder = {"conversations": [{"from": "human", "value": "Which digit?"},
                                        {"from": "gpt", "value": "7"}]}
    expected = Dropped(IMAGE_TOKEN_MISMATCH, "0 <image> placeholders for 1 images")
    assert enc.encode(no_placeholder, IMG) == expected
    result = enc.encode(CONV, None)
    assert isinstance(result, Dropped) and result.reason == IMAGE_TOKEN_MISMATCH


def test_too_long_samples_are_truncated_outside_images_or_dropped(processor: vlm.VLMProcessor) -> None:
    long_caption = {"caption": "many words " * 40}
    cut = SampleEncoder(processor, seq_len=40).encode(long_caption, IMG)
    assert isinstance(cut, TokenizedSample) and cut.truncated and len(cut) == 40
    dropped = SampleEncoder(processor, seq_len=40, on_too_long="drop").encode(long_caption, IMG)
    assert isinstance(dropped, Dropped) and dropped.reason == TOO_LONG
    tiny = SampleEncoder(processor, seq_len=10).encode(long_caption, IMG)  # the image alone is 18 tokens
    assert isinstance(tiny, Dropped) and tiny.reason == TOO_LONG_IMAGE


def test_prompt_templates_take_sample_fields(processor: vlm.VLMProcessor) -> None:
    enc = SampleEncoder(processor, seq_len=256)
    s = enc.encode({"caption": "a seven", "alt_text": "number 7"}, IMG, "caption",
                   text_fields=["caption"], prompt="Alt-text: {alt_text}. Describe it.")
    assert isinstance(s, TokenizedSample)
    assert "Alt-text: number 7. Describe it." in processor.tokenizer.decode(s.input_ids)
    assert _targets(processor, s) == "a seven<|im_end|>"
