"""Detector geometry shared by the simulator, the writer, the bundles and the reports.

Defaults follow CXIDB entry 58 (PR772 at LCLS/AMO, pnCCD binned 4x4). Geometries travel as
JSON (an HDF5 attribute ``geometry``, a bundle manifest's ``geometry`` key) and are read
back by ONE parser, :func:`geometry_from_attrs`, with one error policy.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from hitstream.errors import InputDataError

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


_FIELDS = frozenset(f.name for f in fields(DetectorGeometry))


def geometry_from_attrs(
    value: Any, *, shape: tuple[int, ...] | None = None, where: str = "geometry"
) -> DetectorGeometry:
    """A :class:`DetectorGeometry` from what :meth:`DetectorGeometry.as_attrs` wrote.

    ``value``: a dict, its JSON text (str or bytes), or None for the default geometry (of
    ``shape`` when given). ``shape``: the frames it must describe. Anything unreadable (bad
    JSON, unknown or missing keys, non-positive lengths, a shape unlike ``shape``) raises
    :class:`InputDataError` naming ``where``; callers at other boundaries wrap it.
    """
    if value is None:
        if shape is None:
            return DetectorGeometry()
        return DetectorGeometry(shape=(int(shape[0]), int(shape[1])))
    try:
        raw = value.decode("utf-8") if isinstance(value, bytes) else value
        d = json.loads(raw) if isinstance(raw, str) else raw
        if not isinstance(d, Mapping):
            raise ValueError(f"expected an object, got {type(d).__name__}")
        unknown = sorted(set(d) - _FIELDS)
        if unknown:
            raise ValueError(f"unknown keys {unknown}")
        kw = dict(d)
        if "shape" in kw:
            kw["shape"] = (int(kw["shape"][0]), int(kw["shape"][1]))
        elif shape is not None:
            kw["shape"] = (int(shape[0]), int(shape[1]))
        geometry = DetectorGeometry(**kw)
        lengths = (geometry.distance_m, geometry.wavelength_m, geometry.pixel_size_m)
        if not all(isinstance(v, int | float) and math.isfinite(v) and v > 0 for v in lengths):
            raise ValueError(f"distance, wavelength and pixel size must be > 0, got {lengths}")
    except (TypeError, ValueError, KeyError, IndexError, UnicodeDecodeError) as exc:
        raise InputDataError(f"{where}: unreadable detector geometry ({exc})") from exc
    if shape is not None and tuple(geometry.shape) != tuple(shape):
        raise InputDataError(
            f"{where}: frames {tuple(shape)} differ from the geometry's {geometry.shape}"
        )
    return geometry
