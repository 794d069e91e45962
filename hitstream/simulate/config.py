"""What shapes a simulated run (:class:`SimConfig`) and what a simulation returns
(:class:`SimulatedRun`); class names and the per-frame truth columns."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from hitstream.errors import ConfigError
from hitstream.geometry import DetectorGeometry
from hitstream.simulate.beamline import BeamlineConfig

SIM_CLASSES: tuple[str, ...] = ("single", "multiple", "empty", "other")
OTHER_KINDS: tuple[str, ...] = ("droplet", "aggregate", "rod")
TRUTH_COLUMNS: tuple[str, ...] = (
    "n_particles",
    "radius_nm",
    "separation_nm",
    "photons",
    "background",
    "subclass",
    "beamline_run",
    "bg_level",
)
_POSITIVE_RANGES = (
    *("radius_nm", "photons", "droplet_radius_nm", "aggregate_sphere_radius_nm"),
    *("rod_radius_nm", "rod_length_nm", "background_photons", "hot_pixel_photons"),
    *("droplet_contrast", "multiple_count", "aggregate_count"),
)


@dataclass(frozen=True)
class SimConfig:
    """Everything that shapes a simulated run. Ranges are ``(low, high)``, drawn uniformly
    per frame unless noted; lengths of objects in nm."""

    geometry: DetectorGeometry = field(default_factory=DetectorGeometry)
    fractions: tuple[float, ...] = (0.3, 0.2, 0.3, 0.2)  # per SIM_CLASSES, normalised
    radius_nm: tuple[float, float] = (30.0, 40.0)  # volume-equivalent radius of a particle
    photons: tuple[float, float] = (300.0, 3000.0)  # 5-95 % signal photons, reference single
    max_photons: float = 1e5  # cap on a frame's expected signal photons (bright junk)
    multiple_count: tuple[int, int] = (2, 3)
    multiple_gap_nm: tuple[float, float] = (0.0, 250.0)  # surface-to-surface distance
    other_kinds: tuple[float, float, float] = (1.0, 1.0, 1.0)  # droplet, aggregate, rod
    droplet_radius_nm: tuple[float, float] = (75.0, 250.0)
    droplet_contrast: tuple[float, float] = (0.5, 0.9)  # density relative to the particles
    aggregate_count: tuple[int, int] = (8, 40)
    aggregate_sphere_radius_nm: tuple[float, float] = (8.0, 20.0)
    rod_radius_nm: tuple[float, float] = (5.0, 15.0)
    rod_length_nm: tuple[float, float] = (150.0, 600.0)
    background_photons: tuple[float, float] = (5.0, 40.0)  # per frame, log-uniform
    background_lowq_fraction: float = 0.5  # rest is flat
    hot_pixels_per_frame: float = 0.2  # Poisson mean
    hot_pixel_photons: tuple[float, float] = (10.0, 300.0)
    center_jitter_px: float = 0.5  # std of the beam centre, per axis
    read_noise_photons: float = 0.0  # Gaussian std on valid pixels (makes negatives)
    # the run's background and detector (beamline.py); a run is frames_per_run consecutive
    # frames (0: the whole seed), each run with its own draw
    beamline: BeamlineConfig = field(default_factory=BeamlineConfig)
    frames_per_run: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):  # lists (e.g. from JSON) become tuples: the config stays hashable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        beamline: Any = self.beamline
        if isinstance(beamline, dict):  # from JSON (as_json)
            object.__setattr__(self, "beamline", BeamlineConfig(**beamline))
        geometry: Any = self.geometry
        if isinstance(geometry, dict):
            gd = dict(geometry, shape=tuple(geometry["shape"]))
            object.__setattr__(self, "geometry", DetectorGeometry(**gd))
        if self.frames_per_run < 0:
            raise ConfigError(f"frames_per_run must be >= 0, got {self.frames_per_run}")
        fr = self.fractions
        if len(fr) != len(SIM_CLASSES) or min(fr) < 0 or sum(fr) <= 0:
            raise ConfigError(f"fractions must be {len(SIM_CLASSES)} values >= 0, got {fr}")
        if len(self.other_kinds) != len(OTHER_KINDS) or min(self.other_kinds) < 0:
            raise ConfigError(f"other_kinds must be 3 weights >= 0, got {self.other_kinds}")
        if fr[SIM_CLASSES.index("other")] > 0 and sum(self.other_kinds) <= 0:
            raise ConfigError("other_kinds are all 0 but the 'other' fraction is not")
        for name in _POSITIVE_RANGES:
            _check_range(name, getattr(self, name), positive=True)
        _check_range("multiple_gap_nm", self.multiple_gap_nm, positive=False)
        if self.multiple_count[0] < 2:
            raise ConfigError(f"multiple_count must start at >= 2, got {self.multiple_count}")
        if not self.max_photons > 0:
            raise ConfigError(f"max_photons must be > 0, got {self.max_photons}")
        for name in ("hot_pixels_per_frame", "center_jitter_px", "read_noise_photons"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.background_lowq_fraction <= 1:
            raise ConfigError("background_lowq_fraction must be within [0, 1]")
        g = self.geometry
        if min(g.distance_m, g.wavelength_m, g.pixel_size_m) <= 0 or min(g.shape) < 8:
            raise ConfigError(f"invalid detector geometry {g}")

    def run_of(self, index: int) -> int:
        """The run (block of ``frames_per_run`` frames) frame ``index`` belongs to."""
        return index // self.frames_per_run if self.frames_per_run > 0 else 0

    def as_json(self) -> str:
        """JSON for file attributes (provenance)."""
        return json.dumps(asdict(self), sort_keys=True)


def _check_range(name: str, value: Sequence[float], positive: bool) -> None:
    ok = len(value) == 2 and value[0] <= value[1] and (value[0] > 0 if positive else value[0] >= 0)
    if not ok:
        raise ConfigError(
            f"{name} must be (low, high) with 0 {'<' if positive else '<='} "
            f"low <= high, got {value}"
        )


@dataclass
class SimulatedRun:
    """Frames with their class labels and per-frame truth (``params``)."""

    frames: np.ndarray  # (N, H, W) float32
    labels: np.ndarray  # (N,) int8, index into classes
    classes: tuple[str, ...] = SIM_CLASSES
    params: dict[str, np.ndarray] = field(default_factory=dict)
    start: int = 0  # index of the first frame in the seed's sequence
    seed: int | None = None
    config: SimConfig | None = None

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    def counts(self) -> dict[str, int]:
        """Frames per class."""
        return {c: int(np.sum(self.labels == i)) for i, c in enumerate(self.classes)}
