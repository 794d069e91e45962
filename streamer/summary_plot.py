"""A picture of a finished run: kept frames, class counts and hit rate over time."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def plot_run_summary(
    out_png: Path,
    *,
    classes: tuple[str, ...],
    labels: np.ndarray,
    train_id: np.ndarray,
    hit_classes: tuple[str, ...],
    kept_frames: np.ndarray,
    kept_labels: np.ndarray,
    title: str,
    max_frames: int = 12,
) -> Path:
    """Montage of kept frames (log scale, central region), class counts, hit rate over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_show = min(max_frames, len(kept_frames))
    cols = 6
    rows = max(1, int(np.ceil(n_show / cols)))
    fig = plt.figure(figsize=(15, 3.2 * rows + 3.6), dpi=80)
    grid = fig.add_gridspec(rows + 1, cols, height_ratios=[*([1.0] * rows), 1.1])
    for i in range(rows * cols):
        ax = fig.add_subplot(grid[i // cols, i % cols])
        ax.set_axis_off()
        if i < n_show:
            frame = kept_frames[i]
            h, w = frame.shape
            r = min(h, w) // 3  # the low-q region, where single-particle signal lives
            crop = frame[h // 2 - r : h // 2 + r, w // 2 - r : w // 2 + r]
            img = np.log1p(np.clip(crop, 0, None))
            ax.imshow(img, cmap="magma", origin="lower", interpolation="nearest")
            name = classes[kept_labels[i]] if 0 <= kept_labels[i] < len(classes) else "?"
            ax.set_title(f"kept #{i}: {name}", fontsize=9)
    if n_show == 0:
        fig.text(0.5, 0.7, "no frames kept", ha="center", fontsize=14)

    counts = np.bincount(labels[labels >= 0], minlength=len(classes))[: len(classes)]
    ax = fig.add_subplot(grid[rows, : cols // 2])
    colors = ["tab:green" if c in hit_classes else "tab:gray" for c in classes]
    bars = ax.bar(classes, counts, color=colors)
    ax.bar_label(bars, labels=[str(int(c)) for c in counts], fontsize=9)
    ax.set_ylabel("frames")
    ax.set_title(f"class counts ({int(counts.sum())} frames; green = hit classes)", fontsize=10)

    ax = fig.add_subplot(grid[rows, cols // 2 :])
    if len(train_id):
        hit_idx = np.array([classes.index(c) for c in hit_classes], dtype=int)
        is_hit = np.isin(labels, hit_idx)
        order = np.argsort(train_id, kind="stable")
        tids, hits = train_id[order], is_hit[order]
        edges = np.linspace(tids.min(), tids.max() + 1, num=min(40, len(np.unique(tids))) + 1)
        which = np.clip(np.searchsorted(edges, tids, side="right") - 1, 0, len(edges) - 2)
        n_bin = np.bincount(which, minlength=len(edges) - 1)
        h_bin = np.bincount(which, weights=hits, minlength=len(edges) - 1)
        rate = np.divide(h_bin, n_bin, out=np.zeros_like(h_bin), where=n_bin > 0)
        ax.plot(0.5 * (edges[:-1] + edges[1:]), 100 * rate, marker="o", ms=3)
        ax.set_ylim(0, 100)
    ax.set_xlabel("train id")
    ax.set_ylabel("hit rate (%)")
    ax.set_title("hit rate over the run", fontsize=10)
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png)
    plt.close(fig)
    return out_png
