"""The `ingest` stage (`python -m jobs.ingest`): images + alt-texts -> WebDataset shards."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from PIL import Image

from jobs.core import samples
from jobs.core.runtime import StageRun, main
from jobs.core.shardio import ShardOutput, WorkUnit
from jobs.core.shards import MISSING_FIELDS, BadSampleError, decode_image, encode_image, shard_name
from sailk8s.errors import InputError
from sailk8s.stageconfig.ingest import Config, SampleSizes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")
MISSING_FILE = "missing_file"
BAD_MANIFEST_LINE = "bad_manifest_line"


@dataclass(frozen=True)
class Entry:
    """One listed input: the image path (None if the row was unusable), alt-text, or a reason."""

    path: Path | None
    alt_text: str
    source: str
    error: str | None = None


# ---------------------------------------------------------------------------- listing
def list_folder(root: Path) -> list[Entry]:
    """Images below root, sorted by relative path, with sidecar .txt alt-texts."""
    entries = []
    for p in sorted(root.rglob("*")):
        if not p.is_file() or p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        side = p.with_suffix(".txt")
        alt = side.read_text(encoding="utf-8", errors="replace").strip() if side.is_file() else ""
        entries.append(Entry(p, alt, p.relative_to(root).as_posix()))
    return entries


def list_jsonl(path: Path, image_field: str, text_field: str) -> list[Entry]:
    """Rows of a JSONL manifest; a bad line becomes an Entry with its reason."""
    entries = []
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError):
                entries.append(Entry(None, "", f"{path.name}:{n}", BAD_MANIFEST_LINE))
                continue
            entries.append(_row_entry(row, path.parent, image_field, text_field, f"{path.name}:{n}"))
    return entries


def list_csv(path: Path, image_field: str, text_field: str) -> list[Entry]:
    """Rows of a CSV manifest with a header naming the image and text columns."""
    with open(path, encoding="utf-8", errors="replace", newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or image_field not in reader.fieldnames:
            raise InputError(f"{path}: CSV header must have a {image_field!r} column "
                             f"(found: {', '.join(reader.fieldnames or []) or 'no header'})")
        return [_row_entry(row, path.parent, image_field, text_field, f"{path.name}:{n}")
                for n, row in enumerate(reader, 2)]


def _row_entry(row: object, base: Path, image_field: str, text_field: str, where: str) -> Entry:
    if not isinstance(row, dict) or not isinstance(row.get(image_field), str) or not row[image_field]:
        return Entry(None, "", where, MISSING_FIELDS)
    rel = row[image_field]
    alt = row.get(text_field)
    return Entry(base / rel, alt if isinstance(alt, str) else "", rel)


def list_entries(cfg: Config) -> list[Entry]:
    """The inputs a file-based source names; a missing path is an InputError."""
    assert cfg.path is not None
    path = Path(cfg.path).expanduser()
    if cfg.source == "folder":
        if not path.is_dir():
            raise InputError(f"ingest path {cfg.path!r} is not a folder")
        return list_folder(path)
    if not path.is_file():
        raise InputError(f"ingest manifest {cfg.path!r} does not exist")
    if cfg.source == "jsonl":
        return list_jsonl(path, cfg.image_field, cfg.text_field)
    return list_csv(path, cfg.image_field, cfg.text_field)


# ---------------------------------------------------------------------------- units
def chunk_units(n: int, shard_size: int, out_prefix: str, set_name: str | None = None) -> list[WorkUnit]:
    """Units of up to shard_size consecutive items: [start, end) in params."""
    units = []
    for i in range(math.ceil(n / shard_size)):
        start, end = i * shard_size, min(n, (i + 1) * shard_size)
        stem = shard_name(i)[: -len(".tar")]
        sid = f"{set_name}-{stem}" if set_name else stem
        prefix = f"{out_prefix}/{set_name}" if set_name else out_prefix
        params: tuple[tuple[str, object], ...] = (("start", start), ("end", end))
        if set_name:
            params = (("set", set_name), *params)
        units.append(WorkUnit(sid, f"{prefix}/{stem}.tar", None, params))
    return units


@lru_cache(maxsize=8)
def _sample_items(set_name: str, sizes: SampleSizes) -> list[samples.Item]:
    return samples.BUILDERS[set_name](sizes)


def encode_for_store(data: bytes, img: Image.Image, mode: str) -> tuple[str, bytes]:
    """(extension, bytes): keep jpg/png as they are under `keep`, else re-encode."""
    if mode == "keep":
        with Image.open(io.BytesIO(data)) as probe:
            fmt = probe.format
        if fmt == "JPEG":
            return "jpg", data
        if fmt == "PNG":
            return "png", data
        return "png", encode_image(img, "png")
    return mode, encode_image(img, mode)


def produce_entries(entries: Sequence[Entry], unit: WorkUnit, out: ShardOutput, cfg: Config) -> None:
    """Read, validate and write one shard's worth of listed files.

    Each becomes `<key>.jpg|png` + json with `alt_text`, `source` (its relative path), `width` and
    `height`; an unreadable row or file is counted under its reason and the rest goes on.
    """
    start, end = unit.param("start"), unit.param("end")
    for index in range(start, end):
        e = entries[index]
        if e.error is not None or e.path is None:
            out.reject(e.error or MISSING_FIELDS)
            continue
        try:
            data = e.path.read_bytes()
        except OSError:
            out.reject(MISSING_FILE)
            continue
        try:
            img = decode_image(data, cfg.max_pixels)
        except BadSampleError as err:
            out.reject(err.reason)
            continue
        ext, payload = encode_for_store(data, img, cfg.image_format)
        meta = {"alt_text": e.alt_text, "source": e.source, "width": img.width, "height": img.height}
        out.write(out.new_sample(f"img-{index:08d}", meta, {ext: payload}, ext))


def produce_samples(unit: WorkUnit, out: ShardOutput, cfg: Config) -> None:
    """Write one shard of a built-in sample set."""
    items = _sample_items(unit.param("set"), cfg.samples)
    fmt = "jpg" if cfg.image_format == "jpg" else "png"
    for item in items[unit.param("start"):unit.param("end")]:
        out.write(out.new_sample(item.key, dict(item.meta), {fmt: encode_image(item.image, fmt)}, fmt))
        out.count(f"set:{unit.param('set')}")


def run() -> None:
    """Entry point of `python -m jobs.ingest`, in output shards of `shard_size` samples.

    `samples`: the built-in sets, each under `<outputs[0]>/<set>/`; `folder`: every image below
    `path` with sidecar `<name>.txt` alt-texts; `jsonl` / `csv`: rows of (image path, alt-text).
    """
    stage = StageRun.from_env(Config)
    cfg = stage.typed(Config)
    out_prefix = stage.output_prefix()
    if cfg.source == "samples":
        units = [u for name in cfg.sets
                 for u in chunk_units(len(_sample_items(name, cfg.samples)), cfg.shard_size,
                                      out_prefix, name)]
        stage.run_units(units, lambda unit, out: produce_samples(unit, out, cfg))
        return
    entries = list_entries(cfg)
    if not entries:
        raise InputError(f"ingest source {cfg.path!r} lists no images")
    units = chunk_units(len(entries), cfg.shard_size, out_prefix)
    stage.run_units(units, lambda unit, out: produce_entries(entries, unit, out, cfg))


if __name__ == "__main__":
    main(run)
