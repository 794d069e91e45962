"""Loud refusal: a feed whose messages are all refused is an error, not a quiet run.

:class:`RefusalWatch` counts the messages the decoder refuses for a reason a setting can
fix (source, key, shape, dtype, train id, a message over the size limit). After
``after_messages`` such refusals in a row with no frame accepted in between it declares
the feed *refused*: it logs at ERROR level with the setting that would fix it, exports
``hitstream_feed_refused`` = 1, puts the reason on the live page and ``/status``, makes
``/ready`` answer 503, and the run's summary gets an error (non-zero exit code). A message
whose frames are accepted clears it (the summary keeps a warning).

It also reports sources that carry frames but are not the one read (:func:`ignored_note`),
so a second detector source is never dropped without a word.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

from streamer.metrics import Metrics

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0  # at most one refused/accepted log line this often

AFTER_MESSAGES = 8  # refused messages in a row (none accepted) before the feed is refused
MAX_IGNORED_SOURCES = 32  # distinct ignored sources named (metric label cardinality)

#: What to change, by refusal reason (the decoder's :data:`streamer.decode.REASONS`).
FIXES: dict[str, str] = {
    "source": "set feed.source to the source that carries the frames",
    "key": "set feed.key to the array key of the frames",
    "shape": (
        "set feed.axis_order to the array's axes (e.g. 'pulses,ss,fs', or "
        "'modules,fs,ss,pulses' for AGIPD online data) and make sure the frames have the "
        "model's frame shape (the model's input is shown in /status), or describe the "
        "detector in [detector] (a named detector's modules, or geometry = 'FLAT' with "
        "frame_shape, pixel_m and center_px for assembled frames of another size)"
    ),
    "dtype": "send integer or float frames (bool, complex and strings are refused)",
    "trainid": "the feed must give a train id (metadata timestamp.tid, or data trainId)",
    "connection": (
        "raise feed.max_message_bytes above the size of one train (ZeroMQ drops a "
        "connection whose message part is larger)"
    ),
    "size": "raise feed.max_message_bytes above the size of one train",
    "parts": "the feed must speak the Karabo bridge protocol 2.2 (1.0 is not supported)",
    "header": "the feed must speak the Karabo bridge protocol 2.2 (msgpack headers)",
    "msgpack": "the feed must speak the Karabo bridge protocol 2.2 (msgpack data parts)",
}


@dataclass(frozen=True)
class Refusal:
    """Why the feed is refused: the last reason, its detail, and what to change."""

    reason: str
    detail: str
    fix: str
    messages: int  # refused messages in a row

    @property
    def message(self) -> str:
        return (
            f"every frame of the feed is refused: the last {self.messages} messages "
            f"({self.reason}: {self.detail}). To fix: {self.fix}."
        )

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "message": self.message}


class RefusalWatch:
    """Turns a run of refused messages into a loud, fixable error (thread-safe).

    ``warnings`` is the list shown on the live page and in the summary: the refusal's
    message sits in it while the feed is refused.
    """

    def __init__(
        self,
        metrics: Metrics,
        warnings: list[str],
        *,
        after_messages: int = AFTER_MESSAGES,
        expected: str = "",
    ) -> None:
        self.metrics = metrics
        self.warnings = warnings
        self.after_messages = max(1, int(after_messages))
        self.expected = expected  # what the model takes, appended to shape fixes
        self._lock = threading.Lock()
        self._in_a_row = 0
        self._accepted = 0
        self._logged_at = -LOG_EVERY_S  # monotonic time of the last log line
        self._unlogged = 0
        self._last: tuple[str, str] | None = None
        self._active: Refusal | None = None
        self._ever: Refusal | None = None
        self._ignored: dict[str, int] = {}
        metrics.feed_refused.set(0)

    @property
    def active(self) -> Refusal | None:
        """The refusal in force, None while frames are accepted."""
        return self._active

    def refused(self, reason: str, detail: str, messages: int = 1) -> None:
        """Messages refused for ``reason``; reasons no setting fixes are not counted."""
        if reason not in FIXES:
            return
        with self._lock:
            self._in_a_row += messages
            self._last = (reason, detail)
            if self._in_a_row < self.after_messages:
                return
            fix = FIXES[reason]
            if reason == "shape" and self.expected:
                fix = f"{fix}; the model takes {self.expected}"
            old = self._active
            self._active = self._ever = Refusal(reason, detail, fix, self._in_a_row)
            if old is not None and old.message in self.warnings:
                self.warnings.remove(old.message)
            self.warnings.append(self._active.message)
        self.metrics.feed_refused.set(1)
        if old is None or old.reason != reason:
            self._log(logging.ERROR, self._active.message)

    def accepted(self) -> None:
        """A message gave frames: the feed is fine (again)."""
        if self._in_a_row == 0 and self._active is None:
            self._accepted += 1
            return
        with self._lock:
            self._accepted += 1
            self._in_a_row = 0
            old, self._active = self._active, None
            if old is not None:
                if old.message in self.warnings:
                    self.warnings.remove(old.message)
                note = f"the feed was refused for a while ({old.reason}) and then accepted"
                if note not in self.warnings:
                    self.warnings.append(note)
        if old is not None:
            self.metrics.feed_refused.set(0)
            self._log(
                logging.WARNING, f"frames accepted again after {old.messages} refused messages"
            )

    def _log(self, level: int, text: str) -> None:
        """At most one line per LOG_EVERY_S: a feed that mixes garbage with good messages
        flips between refused and accepted at every message."""
        now = time.monotonic()
        if now - self._logged_at < LOG_EVERY_S:
            self._unlogged += 1
            return
        more = f" ({self._unlogged} similar line(s) left out)" if self._unlogged else ""
        self._logged_at, self._unlogged = now, 0
        log.log(level, "%s%s", text, more)

    def ignored(self, sources: tuple[str, ...], used: str, key: str) -> None:
        """Sources of a message that carry ``key`` but are not the one read (``used``)."""
        new = []
        with self._lock:
            for s in sources:
                if s not in self._ignored and len(self._ignored) >= MAX_IGNORED_SOURCES:
                    continue
                if s not in self._ignored:
                    new.append(s)
                self._ignored[s] = self._ignored.get(s, 0) + 1
        for s in sources:
            if s in self._ignored:
                self.metrics.ignored_source_messages.labels(source=s).inc()
        if new:
            note = ignored_note(new, used, key)
            log.warning("%s", note)
            with self._lock:
                self.warnings.append(note)

    def end_error(self) -> str | None:
        """The run's error at its end: refused, or every message refused and none accepted."""
        if self._active is not None:
            return self._active.message
        if self._accepted == 0 and self._last is not None:
            reason, detail = self._last
            r = Refusal(reason, detail, FIXES[reason], self._in_a_row)
            return r.message
        return None

    def status(self) -> dict[str, Any]:
        """For ``/status`` and the summary."""
        return {
            "refused": self._active.as_dict() if self._active is not None else None,
            "was_refused": self._ever is not None,
            "ignored_sources": dict(self._ignored),
        }


def ignored_note(sources: list[str], used: str, key: str) -> str:
    """The warning for sources that carry frames under ``key`` but are not read."""
    names = ", ".join(repr(s) for s in sources[:8]) + (" ..." if len(sources) > 8 else "")
    return (
        f"source(s) {names} carry frames under {key!r} and are ignored (frames are read from "
        f"{used!r}): set feed.source to choose; one detector published as one source per "
        "module needs geometry assembly, which this streamer does not do yet"
    )
