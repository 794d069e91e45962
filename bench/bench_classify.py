"""``streamer classify`` on Dask against the engine alone: frames/s, cluster start-up and
shutdown, and the scheduling overhead per chunk.

Measures, in one run and with the same bundle:

* **engine alone** (the baseline): :class:`streamer.engine.Engine` inferring frames already
  in memory (the first run's, with that run's background), in batches of the size the
  workers use, with as many onnxruntime threads as the cluster has threads in all (median
  of ``--repeats`` passes after a warm-up), as ``bench_engine.py`` does;
* **read only**: reading the same runs' frames from their files (one thread), the part of a
  chunk the engine-alone figure leaves out;
* **no Dask**: :func:`streamer.classify_chunk.classify_chunk` on each run in this process,
  one chunk after the other (read, map, infer, decide, write; the engine's default threads);
* **classify_runs** (:mod:`streamer.classify`, what ``streamer classify`` runs) on
  ``--runs`` simulated runs of ``--frames`` frames (or on ``--job-runs`` runs that each
  join ``--stitch`` of them in an HDF5 virtual dataset: runs of a shift's length from a few
  simulated files that stay in the page cache), once per ``--clusters`` entry
  (``WxT``: W worker processes of T threads, a local cluster started and closed by
  ``classify_runs`` itself, as the command does). Reported: the whole call (start-up:
  bundle, plan, cluster and client; shutdown: closing the cluster), the work phase between
  them (every run's background estimate, the chunks, the run indexes) and the steady rate of
  the chunks alone (frames over the chunks' own ``seconds`` divided by the threads), each
  as a ratio to the engine alone; and frames/s per worker thread (the work phase's rate over
  the threads), the figure to size a cluster with;
* **scheduling overhead**: ``classify_runs`` on ``--overhead-runs`` runs of
  ``--overhead-frames`` frames (one chunk each; a few simulated files hard-linked under
  different names), ``--overhead-background none`` by default so that every task is a
  chunk: overhead = wall time − Σ chunk seconds / threads, per chunk and as a share of the
  chunk work (Σ seconds / threads), over the whole call and over the work phase alone.

Simulated inputs are written once into ``--data`` (gzip, as ``hitstream simulate`` writes
archives; ``--compression none`` for uncompressed) and reused by later runs. The cluster's
start and close are timed by wrapping ``dask.distributed.LocalCluster`` in this process.
Results go to ``--json`` (default ``bench/results/classify.json``); a table is printed last.
Numbers from a shared machine are noisy: compare rows of one run only.

    python bench/bench_classify.py [--model models/fast] [--runs 4 --frames 2000]
        [--job-runs 2 --stitch 10]
        [--clusters 1x2,2x1] [--overhead-runs 200 --overhead-frames 1000] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from unittest import mock

# Dask's own INFO lines are for its developers (read when distributed is imported)
os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")

import h5py
import numpy as np
from tqdm import tqdm

from hitstream.bundle import load_bundle
from streamer.classify import ClassifyConfig, RunJob, classify_runs, run_background
from streamer.classify_chunk import ChunkSpec, classify_chunk, engine_for
from streamer.engine import Engine, EngineConfig

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "classify.json"
DATASET = "data"
MIN_PASS_S = 1.0  # each timed pass of the engine alone lasts at least this long


# -- inputs -------------------------------------------------------------------------------


def _has_frames(path: Path, frames: int) -> bool:
    try:
        with h5py.File(path, "r") as f:
            return DATASET in f and f[DATASET].shape[0] == frames
    except (OSError, KeyError):
        return False


def simulated_runs(
    data: Path, prefix: str, count: int, frames: int, compression: str, first_seed: int
) -> list[Path]:
    """``count`` simulated runs of ``frames`` frames (seeds ``first_seed``...), reused."""
    from hitstream.simulate import simulate_to_file

    data.mkdir(parents=True, exist_ok=True)
    paths = [data / f"{prefix}{k:02d}-{frames}-{compression}.h5" for k in range(count)]
    todo = [(k, p) for k, p in enumerate(paths) if not _has_frames(p, frames)]
    for k, path in tqdm(todo, desc=f"simulate {prefix} runs", unit="run", disable=not todo):
        simulate_to_file(
            path,
            frames,
            seed=first_seed + k,
            dataset=DATASET,
            overwrite=True,
            compression=None if compression == "none" else compression,
            progress=False,
        )
    return paths


def linked_runs(sources: list[Path], directory: Path, count: int) -> list[Path]:
    """``count`` names for the ``sources`` in turn (hard links; copies where links fail)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    paths = []
    for k in range(count):
        src, dst = sources[k % len(sources)], directory / f"o{k:04d}.h5"
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)
        paths.append(dst)
    return paths


def stitched_runs(sources: list[Path], directory: Path, count: int, per_run: int) -> list[Path]:
    """``count`` runs of ``per_run`` sources each (in turn), each an HDF5 virtual dataset
    over them: runs as long as a shift's (10⁴–10⁵ frames) from a few simulated files that
    stay in the page cache. ``per_run`` 1 and ``count`` = sources: the sources themselves."""
    if per_run == 1 and count == len(sources):
        return sources
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    paths = []
    for k in range(count):
        parts = [sources[(k * per_run + j) % len(sources)] for j in range(per_run)]
        shapes = []
        for part in parts:
            with h5py.File(part, "r") as f:
                shapes.append((f[DATASET].shape, f[DATASET].dtype))
        n = sum(sh[0] for sh, _ in shapes)
        layout = h5py.VirtualLayout(shape=(n, *shapes[0][0][1:]), dtype=shapes[0][1])
        pos = 0
        for part, (sh, _dt) in zip(parts, shapes, strict=True):
            layout[pos : pos + sh[0]] = h5py.VirtualSource(str(part.resolve()), DATASET, shape=sh)
            pos += sh[0]
        dst = directory / f"long{k:02d}.h5"
        with h5py.File(dst, "w") as f:
            f.create_virtual_dataset(DATASET, layout)
        paths.append(dst)
    return paths


# -- the baselines ------------------------------------------------------------------------


def engine_alone(
    model: Path,
    frames: np.ndarray,
    background: np.ndarray | None,
    threads: int,
    provider: str,
    batch: int,
    repeats: int,
) -> dict[str, Any]:
    """Median frames/s of ``Engine.infer`` over the in-memory ``frames``."""
    engine = Engine(
        load_bundle(model),
        EngineConfig(provider=provider, max_batch=batch, intra_op_threads=threads),
    )
    b = engine.max_batch

    def one_pass() -> float:  # through the frames until MIN_PASS_S have gone
        n, t = 0, time.perf_counter()
        while n == 0 or time.perf_counter() - t < MIN_PASS_S:
            for a in range(0, len(frames), b):
                engine.infer(frames[a : a + b], background)
            n += len(frames)
        return n / (time.perf_counter() - t)

    one_pass()  # warm-up
    rates = [one_pass() for _ in range(repeats)]
    return {
        "frames_per_s": statistics.median(rates),
        "passes": rates,
        "threads": threads,
        "batch": b,
        "provider": engine.provider,
        "frames": len(frames),
    }


def read_only(runs: list[Path]) -> dict[str, Any]:
    """Frames/s of reading the runs' frames as a chunk does (blocks of 256, one thread)."""
    from streamer.classify_chunk import READ_FRAMES

    n, t = 0, time.perf_counter()
    for path in runs:
        with h5py.File(path, "r") as f:
            d = f[DATASET]
            for a in range(0, d.shape[0], READ_FRAMES):
                block = np.ascontiguousarray(d[a : a + READ_FRAMES], dtype=np.float32)
                n += len(block)
    seconds = time.perf_counter() - t
    return {"frames_per_s": n / seconds, "frames": n, "seconds": seconds}


def no_dask(model: Path, runs: list[Path], provider: str, batch: int, tmp: Path) -> dict[str, Any]:
    """Each run as one chunk in this process (the run's background estimated first)."""
    bundle = load_bundle(model)
    takes_bg = bundle.background_input is not None
    resolved = str(model.resolve())
    engine_for(resolved, provider, batch, 1.0)  # loaded once, as on a worker
    n = 0
    chunk_s = bg_s = 0.0
    for k, path in enumerate(runs):
        t = time.perf_counter()
        bg = run_background(str(path), DATASET, None, bundle.geometry) if takes_bg else None
        bg_s += time.perf_counter() - t
        with h5py.File(path, "r") as f:
            frames = int(f[DATASET].shape[0])
        spec = ChunkSpec(
            run=f"nd{k}",
            chunk_id="c000000",
            source=str(path),
            dataset=DATASET,
            start=0,
            stop=frames,
            model=resolved,
            staging=str(tmp / f"nd{k}"),
            provider=provider,
            max_batch=batch,
        )
        t = time.perf_counter()
        result = classify_chunk(spec, bg)
        chunk_s += time.perf_counter() - t
        n += result.frames
    shutil.rmtree(tmp, ignore_errors=True)
    return {
        "frames": n,
        "chunk_seconds": chunk_s,
        "background_seconds": bg_s,
        "frames_per_s": n / chunk_s,
        "frames_per_s_with_background": n / (chunk_s + bg_s),
    }


# -- classify_runs, timed -----------------------------------------------------------------


@dataclass
class Timeline:
    """Wall-clock stamps (``time.time()``, as the task stream's) of one classify_runs call,
    and the scheduler's task-stream records (one per task: key, worker, start and stop of
    its computation)."""

    start: float = 0.0
    cluster_init: float | None = None
    cluster_up: float | None = None
    client_up: float | None = None
    close_start: float | None = None
    close_end: float | None = None
    end: float = 0.0
    tasks: list[dict[str, Any]] = field(default_factory=list)


def timed_cluster_class(timeline: Timeline) -> type:
    """A LocalCluster that stamps its start and its close into ``timeline`` and keeps its
    scheduler's task stream (the scheduler runs in this process)."""
    from dask.distributed import LocalCluster
    from distributed.diagnostics.task_stream import TaskStreamPlugin

    class TimedLocalCluster(LocalCluster):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            timeline.cluster_init = time.time()
            super().__init__(*args, **kwargs)
            timeline.cluster_up = time.time()
            scheduler = self.scheduler
            assert scheduler is not None  # a LocalCluster's scheduler runs in this process
            plugin = scheduler.plugins.get(TaskStreamPlugin.name)
            if plugin is None:
                plugin = TaskStreamPlugin(scheduler)
                scheduler.add_plugin(plugin)
            self._stream = plugin

        def close(self, *args: Any, **kwargs: Any) -> Any:
            if timeline.close_start is None:
                timeline.close_start = time.time()
                timeline.tasks = list(self._stream.buffer)
            try:
                return super().close(*args, **kwargs)
            finally:
                if timeline.close_end is None:
                    timeline.close_end = time.time()

    return TimedLocalCluster


def phases(tl: Timeline, slots: int) -> dict[str, float]:
    """The work phase (client up .. cluster close) split by the task stream: before the
    first task computes (planning, submission), the tasks' span, after the last (the
    driver: results, run indexes); compute seconds of background and chunk tasks, and the
    thread-seconds of the span that no task computed."""
    assert tl.client_up is not None and tl.close_start is not None
    kinds = {"background": 0.0, "chunk": 0.0, "other": 0.0}
    starts, stops = [], []
    for rec in tl.tasks:
        key = str(rec.get("key", ""))
        kind = (
            "chunk" if "classify-" in key else "background" if "run_background" in key else "other"
        )
        for ss in rec.get("startstops", []):
            if ss.get("action") == "compute":
                kinds[kind] += ss["stop"] - ss["start"]
                starts.append(ss["start"])
                stops.append(ss["stop"])
    if not starts:
        return {}
    first, last = min(starts), max(stops)
    span = last - first
    return {
        "before_tasks_s": first - tl.client_up,
        "tasks_span_s": span,
        "after_tasks_s": tl.close_start - last,
        "background_compute_s": kinds["background"],
        "chunk_compute_s": kinds["chunk"],
        "other_compute_s": kinds["other"],
        "idle_thread_s": slots * span - sum(kinds.values()),
        "tasks": len(tl.tasks),
    }


def run_classify(
    runs: list[Path],
    model: Path,
    out: Path,
    workers: int,
    threads: int,
    *,
    background: str,
    provider: str,
    batch: int,
    chunk_frames: int,
    progress: bool,
) -> dict[str, Any]:
    """One ``classify_runs`` call with its own local cluster; timings and chunk records."""
    shutil.rmtree(out, ignore_errors=True)
    cfg = ClassifyConfig(
        model=model,
        out=out,
        workers=workers,
        threads_per_worker=threads,
        provider=provider,
        max_batch=batch,
        background=background,
        chunk_frames=chunk_frames,
        progress=progress,
    )
    tl = Timeline()

    def on_start(link: str) -> None:
        tl.client_up = time.time()

    with mock.patch("dask.distributed.LocalCluster", timed_cluster_class(tl)):
        tl.start = time.time()
        jobs: list[RunJob] = classify_runs(runs, cfg, on_start=on_start)
        tl.end = time.time()
    errors = [f"{j.name}: {j.error}" for j in jobs if j.error]
    if errors:
        raise RuntimeError(f"classify_runs failed: {errors[:3]}")
    records = [r for j in jobs for r in j.results]
    frames = sum(int(r["frames"]) for r in records)
    chunk_s = sum(float(r["seconds"]) for r in records)
    slots = workers * threads
    wall = tl.end - tl.start
    assert tl.client_up is not None and tl.close_start is not None
    startup = tl.client_up - tl.start
    shutdown = tl.end - tl.close_start
    work = tl.close_start - tl.client_up
    cluster_start = (tl.cluster_up or tl.client_up) - (tl.cluster_init or tl.start)
    shutil.rmtree(out, ignore_errors=True)
    return {
        "workers": workers,
        "threads_per_worker": threads,
        "threads": slots,
        "runs": len(jobs),
        "chunks": len(records),
        "frames": frames,
        "background": background,
        "chunk_frames": chunk_frames,
        "wall_s": wall,
        "startup_s": startup,
        "cluster_start_s": cluster_start,
        "work_s": work,
        "shutdown_s": shutdown,
        "chunk_seconds_sum": chunk_s,
        "chunk_seconds_max": max((float(r["seconds"]) for r in records), default=0.0),
        "workers_seen": len({r.get("worker") for r in records}),
        "fps_wall": frames / wall,
        "fps_work": frames / work,
        "fps_steady": frames / (chunk_s / slots) if chunk_s else float("nan"),
        "fps_per_thread": frames / work / slots,
        # wall time the chunks' own seconds do not explain, per chunk
        "overhead_s": wall - chunk_s / slots,
        "overhead_work_s": work - chunk_s / slots,
        "phases": phases(tl, slots),
    }


# -- main ---------------------------------------------------------------------------------


def parse_clusters(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        w, _, t = item.strip().lower().partition("x")
        if not (w.isdigit() and t.isdigit()) or int(w) < 1 or int(t) < 1:
            raise argparse.ArgumentTypeError(f"cluster {item!r}: WxT, e.g. 2x1")
        out.append((int(w), int(t)))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model",
        type=Path,
        default=ROOT / "models" / "fast",
        help="bundle (models/default for the larger one)",
    )
    p.add_argument("--runs", type=int, default=4, help="simulated runs for the rates")
    p.add_argument("--frames", type=int, default=2000, help="frames per run for the rates")
    p.add_argument(
        "--clusters",
        type=parse_clusters,
        default=parse_clusters("1x2,2x1"),
        help="local clusters WORKERSxTHREADS, comma-separated",
    )
    p.add_argument("--job-runs", type=int, default=0, help="runs classified [--runs]")
    p.add_argument(
        "--stitch", type=int, default=1,
        help="simulated runs joined into each classified run (a virtual dataset) [1]",
    )  # fmt: skip
    p.add_argument("--chunk-frames", type=int, default=ClassifyConfig.chunk_frames)
    p.add_argument("--background", default="run", help="classify's --background (rates)")
    p.add_argument("--provider", default="auto")
    p.add_argument("--batch", type=int, default=0, help="frames per inference (0: auto)")
    p.add_argument("--engine-frames", type=int, default=1024, help="frames in memory")
    p.add_argument("--repeats", type=int, default=3, help="engine passes (median)")
    p.add_argument("--overhead-runs", type=int, default=200, help="0: no overhead part")
    p.add_argument("--overhead-frames", type=int, default=1000)
    p.add_argument("--overhead-files", type=int, default=2, help="distinct simulated files")
    p.add_argument("--overhead-cluster", type=parse_clusters, default=parse_clusters("2x1"))
    p.add_argument(
        "--overhead-background",
        default="none",
        help="none: chunks only; run: a background task per run as well",
    )
    p.add_argument(
        "--compression", choices=("gzip", "none"), default="gzip", help="of the simulated inputs"
    )
    p.add_argument("--data", type=Path, help="simulated inputs, kept [a temporary directory]")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--note",
        default="a shared machine is noisy: compare rows of one run only",
        help="what to say about the host in the table and the JSON",
    )
    p.add_argument("--json", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    progress = not args.no_progress
    data = args.data or Path(tempfile.mkdtemp(prefix="hitstream-bench-classify-"))
    data = data.resolve()  # workers of a cluster need absolute paths
    model = args.model.resolve()
    bundle = load_bundle(model)
    t_bench = time.perf_counter()

    simulated = simulated_runs(data, "run", args.runs, args.frames, args.compression, 0)
    job_runs = args.job_runs or args.runs
    runs = stitched_runs(simulated, data / "stitched", job_runs, args.stitch)
    over_src: list[Path] = []
    if args.overhead_runs > 0:
        over_src = simulated_runs(
            data, "tiny", args.overhead_files, args.overhead_frames, args.compression, 100
        )

    # the baseline: the engine alone on frames in memory, with the first run's background,
    # measured before the first cluster and again after each one (a shared host drifts): each
    # cluster is compared with the mean of the measurements just before and after it
    bg = None
    if bundle.background_input is not None and args.background == "run":
        bg = run_background(str(runs[0]), DATASET, None, bundle.geometry).map
    thread_counts = sorted({w * t for w, t in args.clusters})

    def engines_now(desc: str) -> dict[int, dict[str, Any]]:
        with h5py.File(runs[0], "r") as f:
            frames = np.asarray(f[DATASET][: args.engine_frames], np.float32)
        return {
            threads: engine_alone(
                model, frames, bg, threads, args.provider, args.batch, args.repeats
            )
            for threads in tqdm(thread_counts, desc=desc, disable=not progress)
        }

    engine_runs = [engines_now("engine alone")]
    engines = engine_runs[0]
    reading = read_only(runs)
    plain = no_dask(model, runs, args.provider, args.batch, data / "no-dask")

    clusters = []
    for w, t in args.clusters:
        r = run_classify(
            runs,
            model,
            data / f"out-{w}x{t}",
            w,
            t,
            background=args.background,
            provider=args.provider,
            batch=args.batch,
            chunk_frames=args.chunk_frames,
            progress=progress,
        )
        engine_runs.append(engines_now("engine alone, again"))
        bracket = [e[w * t]["frames_per_s"] for e in engine_runs[-2:]]
        base = statistics.mean(bracket)
        r["engine_fps"] = base
        r["engine_fps_bracket"] = bracket
        for k in ("wall", "work", "steady"):
            r[f"ratio_{k}"] = r[f"fps_{k}"] / base
        clusters.append(r)

    overhead = None
    if args.overhead_runs > 0:
        (w, t) = args.overhead_cluster[0]
        many = linked_runs(over_src, data / "many", args.overhead_runs)
        o = run_classify(
            many,
            model,
            data / "out-many",
            w,
            t,
            background=args.overhead_background,
            provider=args.provider,
            batch=args.batch,
            chunk_frames=args.chunk_frames,
            progress=progress,
        )
        shutil.rmtree(data / "many", ignore_errors=True)
        work = o["chunk_seconds_sum"] / o["threads"]
        o["overhead_per_chunk_s"] = o["overhead_s"] / o["chunks"]
        o["overhead_share"] = o["overhead_s"] / work
        o["overhead_work_per_chunk_s"] = o["overhead_work_s"] / o["chunks"]
        o["overhead_work_share"] = o["overhead_work_s"] / work
        overhead = o

    if args.data is None:
        shutil.rmtree(data, ignore_errors=True)
    results = {
        "bench": "classify",
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {
            "cpus": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
            "note": args.note,
        },
        "model": bundle.label,
        "settings": {
            k: (_shown(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k not in ("json", "data")
        },
        "input": {
            "runs": job_runs,
            "frames": args.frames * args.stitch,
            "simulated_runs": args.runs,
            "simulated_frames": args.frames,
            "compression": args.compression,
            "frame_shape": list(bundle.frame_shape),
        },
        "engine_alone": {str(k): v for k, v in engines.items()},
        "engine_alone_runs": [{str(k): v for k, v in e.items()} for e in engine_runs],
        "read_only": reading,
        "no_dask": plain,
        "classify_runs": clusters,
        "overhead": overhead,
        "seconds": time.perf_counter() - t_bench,
    }
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1, default=str) + "\n", encoding="utf-8")
    print(format_table(results))
    return 0


def _shown(path: Path) -> str:
    """A path relative to the repository when it is inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what}s"


def format_table(r: dict[str, Any]) -> str:
    inp = r["input"]
    lines = [
        f"\nstreamer classify vs engine alone, model {r['model']}, {inp['runs']} runs × "
        f"{inp['frames']} frames {tuple(inp['frame_shape'])} ({inp['compression']}), "
        f"{r['host']['cpus']} CPUs ({r['host']['note']})",
        f"{'case':<44} {'frames/s':>9} {'× engine':>9}  notes",
    ]
    for threads, e in r["engine_alone"].items():
        lines.append(
            f"{f'engine alone, {threads} threads (in memory)':<44} "
            f"{e['frames_per_s']:>9.0f} {1.0:>9.2f}  batch {e['batch']}, "
            f"{e['provider']}"
        )
    later = r.get("engine_alone_runs", [])[1:]
    if later:
        lines.append(
            f"{'  again after each cluster':<44} "
            + ", ".join(f"{e[k]['frames_per_s']:.0f}" for e in later for k in e)
            + " (each cluster against the mean of the runs before and after it)"
        )
    base0 = next(iter(r["engine_alone"].values()))["frames_per_s"]
    rd, nd = r["read_only"], r["no_dask"]
    lines.append(
        f"{'read input only (1 thread)':<44} {rd['frames_per_s']:>9.0f} "
        f"{rd['frames_per_s'] / base0:>9.2f}  h5py, blocks of 256"
    )
    lines.append(
        f"{'classify_chunk, no Dask (1 process)':<44} {nd['frames_per_s']:>9.0f} "
        f"{nd['frames_per_s'] / base0:>9.2f}  "
        f"{nd['frames_per_s_with_background']:.0f} with the background "
        "estimates"
    )
    for c in r["classify_runs"]:
        name = f"classify_runs, {_count(c['workers'], 'worker')} × " + _count(
            c["threads_per_worker"], "thread"
        )
        lines.append(
            f"{name + ', whole call':<44} {c['fps_wall']:>9.0f} "
            f"{c['ratio_wall']:>9.2f}  start-up {c['startup_s']:.1f} s (cluster "
            f"{c['cluster_start_s']:.1f} s), shutdown {c['shutdown_s']:.1f} s"
        )
        lines.append(
            f"{'  work phase (backgrounds, chunks, indexes)':<44} "
            f"{c['fps_work']:>9.0f} {c['ratio_work']:>9.2f}  {c['work_s']:.1f} s, "
            f"{c['fps_per_thread']:.0f} frames/s per worker thread"
        )
        ph = c.get("phases") or {}
        if ph:
            lines.append(
                f"{'':<66}= {ph['before_tasks_s']:.1f} s to the first task + "
                f"{ph['tasks_span_s']:.1f} s of tasks + {ph['after_tasks_s']:.1f} s after the "
                "last (driver: run indexes)"
            )
            lines.append(
                f"{'':<66}  tasks' compute: backgrounds {ph['background_compute_s']:.1f} s, "
                f"chunks {ph['chunk_compute_s']:.1f} s; {ph['idle_thread_s']:.1f} thread-s idle"
            )
        lines.append(
            f"{'  chunks steady (Σ chunk s / threads)':<44} {c['fps_steady']:>9.0f} "
            f"{c['ratio_steady']:>9.2f}  {c['chunks']} chunks, longest "
            f"{c['chunk_seconds_max']:.1f} s"
        )
    o = r["overhead"]
    if o is not None:
        lines.append(
            f"\nscheduling overhead: {o['runs']} runs × {r['settings']['overhead_frames']} "
            f"frames ({o['chunks']} chunks, background {o['background']}), "
            f"{_count(o['workers'], 'worker')} × {_count(o['threads_per_worker'], 'thread')}: "
            f"wall {o['wall_s']:.1f} s, "
            f"Σ chunk s / threads {o['chunk_seconds_sum'] / o['threads']:.1f} s"
        )
        lines.append(
            f"  whole call: {1000 * o['overhead_per_chunk_s']:.0f} ms per chunk, "
            f"{100 * o['overhead_share']:.1f} % of the chunk work (start-up "
            f"{o['startup_s']:.1f} s, shutdown {o['shutdown_s']:.1f} s)"
        )
        lines.append(
            f"  work phase: {1000 * o['overhead_work_per_chunk_s']:.0f} ms per chunk, "
            f"{100 * o['overhead_work_share']:.1f} % of the chunk work "
            f"({o['fps_work']:.0f} frames/s)"
        )
        ph = o.get("phases") or {}
        if ph:
            lines.append(
                f"  where it goes: {ph['before_tasks_s']:.1f} s to the first task, "
                f"{ph['idle_thread_s']:.1f} thread-s idle between tasks, "
                f"{ph['after_tasks_s']:.1f} s after the last (driver: {o['runs']} run indexes); "
                f"task compute − chunk seconds "
                f"{ph['chunk_compute_s'] - o['chunk_seconds_sum']:.1f} s (markers, moves)"
            )
    lines.append(f"\n{r['seconds']:.0f} s in all; JSON with every number and setting")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
