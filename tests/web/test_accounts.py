"""Accounts and roles on the operator page (issue 22): with accounts in the store the page logs in by name and
password, every route asks for its role, and a removed account is out within seconds."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from linewatch.sinks.db import DatabaseError, make_engine
from linewatch.sinks.db_migrate import upgrade_database
from linewatch.sinks.users import add_user, remove_user
from linewatch.web import login as login_module
from tests.web.browser import chromium_page  # noqa: F401  (a fixture)
from tests.web.daemon import (  # noqa: F401  (fixtures)
    CAMERA,
    TOKEN,
    WebClient,
    WebDaemon,
    daemon_model,
    running_daemon,
    token_daemon,
)
from tests.web.test_browser import BrowserProblems, page  # noqa: F401  (a fixture)

PASSWORD = "correct horse battery"
ROLES = ("viewer", "operator", "engineer", "admin")


@pytest.fixture(scope="module")
def accounts_daemon(daemon_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebDaemon]:  # noqa: F811
    """A loopback daemon without a token whose store holds one account per role, named after it."""
    root = tmp_path_factory.mktemp("accounts-daemon")
    store = f"sqlite:///{root / 'data' / 'linewatch.sqlite3'}"
    upgrade_database(store, root / "backups")
    engine = make_engine(store)
    for role in ROLES:
        add_user(engine, role, role, PASSWORD, "test")
    engine.dispose()
    with running_daemon(root, daemon_model) as daemon:
        assert daemon.config.store_url == store
        yield daemon


def _login(daemon: WebDaemon, name: str, password: str = PASSWORD) -> tuple[WebClient, int]:
    client = daemon.client()
    form = client.get("/login")
    csrf = re.search(r'name="csrf" value="([^"]+)"', form.text)
    assert csrf is not None and 'name="password"' in form.text and 'name="token"' not in form.text
    reply = client.post("/login", {"csrf": csrf.group(1), "name": name, "password": password, "next": "/"})
    return client, reply.status


# route -> the least role that may use it
ROUTES = {
    ("GET", "/"): "viewer",
    ("GET", "/review"): "viewer",
    ("GET", "/history"): "viewer",
    ("GET", "/models"): "viewer",
    ("POST", "/review/label"): "operator",
    ("POST", f"/live/{CAMERA}/sample"): "operator",
    ("POST", f"/live/{CAMERA}/enabled"): "operator",
    ("POST", f"/live/{CAMERA}/product"): "operator",
    ("POST", "/models/retrain"): "engineer",
    ("POST", "/models/rollback"): "engineer",
    ("GET", "/accounts"): "admin",
    ("POST", "/accounts/add"): "admin",
    ("POST", "/accounts/role"): "admin",
    ("POST", "/accounts/password"): "admin",
    ("POST", "/accounts/remove"): "admin",
}


@pytest.mark.parametrize("role", ROLES)
def test_every_route_asks_for_its_role(accounts_daemon: WebDaemon, role: str) -> None:
    client, status = _login(accounts_daemon, role)
    assert status == 303
    assert f"{role} ({role})" in client.get("/").text  # the header names the account and its role
    csrf = client.csrf("/models")
    for (method, path), needed in ROUTES.items():
        allowed = ROLES.index(role) >= ROLES.index(needed)
        if method == "GET":
            reply = client.get(path)
        else:  # fields that a handler refuses as bad input (400) only once the role let them through
            reply = client.post(path, {"csrf": csrf, "target": "event", "target_id": "no-such-id", "label": "normal",
                                       "inspection_id": "no-such-id", "version": "no-such-version"})  # fmt: skip
        if allowed:
            assert reply.status != 403, (role, method, path, reply.status)
        else:
            assert reply.status == 403 and f"it needs {needed}" in reply.text, (role, method, path, reply.status)


def test_buttons_a_role_may_not_use_are_not_shown(accounts_daemon: WebDaemon) -> None:
    viewer, _ = _login(accounts_daemon, "viewer")
    operator, _ = _login(accounts_daemon, "operator")
    assert (
        "Retrain now" not in operator.get("/models").text
        and "Retrain now" in _login(accounts_daemon, "engineer")[0].get("/models").text
    )
    accounts_daemon.wait_for_events()
    assert "Save as normal sample" not in viewer.get("/live/panel").text
    assert "Save as normal sample" in operator.get("/live/panel").text


def test_wrong_passwords_and_unknown_names_are_refused_alike(accounts_daemon: WebDaemon) -> None:
    _, wrong = _login(accounts_daemon, "operator", "not the password")
    _, unknown = _login(accounts_daemon, "nobody", PASSWORD)
    assert wrong == unknown == 401


def test_a_removed_account_is_logged_out_at_its_next_request(
    accounts_daemon: WebDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(login_module, "ACCOUNTS_TTL_S", 0.0)
    engine = make_engine(accounts_daemon.config.store_url)
    try:
        add_user(engine, "temp", "operator", PASSWORD, "test")
        client, status = _login(accounts_daemon, "temp")
        assert status == 303 and client.get("/review").status == 200
        remove_user(engine, "temp", "test")
        assert client.get("/review").status == 303  # to the login
    finally:
        engine.dispose()


def test_an_operator_in_the_browser_labels_but_cannot_retrain(
    page: tuple[Page, BrowserProblems],  # noqa: F811
    accounts_daemon: WebDaemon,
) -> None:
    """Logged in as an operator in chromium: the Review page's buttons are there, the Models page has no
    Retrain button, and a retrain posted by hand (as a script in the page would) is refused with 403."""
    browser, problems = page
    accounts_daemon.wait_for_events()
    browser.goto(f"{accounts_daemon.base_url}/models")
    assert browser.url == f"{accounts_daemon.base_url}/login?next=%2Fmodels"
    browser.get_by_label("User name").fill("operator")
    browser.get_by_label("Password").fill(PASSWORD)
    browser.get_by_role("button", name="Log in").click()
    expect(browser.locator("h1")).to_have_text("Models")
    expect(browser.get_by_role("button", name="Retrain now")).to_have_count(0)
    status = browser.evaluate(
        """async () => {
            const csrf = JSON.parse(document.body.getAttribute("hx-headers"))["X-CSRF-Token"];
            const reply = await fetch("/models/retrain", {method: "POST", headers: {"X-CSRF-Token": csrf,
                "Content-Type": "application/x-www-form-urlencoded"}, body: "reason=sneaky"});
            return reply.status;
        }"""
    )
    assert status == 403
    browser.goto(f"{accounts_daemon.base_url}/review")
    expect(browser.locator(".review-item button.normal").first).to_be_visible()
    assert [m for m in problems.messages if "403 (Forbidden)" not in m] == []


def test_a_slow_store_delays_only_the_page_request_that_reads_the_accounts(
    accounts_daemon: WebDaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Reading the accounts waits on the store (3 s when PostgreSQL is down). It must wait on a worker thread:
    on the event loop it would stall every request of the port, /healthz included."""
    release, returned = threading.Event(), threading.Event()

    def stuck_store(_engine: object) -> bool:
        release.wait(30)
        returned.set()
        raise DatabaseError("the store does not answer")

    monkeypatch.setattr(login_module, "ACCOUNTS_TTL_S", 0.0)
    monkeypatch.setattr(login_module, "has_accounts", stuck_store)
    answers: list[int] = []
    waiting = threading.Thread(target=lambda: answers.append(accounts_daemon.client().get("/login").status))
    waiting.start()
    try:
        time.sleep(0.3)  # the page request is now waiting on the store
        assert accounts_daemon.client().get("/healthz").status in (200, 503)
        assert not returned.is_set()  # answered while the store still held the page request
    finally:
        release.set()
        waiting.join(timeout=15)
    assert answers == [200]  # the last answer stands while the store cannot be read


def test_a_session_from_before_the_accounts_must_log_in_with_a_password(
    token_daemon: WebDaemon,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A token login named "erin" must not become the account erin once accounts exist: the name was
    self-declared. Such sessions are sent to the password login."""
    monkeypatch.setattr(login_module, "ACCOUNTS_TTL_S", 0.0)
    client = token_daemon.client()
    client.login("erin", TOKEN)
    assert client.get("/models").status == 200
    engine = make_engine(token_daemon.config.store_url)
    try:
        add_user(engine, "erin", "engineer", PASSWORD, "test")
        reply = client.get("/models")
        assert reply.status == 303 and reply.header("location").startswith("/login")
    finally:
        remove_user(engine, "erin", "test")  # the module's daemon goes back to token logins
        engine.dispose()


def test_an_admin_manages_accounts_on_the_page_and_every_change_names_them(accounts_daemon: WebDaemon) -> None:
    """Add, change the role, set a new password (the account's open session ends at once), remove; each change
    is listed with who made it. A second password that differs, or a too short one, changes nothing."""
    admin, _ = _login(accounts_daemon, "admin")
    csrf = admin.csrf("/accounts")
    post = lambda path, **form: admin.post(path, {"csrf": csrf, **form})  # noqa: E731
    assert post("/accounts/add", name="carol", role="operator", password=PASSWORD, again="typo").status == 409
    added = post("/accounts/add", name="carol", role="operator", password=PASSWORD, again=PASSWORD)
    assert added.status == 200 and "added carol (operator)" in added.text
    carol, status = _login(accounts_daemon, "carol")
    assert status == 303 and carol.get("/review").status == 200
    assert post("/accounts/role", name="carol", role="engineer").status == 200
    assert "engineer (engineer)" not in carol.get("/").text and "carol (engineer)" in carol.get("/").text
    assert post("/accounts/password", name="carol", password="short", again="short").status == 409
    changed = post("/accounts/password", name="carol", password="a new password!", again="a new password!")
    assert changed.status == 200 and "1 open session(s) ended" in changed.text
    assert carol.get("/review").status == 303  # logged out: the old session is over
    assert _login(accounts_daemon, "carol")[1] == 401 and _login(accounts_daemon, "carol", "a new password!")[1] == 303
    removed = post("/accounts/remove", name="carol")
    assert removed.status == 200 and "removed carol" in removed.text
    listing = admin.get("/accounts").text
    changes = listing.split("<h2>Changes</h2>", 1)[1]
    for what in ("added", "role changed", "password changed", "removed"):
        assert f"<td>web: admin</td><td>{what}</td>" in changes, what
    assert PASSWORD not in listing


def test_the_last_admin_cannot_be_removed_on_the_page(accounts_daemon: WebDaemon) -> None:
    admin, _ = _login(accounts_daemon, "admin")
    csrf = admin.csrf("/accounts")
    refused = admin.post("/accounts/remove", {"csrf": csrf, "name": "admin"})
    assert refused.status == 409 and "last admin" in refused.text
    demoted = admin.post("/accounts/role", {"csrf": csrf, "name": "admin", "role": "operator"})
    assert demoted.status == 409 and admin.get("/accounts").status == 200  # still an admin


def test_a_retrain_from_the_page_is_listed_with_the_account_that_asked(accounts_daemon: WebDaemon) -> None:
    engineer, _ = _login(accounts_daemon, "engineer")
    engineer.post("/models/retrain", {"csrf": engineer.csrf("/models"), "reason": "new coil supplier"})

    def actions() -> str:  # journaled, then forwarded to the store like a verdict
        return engineer.get("/models/state").text.split("<h2>Who did what</h2>", 1)[1]

    accounts_daemon.wait_until(lambda: "new coil supplier" in actions())
    row = r"<td>web: engineer</td><td>retrain requested</td><td>-</td><td>(started|busy): new coil supplier</td>"
    assert re.search(row, actions())  # busy when an earlier test's run still goes


def test_the_token_holder_adds_the_first_account_which_must_be_an_admin(
    token_daemon: WebDaemon,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(login_module, "ACCOUNTS_TTL_S", 0.0)
    client = token_daemon.client()
    client.login("root", TOKEN)
    assert "No accounts: the page logs in with the line token" in client.get("/accounts").text
    csrf = client.csrf("/accounts")
    form = {"csrf": csrf, "name": "first", "password": PASSWORD, "again": PASSWORD}
    refused = client.post("/accounts/add", {**form, "role": "operator"})
    assert refused.status == 409 and "the first account must be an admin" in refused.text
    assert client.post("/accounts/add", {**form, "role": "admin"}).status == 200
    try:
        reply = client.get("/models")  # the token session now has to log in by name and password
        assert reply.status == 303 and reply.header("location").startswith("/login")
        first, status = _login(token_daemon, "first")
        assert status == 303 and first.get("/accounts").status == 200
    finally:
        engine = make_engine(token_daemon.config.store_url)
        remove_user(engine, "first", "test")  # the module's daemon goes back to token logins
        engine.dispose()


def test_an_operator_switches_a_camera_and_changes_its_product_from_the_tile(accounts_daemon: WebDaemon) -> None:
    """The tile's buttons go through the daemon's own calls: the camera stops and starts, a product the model
    does not know is refused with the products it does, and both switches are listed as done by the account."""
    operator, _ = _login(accounts_daemon, "operator")
    accounts_daemon.wait_for_events()
    panel = operator.get("/live/panel").text
    assert "Change over" in panel and "Switch off" in panel
    csrf = operator.csrf("/")
    htmx = {"HX-Request": "true", "Sec-Fetch-Site": "same-origin"}
    refused = operator.post(f"/live/{CAMERA}/product", {"csrf": csrf, "product": "bracket Q"}, headers=htmx)
    assert refused.status == 409 and "knows no product" in refused.text
    assert operator.post(f"/live/{CAMERA}/enabled", {"csrf": csrf, "enabled": "false"}, headers=htmx).status == 200
    accounts_daemon.wait_until(lambda: "Switch on" in operator.get("/live/panel").text)
    assert operator.post(f"/live/{CAMERA}/enabled", {"csrf": csrf, "enabled": "true"}, headers=htmx).status == 200
    accounts_daemon.wait_until(lambda: "Switch off" in operator.get("/live/panel").text)

    def actions() -> str:
        return operator.get("/models/state").text.split("<h2>Who did what</h2>", 1)[1]

    accounts_daemon.wait_until(lambda: "camera enabled" in actions())
    assert f"<td>web: operator</td><td>camera disabled</td><td>{CAMERA}</td>" in actions()
    assert f"<td>web: operator</td><td>camera enabled</td><td>{CAMERA}</td>" in actions()
