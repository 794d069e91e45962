"""The run's unlabelled frames in fine-tuning: what ``trainer finetune`` does with the ~90 %
of a run nobody labelled.

Two steps, each measured with ``bench/bench_adapt.py`` (README, "Adaptation"); the first is
on by default, the second off (it cost accuracy where it was measured):

* **Normalisation statistics of the new run** (domain-adaptive batch norm): the network's
  batch-norm layers re-estimate their means and variances on the run's unlabelled frames
  before the labelled frames train it, so a run whose frames are brighter, dimmer or on more
  background than the training runs is not seen through the old runs' statistics.
* **Confident pseudo-labels** (self-training): after fine-tuning on the labels, the frames the
  network labels with probability ≥ ``threshold`` join the training set (at most ``per_class``
  per class, each weighing ``weight``), and it trains again with the physics augmentations,
  so it must stay consistent on them under the nuisances it was built for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.data.backgrounds import RunBackgrounds, run_background
from trainer.data.ingest import Labelled, open_run, read_frames


@dataclass(frozen=True)
class UnlabelledConfig:
    """How fine-tuning uses unlabelled frames."""

    frames: int = 2000  # unlabelled frames taken from the runs (spread evenly); 0: none
    adapt_batch_norm: bool = True
    pseudo_labels: bool = False  # measured: it cost 1.3 points on the `new` setting (README)
    threshold: float = 0.97  # pseudo-label only frames the network is this sure of
    per_class: int = 300  # at most this many pseudo-labelled frames per class
    weight: float = 0.5  # a pseudo-labelled frame's weight against a labelled one


@dataclass
class Unlabelled:
    """Frames of the runs that carry no label, with their run's background."""

    frames: np.ndarray  # (N, H, W) float32 photons
    backgrounds: RunBackgrounds | None


def unlabelled_frames(
    data: Labelled, n: int, *, photon_unit: float, with_background: bool, seed: int = 0
) -> Unlabelled:
    """Up to ``n`` frames of the labelled runs that are not labelled, spread over the runs in
    proportion to their size."""
    rng = np.random.default_rng(seed)
    runs = list(data.sources.items())
    sizes = []
    for _name, info in runs:
        with open_run(info.path, info.dataset, photon_unit=photon_unit) as src:
            sizes.append(src.n_frames)
    total = max(1, sum(sizes))
    parts, maps, index = [], [], []
    for k, ((name, info), size) in enumerate(zip(runs, sizes, strict=True)):
        labelled = set(data.index[data.run == name].tolist())
        free = np.array([i for i in range(size) if i not in labelled], np.int64)
        take = min(len(free), round(n * size / total))
        if take <= 0:
            continue
        pick = np.sort(rng.choice(free, take, replace=False))
        with open_run(info.path, info.dataset, photon_unit=photon_unit) as src:
            parts.append(read_frames(src, pick, progress=False))
            if with_background:
                maps.append(run_background(src).map)
        index.append(np.full(take, len(maps) - 1 if with_background else k, np.int64))
    if not parts:
        h, w = data.frames.shape[1:]
        return Unlabelled(np.zeros((0, h, w), np.float32), None)
    bgs = (
        RunBackgrounds(np.stack(maps).astype(np.float32), np.concatenate(index))
        if with_background
        else None
    )
    return Unlabelled(np.concatenate(parts), bgs)


def network_images(net: Any, frames: Any, backgrounds: RunBackgrounds | None, cfg: Any) -> Any:
    """The network inputs of ``frames`` (preprocessed as in training, no augmentation)."""
    from trainer.model.train import preprocess_batches

    layout = cfg.layout()
    if layout.background and backgrounds is None:
        backgrounds = RunBackgrounds.none(len(frames), cfg.geometry.shape)
    return preprocess_batches(
        frames, cfg.geometry, coarsen=layout.coarsen, details=layout.details,
        backgrounds=backgrounds if layout.background else None, shot_scale=layout.shot_scale,
    )  # fmt: skip


def adapt_batch_norm(net: Any, images: np.ndarray, batch_size: int = 64) -> int:
    """Re-estimate every batch-norm layer's moving statistics on ``images`` (the network's
    other weights untouched): a running average over the batches. Returns the layers."""
    import keras

    bns = [layer for layer in net.layers if isinstance(layer, keras.layers.BatchNormalization)]
    if not bns or len(images) < 2:
        return 0
    saved = [bn.momentum for bn in bns]
    try:
        for k, a in enumerate(range(0, len(images), batch_size), start=1):
            for bn in bns:
                bn.momentum = 1.0 - 1.0 / k  # the k-th batch weighs 1/k: a plain mean
            net(images[a : a + batch_size], training=True)
    finally:
        for bn, m in zip(bns, saved, strict=True):
            bn.momentum = m
    return len(bns)


def pseudo_labels(
    net: Any, images: np.ndarray, cfg: UnlabelledConfig, batch_size: int = 128
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, labels) of the frames the network is sure of, at most ``per_class`` per class
    (the surest first)."""
    import keras

    probs = np.concatenate(
        [
            np.asarray(keras.ops.softmax(net(images[a : a + batch_size], training=False), -1))
            for a in range(0, len(images), batch_size)
        ]
    ) if len(images) else np.zeros((0, 1), np.float32)  # fmt: skip
    if not len(probs):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    label = probs.argmax(1)
    conf = probs.max(1)
    rows = []
    for c in range(probs.shape[1]):
        sure = np.flatnonzero((label == c) & (conf >= cfg.threshold))
        rows.append(sure[np.argsort(-conf[sure], kind="stable")][: cfg.per_class])
    picked = np.sort(np.concatenate(rows)) if rows else np.zeros(0, np.int64)
    return picked, label[picked]
