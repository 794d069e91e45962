"""Real detectors: module geometry (EXtra-geom), distance and photon energy.

A :class:`DetectorConfig` names a detector (``AGIPD1M``, ``LPD1M``, ``JUNGFRAU``, ``DSSC1M``,
``EPIX100``, ``PNCCD``), a CrystFEL ``.geom`` file or a flat panel of assembled frames
(``FLAT``: shape, pixel size, beam centre), the sample-detector distance and the photon
energy. :func:`load_detector` turns it into a :class:`Detector`: the data shape of
one frame as the detector sends it (modules, slow scan, fast scan), every pixel's centre
in metres (beam along z through the origin) and the pixels the geometry or the run's
bad-pixel mask rule out. :mod:`hitstream.qgrid` maps those pixels onto a model's grid.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hitstream.errors import ConfigError

log = logging.getLogger(__name__)

HC_EV_M = 1.239841984e-6  # h·c in eV·m: wavelength = HC_EV_M / photon energy

#: Detector names -> (EXtra-geom class name, how quad_pos is given)
DETECTORS: dict[str, str] = {
    "AGIPD1M": "AGIPD_1MGeometry",
    "LPD1M": "LPD_1MGeometry",
    "DSSC1M": "DSSC_1MGeometry",
    "JUNGFRAU": "JUNGFRAUGeometry",
    "EPIX100": "Epix100Geometry",
    "PNCCD": "PNCCDGeometry",
}
_QUADRANT_DETECTORS = ("AGIPD1M", "LPD1M", "DSSC1M")
FLAT = "FLAT"  # one flat panel of square pixels: already assembled frames of any size
MAP_ON = ("cpu", "engine")  # where the map runs (streamer.detector_map)


@dataclass(frozen=True)
class DetectorConfig:
    """``[detector]``: empty ``geometry`` means the frames are already on the model's grid.

    ``geometry``: a name of :data:`DETECTORS`, the path of a CrystFEL ``.geom`` file (its
    ``type`` says which detector the file describes: a name of :data:`DETECTORS`), or
    ``FLAT``: assembled frames of ``frame_shape`` ``[H, W]`` square pixels of ``pixel_m``,
    the beam at ``center_px`` ``[row, column]`` (empty: the frame's middle), e.g. another
    simulator's or a pnCCD's assembled frames.
    ``quad_pos``: quadrant positions (x, y) for AGIPD/LPD/DSSC, in the detector's usual unit
    (AGIPD pixels, LPD mm, DSSC pixels); empty: EXtra-geom's example positions (a warning).
    ``distance_m``, ``photon_energy_ev``: sample-detector distance and photon energy (both
    required with a geometry). ``mask_file``: HDF5 with a dataset ``mask`` of the data
    shape (non-zero: a bad pixel), the run's bad-pixel mask; pixels that are NaN in a frame
    count as masked in that frame. ``wavelength_source``/``wavelength_key``: take the
    wavelength (nm) from the feed instead, where a source carries it
    (:mod:`streamer.detector_map`); ``photon_energy_ev`` is then the value until it comes.
    ``map_on``: ``cpu`` maps with scipy on the host; ``engine`` runs the map as a graph on
    the engine's providers (the GPU with CUDA: :mod:`streamer.map_graph`).
    """

    geometry: str = ""
    type: str = ""
    quad_pos: list[list[float]] = field(default_factory=list)
    distance_m: float = 0.0
    photon_energy_ev: float = 0.0
    mask_file: Path | None = None
    wavelength_source: str = ""  # a feed source carrying the wavelength ("": from the config)
    wavelength_key: str = "pulseEnergy.wavelengthUsed"  # its key, in nm (as the XGM sends)
    frame_shape: list[int] = field(default_factory=list)  # FLAT: [H, W] pixels
    pixel_m: float = 0.0  # FLAT: the pixels' side
    center_px: list[float] = field(default_factory=list)  # FLAT: the beam [row, column]
    map_on: str = "cpu"  # cpu: scipy on the host | engine: a graph on the engine's providers

    def __post_init__(self) -> None:
        if self.map_on not in MAP_ON:
            raise ConfigError(f"detector.map_on must be one of {MAP_ON}, got {self.map_on!r}")
        if not self.geometry:
            return
        if self.geometry.upper() == FLAT and (
            len(self.frame_shape) != 2
            or min(self.frame_shape) < 1
            or self.pixel_m <= 0
            or len(self.center_px) not in (0, 2)
        ):
            raise ConfigError(
                "detector.geometry = 'FLAT' needs detector.frame_shape = [H, W], "
                "detector.pixel_m > 0 and optionally detector.center_px = [row, column]"
            )
        if self.distance_m <= 0 or self.photon_energy_ev <= 0:
            raise ConfigError(
                f"detector.geometry = {self.geometry!r} needs detector.distance_m and "
                "detector.photon_energy_ev (both > 0)"
            )
        if self.quad_pos and (len(self.quad_pos) != 4 or any(len(p) != 2 for p in self.quad_pos)):
            raise ConfigError("detector.quad_pos must be four [x, y] pairs")

    @property
    def enabled(self) -> bool:
        return bool(self.geometry)

    @property
    def wavelength_m(self) -> float:
        return HC_EV_M / self.photon_energy_ev


@dataclass(frozen=True)
class Detector:
    """One detector as it sends frames: ``data_shape`` ``(modules, ss, fs)``, pixel centres
    ``positions`` ``(modules, ss, fs, 3)`` in metres, ``fs_vec``/``ss_vec`` ``(modules, 3)``
    (one pixel step along fast and slow scan), ``bad`` ``(modules, ss, fs)`` bool."""

    name: str
    data_shape: tuple[int, int, int]
    positions: np.ndarray
    fs_vec: np.ndarray
    ss_vec: np.ndarray
    bad: np.ndarray
    distance_m: float
    wavelength_m: float

    @property
    def stacked_shape(self) -> tuple[int, int]:
        """Shape of one frame with its modules stacked vertically (``modules * ss, fs``)."""
        m, ss, fs = self.data_shape
        return (m * ss, fs)

    @property
    def n_pixels(self) -> int:
        return int(np.prod(self.data_shape))


def _geometry_class(name: str) -> Any:
    import extra_geom  # a module import only where a detector is configured

    key = name.upper()
    if key not in DETECTORS:
        raise ConfigError(f"unknown detector {name!r}; use one of {', '.join(DETECTORS)}")
    return getattr(extra_geom, DETECTORS[key])


def _extra_geometry(cfg: DetectorConfig) -> tuple[str, Any]:
    """The EXtra-geom geometry object of ``cfg`` and the detector's name."""
    if cfg.geometry.endswith(".geom"):
        path = Path(cfg.geometry)
        if not path.is_file():
            raise ConfigError(f"detector.geometry: no CrystFEL geometry file {path}")
        name = cfg.type or "AGIPD1M"
        if not cfg.type:
            log.warning("detector.type not given for %s: reading it as %s", path, name)
        try:
            return name, _geometry_class(name).from_crystfel_geom(str(path))
        except (OSError, ValueError, KeyError, IndexError) as exc:
            raise ConfigError(f"detector.geometry: cannot read {path} as {name}: {exc}") from exc
    name = cfg.geometry.upper()
    cls = _geometry_class(name)
    if cfg.quad_pos and name in _QUADRANT_DETECTORS:
        return name, cls.from_quad_positions([tuple(p) for p in cfg.quad_pos])
    if name in _QUADRANT_DETECTORS:
        log.warning("detector.quad_pos not given: using EXtra-geom's example positions of %s", name)
    return name, cls.example()


def _module_steps(pos: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One pixel's step along fs and ss per module: the median neighbour difference (tile
    gaps inside a module are outliers)."""
    fs = np.median((pos[:, :, 1:] - pos[:, :, :-1]).reshape(len(pos), -1, 3), axis=1)
    ss = np.median((pos[:, 1:, :] - pos[:, :-1, :]).reshape(len(pos), -1, 3), axis=1)
    return fs, ss


def _bad_pixels(cfg: DetectorConfig, shape: tuple[int, int, int]) -> np.ndarray:
    if cfg.mask_file is None:
        return np.zeros(shape, bool)
    try:
        with h5py.File(cfg.mask_file, "r") as f:
            mask = np.asarray(f["mask"])
    except (OSError, KeyError) as exc:
        raise ConfigError(f"detector.mask_file {cfg.mask_file}: {exc}") from exc
    m, ss, fs = shape
    if mask.shape not in (shape, (m * ss, fs)):
        raise ConfigError(
            f"detector.mask_file {cfg.mask_file}: mask of shape {mask.shape}, the detector "
            f"sends {shape}"
        )
    return mask.reshape(shape) != 0


def load_detector(cfg: DetectorConfig) -> Detector:
    """The :class:`Detector` of a configuration with a geometry (ConfigError otherwise)."""
    if not cfg.enabled:
        raise ConfigError("no detector.geometry configured")
    if cfg.geometry.upper() == FLAT:
        name, pos = FLAT, flat_positions(cfg)
    else:
        name, geom = _extra_geometry(cfg)
        pos = np.asarray(geom.get_pixel_positions(), np.float64)
    if pos.ndim == 3:  # a single-module detector: (ss, fs, 3)
        pos = pos[np.newaxis]
    shape = (int(pos.shape[0]), int(pos.shape[1]), int(pos.shape[2]))
    fs_vec, ss_vec = _module_steps(pos)
    return Detector(
        name=name,
        data_shape=shape,
        positions=pos,
        fs_vec=fs_vec,
        ss_vec=ss_vec,
        bad=_bad_pixels(cfg, shape),
        distance_m=float(cfg.distance_m),
        wavelength_m=cfg.wavelength_m,
    )


def flat_positions(cfg: DetectorConfig) -> np.ndarray:
    """Pixel centres ``(1, H, W, 3)`` of a :data:`FLAT` detector: rows along y, columns
    along x, the beam through ``center_px`` (default: the frame's middle)."""
    h, w = (int(v) for v in cfg.frame_shape)
    cy, cx = cfg.center_px if cfg.center_px else ((h - 1) / 2.0, (w - 1) / 2.0)
    pos = np.zeros((1, h, w, 3))
    pos[0, :, :, 0] = (np.arange(w) - float(cx))[None, :] * cfg.pixel_m
    pos[0, :, :, 1] = (np.arange(h) - float(cy))[:, None] * cfg.pixel_m
    return pos
