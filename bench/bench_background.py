"""Quality with a real beamline's background: the background ladder, beside the field's baseline.

Runs no build trained on (:func:`trainer.model.quality.background_ladder`): mean background
0, 0.005, 0.02, 0.05 and 0.1 photon per valid pixel, each level over several beamlines
(low-q excess with random exponent and knee, anisotropy, streaks on a third of them, panel
gains, common-mode offsets, saturation, the run's own hot pixels, shot-to-shot level), and
dim hits (100–600 photons) on strong background. Every run's background is estimated from
its own frames with the streamer's estimator. For each bundle and for the lit-pixel hit
finder above the run background (hits counted as single): 4-class accuracy, single-hit
precision at the bundle's threshold, the precision-recall curve read at recall 0.95, and
the accuracy of the hits that stand out of their background's Poisson noise
(photons / sqrt(background) ≥ 5) and of those that do not (the physical limit), and the
accuracy ceiling: 1 − the share of faint hits, which no classifier tells from empty frames.

    .venv/bin/python bench/bench_background.py models/default models/fast \
        [previous=OLD_BUNDLE ...] [--frames 1000]

Writes ``background_bench.json`` and ``background_bench.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "bundles", nargs="+", help="bundle directories, or LABEL=DIR to name one in the table"
    )
    ap.add_argument("--frames", type=int, default=1000, help="frames per row [1000]")
    ap.add_argument("--only", nargs="*", help="rows to run (names as printed)")
    ap.add_argument("--out", type=Path, default=Path("bench/out/background"))
    args = ap.parse_args(argv)

    from hitstream.simulate import SIM_CLASSES, simulate_run
    from trainer.model.build_default import run_estimates
    from trainer.model.quality import background_ladder, score_baseline, score_bundle

    rows: list[dict] = []
    for name, (seed, cfg) in background_ladder().items():
        if args.only and name not in args.only:
            continue
        run = simulate_run(args.frames, seed, cfg, progress=True)
        bgs = run_estimates(run.frames, cfg)
        truth = {k: run.params[k] for k in ("photons", "background")}
        base = score_baseline(run.frames, run.labels, bgs, SIM_CLASSES, cfg.geometry.valid_pixels())
        row = {"run": name, "seed": seed, "frames": len(run), "baseline": base, "bundles": {}}
        for label, path in map(_labelled, args.bundles):
            row["bundles"][label] = score_bundle(path, run.frames, run.labels, bgs, truth)
        rows.append(row)
        _print_row(row)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "background_bench.json").write_text(json.dumps(rows, indent=2) + "\n")
    _plot(rows, args.out / "background_bench.png")
    print(f"wrote {args.out / 'background_bench.json'} and background_bench.png")
    return 0


def _labelled(arg: str) -> tuple[str, Path]:
    """``LABEL=DIR`` or ``DIR`` (labelled by itself)."""
    label, sep, path = arg.partition("=")
    return (label, Path(path)) if sep else (arg, Path(arg))


def _print_row(row: dict) -> None:
    b = row["baseline"]
    print(f"\n{row['run']} ({row['frames']} frames)")
    print(f"  {'who':<22} {'accuracy':>9} {'single P':>9} {'single R':>9} {'P@R0.95':>8} "
          f"{'clear hits':>11} {'faint hits':>11} {'ceiling':>8}")  # fmt: skip
    print(f"  {'lit-pixel baseline':<22} {b['accuracy']:>9.4f} {b['single_precision']:>9.4f} "
          f"{b['single_recall']:>9.4f} {b['single_precision_at_recall_95']:>8.4f}")  # fmt: skip
    for name, m in row["bundles"].items():
        clear = m.get("clear_hit_accuracy")
        faint = m.get("faint_hit_accuracy")
        print(
            f"  {name:<22} {m['accuracy']:>9.4f} {m['single_precision']:>9.4f} "
            f"{m['single_recall']:>9.4f} {m['single_precision_at_recall_95']:>8.4f} "
            f"{'-' if clear is None else f'{clear:.4f}':>6} ({m['clear_hits']:>3}) "
            f"{'-' if faint is None else f'{faint:.4f}':>6} ({m['faint_hits']:>3}) "
            f"{m.get('accuracy_ceiling', float('nan')):>8.4f}"
        )


def _plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ladder = [r for r in rows if r["run"].startswith("bg ")]
    if not ladder:
        return
    levels = [float(r["run"].split()[1]) for r in ladder]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for key, ax, title in (
        ("accuracy", axes[0], "4-class accuracy"),
        ("single_precision_at_recall_95", axes[1], "single precision at recall 0.95"),
    ):
        ax.plot(levels, [r["baseline"][key] for r in ladder], "k--o", label="lit-pixel baseline")
        for name in ladder[0]["bundles"]:
            ax.plot(levels, [r["bundles"][name][key] for r in ladder], "-o", label=name)
        ax.axhline(0.97 if key == "accuracy" else 0.95, color="grey", lw=0.8, ls=":")
        if key == "accuracy":  # the same for every bundle: the faint hits are the run's
            first = next(iter(ladder[0]["bundles"]))
            ceiling = [r["bundles"][first].get("accuracy_ceiling", 1.0) for r in ladder]
            ax.plot(levels, ceiling, color="grey", lw=1.5, label="ceiling (faint hits)")
        ax.set_xscale("symlog", linthresh=0.005)
        ax.set_xlim(-0.0005, 0.12)
        ax.set_xticks(levels, [f"{v:g}" for v in levels])
        ax.set_xlabel("mean background (photons per pixel)")
        ax.set_title(title)
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
