"""What ``streamer classify`` did, per run, and what the new model changed.

Per run: frames, frames classified and refused, counts per class, hit rate, kept frames, and,
when the run had labels before (an earlier classification in the output, or ``--compare``),
how many frames changed class and the matrix *before → after* over the frames both have
(matched by train and pulse id). Written as a table (printed), ``classify_report.json`` and
``classify_report.png`` (hit rate per run; the change matrices of the runs that changed most).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from streamer.classify import RunJob
from streamer.classify_chunk import id_key
from streamer.readback import read_run

MAX_MATRICES = 6  # change matrices drawn in the PNG


def change_matrix(
    before: Any, before_classes: tuple[str, ...], after: Any, classes: tuple[str, ...]
) -> tuple[np.ndarray, int]:
    """(before classes × after classes) counts over the frames both tables have, and how
    many frames both have. Classes are matched by name; one missing on a side is a row or
    column of zeros."""
    kb = id_key(before.train_id, before.pulse_id)
    ka = id_key(after.train_id, after.pulse_id)
    common, ib, ia = np.intersect1d(kb, ka, assume_unique=False, return_indices=True)
    m = np.zeros((len(before_classes), len(classes)), np.int64)
    np.add.at(m, (before.label[ib].astype(np.int64), after.label[ia].astype(np.int64)), 1)
    return m, len(common)


def run_report(job: RunJob, out: Path, hit_classes: tuple[str, ...]) -> dict[str, Any]:
    """The report row of one run (reads its labels back from the files)."""
    row: dict[str, Any] = {"run": job.name, "source": str(job.source), "error": job.error}
    res = job.results
    row["chunks"] = len(job.chunks)
    row["chunks_skipped"] = job.skipped
    row["frames"] = sum(int(r["frames"]) for r in res)
    row["classified"] = sum(int(r["classified"]) for r in res)
    row["rejected"] = sum(int(r["rejected"]) for r in res)
    row["kept"] = sum(int(r["kept"]) for r in res)
    row["seconds"] = round(sum(float(r["seconds"]) for r in res), 2)
    row["models"] = sorted({str(r["model"]) for r in res})
    if job.error is not None or not res:
        return row
    t = read_run(out, job.name)
    classes = tuple(t.classes)
    counts = np.bincount(t.frames.label.astype(np.int64), minlength=len(classes))
    row["per_class"] = {c: int(n) for c, n in zip(classes, counts, strict=True)}
    n = max(1, int(counts.sum()))
    hits = [k for k, c in enumerate(classes) if c in hit_classes]
    row["hit_rate"] = round(float(counts[hits].sum()) / n, 4) if hits else None
    row["index"] = str(job.index) if job.index else None
    if job.previous is not None and len(job.previous.label):
        m, common = change_matrix(job.previous, job.previous_classes, t.frames, classes)
        same = sum(
            int(m[i, classes.index(c)]) for i, c in enumerate(job.previous_classes) if c in classes
        )
        row["compared_frames"] = common
        row["changed"] = common - same
        row["changed_share"] = round((common - same) / common, 4) if common else 0.0
        row["change_matrix"] = {
            "before": list(job.previous_classes),
            "after": list(classes),
            "counts": m.tolist(),
        }
    return row


def format_table(rows: list[dict[str, Any]]) -> str:
    """One line per run, for the terminal."""
    classes: list[str] = []
    for r in rows:
        for c in r.get("per_class", {}):
            if c not in classes:
                classes.append(c)
    head = ["run", "frames", *classes, "hit rate", "kept", "changed", "status"]
    lines = [head]
    for r in rows:
        pc = r.get("per_class", {})
        changed = f"{r['changed']} ({100 * r['changed_share']:.1f}%)" if "changed" in r else "-"
        hr = r.get("hit_rate")
        lines.append([
            r["run"], str(r["frames"]), *[str(pc.get(c, "-")) for c in classes],
            "-" if hr is None else f"{100 * hr:.1f}%", str(r["kept"]), changed,
            "FAILED: " + r["error"] if r.get("error") else
            f"ok ({r['chunks_skipped']}/{r['chunks']} chunks done before)",
        ])  # fmt: skip
    widths = [max(len(str(x[i])) for x in lines) for i in range(len(head))]
    return "\n".join(
        "  ".join(str(v).rjust(w) for v, w in zip(x, widths, strict=True)) for x in lines
    )


def plot_report(rows: list[dict[str, Any]], path: Path) -> Path:
    """Hit rate per run and the change matrices of the runs that changed most."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    changed = sorted((r for r in rows if "change_matrix" in r), key=lambda r: -r["changed_share"])[
        :MAX_MATRICES
    ]
    ncol = 1 + len(changed)
    fig, axes = plt.subplots(1, ncol, figsize=(4.2 * ncol + 2, 4), squeeze=False)
    ax = axes[0, 0]
    ok = [r for r in rows if r.get("hit_rate") is not None]
    ax.bar(range(len(ok)), [100 * r["hit_rate"] for r in ok], color="tab:blue")
    ax.set_xticks(range(len(ok)), [r["run"] for r in ok], rotation=90, fontsize=7)
    ax.set_ylabel("hit rate (%)")
    ax.set_title(f"{len(ok)} run(s)")
    for k, r in enumerate(changed, start=1):
        ax = axes[0, k]
        cm = r["change_matrix"]
        m = np.asarray(cm["counts"], float)
        ax.imshow(np.log1p(m), cmap="viridis")
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, f"{int(v)}", ha="center", va="center", color="w", fontsize=7)
        ax.set_xticks(range(len(cm["after"])), cm["after"], rotation=45, fontsize=7)
        ax.set_yticks(range(len(cm["before"])), cm["before"], fontsize=7)
        ax.set_xlabel("after")
        ax.set_ylabel("before")
        ax.set_title(f"{r['run']}: {100 * r['changed_share']:.1f}% changed", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(
    jobs: list[RunJob], out: Path, hit_classes: tuple[str, ...]
) -> tuple[list[dict[str, Any]], Path, Path]:
    """Rows, ``OUT/classify_report.json`` and ``OUT/classify_report.png``."""
    rows = [run_report(j, out, hit_classes) for j in jobs]
    js = out / "classify_report.json"
    js.write_text(json.dumps(rows, indent=1, default=str) + "\n", encoding="utf-8")
    png = plot_report(rows, out / "classify_report.png")
    return rows, js, png
