"""Fuzzing the real HTTP endpoints: the streamer's (as ``streamer serve`` sets it up, live
view and ``POST /model`` included) and the labelling page's.

A seeded generator writes raw requests (methods, every real route and prefixes of them with
odd suffixes, query strings, headers, bodies, truncated requests) and sends each on its own
connection. Every answer must be well-formed HTTP/1.1 with a status below 500 (a truncated
request may instead end in a clean close); the servers must go on serving, leak no thread,
log no traceback, and change nothing: no model swapped in, no label written, since no
request carries a valid token or a bundle under the model roots.
"""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from hitstream.http_base import HttpServer
from hitstream.simulate import simulate_run, write_run
from streamer.config import load_config
from streamer.pipeline import Pipeline
from streamer.serve import status_server
from tests.tiny_bundle import make_tiny_bundle
from trainer.labelling.server import LabelServer
from trainer.labelling.session import LabelSession, open_session

SEED = 20260611
DATASET = "entry/data"
TOKEN = "the-real-token-never-sent"
# str.isdigit() is true for these latin-1 bytes, int() refuses them
NOT_INT_DIGITS = "\xb2\xb3\xb9"


@dataclass
class Target:
    server: HttpServer
    paths: list[str]  # every route, a prefix route with a plausible tail
    bodies: Callable[[random.Random, bool], bytes]  # (rng, token phase) -> a POST body


@pytest.fixture(scope="module")
def streamer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Pipeline, Target]]:
    d = tmp_path_factory.mktemp("fuzz-streamer")
    store = d / "models"
    v1 = make_tiny_bundle(store / "v1", version="1")
    v2 = make_tiny_bundle(store / "v2", version="2")
    outside = make_tiny_bundle(d / "outside" / "evil", version="666")
    (store / "escape").symlink_to(outside, target_is_directory=True)
    cfg = load_config(None, {"model": str(v1), "output.dir": str(d / "out"), "metrics.port": 0})
    pipeline = Pipeline(cfg)
    server = status_server(pipeline)  # the real set-up of `streamer serve`
    assert server is not None
    refused = [str(outside), str(store / "escape"), str(store / "v1" / ".." / ".." / "outside"
               / "evil"), "/", "/etc/passwd", str(store / "none"), str(store), "", "a\x00b",
               str(store / "v1" / "model.onnx")]  # fmt: skip

    def bodies(rng: random.Random, token_phase: bool) -> bytes:
        paths = refused + ([str(v2), str(store / "v2" / ".." / "v2")] if token_phase else [])
        choice = rng.random()
        if choice < 0.6:
            return json.dumps({"path": rng.choice(paths)}).encode()
        if choice < 0.8:
            return json.dumps({"path": rng.choice([1, None, [], {}, True, "x" * 5000])}).encode()
        return junk_body(rng)

    server.ready.set()  # as in a running streamer: /ready is 200 (503 is its meaning)
    paths = [p + ("x" if prefix else "") for p, _, prefix in server.served_routes()]
    with server:
        yield pipeline, Target(server, paths, bodies)


@pytest.fixture(scope="module")
def labels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LabelSession, Target]]:
    d = tmp_path_factory.mktemp("fuzz-label")
    write_run(d / "run.h5", simulate_run(6, seed=4), dataset=DATASET)
    session = open_session([d / "run.h5"], DATASET, d / "labels.csv", progress=False)

    def bodies(rng: random.Random, token_phase: bool) -> bytes:
        choice = rng.random()
        if choice < 0.6:
            msg: dict[str, object]
            if token_phase:  # a real change: refused without the token
                msg = {"id": rng.randrange(6), "class": rng.choice([*session.classes, None])}
            else:  # never a valid frame with a valid class
                msg = {"id": rng.choice([-1, 6, 10**20, "2", 1.5, None, True]),
                       "class": rng.choice([*session.classes, None, "nope", 5, ""])}  # fmt: skip
                if rng.random() < 0.3:
                    msg = {"run": rng.choice(["run", "x"]), "index": rng.choice([-1, 99, "0"]),
                           "class": rng.choice(["nope", 7])}  # fmt: skip
            return json.dumps(msg).encode()
        return junk_body(rng)

    server = LabelServer(session)
    paths = [p for p, _, prefix in server.served_routes() if not prefix]
    paths += [f"/frame/{session.token}/{i}.png" for i in (0, 5)]
    paths += [f"/frame/{session.token}/3-full.png", "/frame/0000/1.png"]
    with server:
        yield session, Target(server, paths, bodies)


# -- the generator ---------------------------------------------------------------------------

ODD_METHODS = ["PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT", "get", "Post", "PRI",
               "X" * 300, "G\x00T", "GET\tGET", "HEAD", "POST", "GET"]  # fmt: skip
SUFFIXES = ["", "/", "//", "/..", "/../../etc/passwd", "%00", "%2e%2e/", ";x", "#frag", "?",
            "??", "&", ".png", "/x.png", "\x00", "\xff\xfe", "\xb5", " /", "x" * 9000,
            "%", "%zz", "/\u00e9".encode().decode("latin-1")]  # fmt: skip
QUERIES = ["", "id=0", "id=-1", "id=99999999999999999999", "id=abc", "id=", "id=1&id=2",
           "page=0", "page=-5", "page=1e3", "page=%FF", "page=" + "9" * 5000, "v=1",
           "a=%zz&&==&", "x=" + "y" * 3000]  # fmt: skip
ODD_VERSIONS = ["HTTP/1.0", "HTTP/2.0", "HTTP/0.9", "HTTP/1.1.1", "HTTP/x", "http/1.1",
                "HTTP/01.01", "", "HTTP/1.1 extra", "HTTP/3"]  # fmt: skip
ODD_CONTENT_TYPES = ["application/json; charset=utf-8", "text/plain", "", "APPLICATION/JSON",
                     "application/x-www-form-urlencoded", "json", "application/json\x00",
                     "multipart/form-data; boundary=x"]  # fmt: skip
MUTATE = 0.2  # the chance of each part of a request being odd: some requests are whole


def junk_body(rng: random.Random) -> bytes:
    return rng.choice([
        b"", b"{", b"[]", b"null", b'{"path": ', b"\xff\xfe\x00", b"a=1&b=2", b"{}" * 3000,
        rng.randbytes(rng.randrange(1, 300)),
    ])  # fmt: skip


def odd_path(rng: random.Random, base: str) -> str:
    r = rng.random()
    if r < 0.4:
        path = base + rng.choice(SUFFIXES)
    elif r < 0.6:
        path = base[: rng.randrange(1, len(base) + 1)]  # a prefix
    else:
        path = rng.choice(["*", "", "http://evil.example" + base, "//" + base, "/" + "a/" * 50,
                           base.upper(), base + rng.randbytes(8).decode("latin-1")])  # fmt: skip
    return path


@dataclass(frozen=True)
class Sent:
    data: bytes
    method: str
    truncated: bool


def make_request(rng: random.Random, target: Target, token_phase: bool) -> Sent:
    """One request: a real route with its method, host, type and length, each part made odd
    with the chance ``MUTATE``; a share are cut short."""
    port = target.server.port

    def odd() -> bool:
        return rng.random() < MUTATE

    methods = {p: m for p, m, _ in target.server.served_routes()}
    control = [p for p in target.paths if "POST" in methods.get(p, ())]
    base = rng.choice(control if rng.random() < 0.35 else target.paths)
    method = rng.choice(methods.get(base, ("GET",)))
    method = rng.choice(ODD_METHODS) if odd() else method
    path = odd_path(rng, base) if odd() else base
    if rng.random() < 0.3:
        path += "?" + rng.choice(QUERIES)
    version = rng.choice(ODD_VERSIONS) if odd() else "HTTP/1.1"
    line = f"{method} {path} {version}".rstrip()
    headers: list[str] = [f"Host: 127.0.0.1:{port}"]
    if odd():
        headers = rng.choice([[], ["Host: evil.example"], [f"Host: localhost:{port + 1}"],
                              ["Host:"], headers * 2, [f"Host: [::1]:{port}"]])  # fmt: skip
    sends_body = method.upper() == "POST" or rng.random() < 0.05
    body = target.bodies(rng, token_phase) if sends_body else b""
    if sends_body:
        headers.append("Content-Type: " + (rng.choice(ODD_CONTENT_TYPES) if odd() else
                                           "application/json"))  # fmt: skip
    length = [f"Content-Length: {len(body)}"] if sends_body else []
    if odd():
        length = rng.choice([[], length * 2, [f"Content-Length: {len(body) + 1}"]] + [
            ["Content-Length: " + v] for v in ("abc", "-1", str(len(body) + 7),
            str(max(0, len(body) - 3)), "99999999999", "1e2", "+3", "0x10", "", "9" * 40)
        ])  # fmt: skip
    headers += length
    extras = [
        "Origin: http://evil.example", f"Origin: http://127.0.0.1:{port}", "Origin: null",
        "Authorization: Bearer wrong", "Authorization: Bearer ", "Authorization: Basic Zm9v",
        f"Authorization: Bearer {TOKEN}x", f"Authorization: Basic {TOKEN}", "Connection: close",
        "Connection: keep-alive", "Expect: 100-continue", "Transfer-Encoding: chunked",
        "X-Junk: " + "j" * 70_000, "no colon here", " folded: continuation",
        "X-Bin: \x01\x7f\xff", "Cookie: a=b", "Range: bytes=0-1", ":empty-name",
        "X-Forwarded-For: 10.0.0.1",
    ]  # fmt: skip
    if odd():
        headers += rng.sample(extras, k=rng.choice([1, 1, 2, 3]))
    if rng.random() < 0.02:
        headers += [f"X-Many-{i}: v" for i in range(120)]
    rng.shuffle(headers)
    data = (line + "\r\n" + "".join(h + "\r\n" for h in headers) + "\r\n").encode("latin-1")
    data += body
    truncated = rng.random() < 0.12
    if truncated:
        data = data[: rng.randrange(1, len(data))]
    return Sent(data, method, truncated)


# -- sending and checking ------------------------------------------------------------------


def exchange(port: int, data: bytes) -> bytes:
    """Send on a fresh connection, end our side, read until the server closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError:  # EPIPE, ECONNRESET, ENOTCONN: the server answered and closed
            pass  # before taking it all: read the answer
        out = b""
        try:
            while chunk := sock.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass  # closed with our unread bytes pending: what came before still counts
        return out


def answers(data: bytes, first_method: str) -> list[int]:
    """The statuses of the answers in ``data``; fails unless each is a well-formed HTTP/1.1
    answer (status line, headers, a Content-Length the body matches; 1xx interim ones have
    no body), with nothing after the last."""
    statuses = []
    method = first_method
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        assert sep, f"no end of headers: {head[:300]!r}"
        status_line, *lines = head.decode("latin-1").split("\r\n")
        version, code, _ = (status_line + " ").split(" ", 2)
        assert version == "HTTP/1.1" and code.isascii() and code.isdigit(), status_line
        fields = {}
        for line in lines:
            name, colon, value = line.partition(": ")
            assert colon and name and name.isascii() and " " not in name, line
            fields[name.lower()] = value
        statuses.append(int(code))
        if 100 <= int(code) < 200:
            continue
        n = int(fields["content-length"])
        assert fields.get("content-type"), status_line
        if method != "HEAD":
            assert len(data) >= n, f"body of {len(data)} bytes, declared {n}"
            data = data[n:]
        method = "GET"  # a later answer belongs to bytes sent after the first request
    return statuses


def threads_settle(limit: int, timeout: float = 10.0) -> int:
    deadline = time.monotonic() + timeout
    while (n := threading.active_count()) > limit and time.monotonic() < deadline:
        time.sleep(0.02)  # poll, bounded by the deadline
    return n


def fuzz(target: Target, rng: random.Random, n: int, *, token_phase: bool) -> dict[int, int]:
    seen: dict[int, int] = {}
    for i in range(n):
        sent = make_request(rng, target, token_phase)
        reply = exchange(target.server.port, sent.data)
        where = f"request {i}: {sent.data[:400]!r}"
        statuses = answers(reply, sent.method.upper())
        assert statuses or sent.truncated, f"no answer to a whole request; {where}"
        assert all(s < 500 for s in statuses), f"{statuses}; {where}"
        if not sent.truncated:
            assert statuses[0] >= 200 or len(statuses) > 1, where
        for s in statuses:
            seen[s] = seen.get(s, 0) + 1
    return seen


def health(server: HttpServer, path: str) -> int:
    reply = exchange(
        server.port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n\r\n".encode()
    )
    return answers(reply, "GET")[0]


def test_fuzz_the_streamer_and_label_endpoints(
    streamer: tuple[Pipeline, Target],
    labels: tuple[LabelSession, Target],
    caplog: pytest.LogCaptureFixture,
) -> None:
    pipeline, s_target = streamer
    session, l_target = labels
    rng = random.Random(SEED)
    labels_before = session.table
    threads_before = threading.active_count()
    seen: dict[int, int] = {}
    start = time.monotonic()
    with caplog.at_level(logging.INFO):
        for token_phase in (False, True):
            for target, n in ((s_target, 300), (l_target, 200)):
                server = target.server
                as_built = server.loopback, server.token
                if token_phase:  # judged as bound beyond loopback (tests bind loopback only)
                    server.loopback, server.token = False, TOKEN
                try:
                    for code, count in fuzz(target, rng, n, token_phase=token_phase).items():
                        seen[code] = seen.get(code, 0) + count
                finally:
                    server.loopback, server.token = as_built
                assert health(s_target.server, "/healthz") == 200
                assert health(l_target.server, "/") == 200
                assert threads_settle(threads_before) <= threads_before, "threads leaked"
    took = time.monotonic() - start
    # the servers answered all kinds of requests: the fuzz reached the routes
    assert {200, 400, 401, 403, 404, 405, 413, 415, 431} <= set(seen), seen
    # nothing changed: no model swapped in, no label written
    assert pipeline.model.version == "tiny:1"
    assert pipeline.metrics.value("hitstream_model_swaps_total", result="ok") == 0
    assert pipeline.metrics.value("hitstream_model_swaps_total", result="refused") > 0
    assert session.table is labels_before and not session.labels_path.exists()
    bad = [r for r in caplog.records if r.exc_info or (r.levelno >= logging.ERROR
           and r.name.startswith("hitstream.http_base"))]  # fmt: skip
    assert not bad, [r.getMessage() for r in bad[:5]]
    assert took < 60, took


def test_label_frame_names_with_digits_int_refuses(labels: tuple[LabelSession, Target]) -> None:
    session, target = labels
    port = target.server.port
    for c in NOT_INT_DIGITS:
        req = f"GET /frame/{session.token}/{c}.png HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n"
        assert answers(exchange(port, req.encode("latin-1")), "GET") == [404]


def test_the_generator_is_seeded_and_covers_the_routes(
    streamer: tuple[Pipeline, Target],
) -> None:
    _, target = streamer
    one = [make_request(random.Random(SEED), target, False) for _ in range(3)]
    two = [make_request(random.Random(SEED), target, False) for _ in range(3)]
    assert one == two
    rng = random.Random(SEED)
    sent = b" ".join(make_request(rng, target, False).data for _ in range(400))
    for path in ("/metrics", "/ready", "/healthz", "/status", "/model", "/live"):
        assert f" {path} ".encode() in sent or f" {path}?".encode() in sent, path
    assert "/model" in target.paths and "/metrics" in target.paths
