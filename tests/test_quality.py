"""The background ladder's scoring (trainer.model.quality): the shipped fast bundle scored
on a short run of the strongest rung, with the simulator's truth."""

from __future__ import annotations

from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def test_faint_hits_set_the_accuracy_ceiling() -> None:
    """Every hit is either clear or faint; the ceiling is 1 - the faint share; a bundle's
    accuracy on the faint hits is counted apart, and its accuracy is a share."""
    from hitstream.simulate import SIM_CLASSES, simulate_run
    from trainer.model.build_default import run_estimates
    from trainer.model.quality import SNR_LIMIT, background_ladder, score_bundle

    seed, cfg = background_ladder()["dim hits, bg 0.05"]
    run = simulate_run(96, seed, cfg)
    truth = {k: run.params[k] for k in ("photons", "background")}
    m = score_bundle(
        REPO / "models" / "fast", run.frames, run.labels, run_estimates(run.frames, cfg), truth
    )
    hits = int(np.sum(run.labels != SIM_CLASSES.index("empty")))
    snr = truth["photons"] / np.sqrt(np.maximum(truth["background"], 1.0))
    assert m["clear_hits"] + m["faint_hits"] == hits
    assert m["faint_hits"] == int(
        np.sum((snr < SNR_LIMIT) & (run.labels != SIM_CLASSES.index("empty")))
    )
    assert m["faint_hits"] > 0  # dim hits on strong background: some are lost in its noise
    assert m["accuracy_ceiling"] == 1.0 - m["faint_hits"] / len(run.labels)
    assert 0.0 <= m["accuracy"] <= 1.0 and 0.0 <= m["faint_hit_accuracy"] <= 1.0
