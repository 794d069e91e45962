"""The streamer's map of a real detector onto the running model's q grid.

Built from ``[detector]`` (:mod:`hitstream.detectors`) once per grid: again when a swapped
model's grid differs, and when the photon energy changes. The wavelength comes from the
config or, with ``detector.wavelength_source``, from the feed: the source's
``detector.wavelength_key`` (nm, as the XGM publishes ``pulseEnergy.wavelengthUsed``); a
change of more than 0.1 % rebuilds the map before the message's frames are mapped. With
``detector.map_on = "engine"`` the map runs as a graph on the engine's providers
(:mod:`streamer.map_graph`: the GPU with CUDA).
"""

from __future__ import annotations

import logging
import math
from dataclasses import replace
from typing import Any

import numpy as np

from hitstream.detectors import Detector, DetectorConfig, load_detector
from hitstream.errors import ConfigError
from hitstream.geometry import DetectorGeometry
from hitstream.qgrid import Resampler
from streamer.map_graph import GraphMap

log = logging.getLogger(__name__)

WAVELENGTH_TOLERANCE = 1e-3  # relative change of the feed's wavelength that rebuilds the map


class DetectorMap:
    """Frames of the configured detector -> frames on the model's grid (module docstring).

    ``warnings`` is the run's warning list (live page, summary)."""

    def __init__(
        self,
        config: DetectorConfig,
        warnings: list[str],
        providers: list[str] | None = None,
        device_id: int = 0,
    ) -> None:
        self.config = config
        self.detector: Detector = load_detector(config)
        self.warnings = warnings
        self.resampler: Resampler | None = None
        self.graph: GraphMap | None = None  # detector.map_on = "engine"
        self.providers = providers or ["CPUExecutionProvider"]  # the engine's, for the graph
        self.device_id = device_id
        self.energy_changes = 0

    def set_grid(self, grid: DetectorGeometry) -> None:
        """Map onto ``grid`` (a no-op when it is the grid in use). The first map must cover
        the grid (ConfigError otherwise); later ones only warn."""
        if self.resampler is not None and self.resampler.grid == grid:
            return
        self._build(grid, first=self.resampler is None)

    def _build(self, grid: DetectorGeometry, *, first: bool) -> None:
        det = self.detector
        resampler = Resampler(det, grid)
        c = resampler.coverage
        log.info(
            "%s (%s) at %.4f Å: %d pixels -> the model's %s grid, %.0f%% of it covered "
            "(q up to %.4f /nm; the grid's %.4f /nm), %d parts per pixel",
            det.name, "x".join(map(str, det.data_shape)), det.wavelength_m * 1e10,
            det.n_pixels, "x".join(map(str, grid.shape)), 100 * c.covered_share,
            c.detector_q_max, c.model_q_max, resampler.subpixels ** 2,
        )  # fmt: skip
        try:
            resampler.check_coverage()
        except ConfigError as exc:
            if first:
                raise
            self._warn(str(exc))
        note = resampler.warning()
        if note is not None:
            self._warn(note)
        self.resampler = resampler
        if self.config.map_on == "engine":
            self.graph = GraphMap(resampler, self.providers, self.device_id)

    def _warn(self, message: str) -> None:
        if message not in self.warnings:
            log.warning("%s", message)
            self.warnings.append(message)

    def observe(self, data: dict[str, dict[str, Any]]) -> None:
        """Take the photon energy from the feed's message, when configured and changed."""
        src = self.config.wavelength_source
        if not src or self.resampler is None:
            return
        values = data.get(src)
        nm = values.get(self.config.wavelength_key) if isinstance(values, dict) else None
        if isinstance(nm, np.ndarray) and nm.size == 1:
            nm = nm.item()
        if isinstance(nm, bool) or not isinstance(nm, int | float):
            return
        wavelength = float(nm) * 1e-9
        if not (math.isfinite(wavelength) and wavelength > 0):
            return
        if abs(wavelength / self.detector.wavelength_m - 1.0) <= WAVELENGTH_TOLERANCE:
            return
        log.info(
            "photon energy from %s: %.4f Å (was %.4f Å): mapping the detector again",
            src, wavelength * 1e10, self.detector.wavelength_m * 1e10,
        )  # fmt: skip
        self.detector = replace(self.detector, wavelength_m=wavelength)
        self.energy_changes += 1
        self._build(self.resampler.grid, first=False)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        assert self.resampler is not None, "set_grid() first"
        return self.graph(frames) if self.graph is not None else self.resampler(frames)

    def status(self) -> dict[str, Any]:
        r = self.resampler
        if r is None:
            return {}
        return {
            "name": r.detector.name,
            "data_shape": list(r.detector.data_shape),
            "distance_m": r.detector.distance_m,
            "wavelength_m": r.detector.wavelength_m,
            "energy_changes": self.energy_changes,
            "map_on": self.config.map_on,
            "trains_mapped_on_host": self.graph.on_host if self.graph is not None else None,
            "covered_share": r.coverage.covered_share,
            "low_q_share": r.coverage.low_q_share,
            "detector_q_max_per_nm": r.coverage.detector_q_max,
            "model_q_max_per_nm": r.coverage.model_q_max,
        }
