"""What each architecture's input is, without importing Keras or TensorFlow.

An architecture reads the cleaned 2×2 bins (``coarsen`` 1) or bins coarsened once more
(``fast``: 2), as the two level/shape channels, plus the three block-detail channels
(``fine``), plus the background channel when it takes the run's background
(:mod:`hitstream.frame_kernel`, steps 4–6). A trained model records its architecture in its
name, and its input's channel count says whether it takes a background. A name ending in
``-shot`` (:data:`SHOT_SUFFIX`) says that its excess is over each shot's fitted background
level (step 7): a variant of the input, not of the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hitstream import frame_kernel as ref
from hitstream.errors import ConfigError
from hitstream.geometry import DetectorGeometry

ARCHITECTURES: tuple[str, ...] = ("compact", "fast", "fine", "seed")
INPUT_COARSEN = {"compact": 1, "fast": 2, "fine": 1, "seed": 1}  # frame_kernel.coarsen_bins
INPUT_DETAILS = frozenset({"fine"})  # fed the detail channels (frame_kernel step 5)
SHOT_SUFFIX = "-shot"  # model name suffix: the excess is over the shot's level (step 7)


def base_architecture(name: str) -> str:
    """The architecture of a model name (without :data:`SHOT_SUFFIX`)."""
    return name.removesuffix(SHOT_SUFFIX)


def input_channels(architecture: str, background: bool = False) -> int:
    """Channels of the architecture's input image."""
    architecture = check_architecture(base_architecture(architecture))
    n = len(ref.CHANNELS) + (len(ref.DETAIL_CHANNELS) if architecture in INPUT_DETAILS else 0)
    return n + (len(ref.BACKGROUND_CHANNELS) if background else 0)


def check_architecture(architecture: str) -> str:
    if architecture not in ARCHITECTURES:
        raise ConfigError(
            f"unknown architecture {architecture!r}; choose one of {', '.join(ARCHITECTURES)}"
        )
    return architecture


@dataclass(frozen=True)
class InputLayout:
    """How a model's input is made from raw frames."""

    architecture: str
    coarsen: int
    details: bool
    background: bool
    shot_scale: bool = False  # the excess over each shot's fitted level (needs background)

    @property
    def channels(self) -> int:
        return input_channels(self.architecture, self.background)

    @property
    def model_name(self) -> str:
        """The Keras model's name: the architecture, with :data:`SHOT_SUFFIX` if it fits
        the shot's level."""
        return self.architecture + (SHOT_SUFFIX if self.shot_scale else "")


def layout_of(architecture: str, background: bool, shot_scale: bool = False) -> InputLayout:
    """The layout of an architecture (or a model name: its suffix sets ``shot_scale``).
    The shot's level is fitted only with a background."""
    base = check_architecture(base_architecture(architecture))
    shot = (shot_scale or architecture.endswith(SHOT_SUFFIX)) and background
    return InputLayout(base, INPUT_COARSEN[base], base in INPUT_DETAILS, background, shot)


def model_layout(model: Any, geometry: DetectorGeometry | None = None) -> InputLayout:
    """The input layout of a built Keras model: its name is its architecture (and whether
    it fits the shot's level); its channel count says whether it takes the background; its
    size must fit the geometry."""
    arch = str(model.name)
    if base_architecture(arch) not in ARCHITECTURES:
        raise ConfigError(f"model {arch!r} is not one of the architectures {ARCHITECTURES}")
    c = int(model.input_shape[-1])
    plain, with_bg = input_channels(arch), input_channels(arch, True)
    if c not in (plain, with_bg):
        raise ConfigError(f"model {arch!r} has {c} input channels; expected {plain} or {with_bg}")
    layout = layout_of(arch, c == with_bg)
    want = ref.input_shape(geometry, layout.coarsen)
    if tuple(model.input_shape[1:3]) != want:
        raise ConfigError(
            f"model {arch!r} input {tuple(model.input_shape[1:3])} does not fit the detector's "
            f"{want}"
        )
    return layout
