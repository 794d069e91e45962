"""Crash benchmark: ``streamer serve`` SIGKILLed at random moments; what each kill loses.

A ``streamer replay`` (REP, paced at ``--rate`` frames/s, ``-k`` frames per train, a
simulated run sent again and again so train ids keep counting) feeds a ``streamer serve``
(REQ, lossless, the same run and worker every time, ``engine.max_batch = --batch``,
``output.flush_every_s = --flush-every``, files rotated every ``--max-seconds``). The
serve is SIGKILLed ``--kills`` times, each ``uniform(--min-s, --max-s)`` seconds
(seeded) after it said ready, and started again at once; the last one is stopped with
SIGTERM (a clean stop loses nothing). The orphan ``.part`` a kill leaves is recovered
by the restarted serve itself at start (``--recover serve``, the default, as in
production), or by ``streamer index`` between the kill and the restart (``--recover index``).

Frame ``j`` of the feed is train ``1 + j // k``, pulse ``j % k``, so every frame written
has a position ``j``. Each serve writes a contiguous range of positions (its files are
those with the sequence numbers it got); the frames a kill lost are the positions
between the last one its serve wrote and the first one the next serve wrote.

The declared bound on a SIGKILL's loss, in frames:

    received in the last (flush_every_s + 0.3 s) before the kill, measured
        (the larger of the frames received and classified in that window, from /status
        polled every --sample-s; 0.3 s covers a batch interval and a flush)
    + (2 * pipeline.queue_size + pipeline.inference_threads + 1) * max_batch
        (the inference queue, the batches in inference, the write queue, the batch
        in the writer's hands)
    + max_batch          (the batcher's partial batch)
    + 3 * k              (the message being decoded, the REQ prefetched reply, a message
                          received between the last /status sample and the kill)

At the end: every kill within its bound, no (train_id, pulse_id) written twice, every
frame of a serve's range there, every finished file readable and consistent, no
``.part`` left, and the run index (built by the last serve) whole: ``check_index`` empty
and its rows equal to ``read_run``'s. Prints a table per kill and writes a JSON result.

    .venv/bin/python bench/bench_crash.py [--kills 20] [--seed 0] [--json F]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
from soak import stop  # bench/ scripts run with bench/ on the path

from hitstream.simulate.replay_runs import write_tiled_run
from streamer.config import PipelineConfig
from streamer.cxi_layout import DATA_PATH, FRAMES_GROUP, KEPT_GROUP, next_sequence
from streamer.demo import free_port
from streamer.readback import list_run_files, read_run
from streamer.recovery import find_orphans
from streamer.run_index import check_index, index_name

ROOT = Path(__file__).resolve().parents[1]
PY = [sys.executable, "-m", "streamer"]
RUN, WORKER = "crash", "w0"
READY_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 180.0
WINDOW_SLACK_S = 0.3
RECOVERED = re.compile(r"recovered (\d+) file\(s\), (\d+) frames \((\d+) kept\)")
FIRST_FILE = re.compile(r"files from \S+_(\d{4,})\.cxi on")
SERVE_RECOVERED = re.compile(r"recovered (\d+) orphan file\(s\) of a killed writer, (\d+) frames")


@dataclass
class Life:
    """One serve process: when it was ready and killed, what /status said, its bound."""

    index: int
    first_seq: int
    alive_s: float = 0.0
    start_to_ready_s: float = 0.0
    killed: bool = False
    window_frames: int = 0  # received (or classified) in the window before the kill
    bound: int = 0
    recovered_frames: int | None = None  # by the recovery after its kill
    recovery_s: float = 0.0
    samples: list[tuple[float, float, float]] = field(default_factory=list)


# ---------------------------------------------------------------------- processes


def start_serve(args: argparse.Namespace, endpoint: str, files: Path, log: Path) -> tuple:
    cmd = [
        *PY, "serve", "--model", str(args.model), "--endpoint", endpoint,
        "--feed-mode", "REQ", "--mode", "lossless", "--out", str(files), "--run", RUN,
        "--worker", WORKER, "--metrics-host", "127.0.0.1", "--metrics-port", "0",
        "--batch", str(args.batch), "--summary-json", str(files.parent / "summary.json"),
        "--set", f"output.flush_every_s={args.flush_every}",
        "--set", f"output.max_seconds={args.max_seconds}",
        "--set", "output.min_free_bytes=0",
        "--set", f"pipeline.queue_size={args.queue_size}",
    ]  # fmt: skip
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    line = wait_line(proc, "streamer ready", READY_TIMEOUT_S, log)
    m = re.search(r"metrics (http://\S+)/metrics", line)
    if m is None:
        proc.kill()
        raise RuntimeError(f"no metrics URL in {line!r}")
    return proc, m.group(1)


def wait_line(proc: subprocess.Popen[str], needle: str, timeout_s: float, log: Path) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while needle not in (line := proc.stdout.readline()):
        if (not line and proc.poll() is not None) or time.monotonic() > deadline:
            proc.kill()
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(f"no {needle!r} from the process; its log ends:\n{tail}")
    return line


def status(url: str) -> tuple[float, float]:
    with urllib.request.urlopen(f"{url}/status", timeout=5) as r:
        s = json.loads(r.read())
    return float(s["frames_received"]), float(s["frames_classified"])


def window_frames(samples: list[tuple[float, float, float]], t_end: float, width: float) -> int:
    """Frames received (or classified, the larger) from the last sample at or before
    ``t_end - width`` (the first sample when none is) to the last sample."""
    if not samples:
        return 0
    start = samples[0]
    for s in samples:
        if s[0] <= t_end - width:
            start = s
    last = samples[-1]
    return int(max(last[1] - start[1], last[2] - start[2]))


def live(proc: subprocess.Popen[str], url: str, life: Life, seconds: float, dt: float) -> None:
    """Poll /status every ``dt`` for ``seconds`` (the samples go to ``life``)."""
    t0 = time.monotonic()
    while True:
        now = time.monotonic()
        if proc.poll() is not None:
            raise RuntimeError(f"serve {life.index} ended by itself (exit {proc.returncode})")
        with contextlib.suppress(OSError):  # a slow answer: the next sample counts
            life.samples.append((now - t0, *status(url)))
        if now - t0 >= seconds:
            return
        time.sleep(min(dt, max(0.0, seconds - (time.monotonic() - t0))))


def recover_with_index(files: Path, life: Life) -> None:
    t = time.monotonic()
    out = subprocess.run([*PY, "index", str(files), RUN], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)  # fmt: skip
    life.recovery_s = time.monotonic() - t
    if out.returncode != 0:
        raise RuntimeError(f"streamer index failed ({out.returncode}): {out.stderr[-2000:]}")
    m = RECOVERED.search(out.stdout)
    life.recovered_frames = int(m.group(2)) if m else None


# ---------------------------------------------------------------------- checks


def check_file(path: Path) -> tuple[int, str]:
    """(frame rows, problem or "") of a finished file."""
    try:
        with h5py.File(path, "r") as f:
            frames = {f[FRAMES_GROUP][c].shape[0] for c in f[FRAMES_GROUP]}
            kept = {f[KEPT_GROUP][c].shape[0] for c in f[KEPT_GROUP]} | {f[DATA_PATH].shape[0]}
            if len(frames) != 1 or len(kept) != 1:
                return 0, f"columns of different lengths: frames {frames}, kept {kept}"
            if not f["entry_1/end_time"][()]:
                return 0, "no end_time"
            f[DATA_PATH][-1:]  # the last kept frame decompresses
            return frames.pop(), ""
    except (OSError, KeyError, RuntimeError) as exc:
        return 0, f"unreadable: {exc}"


def analyse(lives: list[Life], files: Path, k: int) -> dict[str, Any]:
    """Per kill the frames lost; duplicates, gaps, files, index."""
    finished = list_run_files(files, RUN)
    problems = {p.name: why for p in finished if (why := check_file(p)[1])}
    tables = read_run(files, RUN)
    pos = (tables.train_id.astype(np.int64) - 1) * k + tables.pulse_id.astype(np.int64)
    duplicates = len(pos) - len(np.unique(pos))
    file_seqs = np.array([int(f.name.rsplit("_", 1)[1].split(".")[0]) for f in tables.files])
    seqs = file_seqs[tables.frames.file]
    first_seqs = np.array([life.first_seq for life in lives])
    owner = np.searchsorted(first_seqs, seqs, side="right") - 1
    written: list[np.ndarray] = [np.sort(pos[owner == i]) for i in range(len(lives))]
    gaps_inside = {
        i: int(w[-1] - w[0] + 1 - len(np.unique(w))) for i, w in enumerate(written) if len(w)
    }
    rows = []
    i = 0
    while i < len(lives) - 1:
        if not len(written[i]):
            i += 1
            continue
        j = i + 1  # the next serve that wrote something
        while j < len(lives) and not len(written[j]):
            j += 1
        if j == len(lives):
            break
        group = lives[i:j]  # kills i..j-1 (serves i+1..j-1 wrote nothing)
        lost = int(written[j][0] - written[i][-1] - 1)
        bound = sum(life.bound for life in group)
        rows.append({
            "kills": [life.index + 1 for life in group],
            "alive_s": round(sum(life.alive_s for life in group), 2),
            "window_frames": sum(life.window_frames for life in group),
            "lost": lost, "bound": bound, "within": lost <= bound,
            "recovered_frames": sum(life.recovered_frames or 0 for life in group),
        })  # fmt: skip
        i = j
    index = files / index_name(RUN)
    missing = check_index(index) if index.exists() else ["<no index>"]
    index_rows = (-1, -1)
    if index.exists():
        with h5py.File(index, "r") as f:
            index_rows = (int(f[FRAMES_GROUP]["train_id"].shape[0]), int(f[DATA_PATH].shape[0]))
    return {
        "rows": rows,
        "frames_written": len(pos),
        "kept_written": len(tables.kept),
        "duplicates": duplicates,
        "gaps_inside_a_serve": sum(gaps_inside.values()),
        "finished_files": len(finished),
        "unreadable_files": problems,
        "parts_left": [p.name for p in find_orphans(files, RUN)],
        "index_missing": missing,
        "index_rows": index_rows,
        "run_rows": (len(tables.frames), len(tables.kept)),
    }


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    p.add_argument("--min-s", type=float, default=1.5, help="shortest life after ready")
    p.add_argument("--max-s", type=float, default=5.0, help="longest life after ready")
    p.add_argument("--rate", type=float, default=200.0, help="frames/s sent by the replay")
    p.add_argument("-k", "--frames-per-message", type=int, default=10)
    p.add_argument("--batch", type=int, default=16, help="engine.max_batch")
    p.add_argument("--queue-size", type=int, default=PipelineConfig.queue_size)
    p.add_argument("--flush-every", type=float, default=1.0, help="output.flush_every_s")
    p.add_argument("--max-seconds", type=float, default=3.0, help="output.max_seconds")
    p.add_argument("--sample-s", type=float, default=0.2, help="/status polling interval")
    p.add_argument("--distinct", type=int, default=200, help="distinct simulated frames")
    p.add_argument("--model", type=Path, default=ROOT / "models" / "fast")
    p.add_argument("--recover", choices=("index", "serve"), default="serve",
                   help="who recovers a kill's orphan: the restarted serve (as in production), "
                   "or `streamer index` before the restart")  # fmt: skip
    p.add_argument("--out", type=Path, help="work directory (default: a temporary one)")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "crash.json")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    k = args.frames_per_message
    if args.distinct % k:
        raise SystemExit("--distinct must be a multiple of -k (train ids then count on)")
    work = args.out or Path(tempfile.mkdtemp(prefix="hitstream-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    files = work / "files"
    files.mkdir(exist_ok=True)
    for p in files.iterdir():
        p.unlink()
    run_file = write_tiled_run(work / "run.h5", args.distinct, args.distinct)
    rng = np.random.default_rng(args.seed)
    delays = rng.uniform(args.min_s, args.max_s, args.kills + 1)
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    per_kill_fixed = (2 * args.queue_size + 1 + 1) * args.batch + args.batch + 3 * k
    width = args.flush_every + WINDOW_SLACK_S
    print(
        f"crash: {args.kills} SIGKILLs of streamer serve ({args.model.name}, batch {args.batch}, "
        f"flush every {args.flush_every:g} s) fed at {args.rate:g} frames/s, k={k}; "
        f"recovery by {args.recover}; work dir {work}",
        flush=True,
    )
    repeat = max(1, math.ceil(args.rate * (args.kills + 1) * (args.max_s + 30) / args.distinct))
    replay_cmd = [*PY, "replay", str(run_file), "--dataset", "data", "--endpoint", endpoint,
                  "--mode", "REP", "-k", str(k), "--rate", str(args.rate),
                  "--repeat", str(repeat)]  # fmt: skip
    lives: list[Life] = []
    replay = serve = None
    summary: dict[str, Any] = {}
    t_start = time.monotonic()
    try:
        with (work / "replay.log").open("w") as err:
            replay = subprocess.Popen(replay_cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                      cwd=ROOT)  # fmt: skip
        wait_line(replay, "replay ready", READY_TIMEOUT_S, work / "replay.log")
        for i in range(args.kills + 1):
            life = Life(i, next_sequence(files, RUN, WORKER))
            orphans_before = find_orphans(files, RUN, WORKER)
            log = work / f"serve-{i:02d}.log"
            t0 = time.monotonic()
            serve, url = start_serve(args, endpoint, files, log)
            life.start_to_ready_s = time.monotonic() - t0
            # the serve's own first sequence number: after its recovery, which may have
            # deleted an empty orphan and so freed that number
            first = FIRST_FILE.search(log.read_text(errors="replace"))
            if first is not None:
                life.first_seq = int(first.group(1))
            if args.recover == "serve":
                left = [p.name for p in orphans_before if p.exists()]
                if left:
                    raise RuntimeError(f"serve {i} started without recovering {left}")
                m = SERVE_RECOVERED.search(log.read_text(errors="replace"))
                if lives:
                    lives[-1].recovered_frames = int(m.group(2)) if m else 0
            live(serve, url, life, float(delays[i]), args.sample_s)
            life.alive_s = float(delays[i])
            lives.append(life)
            if i == args.kills:
                break
            os.kill(serve.pid, signal.SIGKILL)
            serve.wait(timeout=30)
            life.killed = True
            life.window_frames = window_frames(life.samples, life.samples[-1][0], width)
            life.bound = life.window_frames + per_kill_fixed
            if args.recover == "index":
                recover_with_index(files, life)
            print(
                f"  kill {i + 1:>2}/{args.kills}: after {life.alive_s:4.1f} s "
                f"({life.window_frames} frames in the last {width:g} s)",
                flush=True,
            )
        assert serve is not None
        serve.terminate()  # the last one stops cleanly
        serve.wait(timeout=STOP_TIMEOUT_S)
        summary_path = work / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    finally:
        stop(serve)
        stop(replay)
    elapsed = time.monotonic() - t_start
    result = analyse(lives, files, k)
    rows = result["rows"]
    lost = [r["lost"] for r in rows]
    checks = {
        "every kill's loss within its bound": all(r["within"] for r in rows),
        "no frame written twice": result["duplicates"] == 0,
        "no gap inside a serve's frames": result["gaps_inside_a_serve"] == 0,
        "every finished file readable and consistent": not result["unreadable_files"],
        "no .part left": not result["parts_left"],
        "last serve stopped cleanly": serve is not None and serve.returncode == 0
        and not summary.get("error"),
        "index whole (check_index empty)": result["index_missing"] == [],
        "index rows == read_run rows": tuple(result["index_rows"]) == tuple(result["run_rows"]),
    }  # fmt: skip

    print(f"\n{'kill':>6} {'alive s':>8} {'recv in window':>15} {'lost':>6} {'bound':>6} "
          f"{'recovered':>10}  ok")  # fmt: skip
    for r in rows:
        name = "+".join(str(x) for x in r["kills"])
        verdict = "ok" if r["within"] else "OVER"
        print(f"{name:>6} {r['alive_s']:>8.1f} {r['window_frames']:>15} {r['lost']:>6} "
              f"{r['bound']:>6} {r['recovered_frames']:>10}  {verdict}")  # fmt: skip
    if lost:
        print(f"lost per kill: mean {np.mean(lost):.1f}, max {max(lost)} frames; bound = "
              f"frames received in the last {width:g} s + {per_kill_fixed} (queues "
              f"{args.queue_size}+{args.queue_size} batches of {args.batch}, one in inference, "
              f"one being written, the batcher's partial, 3 messages of {k})")  # fmt: skip
    print(f"frames written {result['frames_written']} ({result['kept_written']} kept) in "
          f"{result['finished_files']} files; duplicates {result['duplicates']}; index rows "
          f"{tuple(result['index_rows'])} vs read_run {tuple(result['run_rows'])}; "
          f"{elapsed:.0f} s in all")  # fmt: skip
    ready = [life.start_to_ready_s for life in lives]
    rec = [life.recovery_s for life in lives if life.killed]
    print(f"serve start to ready: median {np.median(ready):.1f} s"
          + (f"; streamer index after a kill: median {np.median(rec):.2f} s"
             if args.recover == "index" and rec else ""))  # fmt: skip
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    passed = all(checks.values())
    print(f"crash bench {'PASSED' if passed else 'FAILED'}")

    out = {
        "settings": {k_: str(v) if isinstance(v, Path) else v for k_, v in vars(args).items()},
        "bound": {"window_s": width, "fixed_frames": per_kill_fixed},
        "kills": rows,
        "lives": [{k_: v for k_, v in asdict(life).items() if k_ != "samples"} for life in lives],
        "result": {k_: v for k_, v in result.items() if k_ != "rows"},
        "checks": checks,
        "passed": passed,
        "elapsed_s": round(elapsed, 1),
        "last_summary": {k_: summary.get(k_) for k_ in ("frames_received", "frames_classified",
                                                         "frames_kept", "index", "error")},
    }  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2, default=str) + "\n")
        print(f"results in {args.json}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
