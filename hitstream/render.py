"""Frame pictures for the web pages: one renderer, one colour map, one mask and hot colour.

The streamer's live page and the labelling page of ``trainer label`` both draw raw frames
with this module, so a frame looks the same on both:

- **Value**: ``log1p`` of the photon counts (negatives 0), scaled linearly up to a top level,
  the ``TOP_PERCENTILE``-th percentile of the shown pixels (valid and not hot), but at least
  ``log1p(MIN_TOP_PHOTONS)`` so that an empty frame stays dark; brighter pixels saturate.
- **Colour map**: matplotlib's ``magma`` (``COLOUR_MAP``) in ``LEVELS`` = 254 levels,
  computed once on first use.
- **Invalid pixels** (outside the detector's valid pixels: beam-stop hole, gap between the
  halves; and NaN/±Inf): ``MASK_RGB`` (cyan, absent from magma).
- **Hot pixels**: ``HOT_RGB`` (green) on the bins that the model's preprocessing caps, found
  with the numpy frame kernel itself (:mod:`hitstream.frame_kernel`: a bin of
  ``bin_clean`` (optionally coarsened) that ``cap_hot`` lowers), each bin drawn over its
  ``BIN``² (× ``coarsen``²) raw pixels.
- **Orientation**: row 0 of the frame is the top row of the picture (the PNG's own order),
  column 0 the left column, on both pages.
- **Encoding**: an 8-bit palette PNG (Pillow): level ``0..253`` the colour map, ``HOT_LEVEL``
  254, ``MASK_LEVEL`` 255. A few milliseconds per frame, no matplotlib figure.
"""

from __future__ import annotations

import io
import math
from functools import lru_cache

import numpy as np

from hitstream import frame_kernel
from hitstream.geometry import DetectorGeometry

COLOUR_MAP = "magma"
LEVELS = 254  # colour-map levels 0..253
HOT_LEVEL = 254
MASK_LEVEL = 255
MASK_RGB = (0, 204, 204)  # invalid pixels (hole, gap, NaN/Inf): cyan, not in magma
HOT_RGB = (77, 255, 26)  # pixels of the bins the model caps as hot: green, not in magma
TOP_PERCENTILE = 99.9  # the colour scale tops out at this percentile of the shown pixels
MIN_TOP_PHOTONS = 5.0  # ... and at no fewer photons (empty frames stay dark)


@lru_cache(maxsize=1)
def palette() -> bytes:
    """The 256 RGB entries of the pictures' palette: magma, then hot, then mask colour."""
    from matplotlib import colormaps

    rgb = colormaps[COLOUR_MAP](np.linspace(0.0, 1.0, LEVELS))[:, :3] * 255.0
    table = np.vstack([np.round(rgb), [HOT_RGB], [MASK_RGB]]).astype(np.uint8)
    return table.tobytes()


def hot_pixels(
    frame: np.ndarray, geometry: DetectorGeometry | None = None, coarsen: int = 1
) -> np.ndarray:
    """``(H, W)`` bool: the pixels of the bins that the frame kernel's hot-pixel cap lowers
    (``cap_hot`` of the cleaned, ``coarsen``-summed bins below the bins themselves).
    ``frame`` must have the geometry's shape; pixels left over by the binning are False."""
    geometry = geometry or DetectorGeometry()
    b = frame_kernel.coarsen_bins(frame_kernel.bin_clean(frame, geometry), coarsen)
    hot_bins = (b > frame_kernel.cap_hot(b))[0]
    k = frame_kernel.BIN * coarsen
    hb, wb = hot_bins.shape
    out = np.zeros(tuple(geometry.shape), bool)
    out[: hb * k, : wb * k] = np.repeat(np.repeat(hot_bins, k, axis=0), k, axis=1)
    return out


def frame_masks(
    frame: np.ndarray,
    geometry: DetectorGeometry | None,
    *,
    hot: bool = True,
    coarsen: int = 1,
) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(valid, hot)`` pixel masks of a raw frame for :func:`frame_levels`: the geometry's
    valid pixels and (``hot``) :func:`hot_pixels`; ``(None, None)`` without a geometry or
    when the frame has another shape (then only NaN/Inf pixels are masked)."""
    x = np.asarray(frame)
    if geometry is None or x.shape != tuple(geometry.shape):
        return None, None
    valid = frame_kernel.detector_mask(geometry) > 0
    return valid, (hot_pixels(x, geometry, coarsen) if hot else None)


def frame_levels(
    frame: np.ndarray, valid: np.ndarray | None = None, hot: np.ndarray | None = None
) -> np.ndarray:
    """``(H, W)`` uint8 palette levels of a frame: ``log1p`` photons scaled to ``0..253``
    (see the module); ``MASK_LEVEL`` where ``valid`` is False or the value is NaN/Inf,
    ``HOT_LEVEL`` on ``hot`` pixels that are valid."""
    x = np.asarray(frame, np.float32)
    bad = ~np.isfinite(x)
    if valid is not None:
        bad |= ~np.asarray(valid, bool)
    marked = bad if hot is None else bad | np.asarray(hot, bool)
    v = np.log1p(np.clip(np.where(bad, np.float32(0), x), 0.0, None))
    shown = v[~marked]
    top = float(np.percentile(shown, TOP_PERCENTILE)) if shown.size else 0.0
    top = max(top, math.log1p(MIN_TOP_PHOTONS))
    out = np.minimum(v * np.float32((LEVELS - 1) / top) + np.float32(0.5), LEVELS - 1)
    levels = out.astype(np.uint8)
    if hot is not None:
        levels[np.asarray(hot, bool)] = HOT_LEVEL
    levels[bad] = MASK_LEVEL
    return levels


def encode_png(levels: np.ndarray) -> bytes:
    """An 8-bit palette PNG of ``(H, W)`` uint8 ``levels`` in :func:`palette` (row 0 on top)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(levels, np.uint8))
    img.putpalette(palette())  # the "L" image becomes "P" with this palette
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def render_png(
    frame: np.ndarray, valid: np.ndarray | None = None, hot: np.ndarray | None = None
) -> bytes:
    """A frame as PNG with the given masks (see :func:`frame_levels`)."""
    return encode_png(frame_levels(frame, valid, hot))


def render_frame(
    frame: np.ndarray,
    geometry: DetectorGeometry | None = None,
    *,
    hot: bool = True,
    coarsen: int = 1,
) -> bytes:
    """A raw frame as PNG: masked by ``geometry`` and, with ``hot``, its hot pixels marked
    (:func:`frame_masks`)."""
    valid, hot_mask = frame_masks(frame, geometry, hot=hot, coarsen=coarsen)
    return render_png(frame, valid, hot_mask)
