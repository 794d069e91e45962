"""Frame preprocessing, numpy reference (pure functions, no TensorFlow).

The exported ONNX graph runs the same steps in TensorFlow ops (:mod:`trainer.graph`); a
test checks that both agree. Templates, reports and notebooks use this module.

Steps, on raw photon-count frames ``(N, 260, 257)`` float32:

1. 2×2 binning by summing (the last of the 257 columns is cropped): ``(130, 128)``. This is
   the only full-resolution pass, which is what keeps CPU serving fast. Never more than
   2×2: interference fringes of multiple hits are only a few pixels wide.
2. Binned: subtract ``NOISE_FLOOR`` and clip to ``[0, PIXEL_MAX]`` (negative sums → 0, +Inf →
   PIXEL_MAX): detector read noise (zero-mean, σ ≲ 0.15 photon per pixel) would otherwise add
   a positive bias of ~0.4 σ_bin to every clipped bin, thousands of false photons per frame,
   enough to turn empty frames into "hits"; a real photon keeps ``1 - NOISE_FLOOR``. NaN → 0 (a NaN
   or ±Inf pair makes its bin 0), then the binned detector mask: bins that touch the
   beam-stop hole or the gap between the detector halves
   (:class:`streamer.geometry.DetectorGeometry`) are 0. Clipping after summing keeps zero-
   mean detector noise unbiased (clipping each pixel first would add a positive offset);
   masking after binning costs at most one binned pixel around the hole.
3. Hot pixels tamed: each bin is capped at ``HOT_ABS + HOT_REL × mean of its 8
   neighbours``. Diffraction speckles are smooth over several bins, so real signal passes;
   an isolated hot pixel next to near-empty neighbours is cut to ``HOT_ABS`` photons.
   The sum of the result is the ``photons`` output (photons on valid bins, per frame).
   Coarse variant (the ``fast`` architecture, ``coarsen=2``): the cleaned 2×2 bins are summed
   2×2 again, ``(65, 64)``, before the hot-pixel cap, so that everything after the one
   full-resolution pass runs on 4× fewer values (at the cost of fringes finer than 4 pixels).
4. Two channels, ``(N, 130, 128, 2)`` (channels last), from ``s = sqrt(b)``
   (variance-stabilising for Poisson counts):
   ``level = s / LEVEL_SCALE`` (absolute photon level: empty vs hit),
   ``shape = s / sqrt(mean(b) + SHAPE_EPS)`` (normalised by the frame's mean binned count,
   so runs of different photon levels look alike). The first convolution mixes them, i.e.
   applies a kernel blended per frame by its photon level.
5. Optional fine-structure channels (``details=True``, the ``fine`` architecture), three
   more: the Haar detail sums of each 2×2 block of raw pixels, ``D`` = (top − bottom,
   left − right, diagonal − antidiagonal), which the binning discards. Fringes of multiple
   hits 4–5 pixels apart are near the binned image's Nyquist frequency: binning keeps ~0.6
   of their contrast, and at an unlucky phase none. Each is made a Poisson z-score gated
   by the cleaning: ``D · b / (max(S, 1) · sqrt(b + 1))`` with ``S`` the raw block sum and
   ``b`` the cleaned bin, so masked, clipped and NaN bins give 0, a capped hot pixel keeps
   only its capped share, and a bin's value is ~N(0, 1) where the block has no structure.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from streamer.geometry import DetectorGeometry

PIXEL_MAX = 1.0e6  # photons per raw pixel; +Inf and absurd values end here
NOISE_FLOOR = 0.5  # photons subtracted from every 2×2 bin before clipping (read noise)
HOT_ABS = 10.0  # photons: an isolated bin may hold this much
HOT_REL = 4.0  # ... plus this many times the mean of its 8 neighbours
LEVEL_SCALE = 4.0  # sqrt(binned counts) / LEVEL_SCALE
SHAPE_EPS = 0.05  # photons per bin; keeps nearly empty frames from blowing up
BIN = 2
CHANNELS = ("level", "shape")
DETAIL_CHANNELS = ("rows", "columns", "diagonal")  # Haar details of the 2×2 blocks


def beam_centre(geometry: DetectorGeometry) -> tuple[float, float]:
    """(row, column) of the beam in pixel coordinates: the centre of the frame."""
    return geometry.center_px


@lru_cache(maxsize=8)
def _masks(geometry: DetectorGeometry) -> tuple[np.ndarray, np.ndarray]:
    pix = geometry.valid_pixels()
    h, w = geometry.shape
    hb, wb = h // BIN, w // BIN
    binned = pix[: hb * BIN, : wb * BIN].reshape(hb, BIN, wb, BIN).all(axis=(1, 3))
    out = (pix.astype(np.float32), binned.astype(np.float32))
    for m in out:
        m.setflags(write=False)
    return out


def detector_mask(geometry: DetectorGeometry | None = None) -> np.ndarray:
    """(H, W) float32, 1 for valid pixels, 0 in the beam-stop hole and the gap (read-only)."""
    return _masks(geometry or DetectorGeometry())[0]


def binned_mask(geometry: DetectorGeometry | None = None) -> np.ndarray:
    """(h, w) float32, 1 for bins whose pixels are all valid (read-only)."""
    return _masks(geometry or DetectorGeometry())[1]


def binned_shape(geometry: DetectorGeometry | None = None) -> tuple[int, int]:
    """Shape of the binned image, e.g. (130, 128) for 260×257 frames."""
    h, w = (geometry or DetectorGeometry()).shape
    return h // BIN, w // BIN


def input_shape(geometry: DetectorGeometry | None = None, coarsen: int = 1) -> tuple[int, int]:
    """Shape of the network's input image: the binned shape divided by ``coarsen``."""
    hb, wb = binned_shape(geometry)
    return hb // coarsen, wb // coarsen


def coarsen_bins(binned: np.ndarray, k: int) -> np.ndarray:
    """Sum k×k blocks of binned counts (N, h, w) → (N, h//k, w//k); ``k == 1``: unchanged."""
    b = np.asarray(binned, np.float32)
    if k == 1:
        return b
    n, h, w = b.shape
    hc, wc = h // k, w // k
    return b[:, : hc * k, : wc * k].reshape(n, hc, k, wc, k).sum(axis=(2, 4), dtype=np.float32)


def bin_clean(frames: np.ndarray, geometry: DetectorGeometry | None = None) -> np.ndarray:
    """Steps 1–2: raw (N, H, W) → binned, clipped, NaN-free, masked counts (N, h, w)."""
    x = np.asarray(frames, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    geometry = geometry or DetectorGeometry()
    if x.shape[1:] != tuple(geometry.shape):
        raise ValueError(f"frames {x.shape[1:]} do not match the geometry {geometry.shape}")
    n = x.shape[0]
    hb, wb = binned_shape(geometry)
    with np.errstate(invalid="ignore", over="ignore"):
        x = x[:, : hb * BIN, : wb * BIN].reshape(n, hb, BIN, wb, BIN)
        b = x.sum(axis=(2, 4), dtype=np.float32)
        b = np.clip(b - np.float32(NOISE_FLOOR), np.float32(0), np.float32(PIXEL_MAX))
        b *= binned_mask(geometry)
    return np.where(np.isnan(b), np.float32(0), b)


def cap_hot(binned: np.ndarray) -> np.ndarray:
    """Step 3: each bin capped at HOT_ABS + HOT_REL × mean of its 8 neighbours.

    The neighbourhood sum is ``9 × (mean of the 3×3 window) − bin``, the window mean taken
    over the bins inside the frame (at the border: 6 or 4 bins), as one AveragePool does."""
    b = np.asarray(binned, np.float32)
    hb, wb = b.shape[1:]
    padded = np.pad(b, ((0, 0), (1, 1), (1, 1)))
    ones = np.pad(np.ones((hb, wb), np.float32), 1)
    box = np.zeros_like(b)
    count = np.zeros((hb, wb), np.float32)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            box += padded[:, dy : dy + hb, dx : dx + wb]
            count += ones[dy : dy + hb, dx : dx + wb]
    cap = np.float32(HOT_ABS) + np.float32(HOT_REL / 8.0) * (box / count * np.float32(9) - b)
    return np.minimum(b, cap).astype(np.float32)


def bin_frames(frames: np.ndarray, geometry: DetectorGeometry | None = None) -> np.ndarray:
    """Steps 1–3: raw (N, H, W) → cleaned binned photon counts (N, h, w) float32."""
    return cap_hot(bin_clean(frames, geometry))


def channels(binned: np.ndarray) -> np.ndarray:
    """Step 4: (N, h, w) cleaned binned counts → (N, h, w, 2) network input."""
    b = binned.astype(np.float32)
    s = np.sqrt(b)
    mean = b.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
    level = s * np.float32(1.0 / LEVEL_SCALE)
    shape = s / np.sqrt(mean + np.float32(SHAPE_EPS))
    return np.stack([level, shape], axis=-1).astype(np.float32)


def block_details(frames: np.ndarray, geometry: DetectorGeometry | None = None) -> np.ndarray:
    """Raw (N, H, W) → (N, h, w, 4): each 2×2 block's sum ``S`` and Haar details ``D``
    (rows, columns, diagonal), unmasked and uncleaned (NaN stays NaN)."""
    x = np.asarray(frames, dtype=np.float32)
    if x.ndim == 2:
        x = x[None]
    hb, wb = binned_shape(geometry)
    n = x.shape[0]
    with np.errstate(invalid="ignore", over="ignore"):
        q = x[:, : hb * BIN, : wb * BIN].reshape(n, hb, BIN, wb, BIN)
        a, b, c, d = q[:, :, 0, :, 0], q[:, :, 0, :, 1], q[:, :, 1, :, 0], q[:, :, 1, :, 1]
        out = [a + b + c + d, a + b - c - d, a - b + c - d, a - b - c + d]
    return np.stack(out, axis=-1).astype(np.float32)


def detail_channels(blocks: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Step 5: (N, h, w, 4) block sums and details, (N, h, w) cleaned bins → (N, h, w, 3)."""
    s, d = blocks[..., :1], blocks[..., 1:]
    b = clean[..., None].astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        z = d * (b / (np.maximum(s, np.float32(1.0)) * np.sqrt(b + np.float32(1.0))))
    return np.where(np.isfinite(z), z, np.float32(0)).astype(np.float32)


def preprocess(
    frames: np.ndarray,
    geometry: DetectorGeometry | None = None,
    coarsen: int = 1,
    details: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw frames (N, H, W) → (network input (N, h, w, 2 or 5), photons (N,))."""
    b = cap_hot(coarsen_bins(bin_clean(frames, geometry), coarsen))
    photons = b.sum(axis=(1, 2), dtype=np.float64).astype(np.float32)
    image = channels(b)
    if details:
        if coarsen != 1:
            raise ValueError("detail channels need the 2x2-binned image (coarsen 1)")
        image = np.concatenate([image, detail_channels(block_details(frames, geometry), b)], -1)
    return image, photons
