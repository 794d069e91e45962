"""The one HTTP base and its security policy (hitstream.http_base), on real sockets."""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Iterator

import pytest

from hitstream.errors import ConfigError
from hitstream.http_base import BadRequest, HttpServer, Request, Response, read_token


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


@pytest.mark.parametrize("length", ["abc", "-1", "1e3", "99999999"])
def test_malformed_or_huge_content_length(server: HttpServer, length: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(
            f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{}}".encode()
        )
        reply = sock.recv(4096).decode()
    assert reply.split(" ", 2)[1] in ("400", "413"), reply


def test_half_sent_requests_time_out(server: HttpServer) -> None:
    socks = []
    for _ in range(20):  # far more half-sent requests than a browser would ever make
        s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        s.sendall(
            f"POST /echo HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{".encode()
        )
        socks.append(s)
    for s in socks:  # the server closes each after its 0.5 s timeout: recv gives b"" well
        assert s.recv(4096) == b""  # before the client's own 5 s timeout would raise
        s.close()
    assert request(server, "GET", "/hello")[0] == 200


def test_beyond_loopback_control_needs_the_token() -> None:
    # bound on loopback (tests never bind beyond it), then judged as a non-loopback server
    with HttpServer("127.0.0.1", 0, name="t", token="s3cret") as s:
        s.route("/echo", lambda r: Response.json(200, r.json()), methods=("POST",))
        s.route("/read", lambda r: (200, "text/plain", b"open"))
        s.loopback = False
        assert request(s, "GET", "/read", headers={"Host": "hitstream.example:9108"})[0] == 200
        assert request(s, "POST", "/echo", b"{}")[0] == 401
        bad = {"Authorization": "Bearer nope"}
        assert request(s, "POST", "/echo", b"{}", bad)[0] == 401
        good = {"Authorization": "Bearer s3cret"}
        assert request(s, "POST", "/echo", b"{}", good) == (200, b"{}")
    with HttpServer("127.0.0.1", 0, name="t") as s:  # no token: control refused outright
        s.route("/echo", lambda r: Response.json(200, r.json()), methods=("POST",))
        s.loopback = False
        assert request(s, "POST", "/echo", b"{}", {"Authorization": "Bearer "})[0] == 403


def test_read_token(tmp_path, monkeypatch) -> None:
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
