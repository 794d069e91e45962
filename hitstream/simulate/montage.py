"""A PNG montage of simulated frames: a few examples per class, log scale.

:func:`write_montage` draws frames of a :class:`~hitstream.simulate.SimulatedRun` (one row per
class, optionally a second row with the noise-free intensities); :func:`write_example_montage`
picks the first frames of each class of a run by their labels and simulates them again.
Numpy and matplotlib (Agg) only.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hitstream.simulate.config import OTHER_KINDS, SIM_CLASSES, SimConfig, SimulatedRun
from hitstream.simulate.scene import simulate_indices


def write_example_montage(
    path: str | Path,
    labels: np.ndarray,
    seed: int,
    config: SimConfig = SimConfig(),
    per_class: int = 6,
) -> Path:
    """Montage of the first ``per_class`` frames of each class of run ``seed`` (``labels``:
    its class per frame), each with its noise-free intensity."""
    picks = np.concatenate(
        [np.flatnonzero(labels == i)[:per_class] for i in range(len(SIM_CLASSES))]
    )
    sample = simulate_indices(picks, seed, config)
    expected = simulate_indices(picks, seed, config, noise=False)
    return write_montage(path, sample, per_class=per_class, expected=expected)


def write_montage(
    path: str | Path,
    run: SimulatedRun,
    per_class: int = 6,
    expected: SimulatedRun | None = None,
) -> Path:
    """PNG of up to ``per_class`` frames of each class (rows), log scale.

    With ``expected`` (the same frames from ``simulate_frames(..., noise=False)``) each class
    gets a second row with the noise-free intensities.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import LogNorm

    picks = [np.flatnonzero(run.labels == i)[:per_class] for i in range(len(run.classes))]
    panels = []  # (row label, source run, indices, noisy?)
    for i, idx in enumerate(picks):
        panels.append((run.classes[i], run, idx, True))
        if expected is not None:
            panels.append((f"{run.classes[i]}\n(noise-free)", expected, idx, False))
    fig, axes = plt.subplots(
        len(panels), per_class, figsize=(2.1 * per_class, 2.2 * len(panels)), squeeze=False
    )
    sub = run.params.get("subclass")
    for r, (name, src, idx, noisy) in enumerate(panels):
        for c in range(per_class):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=11)
            if c >= len(idx):
                ax.set_axis_off()
                continue
            frame = src.frames[idx[c]]
            top = max(float(frame.max()), 1.0)
            lo = 0.5 if noisy else top * 1e-4
            ax.imshow(
                np.maximum(frame, lo),
                norm=LogNorm(vmin=lo, vmax=top),
                cmap="magma",
                interpolation="nearest",
            )
            title = f"{frame.sum():.0f} photons"
            if sub is not None and sub[idx[c]] >= 0:
                title += f", {OTHER_KINDS[sub[idx[c]]]}"
            ax.set_title(title, fontsize=8)
    fig.suptitle(
        "simulated frames (log scale); noise-free rows: expected photons/pixel", fontsize=11
    )
    fig.tight_layout(rect=(0, 0, 1, 0.98))
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=80)
    plt.close(fig)
    return p
