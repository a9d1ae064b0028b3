"""Helpers for caption tests: input shards of real images in a file:// store, stage env, readers."""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jobs.core.shards import Sample, ShardWriter, encode_image, read_shard
from sailk8s import envcontract
from sailk8s.store import open_store
from sailk8s.store.base import ObjectStore


def digit_images(n: int, size: int = 32) -> list[tuple[Image.Image, int]]:
    """Real handwritten digits from scikit-learn, upscaled, with their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = []
    for i in range(n):
        arr = (255 - digits.images[i] * 16).clip(0, 255).astype(np.uint8)
        image = Image.fromarray(arr).convert("RGB").resize((size, size), Image.NEAREST)
        out.append((image, int(digits.target[i])))
    return out


def make_input_shards(store: ObjectStore, prefix: str, shards: int, per_shard: int) -> list[str]:
    """Write `shards` shards of digits (most with an alt-text, some without); return all keys."""
    keys = []
    images = digit_images(shards * per_shard)
    for s in range(shards):
        samples = []
        for j in range(per_shard):
            i = s * per_shard + j
            image, label = images[i]
            key = f"d{i:05d}"
            meta: dict[str, Any] = {"source": "digits", "label": label, "width": 32, "height": 32}
            if i % 5 != 3:  # every fifth sample has no alt-text: recaption falls back to caption
                meta["alt_text"] = f"handwritten digit {label}" if i % 3 else "IMG_4821.JPG free download"
            samples.append(Sample(key=key, meta=meta, image_ext="png", files={"png": encode_image(image)}))
            keys.append(key)
        put_shard(store, f"{prefix}/shard-{s:06d}.tar", samples)
    return keys


def put_shard(store: ObjectStore, key: str, samples: list[Sample],
              extra: Sequence[tuple[str, bytes]] = ()) -> None:
    """Write samples (then raw extra tar members, e.g. broken ones) as one shard at key."""
    with tempfile.TemporaryDirectory() as d:
        local = Path(d) / "x.tar"
        with ShardWriter(local) as w:
            w.write_all(samples)
        if extra:
            with tarfile.open(local, "a") as tar:
                for name, data in extra:
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        store.put_file(key, local)


def stage_env(store_uri: str, config: dict[str, Any], *, run: str = "r1", stage: str = "recaption",
              inputs: list[str] | None = None, outputs: list[str] | None = None,
              attempt: int = 1) -> dict[str, str]:
    """The env contract of a caption stage attempt."""
    return {
        envcontract.RUN: run, envcontract.STAGE: stage, envcontract.KIND: "caption",
        envcontract.ATTEMPT: str(attempt), envcontract.STORE_URI: store_uri,
        envcontract.INPUTS: json.dumps(inputs if inputs is not None else ["data/raw"]),
        envcontract.OUTPUTS: json.dumps(outputs if outputs is not None else ["data/recaptioned"]),
        envcontract.CONFIG: json.dumps(config), "SAIL_PROGRESS_SECONDS": "0.5",
    }


def read_outputs(store: ObjectStore, prefix: str, tmp: Path) -> dict[str, list[Sample]]:
    """Every output shard under prefix: shard file name -> its samples."""
    out = {}
    for key in store.list(prefix.rstrip("/") + "/"):
        if key.endswith(".tar"):
            local = tmp / key.replace("/", "_")
            store.get_file(key, local)
            out[key.rsplit("/", 1)[-1]] = [s for s in read_shard(local) if isinstance(s, Sample)]
    return out


def open_file_store(root: Path) -> tuple[str, ObjectStore]:
    """A file:// store at root."""
    uri = f"file://{root}"
    return uri, open_store(uri)
