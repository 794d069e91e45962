"""Template matching: distances, best template and in-plane angle for frames.

:class:`PolarMatcher` (rotation-exact: cross-power spectra of the polar features, the best
rotation per template from one correlation, refined by a parabola) and the seed's
:class:`BruteForceMatcher` (L2 distance to every rotated template); :func:`match_frames` in
batches. The preprocessing and features are :mod:`trainer.templates.features`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hitstream.errors import InputDataError
from trainer.templates.features import (
    BruteForceConfig,
    PolarFeatures,
    rotate_frames,
)

# --- matching ---------------------------------------------------------------------------


@dataclass
class MatchResult:
    """Per frame: distance to the nearest template, which one, and its in-plane angle."""

    distance: np.ndarray  # (N,) float32
    index: np.ndarray  # (N,) int32
    angle_deg: np.ndarray  # (N,) float32, 0 <= angle < 180
    all_distances: np.ndarray | None = None  # (N, T) when asked

    def __len__(self) -> int:
        return len(self.distance)


def _parabola(ym: np.ndarray, y0: np.ndarray, yp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vertex offset (within ±0.5 samples) and height of the parabola through 3 samples."""
    denom = np.minimum(ym - 2 * y0 + yp, np.float32(-1e-12))  # <= 0 at a maximum
    delta = np.clip(0.5 * (ym - yp) / denom, -0.5, 0.5).astype(np.float32)
    return delta, (y0 - 0.25 * (ym - yp) * delta).astype(np.float32)


def _peak(corr: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Circular peak along the last axis: (argmax, sub-sample offset, refined height)."""
    s = corr.shape[-1]
    flat = corr.reshape(-1, s)
    i = np.argmax(flat, axis=1)
    base = np.arange(len(flat)) * s
    f = flat.reshape(-1)
    y0, ym, yp = f[base + i], f[base + (i - 1) % s], f[base + (i + 1) % s]
    delta, h = _parabola(ym, y0, yp)
    shape = corr.shape[:-1]
    return i.reshape(shape), delta.reshape(shape), h.reshape(shape)


class PolarMatcher:
    """Rotation-exact matching of raw frames against polar template spectra (numpy).

    Per batch: frame spectra ``X`` (K, N, 2R) real; ``[Re C; Im C] = X @ W`` (two batched
    GEMMs over the harmonics, (2, K, N, T)); the correlation at ``n_shifts`` angles is one
    GEMM with the (2K, S) basis; a parabola through the peak refines it per template.
    """

    def __init__(self, features: PolarFeatures, templates: np.ndarray) -> None:
        g = np.asarray(templates, np.complex64)
        if g.ndim != 3 or g.shape[1:] != (features.n_rows, features.config.n_harmonics):
            raise InputDataError(
                f"polar templates have shape {g.shape}, want (T, {features.n_rows}, "
                f"{features.config.n_harmonics})"
            )
        if len(g) == 0:
            raise InputDataError("the template bank is empty")
        self.features = features
        self.n_templates = len(g)
        gr, gi = g.real.transpose(2, 1, 0), g.imag.transpose(2, 1, 0)  # (K, R, T)
        # C = F conj(G): Re = Fr Gr + Fi Gi, Im = Fi Gr - Fr Gi, with X = [Fr, Fi]
        self.w_re = np.ascontiguousarray(np.concatenate([gr, gi], axis=1))  # (K, 2R, T)
        self.w_im = np.ascontiguousarray(np.concatenate([-gi, gr], axis=1))
        self.energy = np.sum(g.real**2 + g.imag**2, axis=(1, 2)).astype(np.float32)
        # a frame's (signal) energy is its channel weights' sum by construction
        self.frame_energy = np.float32(sum(w for _, w in features.config.channels))
        self.basis = features.correlation_basis(features.config.n_shifts)
        self.fine_basis = features.correlation_basis(features.config.fine_shifts)

    def cross_power(self, spectra: np.ndarray) -> np.ndarray:
        """(N, R, 2, K) real frame spectra → (2K, N, T): ``Re C`` then ``Im C`` per harmonic."""
        n, rows, _, k = spectra.shape
        x = np.ascontiguousarray(spectra.transpose(3, 0, 2, 1)).reshape(k, n, 2 * rows)
        out = np.empty((2, k, n, self.n_templates), np.float32)
        np.matmul(x, self.w_re, out=out[0])
        np.matmul(x, self.w_im, out=out[1])
        return out.reshape(2 * k, n, self.n_templates)

    def match_spectra(self, spectra: np.ndarray, all_distances: bool = False) -> MatchResult:
        """Distances, best template and angle for (N, R, 2, K) real frame spectra
        (:meth:`PolarFeatures.features_real`)."""
        n, t = spectra.shape[0], self.n_templates
        ef = self.frame_energy
        c = self.cross_power(spectra).reshape(-1, n * t)  # (2K, N*T)
        corr = (c.T @ self.basis).reshape(n, t, -1)  # (N, T, S)
        _, _, peak = _peak(corr)
        d2 = ef + self.energy[None, :] - 2 * peak
        best = np.argmin(d2, axis=1)
        cb = c[:, np.arange(n) * t + best]  # (2K, N)
        i, delta, fine = _peak(cb.T @ self.fine_basis)
        d2_best = ef + self.energy[best] - 2 * fine
        angle = ((i + delta) * np.float32(180.0 / self.features.config.fine_shifts)) % 180
        return MatchResult(
            np.sqrt(np.maximum(d2_best, 0)).astype(np.float32),
            best.astype(np.int32),
            angle.astype(np.float32),
            np.sqrt(np.maximum(d2, 0)).astype(np.float32) if all_distances else None,
        )

    def match(
        self,
        frames: np.ndarray,
        all_distances: bool = False,
        background: np.ndarray | None = None,
    ) -> MatchResult:
        """Raw frames (N, H, W) → :class:`MatchResult`; ``background``: the run's map, see
        :meth:`PolarFeatures.polar`."""
        spectra = self.features.features_real(frames, background=background)
        return self.match_spectra(spectra, all_distances)


class BruteForceMatcher:
    """The seed's matching: L2 distance to every rotated, seed-preprocessed template.

    One float32 GEMM gives ``||x - t||²`` for all rotated templates; its rounding error
    grows with ``||x|| ||t||`` (it can swamp the distance of near-identical frames), so for
    the ``exact_top`` nearest templates of each frame the distance at the chosen rotation
    is recomputed from the difference. ``all_distances`` elsewhere carry the GEMM rounding.
    ``exact_top=0``: the GEMM alone.
    """

    def __init__(
        self,
        templates: np.ndarray,
        config: BruteForceConfig = BruteForceConfig(),
        exact_top: int = 3,
    ) -> None:
        t = np.asarray(templates, np.float32)
        if t.ndim != 3 or len(t) == 0:
            raise InputDataError(f"brute-force templates have shape {t.shape}, want (T, H, W)")
        self.config = config
        self.n_templates = len(t)
        self.frame_shape = t.shape[1:]
        self.exact_top = max(0, min(exact_top, len(t)))
        rot = rotate_frames(t, config.angles_deg(), config.order)
        self.rotated = rot.reshape(len(t) * config.n_rotations, -1)  # (T*R, P)
        self.norm2 = np.einsum("ij,ij->i", self.rotated, self.rotated)

    def match(self, frames: np.ndarray, all_distances: bool = False) -> MatchResult:
        """Raw frames (N, H, W) → :class:`MatchResult` (angle: the best rotation)."""
        n, nr = len(frames), self.config.n_rotations
        x = self.config.prepare(frames).reshape(n, -1)
        d2 = (np.einsum("ij,ij->i", x, x)[:, None] + self.norm2[None, :]) - 2 * (x @ self.rotated.T)
        d2 = d2.reshape(n, self.n_templates, nr)
        rot = np.argmin(d2, axis=2)
        per_t = np.take_along_axis(d2, rot[..., None], 2)[..., 0]
        if self.exact_top:
            top = np.argpartition(per_t, self.exact_top - 1, axis=1)[:, : self.exact_top]
            for i in range(n):
                diff = self.rotated[top[i] * nr + rot[i, top[i]]] - x[i]  # (k, P)
                per_t[i, top[i]] = np.einsum("kp,kp->k", diff, diff)
        best = np.argmin(per_t, axis=1)
        dist = np.sqrt(np.maximum(per_t, 0)).astype(np.float32)
        return MatchResult(
            dist[np.arange(n), best],
            best.astype(np.int32),
            (rot[np.arange(n), best] * self.config.step_deg).astype(np.float32),
            dist if all_distances else None,
        )


def match_frames(
    matcher: PolarMatcher | BruteForceMatcher,
    frames: np.ndarray,
    batch: int = 256,
    background: np.ndarray | None = None,
) -> MatchResult:
    """:meth:`match` in batches (bounded memory); ``background``: the run's map (polar)."""
    if background is not None and isinstance(matcher, PolarMatcher):
        parts = [
            matcher.match(frames[a : a + batch], background=background)
            for a in range(0, len(frames), batch)
        ]
    else:
        parts = [matcher.match(frames[a : a + batch]) for a in range(0, len(frames), batch)]
    if not parts:
        z = np.zeros(0, np.float32)
        return MatchResult(z, np.zeros(0, np.int32), z)
    return MatchResult(
        *(
            np.concatenate([getattr(p, f) for p in parts])
            for f in ("distance", "index", "angle_deg")
        )
    )
