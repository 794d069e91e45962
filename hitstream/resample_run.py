"""An archived run of a real detector, resampled onto a bundle's q grid (``trainer resample``).

The same :class:`~hitstream.qgrid.Resampler` as the streamer's, so training, labelling and
evaluation on the output see what the streamer classifies live. The output is a plain run
file: an ``(N, H, W)`` float32 dataset with the grid as its ``geometry`` attribute, which
every ``trainer`` command reads.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from tqdm import tqdm

from hitstream.detectors import DetectorConfig, load_detector
from hitstream.errors import ConfigError, InputDataError
from hitstream.geometry import DetectorGeometry
from hitstream.h5input import open_frame_dataset
from hitstream.qgrid import Resampler

BLOCK = 64  # frames read, resampled and written at a time


def detector_config_from_toml(path: str | Path) -> DetectorConfig:
    """The ``[detector]`` section of a streamer config file (the one the streamer uses)."""
    p = Path(path)
    try:
        section = tomllib.loads(p.read_text(encoding="utf-8")).get("detector")
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: {exc}") from exc
    if not isinstance(section, dict) or not section.get("geometry"):
        raise ConfigError(f"{p}: no [detector] section with a geometry")
    names = {f.name for f in fields(DetectorConfig)}
    unknown = sorted(set(section) - names)
    if unknown:
        raise ConfigError(f"{p}: unknown [detector] key(s) {unknown}; known: {sorted(names)}")
    kw: dict[str, Any] = dict(section)
    if kw.get("mask_file"):
        kw["mask_file"] = Path(kw["mask_file"])
    return DetectorConfig(**kw)


def resample_run(
    src: Path,
    dataset: str,
    detector: DetectorConfig,
    grid: DetectorGeometry,
    out: Path,
    *,
    out_dataset: str = "data",
    photon_unit: float = 1.0,
    progress: bool = True,
) -> Path:
    """Write ``out:out_dataset`` = the frames of ``src:dataset`` (``(N, M, ss, fs)`` or
    ``(N, M * ss, fs)``, in the file's units divided by ``photon_unit``) on ``grid``.
    Raises ConfigError when the detector does not cover the grid, InputDataError when the
    run's frames are not the detector's."""
    resampler = Resampler(load_detector(detector), grid)
    resampler.check_coverage()
    f, dset = open_frame_dataset(src, dataset, modules=True)
    with f:
        if int(np.prod(dset.shape[1:])) != resampler.detector.n_pixels:
            raise InputDataError(
                f"{src}:{dataset} has frames of {tuple(dset.shape[1:])}; the "
                f"{resampler.detector.name} sends {resampler.detector.data_shape}"
            )
        attrs = {
            "geometry": json.dumps(grid.as_attrs()),
            "source_run": f"{src}:{dataset}",
            "detector": _detector_attr(detector, resampler),
        }
        scale = np.float32(1.0 / photon_unit)
        _map_blocks(dset, lambda x: resampler(x * scale), grid.shape, out, out_dataset, attrs,
                    "resample", progress)  # fmt: skip
    return out


def resample_to_file(
    run: Path,
    dataset: str,
    config: Path,
    model: Path,
    out: Path,
    *,
    out_dataset: str = "data",
    photon_unit: float = 1.0,
    progress: bool = True,
) -> Path:
    """:func:`resample_run` with the ``[detector]`` of the streamer config file ``config``
    onto the grid of the bundle at ``model`` (``trainer resample``)."""
    from hitstream.bundle import load_bundle

    return resample_run(
        run, dataset, detector_config_from_toml(config), load_bundle(model).geometry, out,
        out_dataset=out_dataset, photon_unit=photon_unit, progress=progress,
    )  # fmt: skip


def render_run(
    src: Path,
    dataset: str,
    detector: DetectorConfig,
    grid: DetectorGeometry,
    out: Path,
    *,
    out_dataset: str = "data",
    progress: bool = True,
) -> Path:
    """The inverse, for simulating on a real detector: the frames of a run on ``grid``
    (``(N, H, W)``, e.g. from ``trainer simulate``) onto the detector's pixels, written as
    ``(N, modules, ss, fs)`` float32 photons (each grid pixel's photons shared among the
    detector pixels that map onto it)."""
    resampler = Resampler(load_detector(detector), grid)
    f, dset = open_frame_dataset(src, dataset, frame_shape=grid.shape)
    with f:
        attrs = {"source_run": f"{src}:{dataset}", "detector": _detector_attr(detector, resampler)}
        shape = resampler.detector.data_shape
        _map_blocks(dset, lambda x: resampler.render(x).reshape(len(x), *shape), shape, out,
                    out_dataset, attrs, "render", progress)  # fmt: skip
    return out


def _detector_attr(detector: DetectorConfig, resampler: Resampler) -> str:
    return json.dumps(
        {
            "name": resampler.detector.name,
            "distance_m": detector.distance_m,
            "photon_energy_ev": detector.photon_energy_ev,
            "quad_pos": detector.quad_pos,
        }
    )


def _map_blocks(
    dset: h5py.Dataset,
    fn: Callable[[np.ndarray], np.ndarray],
    frame_shape: tuple[int, ...],
    out: Path,
    out_dataset: str,
    attrs: dict[str, str],
    what: str,
    progress: bool,
) -> None:
    """``out:out_dataset`` = ``fn`` of ``dset`` block by block (a ``.part`` file renamed
    when complete)."""
    n = int(dset.shape[0])
    tmp = out.with_name(out.name + ".part")
    with h5py.File(tmp, "w") as g:
        d = g.create_dataset(out_dataset, (n, *frame_shape), np.float32, chunks=(1, *frame_shape))
        d.attrs.update(attrs)
        with tqdm(total=n, unit="frame", desc=what, disable=not progress) as bar:
            for a in range(0, n, BLOCK):
                block = np.asarray(dset[a : a + BLOCK], np.float32)
                d[a : a + len(block)] = fn(block)
                bar.update(len(block))
    tmp.replace(out)
