"""The run's own background: a per-pixel estimate from the run's dim frames.

At a beamline an "empty" frame is not dark: beamline and aperture scatter, gas and the
injector's carrier put 10²–10⁴ photons into every frame, steep at low q, stable in shape over a
run and different between runs. :class:`RunBackground` estimates the expected photons per
pixel of a frame with no particle in the beam, from the run's own frames, as the streamer
receives them (and the trainer reads archived runs the same way):

1. each frame's total (finite photons on valid pixels) goes into a history of recent totals;
2. the frames whose totals lie in the shortest interval that holds ``core_fraction`` of that
   history (half by default) are the first guess at the run's empty frames. Most SPI
   frames are empty and their totals cluster tightly, while hits add photons and spread over
   a wide range above them (and dropped shots sit far below). The interval is centred on
   the empty frames' mode, so it does not bias their mean while their totals spread
   symmetrically (taking the dimmest half would: it prefers shots whose background
   fluctuated low, by ~0.8 σ of the total). A shot level that jitters log-normally by tens
   of % is skewed: the mode lies below the mean, and on simulated training beamlines the
   map's level came out up to ~15 % below the empty frames' mean; the shot's own level
   (:mod:`hitstream.frame_kernel` step 7) is fitted against the map, per shot;
   unless (``shape_select``, on by default) the frames are told apart by the shape of their
   photons around the beam instead (:mod:`hitstream.background_shape`): the frames whose
   ring profile fits the empty frames' mean profile at their own shot level, the best
   ``shape_share`` of the recent ones and every one within ``shape_z`` of noise. This still
   finds the empty frames when hits outnumber them, which the totals alone do not;
3. their pixels are averaged with exponential forgetting (``halflife_frames`` frames), so
   the estimate follows a slow drift but not a burst of hits; NaN pixels are left out;
4. with the model's geometry, their cleaned bins are averaged too, and the published map is
   rescaled per bin to what an empty bin holds after the frame kernel's cleaning, measured
   rather than modelled (:mod:`hitstream.effective_background`: panel gains, flaring pixels).

The totals alone hold while hits are fewer than about half of the frames; the shapes while
empty frames are at least ``shape_share`` of them. The estimate is *warm* once
``warmup_frames`` core frames contributed (about a second of feed
at beamline rates). Before that the partial estimate is the declared fallback: frames are
classified with it and flagged (``warm = False``) in the files; it is published again
whenever the frames behind it grew by a quarter. At most
``max_frames_per_update`` frames of each call are looked at (strided), and once warm
``warm_share`` of the frames passed, gathered into fewer calls (the others return at once),
which bounds the cost per batch; the background changes over
minutes, not frames.

A :class:`BackgroundSnapshot` is what a batch is classified with: an immutable map, its
version (increments with each published change), mean level and warm flag. ``save``/``load``
persist the whole state (HDF5), so an estimate survives a restart; a model swap does not
touch it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hitstream import background_shape
from hitstream import frame_kernel as fk
from hitstream.effective_background import effective_map
from hitstream.errors import ConfigError, InputDataError
from hitstream.geometry import DetectorGeometry

STATE_FORMAT = "hitstream-background"
STATE_VERSION = 3  # 3: with the ring profiles; 2: the cleaned bins' mean (1, 2 still read)
WARMUP_GROWTH = 1.25  # during warm-up, a new snapshot when its frames grew by this factor
BIN_FRAMES_PER_UPDATE = 4  # frames of a call whose cleaned bins are averaged (≈ 0.05 ms each)


@dataclass(frozen=True)
class BackgroundConfig:
    """How the run background is estimated (the ``[background]`` section of the streamer)."""

    enabled: bool = True
    warmup_frames: int = 200  # dim frames before the estimate counts as warm
    core_fraction: float = 0.5  # share of recent frames in the interval used (see above)
    history: int = 1024  # recent frame totals the quantile is taken over
    halflife_frames: float = 4000.0  # exponential forgetting, in contributing frames
    max_frames_per_update: int = 16  # frames looked at per call (strided); bounds the cost
    warm_share: float = 0.125  # once warm, this share of the frames passed is looked at
    publish_every_frames: int = 500  # a new snapshot after this many contributions (warm)
    save_every_s: float = 30.0  # the streamer saves the state this often (0: at the end only)
    shape_select: bool = True  # tell the empty frames by their ring profile (docstring)
    shape_share: float = 0.15  # the share of frames whose profile fits best, always taken
    shape_z: float = 3.0  # and every frame whose profile fits within this many σ

    def __post_init__(self) -> None:
        if self.warmup_frames < 1 or self.history < 8 or self.max_frames_per_update < 1:
            raise ConfigError(
                "background.warmup_frames and max_frames_per_update must be ≥ 1, history ≥ 8"
            )
        if not 0 < self.core_fraction <= 1:
            raise ConfigError(
                f"background.core_fraction must be in (0, 1], got {self.core_fraction}"
            )
        if not (math.isfinite(self.halflife_frames) and self.halflife_frames > 0):
            raise ConfigError("background.halflife_frames must be > 0")
        if self.publish_every_frames < 1:
            raise ConfigError("background.publish_every_frames must be ≥ 1")
        if not (math.isfinite(self.save_every_s) and self.save_every_s >= 0):
            raise ConfigError(f"background.save_every_s must be ≥ 0, got {self.save_every_s}")
        if not 0 < self.warm_share <= 1:
            raise ConfigError(f"background.warm_share must be in (0, 1], got {self.warm_share}")
        if not 0 < self.shape_share <= 1 or not self.shape_z > 0:
            raise ConfigError("background.shape_share must be in (0, 1], shape_z > 0")


@dataclass(frozen=True)
class BackgroundSnapshot:
    """The background a batch is classified with (the map is read-only)."""

    map: np.ndarray  # (H, W) float32, expected photons per pixel of an empty frame
    version: int  # 0: nothing seen yet (all zeros)
    level: float  # mean photons per valid pixel
    warm: bool
    frames: float  # effective number of dim frames behind it


class RunBackground:
    """Per-pixel background of one run, estimated from its dim frames (module docstring).

    Not thread-safe: one thread updates it; :attr:`snapshot` may be read from any thread
    (it is replaced, never changed in place). With ``geometry`` (the model's: frames of its
    shape) the map is the effective one (step 4 of the module docstring) and ``valid``
    defaults to the geometry's valid pixels.
    """

    def __init__(
        self,
        shape: tuple[int, int],
        config: BackgroundConfig | None = None,
        valid: np.ndarray | None = None,
        geometry: DetectorGeometry | None = None,
    ) -> None:
        self.config = config or BackgroundConfig()
        self.shape = (int(shape[0]), int(shape[1]))
        if geometry is not None and tuple(geometry.shape) != self.shape:
            raise ConfigError(f"background of {self.shape} frames with a {geometry.shape} geometry")
        if valid is None and geometry is not None:
            valid = geometry.valid_pixels()
        self.geometry = geometry
        self.valid = np.ones(self.shape, bool) if valid is None else np.asarray(valid, bool).copy()
        if self.valid.shape != self.shape:
            raise ConfigError(f"background mask {self.valid.shape} differs from {self.shape}")
        self._valid_flat = self.valid.reshape(-1).astype(np.float32)
        self._center = geometry.center_px if geometry is not None else (
            (self.shape[0] - 1) / 2.0, (self.shape[1] - 1) / 2.0
        )  # fmt: skip
        # the rings, once the first frames showed the run's hot pixels (until then the totals)
        self._layout: background_shape.RingLayout | None = None
        self._gather = np.zeros((0, 0), np.float32)  # ring_profiles' scratch, with the rings
        self._first_sum = np.zeros(self.shape, np.float64)
        self._first_frames = 0
        self._decay = 0.5 ** (1.0 / self.config.halflife_frames)
        self._sum = np.zeros(self.shape, np.float64)
        self._weight = np.zeros(self.shape, np.float64)  # per pixel: NaN pixels left out
        self._frames = 0.0  # effective contributing frames (decayed)
        bins = fk.binned_shape(geometry) if geometry is not None else (0, 0)
        self._bin_sum = np.zeros(bins, np.float64)  # cleaned bins of the frames used
        self._bin_weight = 0.0  # their (decayed) frames: 0 → the raw mean is published
        self._totals = np.full(self.config.history, np.nan)
        self._profiles = np.full((self.config.history, background_shape.RINGS), np.nan)
        self._reference: np.ndarray | None = None  # the empty frames' mean ring profile
        self._extra: np.ndarray | None = None  # its noise beyond Poisson, per ring
        self._cut = math.inf  # the score limit of the empty frames
        self._refined_at = 0  # history count at the last refinement
        self._owed = 0.0  # once warm: frames to look at (warm_share of those passed)
        self._n_totals = 0
        self._since_publish = 0
        self._version = 0
        self.frames_seen = 0
        self.snapshot = self._make_snapshot()

    # -- estimate -------------------------------------------------------------------------

    @property
    def warm(self) -> bool:
        return self._frames >= self.config.warmup_frames

    def estimate(self) -> np.ndarray:
        """The current per-pixel mean of the dim frames (H, W) float32 (0 where unseen),
        effective with a geometry."""
        with np.errstate(invalid="ignore", divide="ignore"):
            m = np.where(self._weight > 0, self._sum / self._weight, 0.0)
        if self.geometry is not None and self._bin_weight > 0:
            m = effective_map(m, self._bin_sum / self._bin_weight, self.geometry)
        return (m * self.valid).astype(np.float32)

    def _make_snapshot(self) -> BackgroundSnapshot:
        m = self.estimate()
        m.setflags(write=False)
        level = float(m[self.valid].mean()) if self.valid.any() else 0.0
        return BackgroundSnapshot(m, self._version, level, self.warm, self._frames)

    def frame_totals(self, frames: np.ndarray) -> np.ndarray:
        """(N,) finite photons on valid pixels of each frame (negative noise included):
        one matrix-vector product; frames with NaN/Inf are summed again without them."""
        x = np.asarray(frames, np.float32).reshape(len(frames), -1)
        with np.errstate(invalid="ignore", over="ignore"):
            t = _matvec(x, self._valid_flat).astype(np.float64)
        bad = ~np.isfinite(t)
        if bad.any():
            xb = x[bad]
            t[bad] = _matvec(np.where(np.isfinite(xb), xb, np.float32(0)), self._valid_flat)
        return t

    def update(self, frames: np.ndarray, scale: float = 1.0) -> BackgroundSnapshot:
        """Look at (up to ``max_frames_per_update`` of) a batch ``(N, H, W)`` in photons and
        return the snapshot to classify it with. During warm-up it publishes whenever
        its frames grew by a quarter.
        ``scale``: what turns the frames into photons (``1 / photon_unit``), applied to the
        frames looked at only."""
        x = np.asarray(frames)
        if x.ndim != 3 or x.shape[1:] != self.shape:
            raise InputDataError(f"background: frames {x.shape[1:]}, expected {self.shape}")
        if len(x) == 0:
            return self.snapshot
        looked = self.config.max_frames_per_update
        if self.warm:  # enough to follow a drift over minutes, at an eighth of the cost:
            # frames owed accumulate over calls, then one call looks at them all at once
            self._owed = min(self._owed + len(x) * self.config.warm_share, looked)
            if self._owed < min(looked, len(x)):
                return self.snapshot
            looked = min(looked, len(x), math.floor(self._owed))
            self._owed -= looked
        step = max(1, math.ceil(len(x) / looked))
        x = x[::step].astype(np.float32, copy=False)
        if scale != 1.0:
            x = x * np.float32(scale)
        self.frames_seen += len(x)
        if self.config.shape_select and self._layout is None:
            self._learn_layout(x)
        if self._layout is not None:
            profiles = background_shape.ring_profiles(x, self._layout, self._gather)
            self._remember(profiles.sum(axis=1), profiles)
            dim = x[self._fits(profiles)]
        else:
            totals = self.frame_totals(x)
            self._remember(totals)
            lo, hi = core_interval(self._recent_totals(), self.config.core_fraction)
            dim = x[(totals >= lo) & (totals <= hi)]
        was_warm = self.warm
        self._accumulate(dim)
        self._since_publish += len(dim)
        due = self._since_publish >= self.config.publish_every_frames
        # warming up: a new snapshot once the frames behind it grew by a quarter (a map per
        # message costs the streamer a map version each, and adds little)
        grown = self._frames >= WARMUP_GROWTH * self.snapshot.frames
        if len(dim) and ((not was_warm and grown) or due or self.warm != was_warm):
            self._version += 1
            self._since_publish = 0
            self.snapshot = self._make_snapshot()
        return self.snapshot

    def _learn_layout(self, x: np.ndarray) -> None:
        """Average the first frames; with enough of them, make the rings."""
        self._first_sum += np.where(np.isfinite(x), x, 0.0).sum(axis=0)
        self._first_frames += len(x)
        if self._first_frames >= background_shape.LAYOUT_FRAMES:
            mean = self._first_sum / self._first_frames
            self._set_layout(background_shape.ring_layout(self.valid, self._center, mean))
            self._first_sum = np.zeros((0, 0))  # not needed again

    def _set_layout(self, layout: background_shape.RingLayout) -> None:
        self._layout = layout
        self._gather = np.empty(
            (self.config.max_frames_per_update, len(layout.order)), np.float32
        )  # fmt: skip

    def _recent_totals(self) -> np.ndarray:
        return self._totals[: min(self._n_totals, len(self._totals))]

    def _fits(self, profiles: np.ndarray) -> np.ndarray:
        """Which frames of a batch fit the empty frames' ring profile: one step of
        :func:`hitstream.background_shape.select_empty` on the recent profiles per call,
        starting from the least concentrated ones, then from the last reference."""
        cfg = self.config
        fresh = self._n_totals - self._refined_at < background_shape.REFINE_FRAMES
        if self._reference is None or self._extra is None or not fresh:
            n = min(self._n_totals, len(self._totals))
            recent = self._profiles[:n]  # since the rings were made (earlier rows: NaN)
            recent = recent[np.isfinite(recent).all(axis=1)]
            if len(recent) == 0:
                return np.zeros(len(profiles), bool)
            if self._reference is None:
                start = background_shape.least_concentrated(recent, cfg.shape_share)
                self._reference = recent[start].mean(axis=0)
            self._reference, self._extra = background_shape.refine(
                recent, self._reference, cfg.shape_share
            )
            scores = background_shape.shape_scores(recent, self._reference, self._extra)
            _, self._cut = background_shape.best_fitting(scores, cfg.shape_share, cfg.shape_z)
            # early on at every call, then every REFINE_FRAMES frames: its cost is the history's
            self._refined_at = self._n_totals if n >= background_shape.REFINE_FRAMES else -1 << 62
        scores = background_shape.shape_scores(profiles, self._reference, self._extra)
        return scores <= self._cut

    def _accumulate(self, dim: np.ndarray) -> None:
        """Add frames with exponential forgetting: the newest weighs 1, each older one
        ``decay`` times the next (one weighted sum per call, not one pass per frame)."""
        k = len(dim)
        if k == 0:
            return
        w = self._decay ** np.arange(k - 1, -1, -1, dtype=np.float64)
        flat = dim.reshape(k, -1)
        old = self._decay**k
        with np.errstate(invalid="ignore", over="ignore"):
            added = _vecmat(w.astype(np.float32), flat)
        if np.isfinite(added).all():
            self._weight *= old
            self._weight += w.sum()
        else:  # NaN/Inf pixels: left out, pixel by pixel
            finite = np.isfinite(flat)
            added = _vecmat(w.astype(np.float32), np.where(finite, flat, np.float32(0)))
            seen = _vecmat(w, finite.astype(np.float64))
            self._weight = self._weight * old + seen.reshape(self.shape)
        self._sum *= old
        self._sum += added.reshape(self.shape)
        self._frames = self._frames * old + float(w.sum())
        if self.geometry is not None:  # the newest few: a ratio that changes slowly
            wb = w[-BIN_FRAMES_PER_UPDATE:]
            bins = fk.bin_frames(dim[-BIN_FRAMES_PER_UPDATE:], self.geometry).reshape(len(wb), -1)
            self._bin_sum *= old
            self._bin_sum += _vecmat(wb.astype(np.float32), bins).reshape(self._bin_sum.shape)
            self._bin_weight = self._bin_weight * old + float(wb.sum())

    def _remember(self, totals: np.ndarray, profiles: np.ndarray | None = None) -> None:
        """Add totals (and ring profiles) to the circular history (non-finite ones, e.g. an
        overflow, left out: a NaN in the history would make :func:`core_interval` empty)."""
        n = len(self._totals)
        finite = np.flatnonzero(np.isfinite(totals))
        keep = finite[-n:]  # more than the history holds: the newest, in their places
        slots = (self._n_totals + len(finite) - len(keep) + np.arange(len(keep))) % n
        self._totals[slots] = totals[keep]
        self._profiles[slots] = profiles[keep] if profiles is not None else np.nan
        self._n_totals += len(finite)

    # -- persistence ----------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the whole state atomically (temporary file, then rename)."""
        import h5py

        p = Path(path)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        try:
            with h5py.File(tmp, "w") as f:
                f.attrs["format"] = STATE_FORMAT
                f.attrs["format_version"] = STATE_VERSION
                f.attrs["frames"] = self._frames
                f.attrs["n_totals"] = self._n_totals
                f.attrs["version"] = self._version
                f.attrs["frames_seen"] = self.frames_seen
                f.attrs["bin_weight"] = self._bin_weight
                f.attrs["owed"] = self._owed
                f.create_dataset("bin_sum", data=self._bin_sum)
                f.create_dataset("sum", data=self._sum)
                f.create_dataset("weight", data=self._weight)
                f.create_dataset("totals", data=self._totals)
                f.create_dataset("profiles", data=self._profiles)
                if self._layout is not None:
                    used = background_shape.used_pixels(self._layout, self.shape)
                    f.create_dataset("profile_pixels", data=used)
                if self._reference is not None:
                    f.create_dataset("reference", data=self._reference)
                if self._extra is not None:
                    f.create_dataset("extra_variance", data=self._extra)
                    f.attrs["cut"], f.attrs["refined_at"] = self._cut, self._refined_at
                f.create_dataset("valid", data=self.valid)
                f.create_dataset("estimate", data=self.estimate())  # for people and tools
            os.replace(tmp, p)
        except BaseException:  # e.g. a full disk: leave no half-written temporary file
            tmp.unlink(missing_ok=True)
            raise
        return p

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restore a state written by :meth:`save` (InputDataError if it does not fit)."""
        import h5py

        p = Path(path)
        try:
            with h5py.File(p, "r") as f:
                if f.attrs.get("format") != STATE_FORMAT:
                    raise InputDataError(f"{p}: not a hitstream background state")
                if int(f.attrs.get("format_version", -1)) not in (1, 2, STATE_VERSION):
                    raise InputDataError(f"{p}: background state version differs")
                s, w, totals = f["sum"][()], f["weight"][()], f["totals"][()]
                profiles = f["profiles"][()] if "profiles" in f else None
                reference = f["reference"][()] if "reference" in f else None
                used = f["profile_pixels"][()] if "profile_pixels" in f else None
                bin_sum = f["bin_sum"][()] if "bin_sum" in f else None
                bin_weight = float(f.attrs.get("bin_weight", 0.0))
                owed = float(f.attrs.get("owed", 0.0))
                extra = f["extra_variance"][()] if "extra_variance" in f else None
                cut, refined_at = f.attrs.get("cut", math.inf), f.attrs.get("refined_at", 0)
                frames, n_totals = float(f.attrs["frames"]), int(f.attrs["n_totals"])
                version, seen = int(f.attrs["version"]), int(f.attrs["frames_seen"])
        except (OSError, KeyError, ValueError) as exc:
            raise InputDataError(f"{p}: unreadable background state ({exc})") from exc
        if s.shape != self.shape or w.shape != self.shape:
            raise InputDataError(f"{p}: background of {s.shape}, frames are {self.shape}")
        self._sum, self._weight = s.astype(np.float64), w.astype(np.float64)
        n = len(self._totals)
        self._totals[:] = np.nan
        self._profiles[:] = np.nan
        rings = self._profiles.shape[1]
        if profiles is None or profiles.shape != (len(totals), rings):
            profiles = np.full((len(totals), rings), np.nan)  # an older state: none kept
        if len(totals) == n:  # the same history: its circular order continues
            self._totals[:] = totals
            self._profiles[:] = profiles
            self._n_totals = n_totals
        else:  # another history length: the saved totals that were filled, at most n
            filled = min(n_totals, len(totals))
            kept = np.asarray(totals[:filled], np.float64)
            ok = np.flatnonzero(np.isfinite(kept))[-n:]
            self._totals[: len(ok)] = kept[ok]
            self._profiles[: len(ok)] = profiles[:filled][ok]
            self._n_totals = len(ok)
        self._layout = None  # the rings are remade from the next frames unless saved
        if used is not None and used.shape == self.shape:
            self._set_layout(background_shape.ring_layout(self.valid, self._center, used=used))
        ok_ref = self._layout is not None and reference is not None and reference.shape == (rings,)
        self._reference = np.asarray(reference, np.float64) if ok_ref else None
        self._extra = None  # refined again at the next frames, unless saved
        if ok_ref and extra is not None and extra.shape == (rings,):
            self._extra = np.asarray(extra, np.float64)
            self._cut, self._refined_at = float(cut), min(int(refined_at), self._n_totals)
        if self._layout is None:
            self._profiles[:] = np.nan
        self._frames, self._version, self.frames_seen = frames, version + 1, seen
        self._owed = owed
        if bin_sum is not None and bin_sum.shape == self._bin_sum.shape:
            self._bin_sum, self._bin_weight = bin_sum.astype(np.float64), bin_weight
        else:  # a state without them, or of another geometry: raw until frames come
            self._bin_sum[:], self._bin_weight = 0.0, 0.0
        self.snapshot = self._make_snapshot()


def _matvec(a: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``a @ v`` without BLAS: the streamer calls this between batches, and OpenBLAS's
    worker threads keep spinning after a call, taking the cores from the model (measured:
    half the end-to-end throughput on a 2-core host). einsum's own loop is single-threaded
    and fast enough (≈ 0.3 ms for 16 frames of 260×257)."""
    return np.einsum("ij,j->i", a, v)


def _vecmat(v: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``v @ a`` without BLAS (see :func:`_matvec`)."""
    return np.einsum("i,ij->j", v, a)


def core_interval(totals: np.ndarray, fraction: float) -> tuple[float, float]:
    """The shortest interval holding ``fraction`` of the totals (the mode's neighbourhood)."""
    t = np.asarray(totals, np.float64)
    t = np.sort(t[np.isfinite(t)])
    n = len(t)
    if n == 0:
        return -math.inf, math.inf
    k = max(1, math.ceil(fraction * n))
    widths = t[k - 1 :] - t[: n - k + 1]
    ties = np.flatnonzero(widths <= widths.min())
    i = int(ties[len(ties) // 2])  # the middle of equally short ones (integer counts tie)
    return float(t[i]), float(t[i + k - 1])


def estimate_run_background(
    blocks: Iterable[np.ndarray] | np.ndarray,
    valid: np.ndarray | None = None,
    config: BackgroundConfig | None = None,
    geometry: DetectorGeometry | None = None,
) -> BackgroundSnapshot:
    """The background of an archived run from all its frames: its empty frames (those whose
    ring profile fits, :func:`hitstream.background_shape.select_empty`; without
    ``shape_select`` the core interval of the totals, :func:`core_interval`), averaged
    without forgetting — what the streamer converges to on a stable run. ``blocks``: an
    ``(N, H, W)`` array, or a re-iterable of such blocks (read twice: profiles first, then
    the empty frames; the first block's first frames find the hot pixels the rings leave
    out). The trainer uses it so that training and serving see the same input; with
    ``geometry`` the map is the effective one, as the streamer's."""
    parts = [blocks] if isinstance(blocks, np.ndarray) else blocks
    cfg = config or BackgroundConfig()
    est: RunBackground | None = None
    layout: background_shape.RingLayout | None = None
    profiles = []
    for b in parts:
        b = np.asarray(b, np.float32)
        if est is None or layout is None:
            est = RunBackground((b.shape[1], b.shape[2]), cfg, valid, geometry)
            first = b[: 4 * background_shape.LAYOUT_FRAMES]
            mean = np.where(np.isfinite(first), first, 0.0).mean(axis=0) if len(b) else None
            layout = est._layout = background_shape.ring_layout(est.valid, est._center, mean)
        profiles.append(background_shape.ring_profiles(b, layout))
    if est is None:
        raise InputDataError("background of a run without frames")
    every = np.concatenate(profiles)
    if cfg.shape_select:
        chosen, est._reference = background_shape.select_empty(every, cfg.shape_share, cfg.shape_z)
    else:
        totals = every.sum(axis=1)
        lo, hi = core_interval(totals, cfg.core_fraction)
        chosen = (totals >= lo) & (totals <= hi)
    s = np.zeros(est.shape, np.float64)
    w = np.zeros(est.shape, np.float64)
    k = 0
    sizes = [len(p) for p in profiles]
    starts = np.cumsum([0, *sizes[:-1]])
    for b, a, n in zip(parts, starts, sizes, strict=True):
        dim = np.asarray(b, np.float32)[chosen[a : a + n]]
        with np.errstate(invalid="ignore", over="ignore"):
            part = dim.sum(axis=0, dtype=np.float64)  # one pass when every pixel is finite
        if np.isfinite(part).all():
            s += part
            w += len(dim)
        else:  # NaN/Inf pixels (masked or dead ones of corrected data) are left out
            finite = np.isfinite(dim)
            s += np.where(finite, dim, 0.0).sum(axis=0, dtype=np.float64)
            w += finite.sum(axis=0)
        k += len(dim)
        for _, bins in fk.iter_binned(dim, geometry) if geometry is not None else ():
            est._bin_sum += bins.sum(axis=0, dtype=np.float64)
    est._sum, est._weight, est._frames = s, w, float(k)
    est._bin_weight = float(k) if geometry is not None else 0.0
    est._version = 1 if k else 0
    return est._make_snapshot()
