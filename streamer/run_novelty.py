"""Know when the model does not know, live: the novelty monitor of one pipeline.

The writer thread hands every classified batch to :meth:`RunNovelty.observe` (its
probabilities and the background level it was classified with); at most every
``every_frames`` frames the window of recent frames is judged (:mod:`hitstream.novelty`):
``hitstream_novelty_score`` and ``hitstream_novel{reason}`` are set, and while the frames
look unlike the model's training data a plain warning that says what to do sits in the
pipeline's warnings (the run summary, ``/status`` and the live page show them); it is
logged at WARNING when it first appears or its reasons change. A model swap starts a new
window with the new bundle's reference.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from hitstream.bundle import Bundle
from hitstream.novelty import NoveltyMonitor, NoveltyReport
from streamer.metrics import Metrics
from streamer.types import ResultBatch

log = logging.getLogger(__name__)

REASONS = ("background", "uncertain", "class_mix")


def _reason_key(text: str) -> str:
    if text.startswith("background"):
        return "background"
    return "uncertain" if "uncertain" in text else "class_mix"


class RunNovelty:
    """Observed by one thread (the writer); :meth:`status` may be read from any thread."""

    def __init__(
        self,
        metrics: Metrics,
        warnings: list[str],
        window: int = 5000,
        every_frames: int = 256,
    ) -> None:
        self._metrics = metrics
        self._warnings = warnings
        self._window = window
        self._every = every_frames
        self._lock = threading.Lock()
        self._monitor: NoveltyMonitor | None = None
        self._since = 0
        self._report = NoveltyReport(0, 0.0)
        self._warning: str | None = None
        metrics.novelty_score.set(0.0)
        for r in REASONS:
            metrics.novel.labels(reason=r).set(0)

    def set_model(self, bundle: Bundle) -> None:
        """A new window judged against this bundle's training reference."""
        with self._lock:
            self._monitor = NoveltyMonitor(
                bundle.manifest.get("novelty"), bundle.classes, self._window
            )
            self._since = 0

    def observe(self, result: ResultBatch) -> None:
        monitor = self._monitor
        if monitor is None:
            return
        bg = result.background
        monitor.observe(result.probabilities, bg.level if bg is not None and bg.warm else None)
        self._since += len(result)
        if self._since >= self._every:
            self._since = 0
            self._judge(monitor.report())

    def _judge(self, report: NoveltyReport) -> None:
        m = self._metrics
        m.novelty_score.set(report.score)
        on = {_reason_key(r) for r in report.reasons}
        for r in REASONS:
            m.novel.labels(reason=r).set(1 if r in on else 0)
        warning = report.warning()
        with self._lock:
            self._report = report
            if warning == self._warning:
                return
            if self._warning in self._warnings:
                self._warnings.remove(self._warning)
            self._warning = warning
            if warning is not None:
                self._warnings.append(warning)
        if warning is not None:
            log.warning("%s", warning)
        else:
            log.info("recent frames look like the model's training data again")

    def status(self) -> dict[str, Any]:
        with self._lock:
            return self._report.as_dict()
