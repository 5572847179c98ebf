"""What a newcomer meets in a real browser (issue 21): the first-start progress page that reloads itself, the
heatmap legend on the Live and Review pages (styled under the page's Content-Security-Policy), and the review
queue paged through with "Older"."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from linewatch.config import load_config
from linewatch.daemon.starting import PAGE_REFRESH_S, StartingPort
from tests.daemon.test_starting import starting_config
from tests.web.browser import chromium_page, save_screenshot  # noqa: F401  (a fixture)
from tests.web.daemon import CAMERA, WebDaemon, daemon_model, web_daemon  # noqa: F401  (fixtures)
from tests.web.test_browser import BrowserProblems, page  # noqa: F401  (a fixture)


def test_the_starting_page_shows_the_stage_and_reloads_itself(
    page: tuple[Page, BrowserProblems],  # noqa: F811
    tmp_path: Path,
) -> None:
    browser, problems = page
    starting = StartingPort(load_config(starting_config(tmp_path)))
    starting.start()
    try:
        starting.report("training the demo model: 40 % (step 80 of 200)", 0.4)
        browser.goto(f"http://127.0.0.1:{starting.port}/")
        expect(browser.locator("h1")).to_have_text("linewatch test/l1 is starting")
        expect(browser.locator("p").first).to_have_text("training the demo model: 40 % (step 80 of 200)")
        expect(browser.locator("progress")).to_have_attribute("value", "40")
        save_screenshot(browser, "starting", tmp_path)
        starting.report("loading the model", None)
        expect(browser.locator("p").first).to_have_text("loading the model", timeout=(PAGE_REFRESH_S + 5) * 1000)
        expect(browser.locator("progress")).to_have_count(0)  # nothing measurable: no bar
    finally:
        starting.stop()
    # The page answers 503 on purpose (load balancers and health checks must not take it for the daemon's
    # page); chromium reports every such load on the console. Nothing else may appear there.
    assert [m for m in problems.messages if "status of 503 (Service Unavailable)" not in m] == []


@pytest.mark.parametrize("path", ["/", "/review"])
def test_the_heatmap_legend_is_on_live_and_review(
    page: tuple[Page, BrowserProblems],  # noqa: F811
    web_daemon: WebDaemon,  # noqa: F811
    path: str,
    tmp_path: Path,
) -> None:
    browser, problems = page
    web_daemon.wait_for_events()
    browser.goto(f"{web_daemon.base_url}{path}")
    legend = browser.locator("p.legend")
    expect(legend).to_be_visible()
    expect(legend).to_contain_text("pixel threshold (yellow) up to twice it and more (red)")
    expect(legend).to_contain_text("A normal part shows no colour")
    # The ramp and the outline swatch are drawn by the stylesheet: an empty box means the CSS did not load.
    ramp = legend.locator(".ramp")
    assert "gradient" in ramp.evaluate("element => getComputedStyle(element).backgroundImage")
    assert ramp.evaluate("element => element.getBoundingClientRect().width") > 0
    save_screenshot(browser, f"legend{path.replace('/', '-')}", tmp_path)
    assert problems.messages == []


def test_the_review_queue_pages_through_every_item_once(
    page: tuple[Page, BrowserProblems],  # noqa: F811
    web_daemon: WebDaemon,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    browser, problems = page
    monkeypatch.setattr("linewatch.web.review.PAGE_ITEMS", 3)  # the daemon runs in this process
    web_daemon.wait_for_events(count=7)
    browser.goto(f"{web_daemon.base_url}/review")
    count = browser.locator("p.count")
    expect(count).to_contain_text("waiting; showing 1–3")
    waiting = int(count.locator("strong").inner_text())
    assert waiting >= 7
    seen: list[str] = []
    for first in (1, 4, 7):
        expect(count).to_contain_text(f"showing {first}–")
        ids = browser.locator(".review-item").evaluate_all("items => items.map(item => item.dataset.id)")
        assert 1 <= len(ids) <= 3
        seen.extend(ids)
        if first < 7:
            browser.locator("a.older").first.click()
    assert len(seen) == len(set(seen)) >= 7  # newest first, no item twice across pages
    assert problems.messages == []


def test_save_as_normal_sample_from_a_live_tile(
    page: tuple[Page, BrowserProblems],  # noqa: F811
    web_daemon: WebDaemon,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The button posts through htmx with the page's CSRF header and shows where the frame went, while the
    panel keeps refreshing around it."""
    browser, problems = page
    web_daemon.wait_for_events()
    browser.goto(f"{web_daemon.base_url}/")
    button = browser.locator(f'article[data-camera="{CAMERA}"] form.sample button')
    expect(button).to_have_text("Save as normal sample")
    button.click()
    message = browser.locator("#messages p.message.ok")
    expect(message).to_contain_text(f"saved as {web_daemon.config.samples_dir / f'{CAMERA}-0001.png'}")
    save_screenshot(browser, "live-sample", tmp_path)
    assert sorted(path.name for path in web_daemon.config.samples_dir.iterdir()) == [f"{CAMERA}-0001.png"]
    assert problems.messages == []
