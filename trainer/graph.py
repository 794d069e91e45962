"""Frame preprocessing in TensorFlow ops, for training and for the exported ONNX graph.

Mirrors :mod:`trainer.preprocess` step by step (same constants; a test checks parity).
Only ops that tf2onnx converts cleanly are used: IsFinite/Where, Maximum/Minimum, a fixed
3×3 convolution, average pooling, Log, Sqrt, ReduceMean (tf2onnx has no Log1p).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from streamer.geometry import DetectorGeometry
from trainer import preprocess as ref


def mask_constant(geometry: DetectorGeometry | None = None) -> tf.Tensor:
    """The detector mask as a (H, W) float32 graph constant."""
    return tf.constant(np.array(ref.detector_mask(geometry)), dtype=tf.float32)


def _neighbour_kernel() -> tf.Tensor:
    k = np.ones((3, 3, 1, 1), dtype=np.float32)
    k[1, 1, 0, 0] = 0.0
    return tf.constant(k)


def clean_frames(frames: tf.Tensor, geometry: DetectorGeometry | None = None) -> tf.Tensor:
    """Finite, non-negative, masked, hot pixels capped: (B, H, W) → (B, H, W)."""
    x = tf.convert_to_tensor(frames, dtype=tf.float32)
    x = tf.where(tf.math.is_finite(x), x, tf.zeros_like(x))
    x = tf.maximum(x, 0.0) * mask_constant(geometry)
    x4 = x[..., tf.newaxis]
    neigh = tf.nn.conv2d(x4, _neighbour_kernel(), strides=1, padding="SAME")
    cap = ref.HOT_ABS + (ref.HOT_REL / 8.0) * neigh
    return tf.minimum(x4, cap)[..., 0]


def preprocess(
    frames: tf.Tensor, geometry: DetectorGeometry | None = None
) -> tuple[tf.Tensor, tf.Tensor]:
    """Raw frames (B, H, W) → (network input (B, h, w, 3), photons (B,))."""
    clean = clean_frames(frames, geometry)
    photons = tf.reduce_sum(clean, axis=[1, 2])
    pooled = tf.nn.avg_pool2d(clean[..., tf.newaxis], ref.BIN, ref.BIN, padding="VALID")
    b = pooled * float(ref.BIN * ref.BIN)
    level = tf.math.log(b + 1.0) * (1.0 / ref.LEVEL_SCALE)
    mean = tf.reduce_mean(b, axis=[1, 2], keepdims=True)
    shape = tf.sqrt(b / (mean + ref.SHAPE_EPS))
    radius = tf.constant(ref.radius_channel(geometry))[tf.newaxis, :, :, tf.newaxis]
    radius = tf.broadcast_to(radius, tf.shape(b))
    return tf.concat([level, shape, radius], axis=-1), photons
