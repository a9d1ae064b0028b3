"""Per-sample attention for packed sequences on CPU ("varlen" attention without flash-attn).

With packing, transformers' sdpa path builds a block-diagonal mask and still computes the full
L x L attention of each packed row; flash-attn's varlen kernels skip the blocks, but there is
no flash-attn on CPU. `sail_packed_sdpa` cuts each row at its position-id restarts and runs
causal sdpa per sample, so attention costs sum(n_i^2) instead of L^2, with the same result.

    use_packed_attention(model)   # the text model of a VLM switches to it (call once)
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, flash_attention_mask

NAME = "sail_packed_sdpa"


def _segments(pos: torch.Tensor | None, length: int, valid: int) -> list[tuple[int, int]]:
    """(start, end) of each sample in a row: position ids restart at 0 where a sample starts."""
    if pos is None:
        return [(0, valid)]
    starts = [i for i in (pos == 0).nonzero().flatten().tolist() if i < valid] or [0]
    if starts[0] != 0:
        starts.insert(0, 0)
    return list(zip(starts, [*starts[1:], valid], strict=True))


def packed_sdpa(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
                **kwargs: Any) -> tuple[torch.Tensor, None]:
    """Causal attention per packed sample; query/key/value are (B, heads, L, D)."""
    if query.shape[2] != key.shape[2] or (attention_mask is not None and attention_mask.dim() != 2):
        # Generation with a cache, or a 4D mask: the regular path handles those.
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling,
                                      dropout=dropout, **kwargs)
    pos = kwargs.get("position_ids")
    batch, _, length, _ = query.shape
    gqa = query.shape[1] != key.shape[1]
    drop = dropout if module.training else 0.0
    rows = []
    for b in range(batch):
        valid = int(attention_mask[b].sum()) if attention_mask is not None else length
        row_pos = pos[b if pos.shape[0] > 1 else 0] if pos is not None else None
        pieces = [F.scaled_dot_product_attention(query[b:b + 1, :, s:e], key[b:b + 1, :, s:e],
                                                 value[b:b + 1, :, s:e], is_causal=True, scale=scaling,
                                                 dropout_p=drop, enable_gqa=gqa)
                  for s, e in _segments(row_pos, length, valid)]
        if valid < length:  # padding: attends nowhere, contributes nothing
            pieces.append(query.new_zeros(1, query.shape[1], length - valid, query.shape[3]))
        rows.append(torch.cat(pieces, dim=2))
    out = torch.cat(rows, dim=0)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register(NAME, packed_sdpa)
# No 4D mask is built for it: None when unpadded, else the 2D padding mask (as for flash-attn).
ALL_MASK_ATTENTION_FUNCTIONS.register(NAME, flash_attention_mask)


def use_packed_attention(model: torch.nn.Module) -> None:
    """Switch a VLM's language model (or a plain causal LM) to per-sample packed attention."""
    config = getattr(model, "config", None)
    text = getattr(config, "text_config", None) or config
    if text is not None:
        text._attn_implementation = NAME
