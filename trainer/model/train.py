"""Training of the frame classifier (Keras 3 on TensorFlow) and its evaluation metrics.

``train_model`` takes raw frames in memory and returns the trained Keras model (logits on
preprocessed images; see :mod:`trainer.model.cnn`), the per-epoch history and validation metrics.
Preprocessing (:mod:`trainer.model.preprocess_graph`) and, for training batches only, augmentation
(:mod:`trainer.model.augment`) run in the tf.data pipeline. Runs are reproducible for a seed:
``keras.utils.set_random_seed``, stateless augmentation seeds, deterministic ops.

The metric helpers at the end are pure numpy and shared by the CLIs and the reports.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from hitstream.geometry import DetectorGeometry
from trainer.data.backgrounds import RunBackgrounds

if TYPE_CHECKING:
    from trainer.model.inputs import InputLayout
from trainer.model.augment import AugmentConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """How to train. ``class_weights``: weight each class by N / (C × its count)."""

    architecture: str = "fine"
    epochs: int = 30
    batch_size: int = 64
    learning_rate: float = 2e-3
    seed: int = 0
    patience: int = 6
    class_weights: bool = True
    augment: bool = True
    augment_config: AugmentConfig = field(default_factory=AugmentConfig)
    deterministic: bool = True
    geometry: DetectorGeometry = field(default_factory=DetectorGeometry)
    background: bool = True  # the model takes the run's background map as a second input
    shot_scale: bool = False  # ... its excess over each shot's fitted level (shot_stage)

    def layout(self) -> InputLayout:
        """The model's input layout (:mod:`trainer.model.inputs`)."""
        from trainer.model.inputs import layout_of

        return layout_of(self.architecture, self.background, self.shot_scale)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["geometry"] = self.geometry.as_attrs()
        return d


@dataclass
class TrainResult:
    """A trained model with what happened while training it."""

    model: Any  # keras.Model, logits output
    history: dict[str, list[float]]
    metrics: dict[str, Any]  # validation metrics (argmax; see classification_metrics)
    val_probabilities: np.ndarray
    config: TrainConfig
    seconds: float
    best_epoch: int
    class_weights: dict[str, float] = field(default_factory=dict)


def class_weights_for(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """(C,) weights N / (C × count); classes absent from ``labels`` get weight 0."""
    counts = np.bincount(np.asarray(labels, np.int64), minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w


def _check_inputs(frames: np.ndarray, labels: np.ndarray, n_classes: int, what: str) -> None:
    if frames.ndim != 3 or len(frames) != len(labels):
        raise ValueError(
            f"{what}: need frames (N, H, W) and N labels, got {frames.shape} and {np.shape(labels)}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(
            f"{what}: labels must be in [0, {n_classes}), got [{labels.min()}, {labels.max()}]"
        )


def preprocess_batches(
    frames: np.ndarray,
    geometry: DetectorGeometry,
    batch: int = 256,
    coarsen: int = 1,
    details: bool = False,
    backgrounds: RunBackgrounds | None = None,
    shot_scale: bool = False,
):
    """Network inputs for frames, computed with the TensorFlow preprocessing in batches
    (with their runs' background maps when given; ``shot_scale``: over each shot's level)."""
    import tensorflow as tf

    from trainer.model import preprocess_graph as graph

    def inputs(i: int) -> np.ndarray:
        x = tf.constant(frames[i : i + batch])
        if backgrounds is None:
            return graph.preprocess(x, geometry, coarsen, details)[0].numpy()
        bg = tf.constant(backgrounds.of(np.arange(i, min(i + batch, len(frames)))))
        return graph.preprocess(x, geometry, coarsen, details, bg, shot_scale)[0].numpy()

    out = [inputs(i) for i in range(0, len(frames), batch)]
    return np.concatenate(out) if out else np.zeros((0, 0, 0, 0), np.float32)


def predict_probabilities(
    model: Any,
    frames: np.ndarray,
    geometry: DetectorGeometry | None = None,
    batch: int = 256,
    backgrounds: RunBackgrounds | None = None,
) -> np.ndarray:
    """(N, C) softmax probabilities from raw frames with the Keras model (the exported graph's
    TensorFlow twin); a model that takes the background gets its runs' maps (zeros when
    none are given)."""
    from trainer.model.inference_graph import inference_function
    from trainer.model.inputs import model_layout

    fn = inference_function(model, geometry)
    takes_bg = model_layout(model, geometry).background
    if takes_bg and backgrounds is None:
        backgrounds = RunBackgrounds.none(len(frames), frames.shape[1:])

    def probs(i: int) -> np.ndarray:
        x = frames[i : i + batch]
        if not takes_bg:
            return fn(x)["probabilities"].numpy()
        assert backgrounds is not None
        return fn(x, backgrounds.of(np.arange(i, i + len(x))))["probabilities"].numpy()

    out = [probs(i) for i in range(0, len(frames), batch)]
    return np.concatenate(out) if out else np.zeros((0, model.output_shape[-1]), np.float32)


def train_dataset(
    frames: np.ndarray,
    labels: np.ndarray,
    weights: np.ndarray,
    cfg: TrainConfig,
    backgrounds: RunBackgrounds | None = None,
    sample_scale: np.ndarray | None = None,
) -> Any:
    """The shuffled training ``tf.data.Dataset`` of (network inputs, labels, sample weights):
    ``weights`` per class, times ``sample_scale`` per frame when given (e.g. pseudo-labels);
    augmented batches unless ``cfg.augment`` is off (then the inputs are preprocessed once).
    With ``cfg.background`` each frame comes with its run's map (``backgrounds``; zero maps
    when none are given)."""
    import tensorflow as tf

    from trainer.model.augment import augmented_inputs

    layout = cfg.layout()
    n = len(frames)
    h, w = cfg.geometry.shape
    labels = np.asarray(labels, np.int32)
    sample_w = weights[labels].astype(np.float32)
    if sample_scale is not None:
        sample_w = sample_w * np.asarray(sample_scale, np.float32)
    bgs = None
    if layout.background:
        bgs = backgrounds if backgrounds is not None else RunBackgrounds.none(n, (h, w))
    if not cfg.augment:  # preprocess once, then only shuffle
        images = preprocess_batches(
            frames, cfg.geometry, coarsen=layout.coarsen, details=layout.details, backgrounds=bgs,
            shot_scale=layout.shot_scale,
        )  # fmt: skip
        ds = tf.data.Dataset.from_tensor_slices((images, labels, sample_w))
        ds = ds.shuffle(n, seed=cfg.seed, reshuffle_each_iteration=True)
        return ds.batch(cfg.batch_size).prefetch(2)

    def load(idx: np.ndarray):
        maps = bgs.of(idx) if bgs is not None else np.zeros((len(idx), 1, 1), np.float32)
        return frames[idx], maps.astype(np.float32), labels[idx], sample_w[idx]

    ds = tf.data.Dataset.range(n).shuffle(n, seed=cfg.seed, reshuffle_each_iteration=True)
    ds = ds.batch(cfg.batch_size).map(
        lambda i: tf.numpy_function(load, [i], [tf.float32, tf.float32, tf.int32, tf.float32])
    )
    seeds = tf.data.Dataset.random(seed=cfg.seed, rerandomize_each_iteration=True).batch(2)

    def transform(batch, seed):
        x, m, y, sw = batch
        x = tf.ensure_shape(x, [None, h, w])
        m = tf.ensure_shape(m, [None, h, w]) if bgs is not None else None
        images = augmented_inputs(
            x, seed, cfg.geometry, cfg.augment_config, layout.coarsen, layout.details, m,
            layout.shot_scale,
        )  # fmt: skip
        return images, tf.ensure_shape(y, [None]), tf.ensure_shape(sw, [None])

    ds = tf.data.Dataset.zip((ds, seeds)).map(transform, num_parallel_calls=2, deterministic=True)
    return ds.prefetch(2)


def epoch_logger(total: int) -> Any:
    """A Keras callback that prints one line per epoch to stderr."""
    import keras

    class EpochLog(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            parts = [f"{k} {v:.4f}" for k, v in logs.items() if k != "learning_rate"]
            dt = time.perf_counter() - self._t
            print(
                f"epoch {epoch + 1}/{total} ({dt:.0f} s): " + ", ".join(parts),
                file=sys.stderr,
                flush=True,
            )

    return EpochLog()


def train_model(
    frames: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    val_frames: np.ndarray,
    val_labels: np.ndarray,
    config: TrainConfig = TrainConfig(),
    progress: bool = True,
    backgrounds: RunBackgrounds | None = None,
    val_backgrounds: RunBackgrounds | None = None,
) -> TrainResult:
    """Train ``config.architecture`` on raw frames (N, H, W) with integer labels into
    ``classes``. Adam with a cosine-decaying learning rate; early stopping on the
    validation loss restores the best weights. With ``config.background`` the model also
    takes each frame's run background (``backgrounds``, ``val_backgrounds``)."""
    import keras
    import tensorflow as tf

    from hitstream.frame_kernel import input_shape
    from trainer.model.cnn import build_model

    classes = list(classes)
    labels = np.asarray(labels, np.int64)
    val_labels = np.asarray(val_labels, np.int64)
    _check_inputs(frames, labels, len(classes), "training set")
    _check_inputs(val_frames, val_labels, len(classes), "validation set")
    if len(frames) == 0 or len(val_frames) == 0:
        raise ValueError("training and validation sets must not be empty")
    if tuple(frames.shape[1:]) != tuple(config.geometry.shape):
        raise ValueError(
            f"frames {frames.shape[1:]} differ from the geometry's {config.geometry.shape}"
        )
    t0 = time.perf_counter()
    keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        tf.config.experimental.enable_op_determinism()
    weights = (
        class_weights_for(labels, len(classes)) if config.class_weights else np.ones(len(classes))
    )
    layout = config.layout()
    shape = config.geometry.shape
    if layout.background:
        backgrounds = backgrounds or RunBackgrounds.none(len(frames), shape)
        val_backgrounds = val_backgrounds or RunBackgrounds.none(len(val_frames), shape)
    else:
        backgrounds = val_backgrounds = None
    train_ds = train_dataset(frames, labels, weights, config, backgrounds)
    val_images = preprocess_batches(
        val_frames, config.geometry, coarsen=layout.coarsen, details=layout.details,
        backgrounds=val_backgrounds, shot_scale=layout.shot_scale,
    )  # fmt: skip
    val_ds = tf.data.Dataset.from_tensor_slices((val_images, val_labels.astype(np.int32)))
    val_ds = val_ds.batch(256)

    model = build_model(
        layout.model_name,
        (*input_shape(config.geometry, layout.coarsen), layout.channels),
        len(classes),
    )
    steps = config.epochs * -(-len(frames) // config.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(config.learning_rate, steps, alpha=0.02)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
        metrics=["accuracy"],
    )
    callbacks = [
        keras.callbacks.EarlyStopping(
            monitor="val_loss", patience=config.patience, restore_best_weights=True
        ),
    ]
    if progress:
        callbacks.append(epoch_logger(config.epochs))
    hist = model.fit(
        train_ds,
        validation_data=val_ds,
        epochs=config.epochs,
        callbacks=callbacks,
        shuffle=False,  # the dataset shuffles itself, reproducibly
        verbose=0,
    )
    history = {k: [float(v) for v in vals] for k, vals in hist.history.items()}
    best_epoch = int(np.argmin(history["val_loss"])) + 1 if history.get("val_loss") else 0
    val_prob = predict_probabilities(
        model, val_frames, config.geometry, backgrounds=val_backgrounds
    )
    metrics = classification_metrics(val_prob, val_labels, classes)
    seconds = time.perf_counter() - t0
    log.info(
        "trained %s in %.0f s, best epoch %d, validation accuracy %.4f",
        config.architecture,
        seconds,
        best_epoch,
        metrics["accuracy"],
    )
    return TrainResult(
        model=model,
        history=history,
        metrics=metrics,
        val_probabilities=val_prob,
        config=config,
        seconds=seconds,
        best_epoch=best_epoch,
        class_weights={c: float(w) for c, w in zip(classes, weights, strict=True)},
    )


# --- metrics (pure numpy) ---------------------------------------------------------------


def keep_decision(probabilities: np.ndarray, index: int, threshold: float) -> np.ndarray:
    """The streamer's keep rule for one class: argmax is the class and p ≥ threshold."""
    p = np.asarray(probabilities)
    return (p.argmax(axis=1) == index) & (p[:, index] >= threshold)


MIN_KEEP_RECALL = 0.5
"""A bundle's keep threshold is lowered, where the argmax allows, to keep at least this
share of the class on validation (:func:`choose_threshold`)."""


def choose_threshold(
    probabilities: np.ndarray,
    labels: np.ndarray,
    index: int,
    target_precision: float = 0.97,
    floor: float = 0.5,
    min_recall: float = MIN_KEEP_RECALL,
) -> float:
    """Lowest threshold on p[class] whose keep decision reaches ``target_precision``,
    lowered where needed so that the kept frames hold at least ``min_recall`` of the class.

    Among frames whose argmax is the class, sorted by decreasing probability, the largest
    prefix with precision ≥ target sets the threshold (the highest recall that meets the
    target); if no prefix reaches it, the most precise prefix. A model whose validation
    precision plateaus below the target would otherwise keep a sliver of the class (a few %
    of the singles), so the threshold is never above the score that keeps ``min_recall`` of
    the class's frames, where the argmax allows that. Never below ``floor``.
    """
    p = np.asarray(probabilities)
    labels = np.asarray(labels)
    cand = np.flatnonzero(p.argmax(axis=1) == index)
    if cand.size == 0:
        return 1.0
    order = cand[np.argsort(-p[cand, index], kind="stable")]
    scores = p[order, index]
    hit = labels[order] == index
    tp = np.cumsum(hit)
    k = np.arange(1, len(order) + 1)
    precision = tp / k
    # a threshold can only sit between distinct scores: use the last of each tie group
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    ok = np.flatnonzero((precision >= target_precision) & last_of_tie)
    if ok.size:
        t = float(scores[ok[-1]])
    else:
        valid = np.flatnonzero(last_of_tie)
        t = float(scores[valid[np.argmax(precision[valid])]])
    total = int(np.sum(labels == index))
    if total and min_recall > 0:
        reach = np.flatnonzero((tp >= min_recall * total) & last_of_tie)
        if reach.size:  # the highest threshold that keeps min_recall of the class
            t = min(t, float(scores[reach[0]]))
    return max(t, floor)


def classification_metrics(
    probabilities: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    thresholds: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, confusion matrix (rows: truth,
    columns: prediction) and, for each thresholded class, precision/recall of the keep
    decision."""
    p = np.asarray(probabilities, np.float64)
    y = np.asarray(labels, np.int64)
    c = len(classes)
    pred = p.argmax(axis=1) if len(p) else np.zeros(0, np.int64)
    conf = np.zeros((c, c), np.int64)
    np.add.at(conf, (y, pred), 1)
    per_class = {}
    for i, name in enumerate(classes):
        tp = conf[i, i]
        prec = tp / conf[:, i].sum() if conf[:, i].sum() else 0.0
        rec = tp / conf[i].sum() if conf[i].sum() else 0.0
        f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
        per_class[name] = {
            "precision": round(float(prec), 5),
            "recall": round(float(rec), 5),
            "f1": round(float(f1), 5),
            "support": int(conf[i].sum()),
        }
    out: dict[str, Any] = {
        "frames": len(y),
        "accuracy": round(float(np.trace(conf) / max(1, len(y))), 5),
        "per_class": per_class,
        "confusion": conf.tolist(),
    }
    keep = {}
    for name, t in (thresholds or {}).items():
        i = list(classes).index(name)
        k = keep_decision(p, i, t)
        tp = int(np.sum(k & (y == i)))
        keep[name] = {
            "threshold": round(float(t), 5),
            "precision": round(tp / k.sum(), 5) if k.sum() else 0.0,
            "recall": round(tp / max(1, int(np.sum(y == i))), 5),
            "kept": int(k.sum()),
        }
    if keep:
        out["keep"] = keep
    return out
