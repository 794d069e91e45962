"""A template bank from the frames of a run labelled with one class: ``trainer templates``.

:func:`build_bank_from_run` takes the frames of an HDF5 run that a labels file marks as the
class (``single`` by default), reads them in photons, checks their units, builds the bank
(:func:`trainer.templates.bank.build_bank`) and saves it with the source file and dataset
in its attributes. Numpy, scipy and h5py only.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from trainer.templates.bank import TemplateBank, build_bank, save_bank
from trainer.templates.features import PolarConfig

log = logging.getLogger(__name__)


def build_bank_from_run(
    run: Path,
    dataset: str,
    labels: Path,
    out: Path,
    *,
    cls: str = "single",
    mode: str = "polar",
    max_frames: int = 0,
    polar: PolarConfig | None = None,
    photon_unit: float = 1.0,
    overwrite: bool = False,
    background: bool = True,
) -> TemplateBank:
    """Build and save the bank of ``run``'s frames labelled ``cls`` (at most ``max_frames``,
    0: all); returns it. ``background``: the run's own background estimate is taken off the
    frames first (polar mode), so templates hold the particles, not the beamline."""
    from trainer.data.backgrounds import run_background
    from trainer.data.ingest import check_units, open_run, read_frames
    from trainer.data.labelled import labelled_indices

    t0 = time.perf_counter()
    idx = labelled_indices(labels, run, cls)
    if max_frames > 0:
        idx = idx[:max_frames]
    with open_run(run, dataset, photon_unit=photon_unit) as src:
        frames = read_frames(src, idx)
        check_units(src, frames)
        bg = run_background(src) if background and mode == "polar" else None
    bank = build_bank(
        frames,
        mode=mode,
        source_run=run.name,
        source_index=idx,
        polar=polar,
        background=bg.map if bg is not None else None,
    )
    bank.attrs.update({"source_file": str(run), "source_dataset": dataset})
    if bg is not None:
        bank.attrs["background_level"] = bg.level  # photons per pixel, taken off
    save_bank(bank, out, overwrite=overwrite)
    log.info(
        "%s: %d %s templates (%s mode) from %s in %.1f s",
        out,
        len(bank),
        cls,
        mode,
        run.name,
        time.perf_counter() - t0,
    )
    return bank
