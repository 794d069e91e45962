"""The one HTTP base and its security policy (hitstream.http_base), on real sockets."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hitstream.errors import ConfigError
from hitstream.http_base import (
    MAX_CONNECTIONS,
    BadRequest,
    HttpServer,
    Request,
    Response,
    read_token,
)


@pytest.fixture
def server() -> Iterator[HttpServer]:
    s = HttpServer("127.0.0.1", 0, name="test", timeout_s=0.5, max_body_bytes=1000)
    seen: list[Request] = []

    def echo(r: Request) -> Response:
        seen.append(r)
        data = r.json()
        if data == "bad":
            raise BadRequest("bad on purpose")
        return Response.json(200, {"got": data})

    def boom(_r: Request) -> Response:
        raise RuntimeError("broken route")

    s.route("/hello", lambda r: (200, "text/plain", f"hi {r.query}".encode()))
    s.route("/files/", lambda r: (200, "text/plain", r.path.encode()), prefix=True)
    s.route("/echo", echo, methods=("POST",))
    s.route("/boom", boom)
    s.seen = seen  # type: ignore[attr-defined]
    with s:
        yield s


def request(
    s: HttpServer, method: str, path: str, body: bytes = b"", headers: dict | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    try:
        h = {"Content-Type": "application/json", **(headers or {})}
        conn.request(method, path, body=body if method == "POST" else None, headers=h)
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def test_routes_prefixes_and_methods(server: HttpServer) -> None:
    assert request(server, "GET", "/hello?x=1") == (200, b"hi x=1")
    assert request(server, "GET", "/files/a/b.png") == (200, b"/files/a/b.png")
    assert request(server, "GET", "/nope")[0] == 404
    assert request(server, "POST", "/hello")[0] == 405
    assert request(server, "GET", "/echo")[0] == 405
    code, body = request(server, "POST", "/echo", b'{"a": 1}')
    assert code == 200 and json.loads(body) == {"got": {"a": 1}}


def test_errors_of_routes_are_answers_not_crashes(server: HttpServer) -> None:
    assert request(server, "GET", "/boom")[0] == 500
    assert request(server, "POST", "/echo", b'"bad"')[0] == 400
    assert request(server, "POST", "/echo", b"{not json")[0] == 400
    assert request(server, "GET", "/hello")[0] == 200  # still serving


def test_host_header_must_name_a_loopback_server(server: HttpServer) -> None:
    assert request(server, "GET", "/hello", headers={"Host": "evil.example:80"})[0] == 403
    ok = {"Host": f"localhost:{server.port}"}
    assert request(server, "GET", "/hello", headers=ok)[0] == 200
    wrong_port = {"Host": f"127.0.0.1:{server.port + 1}"}
    assert request(server, "GET", "/hello", headers=wrong_port)[0] == 403


def test_control_requests_same_origin_and_json_only(server: HttpServer) -> None:
    other = {"Origin": "http://evil.example"}
    assert request(server, "POST", "/echo", b"{}", other)[0] == 403
    mine = {"Origin": f"http://127.0.0.1:{server.port}"}
    assert request(server, "POST", "/echo", b"{}", mine)[0] == 200
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    assert request(server, "POST", "/echo", b"a=1", form)[0] == 415
    assert not [r for r in server.seen if r.body == b"a=1"]  # type: ignore[attr-defined]


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"not in {timeout} s: {what}"
        time.sleep(0.02)  # poll, bounded by the deadline


def raw(port: int, data: bytes, *, half_close: bool = True) -> bytes:
    """Send ``data`` on a fresh connection and read until the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        return read_to_end(sock)


def read_to_end(sock: socket.socket) -> bytes:
    out = b""
    while chunk := sock.recv(65536):
        out += chunk
    return out


def parse_answers(data: bytes, method: str = "GET") -> list[tuple[int, dict[str, str], bytes]]:
    """Every HTTP/1.1 answer in ``data`` (status, headers, body); fails on anything else:
    a missing status line, a missing Content-Length, a body of another length, trailing
    bytes."""
    answers = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"no end of headers in {head[:200]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, code, _reason = status_line.split(" ", 2)
        assert version == "HTTP/1.1" and code.isdigit() and len(code) == 3, status_line
        headers = {}
        for line in lines:
            name, colon, value = line.partition(":")
            assert colon and name.strip() == name, line
            headers[name.lower()] = value.strip()
        n = 0 if method == "HEAD" else int(headers["content-length"])
        body, data = data[:n], data[n:]
        assert len(body) == n, (status_line, len(body), n)
        answers.append((int(code), headers, body))
    return answers


def host(port: int) -> str:
    return f"Host: 127.0.0.1:{port}\r\n"


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "+2", " 2_0", "٢", "99999999", "9" * 400])
def test_malformed_or_huge_content_length(server: HttpServer, length: str) -> None:
    req = (
        f"POST /echo HTTP/1.1\r\n{host(server.port)}Content-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n{{}}"
    )
    ((code, headers, body),) = parse_answers(raw(server.port, req.encode()))
    assert code == (413 if length.isascii() and length.isdigit() else 400), body
    assert headers["connection"] == "close" and "error" in json.loads(body)
    assert not server.seen  # type: ignore[attr-defined]  # no route saw it


MALFORMED = {
    "Content-Length twice": (
        "POST /echo HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
        "Content-Length: 2\r\nContent-Length: 2\r\n\r\n{{}}",
        400,
    ),
    "chunked body": (
        "POST /echo HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n2\r\n{{}}\r\n0\r\n\r\n",
        400,
    ),
    "body shorter than declared": (
        "POST /echo HTTP/1.1\r\n{host}Content-Type: application/json\r\n"
        "Content-Length: 10\r\n\r\n{{}}",
        400,
    ),
    "garbage request line": ("\x00\x01\xff garbage \x7f here\r\n\r\n", 400),
    "one word": ("HELLO\r\n\r\n", 400),
    "HTTP/2.0": ("GET /hello HTTP/2.0\r\n{host}\r\n", 400),
    "HTTP/2 preface": ("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 400),
    "HTTP/x.y": ("GET /hello HTTP/x.y\r\n{host}\r\n", 400),
    "HTTP/1.1.1": ("GET /hello HTTP/1.1.1\r\n{host}\r\n", 400),
    "HTTP/0.9": ("GET /hello\r\n\r\n", 400),
    "PUT": ("PUT /echo HTTP/1.1\r\n{host}Content-Length: 0\r\n\r\n", 405),
    "DELETE": ("DELETE /hello HTTP/1.1\r\n{host}\r\n", 405),
    "PATCH": ("PATCH /echo HTTP/1.1\r\n{host}\r\n", 405),
    "OPTIONS": ("OPTIONS * HTTP/1.1\r\n{host}\r\n", 405),
    "CONNECT": ("CONNECT 127.0.0.1:22 HTTP/1.1\r\n{host}\r\n", 405),
    "lower-case get": ("get /hello HTTP/1.1\r\n{host}\r\n", 405),
    "URL of 10 KB": ("GET /hello?" + "a" * 10_000 + " HTTP/1.1\r\n{host}\r\n", 414),
    "request line of 70 KB": ("GET /" + "a" * 70_000 + " HTTP/1.1\r\n{host}\r\n", 414),
    "header of 70 KB": ("GET /hello HTTP/1.1\r\n{host}X-Big: " + "a" * 70_000 + "\r\n\r\n", 431),
    "200 headers": ("GET /hello HTTP/1.1\r\n{host}" + "X-A: b\r\n" * 200 + "\r\n", 431),
    "Host twice": ("GET /hello HTTP/1.1\r\n{host}{host}\r\n", 400),
    "no Host": ("GET /hello HTTP/1.1\r\n\r\n", 403),
}


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_requests_get_a_4xx_answer(
    server: HttpServer, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Each gets one well-formed 4xx answer (JSON, the connection closed), nothing else:
    no 5xx, no empty reply, nothing logged at ERROR; the server serves on."""
    text, want = MALFORMED[name]
    with caplog.at_level(logging.DEBUG):
        data = raw(server.port, text.format(host=host(server.port)).encode("latin-1"))
    ((code, headers, body),) = parse_answers(data)
    assert code == want, (name, body)
    assert headers["content-type"] == "application/json" and "error" in json.loads(body)
    assert headers["connection"] == "close"
    if code == 405:
        assert set(headers["allow"].split(", ")) <= {"GET", "HEAD", "POST"}, headers
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert not server.seen  # type: ignore[attr-defined]
    assert request(server, "GET", "/hello?x")[0] == 200


def test_head_is_get_without_the_body(server: HttpServer) -> None:
    data = raw(server.port, f"HEAD /hello?q HTTP/1.1\r\n{host(server.port)}\r\n".encode())
    ((code, headers, body),) = parse_answers(data, "HEAD")
    assert code == 200 and body == b"" and headers["content-length"] == str(len(b"hi q"))
    data = raw(server.port, f"HEAD /echo HTTP/1.1\r\n{host(server.port)}\r\n".encode())
    ((code, headers, _),) = parse_answers(data, "HEAD")
    assert code == 405 and headers["allow"] == "POST"


def test_a_body_nobody_reads_is_never_taken_for_a_request(server: HttpServer) -> None:
    """A GET (or a refused POST) with a body: one answer, then the connection closes, so
    the body cannot smuggle in a second request."""
    h = host(server.port)
    hidden = f"GET /files/smuggled HTTP/1.1\r\n{h}\r\n"
    for first in (
        f"GET /hello HTTP/1.1\r\n{h}Content-Length: {len(hidden)}\r\n\r\n",
        f"POST /nope HTTP/1.1\r\n{h}Content-Length: {len(hidden)}\r\n\r\n",
        f"POST /echo HTTP/1.1\r\n{h}Content-Type: text/plain\r\n"
        f"Content-Length: {len(hidden)}\r\n\r\n",
    ):
        data = raw(server.port, (first + hidden).encode(), half_close=False)
        ((code, headers, _),) = parse_answers(data)
        assert code in (200, 404, 415) and headers["connection"] == "close"
    # a POST read in full keeps the connection: the next request on it is answered
    two = (
        f"POST /echo HTTP/1.1\r\n{h}Content-Type: application/json\r\nContent-Length: 2\r\n"
        f"\r\n{{}}GET /hello HTTP/1.1\r\n{h}Connection: close\r\n\r\n"
    )
    answers = parse_answers(raw(server.port, two.encode(), half_close=False))
    assert [a[0] for a in answers] == [200, 200] and answers[1][2] == b"hi "


def test_half_sent_requests_time_out(server: HttpServer) -> None:
    socks = []
    for _ in range(20):  # far more half-sent requests than a browser would ever make
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(
            f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        socks.append(s)
    for s in socks:  # the server closes each after its 0.5 s timeout (answering 408), well
        ((code, _, _),) = parse_answers(read_to_end(s))  # before the client's own 5 s
        assert code == 408
        s.close()
    assert request(server, "GET", "/hello")[0] == 200


def test_a_request_trickled_in_is_cut_off_at_the_deadline(server: HttpServer) -> None:
    """One byte every 0.1 s never trips a per-read timeout; the request's deadline (0.5
    s for all of it) closes the connection all the same."""
    line = f"GET /hello HTTP/1.1\r\n{host(server.port)}X-Slow: {'a' * 100}\r\n\r\n".encode()
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        start = time.monotonic()
        with pytest.raises(OSError):  # the server hangs up: EPIPE or a reset
            for byte in line:
                sock.sendall(bytes([byte]))
                time.sleep(0.1)  # the trickle itself, not a wait for the server
        took = time.monotonic() - start
    assert 0.5 <= took < 3.0, took


def test_an_idle_kept_alive_connection_is_closed(server: HttpServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"GET /hello?a HTTP/1.1\r\n{host(server.port)}\r\n".encode())
        start = time.monotonic()
        answers = parse_answers(read_to_end(sock))
        took = time.monotonic() - start
    assert [a[0] for a in answers] == [200, 408] and answers[0][2] == b"hi a"
    assert 0.5 <= took < 3.0, took


def test_sixty_half_sent_requests_hold_no_more_than_the_cap() -> None:
    """60 half-sent requests (headers without their end, POST bodies half sent) against
    the default cap of 32: /healthz is answered at once all the same (the oldest waiting
    connection gives way), at most 32 threads are held, the half-sent ones are closed at
    their deadline and the threads end."""
    assert MAX_CONNECTIONS == 32
    threads_before = threading.active_count()
    with HttpServer("127.0.0.1", 0, name="cap", timeout_s=2.0) as s:
        s.route("/healthz", lambda _r: (200, "text/plain", b"ok\n"))
        s.route("/echo", lambda r: Response.json(200, r.json()), methods=("POST",))
        h = host(s.port)
        half = [
            f"GET /healthz HTTP/1.1\r\n{h}X-Waiting: 1\r\n",
            f"POST /echo HTTP/1.1\r\n{h}Content-Type: application/json\r\n"
            'Content-Length: 40\r\n\r\n{"a": "01234',
        ]
        start = time.monotonic()
        socks = []
        for i in range(60):
            c = socket.create_connection(("127.0.0.1", s.port), timeout=10)
            c.sendall(half[i % 2].encode())
            socks.append(c)
        wait_until(lambda: s.open_connections == 32, what="32 connections held")
        wait_until(  # the threads of the connections given way end at once
            lambda: threading.active_count() <= threads_before + 1 + 32, what="32 threads"
        )
        for _ in range(3):  # answered long before any half-sent request's deadline
            t0 = time.monotonic()
            assert request(s, "GET", "/healthz") == (200, b"ok\n")
            assert time.monotonic() - t0 < 0.5
        assert time.monotonic() - start < 2.0
        codes = []
        for c in socks:
            codes += [a[0] for a in parse_answers(read_to_end(c))]
            c.close()
        took = time.monotonic() - start
        assert sorted(set(codes)) == [408, 503] and len(codes) == 60, codes
        assert codes.count(408) <= 32
        assert 2.0 <= took < 5.0, took  # the last ones at their 2 s deadline
        wait_until(lambda: s.open_connections == 0, what="no connection left")
        wait_until(
            lambda: threading.active_count() <= threads_before + 1, what="handler threads end"
        )
    wait_until(lambda: threading.active_count() <= threads_before, what="server thread ends")


def test_connections_busy_in_routes_refuse_the_next_one() -> None:
    """With every connection inside a route, one more is answered 503 at once, without a
    thread; the busy ones finish normally."""
    go = threading.Event()
    with HttpServer("127.0.0.1", 0, name="busy", max_connections=2, timeout_s=0.5) as s:
        s.route("/block", lambda _r: (200, "text/plain", b"done" if go.wait(10) else b"late"))
        s.route("/hello", lambda _r: (200, "text/plain", b"hi"))
        results: list[tuple[int, bytes]] = []
        workers = [
            threading.Thread(target=lambda: results.append(request(s, "GET", "/block")))
            for _ in range(2)
        ]
        for w in workers:
            w.start()
        wait_until(lambda: s.open_connections == 2, what="two requests inside the route")
        time.sleep(0.6)  # past the 0.5 s request deadline: busy connections are not cut
        threads = threading.active_count()
        data = raw(s.port, f"GET /hello HTTP/1.1\r\n{host(s.port)}\r\n".encode())
        ((code, headers, _),) = parse_answers(data)
        assert code == 503 and headers["retry-after"] == "1"
        assert threading.active_count() == threads  # no thread for the refused one
        go.set()
        for w in workers:
            w.join(10)
        assert results == [(200, b"done"), (200, b"done")]
        assert request(s, "GET", "/hello") == (200, b"hi")


def test_a_refused_client_that_sends_late_still_reads_its_503() -> None:
    """The refusal lingers: a request that arrives after the 503 went out does not reset the
    connection (which would lose the answer on the client's side); the socket is closed once
    the client closes."""
    go = threading.Event()
    with HttpServer("127.0.0.1", 0, name="late", max_connections=1, timeout_s=0.5) as s:
        s.route("/block", lambda _r: (200, "text/plain", b"done" if go.wait(10) else b"late"))
        worker = threading.Thread(target=lambda: request(s, "GET", "/block"))
        worker.start()
        try:
            wait_until(lambda: s.open_connections == 1, what="one request inside the route")
            time.sleep(0.6)  # busy past the request deadline
            with socket.create_connection(("127.0.0.1", s.port), timeout=5) as sock:
                time.sleep(0.3)  # the 503 is out before the request is sent
                sock.sendall(f"GET /hello HTTP/1.1\r\n{host(s.port)}\r\n".encode())
                sock.shutdown(socket.SHUT_WR)
                ((code, headers, _),) = parse_answers(read_to_end(sock))
            assert code == 503 and headers["retry-after"] == "1"
            wait_until(lambda: not s._httpd._lingering, what="the refused socket closed")
        finally:
            go.set()
            worker.join(10)


def test_beyond_loopback_control_needs_the_token() -> None:
    # bound on loopback (tests never bind beyond it), then judged as a non-loopback server
    with HttpServer("127.0.0.1", 0, name="t", token="s3cret") as s:
        s.route("/echo", lambda r: Response.json(200, r.json()), methods=("POST",))
        s.route("/read", lambda r: (200, "text/plain", b"open"))
        s.loopback = False
        assert request(s, "GET", "/read", headers={"Host": "hitstream.example:9108"})[0] == 200
        assert request(s, "POST", "/echo", b"{}")[0] == 401
        for wrong in ("Bearer nope", "s3cret", "Basic s3cret", "Bearer s3cret2", "Bearer"):
            assert request(s, "POST", "/echo", b"{}", {"Authorization": wrong})[0] == 401
        good = {"Authorization": "Bearer s3cret"}
        assert request(s, "POST", "/echo", b"{}", good) == (200, b"{}")
    with HttpServer("127.0.0.1", 0, name="t") as s:  # no token: control refused outright
        s.route("/echo", lambda r: Response.json(200, r.json()), methods=("POST",))
        s.loopback = False
        assert request(s, "POST", "/echo", b"{}", {"Authorization": "Bearer "})[0] == 403


def test_read_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HITSTREAM_HTTP_TOKEN", raising=False)
    assert read_token(None) is None
    monkeypatch.setenv("HITSTREAM_HTTP_TOKEN", "from-env")
    assert read_token(None) == "from-env"
    f = tmp_path / "token"
    f.write_text("  abc \nrest\n")
    assert read_token(f) == "abc"
    f.write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_token(f)
    with pytest.raises(ConfigError, match="token file"):
        read_token(tmp_path / "missing")
