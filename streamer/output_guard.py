"""Classification through a full disk: the writer stage's guard around the rolling writer.

While the output can be written, batches go to the :class:`~streamer.writer.RollingWriter`.
When it cannot (:class:`~hitstream.errors.DiskFullError` from the free-space guard, or any
other :class:`~hitstream.errors.OutputError`), the guard *pauses* output instead of
stopping the run: classification, metrics and the live page go on, and the label row of
every frame (no pixels) goes

* to ``output.labels_dir`` (another filesystem), as ordinary CXI files without kept
  frames, when it is set, else
* to a table in memory of at most ``output.backlog_frames`` rows (about 50 bytes each);
  rows beyond it are dropped and counted (``hitstream_labels_unrecorded{reason=
  "backlog_full"}``).

Every ``output.retry_s`` the guard tries again (a free-space check; after a failed write
the wait doubles, up to :data:`MAX_RETRY_S`, since each try opens a file). When the output
takes data again it writes the held label rows first (marked not kept), then resumes
keeping frames. Frames the model kept while paused are counted in
``hitstream_kept_not_written``. ``hitstream_frames_kept`` counts kept frames *flushed* to
disk, so it matches the rows a reader finds. A file abandoned after a failed write stays
a ``.part`` until the next start recovers it (:mod:`streamer.recovery`).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.errors import OutputError
from streamer.metrics import Metrics
from streamer.types import ResultBatch
from streamer.writer import RollingWriter

log = logging.getLogger(__name__)

MAX_RETRY_S = 60.0  # longest wait between tries after failed writes


def labels_only(result: ResultBatch, start: int = 0) -> ResultBatch:
    """Rows ``start:`` of ``result`` without pixels (a zero-size broadcast) and with nothing
    kept: what a label row needs, safe to hold after the batch's buffer is reused."""
    b = result.batch
    sl = slice(start, len(b))
    n = len(b) - start
    h, w = b.frames.shape[-2:]
    frames = np.broadcast_to(np.zeros((1, 1, 1), np.float32), (n, h, w))
    batch = replace(
        b,
        frames=frames,
        train_id=b.train_id[sl].copy(),
        pulse_id=b.pulse_id[sl].copy(),
        timestamp=b.timestamp[sl].copy(),
        received=b.received[sl].copy(),
    )
    return replace(
        result,
        batch=batch,
        probabilities=result.probabilities[sl].copy(),
        label=result.label[sl].copy(),
        template_distance=result.template_distance[sl].copy(),
        keep=np.zeros(n, dtype=bool),
        extras={},
    )


class LabelBacklog:
    """Label-only batches held in memory, oldest first, at most ``capacity`` rows."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[ResultBatch] = deque()
        self.rows = 0

    def add(self, result: ResultBatch) -> int:
        """Hold a label-only batch; return the rows that did not fit (dropped, oldest first)."""
        self._items.append(result)
        self.rows += len(result)
        lost = 0
        while self.rows > self.capacity and self._items:
            old = self._items.popleft()
            self.rows -= len(old)
            lost += len(old)
        return lost

    def trim_head(self, rows: int) -> None:
        """Forget the first ``rows`` rows of the oldest batch (written or lost elsewhere)."""
        head = self._items[0]
        self._items[0] = labels_only(head, rows)
        self.rows -= rows

    def peek(self) -> ResultBatch | None:
        return self._items[0] if self._items else None

    def pop(self) -> ResultBatch:
        item = self._items.popleft()
        self.rows -= len(item)
        return item

    def __len__(self) -> int:
        return len(self._items)


class OutputGuard:
    """Writes results while it can, holds label rows while it cannot (one thread owns it).

    ``fallback`` makes the writer for ``labels_dir`` on first use (None: memory).
    """

    def __init__(
        self,
        writer: RollingWriter,
        metrics: Metrics,
        *,
        backlog_frames: int,
        retry_s: float,
        labels_dir: Path | None = None,
        fallback: Callable[[], RollingWriter] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.writer = writer
        self.metrics = metrics
        self.retry_s = retry_s
        self.backlog = LabelBacklog(backlog_frames)
        self.labels_dir = labels_dir
        self._make_fallback = fallback if labels_dir is not None else None
        self.fallback: RollingWriter | None = None
        self._clock = clock
        self.paused: str | None = None  # why output is paused, or None
        self.last_reason: str | None = None  # why it was paused last
        self._next_try = 0.0
        self._wait_s = retry_s  # grows after failed writes, back to retry_s on success
        self.pauses = 0
        self._counted = {"rows_lost": 0, "kept_flushed": 0}
        self.unrecorded: dict[str, int] = {}

    # -- the writer stage's calls ---------------------------------------------------------

    def write(self, result: ResultBatch) -> None:
        """Write a batch, or hold its labels while output is paused."""
        retrying = self.paused is not None
        if retrying and not self._try_resume():
            self._hold(result)
            return
        before = self.writer.frames_seen
        try:
            self.writer.write(result)
        except OutputError as exc:
            if retrying:
                self._backoff(exc)  # the try after a pause failed: still paused
            else:
                self._pause(exc)
            # rows the writer took are in a file (flushed) or counted lost with it
            self._hold(result, start=self.writer.frames_seen - before)
        else:
            if retrying:
                self._resumed()
        finally:
            self._sync_counts()

    def check_at_start(self) -> None:
        """Check free space before the service is ready: pause with a clear log line now
        rather than at the first frame."""
        try:
            self.writer.check_space()
        except OutputError as exc:
            self._pause(exc)

    def tick(self) -> None:
        """Periodic (no frames for a while): flush, or retry a paused output."""
        try:
            if self.paused is None:
                self.writer.flush()
            elif self._try_resume():
                self._resumed()
        except OutputError as exc:
            self._pause(exc)
        finally:
            self._sync_counts()
        if self.fallback is not None:
            try:
                self.fallback.flush()
            except OutputError as exc:
                log.error("labels_dir: %s", exc)

    def close(self) -> None:
        """Finish the files; label rows still held when the disk stays full are counted lost."""
        try:
            if self.paused is not None and self._try_resume(force=True):
                self._resumed()
            self.writer.close()
        except OutputError as exc:
            self._pause(exc)
        finally:
            if self.backlog.rows:
                n = self.backlog.rows
                log.error("output still not writable at the end: %d label rows lost", n)
                self._unrecorded("disk_full_at_end", n)
                while len(self.backlog):
                    self.backlog.pop()
            if self.fallback is not None:
                try:
                    self.fallback.close()
                except OutputError as exc:
                    log.error("labels_dir: %s", exc)
            self._sync_counts()

    # -- state ----------------------------------------------------------------------------

    def alert(self) -> str | None:
        """The banner while paused: what happens and what to do."""
        if self.paused is None:
            return None
        where = (
            f"to {self.labels_dir}" if self.fallback is not None else
            f"in memory ({self.backlog.rows} of {self.backlog.capacity} rows)"
        )  # fmt: skip
        return (
            f"output paused ({self.paused}): frames are classified but not kept; labels go "
            f"{where}. Free space on {self.writer.config.dir}: keeping resumes by itself."
        )

    def status(self) -> dict[str, Any]:
        return {
            "paused": self.paused,
            "pauses": self.pauses,
            "backlog_rows": self.backlog.rows,
            "labels_dir": None if self.labels_dir is None else str(self.labels_dir),
            "rows_on_disk": self.rows_on_disk,
            "unrecorded": dict(self.unrecorded),
        }

    @property
    def rows_on_disk(self) -> int:
        """Label rows flushed to files (output and labels_dir)."""
        extra = self.fallback.rows_flushed if self.fallback is not None else 0
        return self.writer.rows_flushed + extra

    # -- internals ------------------------------------------------------------------------

    def _pause(self, exc: OutputError) -> None:
        now = self._clock()
        self._next_try = now + self._wait_s
        if self.paused is not None:
            return
        self.paused = self.last_reason = str(exc)
        self.pauses += 1
        self.metrics.writer_paused.set(1)
        where = (
            f"output.labels_dir = {self.labels_dir}"
            if self._make_fallback is not None
            else f"memory (at most {self.backlog.capacity} rows)"
        )
        log.error(
            "output: %s. Classification goes on; labels go to %s; frames are kept again "
            "when the output takes data (tried every %g s)",
            exc,
            where,
            self.retry_s,
        )

    def _try_resume(self, force: bool = False) -> bool:
        """When a try is due: True once the output has space and took the held rows (the
        caller then writes and calls :meth:`_resumed`)."""
        if self.paused is None:
            return True
        if not force and self._clock() < self._next_try:
            return False
        self._next_try = self._clock() + self.retry_s
        try:
            self.writer.check_space()
        except OutputError as exc:
            log.debug("output still paused: %s", exc)
            return False
        try:
            while len(self.backlog):
                before = self.writer.frames_seen
                try:
                    self.writer.write(self.backlog.peek())  # type: ignore[arg-type]
                except OutputError:
                    taken = self.writer.frames_seen - before  # in a file, or counted lost
                    if taken:
                        self.backlog.trim_head(taken)
                    raise
                self.backlog.pop()
        except OutputError as exc:
            self._backoff(exc)
            return False
        finally:
            self.metrics.labels_backlog.set(self.backlog.rows)
        return True

    def _backoff(self, exc: OutputError) -> None:
        """A try failed in a write: wait twice as long before the next (each opens a file)."""
        self._wait_s = min(2 * self._wait_s, MAX_RETRY_S)
        self._next_try = self._clock() + self._wait_s
        log.debug("output still paused: %s (next try in %g s)", exc, self._wait_s)

    def _resumed(self) -> None:
        self._wait_s = self.retry_s
        if self.fallback is not None:
            try:
                self.fallback.rotate()  # its rows in a finished file
            except OutputError as exc:
                log.error("labels_dir: %s", exc)
        log.info("output writable again after '%s': keeping frames again", self.paused)
        self.paused = None
        self.metrics.writer_paused.set(0)

    def _hold(self, result: ResultBatch, start: int = 0) -> None:
        if start >= len(result):
            return
        kept = int(np.count_nonzero(result.keep[start:]))
        if kept:
            self.metrics.kept_not_written.inc(kept)
        rows = labels_only(result, start)
        if self._make_fallback is not None:
            try:
                if self.fallback is None:
                    self.fallback = self._make_fallback()
                self.fallback.write(rows)
                return
            except OutputError as exc:
                log.error("labels_dir failed too (%s): labels go to memory", exc)
        lost = self.backlog.add(rows)
        if lost:
            self._unrecorded("backlog_full", lost)
        self.metrics.labels_backlog.set(self.backlog.rows)

    def _unrecorded(self, reason: str, n: int) -> None:
        self.unrecorded[reason] = self.unrecorded.get(reason, 0) + n
        self.metrics.labels_unrecorded.labels(reason=reason).inc(n)

    def _sync_counts(self) -> None:
        """Export what the writer made durable and what it lost since the last call."""
        w, c = self.writer, self._counted
        if w.rows_lost != c["rows_lost"]:
            self._unrecorded("write_error", w.rows_lost - c["rows_lost"])
            c["rows_lost"] = w.rows_lost
        if w.kept_flushed != c["kept_flushed"]:
            self.metrics.frames_kept.inc(w.kept_flushed - c["kept_flushed"])
            c["kept_flushed"] = w.kept_flushed
        self.metrics.bytes_written.set(w.bytes_written)
