"""Turning samples into training tokens: tiling, chat templating, image-token expansion, masking.

    encoder = SampleEncoder(processor, seq_len=512, max_tiles=1, on_too_long="truncate")
    encoder.caption(image, text)          # pretraining: labels on the caption (+ end token) only
    encoder.conversation(image, turns)    # SFT: LLaVA turns, labels on assistant turns only
    encoder.text(text)                    # pure text, every token a target
    encoder.encode(sample_meta, image, fmt, ...) -> TokenizedSample | Dropped

Images are tiled by the processor's image processor (InternVL dynamic tiling: up to
`max_tiles` tiles + a thumbnail); each `<image>` placeholder becomes `<img>` + N*tiles context
tokens + `</img>`, N = the processor's image_seq_length. The rendered chat matches
`jobs.model.chat_prompt` (what generation sees): the image first in the user turn. A sample
whose placeholders do not match its images, or that is too long, is returned as `Dropped`
with a reason the stage counts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from PIL import Image

from jobs.packing import IGNORE, TokenizedSample

IMAGE_PLACEHOLDER = "<image>"

# Drop reasons (counted in the stage's report).
TOO_LONG = "too_long"
TOO_LONG_IMAGE = "too_long_image"  # the image tokens alone do not fit: cannot be truncated
TRUNCATED = "truncated"  # kept, but cut to seq_len (a count, not a drop)
IMAGE_TOKEN_MISMATCH = "image_token_mismatch"
NO_TEXT = "no_text"
BAD_CONVERSATION = "bad_conversation"
NO_IMAGE = "no_image"
PROMPT_FIELD_MISSING = "prompt_field_missing"

Format = Literal["auto", "caption", "conversation", "text"]


@dataclass(frozen=True)
class Dropped:
    """A sample that cannot be trained on, and why."""

    reason: str
    detail: str = ""


def field_value(meta: dict[str, Any], path: str) -> Any:
    """A dotted path into a sample's json ("scores.richness"); None when absent."""
    cur: Any = meta
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


class SampleEncoder:
    """Encodes samples for one model's processor, under one sequence length and tiling."""

    def __init__(self, processor: Any, *, seq_len: int, max_tiles: int = 1,
                 on_too_long: Literal["truncate", "drop"] = "truncate") -> None:
        self.processor = processor
        self.tok = processor.tokenizer
        self.seq_len = seq_len
        self.max_tiles = max_tiles
        self.on_too_long = on_too_long
        self.tokens_per_tile = int(processor.image_seq_length)
        self.ctx_id = int(self.tok.context_image_token_id)
        self.start_id = int(self.tok.start_image_token_id)
        self.end_id = int(self.tok.end_image_token_id)
        self.eos_id = int(self.tok.eos_token_id)
        self.pad_id = int(self.tok.pad_token_id)
        self.image_token = str(self.tok.context_image_token)

    # -- pieces ---------------------------------------------------------------------------
    def tiles(self, image: Image.Image) -> torch.Tensor:
        """The image's tiles (tiles, 3, H, W) by the processor's dynamic tiling."""
        ip = self.processor.image_processor
        out = ip([image], crop_to_patches=self.max_tiles > 1, max_patches=self.max_tiles,
                 return_tensors="pt")
        px: torch.Tensor = out["pixel_values"]
        return px

    def _ids(self, text: str) -> list[int]:
        ids: list[int] = self.tok(text, add_special_tokens=False)["input_ids"]
        return ids

    def _with_images(self, text: str, tiles_per_image: Sequence[int]) -> list[int]:
        """Tokenize text whose image placeholders expand to <img> + ctx*N*tiles + </img>."""
        parts = text.split(self.image_token)
        if len(parts) - 1 != len(tiles_per_image):
            raise _Mismatch(f"{len(parts) - 1} image placeholders for {len(tiles_per_image)} images")
        ids: list[int] = []
        for i, part in enumerate(parts):
            if part:
                ids += self._ids(part)
            if i < len(tiles_per_image):
                n = self.tokens_per_tile * tiles_per_image[i]
                ids += [self.start_id, *[self.ctx_id] * n, self.end_id]
        return ids

    def _check(self, sample: TokenizedSample) -> TokenizedSample | Dropped:
        """Validate the image-token count and apply the too-long policy."""
        tiles = 0 if sample.pixel_values is None else int(sample.pixel_values.shape[0])
        n_ctx = sum(1 for x in sample.input_ids if x == self.ctx_id)
        if n_ctx != tiles * self.tokens_per_tile:
            return Dropped(IMAGE_TOKEN_MISMATCH,
                           f"{n_ctx} image tokens for {tiles} tiles x {self.tokens_per_tile}")
        if len(sample) <= self.seq_len:
            return sample
        if self.on_too_long == "drop":
            return Dropped(TOO_LONG, f"{len(sample)} tokens > seq_len {self.seq_len}")
        # Cutting inside an image would break the token/tile correspondence: keep whole images.
        last_end = max((i for i, x in enumerate(sample.input_ids) if x == self.end_id), default=-1)
        if last_end >= self.seq_len:
            return Dropped(TOO_LONG_IMAGE, f"image tokens end at {last_end + 1} > seq_len {self.seq_len}")
        cut = TokenizedSample(sample.input_ids[:self.seq_len], sample.labels[:self.seq_len],
                              sample.pixel_values, sample.source, truncated=True)
        if cut.target_tokens == 0:
            return Dropped(TOO_LONG, "no target token left after truncation")
        return cut

    # -- formats --------------------------------------------------------------------------
    def caption(self, image: Image.Image | None, text: str, source: str = "") -> TokenizedSample | Dropped:
        """Pretraining sample: image tokens, then the caption + end token as the targets."""
        text = text.strip()
        if not text:
            return Dropped(NO_TEXT)
        px = self.tiles(image) if image is not None else None
        prefix = self._with_images(self.image_token + "\n", [int(px.shape[0])]) if px is not None else []
        if self.image_token in text:
            return Dropped(IMAGE_TOKEN_MISMATCH, "image token inside the caption text")
        target = [*self._ids(text), self.eos_id]
        return self._check(TokenizedSample([*prefix, *target], [IGNORE] * len(prefix) + target, px, source))

    def text(self, text: str, source: str = "") -> TokenizedSample | Dropped:
        """Pure-text sample (keeps the LLM's language skills in pretraining): all tokens targets."""
        return self.caption(None, text, source)

    def conversation(self, image: Image.Image | None, turns: Sequence[dict[str, Any]],
                     source: str = "") -> TokenizedSample | Dropped:
        """LLaVA turns [{from: human|gpt, value}], `<image>` placeholders; targets: assistant turns."""
        messages: list[dict[str, Any]] = []
        placeholders = 0
        for t in turns:
            role = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}.get(
                str(t.get("from", t.get("role", ""))))
            value = t.get("value", t.get("content"))
            if role is None or not isinstance(value, str):
                return Dropped(BAD_CONVERSATION, f"turn {t!r:.80}")
            messages.append({"role": role, "content": self._content(value)})
            placeholders += value.count(IMAGE_PLACEHOLDER)
        if not any(m["role"] == "assistant" for m in messages):
            return Dropped(BAD_CONVERSATION, "no assistant turn")
        n_images = 1 if image is not None else 0
        if placeholders != n_images:
            return Dropped(IMAGE_TOKEN_MISMATCH, f"{placeholders} <image> placeholders for {n_images} images")
        px = self.tiles(image) if image is not None else None
        tiles = [int(px.shape[0])] if px is not None else []
        try:
            ids, labels = self._turn_tokens(messages, tiles)
        except _Mismatch as err:
            return Dropped(IMAGE_TOKEN_MISMATCH, str(err))
        return self._check(TokenizedSample(ids, labels, px, source))

    def _turn_tokens(self, messages: list[dict[str, Any]], tiles: list[int]) -> tuple[list[int], list[int]]:
        """Token ids and labels of a rendered conversation; labels on assistant replies only."""
        ids: list[int] = []
        labels: list[int] = []
        done = ""
        for k, m in enumerate(messages):
            # Render growing prefixes: the new text of each turn is what this turn adds.
            if m["role"] == "assistant":
                head = self._render(messages[:k], generation_prompt=True)
                full = self._render(messages[:k + 1], generation_prompt=False)
                new_head, reply = head[len(done):], full[len(head):]
                head_ids = self._expand(new_head, tiles, done)
                # Targets: the reply through the end-of-turn token; the newline after it is not.
                end = reply.find(self.tok.eos_token)
                body, tail = (reply[:end + len(self.tok.eos_token)], reply[end + len(self.tok.eos_token):]) \
                    if end >= 0 else (reply, "")
                body_ids, tail_ids = self._ids(body), self._ids(tail) if tail else []
                ids += head_ids + body_ids + tail_ids
                labels += [IGNORE] * len(head_ids) + body_ids + [IGNORE] * len(tail_ids)
                done = full
        rest = self._render(messages, generation_prompt=False)[len(done):]
        if rest:
            rest_ids = self._expand(rest, tiles, done)
            ids += rest_ids
            labels += [IGNORE] * len(rest_ids)
        return ids, labels

    def _expand(self, text: str, tiles: list[int], before: str) -> list[int]:
        """Tokenize a rendered piece, expanding the images it holds (in document order)."""
        seen = before.count(self.image_token)
        here = text.count(self.image_token)
        return self._with_images(text, tiles[seen:seen + here])

    def _content(self, value: str) -> str | list[dict[str, str]]:
        """LLaVA value -> chat content: an `<image>` becomes an image part (image first)."""
        if IMAGE_PLACEHOLDER not in value:
            return value
        parts: list[dict[str, str]] = []
        for i, piece in enumerate(value.split(IMAGE_PLACEHOLDER)):
            if i > 0:
                parts.append({"type": "image"})
            piece = piece.removeprefix("\n") if i > 0 else piece
            if piece.strip():
                parts.append({"type": "text", "text": piece})
        return parts

    def _render(self, messages: list[dict[str, Any]], *, generation_prompt: bool) -> str:
        if not messages:
            return ""
        out: str = self.tok.apply_chat_template(messages, tokenize=False,
                                                add_generation_prompt=generation_prompt)
        return out

    # -- dispatch -------------------------------------------------------------------------
    def encode(self, meta: dict[str, Any], image: Image.Image | None, fmt: Format = "auto", *,
               text_fields: Sequence[str] = ("recaption", "caption", "text"), prompt: str | None = None,
               source: str = "") -> TokenizedSample | Dropped:
        """One sample's json (+ decoded image) in the mix entry's format."""
        if fmt == "auto":
            fmt = "conversation" if "conversations" in meta else "caption"
        if fmt == "conversation":
            turns = meta.get("conversations")
            if not isinstance(turns, list) or not turns:
                return Dropped(BAD_CONVERSATION, "no conversations list")
            return self.conversation(image, turns, source)
        texts = (meta.get(f) for f in text_fields)
        text = next((t for t in texts if isinstance(t, str) and t.strip()), "")
        if not text:
            return Dropped(NO_TEXT, f"none of {list(text_fields)}")
        if fmt == "text":
            return self.text(text, source)
        if image is None:
            return Dropped(NO_IMAGE)
        if prompt is not None:  # SFT on captions: ask, then answer with the caption
            if "{" in prompt:  # a template over the sample's fields, e.g. "...alt-text: {alt_text}"
                try:
                    fields = {k: v for k, v in meta.items() if isinstance(v, (str, int, float))}
                    prompt = prompt.format_map(fields)
                except (KeyError, ValueError, IndexError) as err:
                    return Dropped(PROMPT_FIELD_MISSING, str(err))
            turns = [{"from": "human", "value": f"{IMAGE_PLACEHOLDER}\n{prompt}"},
                     {"from": "gpt", "value": text}]
            return self.conversation(image, turns, source)
        return self.caption(image, text, source)


class _Mismatch(ValueError):
    """Placeholders and images disagree (caught by callers as IMAGE_TOKEN_MISMATCH)."""
