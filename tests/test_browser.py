"""The workbench in headless Chromium (Debian's, never a downloaded one): a prompt runs on the
embedded model, coloured tokens and plotly graphs appear, no console errors; one screenshot per
panel goes to results/screenshots/."""

from __future__ import annotations

import shutil

import pytest

from hatcat.paths import RESULTS

CHROMIUM = "/usr/bin/chromium"
SHOTS = RESULTS / "screenshots"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = pytest.mark.skipif(
    not shutil.which(CHROMIUM), reason="Debian chromium is not installed (.ci/run installs it)"
)


@pytest.fixture(scope="module")
def page(server: str, tmp_path_factory: pytest.TempPathFactory):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 1000},
        )
        page = context.new_page()
        page.errors = []
        page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
        page.on("pageerror", lambda e: page.errors.append(str(e)))
        page.goto(f"{server}/", wait_until="load", timeout=120_000)
        page.locator("#monitor-run").wait_for(timeout=60_000)  # the app keeps a stream open: no "networkidle"
        yield page
        context.close()


def _tab(page, name: str) -> None:
    page.get_by_role("tab", name=name).click()
    page.wait_for_timeout(800)


def _shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def test_monitor_runs_a_prompt_into_coloured_tokens_and_a_plot(page) -> None:
    page.locator("#monitor-prompt textarea").fill("Write one sentence about a frightened driver and loud music.")
    page.locator("#monitor-tokens input[type=number]").fill("12")
    page.locator("#monitor-tokens input[type=number]").press("Enter")
    page.locator("#monitor-run").click()
    page.locator("#monitor-analysis", has_text="Analysis:").wait_for(timeout=180_000)
    spans = page.locator("#monitor-heatmap .hc-tok")
    assert spans.count() >= 1
    colours = [spans.nth(i).evaluate("e => getComputedStyle(e).backgroundColor") for i in range(spans.count())]
    assert all(c not in ("", "rgba(0, 0, 0, 0)") for c in colours)
    assert spans.first.get_attribute("title").startswith("#0")
    page.locator("#monitor-plot .js-plotly-plot").wait_for(timeout=30_000)
    _shot(page, "monitor")
    assert page.errors == []


def test_other_panels_render_real_output(page) -> None:
    _tab(page, "Concept graph")
    # The trace may have fired nothing at the control-corpus thresholds; a search always draws the graph.
    search = page.get_by_label("search a concept (id or lemma)")
    search.fill("river")
    search.press("Enter")
    page.locator("#graph-plot .js-plotly-plot").wait_for(timeout=60_000)
    assert page.locator("#graph-plot .point").count() >= 2
    _shot(page, "concept_graph")

    _tab(page, "Thresholds")
    page.get_by_role("button", name="load template scores").click()
    page.locator("#thresholds-plot .js-plotly-plot").wait_for(timeout=180_000)
    _shot(page, "thresholds")

    _tab(page, "Steering")
    page.get_by_role("button", name="add / change").click()
    page.locator("#steering-table", has_text="0.15").wait_for(timeout=30_000)
    page.get_by_role("button", name="compare steered and unsteered").click()
    page.locator("#steering-steered .hc-tok").first.wait_for(timeout=180_000)
    _shot(page, "steering")

    _tab(page, "Training")
    _shot(page, "training")
    _tab(page, "Pack report")
    page.locator("#report-plot .js-plotly-plot").wait_for(timeout=60_000)
    _shot(page, "pack_report")
    assert page.errors == []
