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

import csv
import json
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial import ConvexHull
from scipy.special import j1

from streamer.errors import ConfigError, InputDataError
from streamer.geometry import DetectorGeometry

log = logging.getLogger(__name__)

SIM_CLASSES: tuple[str, ...] = ("single", "multiple", "empty", "other")
OTHER_KINDS: tuple[str, ...] = ("droplet", "aggregate", "rod")
LABELS_HEADER: tuple[str, str, str] = ("run", "index", "class")
TRUTH_COLUMNS: tuple[str, ...] = (
    "n_particles",
    "radius_nm",
    "separation_nm",
    "photons",
    "background",
    "subclass",
)
_POSITIVE_RANGES = (
    *("radius_nm", "photons", "droplet_radius_nm", "aggregate_sphere_radius_nm"),
    *("rod_radius_nm", "rod_length_nm", "background_photons", "hot_pixel_photons"),
    *("droplet_contrast", "multiple_count", "aggregate_count"),
)
_Z90 = 1.6448536269514722  # 95 % quantile of the standard normal


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

    def __post_init__(self) -> None:
        for f in fields(self):  # lists (e.g. from JSON) become tuples: the config stays hashable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
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


# --- detector sampling ------------------------------------------------------------------


@dataclass(frozen=True)
class _Detector:
    rows: np.ndarray  # (H,) pixel offsets from the nominal centre
    cols: np.ndarray  # (W,)
    q_per_px: float  # cycles/nm per pixel
    weight: np.ndarray  # (H, W) valid * solid angle * polarisation
    valid_index: np.ndarray  # flat indices of valid pixels
    bg_lowq: np.ndarray  # (H, W), sums to 1
    bg_flat: np.ndarray  # (H, W), sums to 1
    fov_nm: float  # real-space field of view lambda * D / p
    nfft: tuple[int, int]  # FFT lengths; projected densities are sampled at fov_nm / nfft


@lru_cache(maxsize=16)
def _detector(g: DetectorGeometry) -> _Detector:
    cy, cx = g.center_px
    rows = np.arange(g.shape[0]) - cy
    cols = np.arange(g.shape[1]) - cx
    valid = g.valid_pixels()
    y = rows[:, None] * g.pixel_size_m
    x = cols[None, :] * g.pixel_size_m
    r2 = y**2 + x**2 + g.distance_m**2
    cos2t = g.distance_m / np.sqrt(r2)
    weight = valid * cos2t**3 * (1.0 - x**2 / r2)  # horizontal polarisation
    r_px = np.hypot(rows[:, None], cols[None, :])
    r0 = 2.0 * max(g.hole_radius_px, 2.0)
    lowq = valid / (1.0 + (r_px / r0) ** 2) ** 2
    fov_nm = g.wavelength_m * g.distance_m / g.pixel_size_m * 1e9
    return _Detector(
        rows=rows,
        cols=cols,
        q_per_px=1.0 / fov_nm,
        weight=weight,
        valid_index=np.flatnonzero(valid),
        bg_lowq=lowq / lowq.sum(),
        bg_flat=valid / valid.sum(),
        fov_nm=fov_nm,
        nfft=(_fft_size(2 * g.shape[0]), _fft_size(2 * g.shape[1])),
    )


def _fft_size(n: int) -> int:
    """Smallest 5-smooth integer >= n (fast FFT length)."""
    while True:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m //= p
        if m == 1:
            return n
        n += 1


def detector_q(
    geometry: DetectorGeometry, center_offset_px: tuple[float, float] = (0.0, 0.0)
) -> tuple[np.ndarray, np.ndarray]:
    """Scattering vectors (cycles/nm) of the rows and columns, beam centre moved by an offset."""
    d = _detector(geometry)
    qy = (d.rows - center_offset_px[0]) * d.q_per_px
    qx = (d.cols - center_offset_px[1]) * d.q_per_px
    return qy, qx


# --- objects and their far-field amplitudes ---------------------------------------------


@lru_cache(maxsize=1)
def _icosahedron() -> tuple[np.ndarray, np.ndarray, float]:
    """Unit face normals, face offsets and circumradius of an icosahedron of volume 4/3 pi."""
    phi = (1 + math.sqrt(5)) / 2
    v = []
    for a in (-1.0, 1.0):
        for b in (-phi, phi):
            v += [(0.0, a, b), (a, b, 0.0), (b, 0.0, a)]
    hull = ConvexHull(np.array(v))
    scale = (4.0 / 3.0 * math.pi / hull.volume) ** (1.0 / 3.0)
    eq = np.unique(np.round(hull.equations, 12), axis=0)  # (20, 4): n.p + c <= 0 inside
    return eq[:, :3], -eq[:, 3] * scale, math.sqrt(1 + phi**2) * scale


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed 3x3 rotation matrix (from a random unit quaternion)."""
    w, x, y, z = rng.normal(size=4)
    n = math.sqrt(w * w + x * x + y * y + z * z)
    w, x, y, z = w / n, x / n, y / n, z / n
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def icosahedron_thickness(
    rotation: np.ndarray, radius_nm: float, ys: np.ndarray, xs: np.ndarray
) -> np.ndarray:
    """Projected thickness (nm, along the beam z) of a rotated icosahedron centred at 0.

    ``radius_nm`` is the volume-equivalent radius; ``ys``/``xs`` are the grid coordinates.
    Returns (len(ys), len(xs)).
    """
    normals, offsets, _ = _icosahedron()
    n = normals @ rotation.T  # rotated (x, y, z) normals
    a = offsets * radius_nm - xs[None, :, None] * n[:, 0] - ys[:, None, None] * n[:, 1]
    nz = n[:, 2]
    upper = np.min(a[..., nz > 0] / nz[nz > 0], axis=-1)
    lower = np.max(a[..., nz < 0] / nz[nz < 0], axis=-1)
    return np.maximum(upper - lower, 0.0)


def projection_amplitude(
    thickness: np.ndarray,
    origin_nm: tuple[float, float],
    nfft: tuple[int, int],
    center_px: tuple[float, float],
    shape: tuple[int, int],
    fov_nm: float,
) -> np.ndarray:
    """Fourier transform of a sampled projected density at the detector pixels, (H, W).

    Sample ``(a, b)`` of ``thickness`` sits at ``origin_nm + (a, b) * fov_nm / nfft``; pixel
    ``(i, j)`` sees ``q = ((i, j) - center_px) / fov_nm`` (cycles/nm). With that sampling the
    exact DFT at the pixel frequencies is a zero-padded FFT of length ``nfft`` (>= 2 x shape,
    so the density is sampled twice as finely as the detector's Nyquist step), keeping the
    first H x W bins after a modulation that moves ``center_px`` to bin 0. No BLAS involved.
    """
    (py, px), (ny, nx), (h, w) = thickness.shape, nfft, shape
    cy, cx = center_px
    t = thickness.astype(np.complex64)
    t *= np.exp((2j * np.pi * cy / ny) * np.arange(py)).astype(np.complex64)[:, None]
    t *= np.exp((2j * np.pi * cx / nx) * np.arange(px)).astype(np.complex64)[None, :]
    f = np.fft.fft(t, n=nx, axis=1)[:, :w]
    f = np.fft.fft(f, n=ny, axis=0)[:h]
    qy = (np.arange(h) - cy) / fov_nm
    qx = (np.arange(w) - cx) / fov_nm
    f *= np.exp((-2j * np.pi * origin_nm[0]) * qy).astype(np.complex64)[:, None]
    f *= np.exp((-2j * np.pi * origin_nm[1]) * qx).astype(np.complex64)[None, :]
    return f * np.float32(fov_nm**2 / (ny * nx))


def sphere_form_factor(q: np.ndarray, radius_nm: float) -> np.ndarray:
    """Amplitude of a uniform sphere of unit density at |q| (cycles/nm): volume at q = 0."""
    x = 2 * np.pi * q * radius_nm
    xs = np.maximum(x, 1e-3)
    f = 3 * (np.sin(xs) - xs * np.cos(xs)) / xs**3
    f = np.where(x < 1e-3, 1.0 - x**2 / 10.0, f)
    return f * (4.0 / 3.0 * np.pi * radius_nm**3)


def rod_form_factor(
    qy: np.ndarray, qx: np.ndarray, axis: np.ndarray, radius_nm: float, length_nm: float
) -> np.ndarray:
    """Amplitude of a uniform cylinder (unit density, centred at 0, 3-D unit ``axis`` as
    (x, y, z)) on the q_z = 0 plane; (H, W)."""
    qpar = qx[None, :] * axis[0] + qy[:, None] * axis[1]
    qperp = np.sqrt(np.maximum(qy[:, None] ** 2 + qx[None, :] ** 2 - qpar**2, 0.0))
    u = 2 * np.pi * qperp * radius_nm
    us = np.maximum(u, 1e-6)
    disc = np.where(u < 1e-6, 1.0, 2 * j1(us) / us)
    return np.pi * radius_nm**2 * length_nm * np.sinc(qpar * length_nm) * disc


def positions_factor(positions: np.ndarray, qy: np.ndarray, qx: np.ndarray) -> np.ndarray:
    """Structure factor sum_k exp(-2 pi i q.r_k) of in-plane positions (K, 2) as (y, x)."""
    ey = np.exp((-2j * np.pi) * np.outer(qy, positions[:, 0])).astype(np.complex64)
    ex = np.exp((-2j * np.pi) * np.outer(positions[:, 1], qx)).astype(np.complex64)
    return ey @ ex


@dataclass(frozen=True)
class _Particle:  # uniform icosahedron
    rotation: np.ndarray
    radius: float
    center: tuple[float, float]  # (y, x) nm


@dataclass(frozen=True)
class _Spheres:
    radius: float
    positions: np.ndarray  # (K, 2) (y, x) nm
    contrast: float


@dataclass(frozen=True)
class _Rod:
    axis: np.ndarray
    radius: float
    length: float
    contrast: float


_Object = _Particle | _Spheres | _Rod


def _amplitude(
    objects: Sequence[_Object], g: DetectorGeometry, offset_px: tuple[float, float]
) -> np.ndarray:
    """Coherent sum of the objects' far-field amplitudes, (H, W) complex64; the beam centre
    sits ``offset_px`` from the nominal one."""
    det = _detector(g)
    qy, qx = detector_q(g, offset_px)
    total = np.zeros(g.shape, np.complex64)
    qabs = None
    for ob in objects:
        if isinstance(ob, _Particle):
            _, _, rc = _icosahedron()
            hy, hx = det.fov_nm / det.nfft[0], det.fov_nm / det.nfft[1]
            ny = math.ceil(rc * ob.radius / hy) + 1
            nx = math.ceil(rc * ob.radius / hx) + 1
            ys, xs = np.arange(-ny, ny + 1) * hy, np.arange(-nx, nx + 1) * hx
            t = icosahedron_thickness(ob.rotation, ob.radius, ys, xs)
            center = (g.center_px[0] + offset_px[0], g.center_px[1] + offset_px[1])
            origin = (ob.center[0] + ys[0], ob.center[1] + xs[0])
            total += projection_amplitude(t, origin, det.nfft, center, g.shape, det.fov_nm)
            continue
        if qabs is None:
            qabs = np.sqrt(qy[:, None] ** 2 + qx[None, :] ** 2)
        if isinstance(ob, _Spheres):
            f = sphere_form_factor(qabs, ob.radius) * ob.contrast
            if len(ob.positions) == 1 and not ob.positions.any():
                total += f.astype(np.complex64)
            else:
                total += positions_factor(ob.positions, qy, qx) * f.astype(np.float32)
        else:
            f = rod_form_factor(qy, qx, ob.axis, ob.radius, ob.length) * ob.contrast
            total += f.astype(np.complex64)
    return total


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


def _frame(
    rng: np.random.Generator, cfg: SimConfig, noise: bool
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
    truth.update(
        photons=photons,
        background=bg,
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
    if cfg.read_noise_photons > 0:
        frame += (
            rng.normal(0.0, cfg.read_noise_photons, frame.shape) * det.weight.astype(bool)
        ).astype(np.float32)
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
        frames[k], labels[k], truth = _frame(_rng(seed, start + k), config, noise)
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


# --- files ------------------------------------------------------------------------------


def default_labels_path(path: str | Path) -> Path:
    """``<dir>/<stem>.labels.csv`` beside an HDF5 file."""
    p = Path(path)
    return p.with_name(p.stem + ".labels.csv")


class RunWriter:
    """Streams frames into ONE (N, H, W) float32 HDF5 dataset and labels into a CSV.

    Chunked one frame per chunk. ``compression``: "gzip" (with shuffle; readable by any HDF5
    tool), "lzf" (h5py only), "bitshuffle" (needs ``import hdf5plugin`` to read) or None.
    Use as a context manager; call ``write(run)`` with consecutive pieces.
    """

    def __init__(
        self,
        path: str | Path,
        n_frames: int,
        *,
        shape: tuple[int, int] = (260, 257),
        dataset: str = "data",
        labels_path: str | Path | None = None,
        run_name: str | None = None,
        classes: Sequence[str] = SIM_CLASSES,
        compression: str | None = "gzip",
        truth: bool = True,
        overwrite: bool = False,
        attrs: dict[str, Any] | None = None,
    ) -> None:
        import h5py

        self.path = Path(path)
        self.labels_path = Path(labels_path) if labels_path else default_labels_path(path)
        self.run_name = run_name or self.path.name
        self.dataset = dataset
        self.n_frames = n_frames
        self.classes = tuple(classes)
        self.truth = truth
        for p in (self.path, self.labels_path):
            if p.exists() and not overwrite:
                raise ConfigError(f"{p} exists; choose another name or overwrite (--overwrite)")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.labels_path.parent.mkdir(parents=True, exist_ok=True)
        self._file = h5py.File(self.path, "w")
        try:
            self._dset = self._file.create_dataset(
                dataset,
                shape=(n_frames, *shape),
                dtype=np.float32,
                chunks=(1, *shape),
                **_compression_args(compression),
            )
            for key, value in (attrs or {}).items():
                self._dset.attrs[key] = value
            self._csv_file = open(self.labels_path, "w", newline="", encoding="utf-8")  # noqa: SIM115
        except BaseException:
            self._file.close()
            raise
        self._csv = csv.writer(self._csv_file, lineterminator="\n")
        self._csv.writerow(LABELS_HEADER + (TRUTH_COLUMNS if truth else ()))
        self.written = 0

    def write(self, run: SimulatedRun) -> None:
        """Append the frames and labels of ``run`` after those already written."""
        n = len(run)
        if self.written + n > self.n_frames:
            raise ConfigError(f"{self.path}: more than the {self.n_frames} frames announced")
        self._dset[self.written : self.written + n] = run.frames
        p = run.params
        for k in range(n):
            row: list[Any] = [self.run_name, self.written + k, run.classes[run.labels[k]]]
            if self.truth:
                sub = int(p["subclass"][k]) if "subclass" in p else -1
                row += [
                    int(p["n_particles"][k]),
                    f"{p['radius_nm'][k]:.2f}",
                    f"{p['separation_nm'][k]:.1f}",
                    f"{p['photons'][k]:.1f}",
                    f"{p['background'][k]:.1f}",
                    OTHER_KINDS[sub] if sub >= 0 else "",
                ]
            self._csv.writerow(row)
        self.written += n

    def close(self) -> None:
        if self._file:
            self._file.close()
            self._csv_file.close()
            self._file = None
            if self.written != self.n_frames:
                log.warning("%s: %d of %d frames written", self.path, self.written, self.n_frames)

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _compression_args(name: str | None) -> dict[str, Any]:
    if name in (None, "none"):
        return {}
    if name == "gzip":
        return {"compression": "gzip", "compression_opts": 1, "shuffle": True}
    if name == "lzf":
        return {"compression": "lzf", "shuffle": True}
    if name in ("bitshuffle", "lz4"):
        import hdf5plugin

        return dict(
            hdf5plugin.Bitshuffle(cname="lz4") if name == "bitshuffle" else hdf5plugin.LZ4()
        )
    raise ConfigError(f"unknown compression {name!r}; choose gzip, lzf, bitshuffle, lz4 or none")


def run_attrs(run: SimulatedRun) -> dict[str, Any]:
    """Provenance attributes for the frames dataset."""
    attrs: dict[str, Any] = {
        "classes": json.dumps(list(run.classes)),
        "simulator": "hitstream trainer.simulate",
    }
    if run.config is not None:
        attrs["geometry"] = json.dumps(run.config.geometry.as_attrs())
        attrs["sim_config"] = run.config.as_json()
    if run.seed is not None:
        attrs["seed"] = run.seed
        attrs["first_index"] = run.start
    return attrs


def write_run(
    path: str | Path,
    run: SimulatedRun,
    dataset: str = "data",
    labels_path: str | Path | None = None,
    run_name: str | None = None,
    chunk: int = 256,
    compression: str | None = "gzip",
    overwrite: bool = False,
) -> Path:
    """Write ``run`` as one HDF5 dataset plus a labels CSV (``run,index,class`` + truth).

    ``chunk`` frames are written per call. Returns the HDF5 path.
    """
    with RunWriter(
        path,
        len(run),
        shape=run.frames.shape[1:],
        dataset=dataset,
        labels_path=labels_path,
        run_name=run_name,
        classes=run.classes,
        compression=compression,
        truth=bool(run.params),
        overwrite=overwrite,
        attrs=run_attrs(run),
    ) as w:
        for a in range(0, len(run), max(1, chunk)):
            b = min(a + max(1, chunk), len(run))
            w.write(
                SimulatedRun(
                    run.frames[a:b],
                    run.labels[a:b],
                    run.classes,
                    {k: v[a:b] for k, v in run.params.items()},
                )
            )
    return Path(path)


def read_labels_csv(path: str | Path) -> tuple[list[str], np.ndarray, list[str]]:
    """Read ``run,index,class[,...]``; returns run names, frame indices (int64), class names.

    Extra columns after the first three are allowed and ignored. Raises InputDataError
    naming the file and line for anything malformed.
    """
    p = Path(path)
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except OSError as exc:
        raise InputDataError(f"{p}: cannot read labels file ({exc.strerror})") from exc
    if not rows or tuple(c.strip() for c in rows[0][:3]) != LABELS_HEADER:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise InputDataError(f"{p}: header must start with 'run,index,class', got {got!r}")
    width = len(rows[0])
    runs: list[str] = []
    index: list[int] = []
    classes: list[str] = []
    for line, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != width:
            raise InputDataError(f"{p}:{line}: {len(row)} fields, header has {width}")
        run, idx, cls = (c.strip() for c in row[:3])
        if not run or not cls:
            raise InputDataError(f"{p}:{line}: empty run or class")
        try:
            i = int(idx)
        except ValueError:
            raise InputDataError(f"{p}:{line}: index {idx!r} is not an integer") from None
        if i < 0:
            raise InputDataError(f"{p}:{line}: negative index {i}")
        runs.append(run)
        index.append(i)
        classes.append(cls)
    return runs, np.asarray(index, np.int64), classes
