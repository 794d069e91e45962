"""Re-classify archived runs at scale on Dask: the library behind ``streamer classify``.

Each input file (an ``(N, H, W)`` HDF5/CXI dataset, or ``(N, modules, ss, fs)`` with a
``[detector]`` config) is one run. Its frames are cut into chunks (:mod:`streamer.classify_plan`)
that Dask workers classify (:mod:`streamer.classify_chunk`) with the live streamer's engine,
decision, detector map and writer. By default a local cluster sized to the machine runs
them (``n_workers`` processes of ``threads_per_worker`` threads, on 127.0.0.1); with
``scheduler`` an existing cluster does (SLURM, Kubernetes: see ``deploy/dask/``). Workers
load the bundle once; on a worker with a GPU the CUDA provider is used (``provider="auto"``).

Background (bundles that take one): ``"run"`` estimates each run's background from up to
1,000 of its frames, in spans of 16 spread evenly over the run
(:func:`hitstream.background.estimate_run_background`, what the trainer uses), and
classifies every frame with it; ``"recorded:INDEX"`` gives each frame the map it had in an
earlier classification (a run index, e.g. the live streamer's), which reproduces the live
labels exactly; ``"none"`` gives zeros.

Resume: chunks already done with the same model and input are skipped; ``force`` redoes
the run. One job per run and output at a time (a lock, as the live workers take). The
labels a run had before (an earlier classification in the same output, or ``compare``)
are compared with the new ones in the report (:mod:`streamer.classify_report`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.background import BackgroundSnapshot, estimate_run_background
from hitstream.bundle import load_bundle
from hitstream.detectors import DetectorConfig
from hitstream.errors import ConfigError, HitstreamError, InputDataError
from hitstream.h5input import list_frame_datasets, open_frame_dataset
from streamer.classify_chunk import (
    ChunkResult,
    ChunkSpec,
    RecordedBackground,
    classify_chunk,
    id_key,
)
from streamer.classify_euxfel import EuxfelSource, TrainReader, describe_run
from streamer.classify_plan import ChunkRange, RunState, identity_of, plan_chunks
from streamer.cxi_layout import check_name
from streamer.detector_map import DetectorMap
from streamer.readback import FrameTable, read_run
from streamer.run_index import build_run_index
from streamer.worker_lock import WorkerLock

log = logging.getLogger(__name__)

# frames of a run behind its background estimate (at most): the shipped bundles were trained
# on maps of 100-400 empty frames and scored on runs of 1,000; 4,000 gave the same labels
# (3 of 6,000 frames differed) at 1.5-9x the cost, a tenth of a whole job on 2 cores
BACKGROUND_SAMPLE = 1000
BACKGROUND_SHARE = 0.25  # ... and at most this share of the run (at least MIN_SAMPLE frames)
BACKGROUND_MIN_SAMPLE = 200  # the streamer's warm-up
BACKGROUND_SPAN = 16  # consecutive frames read at each place of the run sampled
BACKGROUND_MODES = ("run", "none", "recorded:INDEX")
# the local cluster's housekeeping, less often than Dask's defaults (20 ms event-loop ticks,
# 100 ms memory polls, 500 ms system monitor): the driver's CPU in a 28 s job on 2 cores
# 1.7-2.1 s -> 0.9 s; the workers' CPU, the job's rate and the per-chunk cost moved within
# the noise
QUIET_LOCAL_CLUSTER = {
    "distributed.admin.tick.interval": "500ms",
    "distributed.admin.system-monitor.interval": "2s",
    "distributed.worker.memory.monitor-interval": "1s",
}


@dataclass(frozen=True)
class ClassifyConfig:
    """How ``streamer classify`` runs (command-line options take their defaults here)."""

    model: Path = Path("models/default")
    out: Path = Path("classified")
    dataset: str | None = None  # None: the file's only (N, H, W) dataset
    chunk_frames: int = 4096
    scheduler: str | None = None  # None: a local cluster on 127.0.0.1
    workers: int = 0  # local cluster: worker processes (0: one per core)
    threads_per_worker: int = 1
    frames_per_train: int = 32  # frame identities as `streamer replay` gives them
    first_train_id: int = 1
    photon_unit: float = 1.0
    provider: str = "auto"
    max_batch: int = 0
    background: str = "run"
    keep_classes: tuple[str, ...] | None = None
    max_frames: int = 10_000
    compression: str = "lz4"
    force: bool = False
    compare: Path | None = None  # an output directory with earlier labels of the same runs
    detector: DetectorConfig | None = None
    euxfel: EuxfelSource | None = None  # run directories: the sources, as [feed] names them
    progress: bool = True

    def __post_init__(self) -> None:
        if self.chunk_frames < 1 or self.frames_per_train < 1 or self.threads_per_worker < 1:
            raise ConfigError("chunk_frames, frames_per_train and threads_per_worker must be ≥ 1")
        b = self.background
        if b not in ("run", "none") and not b.startswith("recorded:"):
            raise ConfigError(f"background {b!r}: one of {', '.join(BACKGROUND_MODES)}")


@dataclass
class RunJob:
    """One input run: where it is, its chunks and what became of them."""

    name: str
    source: Path
    dataset: str
    n_frames: int
    chunks: list[ChunkRange]
    state: RunState
    identity: dict[str, Any]
    skipped: int = 0  # chunks done by an earlier job
    results: list[dict[str, Any]] = field(default_factory=list)
    previous: FrameTable | None = None  # labels before this job (for the change table)
    previous_classes: tuple[str, ...] = ()
    error: str | None = None
    index: Path | None = None
    frames_per_unit: int = 1  # frames per chunk unit: 1 (files), frames per train (run dirs)
    finished: bool = False  # its chunks ended and its results (and index) were gathered


def run_name(path: Path) -> str:
    """A run name from a file name: its stem, with characters outside ``[A-Za-z0-9.-]`` as
    ``-`` (``_`` separates run, worker and sequence in the output names)."""
    return "".join(c if c.isalnum() or c in ".-" else "-" for c in path.stem) or "run"


def find_dataset(path: Path, dataset: str | None, modules: bool) -> tuple[str, int]:
    """The frames dataset of ``path`` (the given one, or the only 3-D one) and its length."""
    if dataset is None:
        found = list_frame_datasets(path)  # "name (N, H, W) dtype"
        if len(found) != 1:
            raise InputDataError(
                f"{path}: {len(found)} frame datasets ({', '.join(found[:6]) or 'none'}); "
                "name one with --dataset"
            )
        dataset = found[0].rsplit(" (", 1)[0]
    f, dset = open_frame_dataset(path, dataset, modules=modules)
    with f:
        return dataset, int(dset.shape[0])


def run_background(
    source: str,
    dataset: str,
    detector: DetectorConfig | None,
    grid: Any,
    euxfel: EuxfelSource | None = None,
) -> BackgroundSnapshot:
    """A run's background from up to :data:`BACKGROUND_SAMPLE` frames spread evenly (whole
    trains of a run directory)."""
    dmap = DetectorMap(detector, []) if detector is not None else None
    if dmap is not None:
        dmap.set_grid(grid)
    blocks = []
    if euxfel is not None:
        n_trains, per_train = describe_run(Path(source), euxfel)
        k = max(1, min(n_trains, _sample_size(n_trains * per_train) // max(1, per_train)))
        for i in np.unique(np.linspace(0, n_trains - 1, k).round().astype(int)).tolist():
            for raw, _t, _p in TrainReader(Path(source), euxfel, i, i + 1):
                blocks.append(dmap(raw) if dmap is not None else raw)
        return estimate_run_background(blocks, geometry=grid)
    f, dset = open_frame_dataset(source, dataset, modules=detector is not None)
    with f:
        for a, b in sample_spans(int(dset.shape[0])):
            raw = dset[a:b]
            blocks.append(dmap(raw) if dmap is not None else np.asarray(raw, np.float32))
    return estimate_run_background(blocks, geometry=grid)


def _sample_size(n: int) -> int:
    """Frames behind a run's background estimate: a quarter of a short run, at most
    :data:`BACKGROUND_SAMPLE`."""
    return min(n, BACKGROUND_SAMPLE, max(BACKGROUND_MIN_SAMPLE, round(BACKGROUND_SHARE * n)))


def sample_spans(n: int) -> list[tuple[int, int]]:
    """The frame ranges ``[a, b)`` behind the background of an ``n``-frame run: about
    :func:`_sample_size` frames in spans of :data:`BACKGROUND_SPAN` consecutive frames, the
    spans spread evenly over the run (a slice reads ~1.5× faster than as many single frames,
    and a drifting background is still followed from start to end)."""
    k = _sample_size(n)
    span = min(BACKGROUND_SPAN, k)
    if k >= n:
        return [(0, n)] if n else []
    starts = np.unique(np.linspace(0, n - span, math.ceil(k / span)).round().astype(int))
    return [(int(a), int(a) + span) for a in starts]


def recorded_background(index: Path) -> RecordedBackground:
    """The maps an earlier classification used, per frame identity (from its run index or
    any output directory's run, ``DIR/RUN_index.h5``)."""
    import h5py

    try:
        with h5py.File(index, "r") as f:
            maps = np.asarray(f["entry_1/background/maps"][()], np.float32)
            train = np.asarray(f["entry_1/frames/train_id"][()])
            pulse = np.asarray(f["entry_1/frames/pulse_id"][()])
            which = np.asarray(f["entry_1/frames/background"][()], np.int64)
            level = np.asarray(f["entry_1/frames/background_level"][()], np.float64)
    except (OSError, KeyError) as exc:
        raise InputDataError(f"{index}: not a run index with backgrounds ({exc})") from exc
    key = id_key(train, pulse)
    order = np.argsort(key, kind="stable")
    levels = np.zeros(len(maps))  # each map's level as recorded (mean over valid pixels)
    used = which >= 0
    levels[which[used]] = level[used]
    return RecordedBackground(maps, levels, key[order], which[order])


def _previous_labels(out: Path, run: str) -> tuple[FrameTable | None, tuple[str, ...]]:
    try:
        t = read_run(out, run)
    except (InputDataError, OSError):
        return None, ()
    return t.frames, tuple(t.classes)


def prepare(inputs: list[Path], cfg: ClassifyConfig, model_label: str) -> list[RunJob]:
    """Check the inputs and plan every run (nothing is classified yet)."""
    jobs = []
    names: set[str] = set()
    settings = {
        "frames_per_train": cfg.frames_per_train, "first_train_id": cfg.first_train_id,
        "photon_unit": cfg.photon_unit, "background": cfg.background,
        "keep_classes": cfg.keep_classes, "detector": cfg.detector,
    }  # fmt: skip
    if cfg.background == "run":  # another sample is another estimate: chunks are redone
        settings["background_sample"] = BACKGROUND_SAMPLE
    for path in inputs:
        path = Path(path)
        if not path.exists():
            raise InputDataError(
                f"{path}: no such file (give HDF5/CXI files of frames or run directories)"
            )
        name = run_name(path)
        check_name("run", name)
        if name in names:
            raise ConfigError(f"two inputs make run {name!r}: rename one of the files")
        names.add(name)
        state = RunState(cfg.out, name)
        if path.is_dir():  # a European XFEL run: chunks of trains
            if cfg.euxfel is None or cfg.detector is None:
                raise ConfigError(
                    f"{path} is a run directory: give a streamer config with [detector] and "
                    "a [feed] source of one source per module (--config)"
                )
            n_trains, per_train = describe_run(path, cfg.euxfel)
            chunks = plan_chunks(n_trains, max(1, cfg.chunk_frames // max(1, per_train)))
            ident = identity_of(model_label, path, "", euxfel=cfg.euxfel, **settings)
            jobs.append(RunJob(name, path, "", n_trains * per_train, chunks, state, ident,
                               frames_per_unit=per_train))  # fmt: skip
            continue
        dataset, n = find_dataset(path, cfg.dataset, cfg.detector is not None)
        ident = identity_of(model_label, path, dataset, **settings)
        jobs.append(RunJob(name, path, dataset, n, plan_chunks(n, cfg.chunk_frames), state, ident))
    return jobs


def classify_runs(
    inputs: list[Path],
    config: ClassifyConfig,
    *,
    on_start: Callable[[str], None] | None = None,
) -> list[RunJob]:
    """Classify ``inputs`` into ``config.out``; returns each run's job (``error`` set when
    it failed). ``on_start`` gets the Dask dashboard link."""
    from dask.distributed import Client, LocalCluster

    # absolute paths: workers elsewhere (a scheduler's) do not share this working directory
    cfg = replace(config, out=Path(config.out).resolve(), model=Path(config.model).resolve())
    if cfg.compare is not None:
        cfg = replace(cfg, compare=Path(cfg.compare).resolve())
    inputs = [Path(p).resolve() for p in inputs]
    cfg.out.mkdir(parents=True, exist_ok=True)
    bundle = load_bundle(cfg.model)
    jobs = prepare(inputs, cfg, bundle.label)
    locks = [WorkerLock(cfg.out, job.name, "classify", purpose="classifying") for job in jobs]
    try:
        for job in jobs:
            _reconcile(job, cfg)
        with contextlib.ExitStack() as stack:
            cluster = None
            if cfg.scheduler is None:
                import dask

                stack.enter_context(dask.config.set(QUIET_LOCAL_CLUSTER))
                cores = len(os.sched_getaffinity(0))  # this job's cores (SLURM, a container)
                n = cfg.workers or max(1, cores // cfg.threads_per_worker)
                cluster = stack.enter_context(LocalCluster(
                    n_workers=n, threads_per_worker=cfg.threads_per_worker, processes=True,
                    host="127.0.0.1", dashboard_address="127.0.0.1:0",
                ))  # fmt: skip
            client = stack.enter_context(Client(cluster if cluster is not None else cfg.scheduler))
            if on_start is not None:
                on_start(str(client.dashboard_link))
            _run_on(client, jobs, cfg, bundle)
    finally:
        for lock in locks:
            lock.release()
    return jobs


def _reconcile(job: RunJob, cfg: ClassifyConfig) -> None:
    """Before the job: refuse foreign files, keep the previous labels, clean up, skip done."""
    st = job.state
    foreign = st.foreign_files()
    if foreign:
        raise ConfigError(
            f"{cfg.out}: files of run {job.name!r} written by another writer "
            f"({foreign[0].name}...): classify into another directory"
        )
    if cfg.compare is not None:
        job.previous, job.previous_classes = _previous_labels(cfg.compare, job.name)
    undone = [c for c in job.chunks if not st.is_done(c, job.identity)]
    if (cfg.force or undone) and cfg.compare is None:  # the run before this job changes it
        job.previous, job.previous_classes = _previous_labels(cfg.out, job.name)
    if cfg.force:
        st.remove_all()
    st.clean_other_chunks(job.chunks)
    for c in job.chunks:
        if st.is_done(c, job.identity) or st.finish_moves(c, job.identity):
            job.skipped += 1
        else:
            st.reset_chunk(c.chunk)
    if job.skipped == len(job.chunks) and cfg.compare is None and not cfg.force:
        job.previous = None  # nothing changes: no comparison with itself


def _chunk_task(
    spec: ChunkSpec,
    background: BackgroundSnapshot | RecordedBackground | None,
    out: str,
    rng: ChunkRange,
    identity: dict[str, Any],
) -> dict[str, Any]:
    """On a worker: classify a chunk, move its files into place; the chunk's record."""
    state = RunState(Path(out), spec.run)
    state.reset_chunk(spec.chunk_id)  # a retry after a killed worker starts clean
    result: ChunkResult = classify_chunk(spec, background)
    record = dict(result.__dict__)
    record["worker"] = f"{os.uname().nodename}:{os.getpid()}"
    state.publish(rng, identity, record)
    return record


def _run_on(client: Any, jobs: list[RunJob], cfg: ClassifyConfig, bundle: Any) -> None:
    from dask.distributed import as_completed
    from tqdm import tqdm

    takes_bg = bundle.background_input is not None
    bg_futures: dict[str, Any] = {}
    recorded = None
    if takes_bg and cfg.background.startswith("recorded:"):
        recorded = client.scatter(recorded_background(Path(cfg.background.split(":", 1)[1])))
    futures = {}
    total = sum(j.n_frames for j in jobs)
    done_frames = sum(
        (r["stop"] - r["start"]) * j.frames_per_unit for j in jobs for r in _done_ranges(j)
    )
    for job in jobs:
        todo = [c for c in job.chunks if not job.state.is_done(c, job.identity)]
        if not todo:
            continue
        if not takes_bg or cfg.background == "none":
            background: Any = None
        elif recorded is not None:
            background = recorded
        else:
            background = bg_futures[job.name] = client.submit(
                run_background, str(job.source), job.dataset, cfg.detector, bundle.geometry,
                cfg.euxfel if job.source.is_dir() else None, pure=False,
            )  # fmt: skip
        for c in todo:
            spec = ChunkSpec(
                run=job.name, chunk_id=c.chunk, source=str(job.source), dataset=job.dataset,
                start=c.start, stop=c.stop, model=str(Path(cfg.model).resolve()),
                staging=str(job.state.staging(c.chunk)), frames_per_train=cfg.frames_per_train,
                first_train_id=cfg.first_train_id, photon_unit=cfg.photon_unit,
                provider=cfg.provider, max_batch=cfg.max_batch, max_frames=cfg.max_frames,
                compression=cfg.compression, keep_classes=cfg.keep_classes, detector=cfg.detector,
                euxfel=cfg.euxfel if job.source.is_dir() else None,
            )  # fmt: skip
            fut = client.submit(
                _chunk_task, spec, background, str(cfg.out), c, job.identity,
                key=f"classify-{job.name}-{c.chunk}-{time.time_ns()}", pure=False,
            )  # fmt: skip
            futures[fut] = (job, c)
    bar = tqdm(total=total, initial=done_frames, unit="frame", unit_scale=True,
               disable=not cfg.progress, desc="classify", smoothing=0.1)  # fmt: skip
    pending = {job.name: 0 for job in jobs}
    for job, _c in futures.values():
        pending[job.name] += 1
    with bar:
        for fut in as_completed(list(futures)):
            job, c = futures[fut]
            try:
                fut.result()
            except Exception as exc:  # one failed chunk fails its run, the others go on
                job.error = job.error or f"chunk {c.chunk} ({c.start}..{c.stop}): {exc}"
                log.error("run %s: %s", job.name, job.error)
            bar.update((c.stop - c.start) * job.frames_per_unit)
            pending[job.name] -= 1
            if pending[job.name] == 0:  # indexed while other runs' chunks go on
                _finish(job, cfg)
    for job in jobs:
        if not job.finished:
            _finish(job, cfg)


def _finish(job: RunJob, cfg: ClassifyConfig) -> None:
    """A run whose chunks have all ended: its records, and its index when all are done."""
    job.finished = True
    job.results = job.state.results(job.chunks)
    if job.error is None and len(job.results) == len(job.chunks):
        try:
            job.index = build_run_index(cfg.out, job.name)
        except (HitstreamError, OSError) as exc:
            job.error = f"index: {exc}"


def _done_ranges(job: RunJob) -> list[dict[str, int]]:
    return [
        {"start": c.start, "stop": c.stop} for c in job.chunks if job.state.is_done(c, job.identity)
    ]
