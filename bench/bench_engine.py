"""Engine-only throughput: frames/s of a bundle's ONNX graph per provider and batch size.

Measures, in one run and on the same frames: the CPU provider (baseline) and, where it
loads, the CUDA provider with plain numpy input and with batches staged in the engine's
pinned buffer pool. Medians of repeated timed runs after warm-up. Prints a table last.

    python bench/bench_engine.py --model models/default --providers cpu,cuda --batches 256,1024
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np

from hitstream.bundle import load_bundle
from hitstream.simulate.replay_runs import photon_like_frames
from streamer.engine import Engine, EngineConfig

ROOT = Path(__file__).resolve().parents[1]


def time_engine(
    engine: Engine, frames: np.ndarray, batch: int, *, pinned: bool, repeats: int
) -> float:
    """Median frames/s of ``engine.infer`` over ``repeats`` passes through ``frames``."""
    pool = engine.create_pool() if pinned else None
    n = len(frames) - len(frames) % batch

    def one_pass() -> float:
        t = time.perf_counter()
        for a in range(0, n, batch):
            if pool is not None:
                i, buf = pool.acquire()
                buf[:batch] = frames[a : a + batch]
                engine.infer(buf[:batch])
                pool.release(i)
            else:
                engine.infer(frames[a : a + batch])
        return n / (time.perf_counter() - t)

    one_pass()  # warm-up (CUDA kernels, allocator, thread pools)
    return statistics.median(one_pass() for _ in range(repeats))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    p.add_argument("--providers", default="cpu,cuda")
    p.add_argument("--batches", default="64,256")
    p.add_argument("--frames", type=int, default=2048, help="frames per pass (GPU)")
    p.add_argument("--cpu-frames", type=int, default=512, help="frames per pass (CPU)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    bundle = load_bundle(args.model)
    batches = [int(b) for b in args.batches.split(",")]
    all_frames = photon_like_frames(bundle.frame_shape, max(args.frames, args.cpu_frames))
    rows = []
    for provider in args.providers.split(","):
        for batch in batches:
            cfg = EngineConfig(provider=provider, max_batch=batch, pinned_buffers=2)
            engine = Engine(bundle, cfg)
            if provider != "cpu" and not engine.on_gpu:
                print(f"{provider}: not available here (runs on {engine.provider}); skipped")
                break
            n = args.frames if engine.on_gpu else args.cpu_frames
            frames = all_frames[: max(n, batch)]
            variants = [("numpy input", False)] + ([("staged pool", True)] if engine.on_gpu else [])
            for label, pinned in variants:
                fps = time_engine(engine, frames, batch, pinned=pinned, repeats=args.repeats)
                if pinned:
                    label += " (pinned)" if engine.create_pool().pinned else " (pageable)"
                rows.append({"provider": engine.provider, "batch": batch, "input": label,
                             "frames_per_s": fps})  # fmt: skip
    base = next((r["frames_per_s"] for r in rows if r["provider"] == "CPU"), None)
    print(f"\nengine throughput, model {bundle.label}, frames {bundle.frame_shape} float32")
    print(f"{'provider':<9} {'batch':>6} {'input':<12} {'frames/s':>10} {'× CPU':>7}")
    for r in rows:
        ratio = f"{r['frames_per_s'] / base:.1f}" if base else "-"
        print(f"{r['provider']:<9} {r['batch']:>6} {r['input']:<12} "
              f"{r['frames_per_s']:>10.0f} {ratio:>7}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
