"""The keep threshold for a target precision, from labelled frames, with its uncertainty.

:func:`threshold_for_target` picks the lowest probability threshold whose kept frames reach
the target precision on the labelled frames (:func:`trainer.model.train.choose_threshold`),
and says how sure that is: a Wilson 95 % interval of the precision it reaches, and a
bootstrap 95 % interval of the threshold itself (the frames resampled). A few hundred
labels give wide intervals; they are reported, not hidden.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from trainer.model.train import choose_threshold, keep_decision

Z95 = 1.959964
BOOTSTRAP = 1000


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (0..1); (0, 1) when ``n`` is 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def threshold_for_target(
    probabilities: np.ndarray,
    labels: np.ndarray,
    index: int,
    target: float,
    *,
    seed: int = 0,
) -> dict[str, Any]:
    """The threshold of class ``index`` for ``target`` precision on these frames, the
    precision and recall it reaches there, and their 95 % intervals. The person asked for a
    precision: no recall floor lowers it (the recall it costs is reported)."""
    p = np.asarray(probabilities)
    y = np.asarray(labels)
    t = choose_threshold(p, y, index, target, min_recall=0.0)
    keep = keep_decision(p, index, t)
    tp = int(np.sum(keep & (y == index)))
    kept = int(keep.sum())
    positives = int(np.sum(y == index))
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(BOOTSTRAP):
        rows = rng.integers(0, len(y), len(y))
        if np.any(y[rows] == index):
            boot.append(choose_threshold(p[rows], y[rows], index, target, min_recall=0.0))
    lo, hi = np.percentile(boot, [2.5, 97.5]).tolist() if boot else [t, t]
    return {
        "target_precision": target,
        "threshold": t,
        "threshold_ci95": [float(lo), float(hi)],
        "precision": tp / kept if kept else None,
        "precision_ci95": list(wilson(tp, kept)),
        "recall": tp / positives if positives else None,
        "recall_ci95": list(wilson(tp, positives)),
        "frames": len(y),
        "kept": kept,
        "class_frames": positives,
    }
