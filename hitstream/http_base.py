"""One HTTP server for hitstream's web endpoints, with one security policy.

Both the streamer's endpoint (``/metrics``, ``/ready``, ``/status``, the live page, ``POST
/model``) and the labelling page of ``trainer label`` are an :class:`HttpServer` with
routes. The policy, the same for both:

- **Bind**: 127.0.0.1 unless configured otherwise.
- **Host check** (DNS rebinding): on a loopback bind the ``Host`` header must name the
  server (``127.0.0.1``, ``localhost`` or ``[::1]`` with its port), else 403. A web site open
  in the same browser cannot reach the server under a name of its own.
- **Requests that change state** (POST): refused (403) when they come from another origin
  (an ``Origin`` header that is not the server's own), refused (415) unless JSON. When the
  server is bound beyond loopback they need ``Authorization: Bearer <token>`` with the
  configured token; without a configured token they are refused (403), so a server
  exposed by mistake cannot be driven. Read-only GETs stay open (Prometheus scrapes,
  Kubernetes probes).
- **Sizes and time**: ``Content-Length`` must be an integer in ``0..max_body_bytes`` (400
  when malformed, 413 when too large); a connection that sends nothing for ``timeout_s``
  is closed, so slow or half-sent requests cannot hold threads.
- **Failures**: a route that raises answers 500 and logs the traceback; the server goes on.

Routes are exact paths or path prefixes (``route("/frame/", h, prefix=True)``); a handler
takes a :class:`Request` and returns a :class:`Response` (or ``(status, type, body)``).
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from hitstream.errors import ConfigError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
TIMEOUT_S = 10.0
TOKEN_ENV = "HITSTREAM_HTTP_TOKEN"
_LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
Headers = Message | Mapping[str, str]  # what ``.get(name)`` is called on


@dataclass(frozen=True)
class Request:
    """One request as a route sees it (``body`` is empty for GET)."""

    method: str
    path: str
    query: str
    headers: Headers
    body: bytes = b""

    def json(self) -> Any:
        """The body as JSON; :class:`BadRequest` when it is not."""
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(f"malformed JSON ({exc})") from None


@dataclass(frozen=True)
class Response:
    status: int
    content_type: str
    body: bytes
    cache: str = "no-store"

    @classmethod
    def json(cls, status: int, obj: Any) -> Response:
        return cls(status, "application/json", json.dumps(obj, allow_nan=False).encode())

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.json(status, {"error": message})


Handler = Callable[[Request], "Response | tuple[int, str, bytes]"]


class BadRequest(ValueError):
    """A request the client should not have sent: answered with 400, nothing changes."""


@dataclass
class _Route:
    handler: Handler
    methods: frozenset[str]
    prefix: bool = False
    control: bool = field(default=False)  # changes state: the POST rules apply


def is_loopback(host: str) -> bool:
    """Whether an address to bind is on this host only."""
    return host in ("localhost", "::1") or host.startswith("127.")


def read_token(path: str | os.PathLike[str] | None) -> str | None:
    """The control token: the first line of ``path``, else ``$HITSTREAM_HTTP_TOKEN``, else
    None. An empty or unreadable file is a :class:`ConfigError`."""
    if path is not None:
        p = Path(path)
        try:
            token = p.read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise ConfigError(f"HTTP token file {p}: {exc.strerror or exc}") from exc
        if not token or not token[0].strip():
            raise ConfigError(f"HTTP token file {p} is empty")
        return token[0].strip()
    return os.environ.get(TOKEN_ENV) or None


class HttpServer:
    """A threaded HTTP server with routes and the module's security policy.

    ``host``/``port`` (0: any free port) are bound on construction; :meth:`start` serves in
    a daemon thread; :meth:`stop` shuts it down. Context manager.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        name: str = "http",
        token: str | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        timeout_s: float = TIMEOUT_S,
    ) -> None:
        self.name = name
        self.token = token
        self.max_body_bytes = max_body_bytes
        self._routes: dict[str, _Route] = {}
        self._started = False
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once
            timeout = timeout_s  # socket timeout: slow or half-sent requests end

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def _serve(self, method: str) -> None:
                try:
                    resp = server.dispatch(self, method)
                except TimeoutError:  # a half-sent body: give up on this connection
                    log.info("%s: %s %s timed out", server.name, method, self.path)
                    self.close_connection = True
                    return
                except Exception:  # a broken route must never take the server down
                    log.exception("%s: error serving %s %s", server.name, method, self.path)
                    resp = Response.error(500, "internal error")
                    self.close_connection = True
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                self.send_header("Content-Length", str(len(resp.body)))
                self.send_header("Cache-Control", resp.cache)
                self.send_header("X-Content-Type-Options", "nosniff")
                self.end_headers()
                self.wfile.write(resp.body)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(f"{server.name}: " + format, *args)

        try:
            self._httpd = ThreadingHTTPServer((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(f"{name}: cannot listen on {host}:{port}: {exc}") from exc
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, name=name, daemon=True)
        self.host = str(self._httpd.server_address[0])
        self.loopback = is_loopback(self.host)
        if not self.loopback and token is None:
            log.warning(
                "%s listens on %s without a token: control requests (POST) are refused; set "
                "one (token file or $%s) to allow them",
                name,
                self.host,
                TOKEN_ENV,
            )

    # -- set-up ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def route(
        self,
        path: str,
        handler: Handler,
        *,
        methods: tuple[str, ...] = ("GET",),
        prefix: bool = False,
    ) -> None:
        """Serve ``path`` (or every path under it with ``prefix``) with ``handler``."""
        self._routes[path] = _Route(handler, frozenset(methods), prefix, "POST" in methods)

    # -- the policy -----------------------------------------------------------------------

    def host_ok(self, host_header: str | None) -> bool:
        """Loopback servers answer only to their own names (no DNS rebinding)."""
        if not self.loopback:
            return True
        names = {self.host, f"[{self.host}]", *_LOOPBACK_NAMES}
        return (host_header or "") in {f"{n}:{self.port}" for n in names}

    def _control_refusal(self, headers: Headers) -> Response | None:
        origin = headers.get("Origin")
        if origin is not None and origin != f"http://{headers.get('Host')}":
            return Response.error(403, f"requests from {origin} may not change anything here")
        if not self.loopback:
            if self.token is None:
                return Response.error(403, "control requests need a token on this server")
            given = str(headers.get("Authorization") or "").removeprefix("Bearer ").strip()
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                return Response.error(401, "missing or wrong token (Authorization: Bearer ...)")
        ctype = str(headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return Response.error(415, "send JSON (Content-Type: application/json)")
        return None

    def _find(self, path: str) -> _Route | None:
        route = self._routes.get(path)
        if route is not None and not route.prefix:
            return route
        for p, r in self._routes.items():
            if r.prefix and path.startswith(p):
                return r
        return None

    def dispatch(self, h: BaseHTTPRequestHandler, method: str) -> Response:
        """Apply the policy to one request and call its route."""
        path, _, query = h.path.partition("?")
        headers = h.headers
        if not self.host_ok(headers.get("Host")):
            h.close_connection = True
            return Response.error(403, "unexpected Host header")
        route = self._find(path)
        if route is None:
            return Response.error(404, f"not found: {path}")
        if method not in route.methods:
            return Response.error(405, f"{method} is not allowed on {path}")
        body = b""
        if method == "POST":
            raw = headers.get("Content-Length")
            try:
                length = int(raw) if raw is not None else 0
            except ValueError:
                h.close_connection = True
                return Response.error(400, f"malformed Content-Length {raw!r}")
            if not 0 <= length <= self.max_body_bytes:
                h.close_connection = True
                return Response.error(413, f"body must be 0..{self.max_body_bytes} bytes")
            refusal = self._control_refusal(headers) if route.control else None
            if refusal is not None:
                h.close_connection = True
                return refusal
            body = h.rfile.read(length)
            if len(body) != length:
                h.close_connection = True
                return Response.error(400, "body shorter than its Content-Length")
        request = Request(method, path, query, headers, body)
        try:
            out = route.handler(request)
        except BadRequest as exc:
            return Response.error(400, str(exc))
        return out if isinstance(out, Response) else Response(*out)

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> Self:
        self._started = True
        self._thread.start()
        log.info("%s on %s", self.name, self.url)
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (also when it was never started)."""
        if self._started:
            self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
