"""State behind the live web page: rates over time and a few recent frames per class.

The pipeline's writer thread calls :meth:`LiveView.observe` once per written batch; it does
O(classes) bookkeeping (one ``bincount``), copies at most one frame per class (and at most
``max_frames_per_s`` frames per second in all) into a bounded store, and never renders.
The HTTP thread asks for :meth:`LiveView.snapshot` (JSON) and :meth:`LiveView.frame_png`
(rendered on the first request, then cached with the frame). Totals, drops by reason and the
model/provider in use come from :class:`streamer.metrics.Metrics`, not counted twice.

The page is three package data files, ``streamer/pages/live.html``, ``live.css`` and
``live.js`` (read once by :meth:`LiveView.routes`, served as they are); frames are drawn by
:mod:`hitstream.render`, as on the labelling page (magma, row 0 on top, invalid pixels and
the hot pixels the model caps in their own colours).

The run's background shown is the snapshot the last written batch was classified with
(:attr:`ResultBatch.background`): its level, warm state and version in the JSON, its map at
``live/background.png`` (rendered once per version, on request; log scale normalised to its
brightest pixels, as the map holds fractions of a photon per pixel).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs

import numpy as np

from hitstream.background import BackgroundSnapshot
from hitstream.bundle import Bundle
from hitstream.frame_kernel import BIN, HOT_ABS, HOT_REL
from hitstream.geometry import DetectorGeometry
from hitstream.pages import load_page
from hitstream.render import frame_masks, render_frame, render_png
from streamer.metrics import Metrics
from streamer.types import ResultBatch

log = logging.getLogger(__name__)

RATE_WINDOW_S = 5  # frames/s over the last 5 to 6 s (whole bins and the current one)
HIT_WINDOW_S = 10  # hit rate over this many seconds (as the metrics gauge)
PAGE_FILES = ("live.html", "live.css", "live.js")  # streamer/pages/, served under /live/
BACKGROUND_TOP = 1000.0  # the background picture: its 99.9th percentile drawn as this value


@dataclass
class Sample:
    """One frame copied for the page, with what the model said about it."""

    id: int
    class_name: str
    frame: np.ndarray  # (H, W) float32, a private copy
    train_id: int
    pulse_id: int
    probability: float
    kept: bool
    model: str
    taken: float  # monotonic time of the copy
    png: bytes | None = None  # rendered on the first request

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "id": self.id,
            "train_id": self.train_id,
            "pulse_id": self.pulse_id,
            "probability": round(self.probability, 4),
            "kept": self.kept,
            "model": self.model,
            "age_s": round(now - self.taken, 1),
        }


@dataclass(frozen=True)
class Display:
    """How a model's frames are drawn (:mod:`hitstream.render`): the detector geometry (the
    mask, for frames of its shape) and whether to mark the bins its preprocessing caps as hot."""

    geometry: DetectorGeometry | None = None  # None: only NaN/Inf pixels are masked
    hot: bool = False
    coarsen: int = 1  # the model sums 2x2 bins this many times more before the cap

    def render(self, frame: np.ndarray) -> bytes:
        """The frame as PNG (row 0 on top; colours as :mod:`hitstream.render` says)."""
        return render_frame(frame, self.geometry, hot=self.hot, coarsen=self.coarsen)

    def render_background(self, background: np.ndarray) -> bytes:
        """A background map as PNG: masked like the frames, no hot pixels, scaled so that its
        brightest pixels (99.9th percentile) span the colour map (log scale)."""
        m = np.asarray(background, np.float32)
        valid, _ = frame_masks(m, self.geometry, hot=False)
        shown = m[np.isfinite(m) & (valid if valid is not None else True)]
        top = float(np.percentile(shown, 99.9)) if shown.size else 0.0
        scaled = m * np.float32(BACKGROUND_TOP / top) if top > 0 else m
        return render_png(scaled, valid)


def display_of(bundle: Bundle) -> Display:
    """Mask from the bundle's geometry; hot pixels marked when its ``preprocessing`` caps them
    (the frame kernel's rule: :func:`hitstream.render.hot_pixels`)."""
    pre = bundle.manifest.get("preprocessing")
    if not isinstance(pre, dict) or not isinstance(pre.get("hot_abs"), int | float):
        return Display(geometry=bundle.geometry)
    rule = (float(pre["hot_abs"]), float(pre.get("hot_rel", HOT_REL)), int(pre.get("bin", BIN)))
    if rule != (HOT_ABS, HOT_REL, BIN):
        log.warning(
            "model %s caps hot pixels with hot_abs, hot_rel, bin = %s; the live page marks "
            "them with the frame kernel's %s",
            bundle.label,
            rule,
            (HOT_ABS, HOT_REL, BIN),
        )
    coarsen = pre.get("coarsen", 1)
    return Display(
        geometry=bundle.geometry,
        hot=True,
        coarsen=max(1, int(coarsen)) if isinstance(coarsen, int | float) else 1,
    )


class LiveView:
    """Bounded live state: 1 s bins of class counts and the latest frames of each class."""

    def __init__(
        self,
        metrics: Metrics,
        *,
        frames_per_class: int = 4,
        history_s: int = 600,
        max_frames_per_s: float = 4.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.metrics = metrics
        self.frames_per_class = frames_per_class
        self.history_s = history_s
        self.max_frames_per_s = max_frames_per_s
        self._clock = clock
        self._lock = threading.Lock()
        self._display = Display()
        self._hit_names: tuple[str, ...] = ()
        self._next_id = 0
        self._started = clock()
        self.warnings: list[str] = []  # shown above the page (the pipeline appends to it)
        #: what is wrong right now (feed silent, output paused): a banner while it lasts
        self.alerts: Callable[[], list[str]] = list
        self._background: BackgroundSnapshot | None = None  # of the last written batch
        self._background_png: tuple[int, bytes] | None = None  # (version, PNG)
        self._reset(())

    @property
    def frames_taken(self) -> int:
        """Frames copied for the page since the start."""
        return self._next_id

    @property
    def frames_held(self) -> int:
        """Frames in memory now (shown plus recently replaced)."""
        with self._lock:
            return len(self._by_id)

    # -- writer thread -------------------------------------------------------------------

    def set_model(self, bundle: Bundle) -> None:
        """Adopt a (new) model's hit classes and the way its frames are drawn."""
        display = display_of(bundle)
        with self._lock:
            self._hit_names = bundle.hit_classes
            self._display = display
            self._hit = np.array([c in self._hit_names for c in self.classes], bool)

    def observe(self, result: ResultBatch, now: float | None = None) -> None:
        """Count a written batch and copy at most one frame per class (rate-limited)."""
        now = self._clock() if now is None else now
        label = np.asarray(result.label)
        with self._lock:
            if result.background is not None:
                self._background = result.background  # a reference: snapshots never change
            if tuple(result.classes) != self.classes:
                self._reset(tuple(result.classes))
            n = len(self.classes)
            counts = np.bincount(label[label >= 0], minlength=n)[:n]
            self._add_counts(now, counts)
            self._take_frames(now, result, label, counts)

    def _reset(self, classes: tuple[str, ...]) -> None:
        """New class list: fresh bins and frame store (called with the lock held)."""
        self.classes = classes
        self._hit = np.array([c in self._hit_names for c in classes], bool)
        self._counts = np.zeros((self.history_s, len(classes)), np.int64)
        self._bin_sec = np.full(self.history_s, -1, np.int64)  # which second each row holds
        self._first_sec: int | None = None
        self._first_time = 0.0
        self._samples: dict[str, deque[Sample]] = {
            c: deque(maxlen=self.frames_per_class) for c in classes
        }
        self._by_id: dict[int, Sample] = {}  # shown and recently replaced frames
        # a page may ask for a frame just after it was replaced: keep as many again
        self._retired: deque[Sample] = deque()
        self._last_taken = dict.fromkeys(classes, -np.inf)
        self._tokens = max(self.max_frames_per_s, 1.0)  # a full second's worth to start
        self._tokens_at: float | None = None

    def _add_counts(self, now: float, counts: np.ndarray) -> None:
        sec = int(now)
        row = sec % self.history_s
        if self._bin_sec[row] != sec:
            self._bin_sec[row] = sec
            self._counts[row] = 0
        self._counts[row] += counts
        if self._first_sec is None:
            self._first_sec, self._first_time = sec, now

    def _take_frames(
        self, now: float, result: ResultBatch, label: np.ndarray, counts: np.ndarray
    ) -> None:
        """Token bucket (``max_frames_per_s``, burst 1 s); the longest-unseen class first."""
        rate = self.max_frames_per_s
        if self._tokens_at is not None:
            self._tokens = min(max(rate, 1.0), self._tokens + (now - self._tokens_at) * rate)
        self._tokens_at = now
        present = sorted(np.flatnonzero(counts), key=lambda i: self._last_taken[self.classes[i]])
        batch = result.batch
        for i in present:
            if self._tokens < 1.0:
                break
            self._tokens -= 1.0
            rows = np.flatnonzero(label == i)
            j = int(rows[np.argmax(result.probabilities[rows, i])])  # its most confident
            name = self.classes[i]
            self._next_id += 1
            sample = Sample(
                id=self._next_id,
                class_name=name,
                frame=np.array(batch.frames[j], dtype=np.float32, copy=True),
                train_id=int(batch.train_id[j]),
                pulse_id=int(batch.pulse_id[j]),
                probability=float(result.probabilities[j, i]),
                kept=bool(result.keep[j]),
                model=result.model_version,
                taken=now,
            )
            store = self._samples[name]
            if len(store) == store.maxlen:
                self._retired.append(store[0])
                if len(self._retired) > self.frames_per_class * len(self.classes):
                    self._by_id.pop(self._retired.popleft().id, None)
            store.append(sample)
            self._by_id[sample.id] = sample
            self._last_taken[name] = now

    # -- HTTP thread ---------------------------------------------------------------------

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Everything the page shows, as JSON-ready data."""
        now = self._clock() if now is None else now
        sec = int(now)
        with self._lock:
            classes = self.classes
            hit = self._hit.copy()
            first, first_time = self._first_sec, self._first_time
            secs = np.arange(sec - self.history_s + 1, sec + 1)
            rows = secs % self.history_s
            fresh = self._bin_sec[rows] == secs
            counts = np.where(fresh[:, None], self._counts[rows], 0)
            frames = {c: [s.describe(now) for s in reversed(self._samples[c])] for c in classes}
            bg = self._background
        if first is not None:
            start = max(0, first - int(secs[0]))
            counts, secs = counts[start:], secs[start:]
        else:
            counts, secs = counts[:0], secs[:0]
        total = counts.sum(axis=1)
        hits = counts[:, hit].sum(axis=1) if len(hit) else np.zeros_like(total)
        m = self.metrics
        return {
            "classes": list(classes),
            "hit_classes": [c for c, h in zip(classes, hit, strict=True) if h],
            "model": _info(m, "hitstream_model_info"),
            "engine": _info(m, "hitstream_engine_info"),
            "frames_per_s": _rate(total, secs, now, first_time),
            "hit_rate": _fraction(hits[-HIT_WINDOW_S:], total[-HIT_WINDOW_S:]),
            "class_fraction": {
                c: _fraction(counts[-HIT_WINDOW_S:, k], total[-HIT_WINDOW_S:])
                for k, c in enumerate(classes)
            },
            "totals": {
                "received": m.value("hitstream_frames_received_total"),
                "classified": m.value("hitstream_frames_classified_total"),
                "kept": m.value("hitstream_frames_kept_total"),
            },
            "dropped": m.dropped_by_reason(),
            "rejected": m.rejected_by_reason(),
            "balance": m.balance(),
            "alerts": self.alerts(),
            "up": m.value("hitstream_up") > 0,
            "series": {
                "t": (secs - sec).tolist(),  # seconds relative to now (0: the current second)
                "total": total.tolist(),
                "hits": hits.tolist(),
                "counts": {c: counts[:, k].tolist() for k, c in enumerate(classes)},
            },
            "history_s": self.history_s,
            "frames": frames,
            "uptime_s": round(now - self._started, 1),
            "warnings": list(self.warnings),
            "background": (
                None
                if bg is None
                else {
                    "level": bg.level,
                    "warm": bg.warm,
                    "frames": round(bg.frames, 1),
                    "version": bg.version,
                }
            ),
        }

    def frame_png(self, frame_id: int) -> bytes | None:
        """The PNG of a stored frame (rendered once), or None when it is gone."""
        with self._lock:
            sample = self._by_id.get(frame_id)
            display = self._display
        if sample is None:
            return None
        if sample.png is None:
            sample.png = display.render(sample.frame)
        return sample.png

    def background_png(self) -> bytes | None:
        """The PNG of the background in use (rendered once per version), None before one."""
        with self._lock:
            bg = self._background
            display = self._display
            cached = self._background_png
        if bg is None:
            return None
        if cached is not None and cached[0] == bg.version:
            return cached[1]
        png = display.render_background(bg.map)
        self._background_png = (bg.version, png)
        return png

    # -- routes --------------------------------------------------------------------------

    def routes(self) -> dict[str, Callable[[str], tuple[int, str, bytes]]]:
        """``path -> handler(query)`` for :meth:`streamer.http_server.StatusServer.route`:
        the page (``/``, ``/live``; its files ``streamer/pages/live.*``), its data and frames."""
        files = load_page("streamer", *PAGE_FILES)

        def page(_query: str) -> tuple[int, str, bytes]:
            return files["live.html"].answer()

        def data(_query: str) -> tuple[int, str, bytes]:
            return 200, "application/json", json.dumps(self.snapshot()).encode()

        def frame(query: str) -> tuple[int, str, bytes]:
            try:
                frame_id = int(parse_qs(query).get("id", [""])[0])
            except ValueError:
                return 400, "text/plain", b"frame.png?id=<integer>\n"
            png = self.frame_png(frame_id)
            if png is None:
                return 404, "text/plain", b"frame no longer kept\n"
            return 200, "image/png", png

        def background(_query: str) -> tuple[int, str, bytes]:
            png = self.background_png()  # ?v=<version> only defeats caches
            if png is None:
                return 404, "text/plain", b"no background estimate yet\n"
            return 200, "image/png", png

        def no_icon(_query: str) -> tuple[int, str, bytes]:
            return 204, "image/x-icon", b""

        return {
            "/": page,
            "/live": page,
            "/live/live.css": lambda _query: files["live.css"].answer(),
            "/live/live.js": lambda _query: files["live.js"].answer(),
            "/live/data.json": data,
            "/live/frame.png": frame,
            "/live/background.png": background,
            "/favicon.ico": no_icon,
        }


def _info(metrics: Metrics, sample: str) -> dict[str, str]:
    """Labels of an Info metric (model, engine) as exported."""
    for metric in metrics.registry.collect():
        for s in metric.samples:
            if s.name == sample:
                return dict(s.labels)
    return {}


def _rate(total: np.ndarray, secs: np.ndarray, now: float, first_time: float) -> float:
    """Frames/s since the start of the second RATE_WINDOW_S ago (or since the first frame)."""
    if not len(total):
        return 0.0
    start = int(now) - RATE_WINDOW_S
    frames = total[secs >= start].sum()
    return float(frames / max(now - max(start, first_time), 0.5))


def _fraction(part: np.ndarray, whole: np.ndarray) -> float:
    n = int(whole.sum())
    return float(part.sum() / n) if n else 0.0
