"""What each architecture's input is, without importing Keras or TensorFlow.

An architecture reads the cleaned 2×2 bins (``coarsen`` 1) or bins coarsened once more
(``fast``: 2), as the two level/shape channels, plus the three block-detail channels
(``fine``), plus the three background channels when it takes the run's background
(:mod:`hitstream.frame_kernel`, steps 4–6). A trained model records its architecture in its
name, and its input's channel count says whether it takes a background.
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


def input_channels(architecture: str, background: bool = False) -> int:
    """Channels of the architecture's input image."""
    check_architecture(architecture)
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

    @property
    def channels(self) -> int:
        return input_channels(self.architecture, self.background)


def layout_of(architecture: str, background: bool) -> InputLayout:
    return InputLayout(
        check_architecture(architecture),
        INPUT_COARSEN[architecture],
        architecture in INPUT_DETAILS,
        background,
    )


def model_layout(model: Any, geometry: DetectorGeometry | None = None) -> InputLayout:
    """The input layout of a built Keras model: its name is its architecture; its channel
    count says whether it takes the background; its size must fit the geometry."""
    arch = str(model.name)
    if arch not in ARCHITECTURES:
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
