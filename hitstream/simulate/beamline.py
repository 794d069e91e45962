"""The beamline and detector of a simulated run: background, gains, offsets, saturation.

At a real SPI beamline every frame carries background photons, and the detector adds its
own errors; both are fixed for a run and differ between runs. A run is a block of
``frames_per_run`` consecutive frames of a seed (the whole seed when 0); its
:class:`RunBeamline` is drawn once from ``(seed, run)`` with the ranges of
:class:`BeamlineConfig`. Physical sources and the ranges the shipped bundles train on
(:meth:`BeamlineConfig.realistic`):

- **background level** (beamline and aperture scatter, gas in the beam path, the injector's
  carrier gas or liquid jet): mean 0.0005–0.1 photon per valid pixel, i.e. 10¹–10⁴ photons
  per frame, log-uniform; some runs have none;
- **low-q excess**: most of it rises steeply towards the beam stop, ``(1 + (r/r₀)²)^(−α/2)``
  with exponent α 1.5–4.5 (gas ~2, sharp edges ~4, Porod) and knee r₀ 2–25 pixels; the rest
  falls off with the solid angle only;
- **anisotropy** (slit and aperture shapes, polarisation): ``1 + a cos 2(φ − φ₀)``, a ≤ 0.6;
- **streaks** on some runs (scatter from slit or aperture edges): 1–3 thin lines through
  the beam, 0.6–3 pixels wide, 3–30 % of the background;
- **shot-to-shot level** (pulse energy, jet density): log-normal, σ 0–0.35;
- **panel gains** (calibration errors between detector halves or modules): σ 0–10 %;
- **common-mode offsets** of each row segment of 64 pixels, per shot, as left after the
  facility's common-mode correction: σ 0–0.05 photon;
- **saturation** of the pixels, on some runs: 200–5,000 photons;
- **the run's own hot pixels** (present in every frame of the run): 0–40, each with a mean of
  3–200 photons per frame.

The default :class:`BeamlineConfig` adds nothing (runs as before this model existed);
:meth:`BeamlineConfig.realistic` spans the range above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from functools import lru_cache

import numpy as np

from hitstream.errors import ConfigError
from hitstream.geometry import DetectorGeometry

_RUN_STREAM = 0x5EED_B6  # rng stream of run-level draws: [seed, _RUN_STREAM, run]


@dataclass(frozen=True)
class BeamlineConfig:
    """Ranges a run's background and detector are drawn from (uniform unless noted)."""

    level: tuple[float, float] = (0.0, 0.0)  # photons/valid pixel, log-uniform when > 0
    no_background_share: float = 0.0  # share of runs with level 0
    lowq_share: tuple[float, float] = (0.5, 0.95)  # of the background, in the low-q excess
    lowq_exponent: tuple[float, float] = (1.5, 4.5)
    lowq_knee_px: tuple[float, float] = (2.0, 25.0)  # log-uniform
    anisotropy: tuple[float, float] = (0.0, 0.6)
    streak_share: float = 0.0  # share of runs with streaks
    streaks: tuple[int, int] = (1, 3)
    streak_fraction: tuple[float, float] = (0.03, 0.3)  # of the background photons
    streak_width_px: tuple[float, float] = (0.6, 3.0)
    shot_jitter: tuple[float, float] = (0.0, 0.0)  # σ of the log of the per-shot level
    panels: tuple[int, int] = (2, 1)  # rows × columns of detector panels
    gain_spread: tuple[float, float] = (0.0, 0.0)  # σ of the panel gains
    common_mode: tuple[float, float] = (0.0, 0.0)  # σ of the row-segment offsets, photons
    segment_px: int = 64
    saturation_share: float = 0.0  # share of runs whose pixels saturate
    saturation: tuple[float, float] = (200.0, 5000.0)  # photons, log-uniform
    hot_pixels: tuple[int, int] = (0, 0)  # the run's own hot pixels
    hot_level: tuple[float, float] = (3.0, 200.0)  # their mean photons per frame, log-uniform

    def __post_init__(self) -> None:
        for f in fields(self):  # lists (from JSON) become tuples: the config stays hashable
            if isinstance(getattr(self, f.name), list):
                object.__setattr__(self, f.name, tuple(getattr(self, f.name)))
        for name in (
            "level", "lowq_share", "lowq_exponent", "lowq_knee_px", "anisotropy", "streaks",
            "streak_fraction", "streak_width_px", "shot_jitter", "gain_spread", "common_mode",
            "saturation", "hot_pixels", "hot_level",
        ):  # fmt: skip
            lo, hi = getattr(self, name)
            if not (0 <= lo <= hi and math.isfinite(hi)):
                raise ConfigError(f"beamline {name} must be (low, high), 0 <= low <= high")
        for name in ("no_background_share", "streak_share", "saturation_share"):
            if not 0 <= getattr(self, name) <= 1:
                raise ConfigError(f"beamline {name} must be within [0, 1]")
        if self.lowq_share[1] > 1 or self.streak_fraction[1] >= 1 or self.anisotropy[1] >= 1:
            raise ConfigError("beamline lowq_share <= 1, streak_fraction and anisotropy < 1")
        if self.level[0] == 0 < self.level[1] or self.lowq_knee_px[0] <= 0:
            raise ConfigError("beamline level and lowq_knee_px are log-uniform: low > 0")
        if min(self.panels) < 1 or self.segment_px < 1 or self.saturation[0] <= 0:
            raise ConfigError("beamline panels, segment_px and saturation must be positive")

    @classmethod
    def realistic(cls) -> BeamlineConfig:
        """The range of real SPI beamlines (module docstring): what the bundles train on."""
        return cls(
            level=(0.0005, 0.1),
            no_background_share=0.1,
            streak_share=0.3,
            shot_jitter=(0.0, 0.35),
            gain_spread=(0.0, 0.1),
            common_mode=(0.0, 0.05),
            saturation_share=0.3,
            hot_pixels=(0, 40),
        )

    @property
    def active(self) -> bool:
        """Whether runs differ from a plain detector at all."""
        return (
            self.level[1] > 0
            or self.gain_spread[1] > 0
            or self.common_mode[1] > 0
            or self.saturation_share > 0
            or self.hot_pixels[1] > 0
        )


@dataclass(frozen=True)
class RunBeamline:
    """What one run's frames share (read-only arrays)."""

    background: np.ndarray  # (H, W) expected photons per frame at shot level 1
    level: float  # mean photons per valid pixel
    shot_jitter: float
    gain: np.ndarray  # (H, W) panel gain of each pixel
    common_mode: float  # σ of the row-segment offsets per shot
    saturation: float  # photons; inf: never
    hot_index: np.ndarray  # flat indices of the run's hot pixels
    hot_level: np.ndarray  # their mean photons per frame
    streaks: int


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi)))) if hi > lo else float(lo)


def _background_map(
    rng: np.random.Generator, cfg: BeamlineConfig, g: DetectorGeometry, weight: np.ndarray
) -> tuple[np.ndarray, float, int]:
    """(expected photons per pixel, mean level, streaks) of one run."""
    valid = weight > 0
    if cfg.level[1] <= 0 or rng.random() < cfg.no_background_share:
        return np.zeros(g.shape, np.float32), 0.0, 0
    level = _loguniform(rng, *cfg.level)
    cy, cx = g.center_px
    y = np.arange(g.shape[0])[:, None] - cy
    x = np.arange(g.shape[1])[None, :] - cx
    r = np.hypot(y, x)
    phi = np.arctan2(y, x)
    knee = _loguniform(rng, *cfg.lowq_knee_px)
    alpha = rng.uniform(*cfg.lowq_exponent)
    aniso = rng.uniform(*cfg.anisotropy)
    phi0 = rng.uniform(0, np.pi)
    lowq = (1.0 + (r / knee) ** 2) ** (-alpha / 2) * (1 + aniso * np.cos(2 * (phi - phi0)))
    s_low = rng.uniform(*cfg.lowq_share)
    parts = [(s_low, lowq * weight), (1.0 - s_low, weight.astype(np.float64))]
    n_streaks = 0
    if rng.random() < cfg.streak_share:
        n_streaks = int(rng.integers(cfg.streaks[0], cfg.streaks[1] + 1))
        streak = np.zeros(g.shape)
        for _ in range(n_streaks):
            theta = rng.uniform(0, np.pi)
            offset = rng.normal(0, 2.0)  # a line near, not exactly through, the beam
            width = rng.uniform(*cfg.streak_width_px)
            across = x * np.sin(theta) - y * np.cos(theta) - offset
            streak += np.exp(-0.5 * (across / width) ** 2) / (1.0 + r / 30.0) ** 1.5
        share = rng.uniform(*cfg.streak_fraction)
        parts = [(w * (1 - share), p) for w, p in parts] + [(share, streak * valid)]
    m = np.zeros(g.shape)
    for w, p in parts:
        total = float(p[valid].sum())
        if total > 0:
            m += w * p / total
    m *= level * valid.sum()
    return m.astype(np.float32), level, n_streaks


def _gains(rng: np.random.Generator, cfg: BeamlineConfig, shape: tuple[int, int]) -> np.ndarray:
    sigma = rng.uniform(*cfg.gain_spread)
    pr, pc = cfg.panels
    panel = np.clip(rng.normal(1.0, sigma, (pr, pc)), 0.5, 1.5)
    rows = np.minimum(np.arange(shape[0]) * pr // shape[0], pr - 1)
    cols = np.minimum(np.arange(shape[1]) * pc // shape[1], pc - 1)
    return panel[rows[:, None], cols[None, :]].astype(np.float32)


@lru_cache(maxsize=64)
def run_beamline(
    seed: int, run: int, cfg: BeamlineConfig, g: DetectorGeometry, weight_key: bytes
) -> RunBeamline:
    """The beamline of run ``run`` of seed ``seed`` (cached; ``weight_key`` identifies the
    solid-angle weights, see :func:`beamline_for`)."""
    weight = np.frombuffer(weight_key, np.float64).reshape(g.shape)
    rng = np.random.default_rng([seed, _RUN_STREAM, run])
    background, level, streaks = _background_map(rng, cfg, g, weight)
    gain = _gains(rng, cfg, g.shape)
    saturation = (
        _loguniform(rng, *cfg.saturation) if rng.random() < cfg.saturation_share else math.inf
    )
    valid_index = np.flatnonzero(weight > 0)
    n_hot = int(rng.integers(cfg.hot_pixels[0], cfg.hot_pixels[1] + 1))
    hot_index = rng.choice(valid_index, size=min(n_hot, len(valid_index)), replace=False)
    hot_level = np.array([_loguniform(rng, *cfg.hot_level) for _ in range(len(hot_index))])
    out = RunBeamline(
        background=background,
        level=level,
        shot_jitter=float(rng.uniform(*cfg.shot_jitter)),
        gain=gain,
        common_mode=float(rng.uniform(*cfg.common_mode)),
        saturation=saturation,
        hot_index=hot_index,
        hot_level=hot_level,
        streaks=streaks,
    )
    for a in (out.background, out.gain, out.hot_index, out.hot_level):
        a.setflags(write=False)
    return out


def beamline_for(
    seed: int, run: int, cfg: BeamlineConfig, g: DetectorGeometry, weight: np.ndarray
) -> RunBeamline:
    """:func:`run_beamline` with the detector's solid-angle weights."""
    return run_beamline(seed, run, cfg, g, np.ascontiguousarray(weight, np.float64).tobytes())


def shot_level(rng: np.random.Generator, run: RunBeamline) -> float:
    """This shot's background level relative to the run's (log-normal, mean 1)."""
    s = run.shot_jitter
    return float(math.exp(rng.normal(-0.5 * s * s, s))) if s > 0 else 1.0


def detector_response(
    rng: np.random.Generator,
    photons: np.ndarray,
    run: RunBeamline,
    cfg: BeamlineConfig,
    valid: np.ndarray,
) -> np.ndarray:
    """Counted photons (H, W) → what the detector records: the run's hot pixels, panel
    gains and row-segment common-mode offsets (saturation: :func:`saturate`, after any read
    noise); invalid pixels stay 0."""
    x = photons.astype(np.float32, copy=True)
    if len(run.hot_index):
        x.flat[run.hot_index] += rng.poisson(run.hot_level).astype(np.float32)
    x *= run.gain
    if run.common_mode > 0:
        h, w = x.shape
        seg = cfg.segment_px
        n_seg = -(-w // seg)
        offsets = rng.normal(0.0, run.common_mode, (h, n_seg)).astype(np.float32)
        x += np.repeat(offsets, seg, axis=1)[:, :w] * valid
    return x


def saturate(x: np.ndarray, run: RunBeamline) -> np.ndarray:
    """Pixels clipped at the run's saturation level (in place; none when it has none)."""
    if math.isfinite(run.saturation):
        np.minimum(x, np.float32(run.saturation), out=x)
    return x
