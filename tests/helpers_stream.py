"""Test helpers for the stream protocol, feed client and replay server."""

from __future__ import annotations

import selectors
import subprocess
import time
from pathlib import Path

import h5py
import numpy as np

from streamer.decode import Decoder, SourceSpec
from streamer.feed import FeedClient
from streamer.types import EndOfRun, FrameBatch


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
