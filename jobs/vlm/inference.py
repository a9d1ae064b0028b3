"""Batched VLM inference: generated replies, and the log-likelihood of given replies."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image
from transformers import InternVLForConditionalGeneration

from jobs.vlm.model import VLMProcessor, chat_prompt


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
    """Generate one text per (image, prompt) pair in ONE batched call (left padding).

    Prompts are the raw user text; the chat template is applied here (`chat_prompt`).
    """
    return [g.text for g in generate(model, processor, images, prompts, max_new_tokens,
                                     max_tiles=max_tiles, **gen)]


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
    enc = encode_for_generation(processor, images, prompts, max_tiles=max_tiles)
    return generate_encoded(model, processor, enc, max_new_tokens, **gen)


def encode_for_generation(
    processor: VLMProcessor, images: Sequence[Image.Image], prompts: Sequence[str], *,
    max_tiles: int | None = None,
) -> Any:
    """The CPU half of `generate`: chat template, tiling, tokens (left padded); None for no prompts.

    Apart from the model, so a prefetching thread can prepare the next batch during generation.
    """
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images but {len(prompts)} prompts")
    if not prompts:
        return None
    texts = [chat_prompt(processor, p, image=True) for p in prompts]
    return processor(images=list(images), text=texts, padding=True, padding_side="left",
                     return_tensors="pt", **tiling_kwargs(max_tiles))


def tiling_kwargs(max_tiles: int | None) -> dict[str, Any]:
    """Image-processor call arguments for up to `max_tiles` tiles (+ a thumbnail); {} keeps its own."""
    return {"max_patches": max_tiles, "crop_to_patches": max_tiles > 1} if max_tiles else {}


def decode_reply(processor: VLMProcessor, row: Sequence[int], stops: set[int]) -> Generated:
    """One generated row (tokens after the prompt) as text, token count and whether it ended."""
    end = next((i for i, t in enumerate(row) if t in stops), None)
    kept = list(row) if end is None else list(row[:end + 1])
    text: str = processor.tokenizer.decode(kept, skip_special_tokens=True)
    return Generated(text.strip(), len(kept), end is not None)


@torch.inference_mode()
def generate_encoded(
    model: InternVLForConditionalGeneration, processor: VLMProcessor, enc: Any, max_new_tokens: int = 64,
    **gen: Any,
) -> list[Generated]:
    """The model half of `generate`, on `encode_for_generation`'s output."""
    if enc is None:
        return []
    inputs = _model_inputs(model, enc)
    gen.setdefault("do_sample", False)
    gen.setdefault("pad_token_id", processor.tokenizer.pad_token_id)
    gen.setdefault("eos_token_id", processor.tokenizer.eos_token_id)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, **gen)
    new = out[:, inputs["input_ids"].shape[1]:]
    eos = gen["eos_token_id"]
    stops = set(eos) if isinstance(eos, (list, tuple)) else {eos}
    return [decode_reply(processor, row, stops) for row in new.tolist()]


@torch.inference_mode()
def text_logprobs(
    model: InternVLForConditionalGeneration,
    processor: VLMProcessor,
    images: Sequence[Image.Image] | None,
    prompts: Sequence[str],
    texts: Sequence[str],
    *,
    max_tiles: int | None = None,
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
        enc = processor(images=list(images), text=chat, padding=True, padding_side="right",
                        return_tensors="pt", **tiling_kwargs(max_tiles))
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
