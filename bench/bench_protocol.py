"""Throughput of the bridge stream over tcp loopback: our replay -> FeedClient against
karabo_bridge's own ServerInThread -> Client, same frames, same run.

Each server runs in its own process (as in production); the client side is timed from
its first to its last data message. Frames are float32 260x257 read from an HDF5 file
(``--file-frames`` frames, sent ``--frames`` in all by repeating). Columns:

- ``karabo``: karabo_bridge.ServerInThread(maxlen=10) fed from the file with the replay's
  read pattern (HDF5 blocks of ~16 MB sliced into messages) -> Client.next()
- ``ours``: ``streamer replay`` -> FeedClient.next() (receive + deserialize)
- ``ours+decode``: the same plus decode_message (float32 frames, ids, finite check)

    .venv/bin/python bench/bench_protocol.py --frames 4096 --k 1 32
"""

from __future__ import annotations

import argparse
import selectors
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import h5py
import karabo_bridge
import numpy as np

from hitstream.geometry import FRAME_SHAPE
from streamer.decode import SourceSpec, decode_message
from streamer.feed import FeedClient
from streamer.replay import BLOCK_BYTES

KARABO_SERVER = """
import sys, time, h5py, numpy as np, karabo_bridge
path, mode = sys.argv[1], sys.argv[2]
k, total, block = (int(a) for a in sys.argv[3:6])
src = "bench/det"
server = karabo_bridge.ServerInThread("tcp://127.0.0.1:0", sock=mode, maxlen=10)
server.start()
print("ready", server.endpoint, flush=True)
sent, tid = 0, 1
with h5py.File(path, "r") as f:
    ds = f["data"]
    n = ds.shape[0]
    while sent < total:
        for b0 in range(0, n, block):  # same reads as the replay: blocks, sliced per message
            frames = ds[b0 : b0 + block]
            for i in range(0, len(frames), k):
                msg = frames[i : i + k]
                meta = {src: {"source": src, "timestamp": time.time(), "timestamp.tid": tid}}
                server.feed({src: {"image.data": msg, "image.pulseId": np.arange(len(msg))}}, meta)
                sent += len(msg)
                tid += 1
sys.stdin.read()  # keep serving until the parent closes our stdin
"""


def wait_ready(proc: subprocess.Popen, timeout_s: float = 60.0) -> str:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout_s
        while sel.select(max(0.0, deadline - time.monotonic())):
            line = proc.stdout.readline()
            if not line:
                break
            if "ready" in line:
                return line.split()[-1]
    raise RuntimeError(f"server did not get ready: {proc.args}")


def consume(endpoint: str, mode: str, total: int, kind: str) -> float:
    """Seconds from the first to the last data message (``total`` frames)."""
    client_mode = {"REP": "REQ", "PUSH": "PULL"}[mode]
    got, t0 = 0, 0.0
    if kind == "karabo":
        with karabo_bridge.Client(endpoint, sock=client_mode, timeout=30) as client:
            while got < total:
                data, _ = client.next()
                got += len(data["bench/det"]["image.data"])
                t0 = t0 or time.perf_counter()
        return time.perf_counter() - t0
    spec = SourceSpec(frame_shape=FRAME_SHAPE)
    with FeedClient(endpoint, client_mode, timeout_s=30) as feed:
        while got < total:
            data, meta = feed.next()
            if kind == "ours+decode":
                got += len(decode_message(data, meta, spec, now=time.time()).batch)
            else:
                got += len(data["bench/det"]["image.data"])
            t0 = t0 or time.perf_counter()
    return time.perf_counter() - t0


def one_run(path: Path, kind: str, mode: str, k: int, total: int) -> float:
    """Frames/s of one server/client pair (the first message is not timed)."""
    if kind == "karabo":
        frame_bytes = int(np.prod(FRAME_SHAPE)) * 4
        block = max(1, BLOCK_BYTES // (k * frame_bytes)) * k
        cmd = [sys.executable, "-c", KARABO_SERVER, str(path), mode, str(k), str(total), str(block)]
    else:
        cmd = [sys.executable, "-m", "streamer", "replay", str(path), "--dataset", "data"]
        cmd += ["--endpoint", "tcp://127.0.0.1:0", "--mode", mode, "-k", str(k)]
        cmd += ["--source", "bench/det", "--repeat", str(-(-total // file_frames(path)))]
        cmd += ["--stop", str(min(total, file_frames(path))), "--linger", "0"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        endpoint = wait_ready(proc)
        elapsed = consume(endpoint, mode, total, kind)
    finally:
        proc.kill()
        proc.wait()
    return (total - k) / elapsed


def file_frames(path: Path) -> int:
    with h5py.File(path, "r") as f:
        return int(f["data"].shape[0])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=4096, help="frames per measurement")
    parser.add_argument("--file-frames", type=int, default=256, help="frames in the file")
    parser.add_argument("--k", type=int, nargs="+", default=[1, 32], help="frames/message")
    parser.add_argument("--modes", nargs="+", default=["REP", "PUSH"], choices=["REP", "PUSH"])
    parser.add_argument("--repeats", type=int, default=3, help="runs per cell (median shown)")
    args = parser.parse_args(argv)

    frame_mb = np.prod(FRAME_SHAPE) * 4 / 1e6
    kinds = ("karabo", "ours", "ours+decode")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.h5"
        rng = np.random.default_rng(0)
        with h5py.File(path, "w") as f:
            f["data"] = rng.random((args.file_frames, *FRAME_SHAPE), dtype=np.float32)
        print(
            f"{args.frames} float32 {FRAME_SHAPE[0]}x{FRAME_SHAPE[1]} frames per run, tcp "
            f"loopback, median of {args.repeats}"
        )
        print(
            f"{'mode':5} {'K':>3} " + " ".join(f"{k:>20}" for k in kinds) + f" {'ours/karabo':>12}"
        )
        for mode in args.modes:
            for k in args.k:
                runs: dict[str, list[float]] = {kind: [] for kind in kinds}
                for _ in range(args.repeats):  # interleaved, so load changes hit all alike
                    for kind in kinds:
                        runs[kind].append(one_run(path, kind, mode, k, args.frames))
                fps = {kind: float(np.median(v)) for kind, v in runs.items()}
                cells = " ".join(
                    f"{fps[kind]:8.0f} f/s {fps[kind] * frame_mb:5.0f} MB/s" for kind in kinds
                )
                print(f"{mode:5} {k:3d} {cells} {fps['ours'] / fps['karabo']:12.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
