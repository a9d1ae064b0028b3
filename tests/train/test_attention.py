"""Per-sample packed attention: the plan cuts rows right, the result equals attention per sample."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from jobs.vlm import attention

torch.set_num_threads(1)


def test_plan_cuts_at_position_restarts_and_leaves_padding_out() -> None:
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2], [0, 1, 2, 3, 0, 1, 0, 1]])
    mask = torch.tensor([[1] * 8, [1, 1, 1, 1, 1, 0, 0, 0]])
    plan = attention.make_plan(pos, mask, 2, 8)
    assert plan.pieces == ((0, 0, 3, True), (0, 3, 5, True), (0, 5, 8, True),
                           (1, 0, 4, True), (1, 4, 5, True), (1, 5, 8, False))
    # No position ids: one sample per row.
    assert attention.make_plan(None, None, 2, 4).pieces == ((0, 0, 4, True), (1, 0, 4, True))


def test_left_padding_is_refused() -> None:
    with pytest.raises(ValueError, match="right padding"):
        attention.make_plan(None, torch.tensor([[0, 1, 1]]), 1, 3)


def test_packed_sdpa_equals_attention_of_each_sample_alone() -> None:
    g = torch.Generator().manual_seed(0)
    lengths = [[5, 9, 2], [7, 4]]  # row 1 ends in 5 pad positions
    length = 16
    q = torch.randn(2, 4, length, 8, generator=g, requires_grad=True)
    k = torch.randn(2, 2, length, 8, generator=g, requires_grad=True)  # grouped-query heads
    v = torch.randn(2, 2, length, 8, generator=g, requires_grad=True)
    pos = torch.zeros(2, length, dtype=torch.long)
    mask = torch.zeros(2, length, dtype=torch.long)
    for r, ns in enumerate(lengths):
        pos[r, :sum(ns)] = torch.cat([torch.arange(n) for n in ns])
        mask[r, :sum(ns)] = 1
    module = torch.nn.Module()
    out, _ = attention.packed_sdpa(module, q, k, v, mask, scaling=0.3, position_ids=pos)
    assert out.shape == (2, length, 4, 8)
    for r, ns in enumerate(lengths):
        at = 0
        for n in ns:
            sl = slice(at, at + n)
            ref = F.scaled_dot_product_attention(q[r:r + 1, :, sl], k[r:r + 1, :, sl].repeat_interleave(2, 1),
                                                 v[r:r + 1, :, sl].repeat_interleave(2, 1), is_causal=True,
                                                 scale=0.3)
            assert torch.allclose(out[r, sl], ref[0].transpose(0, 1), atol=1e-6)
            at += n
        assert torch.count_nonzero(out[r, at:]) == 0  # padding attends nowhere
    out.sum().backward()  # gradients flow through the joined pieces
    assert q.grad is not None and torch.isfinite(q.grad).all()


def test_plan_is_made_once_per_position_tensor_and_redone_after_a_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = attention.make_plan
    monkeypatch.setattr(attention, "make_plan", lambda *a: calls.append(a) or real(*a))
    monkeypatch.setattr(attention, "_CACHE", attention._PlanCache())
    q = torch.randn(1, 2, 6, 4)
    pos = torch.tensor([[0, 1, 2, 0, 1, 2]])
    module = torch.nn.Module()
    first, _ = attention.packed_sdpa(module, q, q, q, None, position_ids=pos)
    attention.packed_sdpa(module, q, q, q, None, position_ids=pos)  # the next layer
    assert len(calls) == 1
    pos[0, 3:] = torch.tensor([3, 4, 5])  # now one sample: the plan must follow
    whole, _ = attention.packed_sdpa(module, q, q, q, None, position_ids=pos)
    assert len(calls) == 2
    ref = F.scaled_dot_product_attention(q, q, q, is_causal=True)[0].transpose(0, 1)
    assert torch.allclose(whole[0], ref, atol=1e-6)
    assert not torch.allclose(first[0, 3:], ref[3:], atol=1e-4)
