"""Physically based single-particle-imaging frames, like CXIDB entry 58 (PR772 at LCLS/AMO).

Model: kinematic (first Born) scattering in the projection approximation. The far-field
amplitude at a detector pixel is the 2-D Fourier transform of the object's projected electron
density at ``q = (pixel offset) * p / (lambda * D)`` (cycles/nm); the detector's q sampling
corresponds to a real-space field of view ``lambda * D / p`` (1.51 um for the defaults).
Amplitudes are exact DFTs at the pixel frequencies (beam centre anywhere, also between
pixels; no wrap-around):

- virus-like particles (``single``, ``multiple``): a uniform, randomly rotated icosahedron;
  its exact projected thickness (piecewise linear, bounded by the 20 faces) is sampled at
  2.8 nm (twice finer than the detector's Nyquist step) and transformed by a pruned,
  zero-padded FFT (``projection_amplitude``);
- spheres (droplets, aggregates of small spheres) and rods (cylinders): analytic form
  factors times the structure factor of their positions;
- several objects add coherently (amplitudes, then ``|F|^2``), so pairs make fringes.

Intensity is ``|F|^2`` times solid angle and polarisation, scaled by a per-frame fluence
(lognormal) calibrated so that a reference single particle gives ``config.photons`` photons;
then flat and low-q background, Poisson noise, hot pixels, optional read noise. Pixels in the
central hole and the gap between the detector halves are exactly 0. Frame ``i`` of seed ``s``
depends only on ``(s, i)`` (``np.random.default_rng([s, i])``), so any slice can be
regenerated independently.

Limits: no Ewald-sphere curvature (q_z is at most ~0.4 speckle widths in the frame corners,
where few photons land), no pixel-area integration, uniform particle density.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence
from functools import lru_cache
from typing import Any

import numpy as np

from hitstream.errors import ConfigError
from hitstream.simulate.beamline import (
    RunBeamline,
    beamline_for,
    detector_response,
    saturate,
    shot_level,
)
from hitstream.simulate.config import OTHER_KINDS, SIM_CLASSES, SimConfig, SimulatedRun
from hitstream.simulate.optics import (
    _amplitude,
    _detector,
    _icosahedron,
    _Object,
    _Particle,
    _Rod,
    _Spheres,
    detector_q,
    random_rotation,
    sphere_form_factor,
)

log = logging.getLogger(__name__)
_Z90 = 1.6448536269514722  # 95 % quantile of the standard normal


def _equivalent_radius(volume: float) -> float:
    return (3.0 * volume / (4.0 * math.pi)) ** (1.0 / 3.0)


def _random_direction(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _place_apart(
    rng: np.random.Generator, radii: Sequence[float], gap: tuple[float, float], dims: int
) -> np.ndarray:
    """Centres of spheres (radii) each at a random gap from an earlier one, not overlapping."""
    pos = np.zeros((len(radii), dims))
    for k in range(1, len(radii)):
        for _ in range(50):
            j = int(rng.integers(k))
            d = _random_direction(rng)[:dims]
            d /= np.linalg.norm(d)
            p = pos[j] + d * (radii[j] + radii[k] + rng.uniform(*gap))
            dist = np.linalg.norm(pos[:k] - p, axis=1)
            if np.all(dist >= (np.asarray(radii[:k]) + radii[k]) * 0.999):
                break
        pos[k] = p
    return pos


def _draw_scene(rng: np.random.Generator, cfg: SimConfig) -> tuple[int, list[_Object], dict]:
    """Class label, objects and truth of one frame (all random draws but noise)."""
    fr = np.asarray(cfg.fractions, float)
    label = int(rng.choice(len(SIM_CLASSES), p=fr / fr.sum()))
    name = SIM_CLASSES[label]
    truth: dict[str, Any] = {
        "n_particles": 0,
        "radius_nm": 0.0,
        "separation_nm": 0.0,
        "subclass": -1,
    }
    objects: list[_Object] = []
    if name in ("single", "multiple"):
        n = (
            1
            if name == "single"
            else int(rng.integers(cfg.multiple_count[0], cfg.multiple_count[1] + 1))
        )
        radii = rng.uniform(*cfg.radius_nm, size=n)
        _, _, rc = _icosahedron()
        centres = _place_apart(rng, list(radii * rc), cfg.multiple_gap_nm, 2)
        centres -= centres.mean(axis=0)
        objects = [
            _Particle(random_rotation(rng), float(r), (float(c[0]), float(c[1])))
            for r, c in zip(radii, centres, strict=True)
        ]
        truth.update(n_particles=n, radius_nm=float(radii.mean()))
        if n > 1:
            d = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
            truth["separation_nm"] = float(d.max())
    elif name == "other":
        w = np.asarray(cfg.other_kinds, float)
        kind = int(rng.choice(len(OTHER_KINDS), p=w / w.sum()))
        truth["subclass"] = kind
        if OTHER_KINDS[kind] == "droplet":
            r = float(rng.uniform(*cfg.droplet_radius_nm))
            objects = [_Spheres(r, np.zeros((1, 2)), float(rng.uniform(*cfg.droplet_contrast)))]
            truth.update(n_particles=1, radius_nm=r)
        elif OTHER_KINDS[kind] == "aggregate":
            k = int(rng.integers(cfg.aggregate_count[0], cfg.aggregate_count[1] + 1))
            r = float(rng.uniform(*cfg.aggregate_sphere_radius_nm))
            pos = _place_apart(rng, [r] * k, (0.0, 0.3 * r), 3)[:, :2]
            objects = [_Spheres(r, pos - pos.mean(axis=0), 1.0)]
            truth.update(n_particles=k, radius_nm=r)
        else:
            a = float(rng.uniform(*cfg.rod_radius_nm))
            length = float(rng.uniform(*cfg.rod_length_nm))
            objects = [_Rod(_random_direction(rng), a, length, 1.0)]
            truth.update(n_particles=1, radius_nm=_equivalent_radius(math.pi * a * a * length))
    return label, objects, truth


@lru_cache(maxsize=16)
def _reference_signal(cfg: SimConfig) -> float:
    """Weighted sum of |F|^2 of a sphere with the mean particle radius (fluence unit)."""
    det = _detector(cfg.geometry)
    qy, qx = detector_q(cfg.geometry)
    f = sphere_form_factor(np.hypot(qy[:, None], qx[None, :]), float(np.mean(cfg.radius_nm)))
    return float(np.sum(f**2 * det.weight))


def run_beamline_of(seed: int, index: int, cfg: SimConfig) -> RunBeamline | None:
    """The beamline of the run frame ``index`` of seed ``seed`` belongs to (None: plain)."""
    if not cfg.beamline.active:
        return None
    det = _detector(cfg.geometry)
    return beamline_for(seed, cfg.run_of(index), cfg.beamline, cfg.geometry, det.weight)


def expected_empty_frame(seed: int, index: int, cfg: SimConfig) -> np.ndarray:
    """(H, W) mean of the empty frames of the run frame ``index`` of seed ``seed`` belongs to,
    as the detector records them: the stray background of every frame (its mean over the
    log-uniform draw) plus the run's beamline background, hot pixels, gains and saturation.
    What the run's background estimate (:mod:`hitstream.background`) converges to."""
    det = _detector(cfg.geometry)
    lo, hi = cfg.background_photons
    mean_bg = (hi - lo) / math.log(hi / lo) if hi > lo else lo
    f = cfg.background_lowq_fraction
    stray = mean_bg * (f * det.bg_lowq + (1 - f) * det.bg_flat)
    beam = run_beamline_of(seed, index, cfg)
    if beam is None:
        return stray.astype(np.float32)
    m = (beam.background + stray) * beam.gain
    m.flat[beam.hot_index] += beam.hot_level * beam.gain.flat[beam.hot_index]
    return np.minimum(m, beam.saturation).astype(np.float32)


def _frame(
    rng: np.random.Generator, cfg: SimConfig, noise: bool, beam: RunBeamline | None = None
) -> tuple[np.ndarray, int, dict[str, Any]]:
    det = _detector(cfg.geometry)
    label, objects, truth = _draw_scene(rng, cfg)
    jitter = rng.normal(0.0, cfg.center_jitter_px, size=2) if cfg.center_jitter_px else (0, 0)
    lo, hi = np.log(cfg.photons)
    fluence = math.exp(rng.normal((lo + hi) / 2, (hi - lo) / (2 * _Z90)))
    bg = math.exp(rng.uniform(*np.log(cfg.background_photons)))
    expected = (bg * cfg.background_lowq_fraction) * det.bg_lowq
    expected += (bg * (1 - cfg.background_lowq_fraction)) * det.bg_flat
    photons = 0.0
    if objects:
        amp = _amplitude(objects, cfg.geometry, (float(jitter[0]), float(jitter[1])))
        signal = (amp.real**2 + amp.imag**2) * det.weight
        raw = float(signal.sum()) * fluence / _reference_signal(cfg)
        photons = min(raw, cfg.max_photons)
        expected += signal * (photons / max(float(signal.sum()), 1e-300))
    background = bg
    if beam is not None and beam.level > 0:  # the run's beamline background, this shot's level
        shot = shot_level(rng, beam)
        expected = expected + shot * beam.background
        background += shot * beam.level * len(det.valid_index)
    truth.update(
        photons=photons,
        background=background,
        bg_level=background / len(det.valid_index),
        center_dy_px=float(jitter[0]),
        center_dx_px=float(jitter[1]),
        hot_pixels=0,
    )
    if not noise:
        return expected.astype(np.float32), label, truth
    frame = rng.poisson(expected).astype(np.float32)
    n_hot = int(rng.poisson(cfg.hot_pixels_per_frame))
    if n_hot:
        idx = rng.choice(det.valid_index, size=n_hot)
        frame.flat[idx] += rng.uniform(*cfg.hot_pixel_photons, size=n_hot).astype(np.float32)
        truth["hot_pixels"] = n_hot
    valid = det.weight > 0
    if beam is not None:
        frame = detector_response(rng, frame, beam, cfg.beamline, valid)
    if cfg.read_noise_photons > 0:
        frame += (rng.normal(0.0, cfg.read_noise_photons, frame.shape) * valid).astype(np.float32)
    if beam is not None:
        saturate(frame, beam)
    return frame, label, truth


_PARAM_DTYPES = {
    "n_particles": np.int16,
    "radius_nm": np.float32,
    "separation_nm": np.float32,
    "photons": np.float32,
    "background": np.float32,
    "subclass": np.int8,
    "center_dy_px": np.float32,
    "center_dx_px": np.float32,
    "hot_pixels": np.int16,
    "beamline_run": np.int32,
    "bg_level": np.float32,
}


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, index])


def _check_seed(seed: int, start: int, stop: int) -> None:
    if seed < 0 or start < 0 or stop < start:
        raise ConfigError(f"need seed >= 0 and 0 <= start <= stop, got {seed}, {start}, {stop}")


def simulate_frames(
    start: int, stop: int, seed: int, config: SimConfig = SimConfig(), noise: bool = True
) -> SimulatedRun:
    """Frames ``start .. stop-1`` of the run defined by ``seed`` and ``config``.

    Frame ``i`` depends only on ``(seed, i)``. ``noise=False`` gives the expected photons per
    pixel (same objects, fluence and background; no Poisson noise, hot pixels, read noise).

    >>> run = simulate_frames(0, 4, seed=1)
    >>> run.frames.shape, run.frames.dtype
    ((4, 260, 257), dtype('float32'))
    """
    _check_seed(seed, start, stop)
    n = stop - start
    frames = np.empty((n, *config.geometry.shape), np.float32)
    labels = np.empty(n, np.int8)
    params = {k: np.zeros(n, t) for k, t in _PARAM_DTYPES.items()}
    for k in range(n):
        beam = run_beamline_of(seed, start + k, config)
        frames[k], labels[k], truth = _frame(_rng(seed, start + k), config, noise, beam)
        truth["beamline_run"] = config.run_of(start + k)
        for key, value in truth.items():
            params[key][k] = value
    return SimulatedRun(frames, labels, SIM_CLASSES, params, start, seed, config)


def simulate_indices(
    indices: Sequence[int] | np.ndarray,
    seed: int,
    config: SimConfig = SimConfig(),
    noise: bool = True,
) -> SimulatedRun:
    """Frames at arbitrary indices of the run ``seed`` (e.g. a few per class for a picture)."""
    idx = [int(i) for i in indices]
    if not idx:
        return simulate_frames(0, 0, seed, config, noise)
    run = concat_runs([simulate_frames(i, i + 1, seed, config, noise) for i in idx])
    run.params["index"] = np.asarray(idx, np.int64)
    return run


def expected_intensity(index: int, seed: int, config: SimConfig = SimConfig()) -> np.ndarray:
    """Noise-free expected photons (H, W) float32 of frame ``index`` of the run ``seed``."""
    return simulate_frames(index, index + 1, seed, config, noise=False).frames[0]


def iter_chunks(
    start: int, stop: int, seed: int, config: SimConfig = SimConfig(), chunk: int = 256
) -> Iterator[SimulatedRun]:
    """``simulate_frames`` in pieces of at most ``chunk`` frames (bounded memory)."""
    for a in range(start, stop, max(1, chunk)):
        yield simulate_frames(a, min(a + max(1, chunk), stop), seed, config)


def concat_runs(runs: Sequence[SimulatedRun]) -> SimulatedRun:
    """Join consecutive pieces of one run."""
    first = runs[0]
    return SimulatedRun(
        frames=np.concatenate([r.frames for r in runs]),
        labels=np.concatenate([r.labels for r in runs]),
        classes=first.classes,
        params={k: np.concatenate([r.params[k] for r in runs]) for k in first.params},
        start=first.start,
        seed=first.seed,
        config=first.config,
    )


def simulate_run(
    n: int, seed: int, config: SimConfig = SimConfig(), progress: bool = False
) -> SimulatedRun:
    """Frames ``0 .. n-1`` in memory (use ``iter_chunks`` / ``RunWriter`` for large runs)."""
    _check_seed(seed, 0, n)
    if not progress:
        return simulate_frames(0, n, seed, config)
    from tqdm import tqdm

    parts = []
    with tqdm(total=n, unit="frame", desc="simulate") as bar:
        for part in iter_chunks(0, n, seed, config, chunk=64):
            parts.append(part)
            bar.update(len(part))
    return concat_runs(parts) if parts else simulate_frames(0, 0, seed, config)
