"""The operator page in a real browser (headless chromium) against a running daemon: log in by name, judge
an episode "normal" with a click and another item with the keyboard, and see the labels reach the journal
and the store; the live view refreshes by itself and the Models page asks before a retraining. Every page
must run without a Content-Security-Policy violation or a script error (the CSP forbids inline scripts and
styles, so a template or htmx setting that needs them shows up here, not in production).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import ConsoleMessage, Dialog, Error, Page, expect
from sqlalchemy import func, select

from linewatch.sinks.db_schema import DefectEvent, Inspection, LabelRecord, RetrainRun
from tests.web.browser import chromium_page, save_screenshot  # noqa: F401  (a fixture)
from tests.web.daemon import CAMERA, TOKEN, WebDaemon, daemon_model, token_daemon, web_daemon  # noqa: F401  (fixtures)

NAME = "Ana Operator"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVENT_ITEM = 'article.review-item[data-target="event"]'


@dataclass
class BrowserProblems:
    """Console errors and uncaught exceptions of a page, but the favicon chromium asks for on its own."""

    messages: list[str] = field(default_factory=list)

    def console(self, message: ConsoleMessage) -> None:
        if message.type != "error" and "Content Security Policy" not in message.text:
            return
        if message.location.get("url", "").endswith("/favicon.ico"):
            return
        self.messages.append(f"console {message.type}: {message.text} at {message.location}")

    def page_error(self, error: Error) -> None:
        self.messages.append(f"page error: {error}")


@pytest.fixture
def page(chromium_page: Page) -> Iterator[tuple[Page, BrowserProblems]]:  # noqa: F811
    problems = BrowserProblems()
    chromium_page.on("console", problems.console)
    chromium_page.on("pageerror", problems.page_error)
    yield chromium_page, problems


def latest_label(daemon: WebDaemon, target: str, target_id: str) -> tuple[str | None, str | None, str | None]:
    """(label, label_source, label_user) the store holds for an episode or inspection."""
    table = DefectEvent if target == "event" else Inspection
    key = DefectEvent.event_id if target == "event" else Inspection.id
    rows = daemon.rows(select(table.label, table.label_source, table.label_user).where(key == target_id))
    return (rows[0].label, rows[0].label_source, rows[0].label_user) if rows else (None, None, None)


def stored_label_users(daemon: WebDaemon, target_id: str) -> list[tuple[str, str, str | None]]:
    query = select(LabelRecord.label, LabelRecord.source, LabelRecord.username).where(
        LabelRecord.target_id == target_id
    )
    return [(row.label, row.source, row.username) for row in daemon.rows(query)]


def judge_by_click_and_key(browser: Page, daemon: WebDaemon, user: str | None, tmp_path: Path) -> None:
    """On the review queue: "Normal" on the first episode by click, then the next item by the ``n`` key (the
    page moves the focus there); both reach the journal and the store as web labels of ``user``."""
    first = browser.locator(EVENT_ITEM).first
    expect(first).to_be_visible()
    event_id = first.get_attribute("data-id")
    assert event_id is not None
    first.get_by_role("button", name="Normal").click()

    judged = browser.locator(f'article.review-item[data-id="{event_id}"]')
    expect(judged).to_have_attribute("data-label", "normal")
    expect(judged).to_contain_text("Judged normal" + (f" by {user}" if user else "") + " just now")
    daemon.wait_until(lambda: latest_label(daemon, "event", event_id) == ("normal", "web", user))
    daemon.wait_until(lambda: stored_label_users(daemon, event_id) == [("normal", "web", user)])
    screenshot = save_screenshot(browser, "review-after-normal" + ("" if user else "-anonymous"), tmp_path)
    assert screenshot.read_bytes().startswith(PNG_SIGNATURE)

    focused = browser.locator(".review-item:focus")
    expect(focused).to_have_count(1)
    target, target_id = focused.get_attribute("data-target"), focused.get_attribute("data-id")
    assert target in ("event", "inspection") and target_id is not None and target_id != event_id
    assert focused.get_attribute("data-label") is None  # the next one nobody has judged
    browser.keyboard.press("n")
    expect(browser.locator(f'article.review-item[data-id="{target_id}"]')).to_have_attribute("data-label", "normal")
    daemon.wait_until(lambda: latest_label(daemon, target, target_id) == ("normal", "web", user))

    browser.reload()
    shown = browser.locator(".review-item").evaluate_all("items => items.map(item => item.dataset.id)")
    assert event_id not in shown and target_id not in shown  # judged: out of the queue


def test_operator_logs_in_and_judges_by_click_and_key(
    page: tuple[Page, BrowserProblems],
    web_daemon: WebDaemon,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The issue's scenario, from the login form on."""
    browser, problems = page
    web_daemon.wait_for_events(count=2)
    browser.goto(f"{web_daemon.base_url}/login?next=/review")
    browser.get_by_label("Your name").fill(NAME)
    browser.get_by_role("button", name="Continue").click()
    expect(browser.locator("h1")).to_have_text("Review queue")
    assert browser.url == f"{web_daemon.base_url}/review"
    expect(browser.locator("header.top .who")).to_contain_text(NAME)
    judge_by_click_and_key(browser, web_daemon, NAME, tmp_path)
    assert problems.messages == []


def test_anonymous_operator_judges_by_click_and_key(
    page: tuple[Page, BrowserProblems],
    web_daemon: WebDaemon,  # noqa: F811
    tmp_path: Path,
) -> None:
    """Without a token nobody has to log in: the labels go on record without a name."""
    browser, problems = page
    web_daemon.wait_for_events(count=2)
    browser.goto(f"{web_daemon.base_url}/review")
    expect(browser.locator(".hint")).to_contain_text("Labels are recorded without a name")
    judge_by_click_and_key(browser, web_daemon, None, tmp_path)
    assert problems.messages == []


def test_live_view_refreshes_itself(page: tuple[Page, BrowserProblems], web_daemon: WebDaemon) -> None:  # noqa: F811
    browser, problems = page
    web_daemon.wait_for_events()
    browser.goto(f"{web_daemon.base_url}/")
    frame = browser.locator(f'article.tile[data-camera="{CAMERA}"] img').first
    first_src = frame.get_attribute("src")
    assert first_src is not None and first_src.startswith(f"/live/{CAMERA}/frame.jpg?i=")
    expect(frame).not_to_have_attribute("src", first_src, timeout=10_000)  # htmx polls every [web] refresh_s
    expect(frame).to_have_js_property("complete", True)
    assert frame.evaluate("image => image.naturalWidth") > 0  # the JPEG loaded under the CSP
    assert problems.messages == []


def test_history_page_renders_without_script_errors(page: tuple[Page, BrowserProblems], web_daemon: WebDaemon) -> None:  # noqa: F811
    browser, problems = page
    web_daemon.wait_for_events()
    browser.goto(f"{web_daemon.base_url}/history?camera={CAMERA}")
    expect(browser.locator("svg.score-plot")).to_be_visible()
    expect(browser.locator("table.history tbody tr").first).to_contain_text(CAMERA)
    browser.get_by_label("Verdict").select_option("defect")
    browser.get_by_role("button", name="Show").click()
    browser.wait_for_url(re.compile(r".*verdict=defect.*"))
    verdicts = browser.locator("table.history tbody tr td.verdict").all_inner_texts()
    assert verdicts and set(verdicts) == {"defect"}
    assert problems.messages == []


def test_retrain_button_asks_first(page: tuple[Page, BrowserProblems], web_daemon: WebDaemon) -> None:  # noqa: F811
    browser, problems = page
    runs = select(func.count()).select_from(RetrainRun)
    before = web_daemon.rows(runs)[0][0]
    dialogs: list[str] = []

    def answer(accept: bool) -> None:
        def handle(dialog: Dialog) -> None:
            dialogs.append(dialog.message)
            if accept:
                dialog.accept()
            else:
                dialog.dismiss()

        browser.once("dialog", handle)

    browser.goto(f"{web_daemon.base_url}/models")
    button = browser.get_by_role("button", name="Retrain now")
    answer(accept=False)
    button.click()
    expect(browser.locator("#models-message .message")).to_have_count(0)
    answer(accept=True)
    button.click()
    expect(browser.locator("#models-message .message.ok")).to_contain_text("retraining started")
    assert dialogs == ["Start a retraining from the confirmed normals now?"] * 2
    web_daemon.wait_until(lambda: web_daemon.rows(runs)[0][0] == before + 1)
    assert problems.messages == []


def test_token_login_in_the_browser(page: tuple[Page, BrowserProblems], token_daemon: WebDaemon) -> None:  # noqa: F811
    """With ``[http] token`` the browser is sent to the login and back to the page it asked for. Last in the
    module, so the second daemon runs only for this test."""
    browser, problems = page
    browser.goto(f"{token_daemon.base_url}/models")
    assert browser.url == f"{token_daemon.base_url}/login?next=%2Fmodels"
    browser.get_by_label("Your name").fill(NAME)
    browser.get_by_label("Line token").fill(TOKEN)
    browser.get_by_role("button", name="Log in").click()
    expect(browser.locator("h1")).to_have_text("Models")
    assert browser.url == f"{token_daemon.base_url}/models"
    assert problems.messages == []
