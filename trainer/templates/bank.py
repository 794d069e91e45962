"""The template bank: templates of hand-picked single hits, their provenance, on disk.

:class:`TemplateBank` holds the templates (polar spectra or seed-preprocessed frames), the
raw frames they came from and everything needed to match against them;
:func:`build_bank` makes one, :func:`save_bank` / :func:`load_bank` keep it in HDF5. How
frames are compared is :mod:`trainer.templates.features` and
:mod:`trainer.templates.matching`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from hitstream import frame_kernel as pp
from hitstream.errors import ConfigError, InputDataError, OutputError
from hitstream.geometry import DetectorGeometry, geometry_from_attrs
from trainer.templates.features import (
    MODES,
    SEED_SCALE,
    BruteForceConfig,
    PolarConfig,
    PolarFeatures,
)
from trainer.templates.matching import BruteForceMatcher, PolarMatcher

BANK_FORMAT = "hitstream-template-bank"
BANK_VERSION = 1


# --- the bank ---------------------------------------------------------------------------


@dataclass
class TemplateBank:
    """Templates with their provenance and everything needed to match against them.

    ``templates``: polar mode (T, C*R, K) complex64 normalised spectra
    (:class:`PolarFeatures`); brute-force mode (T, H, W) seed-preprocessed frames (the 36
    rotations are made when matching starts). ``frames`` keeps the raw source frames.
    """

    mode: str
    templates: np.ndarray
    frames: np.ndarray  # (T, H, W) float32 raw
    source_run: list[str]
    source_index: np.ndarray  # (T,) int64
    geometry: DetectorGeometry = field(default_factory=DetectorGeometry)
    polar: PolarConfig = field(default_factory=PolarConfig)
    bruteforce: BruteForceConfig = field(default_factory=BruteForceConfig)
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.templates)

    @cached_property
    def features(self) -> PolarFeatures:
        return PolarFeatures.build(self.polar, self.geometry)

    def matcher(self) -> PolarMatcher | BruteForceMatcher:
        """The numpy matcher of this bank's mode."""
        if self.mode == "polar":
            return PolarMatcher(self.features, self.templates)
        return BruteForceMatcher(self.templates, self.bruteforce)

    def preprocessing(self) -> dict[str, Any]:
        """What was done to the frames, for files and manifests."""
        if self.mode == "bruteforce" and self.bruteforce.preprocessing == "raw":
            return {"steps": "raw photon counts (NaN, Inf -> 0)"}
        if self.mode == "bruteforce":
            return {"steps": "seed: negatives -> 0, scale max to 255", "scale": SEED_SCALE}
        return {
            "steps": "2x2 sum binning; minus noise_floor, clip [0, pixel_max]; NaN->0; binned "
            "mask; hot-pixel cap hot_abs + hot_rel*mean(8 neighbours); polar cell means; "
            "channels linear and sqrt(gaussian(smooth_px)); area weight; band-limited rfft; "
            "L2 norm per channel",
            "bin": pp.BIN,
            "pixel_max": pp.PIXEL_MAX,
            "noise_floor": pp.NOISE_FLOOR,
            "hot_abs": pp.HOT_ABS,
            "hot_rel": pp.HOT_REL,
            "channels": [list(c) for c in self.polar.channels],
        }


def build_bank(
    frames: np.ndarray,
    *,
    mode: str = "polar",
    source_run: Sequence[str] | str = "",
    source_index: Sequence[int] | np.ndarray | None = None,
    geometry: DetectorGeometry | None = None,
    polar: PolarConfig | None = None,
    bruteforce: BruteForceConfig | None = None,
    batch: int = 256,
    background: np.ndarray | None = None,
) -> TemplateBank:
    """A bank from raw single-hit frames (T, H, W) and where they came from; ``background``
    (polar mode): the run's map ((H, W) or one per frame), taken off before the features."""
    if mode not in MODES:
        raise ConfigError(f"unknown template mode {mode!r}; choose from {', '.join(MODES)}")
    geometry = geometry or DetectorGeometry()
    x = pp.check_frames(frames, geometry, "template frames")
    if len(x) == 0:
        raise InputDataError("no template frames (no frames labelled single?)")
    n = len(x)
    idx = np.arange(n) if source_index is None else np.asarray(source_index, np.int64)
    runs = [source_run] * n if isinstance(source_run, str) else [str(r) for r in source_run]
    if len(idx) != n or len(runs) != n:
        raise InputDataError(f"{n} template frames but {len(idx)} indices and {len(runs)} runs")
    bank = TemplateBank(
        mode,
        np.zeros(0),
        np.ascontiguousarray(x),
        runs,
        idx.astype(np.int64),
        geometry,
        polar or PolarConfig(),
        bruteforce or BruteForceConfig(),
    )
    if mode == "polar":
        feats = bank.features
        bg = None if background is None else pp.check_frames(background, geometry, "background")

        def part(a: int) -> np.ndarray:
            b = None if bg is None else (bg if len(bg) == 1 else bg[a : a + batch])
            return feats.features(x[a : a + batch], background=b)

        bank.templates = np.concatenate([part(a) for a in range(0, n, batch)])
    else:
        bank.templates = bank.bruteforce.prepare(x)
    return bank


# --- files ------------------------------------------------------------------------------


def save_bank(bank: TemplateBank, path: str | Path, overwrite: bool = False) -> Path:
    """Write ``bank`` to HDF5: ``templates`` (polar spectra as (T, R, K, 2) float32 real and
    imaginary parts), ``frames`` (raw, gzip), ``source_run``, ``source_index``; the mode,
    configs, polar grid, geometry and preprocessing as JSON attributes."""
    import h5py

    p = Path(path)
    if p.exists() and not overwrite:
        raise OutputError(f"{p} exists; choose another name or overwrite")
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".part")
    t = bank.templates
    data = np.stack([t.real, t.imag], axis=-1).astype(np.float32) if bank.mode == "polar" else t
    with h5py.File(tmp, "w") as f:
        f.attrs.update(
            {
                "format": BANK_FORMAT,
                "format_version": BANK_VERSION,
                "mode": bank.mode,
                "created": datetime.now(UTC).isoformat(timespec="seconds"),
                "geometry": json.dumps(bank.geometry.as_attrs()),
                "polar_config": json.dumps(asdict(bank.polar)),
                "bruteforce_config": json.dumps(asdict(bank.bruteforce)),
                "preprocessing": json.dumps(bank.preprocessing()),
                "n_templates": len(bank),
            }
        )
        if bank.mode == "polar":
            f.attrs["polar_grid"] = json.dumps(bank.features.grid.as_attrs())
        for k, v in bank.attrs.items():
            f.attrs[k] = v
        f.create_dataset("templates", data=data, compression="gzip", shuffle=True)
        f.create_dataset(
            "frames",
            data=bank.frames,
            chunks=(1, *bank.frames.shape[1:]),
            compression="gzip",
            shuffle=True,
        )
        f.create_dataset(
            "source_run", data=np.array(bank.source_run, dtype=object), dtype=h5py.string_dtype()
        )
        f.create_dataset("source_index", data=bank.source_index)
    tmp.replace(p)
    return p


def load_bank(path: str | Path) -> TemplateBank:
    """Read a bank written by :func:`save_bank`; InputDataError naming what is wrong."""
    import h5py

    p = Path(path)
    if not p.is_file():
        raise InputDataError(f"{p}: template bank does not exist")
    try:
        with h5py.File(p, "r") as f:
            if f.attrs.get("format") != BANK_FORMAT:
                raise InputDataError(
                    f"{p}: not a template bank (attribute format != {BANK_FORMAT!r})"
                )
            version = int(f.attrs.get("format_version", -1))
            if version != BANK_VERSION:
                raise InputDataError(f"{p}: template bank version {version}, want {BANK_VERSION}")
            for name in ("templates", "frames", "source_run", "source_index"):
                if name not in f:
                    raise InputDataError(f"{p}: template bank lacks dataset {name!r}")
            mode = str(f.attrs["mode"])
            geometry = geometry_from_attrs(f.attrs["geometry"], where=f"{p}: template bank")
            polar = PolarConfig(**json.loads(f.attrs["polar_config"]))
            brute = BruteForceConfig(**json.loads(f.attrs["bruteforce_config"]))
            data = f["templates"][()]
            frames = f["frames"][()].astype(np.float32)
            runs = [r.decode() if isinstance(r, bytes) else str(r) for r in f["source_run"][()]]
            index = f["source_index"][()].astype(np.int64)
            extra = {k: f.attrs[k] for k in f.attrs if k not in _OWN_ATTRS}
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise InputDataError(f"{p}: unreadable template bank ({exc})") from exc
    if mode not in MODES:
        raise InputDataError(f"{p}: unknown template mode {mode!r}")
    templates = (data[..., 0] + 1j * data[..., 1]).astype(np.complex64) if mode == "polar" else data
    bank = TemplateBank(mode, templates, frames, runs, index, geometry, polar, brute, extra)
    if mode == "polar" and templates.shape[1:] != (bank.features.n_rows, polar.n_harmonics):
        raise InputDataError(f"{p}: templates {templates.shape} do not fit the polar config")
    return bank


_OWN_ATTRS = frozenset(
    {
        "format",
        "format_version",
        "mode",
        "created",
        "geometry",
        "polar_config",
        "bruteforce_config",
        "preprocessing",
        "n_templates",
        "polar_grid",
    }
)
