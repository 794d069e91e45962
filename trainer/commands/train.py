"""``trainer train``: train a CNN on labelled HDF5 runs and export a model bundle."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hitstream.errors import ConfigError, InputDataError
from hitstream.geometry import DetectorGeometry
from trainer.commands.args import add_photon_unit

HELP = "train a CNN on labelled HDF5 runs (frames + labels CSV) and export a model bundle"
ARCHITECTURES = ("compact", "fast", "fine", "seed")  # trainer.model.cnn's, without importing keras
log = logging.getLogger(__name__)


@dataclass
class LabelledFrames:
    """Frames with integer labels into ``classes`` and where each frame came from."""

    frames: np.ndarray  # (N, H, W) float32
    labels: np.ndarray  # (N,) int64
    classes: tuple[str, ...]
    sources: list[tuple[str, int]]  # (run name, index in the run)
    geometry: DetectorGeometry


def class_order(names: Sequence[str]) -> tuple[str, ...]:
    """The simulator's order for its classes (single first), then any others sorted."""
    from hitstream.simulate import SIM_CLASSES

    present = set(names)
    return tuple(c for c in SIM_CLASSES if c in present) + tuple(sorted(present - set(SIM_CLASSES)))


def load_labelled_frames(
    paths: Sequence[Path],
    dataset: str = "data",
    labels_paths: Sequence[Path] | None = None,
    classes: Sequence[str] | None = None,
    photon_unit: float = 1.0,
) -> LabelledFrames:
    """Read the labelled frames of HDF5 runs (in photons: see ``photon_unit`` of
    :func:`trainer.data.ingest.open_run`).

    Labels files (CSV ``run,index,class``, JSON or HDF5; later files win for the same frame)
    name runs by path, file name or stem; by default each run has ``<stem>.labels.csv``
    beside it. Only labelled frames are read.
    """

    from hitstream.labels import merge_labels, read_labels
    from hitstream.simulate import default_labels_path
    from trainer.data.ingest import load_labelled

    paths = [Path(p) for p in paths]
    files = (
        [Path(p) for p in labels_paths] if labels_paths else [default_labels_path(p) for p in paths]
    )
    table = None
    for f in files:
        t = read_labels(f)
        table = t if table is None else merge_labels(table, t)
    if table is None or len(table) == 0:
        raise InputDataError(f"no labelled frames in {', '.join(map(str, files))}")
    order = tuple(classes) if classes else class_order(table.label.tolist())
    missing = sorted(set(table.label.tolist()) - set(order))
    if missing:
        raise ConfigError(f"labels use classes {missing} that are not in --classes {order}")
    data = load_labelled([(p, dataset) for p in paths], table, order, photon_unit=photon_unit)
    geometry = None
    for info in data.sources.values():
        g = info.geometry
        if geometry is not None and g != geometry:
            raise InputDataError(f"{info.path}: detector geometry differs from the other runs")
        geometry = g
    assert geometry is not None
    sources = list(zip(data.run.tolist(), data.index.tolist(), strict=True))
    return LabelledFrames(data.frames, data.y, order, sources, geometry)


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, validation): ``fraction`` of every class (at least one) to validation."""
    if not 0 < fraction < 1:
        raise ConfigError(f"--val-fraction must be in (0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    val = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = max(1, round(fraction * len(idx))) if len(idx) > 1 else 0
        val.append(idx[:k])
    val_idx = np.sort(np.concatenate(val))
    train_idx = np.setdiff1d(np.arange(len(labels)), val_idx)
    return train_idx, val_idx


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, help="HDF5 files with frames (N, H, W)")
    p.add_argument("--dataset", default="data", help="frames dataset inside each file [data]")
    add_photon_unit(p)
    p.add_argument(
        "--labels",
        action="append",
        type=Path,
        metavar="FILE",
        help="labels CSV run,index,class, JSON or HDF5 (repeatable) [<stem>.labels.csv beside "
        "each run]",
    )
    p.add_argument("--classes", help="class order, comma separated [single,multiple,empty,other]")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share [0.2]")
    p.add_argument("--arch", choices=ARCHITECTURES, default="fine", help="[fine]")
    p.add_argument("--epochs", type=int, default=30, help="at most this many epochs [30]")
    p.add_argument("--batch-size", type=int, default=64, help="[64]")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="[2e-3]")
    p.add_argument("--seed", type=int, default=0, help="[0]")
    p.add_argument("--no-augment", action="store_true", help="no training augmentation")
    p.add_argument("--keep", default="single", help="classes to keep, comma separated [single]")
    p.add_argument(
        "--target-precision",
        type=float,
        default=0.97,
        help="threshold of the first kept class reaches this precision [0.97]",
    )
    p.add_argument(
        "--bank",
        type=Path,
        help="polar template bank (trainer templates): the graph also outputs template_distance",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory, e.g. models/NAME")
    p.add_argument("--name", help="bundle name [the --out directory's name]")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")


def run(args: argparse.Namespace) -> int:
    from trainer.model.export import DEFAULT_HIT_CLASSES, export_bundle
    from trainer.model.train import (
        TrainConfig,
        choose_threshold,
        classification_metrics,
        train_model,
    )

    if args.out.exists() and not args.force:
        raise ConfigError(f"{args.out} already exists; pass --force to replace it")
    if args.bank is not None:  # a bad bank fails now, not after the training
        from trainer.templates.bank import load_bank

        load_bank(args.bank)
    classes = [c.strip() for c in args.classes.split(",")] if args.classes else None
    data = load_labelled_frames(args.runs, args.dataset, args.labels, classes, args.photon_unit)
    keep = [c.strip() for c in args.keep.split(",") if c.strip()]
    unknown = set(keep) - set(data.classes)
    if unknown:
        raise ConfigError(f"--keep names classes {sorted(unknown)} not among {data.classes}")
    tr, va = stratified_split(data.labels, args.val_fraction, args.seed)
    log.info(
        "%d frames (%s): %d for training, %d for validation",
        len(data.labels),
        ", ".join(f"{c} {int(np.sum(data.labels == i))}" for i, c in enumerate(data.classes)),
        len(tr),
        len(va),
    )
    config = TrainConfig(
        architecture=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        augment=not args.no_augment,
        geometry=data.geometry,
    )
    result = train_model(
        data.frames[tr], data.labels[tr], data.classes, data.frames[va], data.labels[va], config
    )
    thresholds = {}
    if keep:
        i = data.classes.index(keep[0])
        thresholds[keep[0]] = choose_threshold(
            result.val_probabilities, data.labels[va], i, args.target_precision
        )
    metrics = {
        "validation": classification_metrics(
            result.val_probabilities, data.labels[va], data.classes, thresholds
        )
    }
    summary = {
        "runs": [str(p) for p in args.runs],
        "dataset": args.dataset,
        "photon_unit": args.photon_unit,
        "frames": {"train": len(tr), "validation": len(va)},
        "class_counts": {c: int(np.sum(data.labels == i)) for i, c in enumerate(data.classes)},
        "config": config.as_dict(),
        "class_weights": result.class_weights,
        "epochs_run": len(result.history.get("loss", [])),
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 1),
    }
    hits = [c for c in DEFAULT_HIT_CLASSES if c in data.classes]
    path = export_bundle(
        result.model,
        args.out,
        name=args.name or args.out.name,
        classes=data.classes,
        hit_classes=hits,
        keep_classes=keep,
        thresholds=thresholds,
        training_summary=summary,
        metrics=metrics,
        force=args.force,
        geometry=data.geometry,
        bank=args.bank,
    )
    m = metrics["validation"]
    print(
        f"wrote {path}: validation accuracy {m['accuracy']:.4f}"
        + "".join(
            f", {c} kept at p>={k['threshold']:.3f}: precision {k['precision']:.4f} "
            f"recall {k['recall']:.4f}"
            for c, k in m.get("keep", {}).items()
        )
    )
    return 0
