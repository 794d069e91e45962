"""Frame preprocessing, numpy reference (pure functions, no TensorFlow).

The exported ONNX graph runs the same steps in TensorFlow ops (:mod:`trainer.graph`); a
test checks that both agree. Templates, reports and notebooks use this module.

Steps, on raw photon-count frames ``(N, 260, 257)`` float32:

1. NaN/±Inf → 0, negatives → 0, multiply by the detector mask (beam-stop hole and the gap
   between detector halves, from :class:`streamer.geometry.DetectorGeometry`).
2. Hot pixels tamed: each pixel is capped at ``HOT_ABS + HOT_REL × mean of its 8
   neighbours``. Diffraction speckles are smooth over several pixels, so real signal passes;
   an isolated hot pixel next to near-empty neighbours is cut to ``HOT_ABS`` photons.
   The sum of the cleaned frame is the ``photons`` output.
3. 2×2 binning by summing (the last of the 257 columns is cropped): ``(130, 128)``.
   Never more than 2×2: interference fringes of multiple hits are only a few pixels wide.
4. Three channels, ``(N, 130, 128, 3)`` (channels last):
   ``level = log1p(b) / LEVEL_SCALE`` (absolute photon level: empty vs hit),
   ``shape = sqrt(b / (mean(b) + SHAPE_EPS))`` (variance-stabilised, normalised by the
   frame's mean binned count so that runs of different photon levels look alike),
   ``radius`` (distance to the beam centre / ``RADIUS_SCALE``, a constant channel that
   tells the network the scattering angle).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from streamer.geometry import DetectorGeometry

HOT_ABS = 10.0  # photons: an isolated pixel may hold this much
HOT_REL = 4.0  # ... plus this many times the mean of its 8 neighbours
LEVEL_SCALE = 4.0  # log1p(binned counts) / LEVEL_SCALE
SHAPE_EPS = 0.05  # photons per binned pixel; keeps empty frames from blowing up
RADIUS_SCALE = 90.0  # binned pixels
BIN = 2
CHANNELS = ("level", "shape", "radius")


def beam_centre(geometry: DetectorGeometry) -> tuple[float, float]:
    """(row, column) of the beam in pixel coordinates: the centre of the frame."""
    h, w = geometry.shape
    return (h - 1) / 2.0, (w - 1) / 2.0


def _mask(geometry: DetectorGeometry) -> np.ndarray:
    h, w = geometry.shape
    cy, cx = beam_centre(geometry)
    yy, xx = np.mgrid[0:h, 0:w]
    mask = (yy - cy) ** 2 + (xx - cx) ** 2 > geometry.hole_radius_px**2
    if geometry.gap_rows > 0:
        top = round(cy + 0.5 - geometry.gap_rows / 2)
        mask[top : top + geometry.gap_rows, :] = False
    return mask.astype(np.float32)


@lru_cache(maxsize=8)
def _mask_cached(geometry: DetectorGeometry) -> np.ndarray:
    m = _mask(geometry)
    m.setflags(write=False)
    return m


def detector_mask(geometry: DetectorGeometry | None = None) -> np.ndarray:
    """(H, W) float32, 1 for valid pixels, 0 in the beam-stop hole and the gap (read-only)."""
    return _mask_cached(geometry or DetectorGeometry())


def binned_shape(geometry: DetectorGeometry | None = None) -> tuple[int, int]:
    """Shape of the binned image, e.g. (130, 128) for 260×257 frames."""
    h, w = (geometry or DetectorGeometry()).shape
    return h // BIN, w // BIN


def radius_channel(geometry: DetectorGeometry | None = None) -> np.ndarray:
    """(h, w) float32: distance of each binned pixel's centre to the beam / RADIUS_SCALE."""
    geometry = geometry or DetectorGeometry()
    h, w = binned_shape(geometry)
    cy, cx = beam_centre(geometry)
    yy = (np.arange(h) * BIN + (BIN - 1) / 2 - cy) / BIN
    xx = (np.arange(w) * BIN + (BIN - 1) / 2 - cx) / BIN
    r = np.sqrt(yy[:, None] ** 2 + xx[None, :] ** 2) / RADIUS_SCALE
    return r.astype(np.float32)


def clean_frames(frames: np.ndarray, geometry: DetectorGeometry | None = None) -> np.ndarray:
    """Steps 1–2: finite, non-negative, masked, hot pixels capped. (N, H, W) float32."""
    x = np.asarray(frames, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    mask = detector_mask(geometry)
    if x.shape[1:] != mask.shape:
        raise ValueError(f"frames of shape {x.shape[1:]} do not match the geometry {mask.shape}")
    x = np.where(np.isfinite(x), x, np.float32(0))
    x = np.maximum(x, np.float32(0)) * mask
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    h, w = x.shape[1:]
    neigh = np.zeros_like(x)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            if dy == 1 and dx == 1:
                continue
            neigh += padded[:, dy : dy + h, dx : dx + w]
    cap = np.float32(HOT_ABS) + np.float32(HOT_REL / 8.0) * neigh
    return np.minimum(x, cap).astype(np.float32)


def bin_frames(clean: np.ndarray) -> np.ndarray:
    """Step 3: 2×2 sums of cleaned frames, odd trailing rows/columns cropped."""
    n, h, w = clean.shape
    hb, wb = h // BIN, w // BIN
    x = clean[:, : hb * BIN, : wb * BIN].reshape(n, hb, BIN, wb, BIN)
    return x.sum(axis=(2, 4), dtype=np.float32)


def channels(binned: np.ndarray, geometry: DetectorGeometry | None = None) -> np.ndarray:
    """Step 4: (N, h, w) binned counts → (N, h, w, 3) network input."""
    b = binned.astype(np.float32)
    level = np.log(b + np.float32(1)) / np.float32(LEVEL_SCALE)
    mean = b.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
    shape = np.sqrt(b / (mean + np.float32(SHAPE_EPS)))
    radius = np.broadcast_to(radius_channel(geometry), b.shape)
    return np.stack([level, shape, radius], axis=-1).astype(np.float32)


def preprocess(
    frames: np.ndarray, geometry: DetectorGeometry | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Raw frames (N, H, W) → (network input (N, h, w, 3), photons (N,))."""
    clean = clean_frames(frames, geometry)
    photons = clean.sum(axis=(1, 2), dtype=np.float64).astype(np.float32)
    return channels(bin_frames(clean), geometry), photons
