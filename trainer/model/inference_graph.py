"""The exported graph: raw frames → preprocessing → CNN (+ template matcher) → named outputs.

:func:`inference_function` is what :mod:`trainer.model.export` converts to ONNX; it chains
:mod:`trainer.model.preprocess_graph` (the TensorFlow twin of :mod:`hitstream.frame_kernel`),
the Keras CNN and, with a polar template bank, :mod:`trainer.templates.graph` on the same
binned frames (one binning per frame). :func:`template_function` is the matcher alone.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from hitstream import frame_kernel as ref
from hitstream.errors import ConfigError
from hitstream.geometry import DetectorGeometry
from trainer.model.preprocess_graph import bin_frames, network_inputs
from trainer.templates.bank import TemplateBank
from trainer.templates.graph import make_template_matcher


def model_coarsen(model, geometry: DetectorGeometry | None = None) -> int:
    """How much coarser than the binned image the model's input is (1 or 2)."""
    hb, wb = ref.binned_shape(geometry)
    h = int(model.input_shape[1])
    k = hb // h
    if k < 1 or (hb // k, wb // k) != tuple(model.input_shape[1:3]):
        raise ConfigError(f"model input {model.input_shape[1:3]} fits no coarsening of {hb, wb}")
    return k


def model_details(model) -> bool:
    """Whether the model takes the detail channels (5 input channels, not 2)."""
    c = int(model.input_shape[-1])
    if c not in (len(ref.CHANNELS), len(ref.CHANNELS) + len(ref.DETAIL_CHANNELS)):
        raise ConfigError(f"model input has {c} channels; expected 2 or 5")
    return c != len(ref.CHANNELS)


OUTPUTS: dict[str, dict] = {
    "probabilities": {
        "shape": [None, "C"],
        "dtype": "float32",
        "description": "softmax class probabilities; column i is classes[i]",
    },
    "photons": {
        "shape": [None],
        "dtype": "float32",
        "description": (
            "photons per frame on valid bins after cleaning (2x2 bins that touch neither "
            "the beam-stop hole nor the gap; noise floor subtracted from each bin; "
            "negatives, NaN and hot pixels removed)"
        ),
    },
}


def inference_function(model, geometry: DetectorGeometry | None = None, bank=None):
    """A ``tf.function`` from raw frames ``(B, H, W)`` float32 (input ``frames``) to the
    named outputs of :data:`OUTPUTS`: the graph that is exported to ONNX.

    With a polar :class:`trainer.templates.bank.TemplateBank` it also returns the template
    matcher's outputs (:data:`trainer.templates.graph.OUTPUTS`), computed from the same
    binned frames as the CNN's input (one binning per frame)."""
    geometry = geometry or DetectorGeometry()
    h, w = geometry.shape
    k = model_coarsen(model, geometry)
    details = model_details(model)
    match = None
    if bank is not None and k != 1:
        raise ConfigError("a template bank needs a model on the 2x2-binned image (coarsen 1)")
    if bank is not None:
        if bank.geometry != geometry:
            raise ConfigError(
                f"the template bank's detector geometry {bank.geometry.as_attrs()} differs "
                f"from the model's {geometry.as_attrs()}"
            )
        match = make_template_matcher(bank)

    @tf.function(input_signature=[tf.TensorSpec([None, h, w], tf.float32, name="frames")])
    def infer(frames):
        images, photons, binned = network_inputs(frames, geometry, k, details)
        logits = model(images, training=False)
        out = {"probabilities": tf.nn.softmax(logits, axis=-1), "photons": photons}
        if match is not None:
            out.update(match.from_binned(binned))
        return out

    return infer


def template_function(bank: TemplateBank) -> Any:
    """A ``tf.function`` from raw frames ``(B, H, W)`` float32 (input ``frames``, dynamic
    batch) to the template matcher's outputs (:data:`trainer.templates.graph.OUTPUTS`);
    convertible with ``tf2onnx.convert.from_function``."""
    match = make_template_matcher(bank)
    h, w = bank.geometry.shape

    @tf.function(input_signature=[tf.TensorSpec([None, h, w], tf.float32, name="frames")])
    def fn(frames):
        return match.from_binned(bin_frames(frames, bank.geometry))

    return fn
