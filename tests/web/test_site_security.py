"""The operator page's guard over HTTP, on a running daemon: evidence and static files (no traversal),
security headers and cookies, escaping of what the store holds, the token login, and the JSON routes that
share the port. Each module gets its own daemons (tests/web/daemon.py)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from urllib.parse import urlencode

import pytest

from linewatch.web.auth import SESSION_COOKIE
from tests.web.daemon import (  # noqa: F401  (fixtures)
    CAMERA,
    PRODUCT,
    TOKEN,
    Reply,
    WebClient,
    WebDaemon,
    daemon_model,
    token_daemon,
    web_daemon,
)
from tests.web.site_helpers import (  # noqa: F401  (probe_rows is a fixture)
    ESCAPED,
    JPEG_MAGIC,
    PAYLOAD,
    RAW,
    assert_html_page,
    history,
    label_fields,
    operator,
    probe_rows,
    real_event,
    stored_event,
)


# ---- evidence and static files ---------------------------------------------------------------------------
def test_evidence_traversal_and_foreign_names_are_404(web_daemon: WebDaemon, tmp_path: Path) -> None:  # noqa: F811
    event_id = web_daemon.wait_for_events()[0]
    row = stored_event(web_daemon, event_id)
    camera, day, name = row.snapshot.split("/")
    client = web_daemon.client()
    assert client.get(f"/evidence/{row.snapshot}").status == 200

    outside = tmp_path / "outside-normal.jpg"
    outside.write_bytes(JPEG_MAGIC + b"secret")
    folder = web_daemon.evidence_dir / camera / day
    planted_file = folder / "planted-normal.jpg"
    planted_dir = web_daemon.evidence_dir / "planted"
    planted_file.symlink_to(outside)
    planted_dir.symlink_to(tmp_path, target_is_directory=True)
    (tmp_path / day).mkdir()
    (tmp_path / day / "outside-normal.jpg").symlink_to(outside)
    try:
        paths = [
            "/evidence/..%2F..%2Fetc/passwd",
            "/evidence/../../etc/passwd",
            f"/evidence/{camera}/{day}/..%2F..%2Fjournal.sqlite3",
            f"/evidence/{camera}/{day}/..%2F..%2F..%2Fweb-secret",
            f"/evidence/%2e%2e/{day}/{name}",
            f"/evidence/{camera}/%2e%2e/{name}",
            f"/evidence/{camera}/{day}/planted-normal.jpg",  # a symlink out of the folder
            f"/evidence/planted/{day}/outside-normal.jpg",  # a symlinked folder
            f"/evidence/{camera}/{day}/{name.replace('.jpg', '.png')}",
            f"/evidence/{camera}/{day}/readme.txt",
            f"/evidence/{camera}/{day}/.hidden-normal.jpg",
            f"/evidence/{camera}/{day}/x-maybe.jpg",
            f"/evidence/{camera}/2026-13-45/{name}",
            f"/evidence/{camera}/2026-1-1/{name}",
            f"/evidence/{camera}/{day}x/{name}",
            f"/evidence/{camera}/{day}/nothing-normal.jpg",  # in the layout, but no such file
            f"/evidence/{camera}/{day}",
        ]
        for path in paths:
            reply = client.get(path)
            assert reply.status == 404, path
            assert b"secret" not in reply.body
    finally:
        planted_file.unlink()
        planted_dir.unlink()


@pytest.mark.parametrize(
    ("name", "media_type"), [("app.css", "text/css"), ("htmx.min.js", "text/javascript"), ("app.js", "text/javascript")]
)
def test_static_files_are_served_with_caching(web_daemon: WebDaemon, name: str, media_type: str) -> None:  # noqa: F811
    reply = web_daemon.client().get(f"/static/{name}")
    assert reply.status == 200 and reply.body
    assert (reply.header("content-type") or "").startswith(media_type)
    assert reply.header("cache-control") == "public, max-age=86400"
    assert reply.header("x-content-type-options") == "nosniff"
    page = web_daemon.client().get("/").text
    versioned = re.search(rf'/static/{re.escape(name)}\?v=([0-9a-f]{{12}})"', page)
    assert versioned is not None  # the pages ask for the content's hash: an upgrade's files are fetched at once
    assert web_daemon.client().get(f"/static/{name}?v={versioned.group(1)}").body == reply.body


@pytest.mark.parametrize(
    "path",
    [
        "/static/../config.py",
        "/static/..%2Fsite.py",
        "/static/site.py",
        "/static/htmx.LICENSE.txt",
        "/static/",
        "/static/nope.css",
    ],
)
def test_unknown_static_files_are_404(web_daemon: WebDaemon, path: str) -> None:  # noqa: F811
    reply = web_daemon.client().get(path)
    assert reply.status == 404
    assert b"import" not in reply.body


# ---- headers, cookies, escaping --------------------------------------------------------------------------
@pytest.mark.parametrize("path", ["/", "/review", "/history", "/models", "/login"])
def test_pages_carry_the_security_headers_and_a_lax_http_only_cookie(web_daemon: WebDaemon, path: str) -> None:  # noqa: F811
    reply = web_daemon.client().get(path)
    assert_html_page(reply)
    assert reply.header("x-content-type-options") == "nosniff"
    assert reply.header("x-frame-options") == "DENY"
    assert reply.header("referrer-policy") == "same-origin"
    assert reply.header("cache-control") == "no-store"
    (cookie,) = reply.header_values("set-cookie")
    attributes = [part.strip().lower() for part in cookie.split(";")]
    assert attributes[0].startswith(f"{SESSION_COOKIE}=")
    # Lax: a link from an HMI arrives logged in; posts from elsewhere carry no cookie (and need the CSRF token)
    assert "httponly" in attributes and "samesite=lax" in attributes and "path=/" in attributes
    assert "secure" not in attributes  # plain http on loopback: a Secure cookie would never come back


def test_a_known_session_gets_no_new_cookie(web_daemon: WebDaemon) -> None:  # noqa: F811
    client = web_daemon.client()
    client.get("/")
    assert client.get("/review").header_values("set-cookie") == []


def test_unknown_page_is_404_and_the_favicon_empty(web_daemon: WebDaemon) -> None:  # noqa: F811
    client = web_daemon.client()
    assert client.get("/admin").status == 404
    assert client.get("/favicon.ico").status == 204  # browsers ask on every page; no 404 in their consoles


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/review", {}),  # the episode's product and model version
        # product, model version and label user in the table; the product in the plot's legend
        ("/history", {"since": "2022-01-01T00:00:00+00:00", "until": "2022-01-02T00:00:00+00:00"}),
        ("/history", {"product": PAYLOAD}),
        ("/history", {"label": "normal", "camera": "probe"}),
        ("/models", {}),  # the retraining run's trigger, reason and candidate
    ],
)
def test_store_text_is_escaped_everywhere(
    web_daemon: WebDaemon,  # noqa: F811
    probe_rows: None,  # noqa: F811
    path: str,
    params: dict[str, str],
) -> None:
    page = assert_html_page(web_daemon.client().get(path + ("?" + urlencode(params) if params else "")))
    assert RAW not in page
    assert ESCAPED in page


def test_hostile_product_shows_escaped_in_the_review_item(web_daemon: WebDaemon, probe_rows: None) -> None:  # noqa: F811
    page = web_daemon.client().get("/review").text
    article = page[page.index('data-id="xss-event"') :]
    article = article[: article.index("</article>")]
    assert f"probe · &#34;&#39;&gt;{ESCAPED}" in article and RAW not in article


# ---- token mode ------------------------------------------------------------------------------------------
BEARER = {"Authorization": f"Bearer {TOKEN}"}


@pytest.mark.parametrize(
    "path",
    ["/", "/review", "/history?camera=cam0&verdict=defect", "/models", "/live/panel", f"/live/{CAMERA}/frame.jpg"],
)
def test_token_pages_redirect_to_the_login(token_daemon: WebDaemon, path: str) -> None:  # noqa: F811
    client = token_daemon.client()
    reply = client.get(path)
    assert reply.status == 303
    assert reply.header("location") == "/login?" + urlencode({"next": path})
    assert client.session is not None  # an unauthenticated session, to carry the login's CSRF token


def test_token_evidence_needs_the_login(token_daemon: WebDaemon) -> None:  # noqa: F811
    row = stored_event(token_daemon, token_daemon.wait_for_events()[0])
    reply = token_daemon.client().get(f"/evidence/{row.snapshot}")
    assert reply.status == 303 and not reply.body.startswith(JPEG_MAGIC)
    assert token_daemon.client().get(f"/evidence/{row.snapshot}", BEARER).status == 200


def test_token_htmx_requests_get_401_with_hx_redirect(token_daemon: WebDaemon) -> None:  # noqa: F811
    reply = token_daemon.client().get("/live/panel", {"HX-Request": "true"})
    assert reply.status == 401
    assert reply.header("hx-redirect") == "/login?next=%2Flive%2Fpanel"


def test_token_buttons_without_login_go_to_the_login(token_daemon: WebDaemon) -> None:  # noqa: F811
    client = token_daemon.client()
    event_id = token_daemon.wait_for_events()[0]
    before = len(token_daemon.labels())
    reply = client.post("/review/label", label_fields(client, "event", event_id, "normal", csrf=client.csrf("/login")))
    assert reply.status == 303 and (reply.header("location") or "").startswith("/login?next=")
    assert len(token_daemon.labels()) == before


def test_token_static_files_need_no_login(token_daemon: WebDaemon) -> None:  # noqa: F811
    assert token_daemon.client().get("/static/app.css").status == 200  # the login page needs its style


def test_token_login_asks_for_the_token(token_daemon: WebDaemon) -> None:  # noqa: F811
    page = assert_html_page(token_daemon.client().get("/login?next=/models"))
    assert "<h1>Log in</h1>" in page and 'name="token" type="password"' in page
    assert '<input type="hidden" name="next" value="/models">' in page


@pytest.mark.parametrize("token", ["wrong-token-0123456789", "", TOKEN[:-1], TOKEN + "x"])
def test_token_wrong_token_is_401_and_no_login(token_daemon: WebDaemon, token: str) -> None:  # noqa: F811
    client = token_daemon.client()
    reply = client.post("/login", {"csrf": client.csrf("/login"), "name": "Rae", "token": token, "next": "/review"})
    page = assert_html_page(reply, 401)
    assert "wrong token" in page and TOKEN not in page
    assert client.get("/review").status == 303


def test_token_login_without_the_token_field_is_401(token_daemon: WebDaemon) -> None:  # noqa: F811
    client = token_daemon.client()
    reply = client.post("/login", {"csrf": client.csrf("/login"), "name": "Sol", "next": "/"})
    assert reply.status == 401 and client.get("/").status == 303


def test_token_right_token_goes_to_next_with_a_session(token_daemon: WebDaemon) -> None:  # noqa: F811
    client = token_daemon.client()
    client.get("/review")
    unauthenticated = client.session
    reply = client.post(
        "/login",
        {"csrf": client.csrf("/login"), "name": "Tam", "token": TOKEN, "next": "/history?camera=cam0"},
    )
    assert reply.status == 303 and reply.header("location") == "/history?camera=cam0"
    assert client.session is not None and client.session != unauthenticated
    page = assert_html_page(client.get("/review"))
    assert "Tam" in page and "log out" in page
    assert client.get("/history?camera=cam0").status == 200


@pytest.mark.parametrize("target", ["//evil.example", "https://evil.example/x", "/\\evil.example"])
def test_token_login_never_redirects_off_the_site(token_daemon: WebDaemon, target: str) -> None:  # noqa: F811
    client = token_daemon.client()
    reply = client.post("/login", {"csrf": client.csrf("/login"), "name": "Uma", "token": TOKEN, "next": target})
    assert reply.status == 303 and reply.header("location") == "/"


def test_token_forged_session_is_refused(token_daemon: WebDaemon) -> None:  # noqa: F811
    import base64

    client = token_daemon.client()
    client.get("/")
    payload, signature = (client.session or "").split(".")
    nonce, _user, authenticated, expires, role, account = json.loads(
        base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))
    )
    assert authenticated is False
    forged_fields = [nonce, "Mallory", True, expires, role, account]
    forged = base64.urlsafe_b64encode(json.dumps(forged_fields).encode()).decode().rstrip("=")
    client.cookies[SESSION_COOKIE] = f"{forged}.{signature}"
    assert client.get("/review").status == 303


def test_token_bearer_header_opens_pages_and_buttons(token_daemon: WebDaemon) -> None:  # noqa: F811
    client = token_daemon.client()
    assert_html_page(client.get("/review", BEARER))
    assert client.get("/review", {"Authorization": "Bearer wrong-token-0123456789"}).status == 303
    event_id = token_daemon.wait_for_events()[0]
    reply = client.post("/review/label", {"target": "event", "target_id": event_id, "label": "normal"}, BEARER)
    assert reply.status == 303  # a script with the token needs no session and no CSRF token
    (record,) = token_daemon.labels(event_id)
    assert (record.payload["source"], record.payload["user"]) == ("web", None)


def test_token_json_routes_need_the_bearer_not_the_session(token_daemon: WebDaemon) -> None:  # noqa: F811
    client = operator(token_daemon, "Vic")
    assert client.get("/review").status == 200  # the session works for the page...
    for method, path in (("GET", "/healthz"), ("GET", "/metrics"), ("GET", "/model")):
        reply = client.request(method, path)
        assert reply.status == 401, path  # ...but not for the JSON routes
        assert reply.header("www-authenticate") == "Bearer"
        assert client.request(method, path, headers=BEARER).status == 200, path
    event_id = token_daemon.wait_for_events()[0]
    body = json.dumps({"event_id": event_id, "label": "normal"}).encode()
    before = len(token_daemon.labels())
    refused = client.request("POST", "/feedback", body, {"Content-Type": "application/json"})
    assert refused.status == 401 and len(token_daemon.labels()) == before


def test_token_logout_ends_the_session(token_daemon: WebDaemon) -> None:  # noqa: F811
    client = operator(token_daemon, "Wyn")
    assert client.get("/models").status == 200
    copied = dict(client.cookies)  # what a second browser, or someone who took the cookie, still holds
    assert client.post("/logout", {}).status == 403  # logging out needs the CSRF token too
    reply = client.post("/logout", {"csrf": client.csrf("/models")})
    assert reply.status == 303 and reply.header("location") == "/login"
    assert client.session is None  # the browser is told to drop the cookie
    assert client.get("/models").status == 303
    client.cookies.update(copied)
    assert client.get("/models").status == 303  # ended on the server: the kept cookie logs no one in


# ---- the JSON routes beside the page ---------------------------------------------------------------------
def test_json_routes_still_work_beside_the_page(web_daemon: WebDaemon) -> None:  # noqa: F811
    client = web_daemon.client()
    health = client.get("/healthz")
    assert health.status == 200 and health.header("content-type") == "application/json"
    assert json.loads(health.body)["cameras"][CAMERA] == "online"
    metrics = client.get("/metrics")
    assert metrics.status == 200 and b"linewatch_" in metrics.body
    assert client.get("/feedback").status == 405


def test_json_feedback_labels_beside_the_page(web_daemon: WebDaemon) -> None:  # noqa: F811
    client = web_daemon.client()
    event_id = real_event(web_daemon, client)
    body = json.dumps({"event_id": event_id, "label": "normal", "user": "script"}).encode()
    form = client.request("POST", "/feedback", body, {"Content-Type": "application/x-www-form-urlencoded"})
    assert form.status == 415  # a form from another site cannot label
    reply = client.request("POST", "/feedback", body, {"Content-Type": "application/json"})
    assert reply.status == 200 and json.loads(reply.body)["target_id"] == event_id
    (record,) = web_daemon.labels(event_id)
    assert (record.payload["source"], record.payload["user"]) == ("http", "script")
    chunked = client.request(
        "POST", "/feedback", body, {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}, chunked=True
    )
    assert chunked.status == 411


# ---- hostile encodings and out-of-range values ---------------------------------------------
@pytest.mark.parametrize("where", ["field", "header"])
def test_non_ascii_csrf_token_is_refused_not_a_crash(web_daemon: WebDaemon, where: str) -> None:  # noqa: F811
    """BUG: a CSRF token with a non-ASCII character answers 500: ``SessionKeeper.csrf_ok``
    (linewatch/web/auth.py) hands the str to ``hmac.compare_digest``, which raises TypeError for non-ASCII
    str. It must be refused like any wrong token (403)."""
    client = operator(web_daemon, "Zed")
    event_id = real_event(web_daemon, client)
    fields = {"target": "event", "target_id": event_id, "label": "normal"}
    headers = {"X-CSRF-Token": "\xe9"} if where == "header" else {}
    if where == "field":
        fields["csrf"] = "\xe9"
    before = len(web_daemon.labels())
    reply = client.post("/review/label", fields, headers)
    assert reply.status == 403, reply.text[:200]
    assert len(web_daemon.labels()) == before


def test_non_ascii_session_cookie_is_ignored_not_a_crash(web_daemon: WebDaemon) -> None:  # noqa: F811
    """BUG: a session cookie whose signature holds a non-ASCII character answers 500 on every page
    (``SessionKeeper.decode``, linewatch/web/auth.py: ``hmac.compare_digest`` on a non-ASCII str). Cookies are
    not scoped by port, so another service on the same host can leave such a cookie and lock the operator
    out until it expires. A cookie that cannot be read must count as no session."""
    reply = web_daemon.client().get("/review", {"Cookie": f"{SESSION_COOKIE}=abc.\xe9"})
    assert reply.status == 200, reply.text[:200]
    assert reply.header_values("set-cookie")  # a fresh session instead


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "0001-01-01T00:00"}, "since"),  # 0001-01-01 00:00 at +05:30 is before year 1 in UTC
        ({"until": "9999-12-31T23:59:59-05:00"}, "until"),
        ({"before": "0001-01-01T00:00:00+05:30|x"}, "before"),
    ],
)
def test_out_of_range_time_is_a_bad_filter(web_daemon: WebDaemon, params: dict[str, str], field: str) -> None:  # noqa: F811
    """BUG: a time the store cannot hold answers 503 "the main store cannot be read right now: ...
    OverflowError: date value out of range" (with the store's file path): ``_local_datetime`` and ``_cursor``
    (linewatch/web/site.py) accept any parseable time, and the UTC conversion fails only in the query. A
    monitoring check would count the store as down; the answer must be 400 naming the field."""
    page = history(web_daemon.client(), **params)
    assert page.status == 400, page.text[-600:]
    assert field in page.text
