"""Training-time augmentations that respect diffraction physics (TF ops, stateless seeds).

Applied in the tf.data pipeline, never part of the exported graph. Two stages around the
binning of :mod:`trainer.model.preprocess_graph` (``bin_clean`` → photons → ``cap_hot`` →
``channels``):

Geometry, on raw frames (:func:`augment_geometry`), nearest-neighbour so counts stay counts:
  in-plane rotation about the beam centre by any angle (which includes the centrosymmetric
  180° turn), a mirror image (the pattern of the mirrored particle), a zoom about the centre
  (another particle size or detector distance) and a small shift of the centre. The gap
  rows are first filled with mirrored copies of their neighbours, so a turned frame carries
  no turned gap; afterwards the detector mask is applied again.

Photons, on binned counts (:func:`augment_photons`; binning is a sum, so this is exact and
4× cheaper than at full resolution; on raw pixels for models with detail channels, whose
within-block structure must be thinned too):
  photon level ``s`` log-uniform in ``scale_range``: ``s ≤ 1`` binomial thinning (exactly a
  run with ``s`` times the fluence), ``s > 1`` each photon duplicated with probability
  ``s − 1`` (right mean, somewhat over-dispersed); extra background photons (flat / low-q
  mix) for a share of frames; extra hot pixels.

Cost: the augmentation runs on the CPU beside every training step, so each draw is made
where it matters: binomial draws on lit pixels only, extra photons by inverse CDF, read
noise as windows of a fixed stream of normal draws (a batch of 64 at full resolution:
275 → 185 CPU-ms, the same distributions).

With the run's background map (models that take it, :mod:`hitstream.frame_kernel` step 6)
the map goes through the same geometric transform and mask as its frame and is scaled with
the photon level; the extra background photons are not in it (stray light the estimate
missed), nor are hot pixels or read noise.

TensorFlow is imported inside the functions, so :class:`AugmentConfig` (part of
:class:`trainer.model.train.TrainConfig`) is importable without it.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache

import numpy as np

from hitstream import frame_kernel as ref
from hitstream.geometry import DetectorGeometry

MAX_EXTRA_PHOTONS = 128  # per frame: extra background photons and hot pixels drawn at most
NOISE_BANK = 1 << 21  # normal draws that read noise takes its windows from


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply and how strongly."""

    rotate: bool = True
    mirror: bool = True
    shift_px: float = 2.0
    zoom_range: tuple[float, float] = (0.87, 1.15)
    scale_range: tuple[float, float] = (0.25, 2.0)
    background_share: float = 0.5  # share of frames that get extra background
    background_photons: tuple[float, float] = (3.0, 60.0)  # log-uniform, per frame
    hot_pixels: float = 0.5  # Poisson mean per frame
    hot_pixel_photons: tuple[float, float] = (20.0, 500.0)
    read_noise_share: float = 0.5  # share of frames that get Gaussian detector read noise
    read_noise_photons: tuple[float, float] = (0.0, 0.15)  # its σ per pixel, uniform
    # other detectors' masks: on this share of frames, a larger beam-stop hole and gap (the
    # radius and the gap's full height uniform up to these, from the geometry's own)
    mask_share: float = 0.3
    max_hole_radius_px: float = 14.0
    max_gap_rows: float = 12.0
    # a multi-module detector's gaps across the centre (AGIPD's quadrants, a JUNGFRAU's
    # modules): on this share of frames a horizontal and a vertical band through the beam,
    # each of full width uniform up to max_cross_px, their centres off the beam by up to
    # cross_offset_px. Off in the shipped bundles: at 0.2 it lifted the default on AGIPD's
    # example quadrants from 0.44 to 0.53 (quadrants 10 px in: 0.50 to 0.77) but cost up to
    # 1.1 points on other quality rows (README)
    cross_share: float = 0.0
    max_cross_px: float = 40.0
    cross_offset_px: float = 12.0

    def as_dict(self) -> dict:
        return asdict(self)


def gap_fill_rows(geometry: DetectorGeometry) -> np.ndarray:
    """(H,) int32 source row of every row: identity, except the gap rows, which take mirrored
    copies of the rows above (upper half) and below (lower half)."""
    return _mirror_gap(geometry.valid_pixels().any(axis=1))


def binned_gap_fill_rows(geometry: DetectorGeometry) -> np.ndarray:
    """:func:`gap_fill_rows` on the 2×2 bins (the binned mask's empty rows)."""
    return _mirror_gap((np.asarray(ref.binned_mask(geometry)) > 0).any(axis=1))


def _mirror_gap(row_valid: np.ndarray) -> np.ndarray:
    """Source row of every row: the rows without a valid pixel (the gap) mirrored from its
    neighbours, the others themselves."""
    h = len(row_valid)
    rows = np.arange(h, dtype=np.int32)
    gap = np.flatnonzero(~row_valid)
    if gap.size == 0:
        return rows
    top, bottom = int(gap.min()), int(gap.max())
    mid = (top + bottom) / 2.0
    for r in gap:
        src = top - 1 - (r - top) if r <= mid else bottom + 1 + (bottom - r)
        rows[r] = min(max(src, 0), h - 1)
    return rows


def affine_transforms(angle, mirror, zoom, shift, centre):
    """(B, 8) projective transforms mapping output pixel (x, y) to input coordinates."""
    import tensorflow as tf

    cy, cx = centre
    c, s = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    a0, a1 = mirror * c, mirror * s
    b0, b1 = -s, c
    ox, oy = cx + shift[:, 1], cy + shift[:, 0]
    a2 = cx - a0 * ox - a1 * oy
    b2 = cy - b0 * ox - b1 * oy
    zeros = tf.zeros_like(angle)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def augment_geometry(
    frames,
    seed,
    geometry: DetectorGeometry | None = None,
    config: AugmentConfig | None = None,
    background=None,
):
    """Turned / mirrored / zoomed / shifted raw frames (B, H, W); ``seed``: (2,) ints. With
    ``background``: the frames' run maps as expected photons per 2×2 bin (B, h, w,
    :func:`trainer.model.preprocess_graph.background_sums`), moved like their frames at the
    binned resolution (4× cheaper than the full one; the map is smooth and an estimate
    anyway); returns ``(frames, maps)`` then."""
    import tensorflow as tf

    from trainer.model import preprocess_graph as graph

    geometry = geometry or DetectorGeometry()
    config = config or AugmentConfig()
    x = tf.convert_to_tensor(frames, tf.float32)
    x = tf.where(tf.math.is_finite(x), x, 0.0)  # negatives (offsets, noise) stay, as served
    n = tf.shape(x)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    two_pi = 2.0 * math.pi
    angle = tf.random.stateless_uniform([n], seeds[0], 0.0, two_pi if config.rotate else 0.0)
    flip = tf.random.stateless_uniform([n], seeds[1]) < (0.5 if config.mirror else 0.0)
    lo, hi = (math.log(z) for z in config.zoom_range)
    zoom = tf.exp(tf.random.stateless_uniform([n], seeds[2], lo, hi))
    d = config.shift_px
    shift = tf.random.stateless_uniform([n, 2], seeds[3], -d, d)
    x = tf.gather(x, tf.constant(gap_fill_rows(geometry)), axis=1)
    transforms = affine_transforms(
        angle, tf.where(flip, -1.0, 1.0), zoom, shift, geometry.center_px
    )
    moved = transform_frames(x, transforms, geometry.shape) * graph.mask_constant(geometry)
    if background is None:
        return moved
    m = tf.gather(tf.convert_to_tensor(background, tf.float32),
                  tf.constant(binned_gap_fill_rows(geometry)), axis=1)  # fmt: skip
    m = transform_frames(m, binned_transforms(transforms), ref.binned_shape(geometry))
    return moved, m * graph.binned_mask_constant(geometry)


def binned_transforms(transforms):
    """(B, 8) transforms of full-resolution pixels → the same map on 2×2 bins, whose centres
    sit at full-resolution ``2 q + 0.5``: the matrix stays, the offset becomes
    ``(M c + t − c) / 2`` with ``c = (0.5, 0.5)``."""
    import tensorflow as tf

    a0, a1, a2, b0, b1, b2 = (transforms[:, i] for i in range(6))
    c = 0.5 * (ref.BIN - 1)
    a2b = (a0 * c + a1 * c + a2 - c) / ref.BIN
    b2b = (b0 * c + b1 * c + b2 - c) / ref.BIN
    zeros = tf.zeros_like(a0)
    return tf.stack([a0, a1, a2b, b0, b1, b2b, zeros, zeros], axis=1)


def transform_frames(frames, transforms, shape: tuple[int, int]):
    """Nearest-neighbour resampling of (B, H, W) frames, or (B, H, W, C) stacks, by (B, 8)
    projective transforms."""
    import tensorflow as tf

    stacked = len(frames.shape) == 4
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=frames if stacked else tf.expand_dims(frames, -1),
        transforms=transforms,
        output_shape=tf.constant(list(shape), tf.int32),
        fill_value=0.0,
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )
    return out if stacked else out[..., 0]


def resample_photons(binned, scale, seed):
    """Counts with ``scale`` (B,) times the photons: thinning (≤ 1) or duplication (> 1).
    Drawn on the pixels or bins that hold a photon only (a few per cent of a frame), those
    with one photon as a Bernoulli draw: the distribution of binomial draws on all of them,
    at a fraction of the cost."""
    import tensorflow as tf

    whole = tf.floor(tf.maximum(binned, 0.0))  # negative values (offsets) scale as noise
    frac = binned - whole
    s = tf.reshape(scale, [-1, 1, 1])
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2)
    lit = tf.where(whole > 0)
    counts = tf.gather_nd(whole, lit)
    s_lit = tf.gather(scale, lit[:, 0])
    p = tf.where(s_lit <= 1.0, s_lit, s_lit - 1.0)
    drawn = tf.cast(tf.random.stateless_uniform(tf.shape(counts), seeds[0]) < p, tf.float32)
    many = tf.where(counts > 1)
    drawn = tf.tensor_scatter_nd_update(drawn, many, tf.random.stateless_binomial(
        tf.shape(many)[:1], seeds[1], counts=tf.gather_nd(counts, many),
        probs=tf.gather_nd(p, many), output_dtype=tf.float32,
    ))  # fmt: skip
    drawn = tf.scatter_nd(lit, drawn, tf.shape(binned, out_type=tf.int64))
    return tf.where(s <= 1.0, drawn, whole + drawn) + frac * s


def _scatter(bins, values, shape):
    """Sum ``values`` (B, K) into bins (B, K) of flat images (B, h*w) → (B, h, w)."""
    import tensorflow as tf

    n = tf.shape(bins)[0]
    size = shape[0] * shape[1]
    flat = bins + tf.range(n, dtype=bins.dtype)[:, None] * size
    out = tf.math.unsorted_segment_sum(tf.reshape(values, [-1]), tf.reshape(flat, [-1]), n * size)
    return tf.reshape(out, [n, shape[0], shape[1]])


def _grid_mask(geometry: DetectorGeometry, pixels: bool) -> np.ndarray:
    """Valid raw pixels (``pixels``) or valid bins, float64."""
    return np.array(ref.detector_mask(geometry) if pixels else ref.binned_mask(geometry), float)


def _background_weights(
    geometry: DetectorGeometry, pixels: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Flat and low-q photon distributions over the bins or pixels (each sums to 1)."""
    mask = _grid_mask(geometry, pixels)
    hb, wb = mask.shape
    cy, cx = geometry.center_px
    step = 1 if pixels else ref.BIN
    yy = (np.arange(hb) * step + (step - 1) / 2 - cy)[:, None]
    xx = (np.arange(wb) * step + (step - 1) / 2 - cx)[None, :]
    r0 = 2.0 * max(geometry.hole_radius_px, 2.0)
    lowq = mask / (1.0 + (yy**2 + xx**2) / r0**2) ** 2
    return mask.ravel() / mask.sum(), lowq.ravel() / lowq.sum()


def _cdf(weights: np.ndarray) -> np.ndarray:
    """Cumulative distribution of ``weights`` (float32, last entry exactly 1)."""
    c = np.cumsum(weights, dtype=np.float64)
    return (c / c[-1]).astype(np.float32)


def _sample_bins(cdf: np.ndarray, u, last: int):
    """Inverse-CDF draws: uniforms ``u`` (any shape) → bin indices (int32) of ``cdf``; bins
    of zero weight are never drawn (``last``: the last bin of non-zero weight)."""
    import tensorflow as tf

    flat = tf.reshape(u, [1, -1])
    idx = tf.searchsorted(tf.constant(cdf[None, :]), flat, side="right", out_type=tf.int32)
    return tf.reshape(tf.minimum(idx, last), tf.shape(u))


def augment_photons(
    binned,
    seed,
    geometry: DetectorGeometry | None = None,
    config: AugmentConfig | None = None,
    pixels: bool = False,
    with_scale: bool = False,
):
    """Photon-level, background and hot-pixel augmentation of binned counts (B, h, w), or
    of raw non-negative counts (B, H, W) with ``pixels``. ``with_scale``: also return the
    photon level (B,) each frame was scaled to (to scale its background map alike)."""
    import tensorflow as tf

    geometry = geometry or DetectorGeometry()
    config = config or AugmentConfig()
    b = tf.convert_to_tensor(binned, tf.float32)
    n = tf.shape(b)[0]
    shape = tuple(geometry.shape) if pixels else ref.binned_shape(geometry)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 9)
    lo, hi = config.scale_range
    scale = tf.ones([n])
    if (lo, hi) != (1.0, 1.0):
        log_s = tf.random.stateless_uniform([n], seeds[0], math.log(lo), math.log(hi))
        scale = tf.exp(log_s)
        b = resample_photons(b, scale, seeds[1])
    k = MAX_EXTRA_PHOTONS
    if config.background_share > 0:  # each photon from the low-q share f or the flat rest
        flat, lowq = _background_weights(geometry, pixels)
        last = int(np.flatnonzero(flat).max())
        f = tf.random.stateless_uniform([n, 1], seeds[2])
        blo, bhi = (math.log(v) for v in config.background_photons)
        level = tf.exp(tf.random.stateless_uniform([n], seeds[3], blo, bhi))
        level *= tf.cast(
            tf.random.stateless_uniform([n], seeds[4]) < config.background_share, tf.float32
        )
        count = tf.random.stateless_poisson([n], seeds[5], level, dtype=tf.int32)
        u = tf.random.stateless_uniform([2, n, k], seeds[6])
        bins = tf.where(
            u[0] < f,
            _sample_bins(_cdf(lowq), u[1], last),
            _sample_bins(_cdf(flat), u[1], last),
        )
        on = tf.cast(tf.range(k)[None, :] < count[:, None], tf.float32)
        b += _scatter(bins, on, shape)
    if config.hot_pixels > 0:  # uniform over the valid pixels (or bins)
        valid = np.flatnonzero(_grid_mask(geometry, pixels).ravel()).astype(np.int32)
        m = 4  # at most this many hot pixels per frame
        count = tf.random.stateless_poisson([n], seeds[7], config.hot_pixels, dtype=tf.int32)
        pick = tf.random.stateless_uniform([n, m], seeds[8], 0, len(valid), dtype=tf.int32)
        bins = tf.gather(tf.constant(valid), pick)
        plo, phi = config.hot_pixel_photons
        values = tf.random.stateless_uniform([n, m], seeds[8][::-1], plo, phi)
        values *= tf.cast(tf.range(m)[None, :] < count[:, None], tf.float32)
        b += _scatter(bins, values, shape)
    return (b, scale) if with_scale else b


def augment_mask(
    frames, seed, geometry: DetectorGeometry, config: AugmentConfig, keep_mask: bool = False
):
    """Raw frames (B, H, W) with, on a share of them, a larger central hole and gap set to 0,
    as another detector's beam stop and gap would leave them. Applied after read noise; for
    the models that see the block details also after the photon augmentation (for the
    others that runs on the bins afterwards and may put background photons there).
    ``keep_mask``: ``(frames, keep)`` with the (B, H, W) mask of the pixels left."""
    import tensorflow as tf

    if config.mask_share <= 0 and config.cross_share <= 0:
        if not keep_mask:
            return frames
        return frames, tf.ones_like(frames)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    n = tf.shape(frames)[0]
    h, w = geometry.shape
    cy, cx = geometry.center_px
    yy = tf.constant((np.arange(h) - cy)[:, None], tf.float32)
    xx = tf.constant((np.arange(w) - cx)[None, :], tf.float32)
    on = tf.random.stateless_uniform([n], seeds[0]) < config.mask_share
    r_lo, r_hi = geometry.hole_radius_px, max(geometry.hole_radius_px, config.max_hole_radius_px)
    g_lo, g_hi = geometry.gap_rows / 2.0, max(geometry.gap_rows, config.max_gap_rows) / 2.0
    r = tf.random.stateless_uniform([n], seeds[1], r_lo, r_hi)
    g = tf.random.stateless_uniform([n], seeds[2], g_lo, g_hi)
    r = tf.where(on, r, 0.0)[:, None, None]
    g = tf.where(on, g, 0.0)[:, None, None]
    keep = (yy**2 + xx**2 >= r**2) & (tf.abs(yy) >= g)
    if config.cross_share > 0:
        keep &= _cross_keep(n, seeds[3], yy, xx, config)
    keep = tf.cast(keep, frames.dtype)
    return (frames * keep, keep) if keep_mask else frames * keep


def _cross_keep(n, seed, yy, xx, config: AugmentConfig):
    """(B, H, W) bool: False in the horizontal and vertical bands of :func:`augment_mask`'s
    cross gaps (on ``config.cross_share`` of the frames), True elsewhere."""
    import tensorflow as tf

    s = tf.random.experimental.stateless_split(seed, 5)
    on = tf.random.stateless_uniform([n], s[0]) < config.cross_share
    half = config.max_cross_px / 2.0
    off = config.cross_offset_px

    def draw(k, lo, hi):
        return tf.random.stateless_uniform([n], s[k], lo, hi)[:, None, None]

    gy, gx = draw(1, 0.0, half), draw(2, 0.0, half)
    oy, ox = draw(3, -off, off), draw(4, -off, off)
    band = (tf.abs(yy - oy) < gy) | (tf.abs(xx - ox) < gx)
    return ~(band & on[:, None, None])


@lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """A fixed stream of standard normal draws that read noise takes windows from."""
    return np.random.default_rng(20261207).standard_normal(NOISE_BANK).astype(np.float32)


def add_read_noise(frames, seed, config: AugmentConfig):
    """Zero-mean Gaussian noise (σ per frame from ``read_noise_photons``) on a share of the
    raw frames (B, H, W), as a detector's pedestal/read noise after photon conversion. Each
    noisy frame takes a window at a random offset of a fixed stream of normal draws, with a
    random sign: independent pixels within a frame at a tenth of the cost of drawing them."""
    import tensorflow as tf

    if config.read_noise_share <= 0 or config.read_noise_photons[1] <= 0:
        return frames
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    n = tf.shape(frames)[0]
    size = math.prod(frames.shape[1:])
    lo, hi = config.read_noise_photons
    sigma = tf.random.stateless_uniform([n], seeds[0], lo, hi)
    sigma *= tf.where(tf.random.stateless_uniform([n], seeds[3]) < 0.5, -1.0, 1.0)
    on = tf.where(tf.random.stateless_uniform([n], seeds[1]) < config.read_noise_share)
    start = tf.random.stateless_uniform(
        tf.shape(on)[:1], seeds[2], 0, NOISE_BANK - size, dtype=tf.int32
    )
    windows = start[:, None] + tf.range(size)[None, :]
    noise = tf.gather(tf.constant(_noise_bank()), windows) * tf.gather(sigma, on)
    noise = tf.reshape(noise, tf.concat([[-1], tf.shape(frames)[1:]], 0))
    return tf.tensor_scatter_nd_add(frames, on, noise)


def augmented_inputs(
    frames,
    seed,
    geometry: DetectorGeometry | None = None,
    config: AugmentConfig | None = None,
    coarsen: int = 1,
    details: bool = False,
    background=None,
    shot_scale: bool = False,
):
    """Raw frames (and the run's background maps (B, H, W), for models that take them) →
    augmented network inputs: the training twin of ``graph.preprocess``. The maps follow
    their frames' geometry (at the binned resolution), mask and photon level; with
    ``shot_scale`` the excess is over each shot's fitted background level."""
    import tensorflow as tf

    from trainer.model import preprocess_graph as graph

    config = config or AugmentConfig()
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 3)
    geometry = geometry or DetectorGeometry()
    mask_seed = tf.random.experimental.stateless_split(seeds[2], 2)[1]
    lam = None
    if background is None:
        x = augment_geometry(frames, seeds[0], geometry, config)
    else:
        sums = graph.background_sums(background, geometry)
        x, lam = augment_geometry(frames, seeds[0], geometry, config, sums)
    x = add_read_noise(x, seeds[2], config) if not details else x
    if details:  # photons on raw pixels, then read noise and mask, then the preprocessing
        x, scale = augment_photons(x, seeds[1], geometry, config, pixels=True, with_scale=True)
        x = add_read_noise(x, seeds[2], config)
    x, keep = augment_mask(x, mask_seed, geometry, config, keep_mask=True)
    if details:
        clean, blocks = graph.bin_clean_details(x, geometry)
        binned = graph.cap_hot(clean)
    else:
        b, scale = augment_photons(graph.bin_clean(x, geometry), seeds[1], geometry, config,
                                   with_scale=True)  # fmt: skip
        binned = graph.cap_hot(graph.coarsen_bins(b, coarsen))
    parts = [graph.channels_first(binned)]
    if lam is not None:
        lam, beta = graph.background_levels(lam * scale[:, None, None] * binned_keep(keep), coarsen)
        d = graph.shot_excess(binned, beta, geometry, coarsen) if shot_scale else binned - beta
        parts = [graph.excess_channels_first(d)]
    if details:
        parts.append(graph.details_first(blocks, binned))
    if lam is not None:
        parts.append(graph.background_channel_first(lam, binned))
    x = tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]
    return tf.transpose(x, [0, 2, 3, 1])


def binned_keep(keep):
    """(B, H, W) pixel keep mask → (B, h, w): 1 for bins whose pixels are all kept."""
    import tensorflow as tf

    k = tf.nn.avg_pool2d(tf.expand_dims(keep, -1), ref.BIN, ref.BIN, padding="VALID")
    return tf.cast(tf.squeeze(k, -1) > 0.999, tf.float32)
