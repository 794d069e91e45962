"""Polar template matching in TensorFlow ops, for the ONE exported ONNX graph.

The same maths as :class:`trainer.templates.bank.PolarMatcher` (a test checks that both agree
and that tf2onnx + onnxruntime reproduce them), built only from ops that tf2onnx converts
and onnxruntime runs on the CPU: Gather, MatMul (the DFTs are GEMMs with fixed cos/sin
matrices, no ``tf.signal``), Reshape, Transpose, Concat/Slice, Reduce*, ArgMax/ArgMin,
OneHot, Sqrt, Min/Max. No Python loops depend on the data.

Usage inside the exported function (the bank's arrays become graph constants, created
inside the call, so a ``tf.function`` embeds them instead of capturing inputs)::

    match = make_template_matcher(load_bank("bank.h5"))

    @tf.function(input_signature=[tf.TensorSpec([None, 260, 257], tf.float32)])
    def infer(frames):
        binned = preprocess_graph.bin_frames(frames)   # shared with the CNN's input
        return {..., **match.from_binned(binned)}

It takes the cleaned 2×2 bins, not raw frames, so that it never bins twice and this
module needs nothing of :mod:`trainer.model`
(:func:`trainer.model.inference_graph.template_function` is the matcher on raw frames).

Outputs: ``template_distance`` (B,) float32 (L2 distance to the nearest template of the
normalised polar signals, 0 … 2; see :mod:`trainer.templates.bank`), ``template_index`` (B,)
int32 (row of the bank), ``template_angle_deg`` (B,) float32 in [0, 180) (in-plane
rotation of that template that fits the frame, counter-clockwise as displayed with row 0
on top).

Only this module (and :mod:`trainer.model.preprocess_graph`) imports TensorFlow.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import tensorflow as tf

from hitstream.errors import ConfigError
from trainer.templates.bank import TemplateBank
from trainer.templates.matching import PolarMatcher

OUTPUTS: dict[str, dict[str, Any]] = {
    "template_distance": {
        "shape": [None],
        "dtype": "float32",
        "description": "L2 distance of the frame's normalised polar signal (Poisson noise "
        "taken out) to the nearest template at its best in-plane rotation: 0 = as close as "
        "the noise allows, sqrt(2) = unrelated, 2 = opposite",
    },
    "template_index": {
        "shape": [None],
        "dtype": "int32",
        "description": "index of the nearest template in the bank",
    },
    "template_angle_deg": {
        "shape": [None],
        "dtype": "float32",
        "description": "in-plane rotation (degrees, 0-180) of the nearest template",
    },
}


class TemplateMatcherGraph:
    """The polar matching of a bank as TF ops: cleaned 2×2 bins (B, h, w) → :data:`OUTPUTS`."""

    def __init__(self, bank: TemplateBank) -> None:
        if bank.mode != "polar":
            raise ConfigError(f"the graph matcher needs a polar template bank, got {bank.mode!r}")
        ref = PolarMatcher(bank.features, bank.templates)
        f = bank.features
        cfg = f.config
        rad, ang = f.smoothing
        self.geometry = bank.geometry
        self.n_radii = f.grid.n_radii
        self.n_angles = f.grid.n_angles
        self.n_harmonics = cfg.n_harmonics
        self.n_templates = ref.n_templates
        self.channels = cfg.channels
        self.fine_step = 180.0 / cfg.fine_shifts
        self._arrays: dict[str, np.ndarray] = {
            "index": f.map.index.astype(np.int32),
            "weight": f.map.weight,
            "rad": rad,
            "ang": ang,
            "dft": f.dft,
            "row_scale": f.row_scale,  # (C*R, 1, K)
            "w_re": ref.w_re,
            "w_im": ref.w_im,
            "energy": ref.energy,
            "basis": ref.basis,
            "fine_basis": ref.fine_basis,
            "noise": f.noise_vector[:, None],  # (h*w, 1)
        }
        self.noise_floor = float(cfg.noise_floor)
        self.frame_energy = float(ref.frame_energy)

    def _const(self, name: str) -> tf.Tensor:
        return tf.constant(self._arrays[name])

    def from_binned(
        self, binned: tf.Tensor, counts: tf.Tensor | None = None
    ) -> dict[str, tf.Tensor]:
        """Cleaned 2×2 bins (B, h, w) (:func:`trainer.model.preprocess_graph.bin_frames`), or
        what stands above the run's background with ``counts`` the cleaned bins themselves:
        the signal is matched, the Poisson noise is estimated from all the counts."""
        r, a, k, t = self.n_radii, self.n_angles, self.n_harmonics, self.n_templates
        b = tf.convert_to_tensor(binned, tf.float32)
        # gather whole rows of a pixel-major (P, B) layout: each index copies B floats
        flat = tf.reshape(b, [tf.shape(b)[0], -1])
        c = flat if counts is None else tf.reshape(counts, [tf.shape(b)[0], -1])
        noise = tf.reshape(tf.matmul(c, self._const("noise")), [-1, 1, 1, 1])
        flat_t = tf.transpose(flat)
        picked = tf.gather(flat_t, self._const("index"))  # (cells, J, B)
        cells_t = tf.matmul(tf.expand_dims(self._const("weight"), 1), picked)  # (cells, 1, B)
        cells = tf.reshape(tf.transpose(tf.squeeze(cells_t, 1)), [-1, r, a])
        signals = []
        for name, _ in self.channels:
            if name == "linear":
                signals.append(cells)
            else:
                s = tf.transpose(
                    tf.matmul(tf.transpose(cells, [1, 0, 2]), self._const("ang")), [1, 0, 2]
                )
                s = tf.matmul(tf.expand_dims(self._const("rad"), 0), s)
                signals.append(tf.sqrt(tf.maximum(s, 0.0)))
        sig = tf.concat(signals, axis=1) if len(signals) > 1 else signals[0]
        rows = r * len(self.channels)
        spec = tf.reshape(tf.matmul(tf.reshape(sig, [-1, a]), self._const("dft")), [-1, rows, 2, k])
        spec = spec * self._const("row_scale")
        parts = []
        for c, (name, w) in enumerate(self.channels):
            part = spec[:, c * r : (c + 1) * r]
            e = tf.reduce_sum(tf.square(part), axis=[1, 2, 3], keepdims=True)
            if name == "linear":  # signal energy of the frame: Poisson noise taken out
                e = tf.maximum(e - noise, self.noise_floor * e)
            parts.append(part * (float(np.sqrt(w)) * tf.math.rsqrt(tf.maximum(e, 1e-30))))
        spec = tf.concat(parts, axis=1) if len(parts) > 1 else parts[0]
        x = tf.reshape(tf.transpose(spec, [3, 0, 2, 1]), [k, -1, 2 * rows])  # (K, B, 2R)
        c_re = tf.matmul(x, self._const("w_re"))  # (K, B, T)
        c_im = tf.matmul(x, self._const("w_im"))
        cross = tf.transpose(tf.concat([c_re, c_im], axis=0), [1, 2, 0])  # (B, T, 2K)
        corr = tf.matmul(tf.reshape(cross, [-1, 2 * k]), self._const("basis"))
        corr = tf.reshape(corr, [-1, t, self._arrays["basis"].shape[1]])
        _, _, peak = _peak(corr)
        energy = self._const("energy")
        d2 = self.frame_energy + tf.expand_dims(energy, 0) - 2.0 * peak
        best = tf.argmin(d2, axis=1, output_type=tf.int32)
        pick = tf.one_hot(best, t, dtype=tf.float32)  # (B, T)
        cb = tf.reduce_sum(cross * tf.expand_dims(pick, -1), axis=1)  # (B, 2K)
        i, delta, fine = _peak(tf.matmul(cb, self._const("fine_basis")))
        d2_best = (
            self.frame_energy + tf.reduce_sum(pick * tf.expand_dims(energy, 0), axis=1) - 2.0 * fine
        )
        angle = (tf.cast(i, tf.float32) + delta) * self.fine_step
        angle = tf.math.floormod(angle, 180.0)
        return {
            "template_distance": tf.sqrt(tf.maximum(d2_best, 0.0)),
            "template_index": best,
            "template_angle_deg": angle,
        }


def _peak(corr: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Circular peak along the last axis: (argmax, sub-sample offset, parabola height)."""
    n = corr.shape[-1]
    i = tf.argmax(corr, axis=-1, output_type=tf.int32)
    pick = tf.one_hot(i, n, dtype=tf.float32)
    prev = tf.concat([corr[..., -1:], corr[..., :-1]], axis=-1)  # prev[s] = corr[s - 1]
    nxt = tf.concat([corr[..., 1:], corr[..., :1]], axis=-1)  # nxt[s] = corr[s + 1]
    y0 = tf.reduce_sum(corr * pick, -1)
    ym = tf.reduce_sum(prev * pick, -1)
    yp = tf.reduce_sum(nxt * pick, -1)
    denom = tf.minimum(ym - 2.0 * y0 + yp, -1e-12)  # <= 0 at a maximum
    delta = tf.clip_by_value(0.5 * (ym - yp) / denom, -0.5, 0.5)
    return i, delta, y0 - 0.25 * (ym - yp) * delta


def make_template_matcher(bank: TemplateBank) -> TemplateMatcherGraph:
    """The polar matching of ``bank`` as TensorFlow ops (see the module docstring)."""
    return TemplateMatcherGraph(bank)
