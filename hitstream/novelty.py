"""Know when the model does not know: how far a run is from what its bundle was trained on.

A model can be confident and wrong on frames unlike its training data (a background far
beyond the training range made every empty frame "other" at 0.99). Three signs, each
checked against a reference the bundle records at export (manifest key ``novelty``,
:func:`reference_from`):

- **background**: the run's background level (photons per valid pixel, from
  :mod:`hitstream.background`) outside the range the bundle was trained on;
- **uncertain frames**: the share of frames whose prediction entropy exceeds the 99th
  percentile of the validation frames' (1 % expected) is several times higher;
- **class mix**: a share of ``other`` that no run should have (most frames of a real run are
  empty; junk dominating means the model sees something new) — a drift signal, not a proof.

:class:`NoveltyMonitor` keeps a bounded window of recent frames and says, in
:meth:`NoveltyMonitor.report`, which signs are on and what to do: label a couple of
hundred frames of this run (``trainer label``) and fine-tune (``trainer finetune``). Pure
numpy; the streamer exports it as metrics and shows it on the live page; ``trainer
evaluate`` and ``trainer label`` report it on archived runs.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

UNCERTAIN_EXPECTED = 0.01  # share of validation frames above the entropy reference
UNCERTAIN_FACTOR = 5.0  # flagged when the share is this many times the expected one
OTHER_SHARE_MAX = 0.5  # flagged when more frames than this are called "other"
BACKGROUND_MARGIN = 1.25  # flagged beyond this factor above the training range's top
MIN_FRAMES = 200  # no verdict on fewer frames
ADVICE = (
    "label a couple of hundred frames of this run (trainer label) and fine-tune the bundle "
    "on them (trainer finetune), then swap it in (POST /model)"
)


def entropy(probabilities: np.ndarray) -> np.ndarray:
    """(N,) Shannon entropy in nats of (N, C) probabilities (non-finite rows: NaN)."""
    p = np.asarray(probabilities, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.sum(np.where(p > 0, p * np.log(p), 0.0), axis=1)
    return np.where(np.isfinite(p).all(axis=1), h, np.nan)


def reference_from(
    probabilities: np.ndarray, background_level: Sequence[float] | None
) -> dict[str, Any]:
    """The manifest's ``novelty`` key from validation probabilities and the range of
    background levels trained on (photons per valid pixel)."""
    h = entropy(probabilities)
    h = h[np.isfinite(h)]
    q = float(np.quantile(h, 1.0 - UNCERTAIN_EXPECTED)) if len(h) else math.log(2)
    out: dict[str, Any] = {"entropy_q99": q}
    if background_level is not None:
        out["background_level"] = [float(background_level[0]), float(background_level[1])]
    return out


@dataclass(frozen=True)
class NoveltyReport:
    """What the recent frames say; ``score`` 0 (like training) … 1 (far from it)."""

    frames: int
    score: float
    reasons: list[str] = field(default_factory=list)
    uncertain_share: float = 0.0
    other_share: float = 0.0
    background_level: float | None = None

    @property
    def novel(self) -> bool:
        return bool(self.reasons)

    def warning(self) -> str | None:
        """A plain warning for people, or None."""
        if not self.reasons:
            return None
        return (
            "frames unlike the model's training data (" + "; ".join(self.reasons) + "): " + ADVICE
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "frames": self.frames,
            "score": round(self.score, 4),
            "novel": self.novel,
            "reasons": list(self.reasons),
            "uncertain_share": round(self.uncertain_share, 4),
            "other_share": round(self.other_share, 4),
            "background_level": self.background_level,
            "advice": ADVICE if self.reasons else None,
        }


class NoveltyMonitor:
    """A window of recent frames (entropy, predicted class, background level). Not
    thread-safe: one thread observes; :meth:`report` may be read from another (it copies)."""

    def __init__(
        self, reference: Mapping[str, Any] | None, classes: Sequence[str], window: int = 5000
    ) -> None:
        ref = dict(reference or {})
        self.entropy_q99 = float(ref.get("entropy_q99", math.log(max(2, len(classes)))))
        bg = ref.get("background_level")
        self.background_range = (float(bg[0]), float(bg[1])) if bg else None
        self.other = list(classes).index("other") if "other" in classes else -1
        self._uncertain: deque[bool] = deque(maxlen=window)
        self._other: deque[bool] = deque(maxlen=window)
        self._level: float | None = None

    def observe(self, probabilities: np.ndarray, background_level: float | None = None) -> None:
        """Add a batch: (N, C) probabilities and the background level it was classified with."""
        p = np.asarray(probabilities)
        if len(p) == 0:
            return
        h = entropy(p)
        ok = np.isfinite(h)
        self._uncertain.extend((h[ok] > self.entropy_q99).tolist())
        if self.other >= 0:
            self._other.extend((p[ok].argmax(axis=1) == self.other).tolist())
        if background_level is not None and math.isfinite(background_level):
            self._level = float(background_level)

    def report(self) -> NoveltyReport:
        n = len(self._uncertain)
        uncertain = float(np.mean(self._uncertain)) if n else 0.0
        other = float(np.mean(self._other)) if self._other else 0.0
        reasons: list[str] = []
        scores = [0.0]
        level = self._level
        if level is not None and self.background_range is not None:
            hi = self.background_range[1]
            top = max(hi, 1e-9) * BACKGROUND_MARGIN
            scores.append(min(1.0, max(0.0, (level - top) / top)) if level > top else 0.0)
            if level > top:
                reasons.append(f"background {level:.3g} photon/pixel, trained up to {hi:.3g}")
        if n >= MIN_FRAMES:
            ratio = uncertain / UNCERTAIN_EXPECTED
            scores.append(min(1.0, max(0.0, (ratio - 1) / (UNCERTAIN_FACTOR * 4))))
            if ratio >= UNCERTAIN_FACTOR:
                reasons.append(f"{uncertain:.0%} of frames uncertain (validation: 1 %)")
            scores.append(min(1.0, other / OTHER_SHARE_MAX) * 0.5)
            if other > OTHER_SHARE_MAX:
                reasons.append(f"{other:.0%} of frames called other")
        score = max(scores) if not reasons else max(0.5, max(scores))
        return NoveltyReport(n, float(score), reasons, uncertain, other, level)
