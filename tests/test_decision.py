"""The keep threshold at its boundary: a probability equal to the threshold is kept.

The engine hands ``decide`` float32 probabilities and the trainer picks a threshold that is
one frame's own float32 probability (see the shipped manifests), so the boundary is exact,
not an edge case: the frame that set the threshold must be kept, on both sides of the
contract (``streamer.decision.decide`` and ``trainer.model.train.keep_decision``).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from streamer.decision import decide, keep_mask_for, threshold_vector
from trainer.model.train import choose_threshold, keep_decision

CLASSES = ("single", "multiple", "empty", "other")
MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = sorted(
    float(t)
    for manifest in sorted(MODELS.glob("*/manifest.json"))
    for t in json.loads(manifest.read_text())["thresholds"].values()
)
# 0.5: exactly representable; 0.6: rounded to float32 by threshold_vector; the shipped ones
# are float32 values (a frame's probability) written as JSON doubles
THRESHOLDS = [0.5, 0.6, 0.97, *SHIPPED]


def boundary_rows(t: float) -> np.ndarray:
    """float32 rows whose argmax is class 0 with p = t, one ulp below t and one ulp above
    (t as float32, the precision the engine computes in)."""
    t32 = np.float32(t)
    ps = [t32, np.nextafter(t32, np.float32(0)), np.nextafter(t32, np.float32(1))]
    rows = np.zeros((3, len(CLASSES)), np.float32)
    rows[:, 0] = ps
    rows[:, 1:] = ((1 - rows[:, :1]) / 3).astype(np.float32)  # the rest, well below p
    assert (rows.argmax(axis=1) == 0).all()
    assert rows[1, 0] < t32 < rows[2, 0]  # the ulps really are distinct float32 values
    return rows


def test_shipped_thresholds_are_float32_values() -> None:
    """Why the exact boundary matters: the trainer's threshold is a frame's probability."""
    assert SHIPPED
    for t in SHIPPED:
        assert float(np.float32(t)) == t, t


@pytest.mark.parametrize("t", THRESHOLDS)
def test_decide_keeps_a_probability_equal_to_the_threshold(t: float) -> None:
    probs = boundary_rows(t)
    assert probs.dtype == np.float32  # as the engine gives them
    label, keep = decide(
        probs, keep_mask_for(CLASSES, ["single"]), threshold_vector(CLASSES, {"single": t})
    )
    assert label.tolist() == [0, 0, 0]
    assert keep.tolist() == [True, False, True], f"p = t, t - 1 ulp, t + 1 ulp with t = {t!r}"


@pytest.mark.parametrize("t", THRESHOLDS)
def test_decide_boundary_is_per_class(t: float) -> None:
    """The threshold of the frame's own class applies; a class without one keeps by argmax
    only; a class not kept is never kept, whatever its probability."""
    rows = boundary_rows(t)
    probs = np.concatenate([rows, rows[:, [1, 0, 2, 3]], rows[:, [2, 1, 0, 3]]])
    keep_by = keep_mask_for(CLASSES, ["single", "multiple"])
    label, keep = decide(probs, keep_by, threshold_vector(CLASSES, {"single": t, "empty": t}))
    assert label.tolist() == [0] * 3 + [1] * 3 + [2] * 3
    assert keep.tolist() == [True, False, True] + [True] * 3 + [False] * 3


@pytest.mark.parametrize("t", THRESHOLDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_trainer_keep_decision_keeps_a_probability_equal_to_the_threshold(
    t: float, dtype: type
) -> None:
    """The trainer's copy of the rule (its metrics) draws the same boundary as the streamer,
    with the threshold as ``choose_threshold`` returns it (a Python float)."""
    probs = boundary_rows(t).astype(dtype)
    threshold = float(np.float32(t))
    assert keep_decision(probs, 0, threshold).tolist() == [True, False, True]
    _, keep = decide(
        probs.astype(np.float32),
        keep_mask_for(CLASSES, ["single"]),
        threshold_vector(CLASSES, {"single": threshold}),
    )
    assert keep.tolist() == keep_decision(probs, 0, threshold).tolist()


def test_choose_threshold_accepts_a_prefix_whose_precision_equals_the_target() -> None:
    """Scores 0.9, 0.8, 0.7, 0.6 for class 0, the last one wrong: the prefixes' precisions
    are 1, 1, 1 and exactly 3/4. With a target of 0.75 the whole prefix qualifies, so the
    threshold is the lowest score, and keeping by it keeps all four frames."""
    scores = np.array([0.9, 0.8, 0.7, 0.6], np.float32)
    p = np.zeros((4, len(CLASSES)), np.float32)
    p[:, 0] = scores
    p[:, 1] = 1 - scores
    labels = np.array([0, 0, 0, 1])
    t = choose_threshold(p, labels, 0, target_precision=0.75, floor=0.0)
    assert t == float(scores[3])
    assert keep_decision(p, 0, t).tolist() == [True] * 4
    keep_by, min_prob = keep_mask_for(CLASSES, ["single"]), threshold_vector(CLASSES, {"single": t})
    _, keep = decide(p, keep_by, min_prob)
    assert keep.tolist() == [True] * 4
    # just above the target, the wrong frame must go: the threshold moves up one frame
    t_strict = choose_threshold(p, labels, 0, target_precision=0.76, floor=0.0)
    assert t_strict == float(scores[2])
    assert keep_decision(p, 0, t_strict).tolist() == [True, True, True, False]


def test_choose_threshold_keeps_the_recall_floor_when_precision_plateaus() -> None:
    """Precision 1 on the top two frames, then about 2 of every 3 right: a 0.97 target alone
    keeps two of 7 singles. The recall floor lowers the threshold to the score that keeps half of
    them (4 of 7), and no lower; with the floor off, the sliver comes back."""
    scores = np.array([0.99, 0.95, 0.94, 0.9, 0.85, 0.84, 0.8, 0.75, 0.74, 0.7], np.float32)
    labels = np.array([0, 0, 1, 0, 0, 1, 0, 0, 1, 0])
    p = np.zeros((len(scores), len(CLASSES)), np.float32)
    p[:, 0] = scores
    p[:, 1] = 1 - scores
    assert choose_threshold(p, labels, 0, 0.97, floor=0.0, min_recall=0.0) == float(scores[1])
    t = choose_threshold(p, labels, 0, 0.97, floor=0.0, min_recall=0.5)
    assert t == float(scores[4])
    kept = keep_decision(p, 0, t)
    assert kept.sum() == 5 and int(np.sum(kept & (labels == 0))) == 4
    # a target the model reaches at higher recall is not raised by the floor
    assert choose_threshold(p, labels, 0, 0.6, floor=0.0, min_recall=0.5) == float(scores[-1])
