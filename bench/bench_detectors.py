"""Real detectors end to end: full trains → assemble → resample onto the model's q grid →
classify → CXI files, on this machine's CPU, with the peak memory of the streamer.

A PUSH producer in this process sends the same serialized train (Poisson photons in the
detector's online layout, ``modules,fs,ss,pulses``) ``--trains`` times to ``streamer
serve`` (a child process, lossless, ``PULL``), then the end-of-run marker. The baseline,
in the same run: the same number of frames already on the model's grid (no detector).

    python bench/bench_detectors.py [--model models/fast] [--trains 4] [--json F]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import zmq

from hitstream.geometry import DetectorGeometry
from streamer.decode import end_of_run_message, timestamp_metadata
from streamer.demo import free_port
from streamer.protocol import serialize
from streamer.types import EndOfRun

SOURCE = "DET/CAL/APPEND_CORRECTED"
# name, modules, ss, fs, pulses per train, distance (m) at 6 keV: pixels ≈ the grid's in q
DETECTORS = [
    ("AGIPD1M", 16, 512, 128, 352, 1.465),
    ("LPD1M", 16, 256, 256, 300, 3.66),
    ("JUNGFRAU", 8, 512, 1024, 16, 0.55),  # a 4M: 8 modules around the beam, 16 cells
    ("native", 0, 0, 0, 352, 0.0),  # the baseline: frames already on the model's grid
]


def _train(modules: int, ss: int, fs: int, pulses: int, seed: int = 0) -> np.ndarray:
    """Poisson photons; online layout (modules, fs, ss, pulses) as the calibration pipeline
    publishes it (one module at a time: the bench's own memory stays near one train)."""
    rng = np.random.default_rng(seed)
    if modules == 0:
        h, w = DetectorGeometry().shape
        return rng.poisson(0.05, (pulses, h, w)).astype(np.float32)
    train = np.empty((modules, fs, ss, pulses), np.float32)
    for m in range(modules):
        train[m] = rng.poisson(0.05, (fs, ss, pulses))
    return train


class _PeakRss(threading.Thread):
    """Polls a process's resident memory every 20 ms; ``peak`` in bytes."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process(pid)
        self.peak = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except Exception:  # the process ended
                return


def _jungfrau_4m(out: Path) -> Path:
    """A CrystFEL file of 8 JUNGFRAU modules in two columns around the beam."""
    import extra_geom

    offsets = [(x, y) for y in (-1036, -518, 4, 522) for x in (-1034, 4)]
    path = out / "jungfrau4m.geom"
    extra_geom.JUNGFRAUGeometry.from_module_positions(offsets=offsets).write_crystfel_geom(
        str(path), photon_energy=6000, adu_per_ev=1, clen=0.55
    )
    return path


def _produce(endpoint: str, train: np.ndarray, trains: int, pulses: int) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUSH)
    sock.setsockopt(zmq.SNDHWM, 1)
    sock.setsockopt(zmq.SNDTIMEO, 120_000)  # a streamer that died must not hang the bench
    sock.bind(endpoint)
    try:
        for tid in range(1, trains + 1):
            data = {SOURCE: {"image.data": train, "image.pulseId": np.arange(pulses)}}
            parts = serialize(data, {SOURCE: timestamp_metadata(SOURCE, tid, 0)})
            sock.send_multipart(parts, copy=False)  # zero copy: the producer is not measured
        end = end_of_run_message(EndOfRun("bench", trains * pulses, trains), time.time())
        sock.send_multipart(serialize(*end))
    except zmq.Again:
        print(f"producer: nobody took a train within 120 s on {endpoint}", file=sys.stderr)
    finally:
        sock.close(linger=5000)
        ctx.term()


def run_one(
    name: str, geometry: tuple, model: Path, trains: int, out: Path, map_on: str = "cpu"
) -> dict:
    modules, ss, fs, pulses, distance = geometry
    train = _train(modules, ss, fs, pulses)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    summary = out / f"{name}.json"
    extra: list[str] = []
    if modules:
        geometry_ref = [f'detector.geometry="{name}"']
        if name == "JUNGFRAU":  # EXtra-geom's example is one module: a 4M from a .geom file
            geometry_ref = [f'detector.geometry="{_jungfrau_4m(out)}"', 'detector.type="JUNGFRAU"']
        extra = ["--set", 'feed.axis_order="modules,fs,ss,pulses"']
        items = [*geometry_ref, f"detector.distance_m={distance}",
                 "detector.photon_energy_ev=6000.0", f'detector.map_on="{map_on}"']  # fmt: skip
        for item in items:
            extra += ["--set", item]
    cmd = [sys.executable, "-m", "streamer", "serve", "--model", str(model), "--endpoint",
           endpoint, "--feed-mode", "PULL", "--out", str(out / name), "--run", "bench",
           "--metrics-port", "-1", "--summary-json", str(summary),
           "--set", "output.min_free_bytes=0", "--set", "view.enabled=false", *extra]  # fmt: skip
    producer = threading.Thread(target=_produce, args=(endpoint, train, trains, pulses))
    t0 = time.monotonic()
    log = out / f"{name}.log"
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, text=True)
        rss = _PeakRss(proc.pid)
        rss.start()
        producer.start()
        proc.wait()
        rss.done.set()
    producer.join()
    if proc.returncode != 0 or not summary.exists():
        raise RuntimeError(f"streamer serve for {name} failed:\n{log.read_text()[-3000:]}")
    wall = time.monotonic() - t0
    s = json.loads(summary.read_text())
    return {
        "detector": name,
        "train_bytes": int(train.nbytes),
        "pulses": pulses,
        "frames": s["frames_classified"],
        "frames_per_s": s["frames_per_s"],
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(rss.peak / 2**20),
        "exit_code": proc.returncode,
        "covered_share": s.get("detector", {}).get("covered_share"),
        "map_on": s.get("detector", {}).get("map_on"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=Path("models/fast"))
    p.add_argument("--trains", type=int, default=4)
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--map-on", choices=("cpu", "engine"), default="cpu",
        help="detector.map_on: scipy on the host, or the graph on the engine's providers",
    )  # fmt: skip
    p.add_argument("--detectors", default="", help="comma-separated names [all]")
    args = p.parse_args(argv)
    rows = []
    wanted = {d for d in args.detectors.split(",") if d} | {"native"}
    with tempfile.TemporaryDirectory(prefix="hitstream-bench-") as tmp:
        for name, *geometry in DETECTORS:
            if len(wanted) > 1 and name not in wanted:
                continue
            row = run_one(name, tuple(geometry), args.model, args.trains, Path(tmp), args.map_on)
            rows.append(row)
            print(json.dumps(row), flush=True)
    base = next(r for r in rows if r["detector"] == "native")["frames_per_s"]
    print(f"\n{'detector':<10} {'train MB':>9} {'frames':>7} {'frames/s':>9} {'vs native':>9} "
          f"{'peak RSS MB':>11}")  # fmt: skip
    for r in rows:
        print(f"{r['detector']:<10} {r['train_bytes'] / 1e6:>9.0f} {r['frames']:>7} "
              f"{r['frames_per_s']:>9.0f} {r['frames_per_s'] / base:>9.2f} "
              f"{r['peak_rss_mb']:>11}")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
