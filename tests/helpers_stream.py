"""Test helpers for the stream protocol, feed client, replay server and a running pipeline."""

from __future__ import annotations

import selectors
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import h5py
import numpy as np

from streamer.decode import Decoder, SourceSpec
from streamer.feed import FeedClient
from streamer.types import EndOfRun, FrameBatch

if TYPE_CHECKING:  # the pipeline (and onnxruntime) only for the tests that run one
    from streamer.pipeline import Pipeline, RunSummary


def write_frames(
    path: Path,
    n: int = 100,
    shape: tuple[int, int] = (16, 17),
    dtype: str = "uint16",
    dataset: str = "data",
    seed: int = 0,
) -> np.ndarray:
    """Write seeded random frames ``(n, *shape)`` to ``path:dataset``; return them."""
    rng = np.random.default_rng(seed)
    frames = (rng.random((n, *shape)) * 1000).astype(dtype)
    with h5py.File(path, "a") as f:
        f.create_dataset(dataset, data=frames, chunks=(1, *shape))
    return frames


def read_run(
    client: FeedClient, spec: SourceSpec | None = None, max_messages: int = 10_000
) -> tuple[FrameBatch | None, EndOfRun, int]:
    """Read messages until the end marker: (all frames, the marker, data messages)."""
    decoder = Decoder(spec or SourceSpec())
    batches = []
    for n in range(max_messages):
        out = decoder.decode(*client.next())
        if out.end is not None:
            return (FrameBatch.concat(batches) if batches else None), out.end, n
        assert out.batch is not None
        batches.append(out.batch)
    raise AssertionError(f"no end marker within {max_messages} messages")


def wait_for_line(proc: subprocess.Popen, needle: str, timeout_s: float = 30.0) -> str:
    """The first stdout line of ``proc`` containing ``needle`` (no sleeping)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if not sel.select(left):
                break
            line = proc.stdout.readline()
            if not line:
                raise AssertionError(f"process ended before printing {needle!r}")
            if needle in line:
                return line
    raise AssertionError(f"no line with {needle!r} within {timeout_s} s")


class PipelineThread:
    """``pipeline.run()`` in a thread (see :func:`running_pipeline`)."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self._summary: RunSummary | None = None
        self._error: BaseException | None = None
        # a daemon as a last resort: even a thread that ignores stop() cannot hang pytest
        self.thread = threading.Thread(target=self._run, name="test-pipeline", daemon=True)

    def _run(self) -> None:
        try:
            self._summary = self.pipeline.run()
        except BaseException as exc:  # handed to the test by wait()
            self._error = exc

    def is_alive(self) -> bool:
        return self.thread.is_alive()

    def wait(self, timeout_s: float) -> RunSummary:
        """Join the run; its summary (AssertionError if it is still running or raised)."""
        self.thread.join(timeout_s)
        assert not self.thread.is_alive(), f"the pipeline still runs after {timeout_s} s"
        if self._error is not None:
            raise AssertionError(f"pipeline.run() raised {self._error!r}") from self._error
        assert self._summary is not None
        return self._summary


@contextmanager
def running_pipeline(pipeline: Pipeline, stop_timeout_s: float = 60.0) -> Iterator[PipelineThread]:
    """Run ``pipeline`` in a thread for the ``with`` block; on the way out, whatever
    happened in the block, ask it to stop, join it and assert that it ended, so a failing
    test ends instead of leaving a running pipeline behind."""
    run = PipelineThread(pipeline)
    run.thread.start()
    try:
        yield run
    finally:
        pipeline.stop()
        run.thread.join(stop_timeout_s)
        assert not run.thread.is_alive(), f"the pipeline did not stop within {stop_timeout_s} s"


def message(tid: int, frames: np.ndarray) -> list:
    """A protocol-2.2 message of one train from source ``det`` (frames under ``image.data``)."""
    from streamer.protocol import serialize

    return serialize(
        {"det": {"image.data": frames}}, {"det": {"source": "det", "timestamp.tid": tid}}
    )


@contextmanager
def push_feed(model: Path, out: Path, **overrides: object) -> Iterator[tuple[Any, PipelineThread]]:
    """A bound PUSH socket on a free loopback port and a PULL pipeline reading it, running
    in a thread for the ``with`` block; stopped, joined and closed however the block ends."""
    import zmq

    from streamer.config import load_config
    from streamer.pipeline import Pipeline
    from tests.procs import free_endpoint

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
