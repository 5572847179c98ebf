"""The page's Live view: the line's state and every camera's latest frame and heatmap, and what an operator
does from a tile: save the shown frame as a normal sample, switch the camera off or on, change it over to
another product (recipe). A part of :class:`linewatch.web.site.Site` (a mixin, so site.py stays readable).

A switch and a changeover go through the same daemon calls as MQTT's, so they are recorded alike (an action
by ``web: <account>``) and echoed on MQTT for the HMIs.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from linewatch.feedback import FeedbackError, FeedbackRequest
from linewatch.pipeline.journal.records import JournalError
from linewatch.samples import save_sample
from linewatch.types import LabelTarget, VerdictLabel
from linewatch.web.auth import Session
from linewatch.web.live import LIVE_KINDS
from linewatch.web.params import choice, field, identifier

log = logging.getLogger(__name__)


class LivePages:
    """``/``, ``/live/panel`` (the refreshing part), the tiles' images and their three operator buttons."""

    backend: Any  # a WebBackend (linewatch/web/site.py)
    settings: Any  # WebSettings
    _render: Callable[..., HTMLResponse]
    _refuse: Callable[[Request, int, str], Response]
    _common: Callable[[Request, Session | None], dict[str, Any]]
    _page: Callable[..., Callable[[Request], Awaitable[Response]]]

    def live_routes(self) -> list[Route]:
        def operator(path: str, handler: Callable[..., Response]) -> Route:
            return Route(path, self._page(handler, post=True, role="operator"), methods=["POST"])

        return [
            Route("/", self._page(self.live_page)),
            Route("/live/panel", self._page(self.live_panel)),
            Route("/live/{camera}/{kind}.jpg", self._page(self.live_image)),
            operator("/live/{camera}/sample", self.live_sample),
            operator("/live/{camera}/enabled", self.live_enabled),
            operator("/live/{camera}/product", self.live_product),
        ]

    def live_page(self, request: Request, session: Session | None, _form: FormData | None) -> Response:
        return self._render("live.html", {**self._common(request, session), **self._panel()})

    def live_panel(self, request: Request, session: Session | None, _form: FormData | None) -> Response:
        return self._render("_panel.html", {**self._common(request, session), **self._panel()})

    def _panel(self) -> dict[str, Any]:
        status = self.backend.status()
        tiles = []
        for name, product in self.backend.cameras:
            verdict = self.backend.live.show(name)
            tiles.append(
                {"name": name, "product": product, "state": status["cameras"].get(name, "-"), "verdict": verdict}
            )
        products = sorted(self.backend.model().get("thresholds", {}))
        return {"status": status, "tiles": tiles, "samples_dir": self.settings.samples_dir, "products": products}

    def _camera(self, request: Request) -> str | None:
        camera = request.path_params["camera"]
        return str(camera) if camera in {name for name, _product in self.backend.cameras} else None

    def _no_camera(self, request: Request) -> Response:
        return self._refuse(request, 404, f"no camera {request.path_params['camera']!r}")

    def live_image(self, request: Request, _session: Session | None, _form: FormData | None) -> Response:
        camera, kind = request.path_params["camera"], request.path_params["kind"]
        if camera not in {name for name, _product in self.backend.cameras} or kind not in LIVE_KINDS:
            return PlainTextResponse("no such camera or image", status_code=404)
        inspection_id = request.query_params.get("i", "")
        data = self.backend.live.jpeg(camera, kind, inspection_id)
        if data is None:
            return PlainTextResponse("that frame is no longer kept; the view refreshes", status_code=404)
        return Response(data, media_type="image/jpeg", headers={"X-Inspection-Id": inspection_id})

    def live_sample(self, request: Request, session: Session | None, form: FormData | None) -> Response:
        """The shown frame (as scored: after ROI and rotation, full size) saved for training, named as
        ``linewatch collect`` names its files, and its inspection labelled normal by whoever pressed it."""
        assert form is not None
        camera = self._camera(request)
        if camera is None:
            return self._no_camera(request)
        inspection_id = identifier(form, "inspection_id")
        image = self.backend.live.frame(camera, inspection_id)
        if image is None:
            return self._refuse(request, 409, "that frame is no longer kept (the view moved on): save the next one")
        path = save_sample(self.settings.samples_dir, camera, image)
        who = session.user if session is not None else None
        log.info("web: %s saved frame %s of %s as a normal sample: %s", who or "someone", inspection_id, camera, path)
        message = f"saved as {path}: train on the folder with linewatch train --normals {path.parent}"
        try:  # the file is the point; the label records the judgement, and a retrain uses it if evidence was kept
            self.backend.label(FeedbackRequest(LabelTarget.INSPECTION, inspection_id, VerdictLabel.NORMAL, who))
        except (FeedbackError, JournalError) as problem:
            message += f" (not labelled normal: {problem})"
        return self._answer(request, message, False)

    def live_enabled(self, request: Request, session: Session | None, form: FormData | None) -> Response:
        assert form is not None
        camera = self._camera(request)
        if camera is None:
            return self._no_camera(request)
        enabled = choice(form, "enabled", ("true", "false")) == "true"
        self.backend.set_enabled(camera, enabled, session.user if session is not None else None)
        return self._answer(request, f"camera {camera} is being switched {'on' if enabled else 'off'}", False)

    def live_product(self, request: Request, session: Session | None, form: FormData | None) -> Response:
        assert form is not None
        camera = self._camera(request)
        if camera is None:
            return self._no_camera(request)
        product = field(form, "product") or ""
        done, message = self.backend.select_product(camera, product, session.user if session is not None else None)
        return self._answer(request, message, not done)

    def _answer(self, request: Request, message: str, refused: bool) -> Response:
        """A message above the tiles (409 when refused), the panel refreshing itself; the page for a plain post."""
        if not request.headers.get("hx-request"):
            return RedirectResponse("/", status_code=303)
        response = self._render("_message.html", {"message": message, "error": refused}, 409 if refused else 200)
        response.headers["HX-Trigger"] = "panel-changed"
        return response
