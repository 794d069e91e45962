"""Classifying through a full disk, and keeping frames again when space returns.

The disk is a real filesystem that really fills up: a small tmpfs where the machine lets us
mount one, else the test directory's own filesystem with the free-space guard set just
below its current free space. A ballast file fills it; deleting the ballast frees it.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest

from streamer.decode import END_OF_RUN_SOURCE
from streamer.protocol import serialize
from streamer.readback import list_run_files, read_run
from tests.helpers_stream import PipelineThread, message, push_feed
from tests.tiny_bundle import make_tiny_bundle

K = 8  # frames per train
GUARD = 16 << 20  # output.min_free_bytes


@contextmanager
def small_disk(path: Path) -> Iterator[int]:
    """A filesystem at ``path``: a 96 MiB tmpfs if mountable, else the one it is on.
    Yields the ``min_free_bytes`` to configure so that a ballast of :func:`fill` trips it."""
    path.mkdir(parents=True)
    mounted = (
        shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=96m", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        # on a shared disk, the guard sits 64 MiB under what is free now
        yield GUARD if mounted else max(GUARD, shutil.disk_usage(path).free - (64 << 20))
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path, min_free: int) -> Path:
    """Write a ballast file that leaves 8 MiB less than ``min_free`` free."""
    ballast = path / "ballast.bin"
    free = shutil.disk_usage(path).free
    size = max(0, free - min_free + (8 << 20))
    with open(ballast, "wb") as fh:
        chunk = np.zeros(1 << 20, np.uint8).tobytes()
        for _ in range(size >> 20):
            fh.write(chunk)
    assert shutil.disk_usage(path).free < min_free, "the ballast did not fill the disk"
    return ballast


def wait_until(cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def classified(run: PipelineThread) -> int:
    return int(run.pipeline.metrics.value("hitstream_frames_classified_total"))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.mark.parametrize("labels_elsewhere", [False, True], ids=["memory", "labels_dir"])
def test_classification_goes_on_through_a_full_disk_and_keeping_resumes(
    tiny: Path, tmp_path: Path, labels_elsewhere: bool
) -> None:
    out = tmp_path / "disk"
    labels_dir = tmp_path / "labels"
    with small_disk(out) as min_free:
        extra = {"output.labels_dir": str(labels_dir)} if labels_elsewhere else {}
        with push_feed(tiny, out, **{
            "output.min_free_bytes": min_free, "output.retry_s": 0.05, "engine.max_batch": K,
            "output.flush_every_s": 0.05, "pipeline.max_delay_s": 0.005, **extra,
        }) as (push, run):  # fmt: skip
            p = run.pipeline
            bright = np.ones((K, 260, 257), np.float32)  # 'single': kept
            for tid in range(1, 11):
                push.send_multipart(message(tid, bright))
            wait_until(lambda: p.writer.frames_seen == 10 * K)  # written, not only classified
            ballast = fill(out, min_free)
            for tid in range(11, 21):
                push.send_multipart(message(tid, bright))
            wait_until(lambda: classified(run) == 20 * K)
            wait_until(lambda: p.output.paused is not None)
            # while full: classification, metrics, the live page and /ready say so
            assert "output paused" in (p.not_ready_reason() or "")
            assert any("output paused" in a for a in p.alerts())
            assert p.live is not None and p.live.snapshot()["alerts"]
            assert p.metrics.value("hitstream_writer_paused") == 1
            assert p.metrics.value("hitstream_hit_rate") > 0  # monitoring did not go dark
            ballast.unlink()  # space returns: the next try (output.retry_s) resumes
            wait_until(lambda: p.output.paused is None)
            assert p.metrics.value("hitstream_writer_paused") == 0 and not p.alerts()
            for tid in range(21, 31):
                push.send_multipart(message(tid, bright))
            wait_until(lambda: classified(run) == 30 * K)
            end = {"run": "r", "frames": 30 * K, "trains": 30}
            push.send_multipart(serialize({END_OF_RUN_SOURCE: end}))
            s = run.wait(60)
        acc = s.accounting
        assert acc["balanced"] and acc["received"] == acc["classified"] == 30 * K
        assert acc["never_seen"] == 0 and acc["labels_unrecorded"] == 0
        assert s.output["pauses"] == 1 and s.error is not None and "free" in s.error
        # nothing half-written; the index covers every finished file
        assert not list(out.glob("*.part"))
        files = list_run_files(out, "run")
        assert s.index is not None
        with h5py.File(s.index) as idx:
            assert [n.decode() for n in idx["entry_1/files"][()]] == [f.name for f in files]
        t = read_run(out, "run")
        # the pixels of the frames classified while full were not kept ...
        paused_rows = (t.frames.train_id >= 11) & (t.frames.train_id <= 20)
        assert acc["kept_not_written"] == 10 * K
        assert s.frames_kept == int(t.frames.kept.sum()) == len(t.kept.train_id) == 20 * K
        if labels_elsewhere:  # ... their labels went to the other directory
            assert not paused_rows.any()
            lt = read_run(labels_dir, "run")
            assert sorted(set(lt.frames.train_id.tolist())) == list(range(11, 21))
            assert not lt.frames.kept.any()
            assert acc["labels_on_disk"] == 30 * K
        else:  # ... their labels were written from memory when space returned
            assert int(paused_rows.sum()) == 10 * K and not t.frames.kept[paused_rows].any()
            assert sorted(set(t.frames.train_id.tolist())) == list(range(1, 31))
            assert acc["labels_on_disk"] == len(t.frames.train_id) == 30 * K


def test_too_little_free_space_is_reported_before_ready(tiny: Path, tmp_path: Path) -> None:
    """Free space below the guard at start: a clear reason from /ready (and the log) before
    a single frame arrives."""
    out = tmp_path / "out"
    with push_feed(tiny, out, **{"output.min_free_bytes": 1 << 62}) as (_push, run):
        reason = run.pipeline.not_ready_reason()
        assert reason is not None and "min_free_bytes" in reason, reason
