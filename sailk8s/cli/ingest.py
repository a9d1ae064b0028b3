"""`ingest`: images (+alt-text) or the built-in samples -> WebDataset shards in a store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from pydantic import ValidationError

from sailk8s import envcontract as ec
from sailk8s.errors import ConfigError, SailError
from sailk8s.stageconfig.ingest import Config


def store_uri(value: str) -> str:
    """file:// and s3:// URIs pass through; a plain path becomes file:///abs/path."""
    if "://" in value:
        return value
    return "file://" + Path(value).expanduser().resolve().as_posix()


def build_config(source: str, path: str | None, shard_size: int, image_format: str,
                 image_field: str, text_field: str) -> dict[str, Any]:
    """The stage config block; validated here so mistakes fail before any process starts."""
    cfg: dict[str, Any] = {"source": source, "shard_size": shard_size, "image_format": image_format}
    if path is not None:
        cfg["path"] = str(Path(path).expanduser().resolve())
        cfg.update(image_field=image_field, text_field=text_field)
    try:
        Config.model_validate(cfg)
    except ValidationError as err:
        problems = [f"{'.'.join(str(x) for x in e['loc']) or 'config'}: "
                    f"{e['msg'].removeprefix('Value error, ')}" for e in err.errors()]
        raise ConfigError("; ".join(problems), problems) from None
    return cfg


@click.command()
@click.option("--samples", "use_samples", is_flag=True,
              help="The built-in sample sets (jobs/core/samples.py).")
@click.option("--folder", type=click.Path(file_okay=False),
              help="A folder of images (+ <name>.txt alt-text).")
@click.option("--jsonl", type=click.Path(dir_okay=False),
              help="A JSONL manifest of image paths and alt-texts.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False), help="A CSV manifest with a header row.")
@click.option("--store", "store", required=True,
              help="Store URI (file:///abs, s3://bucket/prefix) or a local path.")
@click.option("--output", required=True, help="Output prefix in the store, e.g. data/raw.")
@click.option("--shard-size", type=int, default=256, show_default=True, help="Samples per shard.")
@click.option("--image-format", type=click.Choice(["keep", "png", "jpg"]), default="keep",
              show_default=True)
@click.option("--image-field", default="image", show_default=True,
              help="Manifest column with the image path.")
@click.option("--text-field", default="alt_text", show_default=True,
              help="Manifest column with the alt-text.")
@click.option("--run", "run_name", default="ingest", show_default=True, help="Run name for the ledger.")
@click.option("--stage", "stage_name", default="ingest", show_default=True, help="Stage name for the ledger.")
@click.option("--procs", type=int, default=1, show_default=True, help="Local processes (torchrun when > 1).")
def ingest(use_samples: bool, folder: str | None, jsonl: str | None, csv_path: str | None, store: str,
           output: str, shard_size: int, image_format: str, image_field: str, text_field: str,
           run_name: str, stage_name: str, procs: int) -> None:
    """Turn images (+alt-text) into WebDataset shards under OUTPUT in the store.

    Runs the `ingest` stage workload (`python -m jobs.ingest`, or torchrun with --procs > 1) as a
    subprocess with the env contract, so this package never imports the ML stack. Rerunning the
    same command skips shards already done (the ledger of runs/<run>/<stage>/).
    """
    chosen = [(n, v) for n, v in (("samples", use_samples or None), ("folder", folder), ("jsonl", jsonl),
                                  ("csv", csv_path)) if v]
    if len(chosen) != 1:
        raise click.UsageError("choose exactly one source: --samples, --folder, --jsonl or --csv")
    source, value = chosen[0]
    cfg = build_config(source, None if source == "samples" else str(value), shard_size, image_format,
                       image_field, text_field)
    env = {**os.environ, ec.RUN: run_name, ec.STAGE: stage_name, ec.KIND: "ingest", ec.ATTEMPT: "1",
           ec.STORE_URI: store_uri(store), ec.INPUTS: "[]", ec.OUTPUTS: json.dumps([output.strip("/")]),
           ec.CONFIG: json.dumps(cfg, sort_keys=True)}
    if procs > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={procs}",
               "-m", "jobs.ingest"]
    else:
        cmd = [sys.executable, "-m", "jobs.ingest"]
    try:
        code = subprocess.call(cmd, env=env)
    except OSError as err:
        raise SailError(f"cannot start the ingest workload: {err}") from None
    if code != 0:
        sys.exit(code)  # the workload printed its one-line error; keep its exit code
    click.echo(f"ingested into {store_uri(store).rstrip('/')}/{output.strip('/')} "
               f"(report: runs/{run_name}/{stage_name}/report.json)")
