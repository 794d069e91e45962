"""Scale-out benchmark: aggregate frames/s of N streamer workers.

Topologies (all lossless, tcp loopback, separate processes):
- ``push``:  one ``streamer replay --mode PUSH`` feeding N ``streamer serve --feed-mode PULL``
  workers (ZeroMQ deals messages round-robin);
- ``rep``:   one REP replay answering N REQ workers;
- ``pairs``: N independent replay→serve pairs (one producer per worker: how far the engine
  scales when the feed is not one socket, e.g. one GPU shared by N workers).
Each worker writes its own files (``<run>_w<i>_<seq>.cxi``); one run index is built over
all of them at the end and checked to hold every frame once.

    python bench/bench_scaleout.py --workers 1,2,4 --topology push [--provider cpu]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import hdf5plugin  # noqa: F401  (the workers' files are LZ4; read_run does not register it)
import numpy as np

from hitstream.simulate.replay_runs import write_synthetic_run, write_tiled_run
from streamer.demo import free_port
from streamer.readback import read_run
from streamer.run_index import build_run_index

ROOT = Path(__file__).resolve().parents[1]
PY = [sys.executable, "-m", "streamer"]


def start_worker(i: int, endpoint: str, mode: str, out: Path, args: argparse.Namespace):
    proc = subprocess.Popen(
        [*PY, "serve", "--model", str(args.model), "--endpoint", endpoint, "--feed-mode", mode,
         "--out", str(out), "--run", "scale", "--worker", f"w{i}", "--metrics-port", "-1",
         "--provider", args.provider, "--summary-json", str(out / f"summary_w{i}.json"),
         "--set", "output.min_free_bytes=0", *shlex.split(args.serve_args)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    while "streamer ready" not in (line := proc.stdout.readline()):
        if not line and proc.poll() is not None:
            raise RuntimeError(f"worker {i} failed to start")
    return proc


def replay(run: Path, endpoint: str, mode: str, clients: int, k: int) -> subprocess.Popen:
    return subprocess.Popen(
        [*PY, "replay", str(run), "--dataset", "data", "--endpoint", endpoint, "--mode", mode,
         "-k", str(k), "--expected-clients", str(clients)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip


def measure(n: int, run: Path, args: argparse.Namespace) -> dict[str, object]:
    out = Path(tempfile.mkdtemp(prefix=f"scale{n}-", dir=args.out))
    feed_mode = {"push": "PULL", "rep": "REQ", "pairs": "PULL"}[args.topology]
    if args.topology == "pairs":
        ports = [free_port() for _ in range(n)]
        workers = [start_worker(i, f"tcp://127.0.0.1:{p}", feed_mode, out, args)
                   for i, p in enumerate(ports)]  # fmt: skip
        t0 = time.perf_counter()
        producers = [replay(run, f"tcp://127.0.0.1:{p}", "PUSH", 1, args.k) for p in ports]
    else:
        endpoint = f"tcp://127.0.0.1:{free_port()}"
        workers = [start_worker(i, endpoint, feed_mode, out, args) for i in range(n)]
        t0 = time.perf_counter()
        producers = [replay(run, endpoint, "PUSH" if args.topology == "push" else "REP", n,
                            args.k)]  # fmt: skip
    for w in workers:
        w.wait(timeout=1800)
    elapsed = time.perf_counter() - t0
    for p in producers:
        p.wait(timeout=120)
    summaries = [json.loads((out / f"summary_w{i}.json").read_text()) for i in range(n)]
    frames = sum(int(s["frames_classified"]) for s in summaries)
    # each worker times itself from its first frame to its last write: the aggregate rate
    # is all frames over the longest worker (process start-up is not counted)
    elapsed = max(float(s["elapsed_s"]) for s in summaries) or elapsed
    index = build_run_index(out, "scale")
    tables = read_run(out, "scale")
    ids = tables.train_id.astype(np.int64) * 1_000_000 + tables.pulse_id.astype(np.int64)
    sent = args.frames * (n if args.topology == "pairs" else 1)
    unique = len(np.unique(ids)) if args.topology != "pairs" else len(ids)
    return {"workers": n, "frames": frames, "sent": sent, "seconds": elapsed,
            "frames_per_s": frames / elapsed, "each_once": unique == frames == sent,
            "files": len(tables.files), "index": str(index),
            "per_worker": [int(s["frames_classified"]) for s in summaries]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workers", default="1,2,4")
    p.add_argument("--topology", choices=("push", "rep", "pairs"), default="push")
    p.add_argument("--frames", type=int, default=6000, help="frames per producer")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    p.add_argument("--provider", default="auto")
    p.add_argument("--serve-args", default="", help="extra `streamer serve` arguments")
    p.add_argument("--synthetic", action="store_true", help="numpy frames, no simulator")
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--json", type=Path)
    args = p.parse_args(argv)
    args.out = args.out or Path(tempfile.mkdtemp(prefix="hitstream-scale-"))
    args.out.mkdir(parents=True, exist_ok=True)
    run_path = args.out / "run.h5"
    if args.synthetic:  # numpy only: for hosts without scipy
        run = write_synthetic_run(run_path, args.frames)
    else:
        run = write_tiled_run(run_path, args.frames)
    rows = [measure(int(n), run, args) for n in args.workers.split(",")]
    base = rows[0]["frames_per_s"]
    print(f"\nscale-out, topology {args.topology}, provider {args.provider}, "
          f"{args.frames} frames per producer, K={args.k}")  # fmt: skip
    print(f"{'workers':>7} {'frames/s':>10} {'× 1 worker':>10} {'all once':>9} {'files':>6}  "
          "per worker")  # fmt: skip
    for r in rows:
        once = "yes" if r["each_once"] else "NO"
        print(f"{r['workers']:>7} {r['frames_per_s']:>10.0f} {r['frames_per_s'] / base:>10.2f} "
              f"{once:>9} {r['files']:>6}  {r['per_worker']}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0 if all(r["each_once"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
