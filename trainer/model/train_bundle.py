"""Labelled HDF5 runs to a model bundle: what ``trainer train`` does.

:func:`train_bundle` reads the labelled frames, holds out a stratified validation share,
trains the CNN (:func:`trainer.model.train.train_model`), chooses the threshold of the first
kept class for a target precision on the validation frames and exports the bundle (with the
template bank when one is given). It returns the bundle's path and validation metrics.
TensorFlow is imported only when training starts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.errors import ConfigError
from hitstream.novelty import reference_from
from trainer.data.labelled import LabelledFrames, load_labelled_frames, stratified_split

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainOptions:
    """How ``trainer train`` trains (its command-line options and their defaults)."""

    dataset: str = "data"
    labels: Sequence[Path] | None = None  # default: <stem>.labels.csv beside each run
    classes: Sequence[str] | None = None  # default: the simulator's order
    val_fraction: float = 0.2
    architecture: str = "fine"
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    augment: bool = True
    keep: Sequence[str] = ("single",)
    target_precision: float = 0.97
    photon_unit: float = 1.0
    bank: Path | None = None
    background: bool = True  # the model takes each run's background estimate as input


@dataclass
class TrainedBundle:
    """The exported bundle and its validation metrics."""

    path: Path
    metrics: dict[str, Any] = field(default_factory=dict)  # {"validation": ...}

    def summary_line(self) -> str:
        """``wrote PATH: validation accuracy ...`` with each kept class's operating point."""
        m = self.metrics["validation"]
        return f"wrote {self.path}: validation accuracy {m['accuracy']:.4f}" + "".join(
            f", {c} kept at p>={k['threshold']:.3f}: precision {k['precision']:.4f} "
            f"recall {k['recall']:.4f}"
            for c, k in m.get("keep", {}).items()
        )


def train_bundle(
    runs: Sequence[Path],
    out: Path,
    options: TrainOptions = TrainOptions(),
    *,
    name: str | None = None,
    force: bool = False,
) -> TrainedBundle:
    """Train on the labelled frames of ``runs`` and export the bundle ``out``."""
    from trainer.model.train import TrainConfig, classification_metrics, train_model

    o = options
    _check_before_training(out, force, o.bank)
    data = load_labelled_frames(
        runs, o.dataset, o.labels, o.classes, o.photon_unit, backgrounds=o.background
    )
    keep = [c for c in o.keep if c]
    unknown = set(keep) - set(data.classes)
    if unknown:
        raise ConfigError(f"--keep names classes {sorted(unknown)} not among {data.classes}")
    tr, va = stratified_split(data.labels, o.val_fraction, o.seed)
    log.info(
        "%d frames (%s): %d for training, %d for validation",
        len(data.labels),
        ", ".join(f"{c} {int(np.sum(data.labels == i))}" for i, c in enumerate(data.classes)),
        len(tr),
        len(va),
    )
    config = TrainConfig(
        architecture=o.architecture,
        epochs=o.epochs,
        batch_size=o.batch_size,
        learning_rate=o.learning_rate,
        seed=o.seed,
        augment=o.augment,
        geometry=data.geometry,
        background=o.background,
    )
    bgs = data.backgrounds
    result = train_model(
        data.frames[tr],
        data.labels[tr],
        data.classes,
        data.frames[va],
        data.labels[va],
        config,
        backgrounds=bgs.take(tr) if bgs is not None else None,
        val_backgrounds=bgs.take(va) if bgs is not None else None,
    )
    if bgs is not None:  # then a few epochs over each shot's fitted background level
        from trainer.model.shot_stage import SHOT_EPOCHS, continue_on_shot_input

        result = continue_on_shot_input(
            result, data.frames[tr], data.labels[tr], data.classes, data.frames[va],
            data.labels[va], bgs.take(tr), bgs.take(va), epochs=min(SHOT_EPOCHS, o.epochs),
        )  # fmt: skip
    p_val, y_val = result.val_probabilities, data.labels[va]
    thresholds = _thresholds(p_val, y_val, data.classes, keep, o.target_precision)
    metrics = {"validation": classification_metrics(p_val, y_val, data.classes, thresholds)}
    summary = {
        "runs": [str(p) for p in runs],
        "dataset": o.dataset,
        "photon_unit": o.photon_unit,
        "frames": {"train": len(tr), "validation": len(va)},
        "class_counts": {c: int(np.sum(data.labels == i)) for i, c in enumerate(data.classes)},
        "config": config.as_dict(),
        "class_weights": result.class_weights,
        "epochs_run": len(result.history.get("loss", [])),
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
        "shot_scale": result.config.shot_scale,
    }
    novelty = reference_from(p_val, None)
    path = _export(
        result.model, out, name or out.name, data, keep, thresholds, summary, metrics, force,
        o.bank, novelty,
    )  # fmt: skip
    return TrainedBundle(path, metrics)


def _check_before_training(out: Path, force: bool, bank: Path | None) -> None:
    """Fail now, not after the training: an existing bundle, an unreadable bank."""
    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to replace it")
    if bank is not None:
        from trainer.templates.bank import load_bank

        load_bank(bank)


def _thresholds(
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    keep: Sequence[str],
    target_precision: float,
) -> dict[str, float]:
    """The first kept class's threshold for ``target_precision`` on validation."""
    from trainer.model.train import choose_threshold

    if not keep:
        return {}
    i = list(classes).index(keep[0])
    return {keep[0]: choose_threshold(probabilities, labels, i, target_precision)}


def _export(
    model: Any,
    out: Path,
    name: str,
    data: LabelledFrames,
    keep: Sequence[str],
    thresholds: dict[str, float],
    summary: dict[str, Any],
    metrics: dict[str, Any],
    force: bool,
    bank: Path | None,
    novelty: dict[str, Any] | None = None,
) -> Path:
    """The bundle: the default hit classes present, ``keep`` kept, the runs' geometry, the
    range of the runs' background levels."""
    from trainer.model.export import DEFAULT_HIT_CLASSES, export_bundle

    hits = [c for c in DEFAULT_HIT_CLASSES if c in data.classes]
    levels = (
        [float(m[data.geometry.valid_pixels()].mean()) for m in data.backgrounds.maps]
        if data.backgrounds is not None
        else None
    )
    return export_bundle(
        model,
        out,
        name=name,
        classes=data.classes,
        hit_classes=hits,
        keep_classes=keep,
        thresholds=thresholds,
        training_summary=summary,
        metrics=metrics,
        force=force,
        geometry=data.geometry,
        bank=bank,
        background_range=(min(levels), max(levels)) if levels else None,
        novelty=novelty,
    )
