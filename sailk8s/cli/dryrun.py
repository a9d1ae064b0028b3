"""`run --dry-run`: the plan of a run and the jobs it would submit, printed; nothing written."""

from __future__ import annotations

import click
import yaml

from sailk8s.backends.kubernetes.jobapi import for_pipeline
from sailk8s.cli.render import manifest_for
from sailk8s.controller.plan import RERUN, RESUME, RUN, plan_run
from sailk8s.settings import Settings
from sailk8s.spec import Pipeline
from sailk8s.store.base import ObjectStore


def print_plan(pipeline: Pipeline, store: ObjectStore, settings: Settings, only: list[str] | None,
               rerun: list[str], rerun_changed: bool, output: str) -> None:
    """A table of each stage's fate (stdout), or with output=yaml the manifests of those to run."""
    plans = plan_run(pipeline, store, only, rerun, rerun_changed)
    to_run = [p for p in plans if p.action in (RUN, RESUME, RERUN)]
    if output == "yaml":
        if pipeline.backend != "kubernetes":
            raise click.UsageError("-o yaml prints Kubernetes jobs: the pipeline's backend is local")
        docs = []
        api = for_pipeline(pipeline)
        for p in to_run:
            manifest = manifest_for(pipeline, pipeline.stage(p.stage), p.attempt, settings)
            api.check(manifest, pipeline)
            docs.append(manifest)
        click.echo(yaml.safe_dump_all(docs, sort_keys=False), nl=False)
        click.echo(f"# dry run of {pipeline.run!r}: {len(docs)} {api.resource.kind}(s) would be submitted "
                   "(webhook rules checked); nothing was written", err=True)
        return
    width = max([len(p.stage) for p in plans] + [5])
    click.echo(f"{'STAGE':<{width}}  {'ACTION':<8}  {'ATTEMPT':<28}  WHY")
    for p in plans:
        click.echo(f"{p.stage:<{width}}  {p.action:<8}  {p.name or '-':<28}  {p.reason}")
    refused = ", ".join(p.stage for p in plans if p.action == "refused")
    tail = f", refused: {refused}" if refused else ""
    click.echo(f"# dry run of {pipeline.run!r} on the {pipeline.backend} backend: {len(to_run)} stage(s) "
               f"would run{tail}; nothing was written", err=True)
