"""HDF5 run input for both sides: open a file read-only with clear errors, open its
``(N, H, W)`` frames dataset, name the 3-D datasets a user may have meant, and turn attribute
values into plain Python. The replay (streamer) and the ingest (trainer) open runs here.

``open_h5`` registers the compression filters of hdf5plugin (bitshuffle, LZ4, Blosc...) when
installed, opens with a 64 MiB chunk cache, and turns each reason a file is unusable (missing,
a directory, no HDF5 signature, truncated, locked) into an InputDataError naming the file.
``describe_3d`` / ``datasets_hint`` / ``list_frame_datasets`` list the ``(N, H, W)`` datasets
a user may have meant when a dataset path is wrong.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hitstream.errors import InputDataError

HDF5_SUFFIXES = frozenset({".h5", ".hdf5", ".hdf", ".cxi", ".nxs"})
_CHUNK_CACHE_BYTES = 64 * 2**20
_MAX_LISTED = 20

PathLike = str | os.PathLike[str]


def _load_filter_plugins() -> None:
    """Register the HDF5 compression filters of hdf5plugin, if it is installed."""
    with contextlib.suppress(ImportError):  # registers bitshuffle, LZ4, Blosc... for HDF5
        import hdf5plugin  # noqa: F401


def open_h5(path: PathLike, what: str) -> h5py.File:
    """Open ``path`` read-only; InputDataError saying why it is unusable."""
    p = Path(path)
    if not p.exists():
        raise InputDataError(f"{p}: {what} does not exist")
    if not p.is_file():
        raise InputDataError(f"{p}: {what} is not a file")
    try:
        is_hdf5 = h5py.is_hdf5(p)
    except OSError as exc:
        raise InputDataError(f"{p}: cannot read {what} ({exc})") from exc
    if not is_hdf5:
        raise InputDataError(f"{p}: not an HDF5 file (no HDF5 signature); {what} must be HDF5")
    _load_filter_plugins()
    try:
        return h5py.File(p, "r", rdcc_nbytes=_CHUNK_CACHE_BYTES, rdcc_nslots=10007)
    except OSError as exc:
        msg = str(exc)
        if "truncated" in msg:
            raise InputDataError(
                f"{p}: truncated HDF5 file ({p.stat().st_size} bytes on disk; {msg}); "
                "was it copied or written completely?"
            ) from exc
        if "lock" in msg:
            raise InputDataError(
                f"{p}: HDF5 file is locked (still being written?); {msg}. "
                "HDF5_USE_FILE_LOCKING=FALSE reads it anyway"
            ) from exc
        raise InputDataError(f"{p}: cannot open as HDF5 ({msg})") from exc


def describe_3d(f: h5py.File) -> list[str]:
    """``"name (N, H, W) dtype"`` of every 3-D dataset in ``f`` (at most _MAX_LISTED + 1)."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> Any:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 3:
            found.append(f"{name} {obj.shape} {obj.dtype}")
        return True if len(found) > _MAX_LISTED else None

    with contextlib.suppress(Exception):  # a damaged file still gets its message
        f.visititems(visit)
    return found


def datasets_hint(f: h5py.File) -> str:
    """What 3-D datasets ``f`` has, for an error message about a wrong dataset path."""
    found = describe_3d(f)
    if not found:
        return "the file has no 3-D datasets"
    more = ", ..." if len(found) > _MAX_LISTED else ""
    return "3-D datasets in the file: " + ", ".join(found[:_MAX_LISTED]) + more


def list_frame_datasets(path: PathLike) -> list[str]:
    """``"name (N, H, W) dtype"`` of the 3-D datasets of an HDF5 file (first 21)."""
    with open_h5(path, "run file") as f:
        return describe_3d(f)


def open_frame_dataset(
    path: PathLike,
    dataset: str,
    *,
    frame_shape: tuple[int, int] | None = None,
    what: str = "run file",
    modules: bool = False,
) -> tuple[h5py.File, h5py.Dataset]:
    """Open ``path`` and its ``(N, H, W)`` integer/float ``dataset`` (soft links followed).

    ``frame_shape``: the ``(H, W)`` expected, checked. ``modules``: ``(N, M, ss, fs)`` is
    accepted too (a multi-module detector's frames). Returns the open file (the caller
    closes it) and the dataset; nothing is read. Raises InputDataError naming the file, and
    listing its 3-D datasets when ``dataset`` is wrong.
    """
    p = Path(path)
    f = open_h5(p, what)
    try:
        try:
            obj = f.get(dataset)
        except (KeyError, OSError, ValueError, TypeError, RuntimeError) as exc:
            raise InputDataError(
                f"{p}: cannot open dataset {dataset!r} ({exc}); {datasets_hint(f)}"
            ) from exc
        if obj is None:
            raise InputDataError(f"{p}: no dataset {dataset!r}; {datasets_hint(f)}")
        if not isinstance(obj, h5py.Dataset):
            raise InputDataError(f"{p}: {dataset!r} is a group, not a dataset; {datasets_hint(f)}")
        if obj.ndim != 3 and not (modules and obj.ndim == 4):
            raise InputDataError(
                f"{p}: dataset {dataset!r} has shape {obj.shape} ({obj.ndim}-D); frames must "
                f"be (N, H, W); {datasets_hint(f)}"
            )
        if obj.dtype.kind not in "iuf":
            raise InputDataError(
                f"{p}: dataset {dataset!r} has dtype {obj.dtype}, not an integer or float "
                "type; frames must be numbers"
            )
        if frame_shape is not None and tuple(obj.shape[1:]) != tuple(frame_shape):
            raise InputDataError(
                f"{p}: dataset {dataset!r} has frames of {tuple(obj.shape[1:])} pixels, "
                f"expected {tuple(frame_shape)}"
            )
    except BaseException:
        f.close()
        raise
    return f, obj


def plain(value: Any) -> Any:
    """An HDF5 attribute value as plain Python: bytes decoded (UTF-8), arrays as lists,
    numpy scalars as Python numbers."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OS":
            return [plain(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value
