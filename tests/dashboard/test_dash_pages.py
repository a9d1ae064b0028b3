"""The dashboard over HTTP against a store made by the real controller (a stage failed once, then retried)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from dash_support import Dashboard, run_env, stop_local_run, wait_for

from sailk8s.ledger.runstate import load_state
from sailk8s.store.local import LocalStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dash(retried_store: LocalStore) -> Iterator[Dashboard]:
    with Dashboard(retried_store.uri) as d:
        yield d


def test_runs_page_lists_each_run_with_state_and_stages_done(dash: Dashboard) -> None:
    code, body = dash.get("/")
    assert code == 200
    assert 'data-run="r1"' in body and "succeeded" in body and "4 / 4" in body


def test_run_page_tells_the_retry_story(dash: Dashboard) -> None:
    code, body = dash.get("/runs/r1")
    assert code == 200
    for stage in ("ingest", "caption", "filter", "evaluate"):
        assert f'class="node" data-stage="{stage}" data-state="succeeded"' in body
    assert 'data-stage="caption" data-attempt="1" data-phase="Failed"' in body
    assert 'data-stage="caption" data-attempt="2" data-phase="Succeeded"' in body
    assert "caption attempt 1: Failed [app]" in body  # the bar's tooltip: failure class and cause


def test_run_page_shows_funnel_quality_and_evaluation(dash: Dashboard) -> None:
    body = dash.get("/runs/r1")[1]
    assert 'data-samples-in="12"' in body
    assert '<tr data-step="judge"><td>judge</td><td class="num remaining">6</td>' in body
    assert "−2 judge_mismatch" in body
    assert "a small red square on white" in body  # caption quality's example caption
    assert "accuracy <b>0.750</b> (3/4)" in body and "circle" in body


def test_archived_logs_of_the_failed_attempt(dash: Dashboard) -> None:
    code, body = dash.get("/runs/r1/stages/caption/logs/1")
    assert code == 200 and "failing with exit code 1" in body and 'data-rank="0"' in body
    assert "Failed [app]" in body


def test_sample_browser_shows_image_alt_text_recaption_scores_and_verdict(dash: Dashboard) -> None:
    code, body = dash.get("/runs/r1/stages/filter/samples")
    assert code == 200
    # The filter's input (caption's shard) with the filter's verdict on each sample.
    assert body.count('data-verdict="kept"') == 6 and body.count('data-verdict="dropped"') == 2
    assert '<figure class="sample dropped" data-key="s007"' in body
    assert "alt text 3" in body and "a red square number 3" in body and "judge_alignment 0.88" in body
    assert "/runs/r1/stages/caption/samples/shard-000000/image?key=s007" in body  # a dropped one's image
    outputs = dash.get("/runs/r1/stages/filter/samples?view=outputs")[1]
    assert outputs.count('data-verdict="kept"') == 6 and 'data-verdict="dropped"' not in outputs
    with urllib.request.urlopen(dash.url + "/runs/r1/stages/filter/samples/shard-000000/image?key=s003") as r:
        assert r.headers["Content-Type"] == "image/png" and r.read().startswith(b"\x89PNG")


def test_unknown_names_are_404_and_nothing_can_be_written(dash: Dashboard) -> None:
    assert dash.get("/runs/nope")[0] == 404
    assert dash.get("/runs/r1/stages/caption/logs/9")[0] == 200  # no logs: said on the page
    assert dash.get("/runs/r1/stages/filter/samples/..%2f..%2fetc/image?key=x")[0] == 404
    req = urllib.request.Request(dash.url + "/runs/r1", method="POST", data=b"")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req)
    assert err.value.code == 405


def test_run_page_is_served_fast(dash: Dashboard) -> None:
    dash.get("/runs/r1")  # warm: templates compiled
    # The server's CPU time for the page, not the wall time a busy machine stretches.
    before = _cpu_seconds(dash.proc.pid)
    code, _ = dash.get("/runs/r1")
    assert code == 200 and _cpu_seconds(dash.proc.pid) - before < 1.0


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (from /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_a_running_attempts_log_is_read_live_from_its_backend(tmp_path: Path) -> None:
    store_dir, local = tmp_path / "store", tmp_path / "local"
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump({"run": "hung", "backend": "local", "store": f"file://{store_dir}",
                                    "stages": [{"name": "h", "kind": "ingest", "outputs": ["data/h"]}]}))
    env = run_env(local, {"h": {"hang": True}})
    controller = subprocess.Popen([sys.executable, "-m", "sailk8s", "run", "-f", str(path)], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, text=True)
    try:
        store = LocalStore(store_dir, durable=False)
        wait_for(lambda: (s := load_state(store, "hung")) is not None and s.stages["h"].attempts,
                 timeout=120, what="the attempt to start")
        with Dashboard(f"file://{store_dir}", "-f", str(path), env=env) as dash:
            def live_page() -> str | None:
                body = dash.get("/runs/hung/stages/h/logs/1")[1]
                return body if "hanging" in body else None

            body = wait_for(live_page, timeout=120, what="the live log on the page")
            assert 'data-rank="live"' in body and "attempt still running: following" in body
            assert 'hx-trigger="every 2s"' in body  # the page follows it
    finally:
        stop_local_run(controller, local)
