"""Karabo-bridge client: receive protocol-2.2 messages from a ZeroMQ endpoint.

``REQ`` asks for each message with ``b"next"`` (a bridge REP server, our replay's
default), ``PULL`` takes what a PUSH server sends (back-pressure, lossless), ``SUB``
listens to a PUB server (subscribes to everything; a slow client loses messages at the
high-water mark). Not thread-safe: use one client per thread.

>>> with FeedClient("tcp://127.0.0.1:45000", timeout_s=5) as feed:   # doctest: +SKIP
...     data, metadata = feed.next()
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import zmq
from zmq.utils.monitor import recv_monitor_message

from hitstream.errors import ConfigError
from streamer.protocol import DEFAULT_LIMITS, Limits, deserialize
from streamer.security import configure_client, load_keypair, load_public_key

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("REQ", "PULL", "SUB")
_SOCKET_TYPES = {"REQ": zmq.REQ, "PULL": zmq.PULL, "SUB": zmq.SUB}
_WATCHED_EVENTS = (
    zmq.EVENT_CONNECTED
    | zmq.EVENT_CONNECT_DELAYED
    | zmq.EVENT_CONNECT_RETRIED
    | zmq.EVENT_DISCONNECTED
)
_GIVE_UP_S = 0.5  # a lost connection not retried within this long was dropped for good


class FeedClient:
    """Iterator and context manager over ``(data, metadata)`` messages of one endpoint.

    ``timeout_s`` is the default wait of a receive (None waits forever); a receive that
    gets nothing raises TimeoutError naming the endpoint. REQ: a request stays pending
    across receives with shorter timeouts (a poll loop loses nothing); once it has gone
    unanswered for ``timeout_s`` the socket is recreated (the REQ state machine would
    otherwise wait forever for a reply lost with a dead producer), so the client goes on
    when a producer answers again. A reply later than ``timeout_s`` is then dropped:
    choose ``timeout_s`` above the producer's worst reply time.
    ``hwm`` is the receive high-water mark in messages. ``max_message_bytes`` bounds each
    message (ZMQ_MAXMSGSIZE per part on the socket, and the whole message in
    :func:`~streamer.protocol.deserialize`). A ``context`` passed in is never terminated.
    ``prefetch`` (REQ): send the next request as soon as a reply arrives, so the server
    prepares message i+1 while this side decodes message i; still one message in flight.
    ``curve_server_key`` (the server's public key file) with ``curve_secret_key`` (this
    client's secret key file) make the connection CurveZMQ-encrypted and authenticated
    (see :mod:`streamer.security`); a server that refuses the key just never answers.
    A message part over ``max_message_bytes`` makes ZeroMQ drop the connection, and it
    does not retry after such a protocol error: the client notices (socket monitor),
    connects again and counts it in :attr:`dropped_connections`.
    """

    def __init__(
        self,
        endpoint: str,
        mode: str = "REQ",
        *,
        timeout_s: float | None = 5.0,
        hwm: int = 8,
        max_message_bytes: int | None = None,
        limits: Limits = DEFAULT_LIMITS,
        context: zmq.Context | None = None,
        prefetch: bool = False,
        curve_server_key: str | Path | None = None,
        curve_secret_key: str | Path | None = None,
    ) -> None:
        mode = mode.upper()
        if mode not in _SOCKET_TYPES:
            raise ConfigError(f"unknown feed mode {mode!r}; use one of {MODES}")
        if max_message_bytes is not None:
            limits = replace(limits, max_message_bytes=int(max_message_bytes))
        if (curve_server_key is None) != (curve_secret_key is None):
            raise ConfigError(
                "feed curve_server_key and curve_secret_key go together (got only one)"
            )
        self._curve: tuple[bytes, tuple[bytes, bytes]] | None = None
        if curve_server_key is not None and curve_secret_key is not None:
            self._curve = (load_public_key(curve_server_key), load_keypair(curve_secret_key))
        self.endpoint = endpoint
        self.mode = mode
        self.timeout_s = timeout_s
        self.hwm = hwm
        self.limits = limits
        self.prefetch = prefetch and mode == "REQ"
        self.messages = 0  # messages received
        self.bytes = 0  # bytes received
        self.dropped_connections = 0  # connections ZeroMQ dropped for good (and we renewed)
        self.connected = False  # a peer is connected (as the socket monitor last said)
        self._resets = 0  # REQ sockets recreated since the last reply
        self._monitor: zmq.Socket | None = None
        self._dropped_at: float | None = None  # when the connection was lost, until retried
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._socket: zmq.Socket | None = None
        self._pending = False  # REQ: a request is out, its reply not yet received
        self._sent_at = 0.0  # REQ: monotonic time the pending request went out
        try:
            self._socket = self._make_socket()
        except zmq.ZMQError as exc:
            if self._own_context:
                self._context.term()
            raise ConfigError(f"cannot connect to feed endpoint {endpoint!r}: {exc}") from exc

    def _make_socket(self) -> zmq.Socket:
        sock = self._context.socket(_SOCKET_TYPES[self.mode])
        monitor = None
        try:
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.RCVHWM, self.hwm)
            sock.setsockopt(zmq.MAXMSGSIZE, self.limits.max_message_bytes)
            if self.mode == "SUB":
                sock.setsockopt(zmq.SUBSCRIBE, b"")
            if self._curve is not None:
                configure_client(sock, *self._curve)
            monitor = sock.get_monitor_socket(_WATCHED_EVENTS)
            sock.connect(self.endpoint)
        except BaseException:
            if monitor is not None:
                monitor.close(linger=0)
            sock.close(linger=0)
            raise
        self._monitor, self._dropped_at = monitor, None
        return sock

    def _close_socket(self) -> None:
        if self._monitor is not None:
            self._monitor.close(linger=0)
            self._monitor = None
        if self._socket is not None:
            self._socket.close(linger=0)
            self._socket = None

    def _watch(self) -> None:
        """Connect again when ZeroMQ dropped the connection and will not retry.

        libzmq reconnects after a lost connection, but not after a protocol error such as a
        message part over ZMQ_MAXMSGSIZE: the socket would then wait forever.
        """
        monitor, sock = self._monitor, self._socket
        if monitor is None or sock is None:
            return
        now = time.monotonic()
        while monitor.poll(0):
            event = recv_monitor_message(monitor)["event"]
            self._dropped_at = now if event == zmq.EVENT_DISCONNECTED else None
            if event == zmq.EVENT_CONNECTED:
                log.info("%s: connected (%s)", self.endpoint, self.mode)
                self.connected = True
            elif event == zmq.EVENT_DISCONNECTED:
                log.info("%s: connection lost; ZeroMQ reconnects", self.endpoint)
                self.connected = False
        if self._dropped_at is not None and now - self._dropped_at >= _GIVE_UP_S:
            self._dropped_at = None
            self.dropped_connections += 1
            log.warning(
                "%s: ZeroMQ dropped the connection without retrying (a message part over "
                "max_message_bytes=%d, or a protocol error); connecting again",
                self.endpoint,
                self.limits.max_message_bytes,
            )
            sock.connect(self.endpoint)

    def _reset(self) -> None:
        """REQ after a timeout: drop the socket with its pending request, start afresh."""
        self._close_socket()
        self._pending = False
        self._socket = self._make_socket()
        self.connected = False
        self._resets += 1
        level = logging.INFO if self._resets == 1 else logging.DEBUG  # once per outage
        log.log(
            level,
            "%s: no reply for %s s, reconnecting with a new REQ socket (producer gone?)",
            self.endpoint,
            self.timeout_s,
        )

    def _request(self, sock: zmq.Socket) -> None:
        try:
            sock.send(b"next", flags=zmq.NOBLOCK)
        except zmq.Again:  # no peer pipe (cannot happen with connect, kept for safety)
            self._reset()
            raise TimeoutError(f"could not send a request to {self.endpoint}") from None
        self._pending = True
        self._sent_at = time.monotonic()

    @property
    def pending(self) -> bool:
        """REQ: a request is out whose reply has not been received (a stop should take it)."""
        return self._pending

    def recv_parts(self, timeout_s: float | None = None) -> list[zmq.Frame]:
        """The parts of the next message, without copying (``timeout_s=None``: the
        client's default). Raises TimeoutError naming the endpoint."""
        sock = self._socket
        if sock is None:
            raise RuntimeError(f"feed client for {self.endpoint} is closed")
        timeout = self.timeout_s if timeout_s is None else timeout_s
        if self.mode == "REQ" and not self._pending:
            self._request(sock)
        ms = -1 if timeout is None else max(0, round(timeout * 1000))
        if not sock.poll(ms, zmq.POLLIN):
            self._watch()
            if (
                self.mode == "REQ"
                and self.timeout_s is not None
                and time.monotonic() - self._sent_at >= self.timeout_s
            ):
                self._reset()
            raise TimeoutError(f"no message from {self.endpoint} ({self.mode}) in {timeout} s")
        parts = sock.recv_multipart(copy=False)
        self._pending = False
        self.connected = True
        if self._resets:
            log.info("%s: answering again after %d reconnect(s)", self.endpoint, self._resets)
            self._resets = 0
        if self.prefetch:  # ask for the next message now: the server works while we decode
            with contextlib.suppress(TimeoutError):  # the next recv_parts asks again
                self._request(sock)
        self.messages += 1
        self.bytes += sum(len(p.buffer) for p in parts)
        return parts

    def next(
        self, timeout_s: float | None = None
    ) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        """The next message as ``(data, metadata)``; raises TimeoutError or MessageError."""
        return deserialize(self.recv_parts(timeout_s), limits=self.limits)

    def __iter__(self) -> FeedClient:
        return self

    def __next__(self) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
        return self.next()

    def close(self) -> None:
        """Close the socket, and the context if this client created it."""
        self._close_socket()
        if self._own_context and not self._context.closed:
            self._context.term()

    def __enter__(self) -> FeedClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"FeedClient({self.endpoint!r}, {self.mode!r}, timeout_s={self.timeout_s})"
