"""CNN architectures (Keras 3). Input: preprocessed images ``(B, 130, 128, C)`` from
:mod:`trainer.model.preprocess_graph` (C: 2, 5 with the block details, + 3 with the run's
background; :mod:`trainer.model.inputs`); output: class logits ``(B, C)`` (softmax is added
at export). A model's name is its architecture.

- ``seed``: the network of the published workflow (SEED.md), adapted to our input and to C
  classes: Conv(32)-ReLU-Dropout-MaxPool → Conv(32)-ReLU-MaxPool → Conv(64)-ReLU-MaxPool →
  ZeroPad(1)-Conv(64)-ReLU-Dropout-MaxPool → Flatten → Dense(64)-ReLU-Dropout → Dense(C).
  About 70 M multiply-adds per frame.
- ``compact``: a strided 3×3 stem, then depthwise-separable stride-2 blocks
  with BatchNorm (folded into the convolutions by onnxruntime), global average and max
  pooling, one dense layer. About 4 M multiply-adds per frame, so that a CPU serves
  thousands of frames/s. No pooling before the stem: the fringes of multiple hits are
  only 1–3 binned pixels wide.
- ``fast``: input coarsened once more (4×4 pixels per value, ``(65, 64, 2)``: the
  preprocessing after the full-resolution pass costs 4× less), a 2×2/2 stem and narrower
  blocks. About 1 M multiply-adds per frame: the CPU bundle that keeps up with a full-rate
  feed on 2 cores; fringes finer than 4 pixels are lost, so it is less accurate on
  multiple hits of large separation.
- ``fine`` (the default; models/default): ``compact`` fed three more channels, the Haar
  details of each 2×2 block of raw pixels (:mod:`hitstream.frame_kernel` step 5), so fringes
  4–5 pixels apart, which binning attenuates or, at an unlucky phase, cancels, reach the
  network; wider blocks (24–128 channels). About 9.5 M multiply-adds.
"""

from __future__ import annotations

from collections.abc import Callable

import keras
from keras import layers

from trainer.model.inputs import (  # noqa: F401 - the architectures' inputs, re-exported
    ARCHITECTURES,
    INPUT_COARSEN,
    INPUT_DETAILS,
    base_architecture,
    input_channels,
)


def build_seed(input_shape: tuple[int, int, int], n_classes: int, dropout: float = 0.5):
    """The seed workflow's CNN (valid padding, ReLU, max pooling, dropout 0.5)."""
    inp = keras.Input(shape=input_shape, name="image")
    x = layers.Conv2D(32, 3, activation="relu", name="conv1")(inp)
    x = layers.Dropout(dropout)(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(32, 3, activation="relu", name="conv2")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv3")(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.ZeroPadding2D(1)(x)
    x = layers.Conv2D(64, 3, activation="relu", name="conv4")(x)
    x = layers.Dropout(dropout)(x)
    x = layers.MaxPooling2D(2)(x)
    x = layers.Flatten()(x)
    x = layers.Dense(64, activation="relu", name="fc1")(x)
    x = layers.Dropout(dropout)(x)
    out = layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inp, out, name="seed")


def _bn_relu(x, name: str):
    x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
    return layers.ReLU(name=f"{name}_relu")(x)


def build_compact(
    input_shape: tuple[int, int, int],
    n_classes: int,
    widths: tuple[int, ...] = (16, 32, 64, 96, 96),
    dropout: float = 0.2,
    stem: tuple[int, int] = (3, 2),
):
    """Stem Conv (kernel, stride = ``stem``; widths[0]), then one depthwise-separable block
    per further width (stride 2 while the map is larger than 8×8, then stride 1), global
    avg+max pooling."""
    inp = keras.Input(shape=input_shape, name="image")
    kernel, step = stem
    x = layers.Conv2D(widths[0], kernel, strides=step, padding="same", use_bias=False, name="stem")(
        inp
    )
    x = _bn_relu(x, "stem")
    size = -(-min(input_shape[:2]) // step)
    for i, w in enumerate(widths[1:], start=1):
        stride = 2 if size > 8 else 1
        size = -(-size // stride)
        x = layers.DepthwiseConv2D(
            3, strides=stride, padding="same", use_bias=False, name=f"dw{i}"
        )(x)
        x = _bn_relu(x, f"dw{i}")
        x = layers.Conv2D(w, 1, use_bias=False, name=f"pw{i}")(x)
        x = _bn_relu(x, f"pw{i}")
    x = layers.Concatenate(name="pool")(
        [layers.GlobalAveragePooling2D(name="gap")(x), layers.GlobalMaxPooling2D(name="gmp")(x)]
    )
    x = layers.Dropout(dropout)(x)
    out = layers.Dense(n_classes, name="logits")(x)
    return keras.Model(inp, out, name="compact")


def build_fast(input_shape: tuple[int, int, int], n_classes: int):
    """``compact`` with a 4×4/4 patchify stem and narrower blocks (see module docstring)."""
    model = build_compact(input_shape, n_classes, widths=(24, 32, 64, 64), stem=(2, 2))
    model.name = "fast"
    return model


def build_fine(input_shape: tuple[int, int, int], n_classes: int):
    """``compact``, wider, on the 5-channel input (levels and block details)."""
    model = build_compact(input_shape, n_classes, widths=(24, 48, 96, 128, 128))
    model.name = "fine"
    return model


BUILDERS: dict[str, Callable[..., keras.Model]] = {
    "compact": build_compact,
    "fast": build_fast,
    "fine": build_fine,
    "seed": build_seed,
}


def build_model(architecture: str, input_shape: tuple[int, int, int], n_classes: int):
    """A fresh, uncompiled model of the named architecture (logits output); a model name
    with :data:`trainer.model.inputs.SHOT_SUFFIX` builds its architecture under that name."""
    try:
        builder = BUILDERS[base_architecture(architecture)]
    except KeyError:
        raise ValueError(
            f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}"
        ) from None
    model = builder(input_shape, n_classes)
    model.name = architecture
    return model


def count_macs(model: keras.Model) -> int:
    """Multiply-adds per frame of the convolutional and dense layers (inference)."""
    total = 0
    for layer in model.layers:
        if isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw
        elif isinstance(layer, layers.Conv2D):
            _, h, w, c = layer.output.shape
            kh, kw = layer.kernel_size
            total += h * w * c * kh * kw * layer.input.shape[-1]
        elif isinstance(layer, layers.Dense):
            total += int(layer.input.shape[-1]) * layer.units
    return int(total)
