"""Decisions out, live: each train's per-frame results as a Karabo-bridge 2.2 message.

Downstream tools (a DAQ veto, OM, Hummingbird, a notebook with ``karabo_bridge.Client``)
read what the classifier decided as it decides it. One message per train and batch, source
``DecisionsConfig.source``, keys::

    trainId          int
    pulseId          (n,) uint32
    label            (n,) int16, index into classes
    class_name       list of n str
    probabilities    (n, C) float32, columns in the order of classes
    keep             (n,) uint8, 1: written to the kept data
    classes          list of C str
    background_level float, photons per valid pixel of the run background used (NaN: none)
    model_version    str, ``name:version`` of the bundle

``PUB`` (an XPUB that never blocks: a subscriber that cannot keep up makes the message be
dropped for it and counted) or ``PUSH`` (one consumer pulls; with none connected or its
queue full the message is dropped and counted). Sends never wait, so the classifier never
slows down for a reader: ``hitstream_decisions_dropped_total`` counts what was not sent.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import zmq

from hitstream.errors import ConfigError
from streamer.decode import timestamp_metadata
from streamer.metrics import Metrics
from streamer.protocol import serialize
from streamer.types import ResultBatch

log = logging.getLogger(__name__)

DECISION_MODES = ("PUB", "PUSH")


@dataclass(frozen=True)
class DecisionsConfig:
    """``[decisions]``: where the per-frame results go (``endpoint`` empty: nowhere)."""

    endpoint: str = ""  # e.g. "tcp://127.0.0.1:45100"; bind beyond loopback on purpose
    mode: str = "PUB"
    hwm: int = 100  # messages queued per reader before they are dropped
    source: str = "hitstream/decisions"

    def __post_init__(self) -> None:
        if self.mode not in DECISION_MODES:
            raise ConfigError(f"decisions.mode {self.mode!r} is not one of {DECISION_MODES}")
        if self.hwm < 1:
            raise ConfigError("decisions.hwm must be ≥ 1")


class DecisionPublisher:
    """Publishes :class:`ResultBatch` decisions train by train; never blocks."""

    def __init__(self, config: DecisionsConfig, metrics: Metrics) -> None:
        self.config = config
        self.metrics = metrics
        self._context = zmq.Context()
        kind = zmq.XPUB if config.mode == "PUB" else zmq.PUSH
        self._socket = self._context.socket(kind)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.SNDHWM, config.hwm)
        if kind == zmq.XPUB:
            self._socket.setsockopt(zmq.XPUB_NODROP, 1)  # a full reader: EAGAIN, counted
        try:
            self._socket.bind(config.endpoint)
        except zmq.ZMQError as exc:
            self.close()
            raise ConfigError(f"decisions.endpoint {config.endpoint!r}: {exc}") from exc
        self.endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.sent = 0
        self.dropped = 0
        self.readers = 0  # PUB: subscriptions seen (an XPUB tells us of each)
        log.info("decisions out on %s (%s)", self.endpoint, config.mode)

    def poll_readers(self) -> int:
        """PUB: take the (un)subscriptions that arrived; the number of readers subscribed."""
        if self.config.mode == "PUB":
            while self._socket.poll(0, zmq.POLLIN):
                event = self._socket.recv(zmq.NOBLOCK)
                if event[:1] == b"\x01":
                    self.readers += 1
                elif event[:1] == b"\x00":
                    self.readers = max(0, self.readers - 1)
        return self.readers

    def publish(self, result: ResultBatch) -> None:
        """One message per train of ``result``; a message that cannot go now is dropped."""
        self.poll_readers()
        batch = result.batch
        tids = batch.train_id
        bounds = np.flatnonzero(np.diff(tids)) + 1
        for rows in np.split(np.arange(len(tids)), bounds):
            if len(rows):
                self._send(result, rows)

    def _send(self, result: ResultBatch, rows: np.ndarray) -> None:
        batch, src = result.batch, self.config.source
        tid = int(batch.train_id[rows[0]])
        bg = result.background
        labels = result.label[rows].astype(np.int16)
        values: dict[str, Any] = {
            "trainId": tid,
            "pulseId": batch.pulse_id[rows].astype(np.uint32),
            "label": labels,
            "class_name": [result.classes[i] for i in labels.tolist()],
            "probabilities": np.ascontiguousarray(result.probabilities[rows], np.float32),
            "keep": result.keep[rows].astype(np.uint8),
            "classes": list(result.classes),
            "background_level": float(bg.level) if bg is not None else math.nan,
            "model_version": result.model_version,
        }
        ts = float(batch.timestamp[rows[0]]) if len(rows) else time.time()
        parts = serialize({src: values}, {src: timestamp_metadata(src, tid, ts)})
        try:
            self._socket.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.dropped += 1
            self.metrics.decisions_dropped.inc()
            return
        self.sent += 1
        self.metrics.decisions_sent.inc()

    def close(self) -> None:
        self._socket.close(linger=0)
        self._context.term()
