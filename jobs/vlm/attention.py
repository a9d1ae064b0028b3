"""Per-sample attention for packed sequences on CPU ("varlen" attention without flash-attn)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

NAME = "sail_packed_sdpa"


@dataclass(frozen=True)
class Plan:
    """Where the attention pieces of a (B, L) micro batch are: samples, and padding left out."""

    batch: int
    length: int
    # (row, start, end, is_sample): a sample attends causally within itself; padding gets zeros.
    pieces: tuple[tuple[int, int, int, bool], ...]


def make_plan(pos: torch.Tensor | None, mask: torch.Tensor | None, batch: int, length: int) -> Plan:
    """Cut each row at its position-id restarts (a sample starts where positions restart at 0).

    `mask` is a 2D right-padding mask (1 = real token) or None; the padded tail of a row is
    left out of attention. A left-padded mask (generation) is refused: it would be cut wrongly.
    """
    if mask is not None:
        valid = mask.sum(dim=-1)
        if not torch.equal(mask.bool(), torch.arange(length, device=mask.device) < valid[:, None]):
            raise ValueError("packed attention needs right padding (1s then 0s in the attention mask)")
        valids = [int(v) for v in valid.tolist()]
    else:
        valids = [length] * batch
    if pos is None:
        starts = torch.zeros((batch, length), dtype=torch.bool, device=None if mask is None else mask.device)
    else:
        starts = (pos == 0).expand(batch, length).clone()
    starts[:, 0] = True
    by_row: list[list[int]] = [[] for _ in range(batch)]
    for row, col in starts.nonzero().tolist():  # one host sync per forward pass, not per layer
        if col < valids[row]:
            by_row[row].append(col)
    pieces: list[tuple[int, int, int, bool]] = []
    for row, cols in enumerate(by_row):
        ends = [*cols[1:], valids[row]]
        pieces.extend((row, s, e, True) for s, e in zip(cols, ends, strict=True))
        if valids[row] < length:
            pieces.append((row, valids[row], length, False))
    return Plan(batch, length, tuple(pieces))


class _PlanCache:
    """The last plan, reused while the same position-id tensor comes back (the next layer)."""

    def __init__(self) -> None:
        # Holding the tensors keeps their memory from being reused, so `is` identity is safe;
        # the version counters catch an in-place change.
        self.pos: torch.Tensor | None = None
        self.mask: torch.Tensor | None = None
        self.versions: tuple[int, int, int, int] = (-1, -1, -1, -1)
        self.plan: Plan | None = None

    def get(self, pos: torch.Tensor | None, mask: torch.Tensor | None, batch: int, length: int) -> Plan:
        """The plan for these inputs: the cached one when they are the very same tensors."""
        versions = (-1 if pos is None else pos._version, -1 if mask is None else mask._version, batch, length)
        if self.plan is None or pos is not self.pos or mask is not self.mask or versions != self.versions:
            self.plan = make_plan(pos, mask, batch, length)
            self.pos, self.mask, self.versions = pos, mask, versions
        return self.plan


_CACHE = _PlanCache()


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention per packed sample; query/key/value are (B, heads, L, D); returns (B, L, heads, D).

    With packing, transformers' sdpa path still computes the full L x L attention of each row
    under a block-diagonal mask; flash-attn's varlen kernels skip the blocks, but there is no
    flash-attn on CPU (nor a CPU sdpa kernel for jagged nested tensors). Cutting the batch at its
    position-id restarts costs sum(n_i^2) instead of L^2, with the same result. The plan is made
    once per forward pass (every layer gets the same `position_ids` tensor), and the outputs are
    joined by ONE concatenation straight into the caller's layout.
    """
    if query.shape[2] != key.shape[2] or (attention_mask is not None and attention_mask.dim() != 2):
        # Generation with a cache, or a 4D mask: the regular path handles those.
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    batch, heads, length, dim = query.shape
    pos = kwargs.get("position_ids")
    plan = _CACHE.get(pos, attention_mask, batch, length)
    gqa = heads != key.shape[1]
    drop = dropout if module.training else 0.0
    parts = []
    for row, s, e, is_sample in plan.pieces:
        if is_sample:
            parts.append(F.scaled_dot_product_attention(
                query[row:row + 1, :, s:e], key[row:row + 1, :, s:e], value[row:row + 1, :, s:e],
                is_causal=True, scale=scaling, dropout_p=drop, enable_gqa=gqa))
        else:  # padding: attends nowhere, contributes nothing
            parts.append(query.new_zeros(1, heads, e - s, dim))
    # The pieces tile the rows in order, so the (1, heads, B*L, D) join is (heads, B, L, D).
    out = torch.cat(parts, dim=2).view(heads, batch, length, dim).permute(1, 2, 0, 3)
    return out.contiguous(), None


AttentionInterface.register(NAME, packed_sdpa)
# No 4D mask is built for it: None when unpadded, else the 2D padding mask (as for flash-attn).
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)


def use_packed_attention(model: torch.nn.Module) -> None:
    """Switch a VLM's language model (or a plain causal LM) to per-sample packed attention (call once)."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    if text is not None:
        text._attn_implementation = NAME
