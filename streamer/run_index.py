"""Run index: one small HDF5 file that presents all finished files of a run as one.

``build_run_index(out_dir, run)`` writes ``<run>_index.h5`` (``<run>_<worker>_index.h5``
with ``worker``) next to the files, with the same paths as a single file (see
:mod:`streamer.writer`):

* virtual datasets (source paths relative to the index, so the directory can move):
  ``/entry_1/instrument_1/detector_1/data`` (linked from ``/entry_1/data_1/data``),
  ``/entry_1/result_1/<column>`` and ``/entry_1/frames/<column>`` for every column but
  ``model`` and ``kept_index``;
* real datasets, because their values are per file: ``model`` (index into the run's
  ``/entry_1/models``), ``/entry_1/frames/kept_index`` (row of the run's kept data or -1),
  ``file`` in both tables (index into ``/entry_1/files``), and
  ``/entry_1/files`` (relative names), ``/entry_1/file_frames`` and ``/entry_1/file_kept``
  (offsets of each file's rows, length n_files + 1);
* the run background: ``background`` (index into the index's
  ``/entry_1/background/maps``, the files' maps one after the other, a virtual dataset;
  -1: none), ``background_level`` and ``background_warm`` in both tables, real (files
  written before the background read NaN, -1 and False), ``/entry_1/background/version``
  and ``/entry_1/file_backgrounds`` (offsets of each file's maps).

Files are ordered by worker, then sequence number. Only finished files are indexed:
rebuild the index when more are finished. The file is written to a temporary name and
renamed, so readers never see half an index.
"""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import h5py
import numpy as np

import hitstream
from hitstream.errors import InputDataError
from streamer.cxi_layout import (
    BACKGROUND_COLUMNS,
    BACKGROUND_GROUP,
    BACKGROUND_MAPS,
    COLUMNS,
    CXI_VERSION,
    DATA_LINK,
    DATA_PATH,
    DETECTOR_GROUP,
    FRAME_ONLY_COLUMNS,
    FRAMES_GROUP,
    KEPT_GROUP,
    MODELS_PATH,
    SOURCE_GROUP,
    check_name,
)
from streamer.readback import read_run

REAL_COLUMNS = ("model", "kept_index", "file", *BACKGROUND_COLUMNS)


def index_name(run: str, worker: str | None = None) -> str:
    """File name of the run index."""
    return f"{run}_{worker}_index.h5" if worker is not None else f"{run}_index.h5"


def _virtual(
    group: h5py.Group,
    name: str,
    sources: list[tuple[str, int]],
    dset_path: str,
    row_shape: tuple[int, ...],
    dtype: np.dtype,
) -> None:
    """Concatenate ``dset_path`` of the sources (relative file name, rows) along axis 0."""
    total = sum(n for _, n in sources)
    if total == 0:
        group.create_dataset(name, shape=(0, *row_shape), dtype=dtype)
        return
    layout = h5py.VirtualLayout(shape=(total, *row_shape), dtype=dtype)
    start = 0
    for fname, n in sources:
        if n == 0:
            continue
        layout[start : start + n] = h5py.VirtualSource(fname, dset_path, shape=(n, *row_shape))
        start += n
    group.create_virtual_dataset(name, layout)


def build_run_index(out_dir: Path, run: str, *, worker: str | None = None) -> Path:
    """Write the run index of the finished files of ``run`` (all workers or one); return it.

    Raises :class:`InputDataError` when the run has no finished file or its files disagree.
    """
    out_dir = Path(out_dir)
    check_name("run", run)
    if worker is not None:
        check_name("worker", worker)
    tables = read_run(out_dir, run, worker=worker)
    names = [p.name for p in tables.files]
    n_frames = np.diff(tables.file_frames)
    n_kept = np.diff(tables.file_kept)
    # Files are read as written, so a finished file's rows are its datasets' full lengths.
    frame_sources = list(zip(names, n_frames.tolist(), strict=True))
    kept_sources = list(zip(names, n_kept.tolist(), strict=True))
    h, w = tables.frame_shape
    c = len(tables.classes)

    final = out_dir / index_name(run, worker)
    tmp = out_dir / f".{final.name}.{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with (
            h5py.File(tmp, "w", libver="latest") as f,
            h5py.File(tables.files[0], "r") as first,
        ):
            f.create_dataset("cxi_version", data=np.int64(CXI_VERSION))
            entry = f.create_group("entry_1")
            for key, value in first["entry_1"].attrs.items():
                if key not in ("sequence", "model"):
                    entry.attrs[key] = value
            entry.attrs.update(
                {
                    "run": run,
                    "index_of": "finished files of the run, by worker then sequence",
                    "hitstream_version": hitstream.__version__,
                    "models": list(tables.models),
                }
            )
            if worker is not None:
                entry.attrs["worker"] = worker
            else:
                entry.attrs.pop("worker", None)
            entry.create_dataset("experiment_identifier", data=run)
            entry.create_dataset(
                "files", data=np.array(names, dtype=object), dtype=h5py.string_dtype()
            )
            entry.create_dataset("file_frames", data=tables.file_frames)
            entry.create_dataset("file_kept", data=tables.file_kept)
            entry.create_dataset(
                MODELS_PATH.rsplit("/", 1)[1],
                data=np.array(list(tables.models), dtype=object),
                dtype=h5py.string_dtype(),
            )
            det = f.create_group(DETECTOR_GROUP)
            for key in first[DETECTOR_GROUP]:
                if key != "data":
                    first.copy(first[DETECTOR_GROUP][key], det, key)
            for key, value in first[DETECTOR_GROUP].attrs.items():
                det.attrs[key] = value
            if SOURCE_GROUP in first:
                first.copy(first[SOURCE_GROUP], f[SOURCE_GROUP.rsplit("/", 1)[0]], "source_1")
            _virtual(det, "data", kept_sources, DATA_PATH, (h, w), np.dtype(np.float32))
            bg = f.create_group(BACKGROUND_GROUP)
            if BACKGROUND_GROUP in first:
                for key, value in first[BACKGROUND_GROUP].attrs.items():
                    bg.attrs[key] = value
            n_maps = np.diff(tables.file_backgrounds).tolist()
            map_sources = list(zip(names, n_maps, strict=True))
            _virtual(bg, "maps", map_sources, BACKGROUND_MAPS, (h, w), np.dtype(np.float32))
            bg["maps"].attrs["units"] = "photons per pixel"
            bg.create_dataset("version", data=tables.background_versions)
            entry.create_dataset("file_backgrounds", data=tables.file_backgrounds)
            f.create_group(DATA_LINK.rsplit("/", 1)[0])[DATA_LINK.rsplit("/", 1)[1]] = (
                h5py.SoftLink(DATA_PATH)
            )
            for group_path, sources, columns, table in (
                (KEPT_GROUP, kept_sources, COLUMNS, tables.kept),
                (FRAMES_GROUP, frame_sources, COLUMNS | FRAME_ONLY_COLUMNS, tables.frames),
            ):
                group = f.create_group(group_path)
                for key, value in first[group_path].attrs.items():
                    group.attrs[key] = value
                for name, dtype in columns.items():
                    if name in REAL_COLUMNS:
                        group.create_dataset(name, data=getattr(table, name).astype(dtype))
                    else:
                        row = (c,) if name == "probabilities" else ()
                        _virtual(group, name, sources, f"{group_path}/{name}", row, dtype)
                group.create_dataset("file", data=table.file)
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final


def check_index(path: Path) -> list[str]:
    """Source files the index refers to that are missing next to it (empty when complete)."""
    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            names = [n.decode() if isinstance(n, bytes) else n for n in f["entry_1/files"][()]]
    except (OSError, KeyError) as exc:
        raise InputDataError(f"{path}: not a run index ({exc})") from exc
    return [n for n in names if not (path.parent / n).exists()]
