"""Group incoming frames into engine batches (by size or deadline) in pooled buffers."""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass

import numpy as np

from streamer.engine import BufferPool
from streamer.types import FrameBatch


@dataclass
class StagedBatch:
    """A batch whose frames live in pool buffer ``pool_index`` (release it when written);
    -1: the frames are the received message itself (nothing to release)."""

    batch: FrameBatch
    pool_index: int


class Batcher:
    """Copies frames into pool buffers and hands out full (or overdue) batches.

    ``block=False`` (live mode) never waits for a free buffer: frames that find none are
    returned as a count of dropped frames instead. ``zero_copy_min`` > 0: a message of at
    least that many frames arriving while nothing is pending becomes its own batch(es)
    without copying (``pool_index`` -1): the engine reads the received buffer in place.
    """

    def __init__(
        self, pool: BufferPool, max_batch: int, max_delay_s: float, zero_copy_min: int = 0
    ) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self.max_delay_s = max_delay_s
        self.zero_copy_min = zero_copy_min
        self._index: int | None = None
        self._buf: np.ndarray | None = None
        self._n = 0
        self._parts: list[FrameBatch] = []
        self._first_arrival = 0.0

    @property
    def pending(self) -> int:
        return self._n

    def add(self, fb: FrameBatch, *, block: bool = True) -> tuple[list[StagedBatch], int]:
        """Stage ``fb``; returns the batches now full and the number of frames dropped."""
        ready: list[StagedBatch] = []
        start, total = 0, len(fb)
        if self.zero_copy_min and self._n == 0 and total >= self.zero_copy_min:
            for a in range(0, total, self.max_batch):
                ready.append(StagedBatch(_slice(fb, a, min(total, a + self.max_batch)), -1))
            return ready, 0
        while start < total:
            if self._buf is None and not self._open(block):
                return ready, total - start
            assert self._buf is not None
            take = min(self.max_batch - self._n, total - start)
            self._buf[self._n : self._n + take] = fb.frames[start : start + take]
            self._parts.append(_slice(fb, start, start + take))
            self._n += take
            start += take
            if self._n == self.max_batch:
                ready.append(self._emit())
        return ready, 0

    def due(self, now: float | None = None) -> StagedBatch | None:
        """The partial batch if its oldest frame has waited ``max_delay_s``."""
        if self._n and (time.monotonic() if now is None else now) - self._first_arrival >= (
            self.max_delay_s
        ):
            return self._emit()
        return None

    def flush(self) -> StagedBatch | None:
        """The partial batch, whatever its age (end of run, shutdown)."""
        return self._emit() if self._n else None

    def _open(self, block: bool) -> bool:
        try:
            self._index, self._buf = self.pool.acquire(timeout=None if block else 0.0)
        except queue.Empty:
            return False
        self._n = 0
        self._parts = []
        self._first_arrival = time.monotonic()
        return True

    def _emit(self) -> StagedBatch:
        assert self._buf is not None and self._index is not None
        parts = self._parts

        def ids(name: str) -> np.ndarray:
            arrays = [getattr(p, name) for p in parts]
            return arrays[0] if len(arrays) == 1 else np.concatenate(arrays)

        batch = FrameBatch(
            frames=self._buf[: self._n],
            train_id=ids("train_id"),
            pulse_id=ids("pulse_id"),
            timestamp=ids("timestamp"),
            received=ids("received"),
        )
        staged = StagedBatch(batch=batch, pool_index=self._index)
        self._buf, self._index, self._n, self._parts = None, None, 0, []
        return staged


def _slice(fb: FrameBatch, a: int, b: int) -> FrameBatch:
    """Frames a..b-1 (views, no copy)."""
    return FrameBatch(
        frames=fb.frames[a:b],
        train_id=fb.train_id[a:b],
        pulse_id=fb.pulse_id[a:b],
        timestamp=fb.timestamp[a:b],
        received=fb.received[a:b],
    )
