"""Liveness that means something: a silent producer is noticed, logged, exported, shown
and makes ``/ready`` say no; reconnects are logged at INFO. Real sockets, real pipeline."""

from __future__ import annotations

import logging
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamer.decode import END_OF_RUN_SOURCE
from streamer.feed import FeedClient
from streamer.http_server import StatusServer
from streamer.protocol import serialize
from tests.helpers_stream import message, push_feed
from tests.procs import free_endpoint
from tests.tiny_bundle import make_tiny_bundle


def wait_until(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def ready_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url + "/ready", timeout=5) as r:
            return int(r.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def test_a_silent_feed_is_logged_exported_shown_and_not_ready(
    tiny: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    frames = np.ones((4, 260, 257), np.float32)
    with push_feed(
        tiny, tmp_path / "out", **{"feed.silence_s": 0.5, "pipeline.stop_at_end": False}
    ) as (
        push,
        run,
    ):
        p = run.pipeline
        server = StatusServer(p.metrics, port=0).start()
        try:
            server.not_ready = p.not_ready_reason
            assert p.ready.wait(10)
            server.ready.set()
            # no producer yet: silent after silence_s, counted from the start of listening
            wait_until(lambda: p.metrics.value("hitstream_feed_silent") == 1)
            assert ready_status(server.url) == 503
            assert "no frames from" in (p.not_ready_reason() or "")
            assert any("no frames from" in a for a in p.alerts())
            assert p.live is not None and p.live.snapshot()["alerts"]
            warned = [r for r in caplog.records if "no frames from" in r.getMessage()]
            assert len(warned) == 1 and warned[0].levelno == logging.WARNING
            assert p.metrics.value("hitstream_feed_silence_seconds") >= 0.5
            # frames: ready again, the banner is gone, an INFO line says so
            push.send_multipart(message(1, frames))
            wait_until(lambda: p.metrics.value("hitstream_feed_silent") == 0)
            assert ready_status(server.url) == 200 and p.alerts() == []
            assert any("again after" in r.getMessage() for r in caplog.records)
            # the producer goes quiet mid-run: a second silence, a second warning
            wait_until(lambda: p.metrics.value("hitstream_feed_silent") == 1)
            assert p.silence.status()["silences"] == 2
            # after the end-of-run marker a quiet feed is a pause between runs: ready
            push.send_multipart(message(2, frames))
            end = {"run": "r", "frames": 8, "trains": 2}
            push.send_multipart(serialize({END_OF_RUN_SOURCE: end}))
            wait_until(lambda: p.silence.status()["idle_after_end_of_run"])
            stays_until = time.monotonic() + 0.8  # longer than silence_s: not an outage
            while time.monotonic() < stays_until:
                assert p.metrics.value("hitstream_feed_silent") == 0
                time.sleep(0.05)
            assert ready_status(server.url) == 200
        finally:
            server.stop()


def test_req_reconnects_are_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    """A REQ feed whose producer does not answer recreates its socket and says so at INFO
    (once per outage), and says when the producer answers again."""
    caplog.set_level(logging.INFO, logger="streamer.feed")
    endpoint = free_endpoint()
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.setsockopt(zmq.LINGER, 0)
    try:
        with FeedClient(endpoint, "REQ", timeout_s=0.2, context=ctx) as feed:
            for _ in range(3):  # no producer: three timeouts, three new sockets
                with pytest.raises(TimeoutError):
                    feed.recv_parts()
            resets = [r for r in caplog.records if "reconnecting" in r.getMessage()]
            assert len(resets) == 1 and resets[0].levelno == logging.INFO
            rep.bind(endpoint)
            reply = serialize({"det": {"image.data": np.zeros((1, 2, 2), np.float32)}})
            deadline = time.monotonic() + 10
            while True:
                try:
                    if rep.poll(50):
                        rep.recv()
                        rep.send_multipart(reply)
                    feed.recv_parts(timeout_s=0.1)
                    break
                except TimeoutError:
                    assert time.monotonic() < deadline
            assert any("answering again" in r.getMessage() for r in caplog.records)
    finally:
        rep.close(linger=0)
        ctx.term()


def test_the_outage_alerts_fire_within_a_minute() -> None:
    """``promtool test rules``: a silent feed, a paused output and a dead worker raise
    their alerts within a minute (deploy/prometheus/alerts_test.yml)."""
    from tests.test_deploy import PROM, _promtool

    run = _promtool("test", "rules", str(PROM / "alerts_test.yml"))
    assert run.returncode == 0 and "SUCCESS" in run.stdout + run.stderr, run.stdout + run.stderr
