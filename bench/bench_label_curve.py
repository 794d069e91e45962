"""Label-efficiency curve: accuracy, single precision and recall against the number of labels.

For each ``--settings`` (runs no bundle was trained on, :data:`trainer.model.quality.
ADAPT_SETTINGS`), simulates a run, sets aside a fixed 30 % of it as the test frames (never
labelled), and fine-tunes the bundle (``trainer finetune``'s defaults: the run's unlabelled
frames re-estimate batch norm) on the first 25, 50, 100, 200, 500 frames of the rest, in
two orders: **random**, and **proposed** (:func:`trainer.labelling.proposals.propose` on the
bundle's own probabilities: uncertain first, classes in turn, near-copies later). Scores
every model on the test frames. Prints a table, writes ``--json`` and a PNG.

    .venv/bin/python bench/bench_label_curve.py --settings new,new-sample [--counts 25,50,200]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import numpy as np

from trainer.model.quality import ADAPT_SETTINGS, score_bundle

ROOT = Path(__file__).resolve().parents[1]


def _source_probabilities(model: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The bundle's probabilities and photon counts on every frame (its run background)."""
    from hitstream.background import estimate_run_background
    from hitstream.bundle import load_bundle
    from trainer.data.backgrounds import RunBackgrounds
    from trainer.model.evaluate import run_graph

    b = load_bundle(model)
    bgs = None
    if b.background_input:
        m = estimate_run_background(x, geometry=b.geometry).map
        bgs = RunBackgrounds(m[None], np.zeros(len(x), np.int64))
    out = run_graph(b.model_path, x, b.input_name, progress=False, backgrounds=bgs)
    return out["probabilities"], out["photons"]


def curve(
    model: Path,
    setting: str,
    counts: list[int],
    frames: int,
    seed: int,
    epochs: int | None = None,
    orders: tuple[str, ...] = ("random", "proposed"),
) -> dict[str, Any]:
    from hitstream.labels import LabelTable, write_labels
    from hitstream.simulate import SIM_CLASSES, simulate_parallel
    from trainer.labelling.proposals import propose
    from trainer.model.finetune import finetune_bundle

    truth: dict[str, np.ndarray] = {}
    x, y = simulate_parallel(frames, seed, ADAPT_SETTINGS[setting](), desc=setting, truth=truth)
    rng = np.random.default_rng(seed)
    test = np.sort(rng.choice(frames, int(0.3 * frames), replace=False))
    pool = np.setdiff1d(np.arange(frames), test)
    p, photons = _source_probabilities(model, x[pool])
    feats = np.stack([np.log1p(np.maximum(photons, 0)), p.max(axis=1)], axis=1)
    ordered = {
        "random": rng.permutation(pool),
        "proposed": pool[propose(p, len(pool), features=feats)],
    }
    orders_used = {o: ordered[o] for o in orders}
    test_truth = {k: v[test] for k, v in truth.items()}
    base = score_bundle(model, x[test], y[test], sim_truth=test_truth)
    rows: list[dict[str, Any]] = [{"order": o, "labels": 0, **_m(base)} for o in orders_used]
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run.h5"
        with h5py.File(run, "w") as f:
            f["data"] = x
        for order, idx in orders_used.items():
            for k in counts:
                picked = np.sort(idx[:k])
                labels = Path(tmp) / f"{order}_{k}.csv"
                write_labels(labels, LabelTable(
                    run=np.array(["run"] * k), index=picked.astype(np.int64),
                    label=np.array([SIM_CLASSES[i] for i in y[picked]]),
                ))  # fmt: skip
                out = Path(tmp) / f"{order}_{k}"
                t0 = time.perf_counter()
                try:
                    finetune_bundle(model, [(run, "data")], labels, out, holdout_fraction=0.2,
                                    progress=False, seed=seed, epochs=epochs)  # fmt: skip
                    m = _m(score_bundle(out, x[test], y[test], sim_truth=test_truth))
                except Exception as exc:  # too few labels of a class to hold any out
                    m = {"error": f"{type(exc).__name__}: {exc}"}
                rows.append({"order": order, "labels": k,
                             "seconds": round(time.perf_counter() - t0, 1), **m})  # fmt: skip
                print(f"{setting:>12} {order:>9} {k:>4} labels: {m}", flush=True)
    return {
        "setting": setting,
        "test_frames": len(test),
        "accuracy_ceiling": round(base["accuracy_ceiling"], 4),
        "faint_hits": base["faint_hits"],
        "rows": rows,
    }


SCORES = (
    "accuracy",
    "clear_hit_accuracy",
    "single_precision",
    "single_recall",
    "single_precision_at_recall_95",
)


def _m(score: dict[str, Any]) -> dict[str, Any]:
    return {k: round(float(score[k]), 4) for k in SCORES if score.get(k) is not None}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(results))
    rows = -(-len(results) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
    for ax in axes.flat[len(results) :]:
        ax.axis("off")
    for ax, r in zip(axes.flat, results, strict=False):
        for order, style in (("random", "--"), ("proposed", "-")):
            pts = [(q["labels"], q) for q in r["rows"] if q["order"] == order and "accuracy" in q]
            if not pts:
                continue
            n = [max(k, 10) for k, _ in pts]  # 0 labels drawn at 10 on the log axis
            ax.plot(n, [q["accuracy"] for _, q in pts], "o" + style, color="tab:blue",
                    label=f"accuracy, {order}")  # fmt: skip
            ax.plot(n, [q["single_precision"] for _, q in pts], "s" + style, color="tab:orange",
                    label=f"single precision, {order}")  # fmt: skip
        ax.axhline(0.97, color="grey", lw=0.8, ls=":")
        if "accuracy_ceiling" in r:  # what the faint hits leave to any classifier
            ax.axhline(r["accuracy_ceiling"], color="tab:blue", lw=0.8, ls="-.",
                       label="physical ceiling of the accuracy")  # fmt: skip
        ax.set_xscale("log")
        ticks = sorted({max(q["labels"], 10) for q in r["rows"]})
        ax.set_xticks(ticks, [str(t) if t > 10 else "0" for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labelled frames")
        ax.set_title(f"{r['setting']} ({r['test_frames']} test frames)")
        ax.set_ylim(0.6, 1.005)
    axes[0, 0].legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    ap.add_argument("--settings", default="new,new-sample")
    ap.add_argument("--counts", default="25,50,100,200,500")
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument("--epochs", type=int, help="fine-tuning epochs [finetune's auto]")
    ap.add_argument("--orders", default="random,proposed")
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "label_curve.json")
    ap.add_argument("--png", type=Path, default=ROOT / "docs" / "label_curve.png")
    args = ap.parse_args(argv)
    counts = [int(c) for c in args.counts.split(",")]
    orders = tuple(args.orders.split(","))
    results = [
        curve(args.model, s, counts, args.frames, args.seed, args.epochs, orders)
        for s in args.settings.split(",")
    ]
    head = ("setting", "order", "labels", "accuracy", "clear", "single P", "single R", "P@R.95")
    widths = (12, 9, 6, 9, 6, 9, 9, 7)
    print("\n" + " ".join(f"{h:>{w}}" for h, w in zip(head, widths, strict=True)))
    for r in results:
        print(f"{r['setting']:>12}: physical ceiling of the accuracy {r['accuracy_ceiling']:.4f}")
        for q in r["rows"]:
            if "accuracy" in q:
                vals = [q.get(k, float("nan")) for k in SCORES]
                print(
                    f"{r['setting']:>12} {q['order']:>9} {q['labels']:>6} "
                    + " ".join(f"{v:>{w}.4f}" for v, w in zip(vals, widths[3:], strict=True))
                )
    args.json.write_text(
        json.dumps({"model": str(args.model), "epochs": args.epochs, "results": results}, indent=1)
    )
    plot(results, args.png)
    print(f"wrote {args.json} and {args.png}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
