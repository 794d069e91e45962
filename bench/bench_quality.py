"""Quality of shipped bundles on simulated runs that no build trained on.

The three test runs of ``trainer build-default`` (same seeds), two runs with detector read
noise, and the new-run, other-mask and bright settings of ``bench_adapt.py``
(:func:`trainer.model.quality.quality_runs`); 1,000 frames each. Prints accuracy and
single-hit precision/recall at each bundle's own threshold, and the precision-recall curve
read at recall 0.95 (``P@R0.95``). Bundles that take the run's background get each run's
estimate, made with the streamer's estimator from the same run simulated with a beamline's
class mix (mostly empty frames).

    .venv/bin/python bench/bench_quality.py models/default models/fast [--frames 1000]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.model.quality import quality_runs, score_bundle


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundles", nargs="+", type=Path)
    ap.add_argument("--frames", type=int, default=1000)
    args = ap.parse_args(argv)
    from hitstream.simulate import simulate_parallel
    from trainer.model.build_default import stream_estimates

    rows = []
    for name, (seed, cfg) in quality_runs().items():
        x, y = simulate_parallel(args.frames, seed, cfg, desc=name)
        bgs = stream_estimates(seed, len(x), cfg)  # the run's background, as the streamer sees it
        rows += [(name, b, score_bundle(b, x, y, bgs)) for b in args.bundles]
    print(f"\n{'run':<16} {'bundle':<18} {'accuracy':>9} {'single P':>9} {'single R':>9} "
          f"{'P@R0.95':>8}")  # fmt: skip
    for name, b, m in rows:
        print(f"{name:<16} {b!s:<18} {m['accuracy']:>9.4f} {m['single_precision']:>9.4f} "
              f"{m['single_recall']:>9.4f} {m['single_precision_at_recall_95']:>8.4f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
