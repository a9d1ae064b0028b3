"""Turning samples into training tokens: tiling, chat templating, image-token expansion, masking."""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from PIL import Image

from jobs.core import shards
from jobs.training.packing import IGNORE, TokenizedSample

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


class ImageRef:
    """An image known by its size; its pixels are decoded only when `load` is called."""

    def __init__(self, size: tuple[int, int], load: Callable[[], Image.Image]) -> None:
        self.size = size  # (width, height), as PIL gives it
        self.load = load

    @classmethod
    def of_image(cls, image: Image.Image) -> ImageRef:
        """An already decoded image."""
        return cls(image.size, lambda: image)

    @classmethod
    def of_bytes(cls, data: bytes, max_pixels: int = shards.DEFAULT_MAX_PIXELS) -> ImageRef:
        """Encoded bytes: the header is read now (BadSampleError if unusable), pixels on `load`."""
        return cls(probe_image(data, max_pixels), lambda: shards.decode_image(data, max_pixels=max_pixels))


def probe_image(data: bytes, max_pixels: int = shards.DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """(width, height) from the header, with `decode_image`'s header guards and reasons."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as img:
                w, h = shards.shown_size(img)
    except Exception:
        # The header does not read: decoding fails at the same point and names the reason.
        shards.decode_image(data, max_pixels=max_pixels)
        raise shards.BadSampleError(shards.NOT_AN_IMAGE, "unreadable image header") from None
    if w <= 0 or h <= 0 or w * h > max_pixels:
        raise shards.BadSampleError(shards.DECOMPRESSION_BOMB, f"{w}x{h}")
    return w, h


def field_value(meta: dict[str, Any], path: str) -> Any:
    """A dotted path into a sample's json ("scores.richness"); None when absent."""
    cur: Any = meta
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return None
        cur = cur[part]
    return cur


class SampleEncoder:
    """Encodes samples for one model's processor, under one sequence length and tiling.

    Images are tiled by the processor (InternVL dynamic tiling: up to `max_tiles` tiles + a
    thumbnail); each `<image>` placeholder becomes `<img>` + N*tiles context tokens + `</img>`, N
    the processor's image_seq_length. The chat renders as jobs.vlm.model.chat_prompt does for
    generation: the image first in the user turn. A sample whose placeholders do not match its
    images, or that is too long, comes back as `Dropped` with a reason the stage counts.
    """

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
        self._tile_shape: tuple[int, ...] | None = None

    # -- pieces ---------------------------------------------------------------------------
    def tiles(self, image: Image.Image) -> torch.Tensor:
        """The image's tiles (tiles, 3, H, W) by the processor's dynamic tiling."""
        ip = self.processor.image_processor
        out = ip([image], crop_to_patches=self.max_tiles > 1, max_patches=self.max_tiles,
                 return_tensors="pt")
        px: torch.Tensor = out["pixel_values"]
        return px

    def tile_count(self, size: tuple[int, int]) -> int:
        """How many tiles `tiles` makes of an image of this (width, height), without the pixels."""
        w, h = size
        n: int = self.processor.image_processor.get_number_of_image_patches(
            h, w, {"crop_to_patches": self.max_tiles > 1, "max_patches": self.max_tiles})
        return n

    def _image(self, image: Image.Image | ImageRef | None) -> tuple[int, Callable[[], torch.Tensor]] | None:
        """(planned tile count, how to make the tiles) of an image, or None without one."""
        if image is None:
            return None
        ref = image if isinstance(image, ImageRef) else ImageRef.of_image(image)
        return self.tile_count(ref.size), lambda: self.tiles(ref.load())

    def materialize(self, sample: TokenizedSample) -> TokenizedSample | Dropped:
        """Make a planned sample's pixel_values; they must be the planned number of tiles.

        An image whose header read but whose pixels do not decode is found here: Dropped with its
        BadSampleError reason.
        """
        if not sample.planned or sample.load_pixels is None:
            return sample
        try:
            px = sample.load_pixels()
        except shards.BadSampleError as err:  # the header read, the pixels do not
            return Dropped(err.reason, err.detail)
        if int(px.shape[0]) != sample.tiles:
            return Dropped(IMAGE_TOKEN_MISMATCH, f"{int(px.shape[0])} tiles made, {sample.tiles} planned")
        return replace(sample, pixel_values=px, load_pixels=None)

    def blank(self, sample: TokenizedSample) -> TokenizedSample:
        """The sample with no targets and black tiles: its sequence keeps its layout, it teaches nothing."""
        if self._tile_shape is None:
            self._tile_shape = tuple(self.tiles(Image.new("RGB", (8, 8))).shape[1:])
        px = torch.zeros((sample.tiles, *self._tile_shape)) if sample.tiles else None
        return replace(sample, labels=[IGNORE] * len(sample), pixel_values=px, load_pixels=None)

    def _made(self, sample: TokenizedSample | Dropped) -> TokenizedSample | Dropped:
        return sample if isinstance(sample, Dropped) else self.materialize(sample)

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
        tiles = sample.tiles
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
        cut = replace(sample, input_ids=sample.input_ids[:self.seq_len], labels=sample.labels[:self.seq_len],
                      truncated=True)
        if cut.target_tokens == 0:
            return Dropped(TOO_LONG, "no target token left after truncation")
        return cut

    # -- formats --------------------------------------------------------------------------
    def caption(self, image: Image.Image | ImageRef | None, text: str,
                source: str = "") -> TokenizedSample | Dropped:
        """Pretraining sample: image tokens, then the caption + end token as the targets."""
        return self._made(self._caption(image, text, source))

    def text(self, text: str, source: str = "") -> TokenizedSample | Dropped:
        """Pure-text sample (keeps the LLM's language skills in pretraining): all tokens targets."""
        return self.caption(None, text, source)

    def conversation(self, image: Image.Image | ImageRef | None, turns: Sequence[dict[str, Any]],
                     source: str = "") -> TokenizedSample | Dropped:
        """LLaVA turns [{from: human|gpt, value}], `<image>` placeholders; targets: assistant turns."""
        return self._made(self._conversation(image, turns, source))

    def _caption(self, image: Image.Image | ImageRef | None, text: str,
                 source: str) -> TokenizedSample | Dropped:
        text = text.strip()
        if not text:
            return Dropped(NO_TEXT)
        pending = self._image(image)
        tiles = pending[0] if pending else 0
        prefix = self._with_images(self.image_token + "\n", [tiles]) if pending else []
        if self.image_token in text:
            return Dropped(IMAGE_TOKEN_MISMATCH, "image token inside the caption text")
        target = [*self._ids(text), self.eos_id]
        return self._check(TokenizedSample([*prefix, *target], [IGNORE] * len(prefix) + target, None, source,
                                           tiles=tiles, load_pixels=pending[1] if pending else None))

    def _conversation(self, image: Image.Image | ImageRef | None, turns: Sequence[dict[str, Any]],
                      source: str) -> TokenizedSample | Dropped:
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
        pending = self._image(image)
        tiles = [pending[0]] if pending else []
        try:
            ids, labels = self._turn_tokens(messages, tiles)
        except _Mismatch as err:
            return Dropped(IMAGE_TOKEN_MISMATCH, str(err))
        return self._check(TokenizedSample(ids, labels, None, source, tiles=sum(tiles),
                                           load_pixels=pending[1] if pending else None))

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
    def encode(self, meta: dict[str, Any], image: Image.Image | ImageRef | None, fmt: Format = "auto", *,
               text_fields: Sequence[str] = ("recaption", "caption", "text"), prompt: str | None = None,
               source: str = "") -> TokenizedSample | Dropped:
        """One sample's json (+ image) in the mix entry's format, pixel_values made."""
        return self._made(self.plan(meta, image, fmt, text_fields=text_fields, prompt=prompt, source=source))

    def plan(self, meta: dict[str, Any], image: Image.Image | ImageRef | None, fmt: Format = "auto", *,
             text_fields: Sequence[str] = ("recaption", "caption", "text"), prompt: str | None = None,
             source: str = "") -> TokenizedSample | Dropped:
        """Like `encode`, but the pixels are left to `materialize`: tokens and tile count only.

        The tile count needs only the image's size (an ImageRef reads it from the header), so
        training ranks can pack every sample and decode only the images of their own sequences.
        """
        if fmt == "auto":
            fmt = "conversation" if "conversations" in meta else "caption"
        if fmt == "conversation":
            turns = meta.get("conversations")
            if not isinstance(turns, list) or not turns:
                return Dropped(BAD_CONVERSATION, "no conversations list")
            return self._conversation(image, turns, source)
        texts = (meta.get(f) for f in text_fields)
        text = next((t for t in texts if isinstance(t, str) and t.strip()), "")
        if not text:
            return Dropped(NO_TEXT, f"none of {list(text_fields)}")
        if fmt == "text":
            return self._caption(None, text, source)
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
            return self._conversation(image, turns, source)
        return self._caption(image, text, source)


class _Mismatch(ValueError):
    """Placeholders and images disagree (caught by callers as IMAGE_TOKEN_MISMATCH)."""
