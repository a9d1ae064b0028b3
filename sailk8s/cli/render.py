"""`render STAGE -f FILE [--attempt N]`: print the exact PyTorchJob or TrainJob as YAML, validated.

A dry run in the strict sense: it reads the pipeline file and SAIL_* settings, and makes no
request to any API server or object store (it never builds a client for either).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import click
import yaml

from sailk8s.backends.kubernetes.jobapi import for_pipeline
from sailk8s.settings import Settings
from sailk8s.spec import Pipeline, Stage, load_pipeline


@click.command()
@click.argument("stage")
@click.option(
    "-f", "--file", "path", required=True, type=click.Path(dir_okay=False), help="Pipeline YAML file."
)
@click.option(
    "--attempt",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Attempt number (part of the job name and labels).",
)
@click.option(
    "--crd",
    type=click.Path(dir_okay=False, exists=True),
    default=None,
    help="CRD file to validate against (PyTorchJob: default $SAIL_PYTORCHJOB_CRD or ../shared/crds; "
    "TrainJob: its file in the trainer-v2 folder, default $SAIL_TRAINER_CRDS or ../shared/crds/trainer-v2).",
)
@click.pass_context
def render(ctx: click.Context, stage: str, path: str, attempt: int, crd: str | None) -> None:
    """Print STAGE's job manifest (the pipeline's kubernetes.job_api) exactly as it would be
    submitted; no writes anywhere."""
    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
    pipeline = load_pipeline(path)
    namespace = pipeline.namespace or settings.namespace
    api = for_pipeline(pipeline)
    chosen = pipeline.stage(stage)
    manifest = manifest_for(pipeline, chosen, attempt, settings)
    crd_path = api.find_crd(crd)
    if crd_path is not None and importlib.util.find_spec("jsonschema") is not None:
        api.validate(manifest, crd, pipeline)
        checked = f"CRD schema ({crd_path}) and webhook rules"
    else:
        api.check(manifest, pipeline)
        why = f"no CRD file found ({api.crd_hint})" if crd_path is None else "jsonschema is not installed"
        checked = f"webhook rules only: {why}"
    click.echo(yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False), nl=False)
    name = manifest["metadata"]["name"]
    click.echo(f"# {name}: valid ({checked})", err=True)
    for note in api.notes(chosen):
        click.echo(f"# note: {note}", err=True)
    click.echo(f"# {api.kubectl(namespace, pipeline.run)[0]}", err=True)


def manifest_for(pipeline: Pipeline, stage: Stage, attempt: int, settings: Settings) -> dict[str, Any]:
    """The job an attempt would submit, from the file and SAIL_* settings alone (no client)."""
    namespace = pipeline.namespace or settings.namespace
    return for_pipeline(pipeline).build(
        pipeline, stage, attempt, namespace=namespace,
        store_endpoint=settings.store_endpoint, store_region=settings.store_region,
    )
