"""End-to-end streamer benchmark: replay → streamer → CXI files, against the seed pipeline.

Runs ``streamer replay`` and ``streamer serve`` as two processes on tcp loopback (the
producer shares the machine, as on a 2-core test host), lossless, 260×257 float32 frames,
and reports frames/s and receive→label latency (p50/p99) at full load and at 120 Hz.
The baseline, measured in the same run on the same frames: the seed workflow's per-frame
cost — Keras ``predict`` of the seed CNN (256×256×3 input) plus brute-force matching
against 36 rotations of each of 200 hand-picked templates (rotated bank precomputed, one GEMM).

    python bench/bench_streamer.py [--frames 6000] [--models models/default] [--json F]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import numpy as np

from hitstream.simulate.replay_runs import write_tiled_run
from streamer.demo import free_port


def stream(
    run: Path,
    model: Path,
    out: Path,
    *,
    mode: str,
    k: int,
    rate: float = 0.0,
    transport: str = "tcp",
    extra: tuple[str, ...] = (),
) -> dict[str, object]:
    """One replay→serve run; returns the streamer's summary plus the replay's rate."""
    endpoint = (
        f"tcp://127.0.0.1:{free_port()}"
        if transport == "tcp"
        else f"ipc://{out.resolve()}/feed-{free_port()}.ipc"
    )
    summary = out / "summary.json"
    files = out / "files"
    for f in files.glob("*"):
        f.unlink()
    feed_mode = {"REP": "REQ", "PUSH": "PULL"}[mode]
    py = [sys.executable, "-m", "streamer"]
    serve = subprocess.Popen(
        [*py, "serve", "--model", str(model), "--endpoint", endpoint, "--feed-mode", feed_mode,
         "--out", str(files), "--run", "bench", "--metrics-port", "-1", "--summary-json",
         str(summary), "--set", "output.min_free_bytes=0", *extra],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert serve.stdout is not None
    while "streamer ready" not in (line := serve.stdout.readline()):
        if not line and serve.poll() is not None:
            raise RuntimeError("streamer failed to start")
    args = [*py, "replay", str(run), "--dataset", "data", "--endpoint", endpoint,
            "--mode", mode, "-k", str(k)]  # fmt: skip
    if rate:
        args += ["--rate", str(rate)]
    replay = subprocess.run(args, capture_output=True, text=True, check=True)
    serve.wait(timeout=600)
    result = json.loads(summary.read_text())
    result["replay"] = replay.stdout.strip().splitlines()[-1]
    return result


def seed_baseline(run: Path, n_cnn: int = 128, n_tm: int = 64, n_templates: int = 200) -> dict:
    """Frames/s of the seed workflow's two steps on this machine, measured now."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import tensorflow as tf
    from scipy import ndimage

    from trainer.model.cnn import build_seed

    with h5py.File(run) as f:
        frames = f["data"][: max(n_cnn, n_templates + n_tm)]
    # step 6 of the seed: Keras CNN on 3×256×256 resized images, batch 32
    model = build_seed((256, 256, 3), 2)
    x = tf.image.resize(frames[:n_cnn, :, :, None], (256, 256)).numpy()
    x = np.repeat(np.clip(x, 0, None) / max(1.0, float(x.max())), 3, axis=-1)
    model.predict(x[:32], batch_size=32, verbose=0)  # warm up
    t = time.perf_counter()
    model.predict(x, batch_size=32, verbose=0)
    cnn_fps = n_cnn / (time.perf_counter() - t)
    keras.backend.clear_session()

    # steps 2–4: scale to 255, 36 rotations × 5° per template, smallest L2 per frame
    def prep(a: np.ndarray) -> np.ndarray:
        a = np.clip(a, 0, None)
        return a * (255.0 / np.maximum(a.max(axis=(-2, -1), keepdims=True), 1e-12))

    templates = prep(frames[:n_templates])
    test = prep(frames[n_templates : n_templates + n_tm]).reshape(n_tm, -1)
    # the rotated bank (7,200 templates) is built once, outside the timing
    bank = np.concatenate(
        [
            ndimage.rotate(templates, a, axes=(1, 2), reshape=False, order=1).reshape(
                n_templates, -1
            )
            for a in range(0, 180, 5)
        ]
    )
    bank_sq = (bank**2).sum(1)
    t = time.perf_counter()
    d = (test**2).sum(1)[:, None] + bank_sq[None, :] - 2 * test @ bank.T
    best = d.min(axis=1)
    tm_fps = len(best) / (time.perf_counter() - t)
    del bank
    both = 1.0 / (1.0 / cnn_fps + 1.0 / tm_fps)
    return {"cnn_fps": cnn_fps, "templates_fps": tm_fps, "pipeline_fps": both,
            "n_templates": n_templates}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=6000)
    p.add_argument("--models", default="models/default", help="comma-separated bundles")
    p.add_argument("--modes", default="REP,PUSH")
    p.add_argument("--transports", default="tcp", help="tcp and/or ipc (same-host Unix socket)")
    p.add_argument("--serve-args", default="", help="extra `streamer serve` arguments")
    p.add_argument("--k", type=int, default=32, help="frames per message at full load")
    p.add_argument("--latency-seconds", type=float, default=10.0, help="120 Hz run length")
    p.add_argument("--no-baseline", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    out = args.out or Path(tempfile.mkdtemp(prefix="hitstream-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    run = write_tiled_run(out / "run.h5", args.frames)
    rows: list[dict[str, object]] = []
    baseline = None if args.no_baseline else seed_baseline(run)
    for model in args.models.split(","):
        for mode in args.modes.split(","):
            for transport in args.transports.split(","):
                s = stream(run, Path(model), out, mode=mode, k=args.k, transport=transport,
                           extra=tuple(args.serve_args.split()))  # fmt: skip
                rows.append({"model": model, "case": f"full load, {mode}, K={args.k}, {transport}",
                             "fps": s["frames_per_s"], "latency": s["latency"],
                             "frames": s["frames_classified"],
                             "dropped": s["dropped"]})  # fmt: skip
        n = int(120 * args.latency_seconds)
        if n == 0:
            continue
        with h5py.File(run) as f, h5py.File(out / "run120.h5", "w") as g:
            g["data"] = f["data"][:n]
        s = stream(out / "run120.h5", Path(model), out, mode="REP", k=1, rate=120,
                   extra=tuple(args.serve_args.split()))  # fmt: skip
        rows.append({"model": model, "case": "120 Hz, REP, K=1", "fps": s["frames_per_s"],
                     "latency": s["latency"], "frames": s["frames_classified"],
                     "dropped": s["dropped"]})  # fmt: skip
    print(f"\nstreamer end to end, {args.frames} frames of 260×257 float32, lossless, "
          f"producer on the same machine ({os.cpu_count()} cores)")  # fmt: skip
    head = f"{'model':<22} {'case':<29} {'frames/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'× seed':>8}"
    print(head)
    print("-" * len(head))
    for r in rows:
        lat = r["latency"] or {}
        ratio = f"{r['fps'] / baseline['pipeline_fps']:.0f}×" if baseline else "-"
        print(f"{r['model']:<22} {r['case']:<29} {r['fps']:>9.0f} "
              f"{lat.get('p50_ms', float('nan')):>8.1f} {lat.get('p99_ms', float('nan')):>8.1f} "
              f"{ratio:>8}")  # fmt: skip
    if baseline:
        print(f"{'seed baseline':<22} {'CNN + 36×200 templates':<29} "
              f"{baseline['pipeline_fps']:>9.1f} {'':>8} {'':>8} {'1×':>8}")  # fmt: skip
        print(f"  (seed CNN alone {baseline['cnn_fps']:.0f} frames/s, brute-force templates "
              f"alone {baseline['templates_fps']:.1f} frames/s)")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "baseline": baseline}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
