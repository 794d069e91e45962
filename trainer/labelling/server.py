"""The labelling page's HTTP server: a :class:`~trainer.labelling.session.LabelSession` on
the shared HTTP base (:class:`hitstream.http_base.HttpServer`) and its security policy::

    GET  /                       the page: trainer/labelling/pages/label.html (package data)
    GET  /label.css, /label.js   its stylesheet and script (label.css, label.js)
    GET  /api/state              classes, counts, runs, order, first page with unlabelled frames
    GET  /api/page?page=K        the frames of page K (id, run, index, label, guess, scores)
    GET  /frame/<token>/<id>.png the central region of a frame as PNG (``-full.png``: all of
                                 it), drawn by hitstream.render; cached by the browser a day
    POST /api/label              {"id": 7, "class": "single"} (null or "" clears) -> counts
                                 (and the refit's state; every N labels one starts)
    POST /api/refit              {} -> start a refit now (trainer.labelling.refit); its state

The page files are read once, when the server is made. Bad requests (unknown frame or class,
malformed JSON) are answered with 400 and change nothing. The policy is the base's: the Host
header must name a loopback server; POSTs must be JSON from the page's own origin, at most
``MAX_POST_BYTES``, and beyond loopback carry the token (the page sends the one it was
opened with, ``<url>#token=...``): another web site open in the same browser cannot change
labels. HTTP only: the frames, their order and the labels file are the session's.
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from hitstream.errors import OutputError
from hitstream.http_base import BadRequest, HttpServer, Request, Response
from hitstream.pages import load_page
from trainer.labelling.refit import Refitter
from trainer.labelling.session import LabelSession

log = logging.getLogger(__name__)

MAX_POST_BYTES = 4096
PAGE_FILES = ("label.html", "label.css", "label.js")  # trainer/labelling/pages/
PNG_CACHE = "max-age=86400"  # pictures are named by the session's token: safe to keep


class LabelServer(HttpServer):
    """Serves a :class:`LabelSession` on ``host:port`` (0: any free port) in a daemon
    thread; ``token``: needed by POSTs when bound beyond loopback; ``refitter``: refits of
    the model while labelling (None: the page says why there are none, ``refit_off``).
    Context manager; :meth:`stop` also closes the session and the refitter."""

    def __init__(
        self,
        session: LabelSession,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        refitter: Refitter | None = None,
        refit_off: str = "no refits in this session",
    ) -> None:
        files = load_page("trainer.labelling", *PAGE_FILES)
        super().__init__(host, port, name="label-http", token=token, max_body_bytes=MAX_POST_BYTES)
        self.session = session
        self.refitter = refitter
        self.refit_off = refit_off
        page, css, js = (files[n] for n in PAGE_FILES)
        self.route("/", lambda _r: page.answer())
        self.route("/index.html", lambda _r: page.answer())
        self.route("/label.css", lambda _r: css.answer())
        self.route("/label.js", lambda _r: js.answer())
        self.route("/favicon.ico", lambda _r: (204, "image/x-icon", b""))
        self.route("/api/state", lambda _r: Response.json(200, self.state()))
        self.route("/api/page", self._page)
        self.route("/frame/", self._frame, prefix=True)
        self.route("/api/label", self._label, methods=("POST",))
        self.route("/api/refit", self._refit, methods=("POST",))

    def refit_state(self) -> dict[str, object]:
        if self.refitter is None:
            return {"available": False, "why": self.refit_off}
        return self.refitter.state()

    def state(self) -> dict[str, object]:
        return {**self.session.state(), "refit": self.refit_state()}

    @property
    def url(self) -> str:
        """The page's address (with the trailing ``/``)."""
        return super().url + "/"

    def _page(self, r: Request) -> Response:
        value = parse_qs(r.query).get("page", ["0"])[0]
        try:
            number = int(value)
        except ValueError:
            raise BadRequest(f"page must be an integer, got {value!r}") from None
        return Response.json(200, self.session.page(number))

    def _frame(self, r: Request) -> Response:
        """``/frame/<token>/<id>.png`` or ``<id>-full.png``."""
        parts = r.path.split("/")
        if len(parts) != 4 or not parts[3].endswith(".png"):
            return Response.error(404, f"not found: {r.path}")
        if parts[2] != self.session.token:
            return Response.error(404, "picture of another session; reload the page")
        stem = parts[3].removesuffix(".png")
        full = stem.endswith("-full")
        stem = stem.removesuffix("-full")
        if not (stem.isascii() and stem.isdigit()):
            return Response.error(404, f"no frame {stem!r}")
        return Response(200, "image/png", self.session.png(int(stem), full), cache=PNG_CACHE)

    def _label(self, r: Request) -> Response:
        msg: Any = r.json()
        if not isinstance(msg, dict) or "class" not in msg:
            raise BadRequest('want {"id": N, "class": NAME or null}')
        if "id" in msg:
            frame = msg["id"]
        elif "run" in msg and "index" in msg:
            frame = self.session.frame_id(msg["run"], msg["index"])
        else:
            raise BadRequest('want {"id": N, "class": ...} or {"run", "index", "class"}')
        try:
            out = self.session.set_label(frame, msg["class"])
        except OutputError as exc:  # the labels file cannot be written: nothing changed
            log.error("%s", exc)
            return Response.error(500, f"not saved: {exc}")
        if self.refitter is not None:
            self.refitter.on_label()
        return Response.json(
            200, {**out, "refit": self.refit_state(), "order_version": self.session.order_version}
        )

    def _refit(self, r: Request) -> Response:
        r.json()  # the same checks as any POST: JSON from the page
        if self.refitter is None:
            return Response.error(409, f"no refit: {self.refit_off}")
        started = self.refitter.request("asked on the page")
        return Response.json(200, {"started": started, "refit": self.refit_state()})

    def start(self) -> LabelServer:
        super().start()
        return self

    def stop(self) -> None:
        super().stop()
        if self.refitter is not None:
            self.refitter.close()
        self.session.close()

    def __enter__(self) -> LabelServer:
        return self.start()
