"""The run's background inside the streamer: estimated by the receiver, used by the engine.

One :class:`hitstream.background.RunBackground` per run (it lives in the pipeline, so a hot
model swap does not touch it). The receiver thread hands it every decoded batch *before* the
batch is staged (:meth:`StreamBackground.observe`; frames divided by ``engine.photon_unit``,
so the estimate is in photons, and at most ``max_frames_per_update`` frames of a message
are looked at), so even the first batch is classified with an estimate from its own dim
frames: the declared fallback during warm-up, flagged ``warm = False`` in the files.

Each published snapshot becomes an immutable :class:`InUse` that replaces
:attr:`StreamBackground.current` in one assignment; the inference threads read it and pass
its map to :meth:`streamer.engine.Engine.infer` in the feed's units (the engine divides it
by ``photon_unit`` like the frames). The state is saved to
``<output.dir>/<run>_<worker>_background.h5`` every ``background.save_every_s`` (from the
receiver thread, atomically) and at the end of the run; a pipeline started on the same run
and worker restores it, so a restart continues warm. ``background.enabled = false``: no
estimate; bundles that take a background get zeros. A warm level outside the levels the
model in use was trained on (its manifest's ``training_range``) is warned about once per
model (log, ``/status``, the live page).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.background import BackgroundConfig, BackgroundSnapshot, RunBackground
from hitstream.errors import HitstreamError
from hitstream.geometry import DetectorGeometry
from streamer.metrics import Metrics

log = logging.getLogger(__name__)

STATE_SUFFIX = "_background.h5"


def state_path(out_dir: Path, run: str, worker: str) -> Path:
    """Where the estimator of ``run`` on ``worker`` is saved (beside the run's files)."""
    return Path(out_dir) / f"{run}_{worker}{STATE_SUFFIX}"


@dataclass(frozen=True)
class InUse:
    """A published background as the inference threads use it."""

    snapshot: BackgroundSnapshot  # in photons; recorded with every batch classified with it
    feed_map: np.ndarray  # (H, W) the map in the feed's units (× photon_unit), read-only
    published: float  # time.monotonic() of its publication


class StreamBackground:
    """The run background of one pipeline: updated by the receiver thread only; ``current``
    is read by any thread (replaced, never changed)."""

    def __init__(
        self,
        config: BackgroundConfig,
        *,
        shape: tuple[int, int],
        geometry: DetectorGeometry | None,
        photon_unit: float,
        path: Path,
        run: str,
        metrics: Metrics,
        warnings: list[str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.path = Path(path)
        self.run = run
        self.photon_unit = float(photon_unit)
        self._metrics = metrics
        self._warnings = warnings if warnings is not None else []
        self._clock = clock
        self._model: tuple[str, tuple[float, float] | None] | None = None
        self._range_warned = False
        self.current: InUse | None = None
        self.restored = False
        self.estimator = RunBackground(shape, config, geometry=geometry) if config.enabled else None
        self._saved_at = clock()
        self._dirty = False
        self._update_failed = False
        self.saves = 0
        self.last_save_s = 0.0  # seconds the last save took
        if self.estimator is not None:
            self._restore(self.estimator)

    @property
    def enabled(self) -> bool:
        return self.estimator is not None

    def set_model(self, label: str, level_range: tuple[float, float] | None) -> None:
        """The model now in use and the background levels it was trained on (None: it
        takes no background, or its manifest gives no range)."""
        self._model = (label, level_range)
        self._range_warned = False
        cur = self.current
        if cur is not None:
            self._check_range(cur.snapshot)

    def _check_range(self, snap: BackgroundSnapshot) -> None:
        model = self._model
        if model is None or model[1] is None or not snap.warm or self._range_warned:
            return
        lo, hi = model[1]
        if lo <= snap.level <= hi:
            return
        self._range_warned = True
        msg = (
            f"run background {snap.level:.3g} photons per pixel is outside the levels model "
            f"{model[0]} was trained on ({lo:g} to {hi:g}): its decisions may be off"
        )
        log.warning("%s", msg)
        if msg not in self._warnings:
            self._warnings.append(msg)

    # -- receiver thread -----------------------------------------------------------------

    def observe(self, frames: np.ndarray) -> None:
        """Update the estimate with a decoded batch (feed units) before it is staged; publish
        a new snapshot when the estimator made one; save when ``save_every_s`` has passed."""
        est = self.estimator
        if est is None:
            return
        try:
            snap = est.update(frames, 1.0 / self.photon_unit)
        except Exception:  # an estimator bug must not end the run: the last snapshot stays
            if not self._update_failed:
                self._update_failed = True
                log.exception("background update failed (logged once; the last estimate stays)")
            return
        self._dirty = True
        cur = self.current
        if cur is None or snap is not cur.snapshot:
            self._publish(snap)
        every = self.config.save_every_s
        if every > 0 and self._clock() - self._saved_at >= every:
            self.save()

    def _publish(self, snap: BackgroundSnapshot) -> None:
        if self.photon_unit == 1.0:
            feed = snap.map
        else:
            feed = snap.map * np.float32(self.photon_unit)
            feed.setflags(write=False)
        now = self._clock()
        self.current = InUse(snap, feed, now)  # one assignment: readers see old or new
        self._metrics.observe_background(snap, now)
        self._check_range(snap)

    # -- persistence ---------------------------------------------------------------------

    def _restore(self, est: RunBackground) -> None:
        if not self.path.is_file():
            return
        try:
            est.load(self.path)
        except HitstreamError as exc:
            log.warning("background state %s not restored (%s): starting afresh", self.path, exc)
            return
        snap = est.snapshot
        self.restored = True
        log.info(
            "background of run %s restored: level %.4g photons per pixel, warm %s, "
            "%.0f frames, version %d (%s)",
            self.run,
            snap.level,
            snap.warm,
            snap.frames,
            snap.version,
            self.path,
        )
        self._publish(snap)

    def save(self) -> bool:
        """Save the estimator's state (atomically) if it changed; False when it was not
        saved. Never raises: a failed save is logged and the run goes on."""
        est = self.estimator
        if est is None or not self._dirty:
            return False
        self._saved_at = self._clock()
        need = 2 * _state_bytes(est)
        try:
            free = shutil.disk_usage(self.path.parent).free
        except OSError as exc:
            log.warning("background state not saved to %s: %s", self.path, exc)
            return False
        if free < need:  # HDF5 may crash closing a file whose write failed: do not try
            log.warning(
                "background state not saved to %s: %d bytes free, it needs about %d",
                self.path,
                free,
                need,
            )
            return False
        t = time.perf_counter()
        try:
            est.save(self.path)
        except (OSError, RuntimeError, ValueError) as exc:
            log.warning("background state not saved to %s: %s", self.path, exc)
            return False
        self.last_save_s = time.perf_counter() - t
        self.saves += 1
        self._dirty = False
        log.debug("background state saved to %s in %.1f ms", self.path, 1e3 * self.last_save_s)
        return True

    def close(self) -> None:
        """End of the run: save the final state."""
        self.save()

    # -- reporting -----------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """``{enabled, level, warm, frames, version}`` of the background in use (None: none)."""
        cur = self.current
        snap = cur.snapshot if cur is not None else None
        return {
            "enabled": self.enabled,
            "level": snap.level if snap is not None else None,
            "warm": snap.warm if snap is not None else None,
            "frames": snap.frames if snap is not None else None,
            "version": snap.version if snap is not None else None,
        }


def _state_bytes(est: RunBackground) -> int:
    """About the size of a saved state: sum and weight (float64), estimate, mask, totals."""
    h, w = est.shape
    return h * w * (8 + 8 + 4 + 1) + 8 * est.config.history + 4096
