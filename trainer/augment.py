"""Training-time augmentations of raw frames that respect diffraction physics (TF ops).

Applied in the tf.data pipeline to batches of raw photon-count frames, before the
preprocessing; never part of the exported graph. With stateless random ops and a per-batch
seed, a run is reproducible.

- photon level: a factor ``s`` per frame, log-uniform in ``scale_range``. ``s ≤ 1``: binomial
  thinning of the counts (exactly a run with ``s`` times the fluence); ``s > 1``: each photon
  is duplicated with probability ``s − 1`` (right mean, somewhat over-dispersed).
- geometry: in-plane rotation about the beam centre by any angle (which includes the
  centrosymmetric 180° turn), a mirror image (the pattern of the mirrored particle), and a
  small shift of the centre (± ``shift_px``), nearest-neighbour so counts stay counts.
  Before the turn, the gap rows are filled with mirrored copies of their neighbours, so
  that a turned frame does not carry a turned gap; afterwards the detector mask is applied
  again (hole and gap back at their true places).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import tensorflow as tf

from streamer.geometry import DetectorGeometry
from trainer import preprocess as ref


@dataclass(frozen=True)
class AugmentConfig:
    """Which augmentations to apply (all on by default)."""

    rotate: bool = True
    mirror: bool = True
    shift_px: float = 2.0
    scale_range: tuple[float, float] = (0.5, 2.0)
    resample: bool = True

    def as_dict(self) -> dict:
        return asdict(self)


def gap_fill_rows(geometry: DetectorGeometry) -> np.ndarray:
    """(H,) int32 source row of every row: identity, except the gap rows, which take mirrored
    copies of the rows above (upper half) and below (lower half)."""
    h = geometry.shape[0]
    rows = np.arange(h, dtype=np.int32)
    valid_rows = geometry.valid_pixels().any(axis=1)
    gap = np.flatnonzero(~valid_rows)
    if gap.size == 0:
        return rows
    top, bottom = int(gap.min()), int(gap.max())
    mid = (top + bottom) / 2.0
    for r in gap:
        src = top - 1 - (r - top) if r <= mid else bottom + 1 + (bottom - r)
        rows[r] = min(max(src, 0), h - 1)
    return rows


def _transforms(angle: tf.Tensor, mirror: tf.Tensor, shift: tf.Tensor, centre) -> tf.Tensor:
    """(B, 8) projective transforms mapping output pixel (x, y) to input coordinates."""
    cy, cx = centre
    c, s = tf.cos(angle), tf.sin(angle)
    a0, a1 = mirror * c, mirror * s
    b0, b1 = -s, c
    ox, oy = cx + shift[:, 1], cy + shift[:, 0]
    a2 = cx - a0 * ox - a1 * oy
    b2 = cy - b0 * ox - b1 * oy
    zeros = tf.zeros_like(angle)
    return tf.stack([a0, a1, a2, b0, b1, b2, zeros, zeros], axis=1)


def resample_photons(frames: tf.Tensor, scale: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """Frames with ``scale`` (B,) times the photons: thinning (≤ 1) or duplication (> 1)."""
    x = tf.maximum(frames, 0.0)
    whole = tf.floor(x)
    frac = x - whole
    s = tf.reshape(scale, [-1, 1, 1])
    p = tf.broadcast_to(tf.where(s <= 1.0, s, s - 1.0), tf.shape(x))
    drawn = tf.random.stateless_binomial(
        tf.shape(x), seed, counts=whole, probs=p, output_dtype=tf.float32
    )
    return tf.where(s <= 1.0, drawn + frac * s, whole + drawn + frac * s)


def augment_frames(
    frames: tf.Tensor,
    seed: tf.Tensor,
    geometry: DetectorGeometry | None = None,
    config: AugmentConfig = AugmentConfig(),
) -> tf.Tensor:
    """Augment a batch of raw frames (B, H, W); ``seed`` is a (2,) int tensor."""
    geometry = geometry or DetectorGeometry()
    x = tf.convert_to_tensor(frames, tf.float32)
    x = tf.where(tf.math.is_finite(x), tf.maximum(x, 0.0), 0.0)
    n = tf.shape(x)[0]
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 5)
    lo, hi = config.scale_range
    if config.resample and (lo, hi) != (1.0, 1.0):
        log_s = tf.random.stateless_uniform([n], seeds[0], math.log(lo), math.log(hi))
        x = resample_photons(x, tf.exp(log_s), seeds[1])
    if config.rotate or config.mirror or config.shift_px > 0:
        angle = (
            tf.random.stateless_uniform([n], seeds[2], 0.0, 2.0 * math.pi)
            if config.rotate
            else tf.zeros([n])
        )
        flip = tf.random.stateless_uniform([n], seeds[3]) < (0.5 if config.mirror else 0.0)
        mirror = tf.where(flip, -1.0, 1.0)
        shift = tf.random.stateless_uniform([n, 2], seeds[4], -config.shift_px, config.shift_px)
        x = tf.gather(x, tf.constant(gap_fill_rows(geometry)), axis=1)
        h, w = geometry.shape
        x = tf.raw_ops.ImageProjectiveTransformV3(
            images=tf.expand_dims(x, -1),
            transforms=_transforms(angle, mirror, shift, geometry.center_px),
            output_shape=tf.constant([h, w], tf.int32),
            fill_value=0.0,
            interpolation="NEAREST",
            fill_mode="CONSTANT",
        )[..., 0]
        x = x * tf.constant(np.array(ref.detector_mask(geometry)))
    return x
