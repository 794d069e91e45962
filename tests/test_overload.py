"""Overload and disk policies of the running pipeline (real sockets, real files)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import zmq

from streamer.config import load_config
from streamer.decode import END_OF_RUN_SOURCE
from streamer.pipeline import Pipeline
from streamer.protocol import serialize
from streamer.readback import list_run_files, read_run
from tests.helpers_stream import PipelineThread, running_pipeline
from tests.procs import free_endpoint
from tests.tiny_bundle import make_tiny_bundle

K = 8


def message(tid: int, frames: np.ndarray) -> list:
    return serialize(
        {"det": {"image.data": frames}}, {"det": {"source": "det", "timestamp.tid": tid}}
    )


@contextmanager
def push_feed(
    model: Path, out: Path, **overrides: object
) -> Iterator[tuple[zmq.Socket, PipelineThread]]:
    """A bound PUSH socket on a free loopback port and a PULL pipeline reading it, running
    in a thread for the ``with`` block; stopped, joined and closed however the block ends."""
    endpoint = free_endpoint()
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.SNDTIMEO, 5000)  # a blocked feed would raise zmq.Again
    push.setsockopt(zmq.LINGER, 0)
    push.bind(endpoint)
    try:
        cfg = load_config(None, {
            "model": str(model), "feed.endpoint": endpoint, "feed.mode": "PULL",
            "output.dir": str(out), "output.min_free_bytes": 0, **overrides,
        })  # fmt: skip
        with running_pipeline(Pipeline(cfg)) as run:
            yield push, run
    finally:
        push.close(linger=0)


def test_live_mode_never_blocks_the_feed_and_counts_every_drop(tmp_path: Path) -> None:
    slow = make_tiny_bundle(tmp_path / "slow", slow=256)
    out = tmp_path / "out"
    sent_trains = [tid for tid in range(1, 151) if not 50 <= tid < 53]  # a gap of 3 trains
    with push_feed(slow, out, **{
        "pipeline.mode": "live", "pipeline.queue_size": 1, "engine.max_batch": K,
    }) as (push, run):  # fmt: skip
        frames = np.ones((K, 260, 257), np.float32)
        for tid in sent_trains:
            push.send_multipart(message(tid, frames))
        push.send_multipart(serialize({END_OF_RUN_SOURCE: {"run": "r", "frames": 0, "trains": 0}}))
        s = run.wait(120)
    sent = len(sent_trains) * K
    assert s.frames_received == sent
    overflow = s.dropped.get("queue_full", 0) + s.dropped.get("no_buffer", 0)
    assert overflow > 0, "the slow model should have made the live queues overflow"
    assert s.dropped["train_gap"] == 3 * K
    assert s.frames_classified + overflow == sent, s.dropped
    tables = read_run(out, "run")
    assert len(tables.train_id) == s.frames_classified
    assert not set(tables.train_id.tolist()) & {50, 51, 52}


def test_disk_guard_stops_cleanly_with_intact_files(tmp_path: Path) -> None:
    tiny = make_tiny_bundle(tmp_path / "tiny")
    out = tmp_path / "out"
    guard = {"output.min_free_bytes": 1 << 62, "engine.max_batch": K}
    with push_feed(tiny, out, **guard) as (push, run):
        for tid in range(1, 4):
            push.send_multipart(message(tid, np.ones((K, 260, 257), np.float32)))
        s = run.wait(60)  # stopped by the guard itself, not by the end of the block
    assert s.error is not None and "free" in s.error.lower()
    assert not list(out.glob("*.part"))
    for f in list_run_files(out, "run"):
        read_run(out, "run")  # every finished file opens and reads
        assert f.suffix == ".cxi"


@pytest.mark.parametrize("keep", [["single", "multiple"], []])
def test_configured_keep_classes_override_the_bundle(tmp_path: Path, keep: list[str]) -> None:
    tiny = make_tiny_bundle(tmp_path / "tiny")
    out = tmp_path / "out"
    with push_feed(tiny, out, **{"output.keep_classes": keep}) as (push, run):
        push.send_multipart(message(1, np.ones((K, 260, 257), np.float32)))  # bright: 'single'
        push.send_multipart(serialize({END_OF_RUN_SOURCE: {"run": "r", "frames": K, "trains": 1}}))
        s = run.wait(60)
    assert s.frames_classified == K
    assert s.frames_kept == (K if "single" in keep else 0)
