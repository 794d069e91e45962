"""Cost of the live background estimate per message: empty frames told by their ring
profiles (the default) against the frame totals alone, alternating in one process.

    .venv/bin/python bench/bench_background_update.py [--frames-per-message 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hitstream.background import BackgroundConfig, RunBackground
from hitstream.geometry import DetectorGeometry


def per_message_ms(shape_select: bool, x: np.ndarray, calls: int) -> float:
    """Mean milliseconds of one warm ``update`` of the message ``x``."""
    g = DetectorGeometry()
    est = RunBackground(g.shape, BackgroundConfig(shape_select=shape_select), geometry=g)
    while not est.warm:  # warm-up looks at more frames per call: not what is measured
        est.update(x)
    for _ in range(20):
        est.update(x)
    t0 = time.perf_counter()
    for _ in range(calls):
        est.update(x)
    return (time.perf_counter() - t0) / calls * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames-per-message", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--calls", type=int, default=200)
    args = ap.parse_args(argv)
    g = DetectorGeometry()
    rng = np.random.default_rng(0)
    x = rng.poisson(0.05, (args.frames_per_message, *g.shape)).astype(np.float32)
    times: dict[str, list[float]] = {"ring shapes": [], "totals": []}
    for _ in range(args.rounds):
        times["ring shapes"].append(per_message_ms(True, x, args.calls))
        times["totals"].append(per_message_ms(False, x, args.calls))
    print(f"{args.frames_per_message} frames per message, warm estimate, {args.rounds} rounds")
    print(f"{'selection':<12} {'ms per message (each round)':<34} median")
    for name, t in times.items():
        rounds = " / ".join(f"{v:.2f}" for v in t)
        print(f"{name:<12} {rounds:<34} {np.median(t):.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
