"""hitstream.novelty: when the frames are unlike the training data, and when they are not."""

from __future__ import annotations

import numpy as np

from hitstream.novelty import MIN_FRAMES, NoveltyMonitor, entropy, reference_from

CLASSES = ("single", "multiple", "empty", "other")


def confident(rng: np.random.Generator, n: int, cls: np.ndarray | None = None) -> np.ndarray:
    """(n, 4) probabilities, 0.9-0.99 on one class (random unless given)."""
    cls = rng.integers(0, 4, n) if cls is None else cls
    top = rng.uniform(0.9, 0.99, n)
    p = np.repeat(((1 - top) / 3)[:, None], 4, axis=1)
    p[np.arange(n), cls] = top
    return p


def test_entropy_and_reference() -> None:
    p = np.array([[1.0, 0, 0, 0], [0.25] * 4, [np.nan, 0.5, 0.5, 0]])
    h = entropy(p)
    assert h[0] == 0 and np.isclose(h[1], np.log(4)) and np.isnan(h[2])
    rng = np.random.default_rng(1)
    ref = reference_from(confident(rng, 1000), (0.0, 0.1))
    assert 0 < ref["entropy_q99"] < 0.5 and ref["background_level"] == [0.0, 0.1]


def test_quiet_on_frames_like_the_training_frames() -> None:
    rng = np.random.default_rng(2)
    ref = reference_from(confident(rng, 2000), (0.0, 0.1))
    mon = NoveltyMonitor(ref, CLASSES)
    cls = rng.choice(4, 3000, p=[0.1, 0.05, 0.75, 0.1])
    mon.observe(confident(rng, 3000, cls), background_level=0.05)
    r = mon.report()
    assert not r.novel and r.warning() is None and r.score < 0.5


def test_each_sign_raises_the_warning_with_its_reason() -> None:
    rng = np.random.default_rng(3)
    ref = reference_from(confident(rng, 2000), (0.0, 0.1))
    far = NoveltyMonitor(ref, CLASSES)
    far.observe(confident(rng, 300), background_level=0.5)  # beyond the training range
    assert far.report().reasons[0].startswith("background 0.5")
    unsure = NoveltyMonitor(ref, CLASSES)
    unsure.observe(np.full((400, 4), 0.25), background_level=0.05)  # all uncertain
    assert "uncertain" in unsure.report().reasons[0]
    junk = NoveltyMonitor(ref, CLASSES)
    junk.observe(confident(rng, 400, np.full(400, 3)))  # every frame "other"
    r = junk.report()
    assert "other" in r.reasons[0] and "trainer finetune" in (r.warning() or "")
    assert r.score >= 0.5


def test_no_verdict_on_a_handful_of_frames() -> None:
    mon = NoveltyMonitor({"entropy_q99": 0.1}, CLASSES)
    mon.observe(np.full((MIN_FRAMES - 1, 4), 0.25))
    assert not mon.report().novel
