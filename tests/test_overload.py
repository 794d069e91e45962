"""Overload and disk policies of the running pipeline (real sockets, real files)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from streamer.decode import END_OF_RUN_SOURCE
from streamer.protocol import serialize
from streamer.readback import list_run_files, read_run
from tests.helpers_stream import message, push_feed
from tests.tiny_bundle import make_tiny_bundle

K = 8


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
    assert s.missed == {"train_gap": 3 * K}  # never received: not in the balance
    assert "train_gap" not in s.dropped
    assert s.frames_classified + overflow == sent, s.dropped
    assert s.accounting["balanced"] and s.accounting["received"] == sent
    tables = read_run(out, "run")
    assert len(tables.train_id) == s.frames_classified
    assert not set(tables.train_id.tolist()) & {50, 51, 52}


def test_a_disk_that_never_frees_classifies_on_and_reports_what_was_not_kept(
    tmp_path: Path,
) -> None:
    """The free-space guard trips from the start and never clears: every frame is still
    classified, nothing is kept, the label rows held in memory are counted lost at the end,
    and the run ends with an error naming the free space. No half-written file is left."""
    tiny = make_tiny_bundle(tmp_path / "tiny")
    out = tmp_path / "out"
    guard = {"output.min_free_bytes": 1 << 62, "engine.max_batch": K, "output.retry_s": 0.05}
    with push_feed(tiny, out, **guard) as (push, run):
        for tid in range(1, 4):
            push.send_multipart(message(tid, np.ones((K, 260, 257), np.float32)))
        push.send_multipart(
            serialize({END_OF_RUN_SOURCE: {"run": "r", "frames": 3 * K, "trains": 3}})
        )
        s = run.wait(60)
    assert s.error is not None and "free" in s.error.lower()
    assert s.frames_classified == 3 * K and s.frames_kept == 0
    acc = s.accounting
    assert acc["balanced"] and acc["never_seen"] == 0
    assert acc["kept_not_written"] == 3 * K  # bright frames: all 'single', all kept
    assert acc["labels_unrecorded"] == 3 * K and acc["labels_on_disk"] == 0
    assert s.output["pauses"] == 1
    assert not list(out.glob("*.part")) and not list_run_files(out, "run")


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
