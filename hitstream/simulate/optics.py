"""Detector sampling and far-field amplitudes of the simulated objects (pure numpy).

Kinematic (first Born) scattering in the projection approximation: the amplitude at a pixel
is the 2-D Fourier transform of the object's projected electron density at
``q = (pixel offset) * p / (lambda * D)`` (cycles/nm), computed as exact DFTs at the pixel
frequencies (beam centre anywhere, no wrap-around). Icosahedral particles are sampled as
their exact projected thickness; spheres and rods use analytic form factors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from hitstream.geometry import DetectorGeometry

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
    from scipy.spatial import ConvexHull  # scipy on first use: the package imports without it

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
    from scipy.special import j1

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
