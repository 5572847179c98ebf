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

from linewatch.sinks.throttle import AuthThrottle
from linewatch.web.auth import SESSION_COOKIE, Session, SessionKeeper, operator_name, safe_next
from linewatch.web.params import field


class LoginPages:
    """``/login`` (GET and POST) and ``/logout``; the wrong-token throttle of the port applies to the login."""

    keeper: SessionKeeper
    throttle: AuthThrottle
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
        if self.keeper.token_required:
            client = request.client.host if request.client is not None else ""
            wait = self.throttle.retry_after(client, "login")
            if wait > 0:
                return self._too_many_tries(request, wait)
            if not self.keeper.token_ok(field(form, "token") or ""):
                self.throttle.failed(client, "login")
                return self._login_again(request, session, target, "wrong token")
            self.throttle.succeeded(client)
        response = RedirectResponse(target, status_code=303)
        self._set_cookie(response, request, self.keeper.issue(name, True, time.time()))
        return response

    def _login_again(self, request: Request, session: Session | None, target: str, problem: str) -> Response:
        context = {**self._common(request, session), "next": target, "problem": problem}
        return self._render("login.html", context, 400 if problem != "wrong token" else 401)

    def logout(self, request: Request, session: Session | None, _form: FormData | None) -> Response:
        self.keeper.end(session, time.time())
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response
