"""The exported graph: raw frames → preprocessing → CNN (+ template matcher) → named outputs.

:func:`inference_function` is what :mod:`trainer.model.export` converts to ONNX; it chains
:mod:`trainer.model.preprocess_graph` (the TensorFlow twin of :mod:`hitstream.frame_kernel`),
the Keras CNN and, with a polar template bank, :mod:`trainer.templates.graph` on the same
binned frames (one binning per frame). :func:`template_function` is the matcher alone.
"""

from __future__ import annotations

from typing import Any

import tensorflow as tf

from hitstream.bundle import BACKGROUND_INPUT
from hitstream.errors import ConfigError
from hitstream.geometry import DetectorGeometry
from trainer.model.inputs import model_layout
from trainer.model.preprocess_graph import bin_frames, network_inputs
from trainer.templates.bank import TemplateBank
from trainer.templates.graph import make_template_matcher

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
BACKGROUND_OUTPUTS: dict[str, dict] = {
    "excess_photons": {
        "shape": [None],
        "dtype": "float32",
        "description": (
            "photons per frame above the run's background (the cleaned bins minus what an "
            "empty bin of that background holds after cleaning; negative when the frame is "
            "darker than the background)"
        ),
    },
}


def inference_function(model, geometry: DetectorGeometry | None = None, bank=None):
    """A ``tf.function`` from raw frames ``(B, H, W)`` float32 (input ``frames``) to the
    named outputs of :data:`OUTPUTS`: the graph that is exported to ONNX.

    A model that takes the run's background (:func:`trainer.model.inputs.model_layout`) has a
    second input ``background`` ``(B or 1, H, W)`` (expected photons per pixel of an empty
    frame) and the :data:`BACKGROUND_OUTPUTS` too. With a polar
    :class:`trainer.templates.bank.TemplateBank` it also returns the template matcher's
    outputs (:data:`trainer.templates.graph.OUTPUTS`), computed from the same binned frames
    as the CNN's input (one binning per frame; above the background when there is one)."""
    geometry = geometry or DetectorGeometry()
    h, w = geometry.shape
    layout = model_layout(model, geometry)
    match = None
    if bank is not None and layout.coarsen != 1:
        raise ConfigError("a template bank needs a model on the 2x2-binned image (coarsen 1)")
    if bank is not None:
        if bank.geometry != geometry:
            raise ConfigError(
                f"the template bank's detector geometry {bank.geometry.as_attrs()} differs "
                f"from the model's {geometry.as_attrs()}"
            )
        match = make_template_matcher(bank)

    def outputs(frames, background):
        parts = network_inputs(
            frames, geometry, layout.coarsen, layout.details, background, layout.shot_scale
        )
        logits = model(parts["images"], training=False)
        out = {"probabilities": tf.nn.softmax(logits, axis=-1), "photons": parts["photons"]}
        if background is not None:
            out["excess_photons"] = parts["excess_photons"]
        if match is not None:
            out.update(match.from_binned(parts["signal"], counts=parts["binned"]))
        return out

    frames_spec = tf.TensorSpec([None, h, w], tf.float32, name="frames")
    if layout.background:
        bg_spec = tf.TensorSpec([None, h, w], tf.float32, name=BACKGROUND_INPUT)

        @tf.function(input_signature=[frames_spec, bg_spec])
        def infer_bg(frames, background):
            return outputs(frames, background)

        return infer_bg

    @tf.function(input_signature=[frames_spec])
    def infer(frames):
        return outputs(frames, None)

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
