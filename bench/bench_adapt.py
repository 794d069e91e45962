"""The seed's workflow with our tools: ~200 labelled frames of a NEW run plus a shipped bundle.

Simulates a run in a setting no bundle was trained on (``--setting``, from
:data:`trainer.model.quality.ADAPT_SETTINGS`; ``new``: dim, wide particle sizes, more
background, other detector distance and wavelength), takes the truth of
``--labelled`` random frames as the hand-picked labels, fine-tunes the bundle on them
(``trainer finetune``) and scores the bundle before and after on the REST of the run (frames
the fine-tuning never saw). Prints accuracy and single-hit precision/recall at the bundle's
threshold, the accuracy on the hits that stand out of their background's noise and the
physical ceiling that the faint ones leave (:func:`trainer.model.quality.score_bundle`);
``--json`` keeps the numbers.

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

from trainer.model.quality import ADAPT_SETTINGS, SNR_LIMIT, score_bundle


def _through_detector(x: np.ndarray, config: Path, model: Path) -> np.ndarray:
    """The frames as the streamer sees them from the configured detector."""
    from hitstream.bundle import load_bundle
    from hitstream.detectors import load_detector
    from hitstream.qgrid import Resampler
    from hitstream.resample_run import detector_config_from_toml

    r = Resampler(load_detector(detector_config_from_toml(config)), load_bundle(model).geometry)
    print(f"through the {r.detector.name}: {r.coverage}")
    return np.concatenate([r(r.render(x[a : a + 256])) for a in range(0, len(x), 256)])


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
        choices=tuple(ADAPT_SETTINGS),
        default="new",
        help="new: new_run_config(); new-sample: new_sample_config(); bright: bright_config(); "
        "mask: mask_config(); "
        "shifted: build-default's dimmer 'test' setting; plain: the simulator's defaults",
    )
    ap.add_argument(
        "--detector-config",
        type=Path,
        help="a streamer config file: the run is seen through its [detector] (rendered onto "
        "the detector's pixels and resampled back onto the bundle's grid, as the streamer and "
        "`trainer resample` do)",
    )
    ap.add_argument("--json", type=Path)
    ap.add_argument(
        "--modes", default="labels,+batchnorm",
        help="fine-tunings compared on the same run: labels (alone, the baseline), "
        "+batchnorm (trainer finetune's default), +pseudo, +unlabelled (both)",
    )  # fmt: skip
    args = ap.parse_args(argv)

    from hitstream.labels import LabelTable, write_labels
    from hitstream.simulate import SIM_CLASSES, simulate_parallel
    from trainer.model.finetune import finetune_bundle
    from trainer.model.unlabelled import UnlabelledConfig

    cfg = ADAPT_SETTINGS[args.setting]()
    truth: dict[str, np.ndarray] = {}
    x, y = simulate_parallel(args.frames, args.seed, cfg, desc="new run", truth=truth)
    if args.detector_config is not None:
        x = _through_detector(x, args.detector_config, args.model)
    rng = np.random.default_rng(args.seed)
    picked = np.sort(rng.choice(args.frames, args.labelled, replace=False))
    rest = np.setdiff1d(np.arange(args.frames), picked)
    rest_truth = {k: v[rest] for k, v in truth.items()}
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
        before = score_bundle(args.model, x[rest], y[rest], sim_truth=rest_truth)
        rows: dict[str, dict] = {"before": before}
        seconds: dict[str, float] = {}
        # the labels alone (the baseline, same run), then with the run's unlabelled frames
        modes = {
            "labels": UnlabelledConfig(frames=0),
            "+batchnorm": UnlabelledConfig(pseudo_labels=False),
            "+pseudo": UnlabelledConfig(adapt_batch_norm=False),
            "+unlabelled": UnlabelledConfig(pseudo_labels=True),
        }
        for name in args.modes.split(","):
            unl = modes[name]
            t0 = time.perf_counter()
            finetune_bundle(
                args.model,
                [(run, "data")],
                labels,
                Path(tmp) / name,
                epochs=args.epochs,
                learning_rate=args.learning_rate,
                holdout_fraction=0.2,
                unlabelled=unl,
            )
            seconds[name] = time.perf_counter() - t0
            rows[name] = score_bundle(Path(tmp) / name, x[rest], y[rest], sim_truth=rest_truth)
    print(
        f"\n{args.model}: {args.labelled} labelled frames of a new run ({args.setting} setting), "
        f"scored on the other {len(rest)}; fine-tuning "
        + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items())
    )
    print(
        f"physical ceiling of the 4-class accuracy: {before['accuracy_ceiling']:.4f} "
        f"({before['faint_hits']} hits with photons / sqrt(background) < {SNR_LIMIT:g})"
    )
    print(f"{'':<12} {'accuracy':>9} {'clear hits':>10} {'single P':>9} {'single R':>9} "
          f"{'P@R0.95':>8}")  # fmt: skip
    for name, m in rows.items():
        print(
            f"{name:<12} {m['accuracy']:>9.4f} {m['clear_hit_accuracy']:>10.4f} "
            f"{m['single_precision']:>9.4f} {m['single_recall']:>9.4f} "
            f"{m['single_precision_at_recall_95']:>8.4f}   by photons: "
            + ", ".join(f"{k} {v:.3f}" for k, v in m["accuracy_by_photons"].items())
        )
    after = rows[args.modes.split(",")[-1]]
    if args.json:
        result = {**rows, "after": after, "seconds": seconds, **vars(args)}
        args.json.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
