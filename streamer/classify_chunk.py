"""One chunk of an archived run classified on a Dask worker: the work unit of ``streamer
classify`` (:mod:`streamer.classify`).

A chunk is a range of frames of one input file. The worker reads it block by block, maps a
real detector's frames onto the model's grid (:mod:`streamer.detector_map`, as live),
classifies them with the same engine and decision as the live streamer, with the run's
background (one map for the run, or the map each frame had in an earlier classification),
and writes rolling CXI files with the live writer under the chunk's own worker name
(``c000012``) into a staging directory. Only when every file of the chunk is finished are
they moved into the output, after a marker that names them (see :mod:`streamer.classify_plan`).

Frame ``j`` of a file gets train ``first_train_id + j // frames_per_train`` and pulse
``j % frames_per_train``, as ``streamer replay`` numbers them, so a run classified live
from a replay and again here has the same frame identities.

A worker loads a bundle once (:func:`engine_for`) and keeps it for the next chunks.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.background import BackgroundSnapshot
from hitstream.bundle import load_bundle
from hitstream.detectors import DetectorConfig
from hitstream.errors import ConfigError
from hitstream.h5input import open_frame_dataset
from streamer.classify_euxfel import EuxfelSource, TrainReader
from streamer.decision import decide, keep_mask_for, threshold_vector
from streamer.detector_map import DetectorMap
from streamer.engine import Engine, EngineConfig
from streamer.types import FrameBatch, ResultBatch
from streamer.writer import RollingWriter, WriterConfig

READ_FRAMES = 256  # frames read from the file at a time
READ_BUFFERS = 3  # a block read stays valid while the next two are read (prefetch: one)


@dataclass(frozen=True)
class RecordedBackground:
    """The background maps an earlier classification used, and which frame had which."""

    maps: np.ndarray  # (K, H, W) float32
    levels: np.ndarray  # (K,) float64
    key: np.ndarray  # (N,) int64: train_id * 2**20 + pulse_id of each frame, sorted
    which: np.ndarray  # (N,) int64: the map of each key's frame (-1: none)


@dataclass(frozen=True)
class ChunkSpec:
    """Everything a worker needs for one chunk (small: it is sent to the worker)."""

    run: str  # output run name
    chunk_id: str  # the writer's worker name, e.g. "c000012"
    source: str  # input HDF5/CXI file
    dataset: str
    start: int
    stop: int
    model: str  # bundle directory
    staging: str  # the chunk's staging directory
    frames_per_train: int = 32
    first_train_id: int = 1
    photon_unit: float = 1.0
    provider: str = "auto"
    max_batch: int = 0
    max_frames: int = 10_000  # kept frames per file
    compression: str = "lz4"
    keep_classes: tuple[str, ...] | None = None
    detector: DetectorConfig | None = None
    euxfel: EuxfelSource | None = None  # a run directory: start/stop count trains


@dataclass
class ChunkResult:
    """What a chunk did (returned to the driver)."""

    chunk_id: str
    frames: int = 0
    classified: int = 0
    rejected: int = 0  # non-finite frames, as the live decoder refuses them
    trains_refused: int = 0  # run directories: trains the live decoder would refuse
    kept: int = 0
    per_class: dict[str, int] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)  # name, size, frames, kept
    model: str = ""
    seconds: float = 0.0
    worker: str = ""


_ENGINES: dict[tuple[Any, ...], Engine] = {}
_ENGINES_LOCK = threading.Lock()


def engine_for(model: str, provider: str, max_batch: int, photon_unit: float) -> Engine:
    """This worker's engine for ``model`` (loaded, checked and self-tested once per bundle
    version and settings). One onnxruntime thread per task: Dask runs as many tasks at once
    as the worker has threads, so the cores are shared out by tasks, not inside one."""
    path = Path(model).resolve()
    manifest = path / "manifest.json"
    key = (str(path), manifest.stat().st_mtime_ns if manifest.exists() else 0, provider,
           max_batch, photon_unit)  # fmt: skip
    with _ENGINES_LOCK:
        engine = _ENGINES.get(key)
        if engine is None:
            cfg = EngineConfig(provider=provider, max_batch=max_batch, photon_unit=photon_unit,
                               intra_op_threads=1)  # fmt: skip
            engine = Engine(load_bundle(model), cfg)
            engine.self_test()
            _ENGINES[key] = engine
    return engine


def frame_ids(
    start: int, stop: int, frames_per_train: int, first_train_id: int
) -> tuple[np.ndarray, np.ndarray]:
    """(train_id uint64, pulse_id uint32) of frames ``start .. stop-1``, as the replay sends."""
    j = np.arange(start, stop, dtype=np.int64)
    train = (first_train_id + j // frames_per_train).astype(np.uint64)
    return train, (j % frames_per_train).astype(np.uint32)


def id_key(train_id: np.ndarray, pulse_id: np.ndarray) -> np.ndarray:
    """One int64 per frame identity (pulse ids below 2**20)."""
    return train_id.astype(np.int64) * (1 << 20) + pulse_id.astype(np.int64)


def classify_chunk(
    spec: ChunkSpec,
    background: BackgroundSnapshot | RecordedBackground | None = None,
) -> ChunkResult:
    """Classify one chunk into finished files in ``spec.staging`` (created empty)."""
    t0 = time.monotonic()
    engine = engine_for(spec.model, spec.provider, spec.max_batch, spec.photon_unit)
    bundle = engine.bundle
    keep_by_class = keep_mask_for(
        bundle.classes, spec.keep_classes if spec.keep_classes is not None else bundle.keep_classes
    )
    min_prob = threshold_vector(bundle.classes, bundle.thresholds)
    detector = (
        DetectorMap(spec.detector, [], engine.providers, engine.config.device_id)
        if spec.detector is not None
        else None
    )
    if detector is not None:
        detector.set_grid(bundle.geometry)
    staging = Path(spec.staging)
    staging.mkdir(parents=True, exist_ok=True)
    wcfg = WriterConfig(
        dir=staging, run=spec.run, worker=spec.chunk_id, max_frames=spec.max_frames,
        max_seconds=1e9, compression=spec.compression, swmr=False, flush_every_s=1e9,
        min_free_bytes=0,
    )  # fmt: skip
    result = ChunkResult(
        spec.chunk_id, model=bundle.label, per_class=dict.fromkeys(bundle.classes, 0)
    )
    counts = np.zeros(len(bundle.classes), np.int64)
    source = _reader(spec, detector is not None)
    with RollingWriter(
        wcfg, classes=bundle.classes, frame_shape=bundle.frame_shape, geometry=bundle.geometry,
        attrs={"model": bundle.label, "provider": engine.provider,
               "source_file": str(spec.source), "source_dataset": spec.dataset,
               "source_range": [spec.start, spec.stop],
               "source_range_unit": "trains" if spec.euxfel is not None else "frames"},
    ) as writer:  # fmt: skip
        for raw, train, pulse in _prefetched(source):
            if detector is not None:  # NaN pixels of corrected data: masked by the map
                frames = detector(raw)
                good = np.ones(len(frames), bool)
            else:
                frames = np.ascontiguousarray(raw, dtype=np.float32)
                # one sum per frame carries any NaN/Inf (as the live decoder checks)
                good = np.isfinite(np.einsum("ij->i", frames.reshape(len(frames), -1)))
            result.frames += len(frames)
            result.rejected += int(np.count_nonzero(~good))
            if not good.all():
                frames, train, pulse = frames[good], train[good], pulse[good]
            for sel, snap in _backgrounds(background, train, pulse):
                res = _classify(engine, frames[sel], train[sel], pulse[sel], snap,
                                keep_by_class, min_prob)  # fmt: skip
                writer.write(res)
                counts += np.bincount(res.label, minlength=len(counts))[: len(counts)]
                result.classified += len(res)
                result.kept += int(res.keep.sum())
    files = list(writer.files_closed)  # all finished, the last one on leaving the block
    if isinstance(source, TrainReader):  # trains or frames the live decoder would refuse
        result.rejected += source.frames_refused
        result.trains_refused = source.trains_refused
    result.per_class = {c: int(n) for c, n in zip(bundle.classes, counts, strict=True)}
    result.files = [{"name": p.name, "size": p.stat().st_size} for p in files]
    result.seconds = time.monotonic() - t0
    return result


def _prefetched(blocks: Iterable[Any]) -> Iterator[Any]:
    """The blocks of ``blocks``, the next one read in a thread while this one is classified
    (h5py and onnxruntime release the GIL)."""
    from concurrent.futures import ThreadPoolExecutor

    it = iter(blocks)
    with ThreadPoolExecutor(1, thread_name_prefix="read") as pool:
        nxt = pool.submit(next, it, None)
        while True:
            block = nxt.result()
            if block is None:
                return
            nxt = pool.submit(next, it, None)
            yield block


class _FileReader:
    """Frames ``start .. stop-1`` of an HDF5/CXI dataset in blocks, with the replay's ids."""

    def __init__(self, spec: ChunkSpec, modules: bool) -> None:
        self.spec, self.modules = spec, modules

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        s = self.spec
        f, dset = open_frame_dataset(s.source, s.dataset, modules=self.modules)
        with f:
            # float32 frames are read into a few reused buffers: a fresh 68 MB array per
            # block costs as much in page faults as the copy out of the page cache
            reuse = not self.modules and dset.dtype == np.float32
            buffers: list[np.ndarray] = []
            for k, a in enumerate(range(s.start, s.stop, READ_FRAMES)):
                b = min(a + READ_FRAMES, s.stop)
                train, pulse = frame_ids(a, b, s.frames_per_train, s.first_train_id)
                if not reuse:
                    yield np.asarray(dset[a:b]), train, pulse
                    continue
                if len(buffers) < READ_BUFFERS:
                    buffers.append(np.empty((READ_FRAMES, *dset.shape[1:]), np.float32))
                block = buffers[k % READ_BUFFERS][: b - a]
                dset.read_direct(block, np.s_[a:b])
                yield block, train, pulse


def _reader(spec: ChunkSpec, modules: bool) -> Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The chunk's frames: from a run directory (trains) or a file (frames)."""
    if spec.euxfel is not None:
        if not modules:
            raise ConfigError("a European XFEL run directory needs a [detector] (--config)")
        return TrainReader(Path(spec.source), spec.euxfel, spec.start, spec.stop)
    return _FileReader(spec, modules)


def _backgrounds(
    background: BackgroundSnapshot | RecordedBackground | None,
    train: np.ndarray,
    pulse: np.ndarray,
) -> list[tuple[np.ndarray | slice, BackgroundSnapshot | None]]:
    """The frames of a block grouped by the background each is classified with."""
    if not isinstance(background, RecordedBackground):
        return [(slice(None), background)]  # a view of the block, not a copy
    rec = background
    key = id_key(train, pulse)
    pos = np.clip(np.searchsorted(rec.key, key), 0, max(0, len(rec.key) - 1))
    found = rec.key[pos] == key if len(rec.key) else np.zeros(len(key), bool)
    which = np.where(found, rec.which[pos] if len(rec.key) else -1, -1)
    out: list[tuple[np.ndarray | slice, BackgroundSnapshot | None]] = []
    for k in np.unique(which).tolist():
        snap = (
            None
            if k < 0
            else BackgroundSnapshot(
                map=rec.maps[k], version=k + 1, level=float(rec.levels[k]), warm=True, frames=0.0
            )
        )
        out.append((which == k, snap))
    return out


def _classify(
    engine: Engine,
    frames: np.ndarray,
    train: np.ndarray,
    pulse: np.ndarray,
    background: BackgroundSnapshot | None,
    keep_by_class: np.ndarray,
    min_prob: np.ndarray,
) -> ResultBatch:
    """The live pipeline's classification of one batch (engine, then decide)."""
    n = len(frames)
    probs = np.empty((n, len(engine.bundle.classes)), np.float32)
    tdist = np.full(n, np.nan, np.float32)
    bg = None if background is None else background.map
    for a in range(0, n, engine.max_batch):
        out = engine.infer(frames[a : a + engine.max_batch], bg)
        probs[a : a + engine.max_batch] = out["probabilities"]
        if out.get("template_distance") is not None:
            tdist[a : a + engine.max_batch] = np.asarray(out["template_distance"]).reshape(-1)
    label, keep = decide(probs, keep_by_class, min_prob)
    now = time.time()
    batch = FrameBatch(
        frames=frames, train_id=train, pulse_id=pulse,
        timestamp=np.full(n, now), received=np.full(n, time.monotonic()),
    )  # fmt: skip
    return ResultBatch(
        batch=batch, probabilities=probs, label=label, template_distance=tdist, keep=keep,
        model_version=engine.bundle.label, classes=engine.bundle.classes, background=background,
    )  # fmt: skip
