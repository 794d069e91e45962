"""Frame preprocessing, numpy reference (pure functions, no TensorFlow).

The exported ONNX graph runs the same steps in TensorFlow ops
(:mod:`trainer.model.preprocess_graph`, the legitimate twin); tests check that both agree
on random and adversarial frames. The template bank, the ranking, the labelling and live
pages and the reports use this module. The steps
that touch every pixel (binning, cleaning, the hot-pixel cap) run with strided in-place
adds on blocks of a few frames that stay in the CPU cache (~0.1 ms per frame).

Steps, on raw photon-count frames ``(N, 260, 257)`` float32:

1. 2×2 binning by summing (the last of the 257 columns is cropped): ``(130, 128)``. This is
   the only full-resolution pass, which is what keeps CPU serving fast. Never more than
   2×2: interference fringes of multiple hits are only a few pixels wide.
2. Binned: subtract ``NOISE_FLOOR`` and clip to ``[0, PIXEL_MAX]`` (negative sums → 0, +Inf →
   PIXEL_MAX): detector read noise (zero-mean, σ ≲ 0.15 photon per pixel) would otherwise add
   a positive bias of ~0.4 σ_bin to every clipped bin, thousands of false photons per frame,
   enough to turn empty frames into "hits"; a real photon keeps ``1 - NOISE_FLOOR``. NaN → 0 (a NaN
   or ±Inf pair makes its bin 0), then the binned detector mask: bins that touch the
   beam-stop hole or the gap between the detector halves
   (:class:`hitstream.geometry.DetectorGeometry`) are 0. Clipping after summing keeps zero-
   mean detector noise unbiased (clipping each pixel first would add a positive offset);
   masking after binning costs at most one binned pixel around the hole.
3. Hot pixels tamed: each bin is capped at ``HOT_ABS + HOT_REL × mean of its 8
   neighbours``. Diffraction speckles are smooth over several bins, so real signal passes;
   an isolated hot pixel next to near-empty neighbours is cut to ``HOT_ABS`` photons.
   The sum of the result is the ``photons`` output (photons on valid bins, per frame).
   Coarse variant (the ``fast`` architecture, ``coarsen=2``): the cleaned 2×2 bins are summed
   2×2 again, ``(65, 64)``, before the hot-pixel cap, so that everything after the one
   full-resolution pass runs on 4× fewer values (at the cost of fringes finer than 4 pixels).
4. Two channels, ``(N, 130, 128, 2)`` (channels last), from ``s = sqrt(b)``
   (variance-stabilising for Poisson counts):
   ``level = s / LEVEL_SCALE`` (absolute photon level: empty vs hit),
   ``shape = s / sqrt(mean(b) + SHAPE_EPS)`` (normalised by the frame's mean binned count,
   so runs of different photon levels look alike). The first convolution mixes them, i.e.
   applies a kernel blended per frame by its photon level.
5. Optional fine-structure channels (``details=True``, the ``fine`` architecture), three
   more: the Haar detail sums of each 2×2 block of raw pixels, ``D`` = (top − bottom,
   left − right, diagonal − antidiagonal), which the binning discards. Fringes of multiple
   hits 4–5 pixels apart are near the binned image's Nyquist frequency: binning keeps ~0.6
   of their contrast, and at an unlucky phase none. Each is made a Poisson z-score gated
   by the cleaning: ``D · b / (max(S, 1) · sqrt(b + 1))`` with ``S`` the raw block sum and
   ``b`` the cleaned bin, so masked, clipped and NaN bins give 0, a capped hot pixel keeps
   only its capped share, and a bin's value is ~N(0, 1) where the block has no structure.
6. With the run's background (``background=`` its map, expected photons per pixel of an
   empty frame; :mod:`hitstream.background`): the map is binned like the frames but without
   the noise floor (``λ``, expected photons per bin, masked, NaN → 0, coarsened and
   hot-capped like the frames) and turned into what an empty bin holds after cleaning,
   ``β = λ − NOISE_FLOOR · (1 − e^{−λ})`` (the mean of ``max(Poisson(λ) − ½, 0)``; the run
   estimator publishes its map scaled per bin so that this β is the cleaned empty bins'
   measured mean: :mod:`hitstream.effective_background`). The two
   channels of step 4 are then made from the excess ``d = b − β`` instead of ``b``: the
   level signed (``sign(d) · sqrt|d|``, so bins below the background stay visible and the
   network can average the noise), the shape of ``max(d, 0)`` (without a background, or
   with a zero one, they are exactly step 4's), so a frame on a strong background looks
   like a clean frame with more noise; the detail channels keep all the counts; one more
   channel, ``background = sqrt(λ) / LEVEL_SCALE``, tells the network how much noise the
   background brings. ``Σ (b − β)`` is the ``excess_photons`` output.
7. Optional per-shot level (``shot_scale=True``, models named ``<architecture>-shot``):
   the background's level changes from shot to shot (beam intensity, gas load: tens of %
   around the run's mean), which the run's map cannot know; a shot 30 % above it leaves an
   excess shaped like the background itself, which a network takes for a diffuse hit. The
   shot's scale is fitted from its own bins: in each of ``SHOT_RINGS`` rings of equal bin
   count around the beam, the ratio ``(Σ min(b, β + 3√β + 2) + P) / (Σ β + P)`` (bright bins
   capped; ``P`` = ``SHOT_PRIOR`` photons per ring pull rings with little background
   towards 1), and ``s`` = the median ring, clipped to ``SHOT_RANGE``. A hit lights a few
   rings, so the median barely moves (on simulated runs at 0.05 photon/pixel, +0.03 for
   singles against +0.38 for one ratio over the whole frame; ±0.05 for empty frames). The
   excess channels then use ``d = b − s·β``; ``excess_photons`` stays ``Σ (b − β)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import lru_cache

import numpy as np

from hitstream.errors import ConfigError, InputDataError
from hitstream.geometry import DetectorGeometry

PIXEL_MAX = 1.0e6  # photons per raw pixel; +Inf and absurd values end here
NOISE_FLOOR = 0.5  # photons subtracted from every 2×2 bin before clipping (read noise)
HOT_ABS = 10.0  # photons: an isolated bin may hold this much
HOT_REL = 4.0  # ... plus this many times the mean of its 8 neighbours
LEVEL_SCALE = 4.0  # sqrt(binned counts) / LEVEL_SCALE
SHAPE_EPS = 0.05  # photons per bin; keeps nearly empty frames from blowing up
BIN = 2
CHANNELS = ("level", "shape")
DETAIL_CHANNELS = ("rows", "columns", "diagonal")  # Haar details of the 2×2 blocks
BACKGROUND_CHANNELS = ("background",)  # step 6 (level and shape become the excess's)
SHOT_RINGS = 13  # rings of the per-shot background fit (odd: the median is one ring)
SHOT_PRIOR = 4.0  # photons per ring: pulls rings with a faint background towards 1
SHOT_RANGE = (0.3, 3.0)  # the per-shot scale's limits
BLOCK_FRAMES = 8  # frames per block of the full-resolution pass (stays in the CPU cache)


@lru_cache(maxsize=8)
def _masks(geometry: DetectorGeometry) -> tuple[np.ndarray, np.ndarray]:
    pix = geometry.valid_pixels()
    h, w = geometry.shape
    hb, wb = h // BIN, w // BIN
    binned = np.asarray(pix[: hb * BIN, : wb * BIN].reshape(hb, BIN, wb, BIN).all(axis=(1, 3)))
    out = (pix.astype(np.float32), binned.astype(np.float32))
    for m in out:
        m.setflags(write=False)
    return out


def detector_mask(geometry: DetectorGeometry | None = None) -> np.ndarray:
    """(H, W) float32, 1 for valid pixels, 0 in the beam-stop hole and the gap (read-only)."""
    return _masks(geometry or DetectorGeometry())[0]


def binned_mask(geometry: DetectorGeometry | None = None) -> np.ndarray:
    """(h, w) float32, 1 for bins whose pixels are all valid (read-only)."""
    return _masks(geometry or DetectorGeometry())[1]


def binned_shape(geometry: DetectorGeometry | None = None) -> tuple[int, int]:
    """Shape of the binned image, e.g. (130, 128) for 260×257 frames."""
    h, w = (geometry or DetectorGeometry()).shape
    return h // BIN, w // BIN


def input_shape(geometry: DetectorGeometry | None = None, coarsen: int = 1) -> tuple[int, int]:
    """Shape of the network's input image: the binned shape divided by ``coarsen``."""
    hb, wb = binned_shape(geometry)
    return hb // coarsen, wb // coarsen


def check_frames(
    frames: np.ndarray, geometry: DetectorGeometry | None = None, what: str = "frames"
) -> np.ndarray:
    """(N, H, W) (or one (H, W)) numeric array of the geometry's shape → float32 (N, H, W)
    (no copy when it already is); :class:`InputDataError` saying what is wrong otherwise."""
    geometry = geometry or DetectorGeometry()
    x = np.asarray(frames)
    if x.ndim == 2:
        x = x[None]
    if x.ndim != 3 or x.shape[1:] != tuple(geometry.shape):
        raise InputDataError(
            f"{what}: shape {x.shape}, want (N, {geometry.shape[0]}, {geometry.shape[1]})"
        )
    if x.dtype.kind not in "iuf":
        raise InputDataError(f"{what}: dtype {x.dtype} is not numeric")
    return x.astype(np.float32, copy=False)


def coarsen_bins(binned: np.ndarray, k: int) -> np.ndarray:
    """Sum k×k blocks of binned counts (N, h, w) → (N, h//k, w//k); ``k == 1``: unchanged."""
    b = np.asarray(binned, np.float32)
    if k == 1:
        return b
    n, h, w = b.shape
    hc, wc = h // k, w // k
    return b[:, : hc * k, : wc * k].reshape(n, hc, k, wc, k).sum(axis=(2, 4), dtype=np.float32)


def _bin_clean_block(x: np.ndarray, geometry: DetectorGeometry) -> np.ndarray:
    """Steps 1–2 on a few float32 frames (a new array; ``x`` is not changed)."""
    hb, wb = binned_shape(geometry)
    v = x[:, : hb * BIN, : wb * BIN]
    rows = v[:, 0::2] + v[:, 1::2]
    b = np.add(rows[:, :, 0::2], rows[:, :, 1::2])
    b -= np.float32(NOISE_FLOOR)
    np.clip(b, np.float32(0), np.float32(PIXEL_MAX), out=b)  # ±Inf too; NaN stays
    nan = np.isnan(b)
    if nan.any():
        b[nan] = 0
    b *= binned_mask(geometry)
    return b


@lru_cache(maxsize=8)
def _window_scale(shape: tuple[int, int]) -> np.ndarray:
    """(h, w) 9 / (bins of the 3×3 window inside the frame): 1 inside, 9/6 on edges, 9/4
    in corners, so that ``box × scale`` is 9 × the window mean, as a SAME AveragePool."""
    h, w = shape
    count = np.full((h, w), 9.0)
    count[[0, -1], :] = 6.0
    count[:, [0, -1]] = 6.0
    count[[0, 0, -1, -1], [0, -1, 0, -1]] = 4.0
    out = (9.0 / count).astype(np.float32)
    out.setflags(write=False)
    return out


def _cap_hot_block(b: np.ndarray) -> np.ndarray:
    """Step 3 in place on (n, h, w) float32 cleaned bins; returns ``b``."""
    n, hb, wb = b.shape
    p = np.zeros((n, hb + 2, wb + 2), np.float32)  # zero border for the window sum
    p[:, 1:-1, 1:-1] = b
    r3 = p[:, :, :-2] + p[:, :, 1:-1]
    r3 += p[:, :, 2:]
    box = r3[:, :-2] + r3[:, 1:-1]
    box += r3[:, 2:]
    box *= _window_scale((hb, wb))
    box -= b  # 9 × window mean − bin: the 8 neighbours, scaled up at the border
    box *= np.float32(HOT_REL / 8.0)
    box += np.float32(HOT_ABS)
    return np.minimum(b, box, out=b)


def bin_clean(frames: np.ndarray, geometry: DetectorGeometry | None = None) -> np.ndarray:
    """Steps 1–2: raw (N, H, W) → binned, clipped, NaN-free, masked counts (N, h, w)."""
    geometry = geometry or DetectorGeometry()
    x = check_frames(frames, geometry)
    out = np.empty((len(x), *binned_shape(geometry)), np.float32)
    for a in range(0, len(x), BLOCK_FRAMES):
        out[a : a + BLOCK_FRAMES] = _bin_clean_block(x[a : a + BLOCK_FRAMES], geometry)
    return out


def cap_hot(binned: np.ndarray) -> np.ndarray:
    """Step 3: each bin capped at HOT_ABS + HOT_REL × mean of its 8 neighbours (a new array).

    The neighbour sum is ``9 × (mean of the 3×3 window) − bin``, the window mean taken over
    the bins inside the frame (at the border: 6 or 4 bins), as one SAME AveragePool does."""
    b = np.array(binned, np.float32)
    for a in range(0, len(b), BLOCK_FRAMES):
        _cap_hot_block(b[a : a + BLOCK_FRAMES])
    return b


def bin_frames(frames: np.ndarray, geometry: DetectorGeometry | None = None) -> np.ndarray:
    """Steps 1–3: raw (N, H, W) → cleaned binned photon counts (N, h, w) float32."""
    geometry = geometry or DetectorGeometry()
    x = check_frames(frames, geometry)
    out = np.empty((len(x), *binned_shape(geometry)), np.float32)
    for a in range(0, len(x), BLOCK_FRAMES):
        out[a : a + BLOCK_FRAMES] = _cap_hot_block(
            _bin_clean_block(x[a : a + BLOCK_FRAMES], geometry)
        )
    return out


def iter_binned(
    frames: np.ndarray, geometry: DetectorGeometry | None = None
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first frame, cleaned bins of a block)`` for blocks of :data:`BLOCK_FRAMES` frames:
    steps 1–3 for consumers that reduce each block at once (the polar template features)."""
    geometry = geometry or DetectorGeometry()
    x = check_frames(frames, geometry)
    for a in range(0, len(x), BLOCK_FRAMES):
        yield a, _cap_hot_block(_bin_clean_block(x[a : a + BLOCK_FRAMES], geometry))


def channels(binned: np.ndarray) -> np.ndarray:
    """Step 4: (N, h, w) cleaned binned counts → (N, h, w, 2) network input."""
    b = binned.astype(np.float32)
    s = np.sqrt(b)
    mean = b.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
    level = s * np.float32(1.0 / LEVEL_SCALE)
    shape = s / np.sqrt(mean + np.float32(SHAPE_EPS))
    return np.stack([level, shape], axis=-1).astype(np.float32)


def block_details(frames: np.ndarray, geometry: DetectorGeometry | None = None) -> np.ndarray:
    """Raw (N, H, W) → (N, h, w, 4): each 2×2 block's sum ``S`` and Haar details ``D``
    (rows, columns, diagonal), unmasked and uncleaned (NaN stays NaN)."""
    x = check_frames(frames, geometry)
    hb, wb = binned_shape(geometry)
    n = x.shape[0]
    with np.errstate(invalid="ignore", over="ignore"):
        q = x[:, : hb * BIN, : wb * BIN].reshape(n, hb, BIN, wb, BIN)
        a, b, c, d = q[:, :, 0, :, 0], q[:, :, 0, :, 1], q[:, :, 1, :, 0], q[:, :, 1, :, 1]
        out = [a + b + c + d, a + b - c - d, a - b + c - d, a - b - c + d]
    return np.stack(out, axis=-1).astype(np.float32)


def detail_channels(blocks: np.ndarray, clean: np.ndarray) -> np.ndarray:
    """Step 5: (N, h, w, 4) block sums and details, (N, h, w) cleaned bins → (N, h, w, 3)."""
    s, d = blocks[..., :1], blocks[..., 1:]
    b = clean[..., None].astype(np.float32)
    with np.errstate(invalid="ignore", over="ignore"):
        z = d * (b / (np.maximum(s, np.float32(1.0)) * np.sqrt(b + np.float32(1.0))))
    return np.where(np.isfinite(z), z, np.float32(0)).astype(np.float32)


def map_bins(background: np.ndarray, geometry: DetectorGeometry | None = None) -> np.ndarray:
    """Step 6's λ before coarsening: a map (N or 1, H, W) → expected photons per 2×2 bin
    (N or 1, h, w) float32, clipped to ``[0, PIXEL_MAX]``, NaN → 0, masked."""
    geometry = geometry or DetectorGeometry()
    m = check_frames(background, geometry, "background")
    hb, wb = binned_shape(geometry)
    v = m[:, : hb * BIN, : wb * BIN]
    with np.errstate(invalid="ignore", over="ignore"):
        lam = (v[:, 0::2] + v[:, 1::2])[:, :, 0::2] + (v[:, 0::2] + v[:, 1::2])[:, :, 1::2]
        lam = np.clip(lam, np.float32(0), np.float32(PIXEL_MAX))
    return (np.where(np.isnan(lam), np.float32(0), lam) * binned_mask(geometry)).astype(np.float32)


def cleaned_mean(lam: np.ndarray) -> np.ndarray:
    """β: what an empty bin of expected ``λ`` photons holds after cleaning, the mean of
    ``max(Poisson(λ) − NOISE_FLOOR, 0)`` for a detector that counts photons exactly."""
    lam = np.asarray(lam, np.float32)
    return (lam - np.float32(NOISE_FLOOR) * (np.float32(1) - np.exp(-lam))).astype(np.float32)


def background_bins(
    background: np.ndarray, geometry: DetectorGeometry | None = None, coarsen: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Step 6, the map's part: background (N or 1, H, W) → (λ, β) (N or 1, h, w): expected
    photons per bin, and what an empty bin holds after cleaning (module docstring)."""
    lam = map_bins(background, geometry)
    beta = cleaned_mean(lam)
    return (
        cap_hot(coarsen_bins(lam.astype(np.float32), coarsen)),
        cap_hot(coarsen_bins(beta.astype(np.float32), coarsen)),
    )


def excess_bins(binned: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Step 6: cleaned bins (N, h, w) and β (N or 1, h, w) → (the excess ``b − β``, signed,
    excess photons ``Σ (b − β)`` (N,))."""
    d = (np.asarray(binned, np.float32) - beta).astype(np.float32)
    return d, d.sum(axis=(1, 2), dtype=np.float64).astype(np.float32)


@lru_cache(maxsize=8)
def shot_rings(geometry: DetectorGeometry | None = None, coarsen: int = 1) -> np.ndarray:
    """(h·w, SHOT_RINGS) float32: which ring around the beam each valid bin of the network's
    grid is in (rings of equal bin count; invalid bins in none)."""
    geometry = geometry or DetectorGeometry()
    valid = coarsen_bins(binned_mask(geometry)[None], coarsen)[0] >= coarsen * coarsen
    h, w = valid.shape
    cy, cx = geometry.center_px
    size = BIN * coarsen
    y = (np.arange(h) * size + (size - 1) / 2.0 - cy)[:, None]
    x = (np.arange(w) * size + (size - 1) / 2.0 - cx)[None, :]
    r = np.hypot(y, x)
    edges = np.quantile(r[valid], np.linspace(0.0, 1.0, SHOT_RINGS + 1))[1:-1]
    ring = np.searchsorted(edges, r, side="right").ravel()
    out = np.zeros((h * w, SHOT_RINGS), np.float32)
    out[np.arange(h * w), ring] = valid.ravel()
    out.setflags(write=False)
    return out


def fit_shot_scale(
    binned: np.ndarray, beta: np.ndarray, geometry: DetectorGeometry | None = None,
    coarsen: int = 1,
) -> np.ndarray:  # fmt: skip
    """Step 7: cleaned bins (N, h, w), β (N or 1, h, w) → each shot's background scale
    (N, 1, 1): the median over rings of the capped counts over β (module docstring)."""
    b = np.asarray(binned, np.float32)
    beta = np.asarray(beta, np.float32)
    rings = shot_rings(geometry, coarsen)
    cap = beta + np.float32(3.0) * np.sqrt(beta) + np.float32(2.0)
    num = np.minimum(b, cap).reshape(len(b), -1) @ rings
    den = beta.reshape(len(beta), -1) @ rings
    ratio = (num + np.float32(SHOT_PRIOR)) / (den + np.float32(SHOT_PRIOR))
    s = np.clip(np.sort(ratio, axis=1)[:, SHOT_RINGS // 2], *SHOT_RANGE)
    return s.astype(np.float32)[:, None, None]


def excess_channels(d: np.ndarray) -> np.ndarray:
    """Step 6: the excess ``d`` (N, h, w) → (N, h, w, 2): step 4's channels of ``d``, the
    level signed (``sign(d) sqrt|d| / LEVEL_SCALE``: below-background bins stay visible, so
    the network can average noise), the shape of ``max(d, 0)``. For ``d ≥ 0`` (no
    background) exactly :func:`channels`."""
    d = np.asarray(d, np.float32)
    pos = np.maximum(d, np.float32(0))
    mean = pos.mean(axis=(1, 2), keepdims=True, dtype=np.float32)
    level = np.sign(d) * np.sqrt(np.abs(d)) * np.float32(1.0 / LEVEL_SCALE)
    shape = np.sqrt(pos) / np.sqrt(mean + np.float32(SHAPE_EPS))
    return np.stack([level, shape], axis=-1).astype(np.float32)


def background_channel(lam: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Step 6: λ (N or 1, h, w) → the (N, h, w, 1) background channel."""
    level = np.sqrt(np.asarray(lam, np.float32)) * np.float32(1.0 / LEVEL_SCALE)
    return np.broadcast_to(level, shape)[..., None].astype(np.float32)


def preprocess(
    frames: np.ndarray,
    geometry: DetectorGeometry | None = None,
    coarsen: int = 1,
    details: bool = False,
    background: np.ndarray | None = None,
    shot_scale: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Raw frames (N, H, W) → (network input (N, h, w, 2 or 5, + 1 with a background),
    photons (N,)); ``background``: the run's map (N or 1, H, W) or (H, W); ``shot_scale``:
    step 7 (with a background only)."""
    if details and coarsen != 1:
        raise ConfigError("detail channels need the 2x2-binned image (coarsen 1)")
    b = cap_hot(coarsen_bins(bin_clean(frames, geometry), coarsen))
    photons = b.sum(axis=(1, 2), dtype=np.float64).astype(np.float32)
    lam = None
    parts = [channels(b)]
    if background is not None:
        lam, beta = background_bins(background, geometry, coarsen)
        scaled = fit_shot_scale(b, beta, geometry, coarsen) * beta if shot_scale else beta
        parts = [excess_channels(excess_bins(b, scaled)[0])]
    if details:
        parts.append(detail_channels(block_details(frames, geometry), b))
    if lam is not None:
        parts.append(background_channel(lam, b.shape))
    return np.concatenate(parts, -1) if len(parts) > 1 else parts[0], photons
