"""A training stage writes its scalars as TensorBoard event files under artifacts/tensorboard/."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import pytest
from train_helpers import read_json, run_stage

pytestmark = pytest.mark.slow


def read_events(path: Path) -> list[Any]:
    """The Event records of a TFRecord event file (length, its crc, data, its crc), parsed."""
    from tensorboardX.proto.event_pb2 import Event

    data, out, at = path.read_bytes(), [], 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at:at + 8])
        event = Event()
        event.ParseFromString(data[at + 12:at + 12 + length])
        out.append(event)
        at += 12 + length + 4
    return out


def test_training_scalars_are_tensorboard_event_files(sample_store: Path) -> None:
    stage = {"name": "pt-tb", "kind": "pretrain", "inputs": ["data/samples"], "outputs": ["models/pt-tb"],
             "config": {"seq_len": 128, "checkpoint_every": 2, "log_every": 1, "substages": [
                 {"name": "alignment", "train": ["projector"], "max_steps": 4, "global_batch": 4,
                  "micro_batch": 2, "lr": 1e-3,
                  "mix": [{"prefix": "data/samples/reference", "text_fields": ["caption"]}]}]}}
    proc = run_stage(sample_store, stage)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = sorted((sample_store / "runs/t/pt-tb/artifacts/tensorboard").glob("events.out.tfevents.*"))
    assert len(files) == 1
    events = read_events(files[0])
    assert events[0].file_version.startswith("brain.Event:")
    scalars: dict[str, list[tuple[int, float]]] = {}
    for e in events[1:]:
        for v in e.summary.value:
            scalars.setdefault(v.tag, []).append((e.step, v.simple_value))
    assert set(scalars) == {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s", "train/fill"}
    assert [s for s, _ in scalars["train/loss"]] == [1, 2, 3, 4]
    report = read_json(sample_store, "runs/t/pt-tb/report.json")
    assert [round(v, 4) for _, v in scalars["train/loss"]] == [round(loss, 4) for _, loss in report["losses"]]
    assert all(0 < v <= 1 for _, v in scalars["train/fill"]) and all(v > 0 for _, v in scalars["train/lr"])
    assert report["tensorboard"].endswith("runs/t/pt-tb/artifacts/tensorboard")
