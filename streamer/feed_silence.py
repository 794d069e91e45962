"""Feed liveness: notice when the producer goes quiet, and say so where people look.

A feed is *silent* when no frame arrived for ``feed.silence_s`` seconds, counted from the
last frame or, before the first one, from the moment the streamer started listening. While
it is silent: one WARNING log line (and an INFO line when frames come back), the gauge
``hitstream_feed_silent`` = 1 (the alert rule ``HitstreamFeedSilent``), a banner on the
live page and ``/ready`` answering 503 with the reason. After the feed's end-of-run marker
a quiet feed is a run that ended, not an outage: it is reported as idle and stays ready.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from streamer.metrics import Metrics

log = logging.getLogger(__name__)


class FeedSilence:
    """Tracks the time since the last frame; thread-safe readers, one writer (the receiver)."""

    def __init__(self, metrics: Metrics, endpoint: str, silence_s: float) -> None:
        self.metrics = metrics
        self.endpoint = endpoint
        self.silence_s = float(silence_s)
        self._lock = threading.Lock()
        self._since = time.monotonic()  # last frame, or the start of listening
        self._frames_seen = False
        self._ended = False  # the last thing the feed said was its end-of-run marker
        self._silent = False
        self.episodes = 0  # silences so far
        metrics.feed_silence_seconds.set_function(self.seconds)

    def start(self, now: float | None = None) -> None:
        """The feed is connected and listened to from now on."""
        with self._lock:
            self._since = time.monotonic() if now is None else now

    def seconds(self, now: float | None = None) -> float:
        """Seconds since the last frame (or since listening began)."""
        now = time.monotonic() if now is None else now
        with self._lock:
            return max(0.0, now - self._since)

    @property
    def silent(self) -> bool:
        with self._lock:
            return self._silent

    def frames(self, now: float | None = None) -> None:
        """Frames arrived."""
        now = time.monotonic() if now is None else now
        with self._lock:
            was, quiet = self._silent, now - self._since
            self._since, self._silent, self._ended = now, False, False
            self._frames_seen = True
        if was:
            self.metrics.feed_silent.set(0)
            log.info("frames from %s again after %.1f s of silence", self.endpoint, quiet)

    def end_of_run(self, now: float | None = None) -> None:
        """The feed sent its end-of-run marker: silence from now on is a pause between runs."""
        now = time.monotonic() if now is None else now
        with self._lock:
            self._ended, self._since, was = True, now, self._silent
            self._silent = False
        if was:
            self.metrics.feed_silent.set(0)

    def check(self, now: float | None = None) -> bool:
        """Update the state (call often, e.g. at every poll); True while silent."""
        now = time.monotonic() if now is None else now
        with self._lock:
            quiet = now - self._since
            start = not self._silent and not self._ended and quiet >= self.silence_s
            if start:
                self._silent = True
                self.episodes += 1
            silent, seen = self._silent, self._frames_seen
        if start:
            self.metrics.feed_silent.set(1)
            what = "since the last frame" if seen else "since the streamer started listening"
            log.warning(
                "no frames from %s for %.0f s %s (feed.silence_s = %g): is the producer "
                "running and sending to this endpoint?",
                self.endpoint,
                quiet,
                what,
                self.silence_s,
            )
        return silent

    def reason(self) -> str | None:
        """Why the feed makes the service not ready, or None."""
        if not self.silent:
            return None
        return (
            f"no frames from {self.endpoint} for {self.seconds():.0f} s "
            f"(feed.silence_s = {self.silence_s:g}): check that the producer runs"
        )

    def status(self) -> dict[str, Any]:
        with self._lock:
            silent, ended, episodes = self._silent, self._ended, self.episodes
        return {
            "silent": silent,
            "idle_after_end_of_run": ended,
            "seconds_since_frame": round(self.seconds(), 1),
            "silence_s": self.silence_s,
            "silences": episodes,
        }
