"""The second training stage: the same network, a few more epochs on the excess over each
shot's fitted background level (:mod:`hitstream.frame_kernel` step 7).

Why two stages, measured on the background ladder (``bench/bench_background.py``, 1,000
frames per row, against the default trained on the run-level excess only): a full
``build-default`` on the shot-level input from scratch gained at 0.05 photon/pixel (0.887 →
0.935) but lost 2.4 points at 0.005 and 1.8 at 0.02 (empty frames called single or
other). Three epochs on the shot-level input after the usual training did better at 0.02
(0.955) and 0.05 (0.946) and as badly at 0.005 (0.960) in the full build; the same three
epochs started from the previous default's weights (18 first-stage epochs) on 5,000
training frames kept 0.005 at 0.985 (an A/B, not shipped), so the low rows depend on the
first stage's run. The first stage learns the frames; the second learns to trust the
shot's level.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from trainer.data.backgrounds import RunBackgrounds
from trainer.model.train import (
    TrainResult,
    classification_metrics,
    epoch_logger,
    predict_probabilities,
    preprocess_batches,
    train_dataset,
)

SHOT_EPOCHS = 3  # epochs of the second stage (at most the first stage's)
SHOT_LEARNING_RATE = 5e-4  # its starting rate, decaying as a cosine to 5 %


def continue_on_shot_input(
    result: TrainResult,
    frames: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    val_frames: np.ndarray,
    val_labels: np.ndarray,
    backgrounds: RunBackgrounds | None,
    val_backgrounds: RunBackgrounds | None,
    epochs: int = SHOT_EPOCHS,
    learning_rate: float = SHOT_LEARNING_RATE,
    progress: bool = True,
) -> TrainResult:
    """Train ``result``'s model further on the shot-level input; the model is renamed
    ``<architecture>-shot`` (its input layout). A model without a background input, or
    ``epochs`` 0, comes back unchanged."""
    import keras
    import tensorflow as tf

    cfg = replace(result.config, shot_scale=True, epochs=epochs, learning_rate=learning_rate)
    layout = cfg.layout()
    if not layout.shot_scale or epochs <= 0:
        return result
    t0 = time.perf_counter()
    net = result.model
    net.name = layout.model_name
    weights = np.array([result.class_weights[c] for c in classes], np.float32)
    ds = train_dataset(frames, labels, weights, cfg, backgrounds)
    val_images = preprocess_batches(
        val_frames, cfg.geometry, coarsen=layout.coarsen, details=layout.details,
        backgrounds=val_backgrounds, shot_scale=True,
    )  # fmt: skip
    val_ds = tf.data.Dataset.from_tensor_slices((val_images, np.asarray(val_labels, np.int32)))
    steps = epochs * -(-len(frames) // cfg.batch_size)
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05)
    net.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[],
        metrics=["accuracy"],
    )
    hist = net.fit(
        ds,
        validation_data=val_ds.batch(256),
        epochs=epochs,
        callbacks=[epoch_logger(epochs)] if progress else [],
        shuffle=False,
        verbose=0,
    )
    history = {
        k: [*result.history.get(k, []), *(float(v) for v in vals)]
        for k, vals in hist.history.items()
    }
    val_prob = predict_probabilities(net, val_frames, cfg.geometry, backgrounds=val_backgrounds)
    return replace(
        result,
        model=net,
        history=history,
        metrics=classification_metrics(val_prob, val_labels, list(classes)),
        val_probabilities=val_prob,
        config=cfg,
        seconds=result.seconds + time.perf_counter() - t0,
    )
