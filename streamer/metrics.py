"""Prometheus metrics of one streamer (``hitstream_`` prefix, own registry, no globals)."""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from hitstream.background import BackgroundSnapshot

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip


class Metrics:
    """Every counter the streamer exports, plus a short history for the summary/live view."""

    def __init__(self, classes: tuple[str, ...] = (), hit_classes: tuple[str, ...] = ()) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.messages_received = Counter(
            "hitstream_messages_received", "Messages received from the feed", registry=r
        )
        self.frames_received = Counter(
            "hitstream_frames_received", "Frames decoded from the feed", registry=r
        )
        self.frames_classified = Counter(
            "hitstream_frames_classified", "Frames labelled by the model", registry=r
        )
        # The balance, in frames: received = classified + rejected + dropped + in flight.
        self.frames_rejected = Counter(
            "hitstream_frames_rejected",
            "Received frames refused (e.g. non-finite pixels, a failed inference), by reason",
            ["reason"],
            registry=r,
        )
        self.frames_dropped = Counter(
            "hitstream_frames_dropped",
            "Received frames not classified: no room in a queue in live mode, by reason",
            ["reason"],
            registry=r,
        )
        self.messages_rejected = Counter(
            "hitstream_messages_rejected",
            "Messages refused as a whole (malformed, too large, no frames), by reason; "
            "their frames were never received",
            ["reason"],
            registry=r,
        )
        self.frames_missed = Counter(
            "hitstream_frames_missed",
            "Frames the feed never delivered, estimated from gaps in train ids",
            ["reason"],
            registry=r,
        )
        self.modules_missing = Counter(
            "hitstream_modules_missing",
            "Detector modules absent from a train (their pixels are masked; frames classified)",
            registry=r,
        )
        self.labels_unrecorded = Counter(
            "hitstream_labels_unrecorded",
            "Classified frames whose labels did not reach a file: the disk-full backlog "
            "overflowed, or a file was abandoned after a write error, by reason",
            ["reason"],
            registry=r,
        )
        self.kept_not_written = Counter(
            "hitstream_kept_not_written",
            "Frames the model kept whose pixels were not written (output disk full)",
            registry=r,
        )
        self.writer_paused = Gauge(
            "hitstream_writer_paused",
            "1 while the output disk is full: classification goes on, frames are not kept",
            registry=r,
        )
        self.labels_backlog = Gauge(
            "hitstream_labels_backlog",
            "Label rows held in memory while the output disk is full",
            registry=r,
        )
        self.feed_silent = Gauge(
            "hitstream_feed_silent",
            "1 while no frame arrived for feed.silence_s seconds (producer gone or stalled)",
            registry=r,
        )
        self.feed_silence_seconds = Gauge(
            "hitstream_feed_silence_seconds",
            "Seconds since the last frame arrived (or since the feed was connected)",
            registry=r,
        )
        self.feed_refused = Gauge(
            "hitstream_feed_refused",
            "1 while every message of the feed is refused (see /status for the fix)",
            registry=r,
        )
        self.ignored_source_messages = Counter(
            "hitstream_ignored_source_messages",
            "Messages with frames under the feed key from a source that is not read",
            ["source"],
            registry=r,
        )
        self.decisions_sent = Counter(
            "hitstream_decisions_sent", "Per-train decision messages published", registry=r
        )
        self.decisions_dropped = Counter(
            "hitstream_decisions_dropped",
            "Per-train decision messages dropped: no reader, or a reader that fell behind",
            registry=r,
        )
        self.frames_kept = Counter(
            "hitstream_frames_kept", "Frames written to the kept data", registry=r
        )
        self.class_frames = Counter(
            "hitstream_class_frames", "Frames per predicted class", ["class_name"], registry=r
        )
        self.hit_rate = Gauge(
            "hitstream_hit_rate", "Fraction of hits over the last 10 s", registry=r
        )
        self.class_fraction = Gauge(
            "hitstream_class_fraction",
            "Fraction of frames per class over the last 10 s",
            ["class_name"],
            registry=r,
        )
        self.batch_latency = Histogram(
            "hitstream_batch_inference_seconds",
            "Model time per batch",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.frame_latency = Histogram(
            "hitstream_frame_latency_seconds",
            "Time from receiving a frame to its label",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "hitstream_batch_frames",
            "Frames per inference batch",
            buckets=(1, 8, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.queue_depth = Gauge(
            "hitstream_queue_depth", "Items waiting per pipeline queue", ["queue"], registry=r
        )
        self.bytes_written = Gauge(
            "hitstream_bytes_written", "Bytes written to output files", registry=r
        )
        self.files_rotated = Counter(
            "hitstream_files_rotated", "Output files finished and renamed", registry=r
        )
        self.free_disk_bytes = Gauge(
            "hitstream_output_free_bytes", "Free bytes on the output filesystem", registry=r
        )
        self.model_info = Info("hitstream_model", "Model bundle in use", registry=r)
        self.engine_info = Info("hitstream_engine", "Inference provider in use", registry=r)
        self.model_swaps = Counter(
            "hitstream_model_swaps", "Model bundles switched in, by result", ["result"], registry=r
        )
        self.up = Gauge("hitstream_up", "1 while the pipeline runs", registry=r)
        self.last_frame_time = Gauge(
            "hitstream_last_frame_timestamp_seconds",
            "Wall-clock time of the last frame received",
            registry=r,
        )
        # the run's background (hitstream.background); NaN while there is no estimate
        self.background_level = Gauge(
            "hitstream_background_level",
            "Run background in use: mean photons per valid pixel of an empty frame",
            registry=r,
        )
        self.background_warm = Gauge(
            "hitstream_background_warm",
            "1 when the run background in use is warm (enough dim frames), else 0",
            registry=r,
        )
        self.background_frames = Gauge(
            "hitstream_background_frames",
            "Effective number of dim frames behind the run background in use",
            registry=r,
        )
        self.background_age = Gauge(
            "hitstream_background_age_seconds",
            "Seconds since the run background in use was published",
            registry=r,
        )
        # how far the recent frames are from the model's training data (hitstream.novelty)
        self.novelty_score = Gauge(
            "hitstream_novelty_score",
            "0: recent frames like the model's training data ... 1: far from it",
            registry=r,
        )
        self.novel = Gauge(
            "hitstream_novel",
            "1 while the recent frames look unlike the model's training data (label a few "
            "hundred frames and fine-tune), else 0",
            ["reason"],
            registry=r,
        )
        self._background_published: float | None = None
        self.background_age.set_function(self._background_age_s)
        self.observe_background(None)
        self._lock = threading.Lock()
        self._latencies: deque[float] = deque(maxlen=200_000)  # recent, for exact percentiles
        self._window: deque[tuple[float, np.ndarray]] = deque()
        self.window_s = 10.0
        self.set_classes(classes, hit_classes)

    def set_classes(self, classes: tuple[str, ...], hit_classes: tuple[str, ...]) -> None:
        """Adopt the class list of a (new) model."""
        with self._lock:
            self.classes = tuple(classes)
            self._hit = np.array([c in hit_classes for c in classes], dtype=bool)
            self._window.clear()
            self.totals = dict.fromkeys(classes, 0)
        for c in classes:
            self.class_frames.labels(class_name=c)

    def observe_labels(self, label: np.ndarray, now: float | None = None) -> None:
        """Count a batch's labels (indices into ``classes``; -1 = unlabelled)."""
        now = time.monotonic() if now is None else now
        n = len(self.classes)
        counts = np.bincount(label[label >= 0], minlength=n)[:n]
        with self._lock:
            for c, k in zip(self.classes, counts, strict=True):
                if k:
                    self.totals[c] += int(k)
                    self.class_frames.labels(class_name=c).inc(int(k))
            self._window.append((now, counts))
            while self._window and self._window[0][0] < now - self.window_s:
                self._window.popleft()
            recent = np.sum([c for _, c in self._window], axis=0)
        total = recent.sum()
        if total:
            self.hit_rate.set(float(recent[self._hit].sum() / total))
            for c, k in zip(self.classes, recent, strict=True):
                self.class_fraction.labels(class_name=c).set(float(k / total))

    def observe_latencies(self, seconds: np.ndarray) -> None:
        """Receive→label latency of every frame of a batch (histogram + recent samples)."""
        for v in seconds[:: max(1, len(seconds) // 16)]:
            self.frame_latency.observe(float(v))
        with self._lock:
            self._latencies.extend(seconds.tolist())

    def latency_percentiles(self, q: tuple[float, ...] = (50, 99)) -> dict[str, float]:
        """Exact percentiles (ms) over the recent frames, e.g. ``{"p50_ms": .., "p99_ms": ..}``."""
        with self._lock:
            values = np.fromiter(self._latencies, float)
        if not len(values):
            return {}
        return {f"p{q_:g}_ms": float(np.percentile(values, q_) * 1e3) for q_ in q}

    def observe_background(
        self, snapshot: BackgroundSnapshot | None, published: float | None = None
    ) -> None:
        """Export the background now in use (None: no estimate); ``published``: when it was
        published (``time.monotonic()``), for its age."""
        nan = float("nan")
        self.background_level.set(snapshot.level if snapshot is not None else nan)
        self.background_warm.set(float(snapshot.warm) if snapshot is not None else nan)
        self.background_frames.set(snapshot.frames if snapshot is not None else nan)
        self._background_published = published if snapshot is not None else None

    def _background_age_s(self) -> float:
        at = self._background_published
        return time.monotonic() - at if at is not None else float("nan")

    def rejected(self, reason: str, frames: int = 1) -> None:
        self.frames_rejected.labels(reason=reason).inc(frames)

    def dropped(self, reason: str, frames: int) -> None:
        self.frames_dropped.labels(reason=reason).inc(frames)

    def value(self, name: str, **labels: str) -> float:
        """Current value of a sample (for summaries and tests)."""
        v = self.registry.get_sample_value(name, labels or None)
        return float(v) if v is not None else 0.0

    def rejected_by_reason(self) -> dict[str, float]:
        return self._by_label("hitstream_frames_rejected_total", "reason")

    def dropped_by_reason(self) -> dict[str, float]:
        return self._by_label("hitstream_frames_dropped_total", "reason")

    def messages_rejected_by_reason(self) -> dict[str, float]:
        return self._by_label("hitstream_messages_rejected_total", "reason")

    def missed_by_reason(self) -> dict[str, float]:
        return self._by_label("hitstream_frames_missed_total", "reason")

    def unrecorded_by_reason(self) -> dict[str, float]:
        return self._by_label("hitstream_labels_unrecorded_total", "reason")

    def balance(self) -> dict[str, int]:
        """The frame balance: ``received = classified + rejected + dropped + in_flight``."""
        received = int(self.value("hitstream_frames_received_total"))
        classified = int(self.value("hitstream_frames_classified_total"))
        rejected = int(sum(self.rejected_by_reason().values()))
        dropped = int(sum(self.dropped_by_reason().values()))
        return {
            "received": received,
            "classified": classified,
            "rejected": rejected,
            "dropped": dropped,
            "in_flight": received - classified - rejected - dropped,
        }

    def _by_label(self, sample: str, label: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for metric in self.registry.collect():
            for s in metric.samples:
                if s.name == sample:
                    out[s.labels[label]] = s.value
        return out
