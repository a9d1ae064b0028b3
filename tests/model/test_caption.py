"""The caption stage: config, prompts, in-process runs over real shards, bad input, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from captionkit import make_input_shards, open_file_store, put_shard, read_outputs, stage_env

from jobs import caption
from jobs.core.shards import Sample, encode_image
from jobs.filters.captionquality import normalize
from jobs.vlm.model import save_model
from sailk8s import exitcodes
from sailk8s.errors import ConfigError, InputError, QualityError
from sailk8s.exitcodes import exit_code_for
from sailk8s.stageconfig import parse_stage_config
from sailk8s.stageconfig.caption import Config


@pytest.fixture()
def noisy_model_uri(noisy_tiny, tmp_path: Path) -> str:
    """The noisy tiny model exported to a file:// store prefix (so captions are not empty)."""
    model, processor = noisy_tiny
    local = save_model(model, processor, tmp_path / "export")
    uri, store = open_file_store(tmp_path / "models")
    for f in sorted(local.iterdir()):
        store.put_file(f"captioner/{f.name}", f)
    return f"{uri}/captioner"


@pytest.fixture(autouse=True)
def _model_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAIL_MODEL_CACHE", str(tmp_path / "model-cache"))


def run_stage(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> None:
    """Run the stage entry in this process with env as its contract."""
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    caption.run()


# --------------------------------------------------------------------------- config
def test_config_defaults_and_strictness() -> None:
    cfg = Config(preset="tiny")
    assert cfg.mode == "recaption" and cfg.batch_size == 16 and cfg.dtype == "auto"
    assert cfg.captioner() == "preset:tiny"
    assert Config(model="s3://b/m").captioner() == "s3://b/m"
    with pytest.raises(ValueError, match="set `model`"):
        parse_stage_config("caption", {})
    with pytest.raises(ValueError, match=r"config\.batchsize: unknown field"):
        parse_stage_config("caption", {"batchsize": 4})
    with pytest.raises(ValueError, match="set only one of `model`"):
        parse_stage_config("caption", {"model": "/m", "preset": "tiny"})
    with pytest.raises(ValueError, match=r"config\.batch_size: .*greater than or equal to 1"):
        parse_stage_config("caption", {"batch_size": 0})
    with pytest.raises(ValueError, match=r"config\.mode: .*'caption' or 'recaption'"):
        parse_stage_config("caption", {"mode": "describe"})


def test_prompt_templates_are_checked() -> None:
    with pytest.raises(ValueError, match=r"recaption_prompt: unknown template field\(s\) \['title'\]"):
        parse_stage_config("caption", {"recaption_prompt": "{title}: {alt_text}"})
    with pytest.raises(ValueError, match=r"caption_prompt: caption mode has no fields"):
        parse_stage_config("caption", {"caption_prompt": "Describe {alt_text}"})
    with pytest.raises(ValueError, match=r"recaption_prompt: malformed template"):
        parse_stage_config("caption", {"recaption_prompt": "Alt: {alt_text"})


def test_prompt_for_each_mode_and_fallback() -> None:
    cfg = Config(preset="tiny", recaption_prompt="ALT[{alt_text}]", caption_prompt="CAP",
                 max_alt_text_chars=10)
    assert caption.prompt_for(cfg, {"alt_text": "a  red\ncar"}) == ("recaption", "ALT[a red car]")
    assert caption.prompt_for(cfg, {"alt_text": "0123456789abc"}) == ("recaption", "ALT[0123456789]")
    for meta in ({}, {"alt_text": "   "}, {"alt_text": 42}, {"alt_text": None}):
        assert caption.prompt_for(cfg, meta) == ("caption", "CAP")
    image_only = cfg.model_copy(update={"mode": "caption"})
    assert caption.prompt_for(image_only, {"alt_text": "a car"}) == ("caption", "CAP")


def test_batch_seed_is_stable_and_distinct() -> None:
    assert caption.batch_seed("shard-000001", 0) == caption.batch_seed("shard-000001", 0)
    assert caption.batch_seed("shard-000001", 0) != caption.batch_seed("shard-000001", 1)


# --------------------------------------------------------------------------- stage runs
def test_stage_recaptions_every_sample_and_keeps_input_fields(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, noisy_model_uri: str
) -> None:
    uri, store = open_file_store(tmp_path / "store")
    keys = make_input_shards(store, "data/raw", shards=2, per_shard=6)
    cfg = {"model": noisy_model_uri, "batch_size": 4, "max_new_tokens": 6, "max_tiles": 2}
    run_stage(monkeypatch, stage_env(uri, cfg))

    outs = read_outputs(store, "data/recaptioned", tmp_path)
    assert sorted(outs) == ["shard-000000.tar", "shard-000001.tar"]
    samples = [s for shard in outs.values() for s in shard]
    assert sorted(s.key for s in samples) == sorted(keys)
    for s in samples:
        assert {"source", "label", "width", "height"} <= set(s.meta)  # input fields kept
        assert s.meta["captioner"] == noisy_model_uri
        assert isinstance(s.meta["recaption"], str)
        if "alt_text" in s.meta:
            assert s.meta["mode"] == "recaption" and s.meta["alt_text"] in s.meta["prompt"]
        else:
            assert s.meta["mode"] == "caption" and s.meta["prompt"] == Config(preset="tiny").caption_prompt
        assert s.files["png"]  # the image travels on unchanged
    assert any(s.meta["recaption"] for s in samples)
    assert len({s.meta["recaption"] for s in samples}) > 1  # captions depend on image and prompt

    report = json.loads(store.get("runs/r1/recaption/report.json"))
    assert report["samples_in"] == report["samples_out"] == 12
    assert report["extra"]["mode_caption"] + report["extra"]["mode_recaption"] == 12
    assert store.exists("runs/r1/recaption/done/shard-000000.json")


def test_batched_stage_output_equals_batch_size_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, noisy_model_uri: str
) -> None:
    uri, store = open_file_store(tmp_path / "store")
    make_input_shards(store, "data/raw", shards=1, per_shard=5)
    base = {"model": noisy_model_uri, "max_new_tokens": 5, "mode": "caption"}
    run_stage(monkeypatch, stage_env(uri, {**base, "batch_size": 5}, outputs=["out/b5"], stage="b5"))
    run_stage(monkeypatch, stage_env(uri, {**base, "batch_size": 1}, outputs=["out/b1"], stage="b1"))
    b5 = read_outputs(store, "out/b5", tmp_path)["shard-000000.tar"]
    b1 = read_outputs(store, "out/b1", tmp_path)["shard-000000.tar"]
    assert [s.meta for s in b5] == [s.meta for s in b1]


def test_sampling_is_reproducible_per_shard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, noisy_model_uri: str
) -> None:
    uri, store = open_file_store(tmp_path / "store")
    make_input_shards(store, "data/raw", shards=1, per_shard=4)
    cfg = {"model": noisy_model_uri, "max_new_tokens": 6, "do_sample": True, "temperature": 1.5}
    run_stage(monkeypatch, stage_env(uri, cfg, outputs=["out/a"], stage="a"))
    run_stage(monkeypatch, stage_env(uri, cfg, outputs=["out/b"], stage="b"))
    a = store.get("out/a/shard-000000.tar")
    assert a == store.get("out/b/shard-000000.tar")


def test_bad_samples_are_counted_and_the_shard_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from PIL import Image

    uri, store = open_file_store(tmp_path / "store")
    good = encode_image(Image.new("RGB", (40, 30), "white"))
    samples = [
        Sample("ok1", {"alt_text": "a white square"}, "png", {"png": good}),
        Sample("trunc", {"alt_text": "x"}, "png", {"png": good[: len(good) // 2]}),
        Sample("notimg", {"alt_text": "x"}, "jpg", {"jpg": b"this is not an image"}),
        Sample("empty", {"alt_text": "x"}, "png", {"png": b""}),
        Sample("tiny", {}, "png", {"png": encode_image(Image.new("RGB", (1, 1)))}),
        Sample("tall", {"alt_text": "a strip"}, "png", {"png": encode_image(Image.new("RGB", (4, 900)))}),
    ]
    extra = [("badjson.png", good), ("badjson.json", b"\xff\xfe not utf8"), ("../escape.json", b"{}")]
    put_shard(store, "data/raw/shard-000000.tar", samples, extra)
    run_stage(monkeypatch, stage_env(uri, {"preset": "tiny", "max_new_tokens": 3, "batch_size": 3}))

    outs = read_outputs(store, "data/recaptioned", tmp_path)["shard-000000.tar"]
    assert sorted(s.key for s in outs) == ["ok1", "tall", "tiny"]
    report = json.loads(store.get("runs/r1/recaption/report.json"))
    assert report["samples_out"] == 3
    assert report["samples_in"] == 3 + sum(report["dropped"].values())
    assert {"truncated_image", "not_an_image", "empty_image", "json_not_utf8",
            "unsafe_member_name"} <= set(report["dropped"])


def test_empty_shard_is_an_event_not_a_crash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, store = open_file_store(tmp_path / "store")
    make_input_shards(store, "data/raw", shards=1, per_shard=2)
    store.put("data/raw/shard-000001.tar", b"")
    run_stage(monkeypatch, stage_env(uri, {"preset": "tiny", "max_new_tokens": 2}))
    report = json.loads(store.get("runs/r1/recaption/report.json"))
    assert report["samples_out"] == 2 and report["events"] == {"empty_shard": 1}


def test_missing_input_prefix_is_a_clear_permanent_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    uri, _ = open_file_store(tmp_path / "store")
    with pytest.raises(InputError, match="input prefix 'data/nothing' has no shards") as err:
        run_stage(monkeypatch, stage_env(uri, {"preset": "tiny"}, inputs=["data/nothing"]))
    assert exit_code_for(err.value) == exitcodes.BAD_INPUT


def test_missing_model_is_a_clear_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, store = open_file_store(tmp_path / "store")
    make_input_shards(store, "data/raw", shards=1, per_shard=1)
    with pytest.raises(ConfigError, match="model not found: /no/such/captioner") as err:
        run_stage(monkeypatch, stage_env(uri, {"model": "/no/such/captioner"}))
    assert exit_code_for(err.value) == exitcodes.BAD_CONFIG
    assert not store.exists("runs/r1/recaption/report.json")


def test_bad_config_fails_before_loading_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    uri, _ = open_file_store(tmp_path / "store")
    with pytest.raises(ConfigError, match=r"config\.max_tiles"):
        run_stage(monkeypatch, stage_env(uri, {"preset": "tiny", "max_tiles": 0}))


def test_captioner_from_a_prefix_of_the_runs_store_with_a_per_attempt_cache(
    noisy_tiny, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`model: models/captioner` names a prefix of the run's own store (where sft exports); without
    SAIL_MODEL_CACHE the download lives only for the attempt."""
    monkeypatch.delenv("SAIL_MODEL_CACHE")
    monkeypatch.setenv("SAIL_TMPDIR", str(tmp_path / "tmp"))
    model, processor = noisy_tiny
    uri, store = open_file_store(tmp_path / "store")
    for f in sorted(save_model(model, processor, tmp_path / "export").iterdir()):
        store.put_file(f"models/captioner/{f.name}", f)
    make_input_shards(store, "data/raw", shards=1, per_shard=3)
    run_stage(monkeypatch, stage_env(uri, {"model": "models/captioner", "max_new_tokens": 4}))

    samples = read_outputs(store, "data/recaptioned", tmp_path)["shard-000000.tar"]
    assert {s.meta["captioner"] for s in samples} == {f"{uri}/models/captioner"}
    assert not (tmp_path / "tmp" / "sail-models" / "r1-recaption-1").exists()


# --------------------------------------------------------------------------- quality
def test_quality_gate_stops_a_collapsed_captioner_before_its_first_shard_is_committed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A random-init model writes the same text for every image: the collapse the quickstart had."""
    uri, store = open_file_store(tmp_path / "store")
    make_input_shards(store, "data/raw", shards=2, per_shard=40)
    cfg = {"preset": "tiny", "max_new_tokens": 8, "batch_size": 8, "quality_gate": {"min_samples": 32}}
    with pytest.raises(QualityError) as err:
        run_stage(monkeypatch, stage_env(uri, cfg))
    assert exit_code_for(err.value) == exitcodes.QUALITY
    assert exitcodes.classify_exit_code(exitcodes.QUALITY) == exitcodes.FailureClass.PERMANENT
    msg = str(err.value)
    assert "after 32 captions on rank 0" in msg and "same text" in msg and "quality_gate" in msg
    assert not store.exists("runs/r1/recaption/done/shard-000000.json")  # nothing half-judged is kept
    assert not store.exists("data/recaptioned/shard-000001.tar")  # the rest was never captioned


def test_quality_gate_passes_a_diverse_captioner_and_the_report_has_the_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, noisy_model_uri: str
) -> None:
    uri, store = open_file_store(tmp_path / "store")
    make_input_shards(store, "data/raw", shards=2, per_shard=40)
    cfg = {"model": noisy_model_uri, "max_new_tokens": 6, "batch_size": 8,
           "quality_gate": {"min_samples": 32}}
    run_stage(monkeypatch, stage_env(uri, cfg))
    report = json.loads(store.get("runs/r1/recaption/report.json"))
    q = report["caption_quality"]
    outs = [s for shard in read_outputs(store, "data/recaptioned", tmp_path).values() for s in shard]
    texts = [s.meta["recaption"] for s in outs]
    assert q["captions"] == len(outs) == 80
    assert q["input_distinct"] == 80  # every digit image differs
    assert q["distinct"] == len({normalize(t) for t in texts}) > 40
    assert q["truncated_share"] > 0.5  # 6 new tokens cut most random replies
    assert len(q["samples"]) == 8 and all(s["caption"] in texts for s in q["samples"])
    assert "distinct" in report["summary"] and "cut at max_new_tokens" in report["summary"]
    stats = json.loads(store.get("runs/r1/recaption/stats/shard-000000.json"))
    assert stats["summary"]["caption_quality"]["captions"] == 40
