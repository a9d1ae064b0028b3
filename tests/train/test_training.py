"""Training stages end to end as `python -m jobs.<kind>` processes with the env contract."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from train_helpers import ROOT, read_json, run_stage, run_stage_torchrun, stage_process_env

from sailk8s import exitcodes
from sailk8s.errors import ConfigError
from sailk8s.spec import parse_pipeline
from sailk8s.testing.stopping import kill_once_stopped, start_stopping_after

pytestmark = pytest.mark.slow


def _pretrain(name: str, *, max_steps: int = 12, every: int = 3, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "pretrain", "inputs": ["data/samples"], "outputs": [f"models/{name}"],
            "config": {"seq_len": 128, "checkpoint_every": every, "log_every": 1, **extra, "substages": [
                {"name": "alignment", "train": ["projector"], "max_steps": 3, "global_batch": 4,
                 "micro_batch": 2, "lr": 1e-3, "mix": [{"prefix": "data/samples/reference",
                                                        "text_fields": ["caption"]}]},
                {"name": "advance", "train": ["projector", "vision", "llm"], "max_steps": max_steps,
                 "global_batch": 4, "micro_batch": 2, "lr": 1e-3,
                 "mix": [{"prefix": "data/samples/reference", "text_fields": ["caption"]},
                         {"prefix": "data/samples/sft-instruction", "weight": 2}]}]}}


def test_pretrain_runs_substages_and_writes_everything(sample_store: Path) -> None:
    proc = run_stage(sample_store, _pretrain("pt-a"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = read_json(sample_store, "runs/t/pt-a/report.json")
    assert [s["substage"] for s in report["substages"]] == ["alignment", "advance"]
    assert report["substages"][1]["steps"] == 12
    assert (sample_store / "models/pt-a/config.json").exists()
    assert (sample_store / "runs/t/pt-a/artifacts/loss.png").stat().st_size > 1000
    progress = read_json(sample_store, "runs/t/pt-a/progress.json")
    assert progress["unit"] == "steps" and progress["step"] == 12 and progress["done"] == 12
    assert progress["loss"] > 0 and progress["tokens"] > 0 and progress["tokens_per_s"] > 0
    assert (sample_store / "runs/t/pt-a/ckpt/LATEST").exists()


def test_interrupted_and_resumed_run_reaches_the_same_final_loss(sample_store: Path) -> None:
    straight = run_stage(sample_store, _pretrain("pt-b", max_steps=30, every=4))
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = read_json(sample_store, "runs/t/pt-b/report.json")["final_loss"]

    spec = _pretrain("pt-c", max_steps=30, every=4)
    env = stage_process_env(sample_store, "t", spec)
    # A preemption right after a checkpoint: the job stops itself once the manifest is written
    # (a busy machine could let it train on, or finish, between two looks), and is killed there.
    proc = start_stopping_after(env, "*/runs/t/pt-c/ckpt/step-00000011/manifest.json", 1, "jobs.pretrain",
                                cwd=ROOT)
    kill_once_stopped(proc, "after the step-11 checkpoint")
    assert not (sample_store / "runs/t/pt-c/report.json").exists(), "the run finished before the kill"

    resumed = run_stage(sample_store, spec, attempt=2)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from checkpoint" in resumed.stderr
    assert "data position restored" in resumed.stderr  # from the saved cursor, not a replay
    report = read_json(sample_store, "runs/t/pt-c/report.json")
    assert report["final_loss"] == pytest.approx(expected, rel=1e-6, abs=1e-7)


def test_checkpoint_from_another_model_shape_is_a_clear_error(sample_store: Path, tmp_path: Path) -> None:
    spec = _pretrain("pt-d", max_steps=2, every=1)
    assert run_stage(sample_store, spec).returncode == 0
    # Same stage, same run, but a config whose model is not the one that wrote the checkpoint.
    ckpt = sample_store / "runs/t/pt-d/ckpt"
    latest = (ckpt / "LATEST").read_text().strip()
    from safetensors.torch import load_file, save_file

    from sailk8s.ledger import sha256_file
    weights = load_file(str(ckpt / latest / "model.safetensors"))
    key = next(k for k in weights if k.endswith("embed_tokens.weight"))
    weights[key] = weights[key][:, :32].contiguous()
    save_file(weights, str(ckpt / latest / "model.safetensors"))
    manifest = json.loads((ckpt / latest / "manifest.json").read_text())
    path = ckpt / latest / "model.safetensors"
    manifest["files"]["model.safetensors"] = {"sha256": sha256_file(path), "size": path.stat().st_size}
    (ckpt / latest / "manifest.json").write_text(json.dumps(manifest))
    (sample_store / "runs/t/pt-d/report.json").unlink()
    proc = run_stage(sample_store, spec, attempt=2)
    assert proc.returncode == exitcodes.BAD_CONFIG
    last = proc.stderr.strip().splitlines()[-1]
    assert "another shape" in last and "[" in last and "embed_tokens" in last


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(sample_store: Path) -> None:
    spec = _pretrain("pt-e", max_steps=6, every=2)
    assert run_stage(sample_store, spec).returncode == 0
    ckpt = sample_store / "runs/t/pt-e/ckpt"
    latest = (ckpt / "LATEST").read_text().strip()
    (ckpt / latest / "model.safetensors").write_bytes(b"garbage")
    proc = run_stage(sample_store, spec, attempt=2)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "falling back" in proc.stderr


def test_missing_mix_prefix_is_a_bad_input(sample_store: Path) -> None:
    stage = {"name": "sft-bad", "kind": "sft", "inputs": ["data/samples"], "outputs": ["models/x"],
             "config": {"seq_len": 128, "stages": [{"name": "s1", "max_steps": 2, "global_batch": 2,
                                                    "micro_batch": 2, "mix": [{"prefix": "data/nowhere"}]}]}}
    proc = run_stage(sample_store, stage)
    assert proc.returncode == exitcodes.BAD_INPUT
    assert "no WebDataset shards" in proc.stderr.strip().splitlines()[-1]


def test_empty_data_mix_is_refused_by_validate_and_by_the_workload(sample_store: Path) -> None:
    good = {"name": "sft-empty", "kind": "sft", "inputs": ["data/samples"], "outputs": ["models/x"],
            "config": {"seq_len": 128, "stages": [{"name": "s1", "max_steps": 2,
                                                   "mix": [{"prefix": "data/samples/eval"}]}]}}
    bad_config = {"seq_len": 128, "stages": [{"name": "s1", "max_steps": 2, "mix": []}]}
    with pytest.raises(ConfigError, match="empty data mix"):
        parse_pipeline({"run": "t", "store": f"file://{sample_store}",
                        "stages": [{**good, "config": bad_config}]})
    env = stage_process_env(sample_store, "t", good)
    env["SAIL_STAGE_CONFIG"] = json.dumps(bad_config)  # as if the file were never validated
    proc = subprocess.run([sys.executable, "-m", "jobs.sft"], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == exitcodes.BAD_CONFIG
    assert "empty data mix" in proc.stderr.strip().splitlines()[-1]


def test_missing_pretrained_path_is_a_clear_error(sample_store: Path) -> None:
    stage = {"name": "sft-nopre", "kind": "sft", "inputs": ["data/samples"], "outputs": ["models/y"],
             "config": {"seq_len": 128, "model": {"init_from": "models/does-not-exist"},
                        "stages": [{"name": "s1", "max_steps": 1, "global_batch": 2, "micro_batch": 2,
                                    "mix": [{"prefix": "data/samples/sft-instruction"}]}]}}
    proc = run_stage(sample_store, stage)
    assert proc.returncode == exitcodes.BAD_INPUT
    assert "models/does-not-exist" in proc.stderr.strip().splitlines()[-1]


def test_budget_larger_than_data_repeats_epochs_and_too_long_samples_are_counted(sample_store: Path) -> None:
    stage = {"name": "sft-ep", "kind": "sft", "inputs": ["data/samples"], "outputs": ["models/ep"],
             "config": {"seq_len": 40, "on_too_long": "drop", "deepspeed": False, "stages": [
                 {"name": "s1", "token_budget": 30_000, "global_batch": 8, "micro_batch": 8,
                  "mix": [{"prefix": "data/samples/eval", "format": "caption", "text_fields": ["answer"]},
                          {"prefix": "data/samples/reference", "text_fields": ["caption"]}]}]}}
    proc = run_stage(sample_store, stage)
    assert proc.returncode == 0, proc.stderr[-2000:]
    sub = read_json(sample_store, "runs/t/sft-ep/report.json")["substages"][0]
    assert sub["epochs"]["data/samples/eval"] > 1
    assert sub["dropped"].get("too_long_image", 0) + sub["dropped"].get("too_long", 0) > 0
    assert "data source repeats" in proc.stderr


def test_evaluate_reports_accuracy(sample_store: Path) -> None:
    assert run_stage(sample_store, _pretrain("pt-f", max_steps=1)).returncode == 0
    proc = run_stage(sample_store, {"name": "ev", "kind": "evaluate", "inputs": ["data/samples/eval"],
                                    "config": {"model": "models/pt-f", "limit": 12}})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = read_json(sample_store, "runs/t/ev/report.json")
    assert report["samples"] == 12 and 0 <= report["accuracy"] <= 1
    assert "held-out accuracy" in proc.stdout


def test_two_ranks_under_torchrun_give_the_same_losses_as_one_process(sample_store: Path) -> None:
    spec = _pretrain("pt-w1", max_steps=3)
    assert run_stage(sample_store, spec).returncode == 0
    proc = run_stage_torchrun(sample_store, _pretrain("pt-w2", max_steps=3))
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = read_json(sample_store, "runs/t/pt-w1/report.json")["losses"]
    both = read_json(sample_store, "runs/t/pt-w2/report.json")["losses"]
    assert [s for s, _ in one] == [s for s, _ in both]
    assert [loss for _, loss in both] == pytest.approx([loss for _, loss in one], rel=1e-5)
