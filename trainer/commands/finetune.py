"""``trainer finetune``: adapt a bundle's CNN to newly labelled frames.

Loads ``model.keras`` from the bundle, holds out a stratified share of the labelled frames
(never trained on), trains a few epochs on the rest at a low, constant learning rate (Adam,
class weights, augmentation as in training), exports a new bundle (same classes,
thresholds and geometry; the template bank is carried over) and measures the source and
the new bundle's ONNX graphs on the SAME held-out frames. ``finetune.json`` in the new
bundle holds both (see :func:`trainer.model.evaluate.evaluate_outputs`), ``evaluation.json`` and
``confusion.png`` the before/after classification metrics.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from hitstream.errors import BundleError, ConfigError
from trainer.commands.args import add_labelled_runs

HELP = "fine-tune a bundle's CNN on new labelled frames; before/after metrics on a holdout"
FINETUNE_FILE = "finetune.json"
# Epochs when none are given: a few hundred labels need many passes, thousands need few
# (measured with bench/bench_adapt.py: 200 labels, 20 epochs at 5e-4 moved a new sample's
# run from 0.939 to 0.964; 3 epochs hardly moved it).
AUTO_FRAME_VISITS = 3000
AUTO_EPOCHS = (3, 20)


def auto_epochs(n_train: int) -> int:
    """Epochs for ``n_train`` training frames when the user gives none."""
    lo, hi = AUTO_EPOCHS
    return int(min(hi, max(lo, round(AUTO_FRAME_VISITS / max(1, n_train)))))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="source bundle (with model.keras)")
    add_labelled_runs(p)
    p.add_argument("--out", type=Path, required=True, help="new bundle directory")
    p.add_argument("--name", help="bundle name [the --out directory's name]")
    p.add_argument(
        "--epochs",
        type=int,
        help=f"[auto: {AUTO_FRAME_VISITS} frame visits, within {AUTO_EPOCHS[0]}–{AUTO_EPOCHS[1]}]",
    )
    p.add_argument("--learning-rate", type=float, default=5e-4, help="constant [5e-4]")
    p.add_argument("--batch-size", type=int, default=32, help="[32]")
    p.add_argument(
        "--holdout-fraction", type=float, default=0.3, help="held-out share per class [0.3]"
    )
    p.add_argument("--seed", type=int, default=0, help="split and training seed [0]")
    p.add_argument("--no-augment", action="store_true", help="no training augmentation")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")


def finetune_bundle(
    model: Path,
    runs: list[tuple[Path, str]],
    labels: Path,
    out: Path,
    *,
    name: str | None = None,
    epochs: int | None = None,
    learning_rate: float = 5e-4,
    batch_size: int = 32,
    holdout_fraction: float = 0.3,
    seed: int = 0,
    augment: bool = True,
    force: bool = False,
    progress: bool = True,
    photon_unit: float = 1.0,
) -> dict[str, Any]:
    """Fine-tune, export and measure (module docstring); returns ``finetune.json``'s content."""
    import keras

    from hitstream.bundle import load_bundle, write_manifest
    from hitstream.labels import read_labels
    from trainer.commands.evaluate import jsonable
    from trainer.commands.train import stratified_split
    from trainer.data.ingest import load_labelled
    from trainer.model.evaluate import evaluate_outputs, run_graph
    from trainer.model.export import (
        CONFUSION_FILE,
        EVALUATION_FILE,
        KERAS_FILE,
        TEMPLATES_FILE,
        export_bundle,
        write_confusion_png,
    )
    from trainer.model.train import TrainConfig, _epoch_logger, _train_dataset, class_weights_for

    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to replace it")
    if (epochs is not None and epochs < 1) or learning_rate <= 0:
        raise ConfigError("--epochs must be >= 1 and --learning-rate > 0")
    src = load_bundle(model, verify=True)
    if KERAS_FILE not in src.manifest["files"]:
        raise BundleError(f"{model}: the bundle has no {KERAS_FILE} to fine-tune")
    geometry = src.geometry
    classes = list(src.classes)
    data = load_labelled(
        runs,
        read_labels(labels),
        classes,
        frame_shape=src.frame_shape,
        photon_unit=photon_unit,
        progress=progress,
    )
    train_idx, hold_idx = stratified_split(data.y, holdout_fraction, seed)
    if len(train_idx) == 0 or len(hold_idx) == 0:
        raise ConfigError(f"{len(data)} labelled frames: too few to fine-tune and hold out")
    x_hold, y_hold = data.frames[hold_idx], data.y[hold_idx]
    epochs = epochs or auto_epochs(len(train_idx))

    before_out = run_graph(src.model_path, x_hold, src.input_name, progress=progress)
    before = evaluate_outputs(before_out, y_hold, classes, src.thresholds)

    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    net = keras.models.load_model(src.path / KERAS_FILE, compile=False)
    cfg = TrainConfig(
        architecture=net.name,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        augment=augment,
        geometry=geometry,
    )
    weights = class_weights_for(data.y[train_idx], len(classes))
    ds = _train_dataset(data.frames[train_idx], data.y[train_idx], weights, cfg)
    net.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
        metrics=["accuracy"],
    )
    hist = net.fit(
        ds,
        epochs=epochs,
        callbacks=[_epoch_logger(epochs)] if progress else [],
        shuffle=False,
        verbose=0,
    )
    seconds = time.perf_counter() - t0

    bank = src.path / TEMPLATES_FILE if TEMPLATES_FILE in src.manifest["files"] else None
    summary = {
        "command": "trainer finetune",
        "source": {"path": str(model), "name": src.name, "version": src.version},
        "runs": [str(p) for p, _ in runs],
        "dataset": runs[0][1],
        "photon_unit": photon_unit,
        "labels": str(labels),
        "frames": {"train": len(train_idx), "holdout": len(hold_idx)},
        "class_counts": data.counts(),
        "config": {**cfg.as_dict(), "holdout_fraction": holdout_fraction, "schedule": "constant"},
        "class_weights": {c: float(w) for c, w in zip(classes, weights, strict=True)},
        "loss": [float(v) for v in hist.history.get("loss", [])],
        "seconds": round(seconds, 1),
        "thresholds": "carried over from the source bundle",
        "base_training": src.manifest.get("training", {}),
    }
    path = export_bundle(
        net,
        out,
        name=name or out.name,
        classes=classes,
        hit_classes=src.hit_classes,
        keep_classes=src.keep_classes,
        thresholds=src.thresholds,
        training_summary=summary,
        force=force,
        geometry=geometry,
        bank=bank,
    )
    new = load_bundle(path)
    after_out = run_graph(new.model_path, x_hold, new.input_name, progress=progress)
    after = evaluate_outputs(after_out, y_hold, classes, new.thresholds)
    report = jsonable(
        {
            "source": {"name": src.name, "version": src.version},
            "bundle": {"name": new.name, "version": new.version},
            "holdout": {
                "frames": len(hold_idx),
                "runs": sorted(set(data.run[hold_idx].tolist())),
                "index": data.index[hold_idx].tolist(),
            },
            "before": before,
            "after": after,
        }
    )
    # the graph is final; add the measurements and seal the manifest again
    (path / FINETUNE_FILE).write_text(json.dumps(report, indent=2) + "\n")
    cls_metrics = {k: _classification_part(report[k]) for k in ("before", "after")}
    (path / EVALUATION_FILE).write_text(json.dumps(cls_metrics, indent=2) + "\n")
    write_confusion_png(path / CONFUSION_FILE, cls_metrics, classes)
    manifest = dict(new.manifest)
    manifest["metrics"] = {"holdout_before": cls_metrics["before"], "holdout": cls_metrics["after"]}
    write_manifest(path, manifest)
    for p in (FINETUNE_FILE, EVALUATION_FILE, CONFUSION_FILE):
        (path / p).chmod(0o644)
    load_bundle(path, verify=True)
    return report


def _classification_part(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("frames", "accuracy", "per_class", "confusion", "keep")
    return {k: m[k] for k in keys if k in m}


def run(args: argparse.Namespace) -> int:
    runs = [(p, args.dataset) for p in args.data]
    r = finetune_bundle(
        args.model,
        runs,
        args.labels,
        args.out,
        name=args.name,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        holdout_fraction=args.holdout_fraction,
        seed=args.seed,
        augment=not args.no_augment,
        force=args.force,
        photon_unit=args.photon_unit,
    )
    lines = [
        f"wrote {args.out} ({r['bundle']['name']}:{r['bundle']['version']}); "
        f"held-out frames: {r['holdout']['frames']}"
    ]
    for when in ("before", "after"):
        m = r[when]
        keep = "".join(
            f"; {c} kept: precision {k['precision']:.4f} recall {k['recall']:.4f}"
            for c, k in m.get("keep", {}).items()
        )
        auc = m["cnn"]["roc_auc"]
        lines.append(
            f"{when:>6}: accuracy {m['accuracy']:.4f}, single ROC AUC "
            f"{'n/a' if auc is None else f'{auc:.4f}'}, ECE {m['calibration']['ece']:.4f}{keep}"
        )
    print("\n".join(lines), flush=True)
    return 0
