"""Frame preprocessing in TensorFlow ops, for training and for the exported ONNX graph.

Mirrors :mod:`hitstream.frame_kernel` step by step (same constants; a test checks parity).
Only ops that tf2onnx converts cleanly and onnxruntime runs fast on the CPU are used:
full-resolution work is one AveragePool; the rest runs on the 4× smaller binned image.
Learned the hard way: tf2onnx has no Log1p; a Select whose condition is not IsNaN/IsInf
becomes ``cond*x + (1-cond)*y``, which lets NaN through; a single-channel Conv is slow in
onnxruntime (so the neighbour sum is a SAME AveragePool, one padded ONNX op); stacking
channels last costs a copy plus a transpose (so the two channels are one broadcast Mul
in NCHW order, whose transpose tf2onnx cancels).

Constants (masks) are created inside the calling function, so a ``tf.function`` embeds
them in its graph instead of capturing them as inputs.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from hitstream import frame_kernel as ref
from hitstream.errors import ConfigError
from hitstream.geometry import DetectorGeometry


def mask_constant(geometry: DetectorGeometry | None = None) -> tf.Tensor:
    """The full-resolution detector mask as a (H, W) float32 constant."""
    return tf.constant(np.array(ref.detector_mask(geometry)), dtype=tf.float32)


def binned_mask_constant(geometry: DetectorGeometry | None = None) -> tf.Tensor:
    """The binned mask as a (h, w) float32 constant."""
    return tf.constant(np.array(ref.binned_mask(geometry)), dtype=tf.float32)


def bin_clean(frames: tf.Tensor, geometry: DetectorGeometry | None = None) -> tf.Tensor:
    """Raw (B, H, W) → binned, clipped, NaN-free, masked counts (B, h, w).

    The 2×2 sum is an average times 4, the 4 folded into the mask constant."""
    x = tf.expand_dims(tf.convert_to_tensor(frames, dtype=tf.float32), -1)
    b = tf.squeeze(tf.nn.avg_pool2d(x, ref.BIN, ref.BIN, padding="VALID"), -1)
    return _clean_sums(b, float(ref.BIN**2), geometry)


def _clean_sums(b: tf.Tensor, scale: float, geometry: DetectorGeometry | None) -> tf.Tensor:
    """Block sums divided by ``scale`` (B, h, w) → cleaned counts. NaN removal (an
    elementwise Where, slow in onnxruntime) runs only for batches that are not all finite:
    one sum over the batch decides, an ONNX ``If`` whose branches both compute the result
    (a branch that returned an outer tensor would copy it)."""
    mask = binned_mask_constant(geometry) * scale

    def clean() -> tf.Tensor:
        return tf.clip_by_value(b - ref.NOISE_FLOOR / scale, 0.0, ref.PIXEL_MAX / scale) * mask

    def clean_nan() -> tf.Tensor:
        c = clean()
        return tf.where(tf.math.is_nan(c), 0.0, c)

    return tf.cond(_all_finite(b), clean, clean_nan)


def _all_finite(*tensors: tf.Tensor) -> tf.Tensor:
    """A scalar: whether every value of the tensors is finite (their sum, minus itself, is
    0 only then; a NaN or ±Inf anywhere, or an overflowing sum, makes it NaN)."""
    total = tf.add_n([tf.reduce_sum(t) for t in tensors])
    return tf.logical_not(tf.math.is_nan(total - total))


def _haar_kernel() -> tf.Tensor:
    """(2, 2, 1, 4) Conv kernel: a 2×2 block's sum and its row, column, diagonal details."""
    k = np.array(
        [[[1, 1], [1, 1]], [[1, 1], [-1, -1]], [[1, -1], [1, -1]], [[1, -1], [-1, 1]]],
        np.float32,
    )
    return tf.constant(k.transpose(1, 2, 0)[:, :, None, :])


def block_details(frames: tf.Tensor) -> tf.Tensor:
    """Raw (B, H, W) → (B, h, w, 4) block sums and Haar details (one strided Conv)."""
    x = tf.expand_dims(tf.convert_to_tensor(frames, dtype=tf.float32), -1)
    return tf.nn.conv2d(x, _haar_kernel(), ref.BIN, padding="VALID")


def bin_clean_details(
    frames: tf.Tensor, geometry: DetectorGeometry | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Raw (B, H, W) → (cleaned counts (B, h, w) as :func:`bin_clean`, blocks (B, h, w, 4))."""
    blocks = block_details(frames)
    return _clean_sums(blocks[..., 0], 1.0, geometry), blocks


def details_first(blocks: tf.Tensor, binned: tf.Tensor) -> tf.Tensor:
    """(B, h, w, 4) blocks, (B, h, w) cleaned (capped) bins → (B, 3, h, w) detail z-scores.

    Built per channel on (B, h, w) slices and stacked channels-first, so that, concatenated
    with :func:`channels_first` and transposed once, no layout copy is left in ONNX. Values
    that are not finite become 0, in the branch of an ONNX ``If`` that runs only for
    batches that have them (both branches compute the result: one that returned an outer
    tensor would copy it)."""
    gate = binned / (tf.maximum(blocks[..., 0], 1.0) * tf.sqrt(binned + 1.0))
    d = [blocks[..., k] for k in (1, 2, 3)]

    def z() -> tf.Tensor:
        return tf.stack([dk * gate for dk in d], axis=1)

    return tf.cond(_all_finite(blocks), z, lambda: _zero_non_finite(z()))


def _zero_non_finite(x: tf.Tensor) -> tf.Tensor:
    """NaN and ±Inf → 0, as two Wheres on IsNaN / IsInf (the only conditions that tf2onnx
    keeps a true Where for; ``is_finite`` would become arithmetic that lets NaN through)."""
    x = tf.where(tf.math.is_nan(x), 0.0, x)
    return tf.where(tf.math.is_inf(x), 0.0, x)


def cap_hot(binned: tf.Tensor) -> tf.Tensor:
    """Each bin capped at HOT_ABS + HOT_REL × mean of its 8 neighbours."""
    mean = tf.squeeze(tf.nn.avg_pool2d(tf.expand_dims(binned, -1), 3, 1, padding="SAME"), -1)
    # HOT_ABS + HOT_REL/8 * (9 * mean - b); the window mean counts bins inside the frame only
    cap = ref.HOT_ABS + (9.0 * ref.HOT_REL / 8.0) * mean - (ref.HOT_REL / 8.0) * binned
    return tf.minimum(binned, cap)


def bin_frames(frames: tf.Tensor, geometry: DetectorGeometry | None = None) -> tf.Tensor:
    """Raw (B, H, W) → cleaned binned photon counts (B, h, w); see :mod:`hitstream.frame_kernel`."""
    return cap_hot(bin_clean(frames, geometry))


def channels_first(binned: tf.Tensor) -> tf.Tensor:
    """(B, h, w) cleaned binned counts → (B, 2, h, w): ``sqrt(b)`` times per-frame scales."""
    s = tf.expand_dims(tf.sqrt(binned), 1)
    mean = tf.reduce_mean(binned, axis=[1, 2])
    level = tf.fill(tf.shape(mean), 1.0 / ref.LEVEL_SCALE)
    scales = tf.stack([level, tf.math.rsqrt(mean + ref.SHAPE_EPS)], axis=1)
    return s * tf.reshape(scales, [-1, 2, 1, 1])


def excess_channels_first(d: tf.Tensor) -> tf.Tensor:
    """The excess ``b − β`` (B, h, w) → (B, 2, h, w): the level signed, the shape of
    ``max(d, 0)`` (:func:`hitstream.frame_kernel.excess_channels`)."""
    pos = tf.nn.relu(d)
    mean = tf.reduce_mean(pos, axis=[1, 2], keepdims=True)
    # sign(d)·sqrt|d| without Sign (slow in onnxruntime); the 1e-30 only keeps d = 0 at 0
    level = d * tf.math.rsqrt(tf.abs(d) + 1e-30) * (1.0 / ref.LEVEL_SCALE)
    shape = tf.sqrt(pos) * tf.math.rsqrt(mean + ref.SHAPE_EPS)
    return tf.stack([level, shape], axis=1)


def channels(binned: tf.Tensor) -> tf.Tensor:
    """(B, h, w) cleaned binned counts → (B, h, w, 2) network input.

    Both channels are ``sqrt(b)`` times a per-frame scale, built as ONE broadcast multiply
    into (B, 2, h, w) and transposed to channels-last; tf2onnx cancels that transpose
    against the one it puts before the first convolution (NCHW), so no copy remains."""
    return tf.transpose(channels_first(binned), [0, 2, 3, 1])


def coarsen_bins(binned: tf.Tensor, k: int) -> tf.Tensor:
    """Sum k×k blocks of binned counts (B, h, w) → (B, h//k, w//k) (one AveragePool)."""
    if k == 1:
        return binned
    pooled = tf.nn.avg_pool2d(tf.expand_dims(binned, -1), k, k, padding="VALID")
    return tf.squeeze(pooled, -1) * float(k * k)


def background_sums(background: tf.Tensor, geometry: DetectorGeometry | None = None) -> tf.Tensor:
    """The run's map (B', H, W) → expected photons per 2×2 bin (B', h, w): masked, clipped,
    NaN-free, not yet capped (the first half of :func:`background_bins`)."""
    m = tf.expand_dims(tf.convert_to_tensor(background, dtype=tf.float32), -1)
    lam = tf.squeeze(tf.nn.avg_pool2d(m, ref.BIN, ref.BIN, padding="VALID"), -1)
    lam = tf.clip_by_value(lam, 0.0, ref.PIXEL_MAX / ref.BIN**2)
    lam = lam * (binned_mask_constant(geometry) * float(ref.BIN**2))
    return tf.cond(
        tf.math.is_nan(tf.reduce_sum(lam)),
        lambda: tf.where(tf.math.is_nan(lam), 0.0, lam),
        lambda: lam,
    )


def background_levels(lam: tf.Tensor, coarsen: int = 1) -> tuple[tf.Tensor, tf.Tensor]:
    """Expected photons per 2×2 bin (B', h, w) → (λ, β) of the network's grid, hot-capped
    (the second half of :func:`background_bins`)."""
    beta = lam - ref.NOISE_FLOOR * (1.0 - tf.exp(-lam))
    return cap_hot(coarsen_bins(lam, coarsen)), cap_hot(coarsen_bins(beta, coarsen))


def background_bins(
    background: tf.Tensor, geometry: DetectorGeometry | None = None, coarsen: int = 1
) -> tuple[tf.Tensor, tf.Tensor]:
    """The run's map (B', H, W) → (λ, β) (B', h, w): expected photons per bin and what an
    empty bin holds after cleaning (:func:`hitstream.frame_kernel.background_bins`)."""
    return background_levels(background_sums(background, geometry), coarsen)


def fit_shot_scale(
    binned: tf.Tensor, beta: tf.Tensor, geometry: DetectorGeometry | None = None,
    coarsen: int = 1,
) -> tf.Tensor:  # fmt: skip
    """Cleaned bins (B, h, w), β (B', h, w) → each shot's background scale (B, 1, 1)
    (:func:`hitstream.frame_kernel.fit_shot_scale`: ring sums as one MatMul, the median
    ring by TopK)."""
    rings = tf.constant(ref.shot_rings(geometry, coarsen))
    n = int(rings.shape[0])
    cap = beta + 3.0 * tf.sqrt(beta) + 2.0
    num = tf.matmul(tf.reshape(tf.minimum(binned, cap), [-1, n]), rings)
    den = tf.matmul(tf.reshape(beta, [-1, n]), rings)
    ratio = (num + ref.SHOT_PRIOR) / (den + ref.SHOT_PRIOR)
    median = tf.math.top_k(ratio, k=ref.SHOT_RINGS // 2 + 1).values[:, -1]
    return tf.reshape(tf.clip_by_value(median, *ref.SHOT_RANGE), [-1, 1, 1])


def shot_excess(
    binned: tf.Tensor, beta: tf.Tensor, geometry: DetectorGeometry | None = None,
    coarsen: int = 1,
) -> tf.Tensor:  # fmt: skip
    """The excess over this shot's background, ``b − s·β`` (B, h, w)."""
    return binned - fit_shot_scale(binned, beta, geometry, coarsen) * beta


def background_channel_first(lam: tf.Tensor, binned: tf.Tensor) -> tf.Tensor:
    """λ (B', h, w) → the (B, 1, h, w) background channel (:mod:`hitstream.frame_kernel`
    step 6), broadcast to the batch."""
    level = tf.sqrt(lam) * (1.0 / ref.LEVEL_SCALE)
    return tf.expand_dims(tf.broadcast_to(level, tf.shape(binned)), 1)


def preprocess(
    frames: tf.Tensor,
    geometry: DetectorGeometry | None = None,
    coarsen: int = 1,
    details: bool = False,
    background: tf.Tensor | None = None,
    shot_scale: bool = False,
) -> tuple[tf.Tensor, tf.Tensor]:
    """Raw frames (B, H, W) → (network input (B, h, w, 2 or 5, + 1 with a background),
    photons (B,)); ``background``: the run's map (B or 1, H, W); ``shot_scale``: fit each
    shot's background level (:mod:`hitstream.frame_kernel` step 7)."""
    out = network_inputs(frames, geometry, coarsen, details, background, shot_scale)
    return out["images"], out["photons"]


def network_inputs(
    frames: tf.Tensor,
    geometry: DetectorGeometry | None,
    coarsen: int,
    details: bool,
    background: tf.Tensor | None = None,
    shot_scale: bool = False,
) -> dict[str, tf.Tensor | None]:
    """The one place that chains the steps, for training and for the exported graph
    (``shot_scale``: step 7 of :mod:`hitstream.frame_kernel`).

    Keys: ``images`` (network input, channels last), ``photons``, ``binned`` (cleaned 2×2
    bins; None when coarsened), ``signal`` (what the template matcher compares: the bins
    above the background, else the bins; None when coarsened) and, with a background,
    ``excess_photons``. Channels are built first (B, C, h, w) and transposed once, which
    tf2onnx cancels against the transpose before the first convolution."""
    if details and coarsen != 1:
        raise ConfigError("detail channels need the 2x2-binned image (coarsen 1)")
    if details:
        clean, blocks = bin_clean_details(frames, geometry)
        binned = cap_hot(clean)
    else:
        binned = cap_hot(coarsen_bins(bin_clean(frames, geometry), coarsen))
    fine = coarsen == 1
    out: dict[str, tf.Tensor | None] = {
        "photons": tf.reduce_sum(binned, axis=[1, 2]),
        "binned": binned if fine else None,
        "signal": binned if fine else None,
    }
    lam = None
    parts = [channels_first(binned)]
    if background is not None:
        lam, beta = background_bins(background, geometry, coarsen)
        d = binned - beta
        out["excess_photons"] = tf.reduce_sum(d, axis=[1, 2])
        out["signal"] = tf.nn.relu(d) if fine else None
        d_shot = shot_excess(binned, beta, geometry, coarsen) if shot_scale else d
        parts = [excess_channels_first(d_shot)]
    if details:
        parts.append(details_first(blocks, binned))
    if lam is not None:
        parts.append(background_channel_first(lam, binned))
    x = tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]
    out["images"] = tf.transpose(x, [0, 2, 3, 1])
    return out
