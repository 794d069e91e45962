"""The field's baseline: a lit-pixel hit finder above the run's own background.

Beamline hit finders for single-particle imaging (Cheetah, OnDA/OM, Hummingbird's
``countLitPixels``) count photons or lit pixels and call a frame a hit when the count stands
out of the run's background. This is that method, done carefully, so that the CNN's quality
can be compared with what a beamline would otherwise use:

- a pixel is *lit* when it holds at least ``threshold`` photons (0.5: one photon with read
  noise below half a photon);
- the run's background map ``b`` (photons per pixel, :mod:`hitstream.background`) predicts how
  many pixels an empty frame lights: ``E = Σ P(Poisson(b_p) ≥ 1)``, variance
  ``Σ P(1 − P)``, over valid pixels;
- the frame's score is the excess in units of that spread: ``(lit − E) / sqrt(Var + 1)``;
- a frame is a hit when its score exceeds ``median + k × 1.4826 × MAD`` of the run's
  scores (robust: most frames are empty), ``k`` = 5 by default.

It tells hits from empty frames only; in a 4-class table its hits count as ``single`` (a
beamline keeps every hit) and the rest as ``empty``.
"""

from __future__ import annotations

import numpy as np

LIT_THRESHOLD = 0.5  # photons: a pixel at or above this is lit
DEFAULT_K = 5.0  # hits: score above median + k robust sigmas of the run


def lit_pixels(
    frames: np.ndarray, valid: np.ndarray | None = None, threshold: float = LIT_THRESHOLD
) -> np.ndarray:
    """(N,) lit valid pixels per frame (NaN and ±Inf never lit)."""
    x = np.asarray(frames, np.float32)
    with np.errstate(invalid="ignore"):
        lit = (x >= threshold) & np.isfinite(x)
    if valid is not None:
        lit &= valid
    return lit.reshape(len(x), -1).sum(axis=1)


def expected_lit(background: np.ndarray, valid: np.ndarray | None = None) -> tuple[float, float]:
    """Mean and variance of the lit pixels of an empty frame under ``background``."""
    b = np.clip(np.nan_to_num(np.asarray(background, np.float64)), 0.0, None)
    p = 1.0 - np.exp(-b)  # P(at least one photon)
    if valid is not None:
        p = p[valid]
    return float(p.sum()), float((p * (1.0 - p)).sum())


def hit_scores(
    frames: np.ndarray, background: np.ndarray, valid: np.ndarray | None = None
) -> np.ndarray:
    """(N,) lit-pixel excess over the background, in units of its spread."""
    mean, var = expected_lit(background, valid)
    return (lit_pixels(frames, valid) - mean) / np.sqrt(var + 1.0)


def hit_threshold(scores: np.ndarray, k: float = DEFAULT_K) -> float:
    """``median + k × robust sigma`` of a run's scores (most frames are empty)."""
    s = np.asarray(scores, np.float64)
    med = float(np.median(s))
    mad = float(np.median(np.abs(s - med)))
    return med + k * 1.4826 * max(mad, 1e-9)


def find_hits(
    frames: np.ndarray,
    background: np.ndarray,
    valid: np.ndarray | None = None,
    k: float = DEFAULT_K,
) -> tuple[np.ndarray, np.ndarray]:
    """``(scores, is_hit)`` for the frames of one run."""
    scores = hit_scores(frames, background, valid)
    return scores, scores > hit_threshold(scores, k)
