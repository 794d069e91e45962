"""The effective background map (hitstream.effective_background): on a detector that does not
count photons exactly, the map the estimator publishes makes the frame kernel's β the measured
mean of the cleaned empty bins, and the shot's fitted level comes out right."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hitstream import frame_kernel as fk
from hitstream.background import (
    BackgroundConfig,
    RunBackground,
    core_interval,
    estimate_run_background,
)
from hitstream.effective_background import cleaned_mean_inverse, effective_map
from hitstream.geometry import DetectorGeometry

GEOMETRY = DetectorGeometry()


def faint_map() -> np.ndarray:
    """0.005 photon/pixel with a steep low-q excess (a real beamline's faint end)."""
    h, w = GEOMETRY.shape
    cy, cx = GEOMETRY.center_px
    yy, xx = np.mgrid[:h, :w]
    r = np.hypot(yy - cy, xx - cx)
    return (0.005 + 0.4 * (1 + (r / 12.0) ** 2) ** -1.5).astype(np.float32)


def detector_frames(
    rng: np.random.Generator, n: int, gain: float = 0.75, flares: int = 40
) -> np.ndarray:
    """Photon frames read by a detector whose right half has gain ``gain`` (a photon reads
    as ``gain``), with ``flares`` pixels that flare to 100 photons in 1 % of the frames."""
    photons = rng.poisson(faint_map(), (n, *GEOMETRY.shape)).astype(np.float32)
    photons[:, :, GEOMETRY.shape[1] // 2 :] *= np.float32(gain)
    ys = rng.integers(0, GEOMETRY.shape[0], flares)
    xs = rng.integers(0, GEOMETRY.shape[1], flares)
    lit = rng.random((n, flares)) < 0.01
    photons[:, ys, xs] += np.where(lit, np.float32(100.0), np.float32(0.0))
    return photons


def test_the_inverse_undoes_the_cleaned_mean() -> None:
    lam = np.concatenate([[0.0], np.geomspace(1e-6, 1e5, 400)])
    back = cleaned_mean_inverse(lam + fk.NOISE_FLOOR * np.expm1(-lam))  # β in float64
    assert np.allclose(back, lam, rtol=1e-5, atol=1e-9)
    assert cleaned_mean_inverse(np.array([-1.0]))[0] == 0.0


def test_exact_photon_counts_leave_the_map_as_it_is() -> None:
    rng = np.random.default_rng(0)
    x = rng.poisson(faint_map(), (600, *GEOMETRY.shape)).astype(np.float32)
    raw = estimate_run_background(x, GEOMETRY.valid_pixels()).map
    eff = estimate_run_background(x, geometry=GEOMETRY).map
    lam_raw = fk.map_bins(raw, GEOMETRY)[0]
    lam_eff = fk.map_bins(eff, GEOMETRY)[0]
    bright = lam_raw > 0.5  # where the per-bin noise is small
    assert abs(lam_eff.sum() / lam_raw.sum() - 1) < 0.03
    assert np.median(np.abs(lam_eff[bright] / lam_raw[bright] - 1)) < 0.05


def test_a_panel_gain_and_flaring_pixels_are_measured_not_modelled() -> None:
    rng = np.random.default_rng(1)
    x = detector_frames(rng, 800)
    totals = RunBackground(GEOMETRY.shape, geometry=GEOMETRY).frame_totals(x)
    lo, hi = core_interval(totals, BackgroundConfig().core_fraction)
    core = x[(totals >= lo) & (totals <= hi)]  # the frames the estimate is made of
    cleaned = fk.bin_frames(core).mean(axis=0)  # what their bins hold after cleaning
    raw = estimate_run_background(x, GEOMETRY.valid_pixels()).map
    eff = estimate_run_background(x, geometry=GEOMETRY).map
    beta_raw = fk.background_bins(raw, GEOMETRY)[1][0]
    beta_eff = fk.background_bins(eff, GEOMETRY)[1][0]
    faint = (fk.binned_mask(GEOMETRY) > 0) & (beta_raw < 0.05)
    # the modelled β overshoots the faint bins of the mis-gained half and the flaring pixels
    assert beta_raw[faint].sum() > 1.08 * cleaned[faint].sum()
    assert abs(beta_eff[faint].sum() / cleaned[faint].sum() - 1) < 0.02
    assert abs(beta_eff.sum() / cleaned.sum() - 1) < 0.02
    # so the shot's level, fitted on new empty frames of the run, is right with it
    new = fk.bin_frames(detector_frames(np.random.default_rng(2), 200))
    s_raw = fk.fit_shot_scale(new, beta_raw[None])[:, 0, 0]
    s_eff = fk.fit_shot_scale(new, beta_eff[None])[:, 0, 0]
    assert abs(float(np.median(s_eff)) - 1.0) < 0.04
    assert float(np.median(s_raw)) < 0.94


def test_the_streaming_estimate_is_effective_and_survives_a_restart(tmp_path) -> None:
    rng = np.random.default_rng(3)
    est = RunBackground(GEOMETRY.shape, BackgroundConfig(warmup_frames=50), geometry=GEOMETRY)
    for _ in range(40):
        snap = est.update(detector_frames(rng, 16))
    assert snap.warm
    archived = estimate_run_background(detector_frames(rng, 640), geometry=GEOMETRY).map
    beta_s = fk.background_bins(snap.map, GEOMETRY)[1][0]
    beta_a = fk.background_bins(archived, GEOMETRY)[1][0]
    assert abs(beta_s.sum() / beta_a.sum() - 1) < 0.03

    path = est.save(tmp_path / "bg.h5")
    again = RunBackground(GEOMETRY.shape, geometry=GEOMETRY)
    again.load(path)
    assert np.allclose(again.snapshot.map, est.estimate(), rtol=1e-5, atol=1e-7)

    # a state written before the cleaned bins were kept (version 1) still loads: raw map
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = 1
        del f["bin_sum"]
        del f.attrs["bin_weight"]
    old = RunBackground(GEOMETRY.shape, geometry=GEOMETRY)
    old.load(path)
    plain = RunBackground(GEOMETRY.shape, valid=GEOMETRY.valid_pixels())
    plain.load(path)
    assert np.array_equal(old.snapshot.map, plain.snapshot.map)


def test_the_map_keeps_masked_bins_the_odd_column_and_zero_bins() -> None:
    raw = faint_map()
    raw[:, -1] = 7.0  # the column no bin holds (257 is odd)
    cleaned = fk.cleaned_mean(fk.map_bins(raw, GEOMETRY)[0])
    cleaned[0, 0] = 0.25  # a bin whose raw mean is 0 but which holds photons after cleaning
    raw[:2, :2] = 0.0
    out = effective_map(raw, cleaned, GEOMETRY)
    assert np.array_equal(out[:, -1], raw[:, -1])
    assert np.allclose(out[:2, :2], cleaned_mean_inverse(np.array([0.25]))[0] / 4)
    beta = fk.cleaned_mean(fk.map_bins(out, GEOMETRY)[0])
    live = fk.binned_mask(GEOMETRY) > 0
    assert np.allclose(beta[live], cleaned[live], rtol=1e-4, atol=1e-6)


def test_a_geometry_of_another_shape_is_refused() -> None:
    from hitstream.errors import ConfigError

    with pytest.raises(ConfigError, match="geometry"):
        RunBackground((64, 60), geometry=GEOMETRY)
