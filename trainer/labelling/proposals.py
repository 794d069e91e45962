"""Which frames to label next: uncertain ones, in balance over the classes, not all alike.

:func:`propose` ranks a run's unlabelled frames from the current model's probabilities:

* **uncertain**: the smallest margin between the two most probable classes first;
* **in balance**: the frames are taken round-robin over the predicted classes, so a class
  the model rarely predicts (the rare class a person must see) gets as many turns as the
  common ones, while it has candidates;
* **diverse**: within a class, frames close (in the given ``features``, e.g. photon count
  and the background level) to one already proposed are passed over for the next candidate
  once, so one turn does not go to ten near-copies;
* **representative**: a share ``explore`` of the turns (default half) goes to frames drawn
  at random from the run, so the labelled set still looks like the run. Measured
  (``bench/bench_label_curve.py``): uncertain frames alone gave a skewed set that fine-tuned
  worse than random frames below 100 labels.
"""

from __future__ import annotations

import numpy as np


def margins(probabilities: np.ndarray) -> np.ndarray:
    """Top-1 minus top-2 probability per frame (0: undecided, 1: sure)."""
    p = np.sort(np.asarray(probabilities, np.float64), axis=1)
    return p[:, -1] - p[:, -2] if p.shape[1] > 1 else np.ones(len(p))


def propose(
    probabilities: np.ndarray,
    n: int,
    *,
    labelled: np.ndarray | None = None,
    features: np.ndarray | None = None,
    min_distance: float = 0.05,
    explore: float = 0.5,
    seed: int = 0,
) -> np.ndarray:
    """Indices of up to ``n`` frames to label next, in the order to label them.

    ``labelled``: a boolean mask of frames already labelled (never proposed again);
    ``features``: ``(N, k)`` values compared (after scaling each column to 0..1) for the
    diversity rule; frames nearer than ``min_distance`` to a proposed one wait a round."""
    p = np.asarray(probabilities)
    total = len(p)
    free = np.ones(total, bool) if labelled is None else ~np.asarray(labelled, bool)
    m = margins(p)
    label = p.argmax(axis=1)
    queues = []
    for c in range(p.shape[1]):
        rows = np.flatnonzero(free & (label == c))
        queues.append(list(rows[np.argsort(m[rows], kind="stable")]))
    f = None
    if features is not None:
        f = np.asarray(features, np.float64).reshape(total, -1)
        span = np.ptp(f, axis=0)
        f = (f - f.min(axis=0)) / np.where(span > 0, span, 1.0)
    chosen: list[int] = []
    deferred: list[list[int]] = [[] for _ in queues]
    while len(chosen) < n and (any(queues) or any(deferred)):
        progressed = False
        for c, q in enumerate(queues):
            if len(chosen) >= n:
                break
            while q:
                i = q.pop(0)
                if (
                    f is not None
                    and chosen
                    and np.min(np.linalg.norm(f[chosen] - f[i], axis=1)) < min_distance
                ):
                    deferred[c].append(i)  # a near-copy: after the others of its class
                    continue
                chosen.append(i)
                progressed = True
                break
        if not progressed:  # only near-copies left: take them in their order
            for c in range(len(queues)):
                queues[c], deferred[c] = deferred[c], []
            f = None
    uncertain = chosen[:n]
    if explore <= 0:
        return np.asarray(uncertain, np.int64)
    randomly = np.random.default_rng(seed).permutation(np.flatnonzero(free)).tolist()
    return np.asarray(interleave(uncertain, randomly, explore, n), np.int64)


def interleave(a: list[int], b: list[int], share_b: float, n: int) -> list[int]:
    """Up to ``n`` items, a share ``share_b`` of them from ``b`` spread evenly, the rest from
    ``a``, each in its order; an item already taken is skipped; when one list runs out the
    other goes on."""
    out: list[int] = []
    seen: set[int] = set()
    ia = ib = 0
    credit = 0.0
    while len(out) < n and (ia < len(a) or ib < len(b)):
        credit += share_b
        from_b = (credit >= 1.0 and ib < len(b)) or ia >= len(a)
        if from_b:
            credit = max(0.0, credit - 1.0)
            item, ib = b[ib], ib + 1
        else:
            item, ia = a[ia], ia + 1
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out
