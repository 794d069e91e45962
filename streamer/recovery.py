"""Recover the ``.part`` files a killed writer left: finish them as the writer would have.

A writer killed (SIGKILL, power cut, OOM) leaves its open file as ``<name>.part`` holding
what it last flushed. :func:`recover_part` turns such an orphan into the finished file
``<name>``: every group, dataset and attribute of the writer's layout
(:mod:`streamer.cxi_layout`) is copied with its creation properties (chunks, compression),
every row dataset cut to the rows that are consistent (:func:`streamer.readback.consistent_rows`,
the rows a SWMR reader sees), ``/entry_1/end_time`` set, and ``/entry_1`` given the attrs
``recovered_from`` (the part's name), ``recovered_at`` (UTC) and ``recovered_frames``.

Crash-safe at every step: the new file is written under a hidden temporary name, fsynced
and renamed to the final name (``os.replace``), then the part is deleted. A part whose
final name exists and reads is a leftover of a recovery that died after the rename: it
is deleted. A part without a consistent frame is deleted. A part that does not open as a
hitstream file is renamed ``<name>.part.corrupt`` (kept for a person to look at; no reader
takes it for a run file). A part whose worker lock (:mod:`streamer.worker_lock`) another
live process holds is being written: it is never touched. Recovery takes the worker's
lock itself unless this process holds it already (a streamer recovering its own worker).

:func:`recover_orphans` does it for a run's parts (one worker or all) and reports.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Literal, TypeVar

import h5py
import numpy as np

from hitstream.errors import ConfigError, InputDataError, OutputError
from streamer.cxi_layout import (
    BACKGROUND_MAPS,
    BACKGROUND_VERSION,
    CORRUPT_SUFFIX,
    DATA_PATH,
    FRAMES_GROUP,
    KEPT_GROUP,
    MODELS_PATH,
    PART_SUFFIX,
    file_pattern,
)
from streamer.readback import ConsistentRows, consistent_rows, list_run_files, open_cxi
from streamer.worker_lock import WorkerLock, held_here

log = logging.getLogger(__name__)

END_TIME_PATH = "/entry_1/end_time"
_COPY_BYTES = 64 << 20  # rows copied per read/write
_TMP_MARK = ".recover-"

T = TypeVar("T")
Outcome = Literal["recovered", "leftover", "empty", "corrupt", "conflict", "skipped"]


@dataclass(frozen=True)
class RecoveredFile:
    """What became of one part.

    ``outcome``: ``recovered`` (``path`` is the finished file, with ``frames`` / ``kept``
    rows), ``leftover`` (its finished file existed: part deleted), ``empty`` (no
    consistent frame: part deleted), ``corrupt`` (not readable: renamed to ``path``),
    ``conflict`` (its finished name exists but does not read: both left as they are),
    ``skipped`` (a live process writes the worker: untouched).
    """

    part: Path
    outcome: Outcome
    path: Path | None = None
    frames: int = 0
    kept: int = 0
    detail: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "part": self.part.name,
            "outcome": self.outcome,
            "path": self.path.name if self.path is not None else None,
            "frames": self.frames,
            "kept": self.kept,
            "detail": self.detail,
        }


@dataclass
class RecoveryReport:
    """The parts of a run looked at by :func:`recover_orphans`, by outcome."""

    files: list[RecoveredFile] = field(default_factory=list)

    def _of(self, outcome: Outcome) -> list[RecoveredFile]:
        return [f for f in self.files if f.outcome == outcome]

    @property
    def recovered(self) -> list[RecoveredFile]:
        return self._of("recovered")

    @property
    def deleted(self) -> list[Path]:
        """Parts deleted: leftovers of a finished recovery and parts without a frame."""
        return [f.part for f in self.files if f.outcome in ("leftover", "empty")]

    @property
    def corrupt(self) -> list[RecoveredFile]:
        return self._of("corrupt")

    @property
    def conflicts(self) -> list[RecoveredFile]:
        return self._of("conflict")

    @property
    def skipped(self) -> list[RecoveredFile]:
        return self._of("skipped")

    @property
    def frames(self) -> int:
        return sum(f.frames for f in self.recovered)

    @property
    def kept(self) -> int:
        return sum(f.kept for f in self.recovered)

    @property
    def changed(self) -> bool:
        """True when a finished file appeared or a part went away (rebuild the index)."""
        return any(f.outcome != "skipped" for f in self.files)

    def as_dict(self) -> dict[str, Any]:
        return {
            "recovered": [f.as_dict() for f in self.recovered],
            "frames": self.frames,
            "kept": self.kept,
            "deleted": [p.name for p in self.deleted],
            "corrupt": [f.as_dict() for f in self.corrupt],
            "conflicts": [f.as_dict() for f in self.conflicts],
            "skipped": [f.as_dict() for f in self.skipped],
        }


def find_orphans(out_dir: Path, run: str, worker: str | None = None) -> list[Path]:
    """The run's ``.part`` files (one worker or all), by worker and sequence number.

    Includes the file a live writer has open; :func:`recover_orphans` leaves those alone.
    """
    if not Path(out_dir).is_dir():
        return []
    files = list_run_files(Path(out_dir), run, worker=worker, include_part=True)
    return [p for p in files if p.name.endswith(PART_SUFFIX)]


def _utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _parse(part: Path) -> tuple[str, str]:
    """(run, worker) of a part's name; ValueError when it is no run's part."""
    name = part.name
    if not name.endswith(PART_SUFFIX):
        raise ValueError(f"{part}: not a .part file")
    run_worker_seq = name.removesuffix(PART_SUFFIX).rsplit("_", 2)
    if len(run_worker_seq) != 3:
        raise ValueError(f"{part}: not named <run>_<worker>_<seq>.cxi.part")
    run, worker = run_worker_seq[0], run_worker_seq[1]
    m = file_pattern(run, worker).fullmatch(name)
    if m is None or not m["part"]:
        raise ValueError(f"{part}: not named <run>_<worker>_<seq>.cxi.part")
    return run, worker


@contextlib.contextmanager
def _worker_locked(out_dir: Path, run: str, worker: str) -> Iterator[str | None]:
    """Hold the worker's lock (unless this process does): yields None, or why it is not
    ours (another live process holds it)."""
    if held_here(out_dir, run, worker):
        yield None
        return
    try:
        lock = WorkerLock(out_dir, run, worker, purpose="recovering orphan files")
    except ConfigError as exc:
        yield str(exc)
        return
    with lock:
        yield None


def recover_part(part: Path) -> RecoveredFile:
    """Finish one orphan ``.part`` file (see the module's docstring).

    A part that does not read is reported (``corrupt``), not raised; an error writing the
    finished file (disk full) raises :class:`OutputError` and leaves the part as it was.
    ValueError when ``part`` is not named like a run's part.
    """
    part = Path(part)
    run, worker = _parse(part)
    with _worker_locked(part.parent, run, worker) as refused:
        if refused is not None:
            log.info("%s: not touched: %s", part.name, refused)
            return RecoveredFile(part, "skipped", detail=refused)
        return _recover_locked(part)


def _readable(path: Path) -> str | None:
    """None when ``path`` opens as a hitstream file, else why not."""
    try:
        with open_cxi(path) as h5:
            consistent_rows(h5)
    except (InputDataError, KeyError, OSError, RuntimeError, ValueError) as exc:
        return str(exc)
    return None


def _corrupt_name(part: Path) -> Path:
    target = part.with_name(part.name + CORRUPT_SUFFIX)
    k = 2
    while target.exists():
        target = part.with_name(f"{part.name}{CORRUPT_SUFFIX}-{k}")
        k += 1
    return target


def _recover_locked(part: Path) -> RecoveredFile:
    final = part.with_name(part.name.removesuffix(PART_SUFFIX))
    if not part.exists():
        return RecoveredFile(part, "leftover", final, detail="already gone")
    if final.exists():
        why = _readable(final)
        if why is None:
            part.unlink()
            _fsync_dir(part.parent)
            log.info("%s: deleted, %s is its finished file already", part.name, final.name)
            return RecoveredFile(part, "leftover", final)
        log.error(
            "%s: left as it is: its finished name %s exists and does not read (%s)",
            part.name,
            final.name,
            why,
        )
        return RecoveredFile(part, "conflict", final, detail=f"{final.name}: {why}")
    try:
        with open_cxi(part) as src:
            rows = _read(part, lambda: consistent_rows(src))
            if rows.frames > 0:
                try:
                    _write_finished(src, part, final, rows)
                except OSError as exc:
                    raise OutputError(
                        f"{part}: recovery failed writing {final.name} ({exc}); the part is "
                        "left as it was"
                    ) from exc
    except (InputDataError, KeyError) as exc:  # the part does not read (write errors raise)
        target = _corrupt_name(part)
        os.replace(part, target)
        _fsync_dir(part.parent)
        log.error("%s: unreadable (%s); renamed %s", part.name, exc, target.name)
        return RecoveredFile(part, "corrupt", target, detail=str(exc))
    if rows.frames == 0:
        part.unlink()
        _fsync_dir(part.parent)
        log.info("%s: deleted, no frame was flushed to it", part.name)
        return RecoveredFile(part, "empty")
    part.unlink()
    _fsync_dir(part.parent)
    log.info(
        "%s: recovered as %s: %d frames, %d kept", part.name, final.name, rows.frames, rows.kept
    )
    return RecoveredFile(part, "recovered", final, rows.frames, rows.kept)


def _read(where: Path | str, fn: Callable[[], T]) -> T:
    """``fn()``, reading the part: its I/O errors become :class:`InputDataError` (an I/O
    error writing the finished file stays an OSError and leaves the part as it is)."""
    try:
        return fn()
    except (OSError, RuntimeError) as exc:
        raise InputDataError(f"{where}: read failed ({exc})") from exc


def _row_counts(rows: ConsistentRows) -> dict[str, int]:
    """Rows to keep of every dataset that grows (by absolute path)."""
    counts = {
        DATA_PATH: rows.kept,
        MODELS_PATH: rows.models,
        BACKGROUND_MAPS: rows.maps,
        BACKGROUND_VERSION: rows.maps,
    }
    return counts | {f"{KEPT_GROUP}/": rows.kept, f"{FRAMES_GROUP}/": rows.frames}


def _rows_of(path: str, counts: dict[str, int]) -> int | None:
    if path in counts:
        return counts[path]
    group = path.rsplit("/", 1)[0] + "/"
    return counts.get(group)


def _write_finished(src: h5py.File, part: Path, final: Path, rows: ConsistentRows) -> None:
    """Write ``final`` from the open ``src`` cut to ``rows``: tmp name, fsync, rename."""
    tmp = part.with_name(f".{final.name}{_TMP_MARK}{os.getpid()}.tmp")
    counts = _row_counts(rows)
    try:
        with h5py.File(tmp, "w", libver="latest") as dst:
            _copy_attrs(src, dst)
            _copy_group(src, dst, counts)
            dst[END_TIME_PATH][()] = _utc_now().encode()
            dst["entry_1"].attrs.update(
                {
                    "recovered_from": part.name,
                    "recovered_at": _utc_now(),
                    "recovered_frames": np.int64(rows.frames),
                }
            )
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _copy_attrs(src: h5py.HLObject, dst: h5py.HLObject) -> None:
    for name in src.attrs:
        dst.attrs.create(name, src.attrs[name], dtype=src.attrs.get_id(name).dtype)


def _copy_group(src: h5py.Group, dst: h5py.Group, counts: dict[str, int]) -> None:
    for name in src:
        link = src.get(name, getlink=True)
        if isinstance(link, h5py.SoftLink):
            dst[name] = h5py.SoftLink(link.path)
            continue
        if isinstance(link, h5py.ExternalLink):
            dst[name] = h5py.ExternalLink(link.filename, link.path)
            continue
        obj = src[name]
        if isinstance(obj, h5py.Group):
            group = dst.create_group(name)
            _copy_attrs(obj, group)
            _copy_group(obj, group, counts)
        else:
            _copy_dataset(obj, dst, name, _rows_of(obj.name, counts))


def _copy_dataset(src: h5py.Dataset, dst: h5py.Group, name: str, rows: int | None) -> None:
    """Same type and creation properties (chunks, filters, fill value); ``rows`` rows along
    axis 0 (None: all), copied in blocks."""
    shape = src.shape
    if rows is not None:
        shape = (min(rows, src.shape[0]), *src.shape[1:])
    if src.shape == ():
        space = h5py.h5s.create(h5py.h5s.SCALAR)
    else:
        maxshape = tuple(h5py.h5s.UNLIMITED if m is None else m for m in src.maxshape)
        space = h5py.h5s.create_simple(shape, maxshape)
    dsid = h5py.h5d.create(
        dst.id, name.encode(), src.id.get_type(), space, dcpl=src.id.get_create_plist()
    )
    out = h5py.Dataset(dsid)
    _copy_attrs(src, out)
    where = f"{src.file.filename}:{src.name}"
    if src.shape == ():
        out[()] = _read(where, lambda: src[()])
        return
    if shape[0] == 0:
        return
    row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * src.dtype.itemsize)
    step = max(1, _COPY_BYTES // row_bytes)
    for a in range(0, shape[0], step):
        b = min(shape[0], a + step)
        out[a:b] = _read(where, partial(src.__getitem__, slice(a, b)))


def _stale_tmp(out_dir: Path, run: str, worker: str) -> list[Path]:
    """Temporary files of recoveries of ``run``/``worker`` that died before the rename."""
    pattern = file_pattern(run, worker)
    found = []
    for entry in os.scandir(out_dir):
        name = entry.name
        if not (name.startswith(".") and name.endswith(".tmp") and _TMP_MARK in name):
            continue
        m = pattern.fullmatch(name[1:].split(_TMP_MARK, 1)[0])
        if m is not None and not m["part"]:
            found.append(Path(entry.path))
    return found


def recover_orphans(out_dir: Path, run: str, worker: str | None = None) -> RecoveryReport:
    """Recover every orphan ``.part`` of ``run`` (one worker or all) in ``out_dir``.

    Parts of a worker whose lock another live process holds are skipped (reported). Raises
    :class:`OutputError` when a finished file cannot be written (the part stays). Temporary
    files of recoveries that died half-way are deleted. Logs what it did:
    WARNING for recovered files (a writer was killed), ERROR for unreadable parts.
    """
    out_dir = Path(out_dir)
    report = RecoveryReport()
    by_worker: dict[str, list[Path]] = {}
    pattern = file_pattern(run, worker)
    for p in find_orphans(out_dir, run, worker):
        m = pattern.fullmatch(p.name)
        assert m is not None
        by_worker.setdefault(m["worker"], []).append(p)
    workers = sorted(set(by_worker) | ({worker} if worker is not None else set()))
    for w in workers:
        parts = by_worker.get(w, [])
        with _worker_locked(out_dir, run, w) as refused:
            if refused is not None:
                for p in parts:
                    log.warning("%s: not recovered: %s", p.name, refused)
                    report.files.append(RecoveredFile(p, "skipped", detail=refused))
                continue
            for tmp in _stale_tmp(out_dir, run, w):
                log.info("deleting %s, left by a recovery that died", tmp.name)
                tmp.unlink(missing_ok=True)
            report.files.extend(_recover_locked(p) for p in parts)
    if report.recovered:
        log.warning(
            "run %s in %s: recovered %d orphan file(s) of a killed writer, %d frames (%d kept): %s",
            run,
            out_dir,
            len(report.recovered),
            report.frames,
            report.kept,
            ", ".join(f.path.name for f in report.recovered if f.path is not None),
        )
    return report
