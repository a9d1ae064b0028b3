"""`render STAGE -f FILE [--attempt N]`: print the exact PyTorchJob as YAML, validated.

A dry run in the strict sense: it reads the pipeline file and SAIL_* settings, and makes no
request to any API server or object store (it never builds a client for either).
"""

from __future__ import annotations

import importlib.util
from typing import Any

import click
import yaml

from sailk8s.backends.kubernetes.manifest import build_pytorchjob, kubectl_commands
from sailk8s.backends.kubernetes.validation import (
    ManifestInvalid,
    find_crd,
    validate_manifest,
    webhook_errors,
)
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
    help="PyTorchJob CRD file to validate against (default: $SAIL_PYTORCHJOB_CRD or ../shared/crds).",
)
@click.pass_context
def render(ctx: click.Context, stage: str, path: str, attempt: int, crd: str | None) -> None:
    """Print STAGE's PyTorchJob manifest exactly as it would be submitted; no writes anywhere."""
    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
    pipeline = load_pipeline(path)
    namespace = pipeline.namespace or settings.namespace
    manifest = manifest_for(pipeline, pipeline.stage(stage), attempt, settings)
    crd_path = find_crd(crd)
    if crd_path is not None and importlib.util.find_spec("jsonschema") is not None:
        validate_manifest(manifest, crd_path)
        checked = f"CRD schema ({crd_path}) and webhook rules"
    else:
        problems = webhook_errors(manifest)
        if problems:
            raise ManifestInvalid(manifest["metadata"]["name"], problems)
        why = (
            "no CRD file found (pass --crd or set SAIL_PYTORCHJOB_CRD)"
            if crd_path is None
            else "jsonschema is not installed"
        )
        checked = f"webhook rules only: {why}"
    click.echo(yaml.safe_dump(manifest, sort_keys=False, default_flow_style=False), nl=False)
    name = manifest["metadata"]["name"]
    click.echo(f"# {name}: valid ({checked})", err=True)
    click.echo(f"# {kubectl_commands(namespace, pipeline.run)[0]}", err=True)


def manifest_for(pipeline: Pipeline, stage: Stage, attempt: int, settings: Settings) -> dict[str, Any]:
    """The PyTorchJob an attempt would submit, from the file and SAIL_* settings alone (no client)."""
    return build_pytorchjob(pipeline, stage, attempt, namespace=pipeline.namespace or settings.namespace,
                            store_endpoint=settings.store_endpoint, store_region=settings.store_region)
