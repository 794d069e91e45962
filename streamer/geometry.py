"""Detector geometry shared by the simulator, the writer and the reports.

Defaults follow CXIDB entry 58 (PR772 at LCLS/AMO, pnCCD binned 4x4).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

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

    def as_attrs(self) -> dict[str, float | int]:
        """Flat dict for HDF5 attributes / JSON."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        return d
