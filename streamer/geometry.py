"""Detector geometry shared by the simulator, the writer and the reports.

Defaults follow CXIDB entry 58 (PR772 at LCLS/AMO, pnCCD binned 4x4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

FRAME_SHAPE: tuple[int, int] = (260, 257)


@dataclass(frozen=True)
class DetectorGeometry:
    """Flat detector perpendicular to the beam; lengths in metres."""

    shape: tuple[int, int] = FRAME_SHAPE
    distance_m: float = 0.586
    wavelength_m: float = 7.75e-10
    pixel_size_m: float = 0.3e-3
    hole_radius_px: float = 6.0
    gap_rows: int = 4

    @property
    def center_px(self) -> tuple[float, float]:
        """Nominal beam centre (row, column): the middle of the frame, between pixels if even."""
        return ((self.shape[0] - 1) / 2.0, (self.shape[1] - 1) / 2.0)

    def valid_pixels(self) -> np.ndarray:
        """(H, W) bool, False in the central hole and in the gap rows between the halves."""
        cy, cx = self.center_px
        y = np.arange(self.shape[0], dtype=np.float64)[:, None] - cy
        x = np.arange(self.shape[1], dtype=np.float64)[None, :] - cx
        hole = y**2 + x**2 < self.hole_radius_px**2
        gap = np.abs(y) < self.gap_rows / 2.0
        return ~(hole | gap)

    def as_attrs(self) -> dict[str, float | int]:
        """Flat dict for HDF5 attributes / JSON."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d
