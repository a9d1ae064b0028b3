"""Lazy pixels: packing plans from header sizes, a rank decodes and tiles only its own sequences."""

from __future__ import annotations

import io
import itertools
import json
import random
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import structlog
import torch
from PIL import Image

from jobs.core import shards as sh
from jobs.training.encoding import IMAGE_TOKEN_MISMATCH, Dropped, ImageRef, SampleEncoder, probe_image
from jobs.training.mixstream import MixStream
from jobs.training.packing import IGNORE, Bin, StreamPacker, TokenizedSample, collate_packed
from jobs.training.train import Trainer
from jobs.vlm import model as vlm
from sailk8s.errors import InputError
from sailk8s.stageconfig.training import MixEntry
from sailk8s.store.local import LocalStore
from sailk8s.testing.stores import CountingStore

torch.set_num_threads(1)

SEQ_LEN = 256
MAX_TILES = 4


@pytest.fixture(scope="module")
def processor() -> vlm.VLMProcessor:
    return vlm.build_model("tiny")[1]


@pytest.fixture(scope="module")
def encoder(processor: vlm.VLMProcessor) -> SampleEncoder:
    return SampleEncoder(processor, seq_len=SEQ_LEN, max_tiles=MAX_TILES)


def _image(w: int, h: int, seed: int) -> Image.Image:
    g = torch.Generator().manual_seed(seed)
    arr = (torch.rand((h, w, 3), generator=g) * 255).to(torch.uint8).numpy()
    return Image.fromarray(arr, "RGB")


def _encoded(img: Image.Image, fmt: str) -> bytes:
    return sh.encode_image(img, fmt)


def _samples(n: int, seed: int = 0) -> list[sh.Sample]:
    """Caption and conversation samples with images of many sizes and aspect ratios."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        w, h = rng.choice([(64, 64), (200, 50), (40, 160), (130, 70), (16, 90), (300, 120)])
        ext = "png" if i % 2 else "jpg"
        vocab = ["red", "blue", "a", "digit", "cat", "big"]
        words = " ".join(rng.choice(vocab) for _ in range(rng.randint(3, 30)))
        meta: dict[str, Any] = {"caption": words} if i % 3 else {"conversations": [
            {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": words}]}
        out.append(sh.Sample(f"s{i:04d}", meta, ext, {ext: _encoded(_image(w, h, i), ext)}))
    return out


def _store(tmp_path: Path, samples: list[sh.Sample]) -> LocalStore:
    root = tmp_path / "store"
    (root / "data/mix").mkdir(parents=True)
    for k in range(0, len(samples), 16):
        with sh.ShardWriter(root / f"data/mix/{sh.shard_name(k // 16)}") as w:
            w.write_all(samples[k:k + 16])
    return LocalStore(root)


def _trainer(packing: bool = True) -> Trainer:
    """A Trainer with just the state its data path uses (no stage, no model)."""
    t = Trainer.__new__(Trainer)
    t.cfg = SimpleNamespace(seq_len=SEQ_LEN, packing=packing)  # type: ignore[assignment]
    t.dropped, t.lost = Counter(), Counter()
    t.log = structlog.get_logger("test")
    return t


def _sub(prefix: str = "data/mix") -> Any:
    return SimpleNamespace(mix=[MixEntry(prefix=prefix)])


class _Counting:
    """Wraps SampleEncoder.tiles to count the images actually tiled (the pixel work)."""

    def __init__(self, enc: SampleEncoder, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        real = enc.tiles

        def tiles(image: Image.Image) -> torch.Tensor:
            self.calls += 1
            return real(image)

        monkeypatch.setattr(enc, "tiles", tiles)


def test_tile_count_from_the_size_matches_the_tiles_made(encoder: SampleEncoder) -> None:
    rng = random.Random(1)
    sizes = [(64, 64), (1, 300), (300, 1), (65, 64), (127, 31)] + \
        [(rng.randint(1, 400), rng.randint(1, 400)) for _ in range(40)]
    for max_tiles in (1, 2, MAX_TILES, 6):
        enc = SampleEncoder(encoder.processor, seq_len=SEQ_LEN, max_tiles=max_tiles)
        for w, h in sizes:
            assert enc.tile_count((w, h)) == enc.tiles(Image.new("RGB", (w, h))).shape[0], (max_tiles, w, h)


def test_plan_then_materialize_equals_encode(encoder: SampleEncoder) -> None:
    for s in _samples(12):
        eager = encoder.encode(s.meta, s.decode(), text_fields=["caption"])
        planned = encoder.plan(s.meta, ImageRef.of_bytes(s.image_bytes), text_fields=["caption"])
        assert isinstance(eager, TokenizedSample) and isinstance(planned, TokenizedSample)
        assert planned.planned and planned.pixel_values is None and planned.tiles >= 1
        assert planned.input_ids == eager.input_ids and planned.labels == eager.labels
        made = encoder.materialize(planned)
        assert isinstance(made, TokenizedSample) and not made.planned
        assert eager.pixel_values is not None and made.pixel_values is not None
        assert torch.equal(made.pixel_values, eager.pixel_values)
        assert made.tiles == made.pixel_values.shape[0]


def test_a_planned_sample_cannot_be_collated(encoder: SampleEncoder) -> None:
    s = _samples(2)[1]
    planned = encoder.plan(s.meta, ImageRef.of_bytes(s.image_bytes), text_fields=["caption"])
    assert isinstance(planned, TokenizedSample)
    with pytest.raises(ValueError, match="materialize"):
        collate_packed([Bin([planned], len(planned))], SEQ_LEN, encoder.pad_id)


def test_tiles_other_than_planned_are_an_image_token_mismatch(encoder: SampleEncoder) -> None:
    s = _samples(2)[1]
    planned = encoder.plan(s.meta, ImageRef((64, 64), lambda: Image.new("RGB", (300, 60))),
                           text_fields=["caption"])
    assert isinstance(planned, TokenizedSample) and planned.tiles == 1
    out = encoder.materialize(planned)
    assert isinstance(out, Dropped) and out.reason == IMAGE_TOKEN_MISMATCH and "planned" in out.detail


@pytest.mark.parametrize("data", [b"", b"not an image at all", b"\x89PNG\r\n\x1a\n\x00\x00"])
def test_header_probe_fails_with_the_reason_decoding_gives(data: bytes) -> None:
    with pytest.raises(sh.BadSampleError) as decoded:
        sh.decode_image(data)
    with pytest.raises(sh.BadSampleError) as probed:
        probe_image(data)
    assert probed.value.reason == decoded.value.reason


def test_header_probe_refuses_a_decompression_bomb_without_decoding() -> None:
    big = _encoded(Image.new("RGB", (3000, 3000)), "png")
    with pytest.raises(sh.BadSampleError) as err:
        probe_image(big, max_pixels=1_000_000)
    assert err.value.reason == sh.DECOMPRESSION_BOMB


def test_pixels_that_do_not_decode_are_found_at_materialize(encoder: SampleEncoder) -> None:
    good = _encoded(_image(120, 80, 3), "png")
    cut = good[:len(good) // 2]
    assert probe_image(cut) == (120, 80)  # the header reads
    planned = encoder.plan({"caption": "a cut image"}, ImageRef.of_bytes(cut), text_fields=["caption"])
    assert isinstance(planned, TokenizedSample)
    out = encoder.materialize(planned)
    assert isinstance(out, Dropped) and out.reason == sh.TRUNCATED_IMAGE


def test_bins_are_the_eager_bins_and_a_rank_tiles_only_its_own(
        encoder: SampleEncoder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples = _samples(48)
    store = _store(tmp_path, samples)
    # The eager path (decode + encode every sample, then pack) is the reference.
    by_key = {s.key: s for s in samples}
    packer = StreamPacker(SEQ_LEN)
    eager: list[Bin] = []
    for _, s in MixStream(store, _sub().mix):
        enc = encoder.encode(by_key[s.key].meta, s.decode(), source="data/mix")
        assert isinstance(enc, TokenizedSample)
        eager += packer.add(enc)
        if len(eager) >= 24:
            break

    counting = _Counting(encoder, monkeypatch)
    decodes = Counter[str]()
    real_decode = sh.decode_image

    def decode(data: bytes, max_pixels: int = sh.DEFAULT_MAX_PIXELS) -> Image.Image:
        decodes["n"] += 1
        return real_decode(data, max_pixels)

    monkeypatch.setattr(sh, "decode_image", decode)
    trainer = _trainer()
    bins = trainer.bins(_sub(), encoder, MixStream(store, _sub().mix))
    replayed = [next(bins) for _ in range(8)]  # what a resume replays: planning only
    assert counting.calls == 0 and decodes["n"] == 0
    world, per_rank = 4, 4
    step = [next(bins) for _ in range(world * per_rank)]
    lazy = replayed + step
    ids = [[x.input_ids for x in b.items] for b in lazy]
    assert ids == [[x.input_ids for x in b.items] for b in eager[:24]]
    assert [b.used for b in lazy] == [b.used for b in eager[:24]]
    rank = 2
    own = step[rank * per_rank:(rank + 1) * per_rank]
    mine, blanked = trainer.materialize(own, encoder)
    images = sum(1 for b in own for s in b.items if s.tiles)
    assert images > 0 and counting.calls == images and decodes["n"] == images
    assert blanked == 0 and not trainer.lost
    ref = eager[8 + rank * per_rank:8 + (rank + 1) * per_rank]
    ours, theirs = collate_packed(mine, SEQ_LEN, encoder.pad_id), collate_packed(ref, SEQ_LEN, encoder.pad_id)
    assert ours.keys() == theirs.keys()
    for k in ours:
        assert torch.equal(ours[k], theirs[k]), k


def test_a_sample_whose_pixels_fail_is_blanked_on_its_rank(encoder: SampleEncoder, tmp_path: Path) -> None:
    samples = _samples(6)
    good = samples[1]
    assert good.image_ext is not None
    cut = good.files[good.image_ext][:len(good.files[good.image_ext]) // 2]
    samples[1] = sh.Sample(good.key, good.meta, good.image_ext, {good.image_ext: cut})
    store = _store(tmp_path, samples)
    trainer = _trainer(packing=False)  # one sample per row: the cut sample is a sequence of its own
    stream = trainer.bins(_sub(), encoder, MixStream(store, _sub().mix))
    bins = [next(stream) for _ in range(6)]
    victim = next(b for b in bins if b.items[0].input_ids == encoder.plan(
        good.meta, good.decode(), text_fields=["caption"]).input_ids)  # type: ignore[union-attr]
    mine, blanked = trainer.materialize(bins, encoder)
    assert trainer.lost == Counter({sh.TRUNCATED_IMAGE: 1})
    assert blanked == victim.items[0].target_tokens > 0
    out = mine[bins.index(victim)].items[0]
    assert len(out) == len(victim.items[0]) and all(x == IGNORE for x in out.labels)
    assert out.pixel_values is not None and out.pixel_values.shape[0] == victim.items[0].tiles
    assert not out.pixel_values.any()
    # Every other sample is made as usual.
    assert all(s.pixel_values is not None and s.labels != [IGNORE] * len(s)
               for i, b in enumerate(mine) if b is not mine[bins.index(victim)] for s in b.items)


def test_probe_reads_no_pixels() -> None:
    """The header probe of a large image costs a tiny fraction of decoding it."""
    import time

    data = io.BytesIO()
    _image(1500, 1000, 7).save(data, format="PNG")
    raw = data.getvalue()
    # This thread's CPU time, not wall time: on a busy machine a preemption would land in either loop.
    t0 = time.thread_time()
    for _ in range(20):
        probe_image(raw)
    probe = time.thread_time() - t0
    t0 = time.thread_time()
    for _ in range(3):
        sh.decode_image(raw)
    decode = (time.thread_time() - t0) / 3 * 20
    assert probe < decode / 10


@pytest.mark.slow
def test_lazy_pixels_benchmark_quick_run_reports_both_sides() -> None:
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, str(root / "benchmarks/lazy_pixels.py"), "--quick"],
                          capture_output=True, text=True, cwd=root, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = json.loads(proc.stdout.strip().splitlines()[-1])
    assert line["benchmark"] == "lazy_pixels" and line["ours"] > 0 and line["baseline"] > 0
    assert line["ratio"] == pytest.approx(line["ours"] / line["baseline"], rel=0.01)


def _cut_store(store: Path) -> str:
    """data/cut: six reference samples, one of them a PNG cut in half (header fine, pixels not)."""
    prefix = "data/cut"
    if (store / prefix).exists():
        return prefix
    src = sorted((store / "data/samples/reference").glob("*.tar"))[0]
    picked = [s for s in sh.read_shard(src) if isinstance(s, sh.Sample) and s.image_ext == "png"][:6]
    # Damage one of the longest samples ("medium-width" strokes: the most tokens): the packer
    # emits its fullest sequences first, so that one is trained within the test's few steps.
    at = next(i for i, p in enumerate(picked) if "medium-width" in p.meta["caption"])
    raw = picked[at].image_bytes
    picked[at] = sh.Sample(picked[at].key, picked[at].meta, "png", {"png": raw[:len(raw) // 2]})
    probe_image(picked[at].image_bytes)  # the header reads: only materializing finds the damage
    (store / prefix).mkdir(parents=True)
    with sh.ShardWriter(store / prefix / sh.shard_name(0)) as w:
        w.write_all(picked)
    return prefix


@pytest.mark.slow
def test_blanked_samples_give_the_same_losses_and_counts_on_one_and_two_ranks(sample_store: Path) -> None:

    from train_helpers import read_json, run_stage, run_stage_torchrun

    prefix = _cut_store(sample_store)

    def spec(name: str) -> dict[str, Any]:
        return {"name": name, "kind": "pretrain", "inputs": [prefix], "outputs": [f"models/{name}"],
                "config": {"seq_len": 128, "checkpoint_every": 100, "deepspeed": False, "substages": [
                    {"name": "advance", "train": ["projector", "vision", "llm"], "max_steps": 3,
                     "global_batch": 4, "micro_batch": 2, "lr": 1e-3,
                     "mix": [{"prefix": prefix, "text_fields": ["caption"]}]}]}}

    one = run_stage(sample_store, spec("cut-w1"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_stage_torchrun(sample_store, spec("cut-w2"))
    assert two.returncode == 0, two.stderr[-3000:]
    r1 = read_json(sample_store, "runs/t/cut-w1/report.json")
    r2 = read_json(sample_store, "runs/t/cut-w2/report.json")
    blanked = r1["substages"][0]["dropped"].get(sh.TRUNCATED_IMAGE, 0)
    assert blanked >= 1, r1["substages"][0]["dropped"]
    assert r2["substages"][0]["dropped"] == r1["substages"][0]["dropped"]
    assert [loss for _, loss in r2["losses"]] == pytest.approx([loss for _, loss in r1["losses"]], rel=1e-5)
    assert "sample blanked" in one.stderr


@pytest.mark.parametrize("packing", [True, False])
def test_a_restored_data_position_continues_exactly_reading_a_few_shards(
        encoder: SampleEncoder, tmp_path: Path, packing: bool) -> None:
    store = _store(tmp_path, _samples(96))  # 6 shards; 140 sequences cross into a second epoch
    (tmp_path / "store/data/mix2").mkdir()
    with sh.ShardWriter(tmp_path / "store/data/mix2/shard-000000.tar") as w:
        w.write_all(_samples(16, seed=7))
    sub = SimpleNamespace(mix=[MixEntry(prefix="data/mix", weight=2.0), MixEntry(prefix="data/mix2")])
    total = 140
    reference = [[x.input_ids for x in b.items] for b in itertools.islice(
        _trainer(packing).bins(sub, encoder, MixStream(store, sub.mix, seed=5)), total)]
    for at in (13, 97):
        replay = CountingStore(store)
        first = _trainer(packing).bins(sub, encoder, MixStream(replay, sub.mix, seed=5))
        for _ in range(at):
            next(first)
        saved = json.loads(json.dumps(first.state()))  # what a checkpoint stores
        held = {(i, shard) for group in ("open", "pending") for b in saved[group] for i, shard, _ in b}
        counting = CountingStore(store)
        resumed = _trainer(packing).bins(sub, encoder, MixStream(counting, sub.mix, seed=5))
        resumed.restore(saved)
        # The restore reads the shards of the samples the packer held, nothing else; a replay
        # reads every shard it passes (6 + 1 per epoch), so it grows with the position.
        assert counting.calls["get"] == resumed.shards_read_on_restore == len(held)
        if at == 97:
            assert counting.calls["get"] < replay.calls["get"], (counting.calls, replay.calls)
        rest = [[x.input_ids for x in b.items] for b in itertools.islice(resumed, total - at)]
        assert rest == reference[at:], at


def test_a_position_whose_samples_are_gone_is_a_clear_input_error(
        encoder: SampleEncoder, tmp_path: Path) -> None:
    store = _store(tmp_path, _samples(32))
    first = _trainer().bins(_sub(), encoder, MixStream(store, _sub().mix))
    next(first)
    saved = first.state()
    assert saved["open"], "the packer holds open sequences"
    for key in list(store.list("data/mix/")):
        with sh.ShardWriter(store.root / key) as w:  # the data was rewritten since the checkpoint
            w.write_all(_samples(16, seed=99))
    resumed = _trainer().bins(_sub(), encoder, MixStream(store, _sub().mix))
    with pytest.raises(InputError, match="cannot resume the data position: sample 's00"):
        resumed.restore(saved)
