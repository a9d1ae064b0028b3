"""Offline tokenizer for InternVL-family models: a byte-level BPE trained on a built-in corpus."""

from __future__ import annotations

import functools
import itertools

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

PAD = "<|endoftext|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# InternVL's names for its image tokens (transformers reads them as tokenizer attributes).
IMAGE_TOKENS = {
    "start_image_token": "<img>",
    "end_image_token": "</img>",
    "context_image_token": "<IMG_CONTEXT>",
    "video_token": "<video>",
}
SPECIAL_TOKENS = [PAD, IM_START, IM_END, *IMAGE_TOKENS.values()]

# Qwen-style chat; an {"type": "image"} content part becomes the image placeholder + newline,
# as in InternVL's own template, so the processor can expand it to the image's token count.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<IMG_CONTEXT>\n' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<|im_end|>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\n' }}{%- endif -%}"
)

_SUBJECTS = [
    "a cat", "a dog", "an astronaut", "a rocket", "a cup of coffee", "a person", "a man", "a woman",
    "a car", "a horse", "a building", "a tree", "a flower", "a bird", "a boat", "a street", "a camera",
    "a coin", "a galaxy", "a moon", "a page of text", "a chart", "a table", "a logo", "a handwritten digit",
]
_ADJECTIVES = [
    "red", "blue", "green", "white", "black", "small", "large", "bright", "dark", "blurry", "sharp",
    "old", "young", "grey", "yellow", "orange", "detailed", "simple", "colorful", "pale",
]
_PLACES = [
    "on a table", "in a field", "in space", "on the street", "in a room", "near the water",
    "against a plain background", "in the sky", "on a white sheet", "in front of a building",
]
_DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_PHRASES = [
    "Describe the image in detail.", "What is shown in this picture?", "Which digit is this?",
    "The image shows", "This photo shows", "In the background there is", "The alt-text says",
    "Rate the caption from 1 to 5.", "Answer with a single word.", "Write a short caption.",
    "Here is the original alt-text:", "Rewrite it into a detailed, accurate description.",
    "Richness: 4. Alignment: 5.", "Yes", "No", "The answer is", "image of", "photo of",
    "stock photo", "click here to buy", "best price", "free shipping", "jpg", "png",
]


@functools.lru_cache(maxsize=1)
def builtin_corpus() -> tuple[str, ...]:
    """The fixed training corpus: caption-like English, digits, prompts and numbers."""
    lines: list[str] = list(_PHRASES)
    for subj, adj, place in itertools.product(_SUBJECTS, _ADJECTIVES[:8], _PLACES):
        lines.append(f"The image shows {subj} that is {adj}, {place}.")
    for i, word in enumerate(_DIGITS):
        lines.append(f"A handwritten digit {i} ({word}) in white on a black background.")
        lines.append(f"The digit is {i}. It is the number {word}.")
    lines.extend(" ".join(str(n) for n in range(k, k + 10)) for k in range(0, 100, 10))
    triples = zip(_ADJECTIVES, _SUBJECTS, itertools.cycle(_PLACES), strict=False)
    lines.extend(f"{a} {s} {p}" for a, s, p in triples)
    return tuple(lines)


def _train_bpe(vocab_size: int) -> Tokenizer:
    """Train the byte-level BPE on the built-in corpus (deterministic)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(builtin_corpus(), trainer)
    return tok


def add_internvl_tokens(tokenizer: PreTrainedTokenizerFast) -> PreTrainedTokenizerFast:
    """Give any fast tokenizer (e.g. a real Qwen one) the InternVL image tokens and chat template."""
    unknown = (None, tokenizer.unk_token_id)
    missing = [t for t in SPECIAL_TOKENS if tokenizer.convert_tokens_to_ids(t) in unknown]
    if missing:
        tokenizer.add_special_tokens({"additional_special_tokens": missing})
    tokenizer._set_model_specific_special_tokens(special_tokens=dict(IMAGE_TOKENS))
    tokenizer.init_kwargs["model_specific_special_tokens"] = dict(IMAGE_TOKENS)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = PAD
    if tokenizer.chat_template is None:
        tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tokenizer(vocab_size: int = 1024) -> PreTrainedTokenizerFast:
    """A fresh offline tokenizer: same vocabulary for the same vocab_size, on every machine.

    No hub is reachable on our machines, so the `tiny` preset (and `sail-vl-2b` without `llm_from`)
    uses this one. Byte-level BPE encodes any text: the corpus only decides how compact it is.
    It has Qwen-style chat tokens, InternVL's image tokens and a chat template whose image parts
    render as the placeholder that `InternVLProcessor` expands.
    """
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_train_bpe(vocab_size),
        eos_token=IM_END,
        pad_token=PAD,
        padding_side="left",
        model_specific_special_tokens=dict(IMAGE_TOKENS),
        chat_template=CHAT_TEMPLATE,
    )
    return fast
