"""The streamer's HTTP endpoint: ``/metrics`` (Prometheus), ``/ready``, ``/healthz``, ``/status``.

An :class:`hitstream.http_base.HttpServer` (its security policy: loopback by default, Host
check, control requests same-origin JSON and, beyond loopback, with a token; malformed
requests answered 4xx; slow requests timed out; connections capped). Extra routes
(the live view, ``POST /model``) register through :meth:`StatusServer.route` and
:meth:`StatusServer.post_route`. Runs in its own daemon thread, off the hot path.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from hitstream.http_base import MAX_CONNECTIONS, TIMEOUT_S, HttpServer, Request, Response
from streamer.metrics import Metrics

Handler = Callable[[str], tuple[int, str, bytes]]  # query string -> (status, type, body)
PostHandler = Callable[[bytes], tuple[int, str, bytes]]  # request body -> (status, type, body)


class StatusServer(HttpServer):
    """Serves metrics and readiness: ``/ready`` is 200 once ``ready`` is set (the pipeline can
    take frames) and while ``not_ready()`` gives no reason (e.g. a refused feed)."""

    def __init__(
        self,
        metrics: Metrics,
        host: str = "127.0.0.1",
        port: int = 9108,
        *,
        token: str | None = None,
        timeout_s: float = TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        super().__init__(
            host,
            port,
            name="http",
            token=token,
            timeout_s=timeout_s,
            max_connections=max_connections,
        )
        self.metrics = metrics
        self.ready = threading.Event()
        self.status: Callable[[], dict[str, Any]] = dict
        #: why the service is not ready although it runs (e.g. the feed is refused), or None
        self.not_ready: Callable[[], str | None] = lambda: None
        super().route("/metrics", self._metrics)
        super().route("/ready", self._ready)
        super().route("/healthz", lambda _r: Response(200, "text/plain", b"ok\n"))
        super().route("/status", self._status)

    def route(self, path: str, handler: Handler) -> None:  # type: ignore[override]
        """A GET route whose handler takes the query string."""
        super().route(path, lambda r: handler(r.query))

    def post_route(self, path: str, handler: PostHandler) -> None:
        """A control route (POST, JSON body) whose handler takes the body."""
        super().route(path, lambda r: handler(r.body), methods=("POST",))

    def _metrics(self, _r: Request) -> Response:
        return Response(200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry))

    def _ready(self, _r: Request) -> Response:
        if not self.ready.is_set():
            return Response(503, "text/plain", b"not ready\n")
        why = self.not_ready()
        if why is not None:
            return Response(503, "text/plain", f"not ready: {why}\n".encode())
        return Response(200, "text/plain", b"ready\n")

    def _status(self, _r: Request) -> Response:
        return Response(200, "application/json", json.dumps(self.status(), default=str).encode())
