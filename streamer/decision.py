"""Turn class probabilities into labels and keep decisions (pure functions)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hitstream.errors import ConfigError


def keep_mask_for(classes: Sequence[str], keep_classes: Sequence[str]) -> np.ndarray:
    """Boolean (C,) vector: which class indices are kept."""
    unknown = set(keep_classes) - set(classes)
    if unknown:
        raise ConfigError(
            f"keep classes {sorted(unknown)} are not among the model's {list(classes)}"
        )
    return np.array([c in keep_classes for c in classes], dtype=bool)


def threshold_vector(classes: Sequence[str], thresholds: Mapping[str, float]) -> np.ndarray:
    """(C,) minimum probability for a frame of each class to be kept (0 where unset)."""
    return np.array([float(thresholds.get(c, 0.0)) for c in classes], dtype=np.float32)


def decide(
    probabilities: np.ndarray, keep_by_class: np.ndarray, min_prob: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Label = argmax; keep = label is a kept class and its probability reaches the threshold.

    Rows with non-finite probabilities get label -1 and are never kept.
    """
    finite = np.isfinite(probabilities).all(axis=1)
    safe = np.where(finite[:, None], probabilities, -np.inf)
    label = np.argmax(safe, axis=1).astype(np.int16)
    label[~finite] = -1
    top = np.take_along_axis(safe, label.clip(0)[:, None].astype(np.intp), axis=1)[:, 0]
    keep = finite & keep_by_class[label.clip(0)] & (top >= min_prob[label.clip(0)])
    return label, keep
