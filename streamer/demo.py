"""``streamer demo``: simulate a run, replay it over ZeroMQ into the streamer, summarise.

Everything runs as in production: ``streamer serve`` and ``streamer replay`` are separate
processes talking Karabo bridge 2.2 over tcp loopback; the summary is read back from the
written CXI files, checked against what was sent, and drawn as a PNG.
"""

from __future__ import annotations

import argparse
import json
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import IO, Any

import numpy as np

from hitstream.bundle import load_bundle
from hitstream.errors import HitstreamError
from streamer.readback import read_kept_frames, read_run
from streamer.summary_plot import plot_run_summary

HELP = "simulate a run, replay it into the streamer over ZeroMQ, print a summary and a PNG"
log = logging.getLogger("streamer.demo")
DEMO_FRACTIONS = (0.12, 0.04, 0.78, 0.06)  # single, multiple, empty, other


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, default=Path("demo-out"), help="output directory")
    p.add_argument("--frames", type=int, default=2000, help="frames to simulate")
    p.add_argument("--seed", type=int, default=2026, help="simulation seed")
    p.add_argument("--model", type=Path, default=Path("models/default"), help="model bundle")
    p.add_argument("--frames-per-message", type=int, default=32, help="pulses per train")
    p.add_argument("--timeout", type=float, default=600.0, help="give up after this long")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_line(proc: subprocess.Popen[str], word: str, timeout: float) -> str:
    """Read the process's stdout until a line containing ``word`` (or fail clearly)."""
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                raise HitstreamError(f"{_name(proc)} exited ({proc.returncode}) before {word!r}")
            continue
        if word in line:
            return line.strip()
    raise HitstreamError(f"no {word!r} line from {_name(proc)} within {timeout:.0f} s")


def _name(proc: subprocess.Popen[str]) -> str:
    """The sub-command of a ``python -m streamer COMMAND ...`` process."""
    args = proc.args
    return str(args[3]) if isinstance(args, list | tuple) and len(args) > 3 else str(args)


def _spawn(args: list[str], log_file: IO[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "streamer", *args],
        stdout=subprocess.PIPE,
        stderr=log_file,
        text=True,
    )


def run(args: argparse.Namespace) -> int:
    from hitstream.simulate import SimConfig, simulate_run, write_run  # no TensorFlow

    out: Path = args.out
    files_dir = out / "files"
    out.mkdir(parents=True, exist_ok=True)
    for old in files_dir.glob("demo_*"):
        old.unlink()
    bundle = load_bundle(args.model)

    t = time.monotonic()
    # a run like a real one: most frames empty, ~20 % hits (DESIGN.md facility facts)
    config = SimConfig(fractions=DEMO_FRACTIONS)
    sim = simulate_run(args.frames, seed=args.seed, config=config, progress=True)
    run_path = write_run(
        out / "demo_run.h5",
        sim,
        dataset="/entry_1/data_1/data",
        compression="lz4",
        overwrite=True,
    )
    print(f"simulated {args.frames} frames in {time.monotonic() - t:.1f} s -> {run_path}")

    endpoint = f"tcp://127.0.0.1:{free_port()}"
    with open(out / "streamer.log", "w") as slog, open(out / "replay.log", "w") as rlog:
        serve = _spawn(
            [
                "serve",
                "--model",
                str(args.model),
                "--endpoint",
                endpoint,
                "--out",
                str(files_dir),
                "--run",
                "demo",
                "--metrics-port",
                "0",
                "--summary-json",
                str(out / "summary.json"),
                "--set",
                "output.min_free_bytes=0",
            ],
            slog,
        )
        try:
            print(wait_for_line(serve, "streamer ready", 120))
            replay = _spawn(
                [
                    "replay",
                    str(run_path),
                    "--dataset",
                    "/entry_1/data_1/data",
                    "--endpoint",
                    endpoint,
                    "--frames-per-message",
                    str(args.frames_per_message),
                ],
                rlog,
            )
            wait_for_line(replay, "ready", 60)
            summary_line = wait_for_line(serve, "summary ", args.timeout)
            serve.wait(timeout=60)
            replay.wait(timeout=60)
        finally:
            for proc in (serve, locals().get("replay")):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
    summary: dict[str, Any] = json.loads(summary_line.split(" ", 1)[1])
    return _report(out, files_dir, bundle, sim, summary)


def _report(out: Path, files_dir: Path, bundle: Any, sim: Any, summary: dict[str, Any]) -> int:
    tables = read_run(files_dir, "demo")
    n = len(sim.frames)
    ids = tables.train_id.astype(np.int64) * 100_000 + tables.pulse_id.astype(np.int64)
    complete = len(ids) == n and len(np.unique(ids)) == n
    # accuracy against the simulator's truth (frame j went to train t0 + j//K, pulse j%K)
    order = np.lexsort((tables.pulse_id, tables.train_id))
    pred = np.array(bundle.classes)[tables.label[order]]
    truth = np.array(sim.classes)[sim.labels]
    acc = float(np.mean(pred == truth)) if complete else float("nan")
    n_show = min(12, len(tables.kept.label))
    kept = read_kept_frames(files_dir, "demo", np.arange(n_show))
    kept_labels = tables.kept.label[:n_show]
    png = plot_run_summary(
        out / "demo_summary.png",
        classes=bundle.classes,
        labels=tables.label,
        train_id=tables.train_id,
        hit_classes=bundle.hit_classes,
        kept_frames=kept,
        kept_labels=kept_labels,
        title=f"hitstream demo — {n} frames, model {bundle.label}, {summary['provider']}",
    )
    rows = [
        ("frames sent", n),
        ("frames received", summary["frames_received"]),
        ("frames classified", summary["frames_classified"]),
        (
            "frames in the files (each once)",
            f"{len(ids)} ({'complete' if complete else 'MISSING'})",
        ),
        ("frames kept", summary["frames_kept"]),
        *((f"  {c}", summary["per_class"].get(c, 0)) for c in bundle.classes),
        ("hit rate", f"{100 * summary['hit_rate']:.1f} %"),
        ("accuracy vs simulator truth", f"{100 * acc:.1f} %"),
        ("throughput", f"{summary['frames_per_s']:.0f} frames/s ({summary['provider']})"),
        ("files written", len(summary["files"])),
        ("run index", summary["index"]),
        ("picture", png),
    ]
    width = max(len(k) for k, _ in rows)
    print("\n== hitstream demo summary ==")
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    for f in summary["files"]:
        print(f"  {f}")
    ok = complete and not summary.get("error")
    if not ok:
        print(f"demo FAILED: complete={complete} error={summary.get('error')}", file=sys.stderr)
    return 0 if ok else 1
