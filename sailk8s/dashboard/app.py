"""The dashboard's web app (Starlette): read-only pages over one store; no route writes anything."""

from __future__ import annotations

import mimetypes
from collections.abc import Callable
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from sailk8s.dashboard import figures, samples, views
from sailk8s.errors import StoreKeyError
from sailk8s.ledger import StageResults
from sailk8s.ledger.paths import segment
from sailk8s.ledger.runstate import run_summaries
from sailk8s.store.base import ObjectStore

HERE = Path(__file__).resolve().parent
POLL_SECONDS = 2  # how often a page of a live run asks for fresh progress
LIVE_LOG_LINES = 2000  # a running attempt's page shows the end of its log

# (run, stage, attempt, run id, backend name) -> the attempt's log lines so far (ranks tagged),
# or None where this dashboard cannot reach that backend (then only archived logs are shown).
LiveLogs = Callable[[str, str, int, str, str], list[str] | None]


def _name(value: str, what: str) -> str:
    """A run or stage name from the URL, checked like the ledger checks it (404 otherwise)."""
    try:
        return segment(value, what)
    except StoreKeyError:
        raise HTTPException(404, f"no such {what}") from None


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _when(epoch: float | None) -> str:
    import time

    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch)) if epoch else "-"


def create_app(store: ObjectStore, *, title: str | None = None,
               live_logs: LiveLogs | None = None) -> Starlette:
    """The dashboard over `store`: runs at /, a run at /runs/<run>, JSON twins under /api/.

    `live_logs` reads a running attempt's log from its backend; without it (the in-cluster
    dashboard has no API rights) a running attempt's page waits for the archived log.
    """
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.globals.update(colours=figures.COLOURS, poll=POLL_SECONDS, store_uri=store.describe(),
                       title=title or "sail-pipeline")
    env.filters.update(duration=_duration, when=_when)
    env.globals.update(funnel=views.funnel, losses=views.losses, evaluations=views.evaluations)

    def page(request: Request, name: str, **context: Any) -> Response:
        return templates.TemplateResponse(request, name, context)

    def runs_page(request: Request) -> Response:
        return page(request, "runs.html", runs=run_summaries(store))

    def _view(run: str, artifacts: bool = True) -> views.RunView:
        view = views.run_view(store, _name(run, "run name"), artifacts=artifacts)
        if view is None:
            raise HTTPException(404, f"no run {run!r} in this store")
        return view

    def _run_context(view: views.RunView) -> dict[str, Any]:
        states = [s.state for s in view.stages]
        return {"view": view, "dag": figures.dag_svg(states),
                "timeline": figures.timeline_svg(states, view.read_at),
                "live": view.summary.status == "running"}

    def run_page(request: Request) -> Response:
        view = _view(request.path_params["run"])
        return page(request, "run.html", **_run_context(view))

    def run_live(request: Request) -> Response:
        view = _view(request.path_params["run"], artifacts=False)
        return page(request, "live.html", **_run_context(view))

    def _stage(request: Request) -> tuple[str, str]:
        params = request.path_params
        return _name(params["run"], "run name"), _name(params["stage"], "stage name")

    def logs_page(request: Request) -> Response:
        run, stage = _stage(request)
        attempt = int(request.path_params["attempt"])
        view = _view(run)
        sv = view.stage(stage)
        record = next((a for a in sv.state.attempts if a.attempt == attempt), None) if sv else None
        follow = record is not None and not record.finished
        live = None
        if follow and live_logs is not None:
            lines = live_logs(run, stage, attempt, view.state.run_id or "", view.state.backend)
            live = None if lines is None else "\n".join(lines[-LIVE_LOG_LINES:])
        template = "logs_body.html" if request.query_params.get("part") == "body" else "logs.html"
        return page(request, template, run=run, stage=stage, attempt=attempt, record=record, follow=follow,
                    logs=views.archived_logs(store, run, stage, attempt), live=live)

    def samples_page(request: Request) -> Response:
        run, stage = _stage(request)
        shards = samples.done_shards(store, run, stage)
        shard = request.query_params.get("shard") or (shards[0] if shards else None)
        if shard is not None:
            shard = _name(shard, "shard id")
        # A stage with an input stage shows that stage's samples with its own verdict on each.
        view = _view(run)
        sv = view.stage(stage)
        upstream = next((d for d in (sv.depends if sv else []) if view.stage(d)), None)
        verdicts = upstream is not None and request.query_params.get("view", "verdicts") == "verdicts"
        if shard is None:
            found = []
        elif verdicts and upstream is not None:
            found = samples.read_verdicts(store, run, stage, upstream, shard)
        else:
            found = samples.read_samples(store, run, stage, shard)
        return page(request, "samples.html", run=run, stage=stage, shards=shards, shard=shard, samples=found,
                    report=StageResults(store, run, stage).read_report(), upstream=upstream,
                    verdicts=verdicts)

    def sample_image(request: Request) -> Response:
        run, stage = _stage(request)
        got = samples.sample_image(store, run, stage, _name(request.path_params["shard"], "shard id"),
                                   request.query_params.get("key", ""))
        if got is None:
            raise HTTPException(404, "no such image")
        return Response(got[0], media_type=got[1], headers={"Cache-Control": "max-age=3600"})

    def artifact(request: Request) -> Response:
        run, stage = _stage(request)
        name = request.path_params["name"]
        try:
            data = StageResults(store, run, stage).read_artifact(name)
        except StoreKeyError:
            data = None
        if data is None:
            raise HTTPException(404, "no such artifact")
        media = mimetypes.guess_type(name)[0] or "application/octet-stream"
        return Response(data, media_type=media)

    def api_runs(request: Request) -> Response:
        return JSONResponse([r.model_dump() for r in run_summaries(store)])

    def api_run(request: Request) -> Response:
        view = _view(request.path_params["run"])
        return JSONResponse({
            "summary": view.summary.model_dump(), "state": view.state.model_dump(),
            "stages": [{"name": s.name, "percent": s.percent, "done": s.done_text,
                        "shards_done": s.shards_done,
                        "progress": s.progress.model_dump() if s.progress else None} for s in view.stages]})

    def healthz(request: Request) -> Response:
        return Response("ok", media_type="text/plain")  # the probe: no store read per probe

    routes = [
        Route("/", runs_page),
        Route("/healthz", healthz),
        Route("/runs/{run}", run_page),
        Route("/runs/{run}/live", run_live),
        Route("/runs/{run}/stages/{stage}/logs/{attempt:int}", logs_page),
        Route("/runs/{run}/stages/{stage}/samples", samples_page),
        Route("/runs/{run}/stages/{stage}/samples/{shard}/image", sample_image),
        Route("/runs/{run}/stages/{stage}/artifacts/{name:path}", artifact),
        Route("/api/runs", api_runs),
        Route("/api/runs/{run}", api_run),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    return Starlette(routes=routes)
