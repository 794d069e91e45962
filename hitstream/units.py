"""Are these frames photon counts? An estimate of one photon's value in the data's units.

The bundles expect frames in photons (the preprocessing's noise floor, hot-pixel cap and
variance-stabilising transform are set in photons). Detectors and simulators also deliver
ADU, keV or arbitrary intensities. In photon-sparse SPI frames most lit pixels hold one
photon, so the values above the read noise cluster at one value, the photon's, and the
rest sit near whole multiples of it. :func:`estimate_photon_unit` finds that value:

1. read noise σ from the negative values (zero-mean noise: E[v² | v < 0] = σ²; 0 when
   there are none, e.g. integer or clipped data);
2. signal pixels: finite values above ``max(5σ, 0)``;
3. the lowest cluster: the median of the signal values, then the median of those below
   1.5× the current estimate, repeated (bright frames' multi-photon pixels drop out);
4. ``on_grid``: the share of signal values within ±0.25 photon of a whole number of
   photons. Photon counts (integers, or ADU with noise well below one photon) give ≳ 0.8;
   continuous intensities give about 0.5.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

MIN_SIGNAL_PIXELS = 200  # fewer lit pixels than this: no estimate
ON_GRID_MIN = 0.7  # share of signal pixels on whole photons for "photon counts"
UNIT_TOLERANCE = 1.25  # an estimate within this factor of the unit in use is "the same"


@dataclass(frozen=True)
class UnitEstimate:
    """One photon's value (nan: no estimate), read noise and how photon-like the data are."""

    photon_unit: float
    noise_sigma: float
    on_grid: float
    signal_pixels: int

    @property
    def counts_like(self) -> bool:
        """Whether the lit pixels sit on whole multiples of one value (photon counting)."""
        return math.isfinite(self.photon_unit) and self.on_grid >= ON_GRID_MIN

    def agrees_with(self, unit: float) -> bool:
        """Whether the data look like photon counts in units of ``unit``."""
        return self.counts_like and 1 / UNIT_TOLERANCE <= self.photon_unit / unit <= UNIT_TOLERANCE

    def advice(self, unit: float, where: str) -> str | None:
        """A warning for the user when the data do not look like counts of ``unit``; else None."""
        if self.agrees_with(unit):
            return None
        if self.signal_pixels < MIN_SIGNAL_PIXELS:
            return None  # too few lit pixels to tell (dark frames): no advice
        if self.counts_like:
            return (
                f"{where}: one photon looks like {self.photon_unit:.4g} in the data's units "
                f"({self.on_grid:.0%} of lit pixels on whole photons), not {unit:g}; the models "
                f"expect photons: give --photon-unit {self.photon_unit:.4g} "
                "(streamer: engine.photon_unit)"
            )
        return (
            f"{where}: the pixel values do not look like photon counts (only "
            f"{self.on_grid:.0%} of lit pixels near whole multiples of {self.photon_unit:.4g}); "
            "the models expect photons: if the frames are in other units, give one photon's "
            "value with --photon-unit (streamer: engine.photon_unit)"
        )


def estimate_photon_unit(frames: np.ndarray) -> UnitEstimate:
    """Estimate one photon's value from a sample of frames (module docstring)."""
    v = np.asarray(frames, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    neg = v[v < 0]
    sigma = float(np.sqrt(np.mean(neg**2))) if neg.size >= MIN_SIGNAL_PIXELS else 0.0
    signal = v[v > 5.0 * sigma]
    if signal.size < MIN_SIGNAL_PIXELS:
        return UnitEstimate(math.nan, sigma, 0.0, int(signal.size))
    unit = float(np.median(signal))
    for _ in range(8):
        low = signal[signal < 1.5 * unit]
        if low.size < MIN_SIGNAL_PIXELS:
            break
        new = float(np.median(low))
        if new >= unit:
            break
        unit = new
    photons = signal / unit
    on_grid = float(np.mean(np.abs(photons - np.round(photons)) <= 0.25))
    return UnitEstimate(unit, sigma, on_grid, int(signal.size))
