"""Fine-tuning a bundle's CNN on newly labelled frames: what ``trainer finetune`` does.

:func:`finetune_bundle` loads ``model.keras`` from the bundle, holds out a stratified share
of the labelled frames (never trained on), trains a few epochs on the rest at a low, constant
learning rate (Adam, class weights, augmentation as in training), exports a new bundle (same
classes, thresholds and geometry; the template bank is carried over) and measures the source
and the new bundle's ONNX graphs on the SAME held-out frames. ``finetune.json`` in the new
bundle holds both (see :func:`trainer.model.evaluate.evaluate_outputs`), ``evaluation.json``
and ``confusion.png`` the before/after classification metrics. Keras is imported only when
the training starts.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.errors import BundleError, ConfigError
from trainer.data.backgrounds import RunBackgrounds
from trainer.model.unlabelled import (
    Unlabelled,
    UnlabelledConfig,
    adapt_batch_norm,
    network_images,
    pseudo_labels,
    unlabelled_frames,
)

FINETUNE_FILE = "finetune.json"
# Epochs when none are given: a few hundred labels need many passes, thousands need few
# (measured with bench/bench_adapt.py: 200 labels, 20 epochs at 5e-4 moved a new sample's
# run from 0.939 to 0.964; 3 epochs hardly moved it; bench_label_curve --epochs 40 at 50
# and 200 labels on four unseen settings: +1.0 point on average over ~20 epochs, 13 of 16
# points not lower, ~60 s instead of ~40 s for 200 labels of a 2,000-frame run).
AUTO_FRAME_VISITS = 6000
AUTO_EPOCHS = (3, 40)


def auto_epochs(n_train: int) -> int:
    """Epochs for ``n_train`` training frames when the user gives none."""
    lo, hi = AUTO_EPOCHS
    return int(min(hi, max(lo, round(AUTO_FRAME_VISITS / max(1, n_train)))))


@dataclass
class _Tuned:
    """The fine-tuned network and how it was trained."""

    net: Any  # keras.Model
    config: Any  # TrainConfig
    weights: np.ndarray  # class weights
    loss: list[float]
    seconds: float
    unlabelled: dict[str, Any]  # what the run's unlabelled frames did


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
    unlabelled: UnlabelledConfig = UnlabelledConfig(),
    target_precision: float | None = None,
) -> dict[str, Any]:
    """Fine-tune, export and measure (module docstring); returns ``finetune.json``'s content."""
    from hitstream.bundle import load_bundle
    from hitstream.labels import read_labels
    from trainer.data.backgrounds import labelled_backgrounds
    from trainer.data.ingest import load_labelled
    from trainer.data.labelled import stratified_split
    from trainer.model.evaluate import evaluate_outputs, jsonable, run_graph

    if out.exists() and not force:
        raise ConfigError(f"{out} already exists; pass --force to replace it")
    if (epochs is not None and epochs < 1) or learning_rate <= 0:
        raise ConfigError("--epochs must be >= 1 and --learning-rate > 0")
    if target_precision is not None and not 0 < target_precision < 1:
        raise ConfigError(f"--target-precision {target_precision}: must be in (0, 1)")
    src = _source_bundle(model)
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
    bgs = labelled_backgrounds(data, photon_unit) if src.background_input else None
    bg_hold = bgs.take(hold_idx) if bgs is not None else None

    before_out = run_graph(src.model_path, x_hold, src.input_name, progress=progress,
                           backgrounds=bg_hold)  # fmt: skip
    before = evaluate_outputs(before_out, y_hold, classes, src.thresholds)
    pool = None
    if unlabelled.frames > 0 and (unlabelled.adapt_batch_norm or unlabelled.pseudo_labels):
        pool = unlabelled_frames(
            data, unlabelled.frames, photon_unit=photon_unit,
            with_background=src.background_input is not None, seed=seed,
        )  # fmt: skip
    tuned = _train(
        src,
        data.frames[train_idx],
        data.y[train_idx],
        backgrounds=bgs.take(train_idx) if bgs is not None else None,
        epochs=epochs,
        learning_rate=learning_rate,
        batch_size=batch_size,
        seed=seed,
        augment=augment,
        progress=progress,
        pool=pool,
        unlabelled=unlabelled,
    )
    summary = {
        "command": "trainer finetune",
        "source": {"path": str(model), "name": src.name, "version": src.version},
        "runs": [str(p) for p, _ in runs],
        "dataset": runs[0][1],
        "photon_unit": photon_unit,
        "labels": str(labels),
        "frames": {"train": len(train_idx), "holdout": len(hold_idx)},
        "class_counts": data.counts(),
        "config": {
            **tuned.config.as_dict(),
            "holdout_fraction": holdout_fraction,
            "schedule": "constant",
        },
        "class_weights": {c: float(w) for c, w in zip(classes, tuned.weights, strict=True)},
        "unlabelled": tuned.unlabelled,
        "loss": tuned.loss,
        "seconds": round(tuned.seconds, 1),
        "thresholds": "carried over from the source bundle",
        "base_training": src.manifest.get("training", {}),
    }
    path = _export(src, tuned.net, out, name or out.name, summary, force)
    new = load_bundle(path)
    after_out = run_graph(new.model_path, x_hold, new.input_name, progress=progress,
                          backgrounds=bg_hold)  # fmt: skip
    thresholds = new.thresholds
    choice = None
    if target_precision is not None:  # the keep threshold from this run's held-out labels
        from trainer.model.threshold_choice import threshold_for_target

        kept = new.keep_classes[0]
        choice = threshold_for_target(
            after_out["probabilities"], y_hold, classes.index(kept), target_precision, seed=seed
        )
        choice["class"] = kept
        thresholds = {**thresholds, kept: choice["threshold"]}
    after = evaluate_outputs(after_out, y_hold, classes, thresholds)
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
            "worse_than_before": after["accuracy"] < before["accuracy"],
            "frames_trained": len(train_idx),
            "threshold_choice": choice,
        }
    )
    manifest = {**new.manifest, "novelty": _novelty_reference(src, after_out["probabilities"])}
    if choice is not None:
        manifest = {**manifest, "thresholds": thresholds, "threshold_choice": choice}
    _add_measurements(path, manifest, report, classes)
    return report


NOVELTY_MIN_FRAMES = 100  # held-out frames enough for the new model's entropy reference


def _novelty_reference(src: Any, probabilities: np.ndarray) -> dict[str, Any]:
    """The new bundle's novelty reference (:mod:`hitstream.novelty`): the fine-tuned
    model's entropy on the held-out frames when there are enough of them, else the source
    bundle's; the background range trained on is the source's."""
    from hitstream.novelty import reference_from

    old = dict(src.manifest.get("novelty") or {})
    level = (src.manifest.get("background") or {}).get("training_range", {}).get("level")
    level = level or old.get("background_level")
    if len(probabilities) >= NOVELTY_MIN_FRAMES or "entropy_q99" not in old:
        return reference_from(probabilities, level)
    return {**old, **({"background_level": list(level)} if level else {})}


def _source_bundle(model: Path) -> Any:
    """The verified source bundle; it must ship its Keras model."""
    from hitstream.bundle import KERAS_FILE, load_bundle

    src = load_bundle(model, verify=True)
    if KERAS_FILE not in src.manifest["files"]:
        raise BundleError(f"{model}: the bundle has no {KERAS_FILE} to fine-tune")
    return src


def _train(
    src: Any,
    frames: np.ndarray,
    labels: np.ndarray,
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int,
    seed: int,
    augment: bool,
    progress: bool,
    backgrounds: RunBackgrounds | None = None,
    pool: Unlabelled | None = None,
    unlabelled: UnlabelledConfig = UnlabelledConfig(),
) -> _Tuned:
    """Train the source bundle's Keras model further at a constant learning rate (with the
    frames' run backgrounds when the model takes them). With a ``pool`` of the run's
    unlabelled frames: batch norm re-estimated on them first, then a second round with the
    confident pseudo-labels (:mod:`trainer.model.unlabelled`)."""
    import keras

    from hitstream.bundle import KERAS_FILE
    from trainer.model.inputs import model_layout
    from trainer.model.train import TrainConfig, class_weights_for, epoch_logger, train_dataset

    t0 = time.perf_counter()
    keras.utils.set_random_seed(seed)
    net = keras.models.load_model(src.path / KERAS_FILE, compile=False)
    n_epochs = epochs or auto_epochs(len(labels))
    layout = model_layout(net, src.geometry)
    cfg = TrainConfig(
        background=layout.background,
        shot_scale=layout.shot_scale,
        architecture=net.name,
        epochs=n_epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        augment=augment,
        geometry=src.geometry,
    )
    used: dict[str, Any] = {"frames": 0 if pool is None else len(pool.frames), **asdict(unlabelled)}
    images = None
    if pool is not None and len(pool.frames):
        images = network_images(net, pool.frames, pool.backgrounds, cfg)
        if unlabelled.adapt_batch_norm:
            used["batch_norm_layers_adapted"] = adapt_batch_norm(net, images)
    weights = class_weights_for(labels, len(src.classes))
    net.compile(
        optimizer=keras.optimizers.Adam(learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
        metrics=["accuracy"],
    )

    def fit(ds: Any, n: int) -> list[float]:
        hist = net.fit(ds, epochs=n, callbacks=[epoch_logger(n)] if progress else [],
                       shuffle=False, verbose=0)  # fmt: skip
        return [float(v) for v in hist.history.get("loss", [])]

    loss = fit(train_dataset(frames, labels, weights, cfg, backgrounds), n_epochs)
    if images is not None and pool is not None and unlabelled.pseudo_labels:
        rows, plabels = pseudo_labels(net, images, unlabelled)
        used["pseudo_labelled"] = {c: int(np.sum(plabels == k)) for k, c in enumerate(src.classes)}
        if len(rows):
            all_frames = np.concatenate([frames, pool.frames[rows]])
            all_labels = np.concatenate([labels, plabels]).astype(labels.dtype)
            scale = np.concatenate([np.ones(len(labels)), np.full(len(rows), unlabelled.weight)])
            bgs = _joined(backgrounds, pool.backgrounds, len(labels), rows, src.frame_shape)
            n2 = epochs or auto_epochs(len(all_labels))
            loss += fit(
                train_dataset(all_frames, all_labels, weights, cfg, bgs, sample_scale=scale), n2
            )
    return _Tuned(net, cfg, weights, loss, time.perf_counter() - t0, used)


def _joined(
    labelled: RunBackgrounds | None,
    pool: RunBackgrounds | None,
    n_labelled: int,
    rows: np.ndarray,
    shape: tuple[int, int],
) -> RunBackgrounds | None:
    """The backgrounds of the labelled frames followed by those of the pool's ``rows``."""
    if labelled is None and pool is None:
        return None
    a = labelled if labelled is not None else RunBackgrounds.none(n_labelled, shape)
    b = pool.take(rows) if pool is not None else RunBackgrounds.none(len(rows), shape)
    return RunBackgrounds(
        np.concatenate([a.maps, b.maps]), np.concatenate([a.index, b.index + len(a.maps)])
    )


def _export(src: Any, net: Any, out: Path, name: str, summary: dict[str, Any], force: bool) -> Path:
    """The new bundle: the source's classes, thresholds, geometry and template bank."""
    from hitstream.bundle import TEMPLATES_FILE
    from trainer.model.export import export_bundle

    bank = src.path / TEMPLATES_FILE if TEMPLATES_FILE in src.manifest["files"] else None
    trained = (src.manifest.get("background") or {}).get("training_range", {}).get("level")
    return export_bundle(
        net,
        out,
        name=name,
        classes=list(src.classes),
        hit_classes=src.hit_classes,
        keep_classes=src.keep_classes,
        thresholds=src.thresholds,
        training_summary=summary,
        force=force,
        geometry=src.geometry,
        bank=bank,
        background_range=tuple(trained) if trained else None,
    )


def _add_measurements(
    path: Path, manifest: dict[str, Any], report: dict[str, Any], classes: list[str]
) -> None:
    """Write the before/after measurements into the (final) bundle and seal its manifest
    again."""
    from hitstream.bundle import CONFUSION_FILE, EVALUATION_FILE, load_bundle, write_manifest
    from trainer.model.export import write_confusion_png

    (path / FINETUNE_FILE).write_text(json.dumps(report, indent=2) + "\n")
    cls_metrics = {k: _classification_part(report[k]) for k in ("before", "after")}
    (path / EVALUATION_FILE).write_text(json.dumps(cls_metrics, indent=2) + "\n")
    write_confusion_png(path / CONFUSION_FILE, cls_metrics, classes)
    manifest = dict(manifest)
    manifest["metrics"] = {"holdout_before": cls_metrics["before"], "holdout": cls_metrics["after"]}
    write_manifest(path, manifest)
    for p in (FINETUNE_FILE, EVALUATION_FILE, CONFUSION_FILE):
        (path / p).chmod(0o644)
    load_bundle(path, verify=True)


def _classification_part(m: dict[str, Any]) -> dict[str, Any]:
    keys = ("frames", "accuracy", "per_class", "confusion", "keep")
    return {k: m[k] for k in keys if k in m}


def summary_lines(report: dict[str, Any], out: Path) -> list[str]:
    """What ``trainer finetune`` prints: the new bundle, then accuracy before and after."""
    r = report
    lines = [
        f"wrote {out} ({r['bundle']['name']}:{r['bundle']['version']}); "
        f"held-out frames: {r['holdout']['frames']}"
    ]
    choice = r.get("threshold_choice")
    if choice:
        lo, hi = choice["threshold_ci95"]
        plo, phi = choice["precision_ci95"]
        prec = "n/a" if choice["precision"] is None else f"{choice['precision']:.3f}"
        lines.append(
            f"{choice['class']} threshold for precision {choice['target_precision']}: "
            f"{choice['threshold']:.4f} (95 % interval {lo:.4f}–{hi:.4f}); on the "
            f"{choice['frames']} held-out frames precision {prec} ({plo:.3f}–{phi:.3f}), "
            f"{choice['kept']} kept of {choice['class_frames']}"
        )
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
    if r.get("worse_than_before"):
        lines.append(
            f"WARNING: the fine-tuned bundle is less accurate on your held-out labels than the "
            f"one it started from ({r['after']['accuracy']:.4f} < {r['before']['accuracy']:.4f}"
            f" on {r['holdout']['frames']} frames): keep the original, or label more frames "
            "(a good start is easily pulled off by a few hundred labels)"
        )
    labelled = r["holdout"]["frames"] + r.get("frames_trained", 0)
    lines.append(
        f"label-efficiency point: {labelled} labels -> accuracy {r['after']['accuracy']:.4f} "
        "on the held-out ones (bench/bench_adapt.py draws the whole curve)"
    )
    lines.append(
        "hand it to a running streamer (the bundle must lie under its metrics.model_roots): "
        "curl -X POST -H 'Content-Type: application/json' "
        f'-d \'{{"path": "{Path(out).resolve()}"}}\' http://127.0.0.1:9108/model'
    )
    return lines
