"""The dashboard in a real browser (Debian's chromium, headless, driven by playwright): no console
errors, the store's figures on the page, live progress without a reload; a screenshot of each page."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from dash_support import Dashboard, artifacts_dir, live_run, set_progress, trained_run
from playwright.sync_api import sync_playwright

from sailk8s.ledger import StageResults
from sailk8s.store.local import LocalStore

pytestmark = pytest.mark.slow

# Milliseconds from navigation to the first contentful paint (headless chromium records it too).
FIRST_PAINT = """new Promise(done => new PerformanceObserver(list => {
  const fcp = list.getEntries().find(e => e.name === 'first-contentful-paint');
  if (fcp) { done(fcp.startTime); }
}).observe({type: 'paint', buffered: true}))"""
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH: `make test` installs Debian's chromium (apt-get install chromium); "
                    "it could not be installed here")
    with sync_playwright() as p:
        # Playwright's own browser download is not reachable: it drives the system chromium.
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def dash(retried_store: LocalStore) -> Iterator[Dashboard]:
    live_run(retried_store)  # a second run, still going, beside the finished one
    trained_run(retried_store)  # and a training run with a loss curve of two sub-stages
    with Dashboard(retried_store.uri) as d:
        yield d


class Page:
    """A browser tab that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any) -> None:
        self.page = browser.new_page(viewport={"width": 1400, "height": 1000})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, url: str) -> Any:
        self.page.goto(url, wait_until="load")
        return self.page


@pytest.fixture
def tab(browser: Any) -> Iterator[Page]:
    t = Page(browser)
    yield t
    t.page.close()
    assert t.errors == [], f"console errors: {t.errors}"


def test_runs_page(tab: Page, dash: Dashboard) -> None:
    page = tab.open(dash.url + "/")
    shots = artifacts_dir("runs")
    assert page.inner_text('tr[data-run="r1"]').split("\t")[1:2] == ["succeeded"]
    assert "4 / 4" in page.inner_text('tr[data-run="r1"]')
    assert "running" in page.inner_text('tr[data-run="live"]')
    page.screenshot(path=str(shots / "runs.png"), full_page=True)


def test_run_page_of_a_retried_run(tab: Page, dash: Dashboard) -> None:
    page = tab.open(dash.url + "/runs/r1")
    shots = artifacts_dir("run")
    paint = page.evaluate(FIRST_PAINT)
    (shots / "timing.json").write_text(json.dumps({"first_contentful_paint_ms": paint}))
    assert paint is not None and paint < 1000, f"first contentful paint {paint} ms"
    nodes = page.locator("svg.dag g.node")
    assert nodes.count() == 4
    assert {nodes.nth(i).get_attribute("data-state") for i in range(4)} == {"succeeded"}
    bars = page.locator('svg.timeline g.attempt[data-stage="caption"]')
    assert [bars.nth(i).get_attribute("data-phase") for i in range(bars.count())] == ["Failed", "Succeeded"]
    assert "[app]" in bars.first.locator("title").text_content()
    assert page.locator("ul.attempt-notes li").inner_text().startswith("caption #1 Failed [app]")
    assert page.inner_text('table.funnel tr[data-step="judge"] td.remaining') == "6"
    assert page.inner_text('#progress tr[data-stage="caption"] td.pct') == "100.0"
    page.screenshot(path=str(shots / "run-r1.png"), full_page=True)


def test_sample_browser(tab: Page, dash: Dashboard) -> None:
    page = tab.open(dash.url + "/runs/r1")
    page.click('section[data-stage="filter"] a.samples-link')
    page.wait_for_selector("figure.sample img")
    shots = artifacts_dir("samples")
    figures = page.locator("figure.sample")
    assert figures.count() == 8
    assert [figures.nth(i).get_attribute("data-verdict") for i in range(8)] == ["kept"] * 6 + ["dropped"] * 2
    assert figures.nth(7).locator(".verdict").inner_text() == "dropped"
    first = figures.first
    assert first.locator(".alt").inner_text() == "alt text 0"
    assert first.locator(".caption").inner_text() == "a red square number 0"
    assert "judge_alignment" in first.locator(".scores").inner_text()
    page.wait_for_function("[...document.querySelectorAll('figure.sample img')].every(i => i.complete)")
    widths = page.eval_on_selector_all("figure.sample img", "imgs => imgs.map(i => i.naturalWidth)")
    assert widths == [8] * 8  # every image decoded, the dropped ones' from caption's shard
    page.screenshot(path=str(shots / "samples-filter.png"), full_page=True)


def test_logs_page(tab: Page, dash: Dashboard) -> None:
    page = tab.open(dash.url + "/runs/r1/stages/caption/logs/1")
    assert "failing with exit code 1" in page.inner_text('pre.log[data-rank="0"]')
    page.screenshot(path=str(artifacts_dir("logs") / "logs-caption-1.png"), full_page=True)


def test_live_progress_changes_without_a_reload(tab: Page, dash: Dashboard,
                                                retried_store: LocalStore) -> None:
    page = tab.open(dash.url + "/runs/live")
    shots = artifacts_dir("live")
    page.evaluate("window.__notReloaded = true")
    row = '#progress tr[data-stage="train"]'
    assert page.inner_text(f"{row} td.done") == "10/100 tokens"
    page.screenshot(path=str(shots / "live-before.png"), full_page=True)
    set_progress(StageResults(retried_store, "live", "train"), 60.0)  # the trainer reports more
    page.wait_for_function(f"document.querySelector('{row} td.done').textContent === '60/100 tokens'",
                           timeout=30_000)
    assert page.evaluate("window.__notReloaded") is True
    assert page.inner_text(f"{row} td.pct") == "60.0"
    page.screenshot(path=str(shots / "live-after.png"), full_page=True)


def test_loss_curve_per_substage(tab: Page, dash: Dashboard) -> None:
    page = tab.open(dash.url + "/runs/trained")
    page.wait_for_selector('div.loss[data-stage="pretrain"] canvas')
    legend = page.inner_text('div.loss[data-stage="pretrain"] .u-legend')
    assert "alignment" in legend and "advance" in legend
    page.screenshot(path=str(artifacts_dir("loss") / "run-trained.png"), full_page=True)
