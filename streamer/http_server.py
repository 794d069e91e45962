"""The streamer's HTTP endpoint: ``/metrics`` (Prometheus), ``/ready``, ``/healthz``, ``/status``.

Bound to 127.0.0.1 unless configured otherwise. Extra routes (the live view) register
through :meth:`StatusServer.route`. Runs in its own daemon thread, off the hot path.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from streamer.metrics import Metrics

log = logging.getLogger(__name__)

Handler = Callable[[str], tuple[int, str, bytes]]  # query string -> (status, type, body)
PostHandler = Callable[[bytes], tuple[int, str, bytes]]  # request body -> (status, type, body)
MAX_POST_BYTES = 64 * 1024


def send_body(
    handler: BaseHTTPRequestHandler, code: int, ctype: str, body: bytes, cache: str = "no-store"
) -> None:
    """Write one complete response (status, type, length, cache policy, body)."""
    handler.send_response(code)
    handler.send_header("Content-Type", ctype)
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Cache-Control", cache)
    handler.end_headers()
    handler.wfile.write(body)


def threaded_server(
    host: str, port: int, handler: type[BaseHTTPRequestHandler], name: str
) -> tuple[ThreadingHTTPServer, threading.Thread]:
    """A bound HTTP server with daemon request threads and its (not yet started) thread."""
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    return httpd, threading.Thread(target=httpd.serve_forever, name=name, daemon=True)


class StatusServer:
    """Serves metrics and readiness; ``ready`` is set by the pipeline once it can take frames."""

    def __init__(self, metrics: Metrics, host: str = "127.0.0.1", port: int = 9108) -> None:
        self.metrics = metrics
        self.ready = threading.Event()
        self.status: Callable[[], dict[str, Any]] = dict
        self._routes: dict[str, Handler] = {}
        self._post_routes: dict[str, PostHandler] = {}
        server = self

        class _Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                path, _, query = self.path.partition("?")
                self._answer(path, lambda: server.handle(path, query))

            def do_POST(self) -> None:
                path = self.path.partition("?")[0]
                length = int(self.headers.get("Content-Length") or 0)
                if path not in server._post_routes:
                    self._answer(path, lambda: (404, "text/plain", b"not found\n"))
                elif not 0 <= length <= MAX_POST_BYTES:
                    self._answer(path, lambda: (413, "text/plain", b"body too large\n"))
                else:
                    body = self.rfile.read(length)
                    self._answer(path, lambda: server._post_routes[path](body))

            def _answer(self, path: str, make: Callable[[], tuple[int, str, bytes]]) -> None:
                try:
                    code, ctype, body = make()
                except Exception:  # a broken view must never take the streamer down
                    log.exception("http: error serving %s", path)
                    code, ctype, body = 500, "text/plain", b"internal error\n"
                send_body(self, code, ctype, body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        self._httpd, self._thread = threaded_server(host, port, _Handler, "http")

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = self._httpd.server_address[0]
        return f"http://{host}:{self.port}"

    def route(self, path: str, handler: Handler) -> None:
        self._routes[path] = handler

    def post_route(self, path: str, handler: PostHandler) -> None:
        self._post_routes[path] = handler

    def handle(self, path: str, query: str) -> tuple[int, str, bytes]:
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == "/ready":
            ok = self.ready.is_set()
            return (200 if ok else 503), "text/plain", b"ready\n" if ok else b"not ready\n"
        if path == "/healthz":
            return 200, "text/plain", b"ok\n"
        if path == "/status":
            return 200, "application/json", json.dumps(self.status(), default=str).encode()
        if path in self._routes:
            return self._routes[path](query)
        return 404, "text/plain", b"not found\n"

    def start(self) -> StatusServer:
        self._thread.start()
        log.info("metrics on %s/metrics", self.url)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
