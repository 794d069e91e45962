"""What a run did: :class:`RunSummary` (the log line, ``--summary-json``, the demo, tests)
and the frame balance at its end.

The balance, in frames, with nothing counted twice::

    received = classified + rejected + dropped (+ in flight while running)

Whole messages that are refused (malformed, too large, no frames) and trains that never
arrived (gaps in train ids) are counted apart, as messages and as an estimate: their frames
were never received. At the end-of-run marker the producer's count is compared with what
arrived (``never_seen``). Of the classified frames, ``labels_on_disk`` reached a file and
``labels_unrecorded`` did not (a full disk that never freed, a failed write).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from streamer.metrics import Metrics
from streamer.output_guard import OutputGuard
from streamer.types import EndOfRun

log = logging.getLogger("streamer.pipeline")


@dataclass
class RunSummary:
    """What a run did, for the log, the demo and tests."""

    run: str
    model: str
    provider: str
    frames_received: int = 0
    frames_classified: int = 0
    frames_kept: int = 0
    rejected: dict[str, float] = field(default_factory=dict)  # received frames, by reason
    dropped: dict[str, float] = field(default_factory=dict)  # received frames, by reason
    messages_rejected: dict[str, float] = field(default_factory=dict)  # whole messages
    missed: dict[str, float] = field(default_factory=dict)  # never received (train gaps)
    accounting: dict[str, Any] = field(default_factory=dict)  # the frame balance
    output: dict[str, Any] = field(default_factory=dict)  # paused output, unrecorded labels
    per_class: dict[str, int] = field(default_factory=dict)
    hit_rate: float = 0.0
    elapsed_s: float = 0.0
    frames_per_s: float = 0.0
    files: list[str] = field(default_factory=list)
    index: str | None = None
    latency: dict[str, float] = field(default_factory=dict)
    end_of_run: dict[str, Any] | None = None
    error: str | None = None
    warnings: list[str] = field(default_factory=list)  # e.g. frames not in photons
    background: dict[str, Any] = field(default_factory=dict)  # level, warm, frames, version
    novelty: dict[str, Any] = field(default_factory=dict)  # frames unlike the training data?
    feed: dict[str, Any] = field(default_factory=dict)  # refusal, ignored sources
    detector: dict[str, Any] = field(default_factory=dict)  # geometry and q-grid coverage
    decisions: dict[str, Any] = field(default_factory=dict)  # decisions out: sent, dropped
    recovered: dict[str, Any] = field(default_factory=dict)  # orphan files finished at start

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def refusals(self) -> dict[str, float]:
        """Refused frames and refused whole messages together, by reason."""
        out = dict(self.rejected)
        for reason, n in self.messages_rejected.items():
            out[reason] = out.get(reason, 0) + n
        return out


def frame_accounting(metrics: Metrics, output: OutputGuard, end: EndOfRun | None) -> dict[str, Any]:
    """The frame balance at the end of a run, with what reached the files, compared with
    the producer's end-of-run count (when it gave one); logged."""
    m = metrics
    out: dict[str, Any] = dict(m.balance())
    out["balanced"] = out["in_flight"] == 0
    out["messages_rejected"] = int(sum(m.messages_rejected_by_reason().values()))
    out["missed_estimate"] = int(sum(m.missed_by_reason().values()))
    out["labels_on_disk"] = output.rows_on_disk
    out["labels_unrecorded"] = int(sum(output.unrecorded.values()))
    out["kept_not_written"] = int(m.value("hitstream_kept_not_written_total"))
    log.info(
        "frames: %d received = %d classified + %d rejected + %d dropped + %d in flight; "
        "%d whole messages refused; %d label rows on disk",
        out["received"], out["classified"], out["rejected"], out["dropped"],
        out["in_flight"], out["messages_rejected"], out["labels_on_disk"],
    )  # fmt: skip
    if end is not None and end.frames > 0:  # 0: the producer did not count
        out["producer_frames"] = end.frames
        # a restarted producer counts only what it sent itself: more may have arrived
        # at least what the count says, or the train gaps: a restarted producer's count
        # covers only what it sent itself
        out["never_seen"] = max(end.frames - out["received"], out["missed_estimate"], 0)
        out["beyond_producer_count"] = max(0, out["received"] - end.frames)
        level = logging.WARNING if out["never_seen"] else logging.INFO
        log.log(
            level,
            "the producer counted %d frames in run %r: %d never reached this streamer"
            "%s",
            end.frames, end.run, out["never_seen"],
            f"; {out['beyond_producer_count']} more arrived than it counted (a producer "
            "restart?)" if out["beyond_producer_count"] else "",
        )  # fmt: skip
    return out
