"""The background map the network needs: what an empty bin holds after the frame kernel's
cleaning, measured on the run's own frames instead of modelled.

:mod:`hitstream.frame_kernel` step 6 turns a map's expected photons per bin ``λ`` into
``β(λ) = λ − ½ (1 − e^{−λ})``, the mean of a cleaned empty bin on a detector that counts
photons exactly. Real detectors do not, and on faint bins the difference is large:

- a panel whose gain is off: a photon read as 0.8 keeps 0.3 above the noise floor, not 0.5,
  so a faint bin's cleaned mean is 40 % lower than ``β(λ)`` while the raw mean is 20 % lower;
- a pixel that flares now and then: its raw mean enters the map, while the cleaning caps it
  in every frame it flares in (``HOT_ABS``).

Measured on simulated runs at 0.005 photon/pixel with panel gains: the cleaned empty frames
held 8 % fewer photons than ``β`` of the run's raw map, up to half fewer in the outer rings,
where the bins are faint. The shot's fitted level (step 7, the median ring) then came out at
0.87 and scaled the bright centre down with it, so empty frames showed an excess at low q.

So the estimator (:class:`hitstream.background.RunBackground`) also averages the cleaned
bins of the frames it uses, and publishes its map rescaled bin by bin so that step 6 gives
back that measured mean: ``λ_eff = β⁻¹(mean cleaned bin)``, each pixel of the bin scaled by
``λ_eff / λ`` (spread evenly where ``λ`` is 0). On a detector that counts exactly the map
is unchanged up to noise; the pixels outside the bins and masked bins are left as they are.
"""

from __future__ import annotations

import numpy as np

from hitstream import frame_kernel as fk
from hitstream.geometry import DetectorGeometry

NEWTON_STEPS = 40  # β is convex with slope in [½, 1): converges to float64 precision


def cleaned_mean_inverse(beta: np.ndarray) -> np.ndarray:
    """``λ`` with :func:`hitstream.frame_kernel.cleaned_mean` ``(λ) = β`` (β < 0 → 0)."""
    b = np.maximum(np.asarray(beta, np.float64), 0.0)
    lam = np.where(b > 1.0, b + fk.NOISE_FLOOR, 2.0 * b)  # the two ends' asymptotes
    for _ in range(NEWTON_STEPS):
        e = np.exp(-lam)
        lam = np.maximum(
            lam - (lam - fk.NOISE_FLOOR * (1.0 - e) - b) / (1.0 - fk.NOISE_FLOOR * e), 0.0
        )
    return lam


def effective_map(
    raw: np.ndarray, cleaned: np.ndarray, geometry: DetectorGeometry | None = None
) -> np.ndarray:
    """The raw per-pixel mean (H, W) rescaled per 2×2 bin so that step 6's ``β`` is the
    measured mean of the cleaned bins ``cleaned`` (h, w) → (H, W) float32."""
    geometry = geometry or DetectorGeometry()
    lam = fk.map_bins(raw, geometry)[0].astype(np.float64)
    target = cleaned_mean_inverse(cleaned)
    live = fk.binned_mask(geometry) > 0
    hb, wb = lam.shape
    out = np.array(raw, np.float64, copy=True)
    h, w = hb * fk.BIN, wb * fk.BIN
    block = out[:h, :w].reshape(hb, fk.BIN, wb, fk.BIN)  # a copy where W is odd
    scaled = live & (lam > 1e-12)
    block *= np.where(scaled, target / np.where(scaled, lam, 1.0), 1.0)[:, None, :, None]
    even = live & ~scaled & (target > 0)  # λ = 0 (e.g. negative offsets): spread evenly
    rows, cols = even.nonzero()
    block[rows, :, cols, :] = (target[even] / fk.BIN**2)[:, None, None]
    out[:h, :w] = block.reshape(h, w)
    return np.where(np.isfinite(out), out, 0.0).astype(np.float32)
