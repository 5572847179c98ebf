"""The page's login and logout, and the session cookie they set: a part of :class:`linewatch.web.site.Site`
(a mixin, so site.py stays readable). Why the cookie and the token work as they do: linewatch/web/auth.py."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from linewatch.sinks.db import DatabaseError
from linewatch.sinks.throttle import AuthThrottle
from linewatch.sinks.users import authenticate, has_accounts, role_of
from linewatch.web.auth import SESSION_COOKIE, Session, SessionKeeper, operator_name, safe_next
from linewatch.web.params import field

ACCOUNTS_TTL_S = 10.0  # how long "are there accounts" and a user's role are taken as read from the store


class LoginPages:
    """``/login`` (GET and POST) and ``/logout``; the wrong-token throttle of the port applies to the login.

    With accounts in the store (``linewatch user add``) the login asks for a name and password and the
    session carries the account's role; otherwise the ``[http] token`` (or nothing, on a loopback port
    without one) opens everything, as before accounts existed. A user's current role is read from the
    store at most every ACCOUNTS_TTL_S, so a removed or demoted account loses its rights within seconds."""

    keeper: SessionKeeper
    throttle: AuthThrottle
    backend: Any  # a WebBackend (linewatch/web/site.py): its engine holds the accounts
    _accounts_seen: tuple[float, bool] | None = None
    _roles_seen: dict[str, tuple[float, str | None]]
    _render: Callable[..., HTMLResponse]
    _common: Callable[[Request, Session | None], dict[str, Any]]
    _refuse: Callable[[Request, int, str], Response]

    def _too_many_tries(self, request: Request, wait_s: float) -> Response:
        seconds = max(1, math.ceil(wait_s))
        response = self._refuse(request, 429, f"too many wrong tokens from this address; try again in {seconds} s")
        response.headers["Retry-After"] = str(seconds)
        return response

    def _set_cookie(self, response: Response, request: Request, session: Session) -> None:
        response.set_cookie(
            SESSION_COOKIE,
            self.keeper.encode(session),
            max_age=max(1, session.expires - int(time.time())),
            path="/",
            httponly=True,
            # Lax, not Strict: a link from an HMI or an e-mail must arrive logged in (a Strict cookie is left
            # out of such a navigation, and the fresh session issued then would log the operator out). Posts
            # from elsewhere still carry no cookie, and need the CSRF token besides.
            samesite="lax",
            secure=request.url.scheme == "https",
        )

    # ---- accounts ------------------------------------------------------------------------------------
    def _accounts_known(self) -> bool:
        """Whether :meth:`_accounts_active` would answer from its cache, without touching the store."""
        seen = self._accounts_seen
        return seen is not None and time.monotonic() - seen[0] <= ACCOUNTS_TTL_S

    def _accounts_active(self) -> bool:
        """Whether the store holds accounts; the last answer stands while the store cannot be read, and
        before any answer a store that cannot be read counts as holding them (the stricter login). A failed
        read is not retried for ACCOUNTS_TTL_S either: a down store must not cost every request a timeout.
        It may block on the store: the page's guard calls it on a worker thread first (linewatch/web/site.py)."""
        now = time.monotonic()
        seen = self._accounts_seen
        if seen is None or now - seen[0] > ACCOUNTS_TTL_S:
            try:
                active = has_accounts(self.backend.engine)
            except DatabaseError:
                active = True if seen is None else seen[1]
            self._accounts_seen = seen = (now, active)
        return seen[1]

    def _current_role(self, user: str | None) -> str | None:
        """The account's role now; None when it no longer exists (or the store cannot say, and never did)."""
        if user is None:
            return None
        now = time.monotonic()
        seen = self._roles_seen.get(user)
        if seen is None or now - seen[0] > ACCOUNTS_TTL_S:
            try:
                role = role_of(self.backend.engine, user)
            except DatabaseError:
                role = None if seen is None else seen[1]
            self._roles_seen[user] = seen = (now, role)
        return seen[1]

    # ---- login ---------------------------------------------------------------------------------------
    def login_page(self, request: Request, session: Session | None, _form: FormData | None) -> Response:
        context = {
            **self._common(request, session),
            "next": safe_next(request.query_params.get("next")),
            "problem": None,
        }
        return self._render("login.html", context)

    def login(self, request: Request, session: Session | None, form: FormData | None) -> Response:
        assert form is not None
        target = safe_next(field(form, "next"))
        try:
            name = operator_name(field(form, "name"))
        except ValueError as problem:
            return self._login_again(request, session, target, str(problem))
        role = "admin"  # the token, or a loopback port without one, opens everything
        accounts = self._accounts_active()
        if accounts or self.keeper.token_required:
            client = request.client.host if request.client is not None else ""
            wait = self.throttle.retry_after(client, "login")
            if wait > 0:
                return self._too_many_tries(request, wait)
            if accounts:
                found = authenticate(self.backend.engine, name or "", field(form, "password") or "")
                problem = "wrong name or password"
            else:
                found = "admin" if self.keeper.token_ok(field(form, "token") or "") else None
                problem = "wrong token"
            if found is None:
                self.throttle.failed(client, "login")
                return self._login_again(request, session, target, problem)
            self.throttle.succeeded(client)
            role = found
            self._roles_seen.pop(name or "", None)
        response = RedirectResponse(target, status_code=303)
        self._set_cookie(response, request, self.keeper.issue(name, True, time.time(), role, account=accounts))
        return response

    def _login_again(self, request: Request, session: Session | None, target: str, problem: str) -> Response:
        context = {**self._common(request, session), "next": target, "problem": problem}
        return self._render("login.html", context, 401 if problem.startswith("wrong") else 400)

    def logout(self, request: Request, session: Session | None, _form: FormData | None) -> Response:
        self.keeper.end(session, time.time())
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response
