"""Replay an HDF5 run as a Karabo-bridge (protocol 2.2) server: ``streamer replay``.

Any ``(N, H, W)`` numeric dataset is read block by block (never whole) and sent as
messages of ``K`` frames ("trains"): message ``m`` carries train id
``first_train_id + m``, data ``{key: (k, H, W) array, 'image.pulseId': 0..k-1}`` under
one source (default :data:`DEFAULT_SOURCE`), and Karabo metadata (``timestamp``,
``timestamp.sec``, ``timestamp.frac``, ``timestamp.tid``). Frame ``j`` of the selected
range goes to train ``first_train_id + j // K``, pulse ``j % K``; with ``repeat`` the
train ids go on counting. After the last frame comes the end-of-run marker
(:func:`streamer.decode.end_of_run_message`).

Socket modes:

- ``REP`` (default): one message per ``b"next"`` request; any other request gets
  ``b"Error: bad request ..."`` as karabo_bridge answers. At the end every request gets
  the end marker until at least ``expected_clients`` markers went out and ``linger_s``
  passed without a request, so several REQ clients all see the end.
- ``PUSH``: blocking sends (back-pressure: lossless, as fast as the clients take); then end
  markers until every connected PULL client has left (see :meth:`ReplayServer._push_end`).
- ``PUB``: an XPUB socket that first waits for ``expected_clients`` subscribers, then
  sends without dropping (``XPUB_NODROP``: the slowest subscriber sets the pace) unless
  ``pub_lossy``; the end marker goes out :data:`PUB_END_REPEATS` times.

``rate`` (frames/s) paces the sending; 0 sends as fast as the clients take.

``curve_secret_key`` (the server's secret key file) makes the socket a CurveZMQ server;
with ``curve_clients_dir`` only the clients whose public keys (``*.key``) are there get
through the handshake (see :mod:`streamer.security`).
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zmq
from zmq.utils.monitor import recv_monitor_message

from hitstream.cli import add_option
from hitstream.errors import ConfigError
from hitstream.h5input import open_frame_dataset
from streamer.decode import end_of_run_message, timestamp_metadata
from streamer.protocol import ALLOWED_DTYPES, serialize
from streamer.security import configure_server, load_keypair, start_authenticator
from streamer.types import EndOfRun

log = logging.getLogger(__name__)

HELP = "serve frames of an HDF5 dataset as a Karabo-bridge (protocol 2.2) stream"

DEFAULT_ENDPOINT = "tcp://127.0.0.1:45000"
DEFAULT_DATASET = "entry_1/data_1/data"  # CXI layout (our writer, CXIDB)
DEFAULT_SOURCE = "hitstream/replay"
DEFAULT_KEY = "image.data"
PULSE_KEY = "image.pulseId"
DEFAULT_FRAMES_PER_MESSAGE = 32
MODES: tuple[str, ...] = ("REP", "PUSH", "PUB")
PUSH_END_RETRY_S = 0.2  # PUSH: another end marker this often while clients remain
PUSH_END_MAX_PER_CLIENT = 50
# numeric frame dtypes the wire accepts (no bool, no complex): one source of truth
SEND_DTYPES: tuple[str, ...] = tuple(sorted(d.name for d in ALLOWED_DTYPES if d.kind in "iuf"))
PUB_END_REPEATS = 3
BLOCK_BYTES = 16 << 20  # HDF5 read size
_POLL_MS = 100  # how often blocked loops look at the stop event


@dataclass(frozen=True)
class ReplayConfig:
    """What to replay and how; the one place of the defaults (the CLI reads them here)."""

    path: str | Path
    dataset: str = DEFAULT_DATASET
    endpoint: str = DEFAULT_ENDPOINT
    mode: str = "REP"
    source: str = DEFAULT_SOURCE
    key: str = DEFAULT_KEY
    frames_per_message: int = DEFAULT_FRAMES_PER_MESSAGE
    rate: float = 0.0  # frames/s; 0 = as fast as the clients take
    first_train_id: int = 1
    start: int = 0
    stop: int | None = None  # None = end of the dataset
    repeat: int = 1
    dtype: str | None = None  # convert on send; None = as stored
    end_marker: bool = True
    linger_s: float = 1.0  # REP: quiet time before leaving after the end
    expected_clients: int = 1
    hwm: int = 4  # send high-water mark, messages
    pub_lossy: bool = False  # PUB: drop for slow subscribers instead of waiting
    drain_s: float = 30.0  # PUSH/PUB: time to deliver queued messages at the end
    curve_secret_key: str | Path | None = None  # CurveZMQ server: its secret key file
    curve_clients_dir: str | Path | None = None  # CurveZMQ: public keys of allowed clients

    def check(self) -> None:
        """Raise ConfigError for an option out of range."""
        if self.mode.upper() not in MODES:
            raise ConfigError(f"replay mode {self.mode!r}: use one of {MODES}")
        if self.frames_per_message < 1:
            raise ConfigError(f"frames per message must be >= 1, got {self.frames_per_message}")
        if self.rate < 0 or self.linger_s < 0 or self.drain_s < 0:
            raise ConfigError("rate, linger and drain times must be >= 0")
        if self.repeat < 1 or self.expected_clients < 0 or self.hwm < 1:
            raise ConfigError("repeat and hwm must be >= 1, expected clients >= 0")
        if not 0 <= self.first_train_id < 2**63:
            raise ConfigError(f"first train id {self.first_train_id} out of range")
        if self.dtype is not None and self.dtype not in SEND_DTYPES:
            raise ConfigError(f"send dtype {self.dtype!r}: use one of {SEND_DTYPES}")
        if self.curve_clients_dir is not None and self.curve_secret_key is None:
            raise ConfigError("a CurveZMQ clients directory needs the server's secret key file")


@dataclass
class ReplayStats:
    """What a replay sent (data messages only; end markers counted apart)."""

    frames: int = 0
    trains: int = 0
    bytes: int = 0
    elapsed_s: float = 0.0  # first to last data message
    end_markers: int = 0
    bad_requests: int = 0

    @property
    def mb_per_s(self) -> float:
        return self.bytes / 1e6 / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary(self) -> str:
        fps = self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"replay done: {self.frames} frames, {self.trains} trains, "
            f"{self.bytes / 1e6:.1f} MB in {self.elapsed_s:.2f} s "
            f"({self.mb_per_s:.1f} MB/s, {fps:.0f} frames/s), {self.end_markers} end markers"
        )


def normalize_endpoint(endpoint: str) -> str:
    """A bare port number means ``tcp://127.0.0.1:PORT`` (loopback)."""
    return f"tcp://127.0.0.1:{endpoint}" if endpoint.isdigit() else endpoint


def open_frames(path: str | Path, dataset: str) -> tuple[h5py.File, h5py.Dataset]:
    """Open ``path`` and its ``(N, H, W)`` numeric ``dataset`` (InputDataError if unusable)."""
    return open_frame_dataset(path, dataset, what="replay input")


class ReplayServer:
    """Karabo-bridge server over the frames of one HDF5 dataset.

    The socket is bound on construction (``endpoint`` gives the real address, also for
    ``tcp://127.0.0.1:0``). :meth:`run` serves until the run is over or :meth:`stop` is
    called, then closes the socket and the file; a server runs once. In-process use::

        with ReplayServer(ReplayConfig(path, dataset="data", endpoint="tcp://127.0.0.1:0")) as s:
            ...  # connect a client to s.endpoint; s.join() waits for the end
    """

    def __init__(
        self,
        config: ReplayConfig,
        *,
        context: zmq.Context | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> None:
        config.check()
        self.config = config
        self.mode = config.mode.upper()
        self.stats = ReplayStats()
        self.progress = progress
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        self.error: BaseException | None = None  # what ended a threaded run, if anything
        self._file, self._ds = open_frames(config.path, config.dataset)
        n = self._ds.shape[0]
        stop = n if config.stop is None else config.stop
        if not 0 <= config.start <= stop <= n:
            self._file.close()
            raise ConfigError(
                f"frame range {config.start}:{stop} is outside {config.path}:{config.dataset} "
                f"({n} frames)"
            )
        self.start_frame, self.stop_frame = config.start, stop
        self.frames_per_repeat = stop - config.start
        k = config.frames_per_message
        self.trains_per_repeat = -(-self.frames_per_repeat // k)
        self.run_name = Path(config.path).stem
        self._own_context = context is None
        self._context = zmq.Context() if context is None else context
        self._auth: Any = None  # ZAP authenticator (CurveZMQ with a clients directory)
        try:
            self._socket = self._bind()
        except BaseException:
            self._file.close()
            self._stop_auth()
            if self._own_context:
                self._context.term()
            raise

    # ------------------------------------------------------------------ socket set-up

    def _bind(self) -> zmq.Socket:
        cfg = self.config
        kind = {"REP": zmq.REP, "PUSH": zmq.PUSH, "PUB": zmq.XPUB}[self.mode]
        keypair = load_keypair(cfg.curve_secret_key) if cfg.curve_secret_key else None
        if cfg.curve_clients_dir is not None:
            self._auth = start_authenticator(self._context, cfg.curve_clients_dir)
        sock = self._context.socket(kind)
        self._monitor = None
        try:
            if self.mode == "PUSH":  # count the clients, see _push_end
                self._monitor = sock.get_monitor_socket(zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED)
            if keypair is not None:
                configure_server(sock, keypair)
            sock.setsockopt(zmq.LINGER, 0)
            sock.setsockopt(zmq.SNDHWM, cfg.hwm)
            if self.mode == "PUB":
                sock.setsockopt(zmq.XPUB_VERBOSE, 1)  # see every subscriber
                sock.setsockopt(zmq.XPUB_NODROP, 0 if cfg.pub_lossy else 1)
            sock.bind(normalize_endpoint(cfg.endpoint))
        except zmq.ZMQError as exc:
            if self._monitor is not None:
                self._monitor.close(linger=0)
            sock.close(linger=0)
            raise ConfigError(f"cannot bind replay to {cfg.endpoint}: {exc}") from exc
        return sock

    @property
    def endpoint(self) -> str:
        """The bound address (with the real port)."""
        return self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    # ------------------------------------------------------------------ messages

    def _blocks(self) -> Iterator[np.ndarray]:
        """Frame arrays of one message each, read from the file block by block."""
        cfg = self.config
        k = cfg.frames_per_message
        frame_bytes = max(1, int(np.prod(self._ds.shape[1:])) * self._ds.dtype.itemsize)
        block = max(1, BLOCK_BYTES // (k * frame_bytes)) * k
        for _ in range(cfg.repeat):
            for b0 in range(self.start_frame, self.stop_frame, block):
                arr = self._ds[b0 : min(b0 + block, self.stop_frame)]
                if cfg.dtype is not None:
                    arr = arr.astype(cfg.dtype, copy=False)
                for i in range(0, arr.shape[0], k):
                    yield arr[i : i + k]

    def _message(self, m: int, frames: np.ndarray) -> list[Any]:
        cfg = self.config
        data = {
            cfg.source: {
                cfg.key: frames,
                PULSE_KEY: np.arange(frames.shape[0], dtype=np.uint64),
            }
        }
        meta = {cfg.source: timestamp_metadata(cfg.source, cfg.first_train_id + m, time.time())}
        return serialize(data, meta)

    def _end_message(self) -> list[Any]:
        end = EndOfRun(run=self.run_name, frames=self.stats.frames, trains=self.stats.trains)
        return serialize(*end_of_run_message(end, time.time()))

    # ------------------------------------------------------------------ sending

    def _send(self, parts: list[Any]) -> bool:
        """Send one message, waiting while the peers are full; False when stopped."""
        sock = self._socket
        while not self._stop.is_set():
            try:
                sock.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                return True
            except zmq.Again:
                if self.mode == "PUB":  # XPUB always polls writable: just wait a little
                    self._stop.wait(0.001)
                else:
                    sock.poll(_POLL_MS, zmq.POLLOUT)
        return False

    def _request(self) -> bool:
        """REP: wait for a ``b"next"`` (answering bad requests); False when stopped."""
        sock = self._socket
        while not self._stop.is_set():
            if not sock.poll(_POLL_MS, zmq.POLLIN):
                continue
            req = sock.recv()
            if req == b"next":
                return True
            self.stats.bad_requests += 1
            log.warning("bad request %r", req[:40])
            sock.send(b"Error: bad request %b" % req[:100])
        return False

    def _wait_subscribers(self) -> bool:
        """PUB: wait until ``expected_clients`` subscriptions arrived; False when stopped."""
        seen = 0
        while seen < self.config.expected_clients and not self._stop.is_set():
            if self._socket.poll(_POLL_MS, zmq.POLLIN) and self._socket.recv()[:1] == b"\x01":
                seen += 1
        return not self._stop.is_set()

    def _pace(self, t0: float) -> None:
        if self.config.rate > 0:
            delay = t0 + self.stats.frames / self.config.rate - time.monotonic()
            if delay > 0:
                self._stop.wait(delay)

    def _serve_data(self) -> bool:
        t0 = None
        for m, frames in enumerate(self._blocks()):
            if self.mode == "REP" and not self._request():
                return False
            if t0 is None:
                t0 = time.monotonic()
            self._pace(t0)
            if not self._send(self._message(m, frames)):
                return False
            self.stats.frames += frames.shape[0]
            self.stats.trains += 1
            self.stats.bytes += frames.nbytes
            self.stats.elapsed_s = time.monotonic() - t0
            if self.progress is not None:
                self.progress(frames.shape[0])
        return not self._stop.is_set()

    def _serve_end(self) -> None:
        cfg = self.config
        if self.mode == "REP":
            last = time.monotonic()
            while not self._stop.is_set():
                if self._socket.poll(_POLL_MS, zmq.POLLIN):
                    req = self._socket.recv()
                    last = time.monotonic()
                    if req != b"next":
                        self.stats.bad_requests += 1
                        self._socket.send(b"Error: bad request %b" % req[:100])
                        continue
                    self._socket.send_multipart(self._end_message(), copy=False)
                    self.stats.end_markers += 1
                elif (
                    self.stats.end_markers >= cfg.expected_clients
                    and time.monotonic() - last >= cfg.linger_s
                ):
                    return
        elif self.mode == "PUSH":
            self._push_end()
        else:
            for _ in range(PUB_END_REPEATS):
                if not self._send(self._end_message()):
                    return
                self.stats.end_markers += 1

    def _push_end(self) -> None:
        """End markers for PULL clients. PUSH deals round-robin only to clients whose queue
        has room, so N markers for N clients can give one client two and another none (it
        would then wait forever). Instead: one marker, then one more after every client that
        leaves (a client leaves once its marker arrives) or every ``PUSH_END_RETRY_S``, until
        at least ``expected_clients`` markers went out and no client is connected, or
        ``PUSH_END_MAX_PER_CLIENT`` markers per client, or ``drain_s``."""
        cfg = self.config
        assert self._monitor is not None
        connected = seen = 0
        deadline = time.monotonic() + cfg.drain_s
        next_send = 0.0
        while not self._stop.is_set() and time.monotonic() < deadline:
            while self._monitor.poll(0):
                event = recv_monitor_message(self._monitor)["event"]
                if event == zmq.EVENT_ACCEPTED:
                    connected, seen = connected + 1, seen + 1
                elif event == zmq.EVENT_DISCONNECTED:
                    connected -= 1
                    next_send = 0.0
            sent = self.stats.end_markers
            if sent >= cfg.expected_clients and connected <= 0:
                return
            if sent >= PUSH_END_MAX_PER_CLIENT * max(1, seen, cfg.expected_clients):
                log.warning("replay: %d PUSH clients still connected after %d end markers",
                            connected, sent)  # fmt: skip
                return
            if time.monotonic() >= next_send:
                try:
                    self._socket.send_multipart(self._end_message(), flags=zmq.NOBLOCK)
                    self.stats.end_markers += 1
                except zmq.Again:
                    pass
                next_send = time.monotonic() + PUSH_END_RETRY_S
            self._monitor.poll(_POLL_MS)

    def run(self) -> ReplayStats:
        """Serve the whole run (blocking), then close; returns what was sent."""
        if self._closed:
            raise RuntimeError("a ReplayServer runs once")
        try:
            if self.mode == "PUB" and not self._wait_subscribers():
                return self.stats
            if self._serve_data() and self.config.end_marker:
                self._serve_end()
        except BaseException:
            self._stop.set()  # no draining after an error or Ctrl-C
            raise
        finally:
            self.close()
        return self.stats

    # ------------------------------------------------------------------ lifecycle

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # kept for join() to re-raise in the caller
            self.error = exc
            log.exception("replay thread failed")

    def start(self) -> ReplayServer:
        """Run in a daemon thread (``with ReplayServer(...)`` calls this)."""
        if self._thread is not None:
            raise RuntimeError("ReplayServer.start() called twice")
        self._thread = threading.Thread(target=self._run_in_thread, name="replay", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float | None = None) -> ReplayStats:
        """Wait for the threaded run; re-raises its error. TimeoutError if still running."""
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                raise TimeoutError(f"replay on {self.config.endpoint} still running")
        if self.error is not None:
            raise self.error
        return self.stats

    def stop(self) -> None:
        """Ask the run to end soon (queued messages are then dropped)."""
        self._stop.set()

    def close(self) -> None:
        """Close socket and file; unless stopped, first deliver what is queued (up to
        drain_s): PUSH/PUB messages, and a REP server's last reply."""
        if self._closed:
            return
        self._closed = True
        drain = not self._stop.is_set()
        if self._monitor is not None:
            self._socket.disable_monitor()
            self._monitor.close(linger=0)
        self._socket.close(linger=round(self.config.drain_s * 1000) if drain else 0)
        self._file.close()
        self._stop_auth()
        if self._own_context:
            self._context.term()  # waits for the linger above

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

    def __enter__(self) -> ReplayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._thread is not None:
            self._thread.join()
        else:
            self.close()


# ---------------------------------------------------------------------- command line


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Options of ``streamer replay``; :class:`ReplayConfig` holds their defaults."""
    c = ReplayConfig
    p.add_argument("file", type=Path, help="HDF5 file holding an (N, H, W) dataset")
    add_option(p, c, "dataset", "dataset path")
    add_option(p, c, "endpoint", "ZeroMQ address to bind, or a port on 127.0.0.1")
    add_option(
        p, c, "mode", "socket type", flag=("-z", "--mode"), choices=MODES, type=str.upper, shown=""
    )
    add_option(p, c, "source", "source name")
    add_option(p, c, "key", "key of the frames array")
    add_option(
        p,
        c,
        "frames_per_message",
        "frames per message, one train",
        flag=("-k", "--frames-per-message"),
    )
    add_option(p, c, "rate", "frames/s to pace to (0: as fast as taken)", shown="")
    add_option(p, c, "first_train_id", "train id of the first message")
    add_option(p, c, "start", "first frame to send", shown="")
    add_option(p, c, "stop", "frame to stop before", type=int, shown="")
    add_option(p, c, "repeat", "send the range N times", shown="")
    add_option(p, c, "dtype", "convert frames before sending", choices=SEND_DTYPES, shown="")
    p.add_argument("--no-end-marker", action="store_true", help="do not send the end-of-run marker")
    add_option(p, c, "linger_s", "REP: quiet seconds before leaving", flag="--linger")
    add_option(
        p,
        c,
        "expected_clients",
        "end markers to deliver (REP/PUSH); subscribers to wait for (PUB)",
    )
    add_option(p, c, "hwm", "send high-water mark, messages")
    p.add_argument(
        "--pub-lossy", action="store_true", help="PUB: drop for slow subscribers (live-like)"
    )
    p.add_argument(
        "--curve-secret-key",
        type=Path,
        help="CurveZMQ: this server's secret key file (NAME.key_secret from "
        "zmq.auth.create_certificates); encrypts the stream",
    )
    p.add_argument(
        "--curve-clients-dir",
        type=Path,
        help="CurveZMQ: directory of the allowed clients' public keys (*.key); others are "
        "refused at the handshake",
    )


def config_from_args(args: argparse.Namespace) -> ReplayConfig:
    return ReplayConfig(
        path=args.file,
        dataset=args.dataset,
        endpoint=args.endpoint,
        mode=args.mode,
        source=args.source,
        key=args.key,
        frames_per_message=args.frames_per_message,
        rate=args.rate,
        first_train_id=args.first_train_id,
        start=args.start,
        stop=args.stop,
        repeat=args.repeat,
        dtype=args.dtype,
        end_marker=not args.no_end_marker,
        linger_s=args.linger,
        expected_clients=args.expected_clients,
        hwm=args.hwm,
        pub_lossy=args.pub_lossy,
        curve_secret_key=args.curve_secret_key,
        curve_clients_dir=args.curve_clients_dir,
    )


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    server = ReplayServer(config_from_args(args))
    total = server.frames_per_repeat * server.config.repeat
    with tqdm(total=total, unit="frame", file=sys.stderr, disable=None) as bar:
        server.progress = bar.update
        print(f"replay ready {server.endpoint}", flush=True)
        stats = server.run()
    print(stats.summary(), flush=True)
    return 0
