"""The page's Accounts view, for admins: add an account, change its role or password, remove it; and the
account changes made so far, with who made them. A part of :class:`linewatch.web.site.Site` (a mixin, so
site.py stays readable); the store's rules (names, roles, password length, the last admin stays, an
action row with each change) are linewatch/sinks/users.py's, shared with ``linewatch user``.

A new password or a removal ends the account's open sessions at once, so a password thought stolen stops
working everywhere; a role change applies at the account's next request. Before any account exists, the
token (or the open loopback port) makes its user an admin, who can add the first account here; it must be an
admin, or nobody could manage the others from the page.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from linewatch.sinks.db_schema import USER_ROLES
from linewatch.sinks.users import AccountError, add_user, list_users, remove_user, set_password, set_role
from linewatch.web import queries
from linewatch.web.auth import Session, SessionKeeper
from linewatch.web.params import field

ACCOUNT_ACTIONS = ("user_added", "user_removed", "user_role_changed", "user_password_changed")
Handler = Callable[[Request, Session | None, FormData | None], Response]


class AccountPages:
    """``/accounts`` and its four forms, each for the ``admin`` role."""

    keeper: SessionKeeper
    backend: Any  # a WebBackend (linewatch/web/site.py): its engine holds the accounts
    _accounts_seen: tuple[float, bool] | None
    _roles_seen: dict[str, tuple[float, str | None]]
    _render: Callable[..., HTMLResponse]
    _common: Callable[[Request, Session | None], dict[str, Any]]
    _page: Callable[..., Callable[[Request], Awaitable[Response]]]

    def account_routes(self) -> list[Route]:
        routes = [Route("/accounts", self._page(self.accounts_page, role="admin"))]
        for action, handler in (
            ("add", self.account_add),
            ("role", self.account_role),
            ("password", self.account_password),
            ("remove", self.account_remove),
        ):
            routes.append(Route(f"/accounts/{action}", self._page(handler, post=True, role="admin"), methods=["POST"]))
        return routes

    def accounts_page(self, request: Request, session: Session | None, _form: FormData | None) -> Response:
        return self._accounts(request, session, None, 200)

    def _accounts(self, request: Request, session: Session | None, message: str | None, status: int) -> Response:
        engine = self.backend.engine
        context = {
            **self._common(request, session),
            "people": list_users(engine),
            "roles": USER_ROLES,
            "changes": queries.recent_actions(engine, ACCOUNT_ACTIONS),
            "message": message,
            "error": status >= 400,
        }
        return self._render("accounts.html", context, status)

    def _change(self, request: Request, session: Session | None, change: Callable[[str], str]) -> Response:
        """Carry out one change as ``web: <user>``; the page again with what happened (409 when refused)."""
        by = f"web: {session.user}" if session is not None and session.user else "web"
        try:
            done = change(by)
        except AccountError as problem:
            return self._accounts(request, session, str(problem), 409)
        self._accounts_seen = None  # the login form changes with the first account and after the last
        return self._accounts(request, session, done, 200)

    def account_add(self, request: Request, session: Session | None, form: FormData | None) -> Response:
        assert form is not None
        name, role, password = field(form, "name") or "", field(form, "role") or "", field(form, "password") or ""

        def add(by: str) -> str:
            if password != (field(form, "again") or ""):
                raise AccountError("the two passwords differ; nothing changed")
            if role != "admin" and not list_users(self.backend.engine):
                raise AccountError("the first account must be an admin, or nobody could manage accounts here")
            account = add_user(self.backend.engine, name, role, password, by)
            return f"added {account.name} ({account.role})"

        return self._change(request, session, add)

    def account_role(self, request: Request, session: Session | None, form: FormData | None) -> Response:
        assert form is not None
        name, role = field(form, "name") or "", field(form, "role") or ""

        def change_role(by: str) -> str:
            set_role(self.backend.engine, name, role, by)
            self._roles_seen.pop(name, None)  # this page applies it at once; other daemons within seconds
            return f"{name} is now {role}"

        return self._change(request, session, change_role)

    def account_password(self, request: Request, session: Session | None, form: FormData | None) -> Response:
        assert form is not None
        name, password = field(form, "name") or "", field(form, "password") or ""

        def change_password(by: str) -> str:
            if password != (field(form, "again") or ""):
                raise AccountError("the two passwords differ; nothing changed")
            set_password(self.backend.engine, name, password, by)
            ended = self.keeper.end_user(name, time.time())
            return f"password of {name} changed; {ended} open session(s) ended"

        return self._change(request, session, change_password)

    def account_remove(self, request: Request, session: Session | None, form: FormData | None) -> Response:
        assert form is not None
        name = field(form, "name") or ""

        def remove(by: str) -> str:
            remove_user(self.backend.engine, name, by)
            self._roles_seen.pop(name, None)
            ended = self.keeper.end_user(name, time.time())
            return f"removed {name}; {ended} open session(s) ended"

        return self._change(request, session, remove)
