"""Talking to the running daemon over its HTTP port, for the CLI (retrain, rollback, status)."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from linewatch.config import Config


class DaemonAbsent(Exception):
    """Nothing listens on the daemon's HTTP port."""


def daemon_request(
    config: Config,
    method: str,
    path: str,
    document: dict[str, Any] | None = None,
    answers: tuple[int, ...] = (409,),
) -> dict[str, Any]:
    """Ask the running daemon; DaemonAbsent when no daemon listens, ValueError for an answer it refused.
    Error statuses in ``answers`` (409 busy; 503 unhealthy for /healthz) are answers, returned as such."""
    host = "127.0.0.1" if config.http.host in ("0.0.0.0", "::", "") else config.http.host
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    body = None if document is None else json.dumps(document).encode()
    request = urllib.request.Request(f"http://{host}:{config.http.port}{path}", data=body, method=method)
    request.add_header("Content-Type", "application/json")
    if config.http.token is not None:
        request.add_header("Authorization", f"Bearer {config.http.token}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as refused:
        try:
            answer = json.loads(refused.read())
        except json.JSONDecodeError:
            answer = {"error": refused.reason}
        if refused.code in answers:
            return answer
        raise ValueError(f"the daemon refused: {answer.get('error') or answer.get('reason') or answer}") from None
    except TimeoutError:
        raise ValueError(f"the daemon at {host}:{config.http.port} did not answer within 30 s") from None
    except (urllib.error.URLError, ConnectionError) as absent:
        if isinstance(getattr(absent, "reason", None), TimeoutError):
            raise ValueError(f"the daemon at {host}:{config.http.port} did not answer within 30 s") from None
        raise DaemonAbsent(str(absent)) from None
