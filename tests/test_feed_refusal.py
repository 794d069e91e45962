"""Loud refusal and ignored sources: a feed the streamer cannot use is an error people see.

Real parts: ``karabo_bridge``'s simulated AGIPD server and our own PUSH socket on
127.0.0.1, the ``streamer serve`` process with its HTTP endpoint, real CXI output.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import zmq
from karabo_bridge.server import SimServerInThread

from hitstream.errors import ConfigError
from streamer.config import FeedConfig, ServeConfig, load_config
from streamer.decode import timestamp_metadata
from streamer.feed_refusal import RefusalWatch
from streamer.metrics import Metrics
from streamer.pipeline import Pipeline, RunSummary
from streamer.protocol import serialize
from tests.helpers_stream import running_pipeline, wait_for_line
from tests.procs import command, free_endpoint
from tests.tiny_bundle import make_tiny_bundle

SHAPE = (260, 257)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("refusal") / "tiny")


def _config(bundle: Path, endpoint: str, out: Path, **extra: object) -> ServeConfig:
    return load_config(
        None,
        {
            "model": str(bundle), "feed.endpoint": endpoint, "feed.mode": "PULL",
            "output.dir": str(out), "output.run": "r", "output.min_free_bytes": 0,
            "metrics.port": -1, **extra,
        },
    )  # fmt: skip


def _message(tid: int, sources: dict[str, np.ndarray]) -> list:
    data = {s: {"image.data": a, "image.pulseId": np.arange(len(a))} for s, a in sources.items()}
    meta = {s: timestamp_metadata(s, tid, time.time()) for s in sources}
    return serialize(data, meta)


def _push_and_run(cfg: ServeConfig, messages: list[list], wait_for: int) -> RunSummary:
    """Send ``messages`` from a PUSH socket into a pipeline; stop it once ``wait_for``
    messages were received (or 30 s passed)."""
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.bind(cfg.feed.endpoint)
    pipeline = Pipeline(cfg)
    try:
        with running_pipeline(pipeline) as run:
            for parts in messages:
                push.send_multipart(parts, copy=False)
            deadline = time.monotonic() + 30
            while (
                pipeline.metrics.value("hitstream_messages_received_total") < wait_for
                and time.monotonic() < deadline
            ):
                time.sleep(0.02)  # poll, bounded by the deadline
            time.sleep(0.3)  # let the last batch through the stages
        return run.wait(0)
    finally:
        push.close()
        ctx.term()


# ------------------------------------------------------------------------- the watch alone


def test_refusal_needs_messages_in_a_row_and_clears_on_frames() -> None:
    metrics, warnings = Metrics(), []
    watch = RefusalWatch(metrics, warnings, after_messages=3, expected="frames of 260×257")
    watch.refused("internal", "a decoder bug")  # no setting fixes that: not counted
    watch.refused("shape", "frames (8192, 128)")
    watch.refused("shape", "frames (8192, 128)")
    assert watch.active is None and metrics.value("hitstream_feed_refused") == 0
    watch.refused("shape", "frames (8192, 128)")
    refusal = watch.active
    assert refusal is not None and refusal.reason == "shape" and refusal.messages == 3
    assert "feed.axis_order" in refusal.fix and "260×257" in refusal.fix
    assert metrics.value("hitstream_feed_refused") == 1 and refusal.message in warnings
    assert watch.end_error() == refusal.message
    watch.accepted()
    assert watch.active is None and metrics.value("hitstream_feed_refused") == 0
    assert refusal.message not in warnings and any("refused for a while" in w for w in warnings)
    assert watch.end_error() is None and watch.status()["was_refused"]


def test_a_run_that_never_accepted_a_frame_ends_in_error() -> None:
    watch = RefusalWatch(Metrics(), [], after_messages=8)
    watch.refused("source", "source 'X' not in message")  # one message, below the count
    assert watch.active is None
    error = watch.end_error()
    assert error is not None and "feed.source" in error


def test_queue_is_bounded_in_bytes() -> None:
    assert FeedConfig().max_message_bytes >= 16 * 352 * 512 * 128 * 4  # one AGIPD 1M train
    cfg = FeedConfig(hwm=64, max_message_bytes=1 << 30, max_queue_bytes=4 << 30)
    assert cfg.queue_messages == 4
    assert FeedConfig(hwm=3, max_message_bytes=1 << 20).queue_messages == 3
    with pytest.raises(ConfigError, match="max_queue_bytes"):
        FeedConfig(max_message_bytes=2 << 30, max_queue_bytes=1 << 30)


# ------------------------------------------------------------- real peers, real pipeline


def test_agipd_feed_with_the_wrong_layout_is_refused_loudly(bundle: Path, tmp_path: Path):
    """karabo_bridge's simulated AGIPD (16, 512, 128, 64) against a 260×257 model with the
    default axis order: not ready, the reason and the fix in /status, an error log,
    and exit code 1 from ``streamer serve``."""
    sim = SimServerInThread(
        "tcp://127.0.0.1:0", sock="REP", detector="AGIPD", raw=False, datagen="random",
        data_like="online", protocol_version="2.2", debug=False,
    )  # fmt: skip
    sim.start()
    try:
        args = ["serve", "--model", bundle, "--endpoint", sim.endpoint, "--feed-mode", "REQ"]
        args += ["--out", tmp_path / "out", "--metrics-port", "0"]
        args += ["--set", "output.min_free_bytes=0", "--set", "feed.refuse_after=3"]
        with command("streamer", *args) as proc:
            line = wait_for_line(proc, "streamer ready", timeout_s=60)
            base = line.split("metrics ")[1].strip().removesuffix("/metrics")
            deadline, body, code = time.monotonic() + 60, "", 200
            while time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"{base}/ready", timeout=5) as r:
                        code, body = r.status, r.read().decode()
                except urllib.error.HTTPError as exc:
                    code, body = exc.code, exc.read().decode()
                if code == 503 and "refused" in body:
                    break
                time.sleep(0.1)  # poll, bounded by the deadline
            assert code == 503 and "feed.axis_order" in body, body
            with urllib.request.urlopen(f"{base}/status", timeout=5) as r:
                status = json.loads(r.read())
            refused = status["feed"]["refused"]
            assert refused["reason"] == "shape" and "260×257" in refused["fix"]
            assert any("refused" in w for w in status["warnings"])  # the live page shows these
            with urllib.request.urlopen(f"{base}/metrics", timeout=5) as r:
                assert "hitstream_feed_refused 1.0" in r.read().decode()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=60)
        assert proc.returncode == 1
        assert "ERROR" in err and "every frame of the feed is refused" in err
        summary = json.loads(out.split("summary ", 1)[1].splitlines()[0])
        assert summary["frames_classified"] == 0 and "feed" in summary["error"]
    finally:
        sim.stop()


def test_refusal_clears_when_frames_come(bundle: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    bad = [_message(t, {"DET": np.zeros((2, 100, 100), np.float32)}) for t in range(1, 5)]
    good = [_message(t, {"DET": rng.poisson(0.1, (4, *SHAPE)).astype(np.float32)})
            for t in range(5, 8)]  # fmt: skip
    cfg = _config(bundle, free_endpoint(), tmp_path / "out", **{"feed.refuse_after": 3})
    summary = _push_and_run(cfg, bad + good, wait_for=7)
    assert summary.error is None and summary.frames_classified == 12
    assert summary.messages_rejected["shape"] == 4 and not summary.rejected
    assert summary.feed["refused"] is None and summary.feed["was_refused"]
    assert any("refused for a while" in w for w in summary.warnings)


def test_every_source_with_frames_is_used_or_reported(bundle: Path, tmp_path: Path) -> None:
    """Two sources carry frames: the first (sorted) is read, the other is named as ignored
    in the summary, the warnings and a metric; choosing it with feed.source swaps them."""
    rng = np.random.default_rng(4)
    messages = [
        _message(t, {s: rng.poisson(0.1, (3, *SHAPE)).astype(np.float32) for s in ("A", "B")})
        for t in range(1, 4)
    ]
    summary = _push_and_run(_config(bundle, free_endpoint(), tmp_path / "a"), messages, 3)
    assert summary.error is None and summary.frames_classified == 9
    assert summary.feed["ignored_sources"] == {"B": 3}
    assert any("'B'" in w and "ignored" in w for w in summary.warnings)
    cfg = _config(bundle, free_endpoint(), tmp_path / "b", **{"feed.source": "B"})
    summary = _push_and_run(cfg, messages, 3)
    assert summary.feed["ignored_sources"] == {"A": 3} and summary.frames_classified == 9
