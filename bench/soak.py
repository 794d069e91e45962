"""Soak test of the streamer: a long replay at a fixed rate; RSS, files and queues stay flat.

Streams a simulated run (a few hundred distinct frames, sent again and again with
``streamer replay --repeat``) at ``--rate`` frames/s for ``--minutes`` into a real
``streamer serve`` process (lossless, REQ or PULL, ``models/default``, metrics on a free
127.0.0.1 port, rolling output in a temporary directory). Output files rotate
(``output.max_frames`` / ``output.max_seconds``) and the soak deletes finished files
older than the newest ``--keep-files`` as it goes, after counting their frame rows
(``.part`` files are never touched): the soak measures the streamer, not the disk.

Every ``--sample-s`` seconds it samples the serve process (psutil: RSS, open fds, open
regular files, threads, CPU %) and its HTTP endpoint (``/status``: frames received and
classified; ``/metrics``: queue depths, drops, rejects, receive→label latency), and
writes into ``--out``:

- ``soak.csv``: one row per sample;
- ``soak.png``: RSS, open files/threads, queue depths, throughput and latency over time;
- ``soak.json``: the final table, the checks and the settings;
- ``serve.log``, ``replay.log``: the two processes' stderr.

The final table gives, per quantity, the value after warm-up (the first
``max(60 s, 10 %)`` of the run, at most half of it), at the end, the maximum, the
least-squares slope per hour after warm-up (samples taken once every frame was in, i.e.
during the streamer's shutdown, are left out), the change that slope makes in 30 min
(also from the last half of the judged window alone), the tolerance and a verdict:
"flat" when the 30-min change is within the tolerance (e.g. RSS must grow < 5 % per
30 min), "settling" when only the last half's is (a bounded buffer filling up), else
"growing" / "falling". Then the checks: frames sent by the replay == received ==
classified == rows written to the files, zero drops and zero rejects (lossless), mean
throughput within 5 % of the rate, no gated quantity growing (throughput: nor falling).
Exit status 0 when every check passes.

    .venv/bin/python bench/soak.py --minutes 30 --rate 200 --out soak-out

Short smoke run: ``--minutes 2 --sample-s 5``. ``--mode PUSH`` uses a PUSH replay and a
PULL streamer instead of REP/REQ.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import math
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import psutil
from prometheus_client.parser import text_string_to_metric_families
from tqdm import tqdm

from hitstream.simulate.replay_runs import write_tiled_run
from streamer.cxi_layout import FILE_SUFFIX, file_pattern
from streamer.demo import free_port

ROOT = Path(__file__).resolve().parents[1]
PY = [sys.executable, "-m", "streamer"]
RUN_NAME = "soak"
REPLAY_DONE = re.compile(r"replay done: (\d+) frames")
READY_TIMEOUT_S = 120.0
HTTP_TIMEOUT_S = 5.0

FIELDS = (
    "t_s", "rss_mb", "num_fds", "open_files", "threads", "cpu_pct",
    "queue_infer", "queue_write", "frames_received", "frames_classified",
    "frames_dropped", "frames_rejected", "throughput_fps", "latency_mean_ms",
    "latency_p99_ms", "out_dir_mb", "files_rotated", "files_deleted",
)  # fmt: skip


@dataclass(frozen=True)
class Quantity:
    """A sampled column judged for drift: tolerance on its 30-min change, and what fails."""

    name: str
    unit: str
    abs_tol: float  # tolerated change per 30 min, absolute ...
    rel_tol: float  # ... or relative to the value after warm-up, whichever is larger
    gate: str | None  # "growth": fails when growing; "both": fails unless flat; None: info


QUANTITIES = (
    Quantity("rss_mb", "MB", 0.0, 0.05, "growth"),
    Quantity("num_fds", "", 3.0, 0.0, "growth"),
    Quantity("open_files", "", 2.0, 0.0, "growth"),
    Quantity("threads", "", 2.0, 0.0, "growth"),
    Quantity("queue_infer", "", 1.0, 0.0, "growth"),
    Quantity("queue_write", "", 1.0, 0.0, "growth"),
    Quantity("throughput_fps", "1/s", 0.0, 0.05, "both"),
    Quantity("latency_mean_ms", "ms", 5.0, 0.20, "growth"),
    Quantity("latency_p99_ms", "ms", 10.0, 0.50, None),  # histogram buckets: coarse
    Quantity("cpu_pct", "%", 10.0, 0.20, None),  # shared host: informative only
    Quantity("out_dir_mb", "MB", 0.0, 1.0, None),  # bounded by the pruning
)


# ---------------------------------------------------------------------- processes


def start_serve(
    model: Path,
    endpoint: str,
    feed_mode: str,
    work: Path,
    args: argparse.Namespace,
    log: Path,
    extra_sets: Sequence[str] = (),
) -> tuple[subprocess.Popen[str], str]:
    """``streamer serve`` (lossless); returns the process and its base URL once ready.

    ``extra_sets``: more ``SECTION.KEY=VALUE`` overrides, after (so over) the ones here."""
    cmd = [
        *PY, "serve", "--model", str(model), "--endpoint", endpoint, "--feed-mode", feed_mode,
        "--mode", "lossless", "--out", str(work / "files"), "--run", RUN_NAME,
        "--metrics-host", "127.0.0.1", "--metrics-port", "0",
        "--summary-json", str(work / "summary.json"),
        "--set", f"output.max_frames={args.max_frames}",
        "--set", f"output.max_seconds={args.max_seconds}",
        "--set", "output.min_free_bytes=0",
    ]  # fmt: skip
    for item in extra_sets:
        cmd += ["--set", item]
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    line = _wait_line(proc, "streamer ready", "streamer serve")
    m = re.search(r"metrics (http://\S+)/metrics", line)
    if m is None:
        proc.terminate()
        raise RuntimeError(f"no metrics URL in the ready line {line!r}")
    return proc, m.group(1)


def start_replay(
    run: Path,
    endpoint: str,
    mode: str,
    repeat: int,
    args: argparse.Namespace,
    log: Path,
    *,
    command: Sequence[str] | None = None,
    extra: Sequence[str] = (),
) -> subprocess.Popen[str]:
    """``streamer replay`` (or ``command``, taking its arguments) plus ``extra`` arguments;
    returns once it printed "replay ready"."""
    cmd = [
        *(command or [*PY, "replay"]), str(run), "--dataset", "data", "--endpoint", endpoint,
        "--mode", mode, "-k", str(args.frames_per_message), "--rate", str(args.rate),
        "--repeat", str(repeat), *extra,
    ]  # fmt: skip
    with log.open("w") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True, cwd=ROOT)
    _wait_line(proc, "replay ready", "streamer replay")
    return proc


def _wait_line(proc: subprocess.Popen[str], needle: str, what: str) -> str:
    assert proc.stdout is not None
    t0 = time.monotonic()
    while needle not in (line := proc.stdout.readline()):
        if (not line and proc.poll() is not None) or time.monotonic() - t0 > READY_TIMEOUT_S:
            proc.kill()
            raise RuntimeError(f"{what} did not start (see its log)")
    return line


def stop(proc: subprocess.Popen[str] | None) -> None:
    """Terminate a process this script started (if still running)."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---------------------------------------------------------------------- sampling


def scrape(base_url: str) -> dict[str, Any]:
    """Counters and gauges of ``/metrics`` plus ``/status``, as plain numbers; also
    ``totals`` (every sample name, summed over its labels) and ``status`` (``/status``)."""
    with urllib.request.urlopen(f"{base_url}/metrics", timeout=HTTP_TIMEOUT_S) as r:
        text = r.read().decode()
    with urllib.request.urlopen(f"{base_url}/status", timeout=HTTP_TIMEOUT_S) as r:
        status = json.loads(r.read())
    out: dict[str, Any] = {"dropped": 0.0, "rejected": 0.0, "buckets": []}
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            totals[s.name] = totals.get(s.name, 0.0) + float(s.value)
            if s.name == "hitstream_queue_depth":
                out[f"queue_{s.labels['queue']}"] = s.value
            elif s.name == "hitstream_frames_dropped_total":
                out["dropped"] += s.value
            elif s.name == "hitstream_frames_rejected_total":
                out["rejected"] += s.value
            elif s.name == "hitstream_frame_latency_seconds_sum":
                out["lat_sum"] = s.value
            elif s.name == "hitstream_frame_latency_seconds_count":
                out["lat_count"] = s.value
            elif s.name == "hitstream_frame_latency_seconds_bucket":
                out["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name == "hitstream_files_rotated_total":
                out["files_rotated"] = s.value
    out["buckets"].sort()
    out["received"] = float(status["frames_received"])
    out["classified"] = float(status["frames_classified"])
    out["totals"] = totals
    out["status"] = status
    return out


def quantile_from_buckets(
    lo: list[tuple[float, float]], hi: list[tuple[float, float]], q: float
) -> float:
    """Upper bucket bound (s) holding quantile ``q`` of the observations between two scrapes."""
    if len(lo) != len(hi):
        lo = [(le, 0.0) for le, _ in hi]
    cum = [(le, h - lo_) for (le, h), (_, lo_) in zip(hi, lo, strict=True)]
    total = cum[-1][1] if cum else 0.0
    if total <= 0:
        return math.nan
    for le, c in cum:
        if c >= q * total:
            return le
    return math.inf


class Sampler:
    """One CSV row per call: psutil figures of the serve process and its HTTP endpoint."""

    def __init__(self, pid: int, base_url: str, out_dir: Path) -> None:
        self.proc = psutil.Process(pid)
        self.proc.cpu_percent(None)  # prime: the next call measures since now
        self.url = base_url
        self.out_dir = out_dir
        self.prev: dict[str, Any] | None = None
        self.prev_t = 0.0
        self.last: dict[str, Any] | None = None  # the latest sample's scrape (None: failed)

    def sample(self, t: float) -> dict[str, float]:
        row: dict[str, float] = dict.fromkeys(FIELDS, math.nan)
        row["t_s"] = t
        try:  # psutil first, so the HTTP handler thread is not counted
            with self.proc.oneshot():
                row["rss_mb"] = self.proc.memory_info().rss / 1e6
                row["num_fds"] = self.proc.num_fds()
                row["threads"] = self.proc.num_threads()
                row["cpu_pct"] = self.proc.cpu_percent(None)
            row["open_files"] = len(self.proc.open_files())
        except psutil.Error:
            pass
        row["out_dir_mb"] = dir_bytes(self.out_dir) / 1e6
        self.last = None
        try:
            m = scrape(self.url)
        except (OSError, ValueError, KeyError):
            return row
        self.last = m
        row.update(
            queue_infer=m.get("queue_infer", 0.0),
            queue_write=m.get("queue_write", 0.0),
            frames_received=m["received"],
            frames_classified=m["classified"],
            frames_dropped=m["dropped"],
            frames_rejected=m["rejected"],
            files_rotated=m.get("files_rotated", 0.0),
        )
        p = self.prev
        if p is not None and t > self.prev_t:
            row["throughput_fps"] = (m["classified"] - p["classified"]) / (t - self.prev_t)
            n = m.get("lat_count", 0.0) - p.get("lat_count", 0.0)
            if n > 0:
                row["latency_mean_ms"] = 1e3 * (m["lat_sum"] - p["lat_sum"]) / n
                row["latency_p99_ms"] = 1e3 * quantile_from_buckets(
                    p["buckets"], m["buckets"], 0.99
                )
        self.prev, self.prev_t = m, t
        return row


def dir_bytes(path: Path) -> int:
    total = 0
    for f in path.glob("*"):
        with contextlib.suppress(OSError):  # renamed or deleted meanwhile
            total += f.stat().st_size
    return total


# ---------------------------------------------------------------------- output pruning


def frame_rows(path: Path) -> int:
    """Frames seen (rows of ``/entry_1/frames``) in a finished output file."""
    with h5py.File(path, "r") as f:
        return int(f["entry_1/frames/train_id"].shape[0])


@dataclass
class Pruner:
    """Deletes finished files older than the newest ``keep``, counting their frame rows;
    ``on_delete`` (if given) sees each file just before it is deleted."""

    out_dir: Path
    keep: int
    on_delete: Callable[[Path], None] | None = None
    deleted_files: int = 0
    deleted_bytes: int = 0
    deleted_rows: int = 0

    def finished(self) -> list[Path]:
        pattern = file_pattern(RUN_NAME)
        found = []
        for p in self.out_dir.glob(f"{RUN_NAME}_*{FILE_SUFFIX}"):
            m = pattern.fullmatch(p.name)
            if m is not None and m["part"] is None:  # never a .part file
                found.append((m["worker"], int(m["seq"]), p))
        return [p for _, _, p in sorted(found)]

    def prune(self) -> None:
        files = self.finished()
        for p in files[: max(0, len(files) - self.keep)]:
            size = p.stat().st_size
            self.deleted_rows += frame_rows(p)
            if self.on_delete is not None:
                self.on_delete(p)
            p.unlink()
            self.deleted_files += 1
            self.deleted_bytes += size

    def remaining_rows(self) -> int:
        return sum(frame_rows(p) for p in self.finished())


# ---------------------------------------------------------------------- analysis


def slope_per_hour(t_s: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope (units per hour); NaN with fewer than 3 points."""
    return float(np.polyfit(t_s / 3600.0, y, 1)[0]) if len(t_s) >= 3 else math.nan


def analyse(rows: list[dict[str, float]], warmup_s: float) -> list[dict[str, Any]]:
    """Per quantity: after warm-up, end, max, slopes/h, 30-min change, tolerance, verdict.

    Verdict: "flat" when the slope after warm-up changes the quantity by no more than the
    tolerance in 30 min; otherwise "growing" / "falling", unless the slope over the last
    half of the judged window is within the tolerance ("settling": a bounded buffer
    filling up, e.g. the 200,000 recent latencies kept for percentiles, is not a leak).
    """
    t = np.array([r["t_s"] for r in rows], float)
    post = t >= warmup_s
    late = post & (t >= (warmup_s + (t[-1] if len(t) else 0.0)) / 2)
    table = []
    for q in QUANTITIES:
        y = np.array([r[q.name] for r in rows], float)
        ok = post & np.isfinite(y)
        entry: dict[str, Any] = {"quantity": q.name, "unit": q.unit, "gate": q.gate}
        finite = y[np.isfinite(y)]
        entry["max"] = float(finite.max()) if len(finite) else math.nan
        entry["end"] = float(finite[-1]) if len(finite) else math.nan
        entry.update(warm=math.nan, slope_per_h=math.nan, change_30min=math.nan,
                     late_change_30min=math.nan, tolerance=math.nan, verdict="n/a")  # fmt: skip
        if ok.sum() >= 3:
            warm = float(y[ok][0])
            slope = slope_per_hour(t[ok], y[ok])
            change = slope * 0.5
            late_ok = late & np.isfinite(y)
            late_change = slope_per_hour(t[late_ok], y[late_ok]) * 0.5
            tol = max(q.abs_tol, q.rel_tol * abs(warm))
            if abs(change) <= tol:
                verdict = "flat"
            elif math.isfinite(late_change) and abs(late_change) <= tol:
                verdict = "settling"
            else:
                verdict = "growing" if change > 0 else "falling"
            entry.update(warm=warm, slope_per_h=slope, change_30min=change,
                         late_change_30min=late_change, tolerance=tol, verdict=verdict)  # fmt: skip
        table.append(entry)
    return table


def gate_failures(table: list[dict[str, Any]]) -> list[str]:
    bad = []
    for e in table:
        if (e["gate"] == "growth" and e["verdict"] == "growing") or (
            e["gate"] == "both" and e["verdict"] not in ("flat", "n/a")
        ):
            bad.append(f"{e['quantity']} {e['verdict']}")
    return bad


def format_table(table: list[dict[str, Any]]) -> str:
    def f(v: float) -> str:
        return "-" if not math.isfinite(v) else f"{v:.4g}"

    head = (
        "quantity",
        "after warm-up",
        "end",
        "max",
        "slope/h",
        "Δ 30 min",
        "late Δ 30 min",
        "tolerance",
        "verdict",
    )
    lines = [head]
    for e in table:
        name = f"{e['quantity']}" + (f" [{e['unit']}]" if e["unit"] else "")
        if e["gate"] is None:
            name += " (info)"
        lines.append(
            (
                name,
                f(e["warm"]),
                f(e["end"]),
                f(e["max"]),
                f(e["slope_per_h"]),
                f(e["change_30min"]),
                f(e["late_change_30min"]),
                f"±{f(e['tolerance'])}",
                e["verdict"],
            )
        )
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = []
    for k, row in enumerate(lines):
        out.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            )
        )
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def plot(rows: list[dict[str, float]], path: Path, warmup_s: float, rate: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["t_s"] for r in rows], float) / 60.0

    def col(name: str) -> np.ndarray:
        return np.array([r[name] for r in rows], float)

    fig, axes = plt.subplots(4, 1, figsize=(9, 10), sharex=True)
    ax = axes[0]
    ax.plot(t, col("rss_mb"), color="C0")
    ax.set_ylabel("RSS (MB)")
    ax = axes[1]
    for name in ("num_fds", "open_files", "threads"):
        ax.plot(t, col(name), label=name, drawstyle="steps-post")
    ax.set_ylabel("count")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[2]
    for name in ("queue_infer", "queue_write"):
        ax.plot(t, col(name), label=name, drawstyle="steps-post")
    ax.set_ylabel("queue depth (batches)")
    ax.legend(loc="upper left", fontsize=8)
    ax = axes[3]
    ax.plot(t, col("throughput_fps"), color="C2", label="classified")
    ax.axhline(rate, color="grey", lw=0.8, ls="--", label="replay rate")
    ax.set_ylabel("frames/s")
    ax.set_xlabel("time (min)")
    ax.legend(loc="lower left", fontsize=8)
    lat = ax.twinx()
    lat.plot(t, col("latency_mean_ms"), color="C3", lw=0.8)
    lat.set_ylabel("mean latency (ms)", color="C3")
    for a in axes:
        a.axvspan(0, warmup_s / 60.0, color="0.9", zorder=0)
        a.grid(alpha=0.3)
    axes[0].set_title("streamer soak (grey: warm-up)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0, help="replay duration")
    p.add_argument("--rate", type=float, default=200.0, help="frames/s sent by the replay")
    p.add_argument("--sample-s", type=float, default=10.0, help="seconds between samples")
    p.add_argument("--out", type=Path, default=Path("soak-out"), help="results directory")
    p.add_argument("--run-file", type=Path, help="HDF5 run to replay (default OUT/run.h5)")
    p.add_argument("--distinct", type=int, default=300, help="distinct simulated frames")
    p.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    p.add_argument(
        "--mode",
        choices=("REP", "PUSH"),
        default="REP",
        type=str.upper,
        help="replay socket (the streamer uses REQ / PULL)",
    )
    p.add_argument(
        "-k",
        "--frames-per-message",
        type=int,
        default=20,
        help="frames per train (20 at 200/s: 10 trains/s as at EuXFEL)",
    )
    p.add_argument("--max-frames", type=int, default=2000, help="output.max_frames (kept)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="output.max_seconds")
    p.add_argument("--keep-files", type=int, default=3, help="newest finished files kept")
    p.add_argument("--warmup-s", type=float, help="default: max(60 s, 10 %%), <= half the run")
    p.add_argument("--tmp", type=Path, help="parent of the streamer's output directory")
    p.add_argument("--keep-output", action="store_true", help="leave the streamer output")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    run_file = write_tiled_run(args.run_file or args.out / "run.h5", args.distinct, args.distinct)
    with h5py.File(run_file) as f:
        n_file = int(f["data"].shape[0])
    duration_s = args.minutes * 60.0
    repeat = max(1, round(duration_s * args.rate / n_file))
    expected = repeat * n_file
    duration_s = expected / args.rate
    warmup_s = (
        args.warmup_s if args.warmup_s is not None else min(max(60.0, 0.1 * duration_s),
                                                            0.5 * duration_s)
    )  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="hitstream-soak-", dir=args.tmp))
    files_dir = work / "files"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    feed_mode = {"REP": "REQ", "PUSH": "PULL"}[args.mode]
    print(
        f"soak: {expected} frames ({n_file} distinct × {repeat}) at {args.rate:g}/s "
        f"= {duration_s / 60:.1f} min, {args.mode}→{feed_mode}, lossless, "
        f"warm-up {warmup_s:.0f} s; streamer output in {work}",
        flush=True,
    )

    serve = replay = None
    rows: list[dict[str, float]] = []
    pruner = Pruner(files_dir, args.keep_files)
    csv_path = args.out / "soak.csv"
    try:
        serve, url = start_serve(
            args.model, endpoint, feed_mode, work, args, args.out / "serve.log"
        )
        sampler = Sampler(serve.pid, url, files_dir)
        replay = start_replay(run_file, endpoint, args.mode, repeat, args, args.out / "replay.log")
        t0 = time.monotonic()
        next_t = t0 + args.sample_s
        last_send = (expected - args.frames_per_message) / args.rate  # s after t0, at least
        with (
            csv_path.open("w", newline="") as fh,
            tqdm(
                total=round(duration_s),
                unit="s",
                file=sys.stderr,
                desc="soak",
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]",
            ) as bar,
        ):
            writer = csv.DictWriter(fh, FIELDS)
            writer.writeheader()

            def take() -> dict[str, float]:
                row = sampler.sample(time.monotonic() - t0)
                row["files_deleted"] = pruner.deleted_files
                rows.append(row)
                writer.writerow(row)
                fh.flush()
                bar.set_postfix(
                    fps=f"{row['throughput_fps']:.0f}",
                    rss=f"{row['rss_mb']:.0f}MB",
                    q=f"{row['queue_infer']:.0f}/{row['queue_write']:.0f}",
                )
                return row

            take()
            while replay.poll() is None:
                if serve.poll() is not None:  # at the end marker, or early: checks tell
                    break
                now = time.monotonic()
                if now >= next_t:
                    take()
                    # the paced replay cannot end before last_send; the streamer builds its
                    # run index after the end: never delete files while it may be doing so
                    if now - t0 + args.sample_s + 5.0 < last_send:
                        pruner.prune()
                    next_t += args.sample_s
                bar.update(min(now - t0, bar.total) - bar.n)
                time.sleep(max(0.0, min(0.5, next_t - time.monotonic())))
            bar.update(bar.total - bar.n)
        serve.wait(timeout=300)
        with contextlib.suppress(subprocess.TimeoutExpired):  # REP lingers ~1 s after the end
            replay.wait(timeout=60)
        stop(replay)
        replay_out = replay.stdout.read() if replay.stdout else ""
    except KeyboardInterrupt:
        print("interrupted: stopping replay and streamer", file=sys.stderr)
        stop(replay)
        stop(serve)
        return 130
    finally:
        stop(replay)
        stop(serve)

    # -- checks ----------------------------------------------------------------------------
    summary_path = work / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    m = REPLAY_DONE.search(replay_out)
    sent = int(m.group(1)) if m else -1
    written = pruner.deleted_rows + pruner.remaining_rows()
    dropped = sum(summary.get("dropped", {}).values())
    rejected = sum(summary.get("rejected", {}).values())
    # samples taken once every frame was in show the streamer shutting down: not judged
    steady = [r for r in rows if r["frames_received"] < expected]
    post = [r["throughput_fps"] for r in steady if r["t_s"] >= warmup_s]
    post = [v for v in post if math.isfinite(v)]
    mean_fps = float(np.mean(post)) if post else math.nan
    eor = (summary.get("end_of_run") or {}).get("frames")
    table = analyse(steady, warmup_s)
    checks = {
        "replay sent the planned frames": sent == expected,
        "streamer exit status 0, no error": serve.returncode == 0 and not summary.get("error"),
        "end-of-run marker counts the frames sent": eor == sent,
        "frames received == sent": summary.get("frames_received") == sent,
        "frames classified == sent": summary.get("frames_classified") == sent,
        "frame rows written (deleted + kept files) == sent": written == sent,
        "zero drops (lossless)": dropped == 0,
        "zero rejects": rejected == 0,
        "mean throughput after warm-up within 5 % of the rate": (
            abs(mean_fps - args.rate) <= 0.05 * args.rate
        ),
    }
    failures = gate_failures(table)
    checks["no gated quantity drifting"] = not failures

    plot(rows, args.out / "soak.png", warmup_s, args.rate)
    result = {
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "frames": {
            "planned": expected,
            "sent": sent,
            "received": summary.get("frames_received"),
            "classified": summary.get("frames_classified"),
            "written_rows": written,
            "kept": summary.get("frames_kept"),
            "dropped": dropped,
            "rejected": rejected,
        },
        "files": {
            "deleted": pruner.deleted_files,
            "deleted_mb": pruner.deleted_bytes / 1e6,
            "remaining": len(pruner.finished()),
        },
        "latency_ms": summary.get("latency"),
        "mean_fps_after_warmup": mean_fps,
        "warmup_s": warmup_s,
        "samples": len(rows),
        "table": table,
        "checks": checks,
        "drifting": failures,
    }
    (args.out / "soak.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    remaining = len(pruner.finished())
    if not args.keep_output:
        shutil.rmtree(work, ignore_errors=True)

    print(
        f"\nsamples: {len(rows)} every {args.sample_s:g} s, {len(steady)} before the "
        f"streamer's shutdown; judged after warm-up ({warmup_s:.0f} s):"
    )
    print(format_table(table))
    print(
        f"\nframes: sent {sent}, received {summary.get('frames_received')}, classified "
        f"{summary.get('frames_classified')}, rows written {written} (kept "
        f"{summary.get('frames_kept')}), dropped {dropped:g}, rejected {rejected:g}; "
        f"mean {mean_fps:.1f} frames/s after warm-up; latency {summary.get('latency')}"
    )
    print(
        f"files: {pruner.deleted_files} finished files deleted "
        f"({pruner.deleted_bytes / 1e6:.0f} MB), {remaining} left"
    )
    for name, ok in checks.items():
        print(f"  [{'ok' if ok else 'FAIL'}] {name}")
    verdict = all(checks.values())
    print(
        f"soak {'PASSED' if verdict else 'FAILED'}"
        + (f": {', '.join(failures)}" if failures else "")
    )
    print(f"results in {args.out}/ (soak.csv, soak.png, soak.json)")
    return 0 if verdict else 1


if __name__ == "__main__":
    raise SystemExit(main())
