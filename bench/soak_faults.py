"""Fault-mix soak of the streamer: producer restarts, a full disk, garbage and a hot swap.

A real ``streamer serve`` process (lossless, PULL, ``--model``, metrics on a free
127.0.0.1 port) classifies a simulated run replayed at ``--rate`` frames/s by a PUSH
replay for ``--minutes``, while a schedule of faults hits it (times as fractions of the
run):

- 8 %: ``POST /model`` switches to the other shipped bundle (``--swap-model``), inside the
  warm-up: the RSS after warm-up and at the end are then both taken with the same model
  (the bundles' sessions differ by 50-100 MB, which is no leak);
- 20 %: the replay is killed with SIGKILL and started again (restart 1);
- 35 %: the output disk fills up: a ballast file leaves less than ``output.min_free_bytes``
  free on the streamer's output directory, a small tmpfs (``--disk-mib``); the ballast is
  deleted ``min(60 s, 10 %)`` later;
- 55 % and 80 %: the replay is killed again and, while it is down, a PUSH socket bound on
  the same endpoint sends ``--garbage`` malformed messages of :mod:`streamer.fuzz` (bad
  ones only), waits until the streamer has taken them, closes; then the replay starts
  again (restarts 2 and 3; the last replay sends the rest of the planned frames and the
  end-of-run marker).

A killed replay stays down ``--down-s`` (6 s), longer than ``feed.silence_s``
(``--silence-s``, 5 s): the streamer must notice the silence and clear it.

Each replay is ``streamer replay`` run through :func:`replay_child`, which also prints
``sent FRAMES TRAINS`` after every message handed to ZeroMQ, so that a killed replay's
count is known; each one starts at the train id after the last one its predecessor sent.
Frames a killed replay had sent but the streamer never received (lost in the PUSH side's
buffers) are *never seen*: they must be the last trains of that replay, and the
streamer's train-gap estimate (``hitstream_frames_missed``) must count exactly them.

Output files rotate every ``--max-seconds``; all are kept (the tmpfs holds them) unless
the free space nears the guard outside the full-disk window, then the oldest finished
files are deleted after their rows were counted (as in ``bench/soak.py``).

Every ``--sample-s`` seconds the serve process is sampled (psutil: RSS, fds, threads;
``/status``: the frame balance, output pause, feed silence, alerts; ``/metrics``). Into
``--out`` go ``soak_faults.csv`` (one row per sample), ``soak_faults.png`` (RSS with the
fault moments, throughput, the balance terms, the output and feed state),
``soak_faults.json`` (settings, timeline, producers, checks) and the processes' logs.

At the end the checks are printed as a table, last; exit status 0 only when all pass:
the frame balance (received = classified + rejected + dropped, in flight 0) at the end
and at every sample (in flight >= 0 and small); label rows on disk = classified -
labels unrecorded; kept frames on disk = ``hitstream_frames_kept_total``; frames sent by
the replays - frames received = never seen, all of it accounted for as above; every
garbage message counted as refused (by reason); the output paused once and resumed; RSS
at the end within 10 % of RSS after warm-up (as in ``bench/soak.py``: the first
``max(60 s, 10 %)``, at most half the run); no ``.part`` file after the stop; the run
index lists every finished file; the hot swap answered 200; the feed's silence noticed at
every restart and cleared; the streamer stopped at the end marker with no error but the
reported output pause.

    .venv/bin/python bench/soak_faults.py                 # 10 min, 150 frames/s
    .venv/bin/python bench/soak_faults.py --minutes 2     # smoke run

Mounting the tmpfs needs root; elsewhere the output directory's own filesystem is used
with the guard set ``--disk-mib`` below its free space (as ``tests/test_disk_full.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import logging
import math
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import zmq
from soak import (
    QUANTITIES,
    REPLAY_DONE,
    ROOT,
    RUN_NAME,
    Pruner,
    Sampler,
    analyse,
    format_table,
    scrape,
    start_replay,
    start_serve,
    stop,
)
from tqdm import tqdm

from hitstream.simulate.replay_runs import write_tiled_run
from streamer.cxi_layout import FRAMES_GROUP, KEPT_GROUP, PART_SUFFIX
from streamer.demo import free_port
from streamer.fuzz import KEY, SOURCE, Case, FuzzGenerator, Tally
from streamer.readback import list_run_files, read_run
from streamer.run_index import check_index

SENT = re.compile(r"^sent (\d+) (\d+)$")
FIRST_TRAIN_ID = 1_000_001  # the first replay's; fuzz frames carry train ids from 1
MAX_MESSAGE_BYTES = 8 << 20  # feed.max_message_bytes and the fuzz generator's limit
# "small": the batcher, pipeline.queue_size (4) staged batches and the one being inferred,
# of at most engine.max_batch (64 on the CPU) frames each
IN_FLIGHT_MAX = 6 * 64
RSS_TOL = 0.10
PRUNE_MARGIN = 64 << 20  # prune when free space nears min_free_bytes by this much
GARBAGE_TIMEOUT_S = 60.0

FIELDS = (
    "t_s", "rss_mb", "num_fds", "open_files", "threads", "cpu_pct",
    "received", "classified", "rejected", "dropped", "in_flight",
    "messages_received", "messages_rejected", "missed", "kept", "kept_not_written",
    "labels_backlog", "labels_unrecorded", "writer_paused", "pauses", "feed_silent",
    "silences", "feed_refused", "alerts", "throughput_fps", "latency_mean_ms",
    "latency_p99_ms", "queue_infer", "queue_write", "out_dir_mb", "free_mb",
    "files_rotated", "files_deleted", "model_swaps", "batch_mean", "producer", "ending",
    "alert_text",
)  # fmt: skip


# ---------------------------------------------------------------------- the replay child


def replay_child(argv: list[str]) -> int:
    """``streamer replay`` (same options, same server) that prints ``sent FRAMES TRAINS``
    after every message handed to ZeroMQ: what a replay killed with SIGKILL had sent."""
    from streamer.replay import ReplayServer, add_arguments, config_from_args

    p = argparse.ArgumentParser(prog="soak_faults.py replay-child")
    add_arguments(p)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    server = ReplayServer(config_from_args(args))

    def progress(_n: int) -> None:
        print(f"sent {server.stats.frames} {server.stats.trains}", flush=True)

    server.progress = progress
    print(f"replay ready {server.endpoint}", flush=True)
    stats = server.run()
    print(stats.summary(), flush=True)
    return 0


@dataclass
class Producer:
    """One replay process: its train ids start at ``first_train_id``."""

    index: int
    first_train_id: int
    planned: int  # frames it would send if not killed
    proc: subprocess.Popen[str]
    started_s: float
    frames: int = 0  # sent so far (handed to ZeroMQ)
    trains: int = 0
    done: str | None = None  # its "replay done" line (a clean end)
    killed_s: float | None = None
    ended_s: float | None = None
    new_line: threading.Event = field(default_factory=threading.Event)
    reader: threading.Thread | None = None

    def follow(self) -> None:
        """Read its stdout in a thread: the sent counts and the final line."""

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                m = SENT.match(line.strip())
                if m:
                    self.frames, self.trains = int(m.group(1)), int(m.group(2))
                    self.new_line.set()
                elif REPLAY_DONE.search(line):
                    self.done = line.strip()

        self.reader = threading.Thread(target=read, name=f"replay-{self.index}", daemon=True)
        self.reader.start()

    def kill(self, t0: float) -> None:
        """SIGKILL just after a message went out (the count is then exact), then reap."""
        self.new_line.clear()
        self.new_line.wait(5.0)
        self.proc.kill()
        self.proc.wait()
        self.killed_s = self.ended_s = time.monotonic() - t0
        if self.reader is not None:
            self.reader.join(10.0)

    @property
    def last_train(self) -> int:
        return self.first_train_id + self.trains - 1

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "first_train_id": self.first_train_id,
            "planned": self.planned,
            "sent_frames": self.frames,
            "sent_trains": self.trains,
            "started_s": self.started_s,
            "killed_s": self.killed_s,
            "ended_s": self.ended_s,
            "done": self.done,
            "exit_status": self.proc.returncode,
        }


# ---------------------------------------------------------------------- the faults


@contextlib.contextmanager
def small_disk(path: Path, size_mib: int, min_free: int) -> Iterator[tuple[bool, int]]:
    """A tmpfs of ``size_mib`` at ``path`` where it can be mounted, else the filesystem
    ``path`` is on with the guard ``size_mib`` below its free space. Yields (mounted, the
    ``min_free_bytes`` to configure)."""
    path.mkdir(parents=True)
    mounted = (
        shutil.which("mount") is not None
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size_mib}m", "tmpfs", str(path)],
            capture_output=True,
        ).returncode
        == 0
    )
    try:
        yield mounted, min_free if mounted else shutil.disk_usage(path).free - (size_mib << 20)
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path, min_free: int) -> Path:
    """A ballast file that leaves 8 MiB less than ``min_free`` free on ``path``."""
    ballast = path / "ballast.bin"
    size = max(0, shutil.disk_usage(path).free - min_free + (8 << 20))
    chunk = bytes(1 << 20)
    with open(ballast, "wb") as fh:
        for _ in range(size >> 20):
            fh.write(chunk)
    return ballast


def metric_total(url: str, name: str) -> float:
    return float(scrape(url)["totals"].get(name, 0.0))


def garbage_burst(endpoint: str, n: int, seed: int, url: str) -> list[Case]:
    """Bind a PUSH on the replay's endpoint, send ``n`` bad fuzz messages, wait until the
    streamer received them all, close. Returns the cases sent."""
    gen = FuzzGenerator(seed, max_message_bytes=MAX_MESSAGE_BYTES, good_every=n + 1)
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDHWM, 8)
    push.setsockopt(zmq.SNDTIMEO, round(GARBAGE_TIMEOUT_S * 1000))
    cases: list[Case] = []
    try:
        for attempt in range(50):  # the killed replay's port: normally free at once
            try:
                push.bind(endpoint)
                break
            except zmq.ZMQError:
                if attempt == 49:
                    raise
                time.sleep(0.1)
        before = metric_total(url, "hitstream_messages_received_total")
        for i in range(n):
            case = gen.case(i)
            push.send_multipart(case.parts, copy=False)
            cases.append(case)
        deadline = time.monotonic() + GARBAGE_TIMEOUT_S
        while metric_total(url, "hitstream_messages_received_total") < before + n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the streamer did not take the {n} garbage messages")
            time.sleep(0.1)
    finally:
        push.close(linger=0)
        ctx.term()
    return cases


def post_model(url: str, path: Path) -> tuple[int, dict[str, Any]]:
    """``POST /model {"path": ...}``: the HTTP status and the JSON answer."""
    req = urllib.request.Request(
        f"{url}/model",
        data=json.dumps({"path": str(path)}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


@dataclass
class Event:
    t_s: float
    name: str
    detail: str = ""


@dataclass
class Soak:
    """The running soak: processes, the fault schedule's state and what it recorded."""

    args: argparse.Namespace
    run_file: Path
    n_file: int
    work: Path
    files_dir: Path
    endpoint: str
    url: str
    serve: subprocess.Popen[str]
    min_free: int
    t0: float = 0.0
    total: int = 0  # frames planned over all replays
    producers: list[Producer] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    bursts: list[list[Case]] = field(default_factory=list)
    ballast: Path | None = None
    swap: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    prev_batches: tuple[float, float] = (0.0, 0.0)  # batch frames sum, count: last sample
    final_started: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, name: str, detail: str = "") -> None:
        with self.lock:
            self.events.append(Event(self.now(), name, detail))

    def start_producer(self, final: bool) -> Producer:
        i = len(self.producers) + 1
        first = (
            FIRST_TRAIN_ID if not self.producers else self.producers[-1].last_train + 1
        )  # the train after the last one sent: a lost tail shows up as a train gap
        sent = sum(p.frames for p in self.producers)
        repeat = (
            max(1, round((self.total - sent) / self.n_file))
            if final
            else math.ceil(self.total / self.n_file) + 1
        )
        proc = start_replay(
            self.run_file,
            self.endpoint,
            "PUSH",
            repeat,
            self.args,
            self.args.out / f"replay-{i}.log",
            command=[sys.executable, str(Path(__file__).resolve()), "replay-child"],
            extra=["--first-train-id", str(first), "--source", SOURCE, "--key", KEY],
        )
        p = Producer(i, first, repeat * self.n_file, proc, self.now())
        p.follow()
        self.producers.append(p)
        self.note(f"replay {i} up", f"first train {first}" + (", last replay" if final else ""))
        return p

    def restart(self, garbage: int, seed: int, final: bool) -> None:
        p = self.producers[-1]
        p.kill(self.t0)
        self.note(f"replay {p.index} SIGKILL", f"after {p.frames} frames / {p.trains} trains")
        if garbage:
            cases = garbage_burst(self.endpoint, garbage, seed, self.url)
            self.bursts.append(cases)
            self.note("garbage", f"{len(cases)} malformed messages")
        time.sleep(self.args.down_s)
        self.start_producer(final)
        if final:
            self.final_started.set()

    def disk_full(self) -> None:
        self.ballast = fill(self.files_dir, self.min_free)
        free = shutil.disk_usage(self.files_dir).free
        self.note(
            "disk full", f"ballast {self.ballast.stat().st_size >> 20} MiB, {free >> 20} MiB free"
        )

    def disk_freed(self) -> None:
        if self.ballast is not None:
            self.ballast.unlink()
        self.ballast = None
        self.note("disk freed")

    def hot_swap(self) -> None:
        status, answer = post_model(self.url, self.args.swap_model.resolve())
        self.swap = {"status": status, "answer": answer, "t_s": self.now()}
        self.note("hot swap", f"POST /model -> {status}")

    def schedule(self, duration_s: float) -> list[tuple[float, str, Callable[[], None]]]:
        a = self.args
        full_s = min(60.0, 0.1 * duration_s)
        return [
            (0.08 * duration_s, "hot swap", self.hot_swap),
            (0.20 * duration_s, "restart 1", lambda: self.restart(0, a.seed, False)),
            (0.35 * duration_s, "disk full", self.disk_full),
            (0.35 * duration_s + full_s, "disk freed", self.disk_freed),
            (0.55 * duration_s, "restart 2", lambda: self.restart(a.garbage, a.seed, False)),
            (0.80 * duration_s, "restart 3", lambda: self.restart(a.garbage, a.seed + 1, True)),
        ]

    def run_faults(self, duration_s: float) -> None:
        """The fault thread: each fault at its time; stops at the first failure."""
        try:
            for at, name, action in self.schedule(duration_s):
                while self.now() < at:
                    if self.serve.poll() is not None:
                        raise RuntimeError(f"the streamer exited before {name}")
                    time.sleep(min(0.2, max(0.0, at - self.now())))
                action()
        except Exception as exc:  # reported with the checks
            self.error = f"{type(exc).__name__}: {exc}"
            self.note("fault schedule failed", self.error)
            self.final_started.set()


# ---------------------------------------------------------------------- sampling


def sample_row(soak: Soak, sampler: Sampler, pruner: Pruner) -> dict[str, Any]:
    """One CSV row: psutil and latency figures from :class:`soak.Sampler`, the balance and
    the output/feed state from ``/status``, counters from ``/metrics``."""
    base = sampler.sample(soak.now())
    row: dict[str, Any] = dict.fromkeys(FIELDS, math.nan)
    for k in (
        "t_s",
        "rss_mb",
        "num_fds",
        "open_files",
        "threads",
        "cpu_pct",
        "throughput_fps",
        "latency_mean_ms",
        "latency_p99_ms",
        "queue_infer",
        "queue_write",
        "out_dir_mb",
        "files_rotated",
    ):
        row[k] = base.get(k, math.nan)
    row["files_deleted"] = pruner.deleted_files
    row["producer"] = soak.producers[-1].index if soak.producers else 0
    row["alert_text"] = ""
    with contextlib.suppress(OSError):
        row["free_mb"] = shutil.disk_usage(soak.files_dir).free / 1e6
    m = sampler.last
    if m is None:
        return row
    st, tot = m["status"], m["totals"]
    acc = st.get("accounting", {})
    for k in ("received", "classified", "rejected", "dropped", "in_flight"):
        row[k] = acc.get(k, math.nan)
    out = st.get("output", {})
    row["writer_paused"] = 1 if out.get("paused") else 0
    row["pauses"] = out.get("pauses", math.nan)
    row["labels_backlog"] = out.get("backlog_rows", math.nan)
    row["labels_unrecorded"] = sum(out.get("unrecorded", {}).values())
    silence = st.get("feed_silence", {})
    row["feed_silent"] = 1 if silence.get("silent") else 0
    row["silences"] = silence.get("silences", math.nan)
    row["feed_refused"] = 1 if (st.get("feed") or {}).get("refused") else 0
    alerts = st.get("alerts", [])
    row["alerts"] = len(alerts)
    row["alert_text"] = " | ".join(a[:120] for a in alerts)
    row["messages_received"] = tot.get("hitstream_messages_received_total", math.nan)
    row["messages_rejected"] = tot.get("hitstream_messages_rejected_total", 0.0)
    row["missed"] = tot.get("hitstream_frames_missed_total", 0.0)
    row["kept"] = tot.get("hitstream_frames_kept_total", math.nan)
    row["kept_not_written"] = tot.get("hitstream_kept_not_written_total", 0.0)
    row["model_swaps"] = tot.get("hitstream_model_swaps_total", 0.0)  # any result
    # frames per inference batch since the last sample: > k when messages were merged
    # (onnxruntime's CPU arena grows to the largest batch seen and keeps it)
    s, n = tot.get("hitstream_batch_frames_sum", 0.0), tot.get("hitstream_batch_frames_count", 0.0)
    ps, pn = soak.prev_batches
    if n > pn:
        row["batch_mean"] = (s - ps) / (n - pn)
    soak.prev_batches = (s, n)
    return row


# ---------------------------------------------------------------------- analysis


def disk_tables(
    files_dir: Path, deleted: list[tuple[np.ndarray, int]]
) -> tuple[np.ndarray, int, tuple[str, ...], int, np.ndarray]:
    """Train ids of every label row (deleted files first), kept rows, model versions,
    finished files read, and the kept flags."""
    t = read_run(files_dir, RUN_NAME)
    tids = [d[0] for d in deleted] + [t.frames.train_id.astype(np.int64)]
    kept = sum(d[1] for d in deleted) + len(t.kept.train_id)
    return np.concatenate(tids), kept, t.models, len(t.files), t.frames.kept


def producer_rows(p: Producer, tids: np.ndarray, k: int) -> dict[str, Any]:
    """What of replay ``p`` reached the files: rows, and whether they are its first trains,
    each complete (so what is missing is its tail)."""
    mine = tids[(tids >= p.first_train_id) & (tids < p.first_train_id + max(p.trains, 1))]
    trains, counts = np.unique(mine, return_counts=True)
    n = len(trains)
    prefix = bool(
        n == 0 or (trains[0] == p.first_train_id and trains[-1] == p.first_train_id + n - 1)
    )
    complete = bool(np.all(counts == k))
    return {
        "rows": len(mine),
        "trains": n,
        "never_seen": p.frames - len(mine),
        "tail_only": prefix and complete,
    }


def verdict(ok: bool) -> str:
    return "ok" if ok else "FAIL"


def format_checks(checks: list[tuple[str, str, bool]]) -> str:
    head = ("check", "measured", "verdict")
    lines = [head, *((c, m, verdict(ok)) for c, m, ok in checks)]
    w0 = max(len(r[0]) for r in lines)
    w1 = max(len(r[1]) for r in lines)
    out = []
    for k, (c, m, v) in enumerate(lines):
        out.append(f"{c.ljust(w0)}  {m.ljust(w1)}  {v}")
        if k == 0:
            out.append(f"{'-' * w0}  {'-' * w1}  -------")
    return "\n".join(out)


def plot(
    rows: list[dict[str, Any]],
    events: list[Event],
    path: Path,
    warmup_s: float,
    rate: float,
    rss_warm: float,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([r["t_s"] for r in rows], float) / 60.0

    def col(name: str) -> np.ndarray:
        return np.array([r[name] for r in rows], float)

    fig, axes = plt.subplots(4, 1, figsize=(10, 12), sharex=True)
    ax = axes[0]
    ax.plot(t, col("rss_mb"), color="C0")
    if math.isfinite(rss_warm):
        ax.axhspan(rss_warm * (1 - RSS_TOL), rss_warm * (1 + RSS_TOL), color="C0", alpha=0.08)
        ax.axhline(rss_warm, color="C0", lw=0.6, ls=":")
    ax.set_ylabel("RSS (MB)")
    ax = axes[1]
    ax.plot(t, col("throughput_fps"), color="C2", label="classified")
    ax.axhline(rate, color="grey", lw=0.8, ls="--", label="replay rate")
    ax.set_ylabel("frames/s")
    ax.legend(loc="lower left", fontsize=8)
    lat = ax.twinx()
    lat.plot(t, col("latency_mean_ms"), color="C3", lw=0.8)
    lat.set_ylabel("mean latency (ms)", color="C3")
    ax = axes[2]
    for name in ("received", "classified"):
        ax.plot(t, col(name), label=name)
    ax.set_ylabel("frames")
    ax.legend(loc="upper left", fontsize=8)
    small = ax.twinx()
    for name, c in (("rejected", "C3"), ("dropped", "C5"), ("in_flight", "C4")):
        small.plot(t, col(name), color=c, lw=0.8, drawstyle="steps-post", label=name)
    small.set_ylabel("rejected, dropped, in flight")
    small.legend(loc="lower right", fontsize=8)
    ax = axes[3]
    ax.fill_between(
        t, col("writer_paused"), step="post", color="C1", alpha=0.3, label="output paused"
    )
    ax.plot(t, col("feed_silent"), drawstyle="steps-post", color="C5", label="feed silent")
    ax.plot(t, col("feed_refused"), drawstyle="steps-post", color="C6", label="feed refused")
    ax.plot(t, col("alerts"), drawstyle="steps-post", color="k", lw=0.8, label="alerts")
    ax.set_ylabel("state")
    ax.legend(loc="upper left", fontsize=8)
    bl = ax.twinx()
    bl.plot(t, col("labels_backlog") / 1e3, color="C8", lw=0.8)
    bl.set_ylabel("labels held (k rows)", color="C8")
    ax.set_xlabel("time (min)")
    faults: list[tuple[float, str]] = []  # events a few seconds apart share one label
    for e in events:
        if e.name.endswith(" up"):
            continue
        if faults and e.t_s - faults[-1][0] < 5.0:
            faults[-1] = (faults[-1][0], f"{faults[-1][1]} + {e.name}")
        else:
            faults.append((e.t_s, e.name))
    for a in axes:
        a.axvspan(0, warmup_s / 60.0, color="0.9", zorder=0)
        a.grid(alpha=0.3)
        for t_s, _ in faults:
            a.axvline(t_s / 60.0, color="r", lw=0.7, alpha=0.6)
    for t_s, name in faults:
        axes[0].annotate(
            name,
            (t_s / 60.0, 1.0),
            xycoords=("data", "axes fraction"),
            rotation=90,
            va="top",
            ha="right",
            fontsize=7,
            color="r",
        )
    axes[0].set_title("streamer fault soak (grey: warm-up; red: faults; band: RSS ±10 %)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=10.0, help="planned replay duration")
    p.add_argument("--rate", type=float, default=150.0, help="frames/s sent by the replay")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between samples")
    p.add_argument(
        "--out", type=Path, default=ROOT / "bench" / "out" / "soak_faults", help="results directory"
    )
    p.add_argument("--run-file", type=Path, help="HDF5 run to replay (default OUT/run.h5)")
    p.add_argument("--distinct", type=int, default=300, help="distinct simulated frames")
    p.add_argument("--model", type=Path, default=ROOT / "models" / "default")
    p.add_argument(
        "--swap-model",
        type=Path,
        default=ROOT / "models" / "fast",
        help="bundle of the hot swap (under the model's parent directory)",
    )
    p.add_argument(
        "-k",
        "--frames-per-message",
        type=int,
        default=15,
        help="frames per train (15 at 150/s: 10 trains/s as at EuXFEL)",
    )
    p.add_argument("--max-frames", type=int, default=10_000, help="output.max_frames (kept)")
    p.add_argument("--max-seconds", type=float, default=20.0, help="output.max_seconds")
    p.add_argument("--disk-mib", type=int, default=256, help="size of the output tmpfs")
    p.add_argument("--min-free-mib", type=int, default=32, help="output.min_free_bytes")
    p.add_argument("--garbage", type=int, default=200, help="malformed messages per burst")
    p.add_argument("--seed", type=int, default=1, help="seed of the first garbage burst")
    p.add_argument("--down-s", type=float, default=6.0, help="a killed replay stays down")
    p.add_argument("--silence-s", type=float, default=5.0, help="feed.silence_s")
    p.add_argument(
        "--serve-set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="another config override for streamer serve (repeatable), e.g. engine.max_batch=15",
    )
    p.add_argument("--tmp", type=Path, help="parent of the streamer's work directory")
    p.add_argument("--keep-output", action="store_true", help="copy the files to OUT/files")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["replay-child"]:
        return replay_child(argv[1:])
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    args.model, args.swap_model = args.model.resolve(), args.swap_model.resolve()
    run_file = write_tiled_run(args.run_file or args.out / "run.h5", args.distinct, args.distinct)
    with h5py.File(run_file) as f:
        n_file = int(f["data"].shape[0])
    duration_s = args.minutes * 60.0
    total = max(1, round(duration_s * args.rate / n_file)) * n_file
    warmup_s = min(max(60.0, 0.1 * duration_s), 0.5 * duration_s)
    work = Path(tempfile.mkdtemp(prefix="hitstream-soak-faults-", dir=args.tmp))
    files_dir = work / "files"
    endpoint = f"tcp://127.0.0.1:{free_port()}"
    try:
        with small_disk(files_dir, args.disk_mib, args.min_free_mib << 20) as (mounted, min_free):
            print(
                f"soak_faults: {total} frames planned at {args.rate:g}/s = "
                f"{duration_s / 60:.1f} min, PUSH→PULL, lossless, {args.model.name} then "
                f"{args.swap_model.name}; output on "
                + (f"a {args.disk_mib} MiB tmpfs" if mounted else "the work disk (no tmpfs)")
                + f" at {files_dir}, min_free_bytes {min_free >> 20} MiB; "
                f"warm-up {warmup_s:.0f} s",
                flush=True,
            )
            try:
                return _soak(
                    args,
                    run_file,
                    n_file,
                    total,
                    duration_s,
                    warmup_s,
                    work,
                    files_dir,
                    endpoint,
                    min_free,
                    mounted,
                )
            finally:
                if args.keep_output and files_dir.exists():
                    shutil.copytree(files_dir, args.out / "files", dirs_exist_ok=True)
    finally:  # after the tmpfs is unmounted
        shutil.rmtree(work, ignore_errors=True)


def _soak(
    args: argparse.Namespace,
    run_file: Path,
    n_file: int,
    total: int,
    duration_s: float,
    warmup_s: float,
    work: Path,
    files_dir: Path,
    endpoint: str,
    min_free: int,
    mounted: bool,
) -> int:
    extra = [
        f"output.min_free_bytes={min_free}",
        "output.compression=lz4",
        "output.retry_s=2.0",
        f"feed.silence_s={args.silence_s}",
        f"feed.source={SOURCE}",
        f"feed.key={KEY}",
        f"feed.max_message_bytes={MAX_MESSAGE_BYTES}",
        *args.serve_set,
    ]
    rows: list[dict[str, Any]] = []
    deleted: list[tuple[np.ndarray, int]] = []

    def count_deleted(p: Path) -> None:
        with h5py.File(p, "r") as f:
            tids = f[f"{FRAMES_GROUP}/train_id"][()].astype(np.int64)
            deleted.append((tids, int(f[f"{KEPT_GROUP}/train_id"].shape[0])))

    pruner = Pruner(files_dir, 3, on_delete=count_deleted)
    serve: subprocess.Popen[str] | None = None
    soak: Soak | None = None
    fault_thread: threading.Thread | None = None
    try:
        serve, url = start_serve(
            args.model, endpoint, "PULL", work, args, args.out / "serve.log", extra_sets=extra
        )
        soak = Soak(args, run_file, n_file, work, files_dir, endpoint, url, serve, min_free)
        soak.total = total
        sampler = Sampler(serve.pid, url, files_dir)
        soak.t0 = time.monotonic()
        soak.start_producer(final=False)
        fault_thread = threading.Thread(target=soak.run_faults, args=(duration_s,), daemon=True)
        fault_thread.start()
        next_t = soak.t0
        csv_path = args.out / "soak_faults.csv"
        deadline = soak.t0 + duration_s + 300.0
        with (
            csv_path.open("w", newline="") as fh,
            tqdm(
                total=round(duration_s),
                unit="s",
                file=sys.stderr,
                desc="soak_faults",
                bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]",
            ) as bar,
        ):
            writer = csv.DictWriter(fh, FIELDS)
            writer.writeheader()
            while serve.poll() is None and time.monotonic() < deadline and not soak.error:
                now = time.monotonic()
                if now >= next_t:
                    row = sample_row(soak, sampler, pruner)
                    last = soak.producers[-1]
                    row["ending"] = int(soak.final_started.is_set() and last.frames >= last.planned)
                    rows.append(row)
                    writer.writerow(row)
                    fh.flush()
                    bar.set_postfix(
                        fps=f"{row['throughput_fps']:.0f}",
                        rss=f"{row['rss_mb']:.0f}MB",
                        flight=f"{row['in_flight']:.0f}",
                        paused=f"{row['writer_paused']:.0f}",
                        replay=row["producer"],
                    )
                    free = shutil.disk_usage(files_dir).free
                    if (
                        soak.ballast is None
                        and free < min_free + PRUNE_MARGIN
                        and not soak.final_started.is_set()
                    ):
                        pruner.prune()
                    next_t += args.sample_s
                bar.update(min(now - soak.t0, bar.total) - bar.n)
                time.sleep(max(0.0, min(0.5, next_t - time.monotonic())))
            bar.update(bar.total - bar.n)
        if serve.poll() is None:  # the schedule failed, or no end in time: stop it cleanly
            soak.error = soak.error or "the streamer did not stop in time"
            for p in soak.producers:
                stop(p.proc)
            stop(serve)
        fault_thread.join(30)
        final = soak.producers[-1]
        with contextlib.suppress(subprocess.TimeoutExpired):
            final.proc.wait(timeout=60)
        for p in soak.producers:
            stop(p.proc)
            if p.reader is not None:
                p.reader.join(10)
            if p.ended_s is None:
                p.ended_s = soak.now()
        return report(args, soak, rows, deleted, pruner, warmup_s, duration_s, mounted)
    except KeyboardInterrupt:
        print("interrupted: stopping replays and streamer", file=sys.stderr)
        return 130
    finally:
        if soak is not None:
            for p in soak.producers:
                stop(p.proc)
        stop(serve)


def report(
    args: argparse.Namespace,
    soak: Soak,
    rows: list[dict[str, Any]],
    deleted: list[tuple[np.ndarray, int]],
    pruner: Pruner,
    warmup_s: float,
    duration_s: float,
    mounted: bool,
) -> int:
    files_dir = soak.files_dir
    summary_path = soak.work / "summary.json"
    summary: dict[str, Any] = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    acc = summary.get("accounting") or {}
    out = summary.get("output") or {}
    k = args.frames_per_message
    checks: list[tuple[str, str, bool]] = []

    # -- the balance, at the end and at every sample
    rec, cla = acc.get("received", -1), acc.get("classified", -2)
    rej, dro, fl = acc.get("rejected", 0), acc.get("dropped", 0), acc.get("in_flight", -1)
    checks.append(
        (
            "balance at the end: received = classified + rejected + dropped, 0 in flight",
            f"{rec} = {cla} + {rej} + {dro}, in flight {fl}",
            rec == cla + rej + dro and fl == 0,
        )
    )
    flight = np.array([r["in_flight"] for r in rows], float)
    got = flight[np.isfinite(flight)]
    lo, hi = (float(got.min()), float(got.max())) if len(got) else (math.nan, math.nan)
    checks.append(
        (
            f"balance at every sample: 0 <= in flight <= {IN_FLIGHT_MAX}",
            f"{len(got)}/{len(rows)} samples read, in flight {lo:g} … {hi:g}",
            len(got) > 0 and lo >= 0 and hi <= IN_FLIGHT_MAX,
        )
    )

    # -- the files: label rows, kept frames, .part files, the index
    parts = sorted(p.name for p in files_dir.glob(f"*{PART_SUFFIX}"))
    try:
        tids, kept_rows, models, n_files, _ = disk_tables(files_dir, deleted)
        disk_error = None
    except Exception as exc:  # reported as failed checks
        tids, kept_rows, models, n_files = np.zeros(0, np.int64), -1, (), 0
        disk_error = f"{type(exc).__name__}: {exc}"
    unrec = int(acc.get("labels_unrecorded", sum(out.get("unrecorded", {}).values())))
    checks.append(
        (
            "label rows on disk = classified - labels unrecorded",
            f"{len(tids)} rows ({n_files} files + {len(deleted)} deleted) = {cla} - {unrec}; "
            f"streamer: {acc.get('labels_on_disk')} on disk"
            + (f"; {disk_error}" if disk_error else ""),
            disk_error is None and len(tids) == cla - unrec,
        )
    )
    kept_total = summary.get("frames_kept")
    checks.append(
        (
            "kept frames on disk = hitstream_frames_kept_total",
            f"{kept_rows} = {kept_total} ({acc.get('kept_not_written', 0)} kept while paused, "
            "not written)",
            kept_rows == kept_total,
        )
    )
    checks.append(
        (
            "no .part file after the stop",
            ", ".join(parts) if parts else "none",
            not parts,
        )
    )
    finished = [p.name for p in list_run_files(files_dir, RUN_NAME)]
    index = summary.get("index")
    names: list[str] = []
    missing: list[str] = ["(no index)"]
    if index and Path(index).exists():
        with h5py.File(index, "r") as f:
            names = [n.decode() if isinstance(n, bytes) else str(n) for n in f["entry_1/files"][()]]
        missing = check_index(Path(index))
    checks.append(
        (
            "run index lists every finished file",
            f"{len(names)} indexed, {len(finished)} finished, {len(missing)} missing",
            bool(names) and names == finished and not missing,
        )
    )

    # -- producers: sent vs received, never seen accounted for
    fuzz_frames = int(
        sum(c.rejected + len(c.good) for b in soak.bursts for c in b if c.kind == "nonfinite")
    )
    sent = sum(p.frames for p in soak.producers)
    replay_rec = int(rec) - fuzz_frames
    never_seen = sent - replay_rec
    per = [producer_rows(p, tids, k) for p in soak.producers]
    missed = int(sum((summary.get("missed") or {}).values()))
    tails = all(r["tail_only"] for r in per)
    last_lost = per[-1]["never_seen"] if per else -1
    fuzz_rows = int(np.count_nonzero(tids < FIRST_TRAIN_ID))
    fuzz_good = sum(len(c.good) for b in soak.bursts for c in b)
    per_txt = "+".join(str(r["never_seen"]) for r in per)
    checks.append(
        (
            "replays' frames sent - received = never seen, accounted for",
            f"sent {sent} by {len(soak.producers)} replays, received {replay_rec} (+{fuzz_frames} "
            f"garbage frames); never seen {never_seen} = {per_txt} per replay (tails only: "
            f"{tails}); streamer's train-gap estimate {missed}",
            never_seen >= 0
            and never_seen == sum(r["never_seen"] for r in per)
            and tails
            and last_lost == 0
            and missed == never_seen
            and unrec == 0
            and fuzz_rows == fuzz_good,
        )
    )
    final = soak.producers[-1] if soak.producers else None
    eor = (summary.get("end_of_run") or {}).get("frames")
    killed = sum(1 for p in soak.producers if p.killed_s is not None)
    checks.append(
        (
            "3 replays SIGKILLed and restarted; the last one ended with its marker",
            f"{killed} killed, {len(soak.producers)} started; last sent "
            f"{final.frames if final else -1} of {final.planned if final else -1}, "
            f"end marker counts {eor}",
            killed == 3
            and len(soak.producers) == 4
            and final is not None
            and final.done is not None
            and final.frames == final.planned
            and eor == final.frames,
        )
    )

    # -- the feed's silence while a replay is down (down_s > feed.silence_s)
    silences = max((r["silences"] for r in rows if math.isfinite(r["silences"])), default=0)
    silent_rows = [r for r in rows if r["feed_silent"] == 1]
    last_read = [r for r in rows if math.isfinite(r["silences"])]
    checks.append(
        (
            "feed silence noticed at every restart, then cleared",
            f"{silences:.0f} silence(s) for {killed} restarts, {len(silent_rows)} samples silent, "
            f"silent at the last sample: {bool(last_read and last_read[-1]['feed_silent'])}",
            silences >= killed and bool(last_read) and last_read[-1]["feed_silent"] != 1,
        )
    )

    # -- garbage
    tally = Tally()
    for b in soak.bursts:
        for c in b:
            tally.add(c)
    refusals: dict[str, float] = dict(summary.get("rejected") or {})
    for reason, n in (summary.get("messages_rejected") or {}).items():
        refusals[reason] = refusals.get(reason, 0) + n
    problems = tally.check(refusals)
    msg_expected = sum(1 for b in soak.bursts for c in b if c.bad and c.kind != "nonfinite")
    msg_counted = int(sum((summary.get("messages_rejected") or {}).values()))
    checks.append(
        (
            "garbage counted: messages_rejected (and nonfinite frames) by reason",
            f"{tally.messages} sent in {len(soak.bursts)} bursts: {msg_counted} whole messages "
            f"refused of {msg_expected} expected, {int(refusals.get('nonfinite', 0))} frames "
            "refused (nonfinite)" + (f"; {'; '.join(problems)}" if problems else ""),
            len(soak.bursts) == 2 and not problems and msg_counted == msg_expected,
        )
    )

    # -- the full disk
    paused = [r for r in rows if r["writer_paused"] == 1]
    span = (
        f"paused {paused[0]['t_s']:.0f}–{paused[-1]['t_s']:.0f} s, "
        f"{max(r['labels_backlog'] for r in paused):.0f} label rows held at most"
        if paused
        else "never seen paused"
    )
    checks.append(
        (
            "output paused once (disk full) and resumed",
            f"{out.get('pauses')} pause(s), paused at the end: {out.get('paused')!r}; {span}; "
            f"labels unrecorded {unrec}",
            out.get("pauses") == 1 and not out.get("paused") and bool(paused) and unrec == 0,
        )
    )

    # -- RSS
    steady = [r for r in rows if not r["ending"] and math.isfinite(r["rss_mb"])]
    post = [r for r in steady if r["t_s"] >= warmup_s]
    rss_warm = post[0]["rss_mb"] if post else math.nan
    rss_end = steady[-1]["rss_mb"] if steady else math.nan
    rss_max = max((r["rss_mb"] for r in post), default=math.nan)
    change = rss_end / rss_warm - 1 if post else math.nan
    table = analyse([r for r in rows if not r["ending"]], warmup_s)
    rss = next(e for e in table if e["quantity"] == "rss_mb")
    checks.append(
        (
            f"RSS flat: end within ±{RSS_TOL:.0%} of after warm-up ({warmup_s:.0f} s)",
            f"{rss_warm:.0f} MB → {rss_end:.0f} MB ({change:+.1%}), max {rss_max:.0f} MB; "
            f"last half's trend {rss['late_change_30min']:+.1f} MB/30 min ({rss['verdict']})",
            math.isfinite(change) and abs(change) <= RSS_TOL,
        )
    )

    # -- hot swap
    swap = soak.swap
    answer = swap.get("answer") or {}
    checks.append(
        (
            f"hot swap to {args.swap_model.name}: POST /model answered 200",
            f"{swap.get('status')} {json.dumps(answer)[:90]}; models in the files: {len(models)}",
            swap.get("status") == 200 and bool(answer.get("ok")) and len(models) == 2,
        )
    )

    # -- the stop
    err = summary.get("error") or ""
    other = [w for w in ("receiver:", "writer:", "inference:", "index:", "feed:") if w in err]
    checks.append(
        (
            "streamer stopped at the end marker; no error but the output pause",
            f"exit {soak.serve.returncode}; error: {err[:100]!r}"
            + (f" (+{other})" if other else ""),
            soak.serve.returncode in (0, 1)
            and summary.get("end_of_run") is not None
            and err.startswith("output paused 1 time(s)")
            and not other
            and soak.error is None,
        )
    )

    # -- write and print
    plot(rows, soak.events, args.out / "soak_faults.png", warmup_s, args.rate, rss_warm)
    post_fps = [r["throughput_fps"] for r in post if math.isfinite(r["throughput_fps"])]
    result = {
        "settings": {k_: str(v) if isinstance(v, Path) else v for k_, v in vars(args).items()}
        | {
            "tmpfs": mounted,
            "min_free_bytes": soak.min_free,
            "duration_s": duration_s,
            "warmup_s": warmup_s,
            "planned_frames": soak.total,
        },
        "timeline": [e.__dict__ for e in soak.events],
        "producers": [p.as_dict() | r for p, r in zip(soak.producers, per, strict=True)],
        "garbage": {
            "messages": tally.messages,
            "by_kind": dict(Counter(c.kind for b in soak.bursts for c in b)),
            "by_reason_expected": dict(tally.by_reason),
            "refusals_counted": refusals,
            "problems": problems,
        },
        "frames": {
            "sent_by_replays": sent,
            "received": rec,
            "received_from_replays": replay_rec,
            "garbage_frames_received": fuzz_frames,
            "never_seen": never_seen,
            "classified": cla,
            "rejected": rej,
            "dropped": dro,
            "kept": kept_total,
            "label_rows_on_disk": len(tids),
            "kept_rows_on_disk": kept_rows,
            "missed_train_gap": missed,
            "streamer_never_seen": acc.get("never_seen"),
            "streamer_producer_frames": acc.get("producer_frames"),
        },
        "output": out,
        "files": {
            "finished": len(finished),
            "deleted": pruner.deleted_files,
            "deleted_mb": pruner.deleted_bytes / 1e6,
        },
        "swap": swap,
        "rss_mb": {"after_warmup": rss_warm, "end": rss_end, "max": rss_max},
        "mean_fps_after_warmup": float(np.mean(post_fps)) if post_fps else math.nan,
        "latency_ms": summary.get("latency"),
        "summary_error": summary.get("error"),
        "soak_error": soak.error,
        "samples": len(rows),
        "table": table,
        "checks": [{"check": c, "measured": m, "ok": ok} for c, m, ok in checks],
    }
    (args.out / "soak_faults.json").write_text(json.dumps(result, indent=2, default=str) + "\n")

    print(f"\ntimeline ({len(soak.events)} events):")
    for e in soak.events:
        print(f"  {e.t_s:7.1f} s  {e.name}" + (f": {e.detail}" if e.detail else ""))
    print(f"\nsamples: {len(rows)} every {args.sample_s:g} s; drift after warm-up (info):")
    print(format_table([e for e in table if e["quantity"] in {q.name for q in QUANTITIES}]))
    print(f"\nstreamer's accounting: {json.dumps(acc)}")
    print(f"results in {args.out}/ (soak_faults.csv, soak_faults.png, soak_faults.json)")
    if soak.error:
        print(f"fault schedule: {soak.error}")
    passed = all(ok for _, _, ok in checks)
    print()
    print(format_checks(checks))
    print(f"soak_faults {'PASSED' if passed else 'FAILED'}")
    return 0 if passed else 1


if __name__ == "__main__":
    raise SystemExit(main())
