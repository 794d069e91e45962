"""Which frames to label next (trainer.labelling.proposals)."""

from __future__ import annotations

import numpy as np

from trainer.labelling.proposals import margins, propose


def probs(rows: list[list[float]]) -> np.ndarray:
    return np.asarray(rows, np.float64)


def test_uncertain_first_and_classes_in_turn() -> None:
    p = probs([
        [0.98, 0.01, 0.01],  # 0: sure class 0
        [0.50, 0.45, 0.05],  # 1: undecided, class 0
        [0.60, 0.30, 0.10],  # 2: class 0
        [0.10, 0.85, 0.05],  # 3: class 1
        [0.20, 0.21, 0.59],  # 4: the only class-2 frame (rare)
        [0.05, 0.55, 0.40],  # 5: class 1, unsure
    ])  # fmt: skip
    order = propose(p, 6, explore=0).tolist()
    assert order[:3] == [1, 5, 4]  # each class's most uncertain frame, class by class
    assert sorted(order) == list(range(6))
    assert np.allclose(margins(p)[[0, 4]], [0.97, 0.38])


def test_labelled_frames_are_never_proposed_and_n_is_respected() -> None:
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(4), size=200)
    done = np.zeros(200, bool)
    done[:50] = True
    got = propose(p, 30, labelled=done)
    assert len(got) == 30 and len(set(got.tolist())) == 30 and (got >= 50).all()


def test_near_copies_wait_for_the_others() -> None:
    p = probs([[0.5, 0.5]] * 3 + [[0.6, 0.4]])  # three equally unsure twins, one other
    feats = np.array([[0.0], [0.0], [0.0], [1.0]])
    order = propose(p, 4, features=feats, explore=0).tolist()
    assert order[:2] == [0, 3]  # the second twin waits for the different frame
    assert sorted(order) == [0, 1, 2, 3]


def test_half_the_turns_go_to_random_frames_of_the_run() -> None:
    from trainer.labelling.proposals import interleave

    assert interleave([1, 2, 3, 4], [9, 8, 2, 7], 0.5, 6) == [1, 9, 2, 8, 3, 4]
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.ones(3) * 0.3, size=300)
    mixed = propose(p, 40, seed=2)
    pure = propose(p, 40, explore=0)
    assert len(set(mixed.tolist())) == 40
    assert 10 <= len(set(mixed.tolist()) & set(pure.tolist())) <= 30  # about half shared


def test_the_label_page_can_show_frames_in_proposed_order() -> None:
    from trainer.labelling.session import ORDERS, order_frames

    rng = np.random.default_rng(4)
    p = rng.dirichlet(np.ones(4), size=50)
    order = order_frames("proposed", 50, probabilities=p)
    assert "proposed" in ORDERS and sorted(order.tolist()) == list(range(50))
    np.testing.assert_array_equal(order, propose(p, 50))
