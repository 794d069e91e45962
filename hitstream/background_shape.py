"""Which frames of a run are empty, told by the shape of their photons around the beam.

A run's frame totals alone cannot find its empty frames when hits are many: with more hits
than empty frames (a dense sample, or a labelled run picked for its hits), the densest half
of the totals holds dim hits, whose photons sit at low q exactly where the background is
strongest, and a map made from them hides the next dim hit (on a simulated run with 70 %
hits and a strong low-q background the default called 249 of 630 singles empty). An empty
frame is the run's background at its own shot level; a hit adds photons to a few rings
around the beam. So each frame is summarised by its photons in :data:`RINGS` rings of equal
pixel count (its *profile*), scaled to a reference profile by the median ring ratio (the
shot's level, as :func:`hitstream.frame_kernel.fit_shot_scale` does on the model's bins),
and scored by its largest ring deviation in units of the expected noise (Poisson, plus
:data:`REL_ERROR` of the ring's photons for the scale's own error and detector gains, plus
what the frames' deviations below the reference show beyond that: read noise, common-mode
offsets), or
by the inner half of the rings' deviations together where that is larger (a hit adds
photons to several of them at once).

:func:`select_empty` starts from the ``share`` of frames whose photons are least
concentrated towards the beam (:func:`concentration`: a hit adds photons at low q, so the
empty frames are the least concentrated, whatever the shot's level), then repeatedly takes
the ``share`` of frames that fit the reference best and makes the reference their mean
profile; frames that fit within ``z_max`` are accepted too. This finds the empty frames as
long as they are at least that share of the run (15 % by default), whatever the rest is.
Pure numpy, no BLAS (see :func:`hitstream.background._matvec`): ≈ 1 ms for 16 frames.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

RINGS = 13  # rings of equal pixel count around the beam (odd: the median is one ring)
REL_ERROR = 0.03  # noise beyond Poisson, as a share of a ring's expected photons
SCALE_RANGE = (0.3, 3.0)  # a shot's level against the reference (fit_shot_scale's limits)
ITERATIONS = 4  # of the archived selection (the live one takes one per update)
MIN_RING_PHOTONS = 1.0  # rings with less in the reference do not set the shot's level
HOT_FACTOR = 8.0  # a pixel whose mean is this many times its ring's median is left out
HOT_MIN = 2.0  # ... and more than this many photons per frame
LAYOUT_FRAMES = 64  # frames whose mean finds those pixels
REFINE_FRAMES = 64  # the live estimate refines its reference after this many more frames


@dataclass(frozen=True)
class RingLayout:
    """The valid pixels sorted by ring, and where each ring starts in that order."""

    order: np.ndarray  # flat pixel indices
    starts: np.ndarray  # (RINGS,) positions in ``order``; empty rings have none


def ring_index(valid: np.ndarray, center: tuple[float, float], rings: int = RINGS) -> np.ndarray:
    """(H, W) the ring of each pixel: rings of equal valid-pixel count around ``center``
    (row, column); −1 off the valid pixels."""
    valid = np.asarray(valid, bool)
    y = np.arange(valid.shape[0])[:, None] - center[0]
    x = np.arange(valid.shape[1])[None, :] - center[1]
    r = np.broadcast_to(np.hypot(y, x), valid.shape)
    if not valid.any():
        return np.full(valid.shape, -1, np.intp)
    edges = np.quantile(r[valid], np.linspace(0.0, 1.0, rings + 1))[1:-1]
    return np.where(valid, np.searchsorted(edges, r, side="right"), -1)


def ring_layout(
    valid: np.ndarray,
    center: tuple[float, float],
    mean_frame: np.ndarray | None = None,
    used: np.ndarray | None = None,
) -> RingLayout:
    """The rings of :func:`ring_index` without the pixels whose mean over some frames
    (``mean_frame``) stands far above their ring's: the run's hot pixels, whose photons do
    not follow the shot's level (and the brightest pixels of a streak, harmlessly); or, to
    restore a layout, only the ``used`` ones (:func:`used_pixels`)."""
    ring = ring_index(valid, center)
    used = ring >= 0 if used is None else (ring >= 0) & np.asarray(used, bool)
    if mean_frame is not None and used.any():
        m = np.where(np.isfinite(mean_frame), mean_frame, np.inf)
        median = np.array([np.median(m[ring == k]) if (ring == k).any() else 0.0
                           for k in range(RINGS)])  # fmt: skip
        limit = np.maximum(HOT_MIN, HOT_FACTOR * median)
        used &= m <= limit[np.maximum(ring, 0)]
    idx = np.flatnonzero(used.ravel())
    flat = ring.ravel()
    order = idx[np.argsort(flat[idx], kind="stable")]
    return RingLayout(order, np.searchsorted(flat[order], np.arange(RINGS)))


def used_pixels(layout: RingLayout, shape: tuple[int, int]) -> np.ndarray:
    """(H, W) bool: the pixels a layout sums (to save it)."""
    out = np.zeros(shape[0] * shape[1], bool)
    out[layout.order] = True
    return out.reshape(shape)


def ring_profiles(
    frames: np.ndarray, layout: RingLayout, buffer: np.ndarray | None = None
) -> np.ndarray:
    """(N, H, W) frames → (N, RINGS) float64 photons per ring (non-finite pixels left out);
    ``buffer``: float32 scratch of at least (N, len(layout.order)) (saves an allocation)."""
    x = np.asarray(frames, np.float32).reshape(len(frames), -1)
    n_rings = len(layout.starts)
    if len(layout.order) == 0:
        return np.zeros((len(x), n_rings))
    fits = buffer is not None and buffer.shape[0] >= len(x)
    out = buffer[: len(x), : len(layout.order)] if fits and buffer is not None else None
    picked = np.take(x, layout.order, axis=1, out=out, mode="clip")  # "raise" copies x
    ends = np.append(layout.starts[1:], len(layout.order))
    filled = layout.starts < ends  # reduceat returns an element, not 0, for an empty ring
    with np.errstate(invalid="ignore", over="ignore"):
        p = np.add.reduceat(picked, np.minimum(layout.starts, len(layout.order) - 1), axis=1)
        p = p.astype(np.float64)
        bad = ~np.isfinite(p).all(axis=1)
    if bad.any():
        clean = np.where(np.isfinite(picked[bad]), picked[bad], np.float32(0))
        p[bad] = np.add.reduceat(clean, np.minimum(layout.starts, len(layout.order) - 1), axis=1)
    p[:, ~filled] = 0.0
    return p


def concentration(profiles: np.ndarray) -> np.ndarray:
    """(N,) photons in the inner half of the rings over those in the outer half (+1)."""
    p = np.asarray(profiles, np.float64)
    half = p.shape[1] // 2
    return p[:, :half].sum(axis=1) / (p[:, half:].sum(axis=1) + 1.0)


def least_concentrated(profiles: np.ndarray, share: float) -> np.ndarray:
    """Mask of the ``share`` of frames with the lowest :func:`concentration`."""
    c = concentration(profiles)
    k = min(len(c), max(1, math.ceil(share * len(c))))
    out = np.zeros(len(c), bool)
    out[np.argpartition(c, k - 1)[:k]] = True
    return out


def _residuals(profiles: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(photons − expected, expected) per frame and ring, each frame at its own shot level."""
    p = np.asarray(profiles, np.float64)
    ref = np.asarray(reference, np.float64)
    ok = ref > MIN_RING_PHOTONS
    if ok.any():
        scale = np.clip(np.median(p[:, ok] / ref[ok], axis=1), *SCALE_RANGE)
    else:  # no background to speak of: every photon is a deviation
        scale = np.ones(len(p))
    expected = scale[:, None] * ref
    return p - expected, expected


def _variance(expected: np.ndarray, extra: np.ndarray | float) -> np.ndarray:
    return expected + 1.0 + (REL_ERROR * expected) ** 2 + extra


def excess_noise(profiles: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """(RINGS,) the variance per ring beyond Poisson and :data:`REL_ERROR` that the frames
    show below the reference: read noise, common-mode offsets, the error of the shot's
    level. Measured on the frames' negative deviations only, which hits do not make."""
    r, e = _residuals(profiles, reference)
    below = r < 0
    if not below.any():
        return np.zeros(r.shape[1])
    excess = np.where(below, r**2 - _variance(e, 0.0), 0.0).sum(axis=0)
    return np.maximum(0.0, excess / np.maximum(below.sum(axis=0), 1))


def shape_scores(
    profiles: np.ndarray, reference: np.ndarray, extra_variance: np.ndarray | float = 0.0
) -> np.ndarray:
    """(N,) each profile's largest ring deviation from the reference at its own shot level,
    in units of the expected noise (0: the background's shape exactly); ``extra_variance``:
    :func:`excess_noise`."""
    r, e = _residuals(profiles, reference)
    if not r.shape[1]:
        return np.zeros(len(r))
    z = r / np.sqrt(_variance(e, extra_variance))
    half = max(1, z.shape[1] // 2)  # a hit adds to several inner rings at once
    inner = z[:, :half].sum(axis=1) / math.sqrt(half)
    return np.maximum(np.abs(z).max(axis=1), inner)


def best_fitting(scores: np.ndarray, share: float, z_max: float) -> tuple[np.ndarray, float]:
    """(accepted mask, the score limit): the ``share`` of frames that fit best, and every
    frame within ``z_max``."""
    n = len(scores)
    if n == 0:
        return np.zeros(0, bool), z_max
    k = min(n, max(1, math.ceil(share * n)))
    cut = max(z_max, float(np.partition(scores, k - 1)[k - 1]))
    return scores <= cut, cut


def refine(
    profiles: np.ndarray, reference: np.ndarray, share: float
) -> tuple[np.ndarray, np.ndarray]:
    """One step: (the mean profile of the ``share`` of frames that fit ``reference`` best,
    the excess noise measured against it)."""
    p = np.asarray(profiles, np.float64)
    k = min(len(p), max(1, math.ceil(share * len(p))))
    scores = shape_scores(p, reference, excess_noise(p, reference))
    best = p[np.argpartition(scores, k - 1)[:k]].mean(axis=0)
    return best, excess_noise(p, best)


def select_empty(
    profiles: np.ndarray, share: float, z_max: float, iterations: int = ITERATIONS
) -> tuple[np.ndarray, np.ndarray]:
    """(mask of the empty frames, their mean profile) of a run's profiles (N, RINGS)."""
    p = np.asarray(profiles, np.float64)
    if len(p) == 0:
        return np.zeros(0, bool), np.zeros(p.shape[1:])
    reference = p[least_concentrated(p, share)].mean(axis=0)
    extra = np.zeros(p.shape[1])
    for _ in range(iterations):
        reference, extra = refine(p, reference, share)
    accepted, _ = best_fitting(shape_scores(p, reference, extra), share, z_max)
    return accepted, reference
