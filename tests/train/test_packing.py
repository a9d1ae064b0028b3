"""Packing: plans fill sequences, positions restart per sample, loss equals the unpacked batch."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from jobs.training.packing import (
    IGNORE,
    StreamPacker,
    TokenizedSample,
    collate_packed,
    collate_padded,
    fill_rate,
)

torch.set_num_threads(1)


def _sample(n: int, seed: int, vocab: int = 50) -> TokenizedSample:
    rng = random.Random(seed)
    ids = [rng.randrange(5, vocab) for _ in range(n)]
    labels = [IGNORE] * (n // 3) + ids[n // 3:]
    return TokenizedSample(ids, labels)


def test_packer_keeps_every_sample_once_and_never_overfills() -> None:
    samples = [_sample(n, i) for i, n in enumerate(random.Random(0).choices(range(3, 60), k=300))]
    bins = list(StreamPacker(64, window=8).pack(samples))
    packed = [s for b in bins for s in b.items]
    assert sorted(map(id, packed)) == sorted(map(id, samples))
    assert all(b.used == sum(len(s) for s in b.items) <= 64 for b in bins)
    batch = collate_packed(bins, 64, pad_id=0)
    assert fill_rate([batch]) > 0.9


def test_window_one_is_next_fit_and_worse() -> None:
    samples = [_sample(n, i) for i, n in enumerate(random.Random(1).choices(range(10, 50), k=200))]
    nf = collate_packed(list(StreamPacker(64, window=1).pack(samples)), 64, 0)
    bf = collate_packed(list(StreamPacker(64, window=16).pack(samples)), 64, 0)
    assert fill_rate([bf]) > fill_rate([nf])


def test_a_sequence_open_for_max_age_samples_leaves() -> None:
    packer = StreamPacker(64, window=4, max_age=10)
    closed = packer.add(_sample(40, 0))  # room 24 left: only samples of <= 24 tokens fit it
    for i in range(9):
        closed += packer.add(_sample(30, i + 1))  # none fits the first; they pair up elsewhere
    assert any(b.used == 40 for b in packer.open)  # 9 samples later it is still open
    closed += packer.add(_sample(30, 10))
    first = [b for b in closed if b.items[0].input_ids == _sample(40, 0).input_ids]
    assert len(first) == 1 and first[0].used == 40  # emitted 10 samples after it opened, never full
    assert all(packer.seen - b.born < 10 for b in packer.open)


def test_too_long_sample_is_refused() -> None:
    with pytest.raises(ValueError, match="exceeds seq_len"):
        StreamPacker(8).add(_sample(9, 0))


def test_positions_restart_and_first_token_of_each_sample_is_not_a_target() -> None:
    a, b = _sample(5, 1), _sample(4, 2)
    batch = collate_packed(list(StreamPacker(12).pack([a, b])), 12, pad_id=0)
    assert batch["position_ids"][0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 3, 0, 1, 2]
    assert batch["labels"][0, 5].item() == IGNORE
    assert int(batch["real_tokens"]) == 9


def _loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    inputs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids", "attention_mask")}
    logits = model(**inputs, use_cache=False).logits
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1),
                           ignore_index=IGNORE, reduction="sum")


@pytest.mark.parametrize("per_sample_attention", [False, True])
def test_packed_loss_and_grads_equal_unpacked_on_a_real_qwen2(per_sample_attention: bool) -> None:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from jobs.vlm.attention import use_packed_attention

    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, intermediate_size=64))
    if per_sample_attention:
        use_packed_attention(model)
    samples = [_sample(n, i, vocab=64) for i, n in enumerate([7, 12, 5, 9, 15, 3])]
    packed = collate_packed(list(StreamPacker(32).pack(samples)), 32, pad_id=0)
    padded = collate_padded(samples, pad_id=0)
    lp = _loss(model, packed)
    gp = torch.autograd.grad(lp, list(model.parameters()))
    lu = _loss(model, padded)
    gu = torch.autograd.grad(lu, list(model.parameters()))
    assert int(packed["target_tokens"]) == int(padded["target_tokens"])
    assert torch.allclose(lp, lu, atol=1e-5, rtol=1e-5)
    assert all(torch.allclose(x, y, atol=1e-5, rtol=1e-4) for x, y in zip(gp, gu, strict=True))
