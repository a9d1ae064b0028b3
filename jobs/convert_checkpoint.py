"""`python -m jobs.convert_checkpoint SRC DST`: an original InternVL / SAIL-VL checkpoint, native.

SRC is a folder in the original layout (`InternVLChatModel`, InternViT + a Qwen2 LLM, the
`trust_remote_code` files beside it); DST receives the transformers-native export (`save_model`:
weights, config, generation config, tokenizer with the InternVL image tokens, our chat template,
the PIL image processor with the checkpoint's tile size and `max_dynamic_patch`, the video
processor config), which the hf engine, training and vLLM load offline. vLLM also serves SRC as is.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from transformers import InternVLForConditionalGeneration, PreTrainedTokenizerFast

from jobs.vlm.convert import is_original_layout, native_config, native_state_dict
from jobs.vlm.model import VLMProcessor, build_image_processor, image_tokens_per_tile, save_model
from jobs.vlm.tokenizer import CHAT_TEMPLATE, add_internvl_tokens
from jobs.vlm.weights import read_state_dict
from sailk8s.errors import ConfigError


def convert(src: Path, dst: Path) -> Path:
    """Convert SRC (original layout) into DST (native); ConfigError where it cannot."""
    if not is_original_layout(src):
        raise ConfigError(f"{src} is not an original-layout InternVL checkpoint (no InternVLChatModel "
                          "config.json)")
    original = json.loads((src / "config.json").read_text())
    tokenizer = add_internvl_tokens(PreTrainedTokenizerFast.from_pretrained(str(src), padding_side="left"))
    tokenizer.chat_template = CHAT_TEMPLATE  # image parts as the placeholder our processor expands
    config = native_config(original, tokenizer)
    state = native_state_dict(read_state_dict(src), config.vision_config.hidden_size)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    dtype = next(iter(state.values())).dtype
    with torch.device("meta"):
        model = InternVLForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ConfigError(f"{src}: {len(missing)} tensors missing (e.g. {missing[:3]}), "
                          f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    if config.tie_word_embeddings:
        model.tie_weights()
    model.to(dtype).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    size = config.vision_config.image_size[0]
    processor = VLMProcessor(
        image_processor=build_image_processor(size, int(original.get("max_dynamic_patch", 6))),
        tokenizer=tokenizer, image_seq_length=image_tokens_per_tile(config), chat_template=CHAT_TEMPLATE)
    return save_model(model, processor, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path, help="original-layout checkpoint folder")
    parser.add_argument("dst", type=Path, help="where the native export is written")
    args = parser.parse_args(argv)
    try:
        out = convert(args.src, args.dst)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 3
    print(f"converted {args.src} -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
