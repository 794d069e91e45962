"""How good a bundle is on simulated runs that no build trained on (the benchmarks' measure).

Settings outside every training run of ``trainer build-default``: :func:`new_run_config`
(dim, wide particle sizes, more background, other detector distance and wavelength),
:func:`new_sample_config` (larger particles), :func:`bright_config` (far more photons) and
:func:`mask_config` (another detector mask); :data:`ADAPT_SETTINGS` names them, with
build-default's shifted test setting. :func:`quality_runs` adds build-default's test runs
and two with read noise. :func:`score_bundle` measures a bundle's ONNX graph on frames with
known labels: accuracy (overall and by photon count) and the single-hit keep decision at the
bundle's threshold. :func:`background_ladder` is the background quality table (mean levels
0–0.1 photon/pixel, low-q excess, streaks, detector effects, and dim hits on strong
background); :func:`score_baseline` scores the field's lit-pixel hit finder on the same
frames. Numpy and onnxruntime only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.background import estimate_run_background
from hitstream.geometry import DetectorGeometry
from hitstream.simulate import BeamlineConfig, SimConfig
from trainer.data.backgrounds import RunBackgrounds
from trainer.model.build_default import (
    RUN_FRACTIONS,
    TEST_SEEDS,
    held_out_config,
    held_out_configs,
)

LADDER_LEVELS = (0.0, 0.005, 0.02, 0.05, 0.1)  # mean background photons per valid pixel
LADDER_RUN_FRAMES = 250  # frames per run: each level has several beamlines
SNR_LIMIT = 5.0  # a hit stands out of its background's noise: photons / sqrt(background) ≥ 5

PHOTON_BINS = ((0, 300), (300, 1000), (1000, 3000), (3000, np.inf))


def new_run_config() -> SimConfig:
    """A setting outside every training mixture and test run of ``trainer build-default``."""
    return SimConfig(
        geometry=DetectorGeometry(distance_m=0.62, wavelength_m=8.5e-10),
        radius_nm=(24.0, 48.0),
        photons=(150.0, 2000.0),
        background_photons=(20.0, 120.0),
        hot_pixels_per_frame=1.0,
        read_noise_photons=0.05,
        center_jitter_px=1.0,
    )


def new_sample_config() -> SimConfig:
    """A new sample on another detector: particles of 45–65 nm (training saw 25–45 nm), so
    speckles and fringes are finer than any training frame; photons as in training."""
    return SimConfig(
        geometry=DetectorGeometry(distance_m=0.62, wavelength_m=8.5e-10),
        radius_nm=(45.0, 65.0),
        background_photons=(10.0, 60.0),
        center_jitter_px=1.0,
    )


def bright_config() -> SimConfig:
    """A much brighter sample: 20,000–100,000 signal photons per reference single (training:
    300–3,000), so speckles reach far higher q than in any training frame."""
    return SimConfig(photons=(20000.0, 100000.0), max_photons=1e6)


def mask_config() -> SimConfig:
    """Another detector mask: beam-stop hole of 12 px radius and a gap of 10 rows (the
    shipped bundles' geometry: 6 px, 4 rows)."""
    return SimConfig(geometry=DetectorGeometry(hole_radius_px=12.0, gap_rows=10))


def structured_background_config() -> SimConfig:
    """A strong, structured beamline background: 0.04–0.08 photon per pixel, most of it in a
    steep low-q excess that is far from round (anisotropy 0.4–0.8; training ≤ 0.6), and 2–4
    streaks carrying 20–50 % of it in every run (training: a third of the runs, ≤ 30 %)."""
    return SimConfig(
        beamline=replace(
            BeamlineConfig.realistic(),
            level=(0.04, 0.08),
            no_background_share=0.0,
            lowq_share=(0.85, 0.98),
            anisotropy=(0.4, 0.8),
            streak_share=1.0,
            streaks=(2, 4),
            streak_fraction=(0.2, 0.5),
        )
    )


def new_junk_config() -> SimConfig:
    """Junk of shapes training never saw: thick long rods (20–35 nm × 0.7–1.5 µm; training
    5–15 nm × 150–600 nm) and fluffy aggregates of 60–150 spheres of 4–8 nm (training 8–40
    of 8–20 nm); no droplets."""
    return SimConfig(
        other_kinds=(0.0, 1.0, 1.0),
        aggregate_count=(60, 150),
        aggregate_sphere_radius_nm=(4.0, 8.0),
        rod_radius_nm=(20.0, 35.0),
        rod_length_nm=(700.0, 1500.0),
    )


# name -> setting of a new run to adapt to ("shifted": build-default's dimmer test setting)
ADAPT_SETTINGS: dict[str, Callable[[], SimConfig]] = {
    "new": new_run_config,
    "new-sample": new_sample_config,
    "bright": bright_config,
    "mask": mask_config,
    "structured-bg": structured_background_config,
    "new-junk": new_junk_config,
    "shifted": held_out_config,
    "plain": SimConfig,
}


def quality_runs() -> dict[str, tuple[int, SimConfig]]:
    """name -> (seed, SimConfig): build-default's test runs, two with read noise, and the
    new-run, other-mask and bright settings."""
    out = {name: (TEST_SEEDS[name], cfg) for name, cfg in held_out_configs().items()}
    out["read_noise_0.05"] = (777, replace(SimConfig(), read_noise_photons=0.05))
    out["read_noise_0.10"] = (778, replace(SimConfig(), read_noise_photons=0.10))
    out["new_run"] = (4242, new_run_config())
    out["other_mask"] = (779, mask_config())
    out["bright"] = (780, bright_config())
    return out


def ladder_config(level: float, photons: tuple[float, float] | None = None) -> SimConfig:
    """A run at one background level: realistic shapes (low-q excess, anisotropy, streaks on
    a third of the runs) and detector effects, a new beamline every
    :data:`LADDER_RUN_FRAMES` frames; ``photons``: dimmer hits than the default."""
    beam = replace(
        BeamlineConfig.realistic(),
        level=(level, level) if level > 0 else (0.0, 0.0),
        no_background_share=0.0,
    )
    cfg = SimConfig(beamline=beam, frames_per_run=LADDER_RUN_FRAMES, fractions=RUN_FRACTIONS)
    return replace(cfg, photons=photons) if photons else cfg


def background_ladder() -> dict[str, tuple[int, SimConfig]]:
    """name -> (seed, SimConfig): the background quality table, seeds no build used."""
    out = {f"bg {lv:g}": (9100 + k, ladder_config(lv)) for k, lv in enumerate(LADDER_LEVELS)}
    dim = (100.0, 600.0)
    out["dim hits, bg 0.02"] = (9110, ladder_config(0.02, dim))
    out["dim hits, bg 0.05"] = (9111, ladder_config(0.05, dim))
    return out


def score_baseline(
    frames: np.ndarray,
    labels: np.ndarray,
    backgrounds: RunBackgrounds,
    classes: tuple[str, ...],
    valid: np.ndarray | None = None,
) -> dict[str, Any]:
    """The lit-pixel hit finder (:mod:`hitstream.hitfinder`) per run: hits count as
    ``single``, the rest as ``empty`` (a beamline keeps every hit); the hit score ranks
    singles for the precision-recall figure."""
    from hitstream.hitfinder import find_hits

    score = np.zeros(len(frames))
    hit = np.zeros(len(frames), bool)
    for r in np.unique(backgrounds.index):
        rows = np.flatnonzero(backgrounds.index == r)
        score[rows], hit[rows] = find_hits(frames[rows], backgrounds.maps[r], valid)
    single, empty = classes.index("single"), classes.index("empty")
    pred = np.where(hit, single, empty)
    truth = labels == single
    hits_truth = labels != empty
    return {
        "accuracy": float(np.mean(pred == labels)),
        "hit_accuracy": float(np.mean(hit == hits_truth)),
        "single_precision": float((hit & truth).sum() / max(1, hit.sum())),
        "single_recall": float((hit & truth).sum() / max(1, truth.sum())),
        "single_precision_at_recall_95": precision_at_recall(score, truth, 0.95),
    }


def score_bundle(
    bundle: Path,
    frames: np.ndarray,
    labels: np.ndarray,
    backgrounds: RunBackgrounds | None = None,
    sim_truth: dict[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Accuracy and single-hit keep precision/recall of a bundle's ONNX graph. A bundle that
    takes the run's background gets ``backgrounds`` (default: one estimate from all the
    frames, as the streamer would make it). With the simulator's ``sim_truth`` (its ``photons``
    and ``background`` per frame), also the accuracy of the hits that stand out of their
    background's noise (signal photons / sqrt(background photons) ≥ :data:`SNR_LIMIT`), and
    the accuracy ceiling that the faint ones leave."""
    from hitstream.bundle import load_bundle
    from trainer.model.evaluate import run_graph

    b = load_bundle(bundle, verify=True)
    if b.background_input and backgrounds is None:
        m = estimate_run_background(frames, geometry=b.geometry).map
        backgrounds = RunBackgrounds(m[None], np.zeros(len(frames), np.int64))
    out = run_graph(b.model_path, frames, b.input_name, progress=False, backgrounds=backgrounds)
    p, photons = out["probabilities"], out["photons"]  # photons after the graph's cleaning
    single = b.classes.index("single")
    keep = (p.argmax(axis=1) == single) & (p[:, single] >= b.thresholds.get("single", 0.0))
    truth = labels == single
    right = p.argmax(axis=1) == labels
    by_photons = {
        f"{lo:g}-{hi:g}": float(right[(photons >= lo) & (photons < hi)].mean())
        for lo, hi in PHOTON_BINS
        if ((photons >= lo) & (photons < hi)).any()
    }
    extra: dict[str, Any] = {}
    if sim_truth is not None:
        snr = sim_truth["photons"] / np.sqrt(np.maximum(sim_truth["background"], 1.0))
        clear = (snr >= SNR_LIMIT) & (labels != b.classes.index("empty"))
        extra["clear_hits"] = int(clear.sum())
        extra["clear_hit_accuracy"] = float(right[clear].mean()) if clear.any() else None
        faint = (snr < SNR_LIMIT) & (labels != b.classes.index("empty"))
        extra["faint_hits"] = int(faint.sum())
        extra["faint_hit_accuracy"] = float(right[faint].mean()) if faint.any() else None
        # what a classifier right on every frame but the faint hits (which no one can tell
        # from an empty frame) would score: the ceiling of the 4-class accuracy
        extra["accuracy_ceiling"] = 1.0 - float(faint.sum()) / max(1, len(labels))
    return {
        **extra,
        "accuracy": float(np.mean(right)),
        "accuracy_by_photons": by_photons,
        "single_precision": float((keep & truth).sum() / max(1, keep.sum())),
        "single_recall": float((keep & truth).sum() / max(1, truth.sum())),
        "single_precision_at_recall_95": precision_at_recall(p[:, single], truth, 0.95),
    }


def precision_at_recall(score: np.ndarray, truth: np.ndarray, recall: float) -> float:
    """Best precision of keeping ``score >= t`` over the thresholds t that keep at least
    ``recall`` of the true frames (the precision-recall curve read at that recall)."""
    order = np.argsort(-score, kind="stable")
    hits = np.cumsum(truth[order])
    kept = np.arange(1, len(order) + 1)
    ok = hits >= recall * max(1, truth.sum())
    return float((hits / kept)[ok].max()) if ok.any() else 0.0
