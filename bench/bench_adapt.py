"""The seed's workflow with our tools: ~200 labelled frames of a NEW run plus a shipped bundle.

Simulates a run in a setting no bundle was trained on (:func:`new_run_config`: dim, wide
particle sizes, more background, other detector distance and wavelength), takes the truth of
``--labelled`` random frames as the hand-picked labels, fine-tunes the bundle on them
(``trainer finetune``) and scores the bundle before and after on the REST of the run (frames
the fine-tuning never saw). Prints accuracy and single-hit precision/recall at the bundle's
threshold; ``--json`` keeps the numbers.

    .venv/bin/python bench/bench_adapt.py --model models/default [--frames 2000] [--labelled 200]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import numpy as np

PHOTON_BINS = ((0, 300), (300, 1000), (1000, 3000), (3000, np.inf))


def new_run_config():
    """A setting outside every training mixture and test run of ``trainer build-default``."""
    from hitstream.geometry import DetectorGeometry
    from hitstream.simulate import SimConfig

    return SimConfig(
        geometry=DetectorGeometry(distance_m=0.62, wavelength_m=8.5e-10),
        radius_nm=(24.0, 48.0),
        photons=(150.0, 2000.0),
        background_photons=(20.0, 120.0),
        hot_pixels_per_frame=1.0,
        read_noise_photons=0.05,
        center_jitter_px=1.0,
    )


def new_sample_config():
    """A new sample on another detector: particles of 45–65 nm (training saw 25–45 nm), so
    speckles and fringes are finer than any training frame; photons as in training."""
    from hitstream.geometry import DetectorGeometry
    from hitstream.simulate import SimConfig

    return SimConfig(
        geometry=DetectorGeometry(distance_m=0.62, wavelength_m=8.5e-10),
        radius_nm=(45.0, 65.0),
        background_photons=(10.0, 60.0),
        center_jitter_px=1.0,
    )


def bright_config():
    """A much brighter sample: 20,000–100,000 signal photons per reference single (training:
    300–3,000), so speckles reach far higher q than in any training frame."""
    from hitstream.simulate import SimConfig

    return SimConfig(photons=(20000.0, 100000.0), max_photons=1e6)


def mask_config():
    """Another detector mask: beam-stop hole of 12 px radius and a gap of 10 rows (the
    shipped bundles' geometry: 6 px, 4 rows)."""
    from hitstream.geometry import DetectorGeometry
    from hitstream.simulate import SimConfig

    return SimConfig(geometry=DetectorGeometry(hole_radius_px=12.0, gap_rows=10))


def score(bundle: Path, frames: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy and single-hit keep precision/recall of a bundle's ONNX graph."""
    from hitstream.bundle import load_bundle
    from trainer.model.evaluate import run_graph

    b = load_bundle(bundle, verify=True)
    out = run_graph(b.model_path, frames, b.input_name, progress=False)
    p, photons = out["probabilities"], out["photons"]  # photons after the graph's cleaning
    single = b.classes.index("single")
    keep = (p.argmax(axis=1) == single) & (p[:, single] >= b.thresholds.get("single", 0.0))
    truth = labels == single
    right = p.argmax(axis=1) == labels
    by_photons = {
        f"{lo:g}-{hi:g}": float(right[(photons >= lo) & (photons < hi)].mean())
        for lo, hi in PHOTON_BINS
        if ((photons >= lo) & (photons < hi)).any()
    }
    return {
        "accuracy": float(np.mean(right)),
        "accuracy_by_photons": by_photons,
        "single_precision": float((keep & truth).sum() / max(1, keep.sum())),
        "single_recall": float((keep & truth).sum() / max(1, truth.sum())),
        "single_precision_at_recall_95": precision_at_recall(p[:, single], truth, 0.95),
    }


def precision_at_recall(score: np.ndarray, truth: np.ndarray, recall: float) -> float:
    """Best precision of keeping ``score >= t`` over the thresholds t that keep at least
    ``recall`` of the true frames (the precision-recall curve read at that recall)."""
    order = np.argsort(-score, kind="stable")
    hits = np.cumsum(truth[order])
    kept = np.arange(1, len(order) + 1)
    ok = hits >= recall * max(1, truth.sum())
    return float((hits / kept)[ok].max()) if ok.any() else 0.0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("models/default"))
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--labelled", type=int, default=200)
    ap.add_argument("--epochs", type=int, help="[trainer finetune's automatic choice]")
    ap.add_argument("--learning-rate", type=float, default=5e-4)
    ap.add_argument("--seed", type=int, default=4242)
    ap.add_argument(
        "--setting",
        choices=("new", "new-sample", "bright", "mask", "shifted"),
        default="new",
        help="new: new_run_config(); new-sample: new_sample_config(); bright: bright_config(); "
        "mask: mask_config(); "
        "shifted: build-default's dimmer 'test' setting",
    )
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from hitstream.labels import LabelTable, write_labels
    from hitstream.simulate import SIM_CLASSES
    from trainer.commands.build_default import simulate_parallel, test_config
    from trainer.commands.finetune import finetune_bundle

    settings = {
        "new": new_run_config,
        "new-sample": new_sample_config,
        "bright": bright_config,
        "mask": mask_config,
    }
    cfg = {**settings, "shifted": test_config}[args.setting]()
    x, y = simulate_parallel(args.frames, args.seed, cfg, desc="new run")
    rng = np.random.default_rng(args.seed)
    picked = np.sort(rng.choice(args.frames, args.labelled, replace=False))
    rest = np.setdiff1d(np.arange(args.frames), picked)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "new.h5"
        with h5py.File(run, "w") as f:
            f["data"] = x
        labels = Path(tmp) / "picked.csv"
        write_labels(
            labels,
            LabelTable(
                run=np.array(["new"] * len(picked)),
                index=picked.astype(np.int64),
                label=np.array([SIM_CLASSES[i] for i in y[picked]]),
            ),
        )
        before = score(args.model, x[rest], y[rest])
        t0 = time.perf_counter()
        finetune_bundle(
            args.model,
            [(run, "data")],
            labels,
            Path(tmp) / "adapted",
            epochs=args.epochs,
            learning_rate=args.learning_rate,
            holdout_fraction=0.2,
        )
        seconds = time.perf_counter() - t0
        manifest = json.loads((Path(tmp) / "adapted" / "manifest.json").read_text())
        args.epochs = manifest["training"]["config"]["epochs"]
        after = score(Path(tmp) / "adapted", x[rest], y[rest])
    print(
        f"\n{args.model}: {args.labelled} labelled frames of a new run ({args.setting} setting), "
        f"scored on the other "
        f"{len(rest)} (fine-tuning {seconds:.0f} s, {args.epochs} epochs)"
    )
    print(f"{'':<8} {'accuracy':>9} {'single P':>9} {'single R':>9}")
    for name, m in (("before", before), ("after", after)):
        print(
            f"{name:<8} {m['accuracy']:>9.4f} {m['single_precision']:>9.4f} "
            f"{m['single_recall']:>9.4f}   by photons: "
            + ", ".join(f"{k} {v:.3f}" for k, v in m["accuracy_by_photons"].items())
        )
    if args.json:
        result = {"before": before, "after": after, "seconds": seconds, **vars(args)}
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
