"""The model's grid in q: resample a real detector's frames onto it, photon-conserving.

A bundle's :class:`~hitstream.geometry.DetectorGeometry` (frame shape, pixel size,
distance, wavelength, beam in the middle) is the q-space grid the model was trained on:
pixel ``(i, j)`` sees the scattering direction of the point ``((j - cx) p, (i - cy) p, D)``.
A :class:`Resampler` maps every pixel of a :class:`~hitstream.detectors.Detector` onto
that grid once per geometry and energy: a point is taken to q (``q = (k_out - k_in) / 2π``,
transverse part) and then to the model pixel with that q. When the detector's pixels are
about the grid's size in q or smaller, each pixel's photons go whole to the model pixel of
its centre (``whole_pixels``: counts stay whole numbers, as the model was trained on; a
grid pixel no centre reaches counts as uncovered); larger pixels are cut into parts that
share their photons (every grid pixel under the detector gets its share). Either way the
map is a sparse matrix: resampling a frame is one sparse product that keeps the photon
count. Coverage is measured with the pixels cut into parts no wider than half a model pixel.

Model pixels that the detector covers for less than ``MIN_COVER`` of their area (module
gaps, outside the detector) get nothing (0 photons, as the model's own gaps) and are
reported in :attr:`Resampler.covered`. Masked detector pixels (the geometry's, the run's
bad-pixel mask, and NaN/Inf pixels of a frame) contribute nothing.

A run whose detector does not cover the model's grid (too few model pixels covered)
raises :class:`~hitstream.errors.ConfigError` naming the q-ranges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from hitstream.detectors import Detector
from hitstream.errors import ConfigError
from hitstream.geometry import DetectorGeometry

SUBPIXELS = 4  # each detector pixel is cut into at least SUBPIXELS x SUBPIXELS parts
MIN_COVER = 0.5  # a model pixel covered for less than this share of its area gets nothing
MIN_GRID_COVER = 0.5  # the detector must cover this share of the model's valid pixels
MIN_LOW_Q_COVER = 0.9  # below this share of the low-q disc covered: a warning
LOW_Q_RADIUS = 1 / 3  # the low-q disc: this share of the frame's half-size around the beam
MAX_WHOLE_PIXEL_AREA = 1.2  # larger detector pixels (in grid pixels) share their photons
CHUNK = 64  # frames resampled per sparse product (bounds the temporary copies)


def transverse_q(xyz: np.ndarray, wavelength_m: float) -> np.ndarray:
    """``(..., 2)`` transverse scattering vector ``(qy, qx)`` in 1/m (cycles) of points
    ``(..., 3)`` (x, y, z) on a detector, the sample at the origin, the beam along z."""
    r = np.sqrt(np.sum(xyz**2, axis=-1))
    return np.stack([xyz[..., 1], xyz[..., 0]], axis=-1) / (wavelength_m * r[..., None])


def model_pixel_of(q: np.ndarray, grid: DetectorGeometry) -> np.ndarray:
    """``(..., 2)`` fractional (row, column) of the model pixel that sees ``q`` (1/m); NaN
    where no point of the model's detector plane does."""
    a = q * grid.wavelength_m  # direction cosines (uy, ux) of the scattered beam
    s2 = np.sum(a**2, axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        uz = np.sqrt(1.0 - s2)
        plane = grid.distance_m * a / uz[..., None] / grid.pixel_size_m
    plane[s2 >= 1.0] = np.nan
    cy, cx = grid.center_px
    return plane + np.array([cy, cx])


@dataclass(frozen=True)
class Coverage:
    """How a detector covers the model's grid: share of valid model pixels covered and the
    q-ranges (1/nm, cycles) of both."""

    covered_share: float
    low_q_share: float  # share of the low-q disc (where SPI patterns are brightest) covered
    detector_q_max: float
    model_q_max: float


class Resampler:
    """Frames of a :class:`Detector` ``(B, modules * ss, fs)`` -> frames on a model's grid
    ``(B, H, W)``, photon-conserving (one sparse product per chunk of frames)."""

    def __init__(
        self, detector: Detector, grid: DetectorGeometry, *, whole_pixels: bool | None = None
    ) -> None:
        self.detector = detector
        self.grid = grid
        h, w = grid.shape
        pixel_area = _pixel_area(detector, grid)  # a detector pixel's area in model pixels
        if whole_pixels is None:  # whole pixels unless they are larger than the grid's
            whole_pixels = pixel_area <= MAX_WHOLE_PIXEL_AREA
        self.whole_pixels = whole_pixels
        # parts no wider than half a model pixel, so that every model pixel is sampled
        self.subpixels = s = max(SUBPIXELS, math.ceil(2 * math.sqrt(pixel_area)))
        parts = [_module_targets(detector, grid, m, s) for m in range(detector.data_shape[0])]
        target = np.concatenate([p[0] for p in parts])
        q_max = max(p[2] for p in parts)
        # the share of a model pixel's area that the detector covers
        cover = np.bincount(target, minlength=h * w) * (pixel_area / s**2)
        self.coverage_map = cover.reshape(h, w)
        self.covered = self.coverage_map >= MIN_COVER
        if whole_pixels:  # each pixel's photons go whole to the model pixel of its centre
            centres = [_module_targets(detector, grid, m, 1) for m in range(detector.data_shape[0])]
            target = np.concatenate([p[0] for p in centres])
            det_index = np.concatenate([p[1] for p in centres])
            weight = 1.0
        else:  # each part's share goes to the model pixel of the part
            det_index = np.concatenate([p[1] for p in parts])
            weight = 1.0 / s**2
        if whole_pixels:  # a grid pixel that no pixel centre reaches gets nothing: uncovered
            reached = np.bincount(target, minlength=h * w) > 0
            self.covered &= reached.reshape(h, w)
        keep = self.covered.reshape(-1)[target]
        matrix = sp.coo_matrix(
            (np.full(int(keep.sum()), weight, np.float32), (target[keep], det_index[keep])),
            shape=(h * w, detector.n_pixels),
        ).tocsr()
        matrix.sum_duplicates()
        self.columns = np.unique(matrix.indices)  # detector pixels that land on the grid
        self._pixel_index = np.unravel_index(self.columns, detector.data_shape)
        self._matrix = matrix[:, self.columns].tocsr()
        self.coverage = Coverage(
            covered_share=float(self.covered[grid.valid_pixels()].mean()),
            low_q_share=float(self.covered[_low_q_disc(grid)].mean()),
            detector_q_max=q_max * 1e-9,
            model_q_max=_model_q_max(grid) * 1e-9,
        )

    def check_coverage(self) -> None:
        """ConfigError when the detector covers too little of the model's grid."""
        c = self.coverage
        if c.covered_share < MIN_GRID_COVER:
            raise ConfigError(
                f"the {self.detector.name} at {self.detector.distance_m} m and "
                f"{self.detector.wavelength_m * 1e10:.3f} Å covers {c.covered_share:.0%} of the "
                f"model's grid (needs {MIN_GRID_COVER:.0%}): the detector reaches "
                f"q = {c.detector_q_max:.4f} /nm, the model's grid "
                f"q = {c.model_q_max:.4f} /nm (move the detector closer, or raise the "
                "photon energy, or use a model trained on a smaller q-range)"
            )

    def warning(self) -> str | None:
        """A warning when the detector's gaps or hole cross the low-q disc, else None.
        Measured with the shipped default on AGIPD renderings of a simulated run (native
        grid 0.963): 0.44 with 31 % of the disc covered, 0.55 with 71 %, 0.96 with 100 %;
        fine-tuned on labelled frames seen through 31 %: 0.62 with 200 labels, 0.70 with
        2,000 (the physics is gone, labels do not bring it back)."""
        c = self.coverage
        if c.low_q_share >= MIN_LOW_Q_COVER:
            return None
        return (
            f"the {self.detector.name}'s gaps or central hole leave {1 - c.low_q_share:.0%} "
            "of the model's low-q region uncovered: expect a lower accuracy (0.44 with 69 % "
            "uncovered, against 0.96); move the quadrants in (detector.quad_pos) or the "
            "detector further away; fine-tuning on labels recovers little (0.70 with 2,000)"
        )

    @property
    def nnz(self) -> int:
        return int(self._matrix.nnz)

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        """``(B, modules, ss, fs)`` -> ``(B, H, W)`` float32; also ``(B, modules * ss, fs)``
        or ``(B, n_pixels)``. Any dtype and strides (e.g. a transposed view of the feed's
        ``modules,fs,ss,pulses`` array): only the pixels that land on the grid are read, so
        a train is never copied whole."""
        b = frames.shape[0]
        shape = self.detector.data_shape
        if frames.shape[1:] == shape:
            view = frames
        elif math.prod(frames.shape[1:]) == self.detector.n_pixels:
            view = frames.reshape(b, *shape)
        else:
            raise ValueError(
                f"frames of shape {frames.shape[1:]}, the {self.detector.name} sends {shape}"
            )
        m, ss, fs = self._pixel_index
        h, w = self.grid.shape
        out = np.empty((b, h * w), np.float32)
        for a in range(0, b, CHUNK):
            part = view[a : a + CHUNK][:, m, ss, fs].T  # (columns, chunk)
            part = np.asarray(part, np.float32)  # a fresh gather; converted only if not float32
            if part.dtype.kind == "f":
                np.nan_to_num(part, copy=False, nan=0.0, posinf=0.0, neginf=0.0)
            out[a : a + CHUNK] = (self._matrix @ part).T
        return out.reshape(b, h, w)

    def gather_table(
        self, pixel_axes: tuple[int, int, int] = (0, 1, 2)
    ) -> tuple[np.ndarray, np.ndarray]:
        """The map as a gather, for a graph on the GPU (:mod:`streamer.map_graph`):
        ``(G, K)`` flat detector-pixel indices and their weights (0 where a row is padded),
        so that grid pixel ``g`` gets ``Σ_k weight[g, k] · pixel[index[g, k]]``. The pixels
        are numbered in the memory order ``pixel_axes`` of the (modules, ss, fs) axes, e.g.
        ``(0, 2, 1)`` for the online layout's modules, fs, ss."""
        m = self._matrix
        counts = np.diff(m.indptr)
        k = max(1, int(counts.max()) if counts.size else 1)
        rows = np.repeat(np.arange(m.shape[0]), counts)
        slot = np.arange(m.nnz) - np.repeat(m.indptr[:-1], counts)
        shape = self.detector.data_shape
        coords = [c[m.indices] for c in self._pixel_index]
        flat = np.ravel_multi_index(
            tuple(coords[a] for a in pixel_axes), tuple(shape[a] for a in pixel_axes)
        )
        index = np.zeros((m.shape[0], k), np.int64)
        weight = np.zeros((m.shape[0], k), np.float32)
        index[rows, slot] = flat
        weight[rows, slot] = m.data
        return index, weight

    def render(self, frames: np.ndarray) -> np.ndarray:
        """The inverse: frames on the model's grid ``(B, H, W)`` -> detector frames
        ``(B, modules * ss, fs)``; each model pixel's photons are shared among the detector
        pixels that map onto it (for simulating a run on this detector)."""
        b = frames.shape[0]
        rows = np.asarray(self._matrix.sum(axis=1)).reshape(-1)
        with np.errstate(divide="ignore", invalid="ignore"):
            inv = np.where(rows > 0, 1.0 / rows, 0.0).astype(np.float32)
        share = sp.diags(inv) @ self._matrix  # each model pixel's row sums to 1
        flat = frames.reshape(b, -1).astype(np.float32) * self.covered.reshape(1, -1)
        det = np.zeros((b, self.detector.n_pixels), np.float32)
        det[:, self.columns] = (share.T @ flat.T).T
        m, ss, fs = self.detector.data_shape
        return det.reshape(b, m * ss, fs)


def _module_targets(
    detector: Detector, grid: DetectorGeometry, m: int, s: int
) -> tuple[np.ndarray, np.ndarray, float]:
    """For module ``m`` cut into ``s`` x ``s`` parts per pixel: the flat model pixel of each
    good part that lands on the grid, its detector pixel (flat index), and the module's
    largest q (1/m)."""
    h, w = grid.shape
    offs = (np.arange(s) + 0.5) / s - 0.5  # subpixel centres in pixel units
    pos = detector.positions[m][:, :, None, None, :]  # (ss, fs, 1, 1, 3)
    sub = (
        pos + offs[:, None, None] * detector.ss_vec[m] + offs[None, :, None] * detector.fs_vec[m]
    )  # (ss, fs, s, s, 3)
    sub[..., 2] += detector.distance_m
    q = transverse_q(sub, detector.wavelength_m)
    rc = model_pixel_of(q, grid)
    row, col = np.floor(rc[..., 0] + 0.5), np.floor(rc[..., 1] + 0.5)
    ok = np.isfinite(row) & (row >= 0) & (row < h) & (col >= 0) & (col < w)
    ok &= ~detector.bad[m][:, :, None, None]
    n_ss, n_fs = detector.data_shape[1:]
    first = m * n_ss * n_fs
    index = np.arange(first, first + n_ss * n_fs).reshape(n_ss, n_fs)[:, :, None, None]
    det_index = np.broadcast_to(index, ok.shape)[ok]
    target = (row[ok] * w + col[ok]).astype(np.int64)
    return target, det_index.astype(np.int64), float(np.hypot(q[..., 0], q[..., 1]).max())


def _pixel_area(detector: Detector, grid: DetectorGeometry) -> float:
    """A detector pixel's area in model pixels near the beam (small-angle scale)."""
    scale = (detector.wavelength_m * detector.distance_m) / (grid.wavelength_m * grid.distance_m)
    det_px = float(np.median(np.linalg.norm(np.cross(detector.fs_vec, detector.ss_vec), axis=-1)))
    return det_px / (scale**2 * grid.pixel_size_m**2)


def _low_q_disc(grid: DetectorGeometry) -> np.ndarray:
    """(H, W) bool: the model's valid pixels within LOW_Q_RADIUS of the half-size."""
    h, w = grid.shape
    cy, cx = grid.center_px
    y, x = np.ogrid[:h, :w]
    r = LOW_Q_RADIUS * min(h, w) / 2
    return ((y - cy) ** 2 + (x - cx) ** 2 <= r**2) & grid.valid_pixels()


def _model_q_max(grid: DetectorGeometry) -> float:
    h, w = grid.shape
    half = math.hypot(h / 2, w / 2) * grid.pixel_size_m
    return half / (grid.wavelength_m * math.hypot(half, grid.distance_m))
