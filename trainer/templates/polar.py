"""Polar resampling of frames as ONE fixed linear map: gather indices and weights.

A frame is resampled on ``n_radii`` rings × ``n_angles`` angles over [0°, 180°) around the
beam centre. In these coordinates an in-plane rotation of the particle is a circular shift
along the angle axis, which is what makes rotation-exact template matching cheap
(:mod:`trainer.templates.bank`). Everything about the resampling is fixed by the geometry, so it
is precomputed once as a sparse matrix ``M`` (cells × pixels): ``polar = M @ image``. The
same ``(index, weight)`` table drives numpy (:meth:`PolarMap.apply`) and TensorFlow
(``tf.gather`` in :mod:`trainer.templates.graph`), so both resample identically.

What the map does, per cell (ring ``i``, angle ``j``):

- **area average**: the cell is the annular sector ``r ∈ [r_i ± dr/2]``,
  ``θ ∈ [θ_j ± dθ/2]``; it is sampled by sub-points at most ``step`` pixels apart, each
  weighted by its radius (the area element ``r dr dθ``) and bilinearly interpolated;
- **Friedel fold**: single-particle intensity is centrosymmetric, so the sector at
  ``θ + 180°`` is averaged in; 0–180° then covers every in-plane rotation, and pixels
  missing in one half (hot pixels, a non-centrosymmetric mask) are carried by the other;
- **masking**: invalid pixels (beam-stop hole, gap between the detector halves, outside the
  frame) get weight 0 and the valid weights are renormalised; a cell with less than
  ``min_valid`` of its weight on valid pixels is *missing*. Hole and gap are themselves
  centrosymmetric, so the fold cannot fill them: missing cells are filled by linear
  interpolation along the angle from the nearest valid cells of the same ring (the gap is
  a thin wedge, a few degrees wide except on the innermost rings). Frames and templates go
  through the same map, so they are masked and filled identically;
- **area weighting** (kept apart, :attr:`PolarMap.area_weight`): the map returns cell
  *means*; multiplying ring ``i`` by ``sqrt(2 r_i dr dθ)`` (pixel² units; 2 for the two
  folded sectors) makes the plain L2 norm on the polar grid approximate the L2 norm on the
  detector. It is kept out of the matrix so that non-linear steps (sqrt) can act on means.

Angles follow ``scipy.ndimage.rotate``: ``θ = atan2(-(row - cy), col - cx)``, i.e.
counter-clockwise as displayed with row 0 on top, so rotating an image by ``+α`` with
``scipy.ndimage.rotate`` moves its polar pattern by ``+α`` along the angle axis.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np
import scipy.sparse as sp

from hitstream.errors import ConfigError


@dataclass(frozen=True)
class PolarGrid:
    """Rings × angles over [0°, 180°) of an image of ``shape`` around ``center``.

    Lengths are in pixels of the image the grid samples (the 2×2-binned frame for
    templates). ``r_min``/``r_max`` are the inner edge of the first ring and the outer edge
    of the last one.
    """

    shape: tuple[int, int]
    center: tuple[float, float]  # (row, column)
    r_min: float
    r_max: float
    n_radii: int
    n_angles: int
    min_valid: float = 0.5  # a cell with less valid weight than this is filled from its ring
    step: float = 0.5  # sub-sample spacing (pixels) for the area average

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(v) for v in self.shape))
        object.__setattr__(self, "center", tuple(float(v) for v in self.center))
        if not 0 <= self.r_min < self.r_max:
            raise ConfigError(
                f"polar grid needs 0 <= r_min < r_max, got {self.r_min}, {self.r_max}"
            )
        if self.n_radii < 1 or self.n_angles < 4:
            raise ConfigError(
                f"polar grid needs n_radii >= 1 and n_angles >= 4, got "
                f"{self.n_radii}, {self.n_angles}"
            )
        if not 0 < self.min_valid <= 1 or not self.step > 0:
            raise ConfigError("polar grid needs 0 < min_valid <= 1 and step > 0")

    @property
    def dr(self) -> float:
        return (self.r_max - self.r_min) / self.n_radii

    @property
    def dtheta(self) -> float:
        """Angular step in radians."""
        return math.pi / self.n_angles

    @property
    def angle_step_deg(self) -> float:
        return 180.0 / self.n_angles

    def radii(self) -> np.ndarray:
        """Ring centres (n_radii,)."""
        return self.r_min + (np.arange(self.n_radii) + 0.5) * self.dr

    def angles_deg(self) -> np.ndarray:
        """Cell centres (n_angles,) in degrees, 0 ≤ θ < 180."""
        return np.arange(self.n_angles) * self.angle_step_deg

    def as_attrs(self) -> dict[str, Any]:
        """Flat dict for HDF5 attributes / JSON."""
        d = asdict(self)
        d["shape"] = list(self.shape)
        d["center"] = list(self.center)
        return d

    @classmethod
    def from_attrs(cls, d: dict[str, Any]) -> PolarGrid:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


@dataclass(frozen=True)
class PolarMap:
    """The resampling of :class:`PolarGrid` as a sparse matrix (cells × pixels).

    ``index``/``weight`` (cells, J) are the same matrix as padded gather tables (unused
    slots have weight 0), for ``tf.gather``.
    """

    grid: PolarGrid
    matrix: sp.csr_matrix  # (n_radii * n_angles, H * W) float32
    filled: np.ndarray  # (n_radii, n_angles) bool: cell interpolated from its ring

    @cached_property
    def _ell(self) -> tuple[np.ndarray, np.ndarray]:
        m = self.matrix
        nnz = np.diff(m.indptr)
        j = int(nnz.max()) if nnz.size else 0
        index = np.zeros((m.shape[0], j), np.int32)
        weight = np.zeros((m.shape[0], j), np.float32)
        slot = np.arange(m.nnz) - np.repeat(m.indptr[:-1], nnz)
        row = np.repeat(np.arange(m.shape[0]), nnz)
        index[row, slot] = m.indices
        weight[row, slot] = m.data
        return index, weight

    @property
    def index(self) -> np.ndarray:
        """(cells, J) int32 flat pixel indices."""
        return self._ell[0]

    @property
    def weight(self) -> np.ndarray:
        """(cells, J) float32 weights, 0 in padding slots."""
        return self._ell[1]

    @property
    def area_weight(self) -> np.ndarray:
        """(n_radii,) ``sqrt(2 r dr dθ)``: per-ring factor that turns polar L2 into detector L2."""
        g = self.grid
        return np.sqrt(2.0 * g.radii() * g.dr * g.dtheta).astype(np.float32)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """(N, H, W) images → (N, n_radii, n_angles) float32 cell means."""
        x = np.asarray(images, np.float32)
        if x.ndim == 2:
            x = x[None]
        if x.shape[1:] != self.grid.shape:
            raise ConfigError(f"images {x.shape[1:]} do not match the polar grid {self.grid.shape}")
        n = x.shape[0]
        out = self.matrix @ np.ascontiguousarray(x.reshape(n, -1).T)  # (cells, N)
        g = self.grid
        return np.ascontiguousarray(out.T, dtype=np.float32).reshape(n, g.n_radii, g.n_angles)


def build_polar_map(grid: PolarGrid, valid: np.ndarray | None = None) -> PolarMap:
    """Precompute the resampling of ``grid`` for an image whose valid pixels are ``valid``
    ((H, W) bool; ``None`` = all valid). See the module docstring for what it does."""
    h, w = grid.shape
    if valid is None:
        valid = np.ones(grid.shape, bool)
    valid = np.asarray(valid, bool)
    if valid.shape != grid.shape:
        raise ConfigError(f"mask {valid.shape} does not match the polar grid {grid.shape}")
    cy, cx = grid.center
    a, dr, dth = grid.n_angles, grid.dr, grid.dtheta
    rows: list[np.ndarray] = []
    cols: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    for i, r in enumerate(grid.radii()):
        nsr = max(1, math.ceil(dr / grid.step))
        nsa = max(1, math.ceil((r + dr / 2) * dth / grid.step))
        rs = r - dr / 2 + (np.arange(nsr) + 0.5) * dr / nsr
        ts = ((np.arange(nsa) + 0.5) / nsa - 0.5) * dth
        # (A, 2 halves, nsr, nsa) sub-points
        shape = (a, 2, nsr, nsa)
        theta = np.broadcast_to(
            np.arange(a)[:, None, None, None] * dth
            + np.array([0.0, math.pi])[None, :, None, None]
            + ts[None, None, None, :],
            shape,
        )
        rr = np.broadcast_to(rs[None, None, :, None], shape)
        y = cy - rr * np.sin(theta)
        x = cx + rr * np.cos(theta)
        cell = np.broadcast_to((i * a + np.arange(a))[:, None, None, None], shape)
        y0, x0 = np.floor(y), np.floor(x)
        fy, fx = y - y0, x - x0
        for oy, ox, wt in (
            (0, 0, (1 - fy) * (1 - fx)),
            (0, 1, (1 - fy) * fx),
            (1, 0, fy * (1 - fx)),
            (1, 1, fy * fx),
        ):
            yy, xx = (y0 + oy).astype(np.int64), (x0 + ox).astype(np.int64)
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            ok = inside.copy()
            ok[inside] = valid[yy[inside], xx[inside]]
            wv = wt * rr  # area element r dr dθ
            rows.append(cell.ravel())
            cols.append(np.where(ok, yy * w + xx, -1).ravel())
            vals.append(wv.ravel())
    row = np.concatenate(rows)
    col = np.concatenate(cols)
    val = np.concatenate(vals)
    n_cells = grid.n_radii * a
    total = np.bincount(row, weights=val, minlength=n_cells)
    good = col >= 0
    m = sp.coo_matrix((val[good], (row[good], col[good])), shape=(n_cells, h * w)).tocsr()
    m.sum_duplicates()
    valid_w = np.asarray(m.sum(axis=1)).ravel()
    frac = np.divide(valid_w, total, out=np.zeros_like(total), where=total > 0)
    ok_cell = frac >= grid.min_valid
    scale = np.where(ok_cell, 1.0 / np.where(valid_w > 0, valid_w, 1.0), 0.0)
    m = sp.diags(scale) @ m
    m = _fill_matrix(ok_cell.reshape(grid.n_radii, a), grid) @ m
    m = sp.csr_matrix(m, dtype=np.float32)
    m.eliminate_zeros()
    m.sort_indices()
    return PolarMap(grid, m, ~ok_cell.reshape(grid.n_radii, a))


def _fill_matrix(ok: np.ndarray, grid: PolarGrid) -> sp.csr_matrix:
    """(cells × cells): identity on valid cells; a missing cell is the angular linear
    interpolation of the nearest valid cells of its ring (circular over 180°)."""
    n_r, a = ok.shape
    rows, cols, vals = [], [], []
    for i in range(n_r):
        good = np.flatnonzero(ok[i])
        if good.size == 0:
            raise ConfigError(
                f"polar ring {i} (r = {grid.radii()[i]:.1f} px) has no valid cell; "
                "raise r_min or check the detector mask"
            )
        for j in range(a):
            c = i * a + j
            if ok[i, j]:
                rows.append(c)
                cols.append(c)
                vals.append(1.0)
                continue
            k = np.searchsorted(good, j)
            right, left = good[k % good.size], good[k - 1]
            d_left = (j - left) % a
            d_right = (right - j) % a
            if left == right:
                rows.append(c)
                cols.append(i * a + left)
                vals.append(1.0)
                continue
            rows += [c, c]
            cols += [i * a + left, i * a + right]
            vals += [d_right / (d_left + d_right), d_left / (d_left + d_right)]
    n = n_r * a
    return sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
