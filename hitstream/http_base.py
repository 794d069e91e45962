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
- **Malformed requests** are answered with a 4xx and the connection is closed: a
  ``Content-Length`` that is not one plain integer (400; over ``max_body_bytes``: 413), a
  ``Transfer-Encoding`` (400: not supported), two ``Host`` headers, a body shorter than
  declared, a garbled request line or HTTP version (400), HTTP/0.9, a URL over
  ``MAX_URL_BYTES`` (414), header lines over 64 KiB or more than 100 headers (431), other
  methods than GET, HEAD and POST (405). Never a 5xx, never a traceback.
- **Time**: a connection gets ``timeout_s`` to deliver each request in full (from its
  accept, or from the previous answer on a kept-alive connection); past it, it is answered
  408 and closed, however slowly it trickles bytes. A running route is not cut short.
- **Connections**: at most ``max_connections`` open at once (one thread each). One more
  closes the oldest connection still waiting for its request (503); when every connection
  is inside a route, the newcomer is answered 503 without a thread and closed lingering:
  its writing side at once, the socket itself once the client has closed or after
  ``LINGER_S``, so that a request that arrives after the answer does not reset the
  connection and lose the 503 on the client's side. Half-sent requests can neither hold
  threads nor starve the probes.
- **Failures**: a route that raises answers 500 and logs the traceback; the server goes on.

Routes are exact paths or path prefixes (``route("/frame/", h, prefix=True)``); a handler
takes a :class:`Request` and returns a :class:`Response` (or ``(status, type, body)``).
HEAD is served by the GET routes, without the body.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self

from hitstream.errors import ConfigError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024
MAX_URL_BYTES = 8 * 1024
MAX_CONNECTIONS = 32
LINGER_S = 1.0  # how long a refused connection may still send before it is closed
MAX_LINGERING = 64  # refused connections lingering at once; more close the oldest
TIMEOUT_S = 10.0
TOKEN_ENV = "HITSTREAM_HTTP_TOKEN"
METHODS = ("GET", "HEAD", "POST")
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
    headers: tuple[tuple[str, str], ...] = ()  # more headers, e.g. ("Allow", "GET")

    @classmethod
    def json(cls, status: int, obj: Any) -> Response:
        return cls(status, "application/json", json.dumps(obj, allow_nan=False).encode())

    @classmethod
    def error(cls, status: int, message: str, *headers: tuple[str, str]) -> Response:
        return cls(
            status,
            "application/json",
            json.dumps({"error": message}).encode(),
            headers=headers,
        )


Handler = Callable[[Request], "Response | tuple[int, str, bytes]"]


class BadRequest(ValueError):
    """A request the client should not have sent: answered with 400, nothing changes."""


class _Refused(Exception):
    """A request refused before its route runs (its answer; the connection is closed)."""

    def __init__(self, response: Response) -> None:
        super().__init__(response.status)
        self.response = response


class _HungUp(Exception):
    """The server closed this connection meanwhile (over the cap or past its time)."""


@dataclass
class _Route:
    handler: Handler
    methods: frozenset[str]
    prefix: bool = False
    control: bool = field(default=False)  # changes state: the POST rules apply


@dataclass
class _Conn:
    """One open connection: since when it waits for a request, whether a route has it."""

    since: float
    busy: bool = False  # its request is read: the route runs or the answer goes out
    closed: bool = False  # hung up by the server: its thread writes nothing more


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


def body_length(headers: Message, limit: int) -> int:
    """The declared body size: 0 without ``Content-Length``; :class:`_Refused` (400) unless
    it is one plain decimal integer, (413) above ``limit``, (400) with a
    ``Transfer-Encoding`` (not supported: bodies come with their length)."""
    if headers.get_all("Transfer-Encoding"):
        msg = "Transfer-Encoding is not supported: send Content-Length"
        raise _Refused(Response.error(400, msg))
    values = headers.get_all("Content-Length") or []
    if len(values) > 1:
        raise _Refused(Response.error(400, "more than one Content-Length"))
    if not values:
        return 0
    raw = str(values[0]).strip()
    if not (raw.isascii() and raw.isdigit()):
        raise _Refused(Response.error(400, f"malformed Content-Length {raw[:40]!r}"))
    if len(raw) > 15 or int(raw) > limit:
        raise _Refused(Response.error(413, f"body must be 0..{limit} bytes"))
    return int(raw)


def _bare_answer(status: int, message: str, *headers: str) -> bytes:
    """A complete HTTP/1.1 answer that closes the connection, written off a handler."""
    body = json.dumps({"error": message}).encode()
    head = [
        f"HTTP/1.1 {status} {HTTPStatus(status).phrase}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        "Cache-Control: no-store",
        "Connection: close",
        *headers,
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Server(ThreadingHTTPServer):
    """The threaded server with a connection registry: the cap and the request deadline.

    A connection is in the registry from its accept until its socket is closed; the
    connections it hangs up (over the cap, past the deadline) are shut under the registry's
    lock, so that no socket is closed (and its number reused) meanwhile."""

    daemon_threads = True
    request_queue_size = 128  # the listen backlog: a burst of connections is not dropped

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        name: str,
        max_connections: int,
        timeout_s: float,
    ) -> None:
        self.name = name
        self.max_connections = max_connections
        self.request_timeout_s = timeout_s
        self._conns: dict[Any, _Conn] = {}  # socket -> its state
        self._lock = threading.Lock()
        self._warned = 0.0  # when the last refusal was logged (at most one a minute)
        self._lingering: list[tuple[Any, float]] = []  # refused sockets, their close deadline
        super().__init__(address, handler)

    @property
    def open_connections(self) -> int:
        with self._lock:
            return sum(not c.closed for c in self._conns.values())

    def process_request(self, request: Any, client_address: Any) -> None:
        """Start a thread for the connection, within the cap (module docstring)."""
        now = time.monotonic()
        with self._lock:
            live = [(s, c) for s, c in self._conns.items() if not c.closed]
            waiting = [(s, c) for s, c in live if not c.busy]
            if len(live) >= self.max_connections and not waiting:
                refuse = True
            else:
                refuse = False
                if len(live) >= self.max_connections:
                    sock, oldest = min(waiting, key=lambda sc: sc[1].since)
                    log.debug(
                        "%s: %d connections: closing the oldest waiting", self.name, len(live)
                    )
                    self._hang_up(
                        sock, oldest, 503, "too many connections: this one waited longest"
                    )
                self._conns[request] = _Conn(now)
        if refuse:
            if now - self._warned > 60:
                self._warned = now
                log.warning(
                    "%s: all %d connections busy in routes: refusing more (503)",
                    self.name,
                    len(live),
                )
            self._refuse(request)
            return
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._lock:
            self._conns.pop(request, None)
        super().shutdown_request(request)

    def claim(self, request: Any) -> bool:
        """Mark the connection busy (its request is read); False if it was hung up."""
        with self._lock:
            c = self._conns.get(request)
            if c is None or c.closed:
                return False
            c.busy = True
            return True

    def release(self, request: Any) -> None:
        """The answer is out: the connection waits for its next request from now on."""
        with self._lock:
            c = self._conns.get(request)
            if c is not None:
                c.busy = False
                c.since = time.monotonic()

    def service_actions(self) -> None:
        """Close the connections that took longer than the timeout to send a request, and
        the refused ones whose client has closed or whose lingering time is up."""
        now = time.monotonic()
        self._lingering = [(s, t) for s, t in self._lingering if not self._drained(s, t, now)]
        limit = self.request_timeout_s
        with self._lock:
            for sock, c in list(self._conns.items()):
                if not (c.busy or c.closed) and now - c.since > limit:
                    log.debug("%s: no complete request in %g s: closing", self.name, limit)
                    self._hang_up(sock, c, 408, f"no complete request within {limit:g} s")

    @staticmethod
    def _hang_up(sock: Any, conn: _Conn, status: int, message: str) -> None:
        """Answer without blocking and shut a connection whose thread waits for input: the
        thread reads the end of its input and ends, writing nothing (``conn.closed``)."""
        conn.closed = True
        with contextlib.suppress(OSError):
            sock.settimeout(0.0)  # the answer goes out whole or in part, never waits
            sock.send(_bare_answer(status, message))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _refuse(self, sock: Any) -> None:
        """503 to a connection over the cap, on the accepting thread: nothing blocks. The
        socket lingers (module docstring) among at most ``MAX_LINGERING``."""
        try:
            sock.settimeout(0.0)
            sock.send(_bare_answer(503, "too many connections", "Retry-After: 1"))
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close_request(sock)
            return
        if len(self._lingering) >= MAX_LINGERING:
            self.close_request(self._lingering.pop(0)[0])
        self._lingering.append((sock, time.monotonic() + LINGER_S))

    def _drained(self, sock: Any, deadline: float, now: float) -> bool:
        """Read what a refused client sent; True (and closed) once it has closed, on an
        error, or past ``deadline``."""
        done = now > deadline
        try:
            for _ in range(16):  # bounded: a client that keeps sending cannot hold the loop
                if not sock.recv(65536):
                    done = True  # the client closed
                    break
        except BlockingIOError:
            pass  # nothing more yet
        except OSError:
            done = True
        if done:
            self.close_request(sock)
        return done

    def server_close(self) -> None:
        for sock, _ in self._lingering:
            self.close_request(sock)
        self._lingering = []
        super().server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, OSError):  # the client went away, or was hung up on
            log.debug("%s: connection from %s: %r", self.name, client_address, exc)
        else:
            log.exception("%s: error on a connection from %s", self.name, client_address)


class HttpServer:
    """A threaded HTTP server with routes and the module's security policy.

    ``host``/``port`` (0: any free port) are bound on construction; :meth:`start` serves in
    a daemon thread; :meth:`stop` shuts it down. Context manager. ``timeout_s``: the time a
    connection has for each request (module docstring); ``max_connections``: the cap on
    open connections (and so on handler threads).
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
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if timeout_s <= 0 or max_connections < 1:
            raise ConfigError(f"{name}: timeout_s must be > 0 and max_connections ≥ 1")
        self.name = name
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.timeout_s = timeout_s
        self._routes: dict[str, _Route] = {}
        self._started = False
        owner = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once
            # no read or write blocks longer (a fallback: the request deadline, checked by
            # the server, comes first and answers 408)
            timeout = 2 * timeout_s

            def version_string(self) -> str:
                return "hitstream"  # no Python version for the curious

            def parse_request(self) -> bool:
                if not super().parse_request():
                    return False
                if self.request_version == "HTTP/0.9":
                    self.send_error(400, "HTTP/0.9 requests are not served")
                    return False
                if self.command not in METHODS:
                    self.send_error(405, f"{self.command[:20]} is not served here")
                    return False
                if len(self.path) > MAX_URL_BYTES:
                    self.send_error(414, f"URL longer than {MAX_URL_BYTES} bytes")
                    return False
                return True

            def do_GET(self) -> None:
                self._serve("GET")

            def do_HEAD(self) -> None:
                self._serve("HEAD")

            def do_POST(self) -> None:
                self._serve("POST")

            def _serve(self, method: str) -> None:
                try:
                    resp = owner.dispatch(self, method)
                except _HungUp:
                    self.close_connection = True
                    return
                except TimeoutError:  # a half-sent body: give up on this connection
                    log.debug("%s: %s %s timed out", owner.name, method, self.path[:200])
                    resp = Response.error(408, "the body did not come in time")
                    self.close_connection = True
                except Exception:  # a broken route must never take the server down
                    log.exception("%s: error serving %s %s", owner.name, method, self.path[:200])
                    resp = Response.error(500, "internal error")
                    self.close_connection = True
                self.answer(resp)

            def send_error(
                self, code: int, message: str | None = None, explain: Any = None
            ) -> None:
                """The base class's errors (request line, headers) as JSON; never a 5xx:
                an HTTP version ≥ 2 is a 400 here."""
                code = 400 if code >= 500 else code
                self.close_connection = True
                text = (message or HTTPStatus(code).phrase)[:300]
                self.log_message("code %d, %s", code, text)
                allow = ("Allow", ", ".join(METHODS))
                self.answer(Response.error(code, text, *([allow] if code == 405 else [])))

            def answer(self, resp: Response) -> None:
                if not owner._httpd.claim(self.connection):
                    self.close_connection = True  # hung up: nothing more goes out
                    return
                if self.request_version == "HTTP/0.9":  # answered as HTTP/1.1 all the same
                    self.request_version = self.protocol_version
                self.send_response(resp.status)
                self.send_header("Content-Type", resp.content_type)
                self.send_header("Content-Length", str(len(resp.body)))
                self.send_header("Cache-Control", resp.cache)
                self.send_header("X-Content-Type-Options", "nosniff")
                for name, value in resp.headers:
                    self.send_header(name, value)
                if self.close_connection:
                    self.send_header("Connection", "close")
                self.end_headers()
                # HEAD: no body, also in the answer to a HEAD request it could not parse
                if (self.command or self.requestline.partition(" ")[0]) != "HEAD":
                    self.wfile.write(resp.body)
                owner._httpd.release(self.connection)

            def log_message(self, format: str, *args: Any) -> None:
                log.debug(f"{owner.name}: " + format, *args)

        try:
            self._httpd = _Server(
                (host, port),
                _Handler,
                name=name,
                max_connections=max_connections,
                timeout_s=timeout_s,
            )
        except OSError as exc:
            raise ConfigError(f"{name}: cannot listen on {host}:{port}: {exc}") from exc
        poll_s = min(0.5, timeout_s / 4)  # how often late connections are looked for
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(poll_s,), name=name, daemon=True
        )
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

    @property
    def max_connections(self) -> int:
        return self._httpd.max_connections

    @property
    def open_connections(self) -> int:
        """Connections open now (each holds a thread)."""
        return self._httpd.open_connections

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

    def served_routes(self) -> list[tuple[str, tuple[str, ...], bool]]:
        """``(path, methods, prefix)`` of every route, as registered."""
        return [(p, tuple(sorted(r.methods)), r.prefix) for p, r in self._routes.items()]

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
            msg = f"requests from {origin[:100]} may not change anything here"
            return Response.error(403, msg)
        if not self.loopback:
            if self.token is None:
                return Response.error(403, "control requests need a token on this server")
            scheme, _, given = str(headers.get("Authorization") or "").strip().partition(" ")
            ok = hmac.compare_digest(given.strip().encode(), self.token.encode())
            if scheme.lower() != "bearer" or not ok:
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
        keep_alive = not h.close_connection
        h.close_connection = True  # refused or not read in full: the answer ends it
        try:
            route, request, whole = self._read(h, method)
        except _Refused as refused:
            return refused.response
        if not self._httpd.claim(h.connection):
            raise _HungUp
        h.close_connection = not (keep_alive and whole)
        try:
            out = route.handler(request)
        except BadRequest as exc:
            return Response.error(400, str(exc))
        return out if isinstance(out, Response) else Response(*out)

    def _read(self, h: BaseHTTPRequestHandler, method: str) -> tuple[_Route, Request, bool]:
        """The route, the request and whether all of it was read (a GET's body is not);
        :class:`_Refused` with the answer when the policy refuses it."""
        path, _, query = h.path.partition("?")
        headers = h.headers
        if len(headers.get_all("Host") or []) > 1:
            raise _Refused(Response.error(400, "more than one Host header"))
        if not self.host_ok(headers.get("Host")):
            raise _Refused(Response.error(403, "unexpected Host header"))
        length = body_length(headers, self.max_body_bytes)
        route = self._find(path)
        if route is None:
            raise _Refused(Response.error(404, f"not found: {path[:200]}"))
        if ("GET" if method == "HEAD" else method) not in route.methods:
            methods = route.methods | ({"HEAD"} if "GET" in route.methods else set())
            allow = ", ".join(sorted(methods))
            msg = f"{method} is not allowed on {path[:200]}"
            raise _Refused(Response.error(405, msg, ("Allow", allow)))
        body = b""
        if method == "POST":
            refusal = self._control_refusal(headers) if route.control else None
            if refusal is not None:
                raise _Refused(refusal)
            body = h.rfile.read(length)
            if len(body) != length:
                raise _Refused(Response.error(400, "body shorter than its Content-Length"))
            return route, Request(method, path, query, headers, body), True
        return route, Request(method, path, query, headers), length == 0

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
