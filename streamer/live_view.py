"""State behind the live web page: rates over time and a few recent frames per class.

The pipeline's writer thread calls :meth:`LiveView.observe` once per written batch; it does
O(classes) bookkeeping (one ``bincount``), copies at most one frame per class (and at most
``max_frames_per_s`` frames per second in all) into a bounded store, and never renders.
The HTTP thread asks for :meth:`LiveView.snapshot` (JSON) and :meth:`LiveView.frame_png`
(rendered on the first request, then cached with the frame). Totals, drops by reason and the
model/provider in use come from :class:`streamer.metrics.Metrics`, not counted twice.
"""

from __future__ import annotations

import io
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

from hitstream.bundle import Bundle
from streamer.metrics import Metrics
from streamer.types import ResultBatch

log = logging.getLogger(__name__)

MASK_RGB = (0.0, 0.8, 0.8)  # invalid pixels (gap, hole, non-finite): cyan, absent from magma
HOT_RGB = (0.3, 1.0, 0.1)  # pixels the model caps as hot: green
RATE_WINDOW_S = 5  # frames/s over the last 5 to 6 s (whole bins and the current one)
HIT_WINDOW_S = 10  # hit rate over this many seconds (as the metrics gauge)


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
    """How frames are drawn: the detector's valid pixels and the model's hot-pixel rule."""

    valid: np.ndarray | None = None  # (H, W) bool; None: every pixel valid
    hot_abs: float | None = None  # None: no hot-pixel marking
    hot_rel: float = 4.0
    binning: int = 1


def display_of(bundle: Bundle) -> Display:
    """Mask from the bundle's geometry; hot-pixel rule from its ``preprocessing``, if any."""
    pre = bundle.manifest.get("preprocessing")
    valid = bundle.geometry.valid_pixels()
    if isinstance(pre, dict) and isinstance(pre.get("hot_abs"), int | float):
        return Display(
            valid=valid,
            hot_abs=float(pre["hot_abs"]),
            hot_rel=float(pre.get("hot_rel", 4.0)),
            binning=max(1, int(pre.get("bin", 1))),
        )
    return Display(valid=valid)


def hot_pixels(
    frame: np.ndarray, valid: np.ndarray, hot_abs: float, hot_rel: float, binning: int
) -> np.ndarray:
    """(H, W) bool: pixels in ``binning``² bins above ``hot_abs + hot_rel`` × the mean of
    their 8 neighbour bins: the bins the model caps (invalid pixels count as 0)."""
    h, w = frame.shape
    k = binning
    hb, wb = h // k, w // k
    with np.errstate(invalid="ignore"):
        x = np.where(valid & np.isfinite(frame), np.clip(frame, 0, None), 0.0)
    b = x[: hb * k, : wb * k].reshape(hb, k, wb, k).sum(axis=(1, 3))
    padded = np.pad(b, 1)
    ones = np.pad(np.ones((hb, wb)), 1)
    box = np.zeros_like(b)
    count = np.zeros_like(b)
    for dy in range(3):
        for dx in range(3):
            box += padded[dy : dy + hb, dx : dx + wb]
            count += ones[dy : dy + hb, dx : dx + wb]
    neighbours = (box - b) / np.maximum(count - 1, 1)
    hot_bins = b > hot_abs + hot_rel * neighbours
    out = np.zeros((h, w), bool)
    out[: hb * k, : wb * k] = np.repeat(np.repeat(hot_bins, k, axis=0), k, axis=1)
    return out


def render_frame(frame: np.ndarray, display: Display = Display()) -> bytes:
    """PNG of a frame: log1p(photons) in magma, invalid pixels cyan, hot pixels green.

    Non-finite pixels count as invalid; the colour scale ignores invalid and hot pixels."""
    import matplotlib
    from matplotlib import image as mpimage

    x = np.asarray(frame, np.float64)
    valid = np.isfinite(x)
    if display.valid is not None and display.valid.shape == x.shape:
        valid &= display.valid
    hot = np.zeros(x.shape, bool)
    if display.hot_abs is not None:
        hot = hot_pixels(x, valid, display.hot_abs, display.hot_rel, display.binning) & valid
    shown = valid & ~hot
    with np.errstate(invalid="ignore"):
        img = np.log1p(np.clip(np.where(shown, x, 0.0), 0, None))
    top = float(np.percentile(img[shown], 99.99)) if shown.any() else 0.0
    top = max(top, float(np.log1p(1.0)))  # at least one photon's worth of range
    rgba = matplotlib.colormaps["magma"](np.clip(img / top, 0.0, 1.0))
    rgba[~valid, :3] = MASK_RGB
    rgba[hot, :3] = HOT_RGB
    buf = io.BytesIO()
    mpimage.imsave(buf, rgba, format="png", origin="lower")
    return buf.getvalue()


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
        }

    def frame_png(self, frame_id: int) -> bytes | None:
        """The PNG of a stored frame (rendered once), or None when it is gone."""
        with self._lock:
            sample = self._by_id.get(frame_id)
            display = self._display
        if sample is None:
            return None
        if sample.png is None:
            sample.png = render_frame(sample.frame, display)
        return sample.png

    # -- routes --------------------------------------------------------------------------

    def routes(self) -> dict[str, Callable[[str], tuple[int, str, bytes]]]:
        """``path -> handler(query)`` for :meth:`streamer.http_server.StatusServer.route`."""
        from streamer.live_page import PAGE

        def page(_query: str) -> tuple[int, str, bytes]:
            return 200, "text/html; charset=utf-8", PAGE.encode()

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

        def no_icon(_query: str) -> tuple[int, str, bytes]:
            return 204, "image/x-icon", b""

        return {
            "/": page,
            "/live": page,
            "/live/data.json": data,
            "/live/frame.png": frame,
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
