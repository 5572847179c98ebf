"""The operator's page: live view, review queue, history and models, as a Starlette app.

Server-rendered Jinja2 templates (autoescaped) with htmx for the parts that refresh or answer a button, and
a few lines of our own JavaScript for keyboard shortcuts; every page also works as plain HTML forms. What
the page needs from the running daemon comes through :class:`WebBackend` (linewatch/daemon/web_mount.py implements
it), so this module reads the store and the journal only through that and linewatch/web/queries.py.

Safety: see linewatch/web/auth.py for logins and CSRF, linewatch/web/files.py for the evidence paths
served; static files come from a fixed list. A strict Content-Security-Policy allows scripts, styles
and images from this site only, so even a markup mistake cannot run a script from a product name.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, tzinfo
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode

import anyio
from jinja2 import Environment, PackageLoader, select_autoescape
from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from linewatch.feedback import FeedbackError, FeedbackRequest
from linewatch.pipeline.journal.records import JournalError
from linewatch.sinks.db import DatabaseError
from linewatch.sinks.http import bearer_ok
from linewatch.sinks.throttle import AuthThrottle
from linewatch.sinks.users import role_allows
from linewatch.types import ACTION_KINDS, Label, LabelTarget, VerdictLabel
from linewatch.web import queries
from linewatch.web.accounts import ACCOUNT_ACTIONS, AccountPages
from linewatch.web.auth import (
    CSRF_FIELD,
    CSRF_HEADER,
    SESSION_COOKIE,
    Session,
    SessionKeeper,
    same_origin,
)
from linewatch.web.files import NoEvidence, evidence_bytes, evidence_url
from linewatch.web.live import LiveFrames
from linewatch.web.live_pages import LivePages
from linewatch.web.login import LoginPages
from linewatch.web.params import (
    VERSION,
    BadInput,
    choice,
    cursor,
    field,
    identifier,
    local_datetime,
    optional_choice,
    optional_id,
    optional_text,
)
from linewatch.web.plot import score_plot
from linewatch.web.review import ReviewDesk, parse_cursor
from linewatch.web.rows import HistoryFilter

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "app.css": "text/css",
    "app.js": "text/javascript",
    "htmx.min.js": "text/javascript",
}
CSP = (
    "default-src 'none'; img-src 'self'; style-src 'self'; script-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
log = logging.getLogger(__name__)
MAX_FORM_BYTES = 16 * 1024
PAGE_WORKERS = 8  # threads for page handlers, apart from the JSON routes' (a slow store must not queue /healthz)
HISTORY_PAGE_ROWS = 100
PLOT_POINTS = 2000
RUNS_SHOWN = 30


class WebBackend(Protocol):
    """What the page reads from and asks of the running daemon."""

    line: str  # "<site>/<line>"
    cameras: list[tuple[str, str]]  # (name, product now) of every configured camera
    evidence_dir: Path
    engine: Engine
    live: LiveFrames

    def status(self) -> dict[str, Any]: ...  # the /healthz document
    def model(self) -> dict[str, Any]: ...  # the model/state document
    def label(self, request: FeedbackRequest) -> Label: ...  # journaled like MQTT feedback; FeedbackError
    def versions(self) -> list[dict[str, Any]]: ...  # model versions, newest first, with the store's rows merged
    def runs(self, limit: int) -> list[dict[str, Any]]: ...  # retrain runs, newest first
    def rollback(self, version: str, user: str | None) -> tuple[bool, str]: ...  # (done, what happened)
    def retrain(self, reason: str | None, user: str | None) -> tuple[bool, str]: ...  # (started, what happened)
    def set_enabled(self, camera: str, enabled: bool, user: str | None) -> None: ...  # applied in the background
    def select_product(self, camera: str, product: str, user: str | None) -> tuple[bool, str]: ...  # (done, what)


@dataclass(frozen=True)
class WebSettings:
    refresh_s: float
    review_window: timedelta
    close_call_band: float
    timezone: tzinfo
    samples_dir: Path  # where "Save as normal sample" writes (config.samples_dir)


Handler = Callable[[Request, Session | None, FormData | None], Response]


class Site(LoginPages, AccountPages, LivePages):
    """Builds the Starlette app; one instance per daemon."""

    def __init__(
        self, backend: WebBackend, keeper: SessionKeeper, settings: WebSettings, throttle: AuthThrottle
    ) -> None:
        self.backend = backend
        self.keeper = keeper
        self.settings = settings
        self.throttle = throttle  # the port's: wrong tokens count the same on the JSON routes and here
        self._roles_seen = {}
        keeper.accounts = self._accounts_active  # accounts in the store: log in by name and password
        self.env = Environment(
            loader=PackageLoader("linewatch.web", "templates"), autoescape=select_autoescape(default=True)
        )
        self.env.filters["local"] = self._local_time
        self.env.filters["score"] = lambda value: f"{value:.4f}"
        self.env.globals["evidence_url"] = evidence_url
        self._static = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_FILES}
        versions = {name: hashlib.sha256(data).hexdigest()[:12] for name, data in self._static.items()}
        self.env.globals["static_url"] = lambda name: f"/static/{name}?v={versions[name]}"
        self.review = ReviewDesk(backend.engine, settings.review_window, settings.close_call_band)
        self._workers: anyio.CapacityLimiter | None = None  # made on the server's event loop, at first use
        routes = [
            *self.live_routes(),
            Route("/review", self._page(self.review_page)),
            Route("/review/label", self._page(self.review_label, post=True, role="operator"), methods=["POST"]),
            Route("/history", self._page(self.history_page)),
            Route("/models", self._page(self.models_page)),
            Route("/models/state", self._page(self.models_state)),
            Route("/models/rollback", self._page(self.models_rollback, post=True, role="engineer"), methods=["POST"]),
            Route("/models/retrain", self._page(self.models_retrain, post=True, role="engineer"), methods=["POST"]),
            Route("/evidence/{camera}/{day}/{name}", self._page(self.evidence)),
            Route("/login", self._page(self.login_page, open_=True)),
            Route("/login", self._page(self.login, post=True, open_=True), methods=["POST"]),
            Route("/logout", self._page(self.logout, post=True, open_=True), methods=["POST"]),
            *self.account_routes(),
            Route("/static/{name}", self.static),
            Route("/favicon.ico", lambda _request: Response(status_code=204)),  # no icon; not a 404 per page view
        ]
        self.app = Starlette(routes=routes)

    # ---- the guard every page and button goes through -------------------------------------------------
    def _page(
        self, handler: Handler, post: bool = False, open_: bool = False, role: str = "viewer"
    ) -> Callable[[Request], Awaitable[Response]]:
        """Session (issued when missing), login when a token or accounts require it, the session's role at
        least ``role`` (USER_ROLES; the bearer token passes), CSRF and origin checks on POSTs, the form read
        with a size limit; the handler then runs on a worker thread (it may block on the store)."""

        async def endpoint(request: Request) -> Response:
            # Reading the accounts may wait on the store (3 s when PostgreSQL is down): a worker thread waits,
            # never the event loop that serves every other request. The answer is then cached.
            if not self._accounts_known():
                await anyio.to_thread.run_sync(self._accounts_active)
            now = time.time()
            session = self.keeper.decode(request.cookies.get(SESSION_COOKIE), now)
            authorization = request.headers.get("authorization")
            by_bearer = False
            if self.keeper.token is not None and authorization is not None:  # a script's bearer: throttled
                client = request.client.host if request.client is not None else ""
                wait = self.throttle.retry_after(client, "bearer")
                if wait > 0:
                    return self._too_many_tries(request, wait)
                by_bearer = bearer_ok(authorization, self.keeper.token)
                if by_bearer:
                    self.throttle.succeeded(client)
                else:
                    self.throttle.failed(client, "bearer")
            fresh = session is None and not by_bearer
            if fresh:
                session = self.keeper.issue(None, False, now)
            signed_in = session is not None and session.authenticated and bool(session.user)
            if not open_ and not by_bearer and signed_in and self.keeper.accounts():
                assert session is not None  # the account's role now: a removed one is logged out, and a session
                # from before the accounts (token, or a name on an open port) must log in with a password
                current = None
                if session.account:
                    current = await anyio.to_thread.run_sync(self._current_role, session.user)
                session = replace(session, role=current) if current else replace(session, authenticated=False)
            if not open_ and not by_bearer and not (session is not None and session.authenticated):
                response = self._to_login(request)
            elif not open_ and not by_bearer and session is not None and not role_allows(session.role, role):
                response = self._refuse(request, 403, f"as {session.role} you may not do this; it needs {role}")
            else:
                response = await self._run(request, session, handler, post, by_bearer)
            if fresh and session is not None and SESSION_COOKIE not in response.headers.get("set-cookie", ""):
                self._set_cookie(response, request, session)
            return response

        return endpoint

    async def _run(
        self, request: Request, session: Session | None, handler: Handler, post: bool, by_bearer: bool
    ) -> Response:
        form = None
        if post:
            length = request.headers.get("content-length")
            if length is None or not length.isdigit() or int(length) > MAX_FORM_BYTES:
                return self._refuse(request, 413, f"a form must state its length and stay under {MAX_FORM_BYTES} bytes")
            form = await request.form(max_files=0, max_fields=16)
            if not by_bearer:
                offered = request.headers.get(CSRF_HEADER) or field(form, CSRF_FIELD)
                if not same_origin(request.headers, request.headers.get("host")):
                    return self._refuse(request, 403, "cross-site request refused")
                if not self.keeper.csrf_ok(session, offered):
                    return self._refuse(
                        request, 403, "the page has expired or the request did not come from it; reload"
                    )
        if self._workers is None:
            self._workers = anyio.CapacityLimiter(PAGE_WORKERS)
        try:
            response = await anyio.to_thread.run_sync(handler, request, session, form, limiter=self._workers)
        except BadInput as problem:
            return self._refuse(request, 400, str(problem))
        except DatabaseError as problem:
            return self._refuse(request, 503, f"the main store cannot be read right now: {problem}")
        except JournalError as problem:
            log.error("web page: the journal failed: %s", problem)
            return self._refuse(request, 503, f"NOT recorded: the journal cannot be written ({problem})")
        except Exception:  # never a bare 500 that htmx would swap in place of what the operator was judging
            log.exception("web page %s %s failed", request.method, request.url.path)
            return self._refuse(request, 500, "internal error, nothing was recorded; see the daemon's log")
        if response.media_type == "text/html":
            response.headers["content-security-policy"] = CSP
        return response

    def _to_login(self, request: Request) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        location = "/login?" + urlencode({"next": target})
        if request.headers.get("hx-request"):  # a refreshing fragment: send the whole page to the login
            return Response(status_code=401, headers={"HX-Redirect": location})
        return RedirectResponse(location, status_code=303)  # a plain form too: its post is lost, the login is not

    def _refuse(self, request: Request, status: int, message: str) -> Response:
        if request.headers.get("hx-request"):
            response = self._render("_message.html", {"message": message, "error": True}, status)
            response.headers["HX-Retarget"] = "#messages"
            response.headers["HX-Reswap"] = "innerHTML"
        else:
            response = self._render("error.html", {**self._common(request, None), "message": message}, status)
        response.headers["content-security-policy"] = CSP
        return response

    # ---- rendering helpers ---------------------------------------------------------------------------
    def _render(self, template: str, context: dict[str, Any], status: int = 200) -> HTMLResponse:
        return HTMLResponse(self.env.get_template(template).render(context), status_code=status)

    def _common(self, request: Request, session: Session | None) -> dict[str, Any]:
        model = self.backend.model()
        return {
            "line": self.backend.line,
            "path": request.url.path,
            "user": session.user if session is not None else None,
            "csrf": self.keeper.csrf_token(session) if session is not None else "",
            "login_needed": self.keeper.login_required,
            "accounts": self.keeper.accounts(),
            "role": session.role if session is not None else None,
            "can": {
                need: session is not None and role_allows(session.role, need)
                for need in ("operator", "engineer", "admin")
            },
            "model": model,
            "refresh_ms": int(self.settings.refresh_s * 1000),
            "zone": getattr(self.settings.timezone, "key", None) or datetime.now(self.settings.timezone).tzname(),
        }

    def _local_time(self, value: datetime | str | None) -> str:
        if value is None or value == "":
            return "-"
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return value
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(self.settings.timezone).strftime("%Y-%m-%d %H:%M:%S %Z")

    # ---- review queue --------------------------------------------------------------------------------
    def review_page(self, request: Request, session: Session | None, _form: FormData | None) -> Response:
        params = request.query_params
        try:
            after = parse_cursor(params["after"]) if params.get("after") else None
            position = int(params.get("n", "0")) if after is not None else 0
        except ValueError as problem:
            return self._refuse(request, 400, str(problem))
        page = self.review.page(datetime.now(UTC), after, max(position, 0))
        context = {
            **self._common(request, session),
            "page": page,
            "items": page.items,
            "window_h": self.settings.review_window / timedelta(hours=1),
            "band_pct": self.settings.close_call_band * 100,
        }
        return self._render("review.html", context)

    def review_label(self, request: Request, session: Session | None, form: FormData | None) -> Response:
        assert form is not None
        target = choice(form, "target", ("event", "inspection"))
        target_id = identifier(form, "target_id")
        label = choice(form, "label", ("normal", "defect"))
        user = session.user if session is not None else None
        try:
            self.backend.label(FeedbackRequest(LabelTarget(target), target_id, VerdictLabel(label), user))
            self.review.judged(target, target_id, label)
        except FeedbackError as problem:
            return self._refuse(request, 404 if problem.reason == "unknown_id" else 400, str(problem))
        if not request.headers.get("hx-request"):
            return RedirectResponse("/review", status_code=303)
        try:
            item = queries.review_item(self.backend.engine, target, target_id)
            earlier = queries.label_history(self.backend.engine, target, target_id)
        except DatabaseError:  # the label is journaled and will reach the store: say so, not "failed"
            item, earlier = None, []
        context = {
            **self._common(request, session),
            "item": item,
            "pending": (target, target_id, label, user),
            "earlier": earlier,  # who judged it before (the store may not hold this label yet)
        }
        return self._render("_item.html", context)

    # ---- history -------------------------------------------------------------------------------------
    def history_page(self, request: Request, session: Session | None, _form: FormData | None) -> Response:
        params = request.query_params
        tz = self.settings.timezone
        flt = HistoryFilter(
            camera=optional_id(params.get("camera"), "camera"),
            product=optional_text(params.get("product"), "product"),
            verdict=optional_choice(params.get("verdict"), "verdict", ("normal", "defect")),  # type: ignore[arg-type]
            label=optional_choice(params.get("label"), "label", ("normal", "defect", "unlabelled")),  # type: ignore[arg-type]
            since=local_datetime(params.get("since"), "since", tz),
            until=local_datetime(params.get("until"), "until", tz),
            part_id=optional_id(params.get("part"), "part"),
        )
        if flt.since is not None and flt.until is not None and flt.until <= flt.since:
            raise BadInput("until must be later than since")
        before = cursor(params.get("before"))
        rows, next_cursor = queries.history_page(self.backend.engine, flt, HISTORY_PAGE_ROWS, before)
        points = queries.score_series(self.backend.engine, flt, PLOT_POINTS)
        kept = {key: value for key, value in params.items() if key != "before" and value}
        older = None
        if next_cursor is not None:
            older = "/history?" + urlencode({**kept, "before": f"{next_cursor[0].isoformat()}|{next_cursor[1]}"})
        products = sorted({product for _name, product in self.backend.cameras})
        context = {
            **self._common(request, session),
            "rows": rows,
            "filter": flt,
            "params": params,
            "cameras": [name for name, _product in self.backend.cameras],
            "products": products,
            "plot": score_plot(points, tz),
            "older": older,
            "newest": "/history?" + urlencode(kept) if before is not None else None,
        }
        return self._render("history.html", context)

    # ---- models --------------------------------------------------------------------------------------
    def models_page(self, request: Request, session: Session | None, _form: FormData | None) -> Response:
        return self._render("models.html", self._models_context(request, session))

    def models_state(self, request: Request, session: Session | None, _form: FormData | None) -> Response:
        return self._render("_models_state.html", self._models_context(request, session))

    def _models_context(self, request: Request, session: Session | None) -> dict[str, Any]:
        line_actions = tuple(kind for kind in ACTION_KINDS if kind not in ACCOUNT_ACTIONS)
        try:
            runs, runs_problem = self.backend.runs(RUNS_SHOWN), None
            actions = queries.recent_actions(self.backend.engine, line_actions)
        except DatabaseError as problem:  # rollback works from the folder: keep the page, say what is missing
            runs, actions = [], []
            runs_problem = f"retraining runs and actions cannot be read from the store right now: {problem}"
        return {
            **self._common(request, session),
            "versions": self.backend.versions(),
            "runs": runs,
            "actions": actions,
            "runs_problem": runs_problem,
        }

    def models_rollback(self, request: Request, session: Session | None, form: FormData | None) -> Response:
        assert form is not None
        version = identifier(form, "version", pattern=VERSION)
        who = session.user if session is not None else None
        return self._models_answer(request, session, self.backend.rollback(version, who))

    def models_retrain(self, request: Request, session: Session | None, form: FormData | None) -> Response:
        assert form is not None
        reason = optional_text(field(form, "reason"), "reason")
        who = session.user if session is not None else None
        return self._models_answer(request, session, self.backend.retrain(reason, who))

    def _models_answer(self, request: Request, session: Session | None, outcome: tuple[bool, str]) -> Response:
        """The outcome as a message (409 when refused): above the versions and runs, which refresh themselves
        on ``models-changed``; the whole page for a plain form post."""
        done, message = outcome
        status = 200 if done else 409
        if not request.headers.get("hx-request"):
            context = {**self._models_context(request, session), "message": message, "error": not done}
            return self._render("models.html", context, status)
        response = self._render("_message.html", {"message": message, "error": not done}, status)
        response.headers["HX-Trigger"] = "models-changed"
        return response

    # ---- files ---------------------------------------------------------------------------------------
    def evidence(self, request: Request, _session: Session | None, _form: FormData | None) -> Response:
        camera, day, name = (request.path_params[key] for key in ("camera", "day", "name"))
        try:
            data = evidence_bytes(self.backend.evidence_dir, camera, day, name)
        except NoEvidence as missing:
            return PlainTextResponse(str(missing), status_code=404)
        return Response(data, media_type="image/jpeg")  # not cached: a shared line PC keeps nothing after a logout

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        media_type = STATIC_FILES.get(name)
        if media_type is None:
            return PlainTextResponse("no such file", status_code=404)
        # Cached for a day: the pages ask for ?v=<content hash>, so an upgrade's new files are fetched at once.
        return Response(self._static[name], media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
