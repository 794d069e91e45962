"""Template features: how frames and templates are preprocessed and compared.

Two modes, both on raw photon-count frames ``(N, 260, 257)``:

``bruteforce`` (the seed's reference, kept for comparison)
    Seed preprocessing (negatives → 0, scale the maximum to 255), 36 in-plane rotations
    0°, 5°, …, 175° of each template (``scipy.ndimage.rotate`` about the beam centre, which
    is the frame centre, same size, bilinear), score = smallest L2 distance to any rotated
    template. Vectorised as one GEMM per chunk of frames
    (``||x - t||² = ||x||² + ||t||² - 2 x·t``), the same maths as the note's loops (the
    nearest few templates are recomputed from differences: float32 rounding). Note that
    rotating a template also rotates its zeroed hole and gap, which the frame has
    unrotated: on masked frames this mismatch often outweighs the pattern, and 0° wins.

``polar`` (default; rotation-exact)
    Frames are resampled on a polar grid around the beam centre (:mod:`trainer.templates.polar`:
    area-weighted, Friedel-folded over 0–180°, hole/gap masked and filled identically in
    frames and templates). An in-plane rotation is then a circular shift along the angle,
    so for every template the best rotation comes from ONE circular cross-correlation
    along the angle, summed over radii, done in Fourier space: a band-limited spectrum per
    ring (``n_harmonics``), per template the cross-power summed over rings as one batched
    matrix product, the correlation sampled at ``n_shifts`` angles by a second matrix
    product (a DFT as a GEMM), refined by a parabola through the peak. The best
    template's angle is refined again on a ``fine_shifts`` grid.
    ``distance_t² = ||f||² + ||g_t||² - 2 max_φ corr_t(φ)``, where both signals are
    normalised (below), so ``||g_t||² = ||f||² = 1`` and the distance lies in [0, 2].

Preprocessing for photon-sparse frames (``polar``), what and why:

1. 2×2 sum binning, noise floor subtracted, clip to [0, PIXEL_MAX], NaN → 0, detector mask,
   hot-pixel cap
   (``HOT_ABS + HOT_REL × mean of the 8 neighbours``): exactly the CNN's
   :func:`hitstream.frame_kernel.bin_frames` (the ONNX graph shares it). Binning is the
   low-pass: fringes of multiple hits are only a few pixels wide, so nothing coarser.
2. Polar resampling of the cleaned counts (cell means), rings from the hole's edge out.
3. Two channels, each L2-normalised over its own polar grid (shots of different
   brightness compare alike), stacked along the ring axis with weights
   ``linear_weight`` and ``1 - linear_weight``:

   - *linear*: the counts themselves, area-weighted. Sharp and dominated by the bright
     low-q region, where the fringes of multiple hits and the rings of droplets are; this
     channel separates singles from other classes best.
   - *sqrt*: ``sqrt`` (variance-stabilising for Poisson counts) of the counts smoothed
     by a Gaussian of ``smooth_px`` (full-resolution pixels; radially, and along each ring
     with the same arc length). It weighs the faint mid-q speckles that carry the in-plane
     orientation; this channel finds the right template and angle.

4. Frame noise correction: Poisson noise adds ``sum_p u_p λ_p`` to the energy of a frame's
   linear channel (:attr:`PolarFeatures.noise_vector`, exact for the fixed linear map;
   ``u @ counts`` estimates it without bias). Frames are normalised by their *signal*
   energy ``max(E - noise, noise_floor × E)`` instead of ``E``: otherwise a faint single
   is pushed away from every template by its own noise, and bright frames of any class
   (multiples!) look closer than faint singles. Templates are normalised plainly, so the
   choice of template and angle is unchanged; only the distance's scale per frame is.

bench/bench_templates.py measures each choice (linear only, sqrt only, no smoothing, no
noise correction) against the seed's brute force and raw pixels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import scipy.sparse as sp

from hitstream import frame_kernel as pp
from hitstream.errors import ConfigError, InputDataError
from hitstream.geometry import DetectorGeometry
from trainer.templates.polar import PolarGrid, PolarMap, build_polar_map

MODES: tuple[str, ...] = ("polar", "bruteforce")
SEED_SCALE = 255.0


# --- configuration ----------------------------------------------------------------------


@dataclass(frozen=True)
class PolarConfig:
    """Parameters of the polar mode. Lengths in full-resolution detector pixels."""

    r_min_px: float = 7.0  # inner edge of the first ring (hole radius 6 px + 1)
    r_max_px: float = 0.0  # outer edge of the last ring; 0: largest circle in the frame
    radial_step_px: float = 3.0
    n_angles: int = 64  # polar cells over 180°
    n_harmonics: int = 16  # angular Fourier components kept (band limit)
    n_shifts: int = 64  # correlation samples over 180° for every template (+ parabola)
    fine_shifts: int = 1800  # samples over 180° for the best template's angle (+ parabola)
    linear_weight: float = 0.5  # weight of the linear channel; the sqrt channel gets the rest
    smooth_px: float = 4.0  # Gaussian sigma of the sqrt channel
    noise_floor: float = 0.5  # frames: signal energy >= this fraction of the energy; 1: off

    def __post_init__(self) -> None:
        if not 0 <= self.linear_weight <= 1:
            raise ConfigError(f"linear_weight must be within [0, 1], got {self.linear_weight}")
        if self.smooth_px < 0 or self.radial_step_px <= 0:
            raise ConfigError("smooth_px must be >= 0 and radial_step_px > 0")
        if not 0 < self.noise_floor <= 1:
            raise ConfigError(f"noise_floor must be within (0, 1], got {self.noise_floor}")
        if not 1 <= self.n_harmonics <= self.n_angles // 2 + 1:
            raise ConfigError(
                f"n_harmonics must be within 1..n_angles/2+1 = {self.n_angles // 2 + 1}, "
                f"got {self.n_harmonics}"
            )
        for name in ("n_shifts", "fine_shifts"):
            if getattr(self, name) < 2 * self.n_harmonics:
                raise ConfigError(f"{name} must be >= 2 * n_harmonics, got {getattr(self, name)}")

    @property
    def channels(self) -> tuple[tuple[str, float], ...]:
        """``(name, weight)`` of the channels in use (weight > 0)."""
        chans = (("linear", self.linear_weight), ("sqrt", 1.0 - self.linear_weight))
        return tuple((n, w) for n, w in chans if w > 0)


@dataclass(frozen=True)
class BruteForceConfig:
    """The seed's template matching: rotated copies of every template."""

    n_rotations: int = 36
    step_deg: float = 5.0
    order: int = 1  # interpolation order of scipy.ndimage.rotate
    preprocessing: str = "seed"  # "seed" (clip, max → 255) or "raw" (photon counts as read)

    def __post_init__(self) -> None:
        if self.n_rotations < 1 or self.step_deg <= 0 or self.order not in range(6):
            raise ConfigError(f"invalid brute-force config {self}")
        if self.preprocessing not in ("seed", "raw"):
            raise ConfigError(
                f"brute-force preprocessing must be seed or raw, got {self.preprocessing!r}"
            )

    def prepare(self, frames: np.ndarray) -> np.ndarray:
        """The configured preprocessing of raw frames (float32)."""
        if self.preprocessing == "raw":
            return np.nan_to_num(np.asarray(frames, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
        return seed_preprocess(frames)

    def angles_deg(self) -> np.ndarray:
        return np.arange(self.n_rotations) * self.step_deg


# --- preprocessing ----------------------------------------------------------------------


def seed_preprocess(frames: np.ndarray) -> np.ndarray:
    """The seed's preprocessing: negatives (and NaN) → 0, then scaled so the maximum is 255
    (an all-zero frame stays 0)."""
    x = np.nan_to_num(np.asarray(frames, np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    x = np.maximum(x, np.float32(0))
    peak = x.max(axis=(-2, -1), keepdims=True)
    return x * (np.float32(SEED_SCALE) / np.where(peak > 0, peak, np.float32(1)))


def rotate_frames(images: np.ndarray, angles_deg: Sequence[float], order: int = 1) -> np.ndarray:
    """(N, H, W) → (N, len(angles), H, W): each image rotated in-plane about the frame centre
    (= the beam centre of :class:`DetectorGeometry`) by every angle, same size, zero fill.
    Positive angles turn counter-clockwise as displayed with row 0 on top."""
    from scipy import ndimage

    x = np.asarray(images, np.float32)
    out = np.empty((x.shape[0], len(angles_deg), *x.shape[1:]), np.float32)
    for i, img in enumerate(x):
        for j, a in enumerate(angles_deg):
            out[i, j] = img if a == 0 else ndimage.rotate(img, float(a), reshape=False, order=order)
    return out


# --- polar features ---------------------------------------------------------------------


@dataclass(frozen=True)
class PolarFeatures:
    """Everything fixed that turns raw frames into normalised polar spectra.

    ``features(frames)`` → (N, n_channels × n_radii, n_harmonics) complex64 with
    ``sum |.|² = ||f||²`` of the band-limited, area-weighted, normalised polar signal, so
    that cross-correlations are plain sums of products (see :meth:`correlation_basis`).
    """

    config: PolarConfig
    geometry: DetectorGeometry
    map: PolarMap

    @classmethod
    def build(cls, config: PolarConfig, geometry: DetectorGeometry | None = None) -> PolarFeatures:
        geometry = geometry or DetectorGeometry()
        return cls(
            config, geometry, build_polar_map(polar_grid(config, geometry), _valid(geometry))
        )

    @property
    def grid(self) -> PolarGrid:
        return self.map.grid

    @property
    def n_rows(self) -> int:
        """Rings of all channels together."""
        return self.grid.n_radii * len(self.config.channels)

    @cached_property
    def spectral_scale(self) -> np.ndarray:
        """(n_radii, K) float32: area weight of the ring × sqrt(c_k / A), c_0 = 1, else 2
        (1 for the Nyquist term), so that ``sum |scaled rfft|²`` is the weighted L2 norm²."""
        a, k = self.grid.n_angles, self.config.n_harmonics
        c = np.full(k, 2.0)
        c[0] = 1.0
        if a % 2 == 0 and k == a // 2 + 1:
            c[-1] = 1.0
        return (self.map.area_weight[:, None] * np.sqrt(c / a)[None, :]).astype(np.float32)

    @cached_property
    def smoothing(self) -> tuple[np.ndarray, np.ndarray]:
        """(radial (R, R), angular (R, A, A)) Gaussian smoothing of the sqrt channel:
        ``smoothed = radial @ (cells @ angular[ring])``, rows summing to 1."""
        g = self.grid
        sigma = self.config.smooth_px / pp.BIN  # in binned pixels, like the grid
        r = g.radii()
        if sigma <= 0:
            eye = np.broadcast_to(
                np.eye(g.n_angles, dtype=np.float32), (g.n_radii, g.n_angles, g.n_angles)
            )
            return np.eye(g.n_radii, dtype=np.float32), np.ascontiguousarray(eye)
        rad = np.exp(-0.5 * ((r[:, None] - r[None, :]) / sigma) ** 2)
        rad /= rad.sum(axis=1, keepdims=True)
        d = (np.arange(g.n_angles)[:, None] - np.arange(g.n_angles)[None, :]) * g.dtheta
        d = (d + math.pi / 2) % math.pi - math.pi / 2  # circular over 180°
        s_theta = sigma / r  # same arc length on every ring
        ang = np.exp(-0.5 * (d[None] / s_theta[:, None, None]) ** 2)
        ang /= ang.sum(axis=1, keepdims=True)
        return rad.astype(np.float32), ang.astype(np.float32)

    def polar(
        self, frames: np.ndarray, background: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Raw frames → polar cell means of the cleaned counts (N, n_radii, n_angles) and
        the Poisson noise energy of the linear channel (N,) (see :attr:`noise_vector`).

        ``background``: the run's map ((H, W), (1, H, W) or one per frame): the cells then
        hold what stands above it (cleaned counts minus what an empty bin of that
        background holds, at least 0); the noise is still that of all the counts."""
        x = pp.check_frames(frames, self.geometry)
        beta = None
        if background is not None:
            beta = pp.background_bins(background, self.geometry)[1]
            if len(beta) not in (1, len(x)):
                raise InputDataError(f"{len(beta)} background maps for {len(x)} frames")
        g = self.grid
        cells = np.empty((len(x), g.n_radii, g.n_angles), np.float32)
        noise = np.empty(len(x), np.float32)
        for a, b in pp.iter_binned(x, self.geometry):  # small blocks stay in the CPU cache
            noise[a : a + len(b)] = b.reshape(len(b), -1) @ self.noise_vector
            if beta is not None:
                b = np.maximum(b - (beta if len(beta) == 1 else beta[a : a + len(b)]), 0)
            cells[a : a + len(b)] = self.map.apply(b)
        return cells, noise

    @cached_property
    def noise_vector(self) -> np.ndarray:
        """(h*w,) float32 ``u``: the expected noise energy that Poisson counts ``b`` (binned)
        add to the linear channel (area-weighted, band-limited, before normalisation) is
        ``sum_p u_p λ_p``, so ``u @ b`` is an unbiased estimate of it from the frame itself.
        ``u_p = ||P A M e_p||²``: map column ``p``, ring weights ``A``, band projection ``P``."""
        g, k = self.grid, self.config.n_harmonics
        c = np.full(k, 2.0)
        c[0] = 1.0
        if g.n_angles % 2 == 0 and k == g.n_angles // 2 + 1:
            c[-1] = 1.0
        d = np.arange(g.n_angles)[:, None] - np.arange(g.n_angles)[None, :]
        band = np.cos(2 * np.pi * np.arange(k)[None, None, :] * d[:, :, None] / g.n_angles) @ c
        band /= g.n_angles  # (A, A): x' band x = band-limited energy of a ring
        a2 = self.map.area_weight.astype(np.float64) ** 2
        q = sp.block_diag([a2[i] * band for i in range(g.n_radii)], format="csr")
        m = self.map.matrix.astype(np.float64)
        return np.asarray(m.multiply(q @ m).sum(axis=0)).ravel().astype(np.float32)

    def channels_of(self, cells: np.ndarray) -> np.ndarray:
        """(N, R, A) cell means → (N, n_channels * R, A) unweighted channel signals."""
        out = []
        for name, _ in self.config.channels:
            if name == "linear":
                out.append(cells)
            else:
                rad, ang = self.smoothing
                s = np.matmul(cells.transpose(1, 0, 2), ang).transpose(1, 0, 2)
                s = np.einsum("ij,njb->nib", rad, s, optimize=True)
                out.append(np.sqrt(np.maximum(s, np.float32(0))))
        return np.concatenate(out, axis=1) if len(out) > 1 else out[0]

    @cached_property
    def dft(self) -> np.ndarray:
        """(A, 2K) float32 ``[cos | -sin]``: ``x @ dft`` is ``[Re, Im]`` of ``rfft(x)[:K]``."""
        a = np.arange(self.grid.n_angles)[:, None]
        k = np.arange(self.config.n_harmonics)[None, :]
        phase = 2 * np.pi * a * k / self.grid.n_angles
        return np.concatenate([np.cos(phase), -np.sin(phase)], axis=1).astype(np.float32)

    @cached_property
    def row_scale(self) -> np.ndarray:
        """(C*R, 1, K) :attr:`spectral_scale` for every channel's rings."""
        return np.tile(self.spectral_scale, (len(self.config.channels), 1))[:, None, :]

    def real_spectra(self, signals: np.ndarray, noise: np.ndarray | None = None) -> np.ndarray:
        """(N, C*R, A) channel signals → normalised band-limited spectra as real and
        imaginary parts (N, C*R, 2, K) float32 (the DFT is one GEMM).

        Each channel is scaled to energy ``weight``. With ``noise`` (frames, not templates),
        the linear channel is scaled by its estimated *signal* energy instead,
        ``max(E - noise, noise_floor * E)``, so that photon-poor frames are not pushed
        away from every template by their own Poisson noise."""
        n, rows, a = signals.shape
        k = self.config.n_harmonics
        y = (signals.reshape(n * rows, a) @ self.dft).reshape(n, rows, 2, k)
        y *= self.row_scale
        r = self.grid.n_radii
        for c, (name, w) in enumerate(self.config.channels):
            part = y[:, c * r : (c + 1) * r]
            e = np.einsum("nrck,nrck->n", part, part, dtype=np.float64)
            if noise is not None and name == "linear":
                e = np.maximum(e - noise, self.config.noise_floor * e)
            scale = (math.sqrt(w) / np.sqrt(np.maximum(e, 1e-30))).astype(np.float32)
            part *= scale[:, None, None, None]
        return y

    def features_real(
        self, frames: np.ndarray, frame_side: bool = True, background: np.ndarray | None = None
    ) -> np.ndarray:
        """Raw frames (N, H, W) → (N, C*R, 2, K) float32 (see :meth:`real_spectra`);
        ``frame_side=False`` for templates (no noise correction); ``background``: see
        :meth:`polar`."""
        cells, noise = self.polar(frames, background)
        return self.real_spectra(self.channels_of(cells), noise if frame_side else None)

    def features(
        self, frames: np.ndarray, frame_side: bool = False, background: np.ndarray | None = None
    ) -> np.ndarray:
        """Raw frames (N, H, W) → (N, C*R, K) complex64 template spectra (see the class
        docstring)."""
        y = self.features_real(frames, frame_side, background)
        return (y[:, :, 0] + 1j * y[:, :, 1]).astype(np.complex64)

    def correlation_basis(self, n: int) -> np.ndarray:
        """(2K, n) float32: ``corr(s) = [Re C, Im C] @ basis`` at angles ``180° s / n``,
        where ``C_k = sum_r F_rk conj(G_rk)`` (frame F, template G)."""
        k = np.arange(self.config.n_harmonics)[:, None]
        phase = 2 * np.pi * k * np.arange(n)[None, :] / n
        return np.concatenate([np.cos(phase), -np.sin(phase)]).astype(np.float32)


def polar_grid(config: PolarConfig, geometry: DetectorGeometry) -> PolarGrid:
    """The polar grid on the 2×2-binned frame for ``config`` (lengths converted to bins)."""
    h, w = pp.binned_shape(geometry)
    cy, cx = geometry.center_px
    b = pp.BIN
    centre = ((cy - (b - 1) / 2) / b, (cx - (b - 1) / 2) / b)  # bin k covers pixels bk..bk+b-1
    inside = min(centre[0], h - 1 - centre[0], centre[1], w - 1 - centre[1]) - 0.5
    r_max = config.r_max_px / b if config.r_max_px > 0 else inside
    r_min = config.r_min_px / b
    if not 0 <= r_min < r_max:
        raise ConfigError(f"polar rings need 0 <= r_min_px < r_max_px, got {config}")
    n = max(1, round((r_max - r_min) / (config.radial_step_px / b)))
    return PolarGrid((h, w), centre, r_min, r_max, n, config.n_angles)


def _valid(geometry: DetectorGeometry) -> np.ndarray:
    return np.asarray(pp.binned_mask(geometry)) > 0
