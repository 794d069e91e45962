"""Read frames from HDF5/CXI runs and class labels from CSV/JSON/HDF5, robustly.

Runs
    One ``(N, H, W)`` dataset per file, at a path the user gives (CXI: for example
    ``entry_1/data_1/data``; soft links are followed). Any integer or float dtype; frames come
    back as float32, converted block by block (never the whole run at once)::

        with open_run("r0042.cxi", "entry_1/data_1/data") as src:
            x = read_frames(src, [7, 3, 7])          # (3, H, W) float32, in the order asked
            for start, block in iter_frames(src):    # (<=256, H, W) float32 blocks
                ...

Labels
    ``read_labels(path)`` reads one of

    - CSV with a header naming ``run``, ``index`` and ``class`` (any order, extra columns
      kept: numeric-looking columns become int64/float64, empty cells NaN, others str);
      the simulator's ``<stem>.labels.csv`` is such a file;
    - JSON: a list of ``{"run", "index", "class", ...}`` objects, or ``{"labels": [...]}``;
    - HDF5 (``.h5 .hdf5 .cxi .nxs``), in a group (``group=``, default the root), either
      1-D datasets ``run`` (str), ``index`` (int), ``class`` (str) of equal length (other 1-D
      datasets of that length become extra columns), or ONE dataset ``labels`` (or ``label``,
      as in hitstream's own ``/entry_1/result_1``) aligned with a run's frames: class names,
      or integer class indices with a ``classes`` attribute (on the dataset or the group; list
      of names or its JSON). Entries ``-1`` / ``""`` mean unlabelled and are skipped. The run
      is the ``run`` attribute (dataset, then group) or else the labels file's own name.

    Errors (InputDataError) name the file and where: ``line N`` (CSV, 1-based, header is
    line 1), ``entry K`` (JSON, 0-based) or ``row K of /group`` / ``/group/labels[K]`` (HDF5).
    Checked: missing columns/keys/datasets, index not an integer (``1.5``, ``""``, ``2.0``,
    ``true``) or negative, empty run or class, and the same ``(run, index)`` twice with
    different classes (twice with the same class: kept once). ``write_labels`` writes CSV,
    JSON or a new HDF5 file atomically (temporary file + rename; it refuses to replace an
    HDF5 file holding frames); ``merge_labels(old, new)`` lets a labelling tool resume.

Matching labels to runs (``load_labelled``)
    A label's ``run`` is compared with every run file given, in three steps, and the first
    step with any match decides: (1) the full path, as given or resolved; (2) the file name
    (``r0042.cxi``); (3) the stem (``r0042``). A name with a ``/`` is compared as a path
    only. More than one match at that step is an error (ambiguous), as is a labelled run
    that matches no file (use ``labels.select(run=...)`` to load a subset), two names for
    one file, or an index past the end. Frames come in the order of the runs given, then by
    frame index; runs without labels contribute nothing.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import sys
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from streamer.errors import ConfigError, InputDataError, OutputError

DEFAULT_CLASS_ORDER: tuple[str, ...] = ("single", "multiple", "empty", "other")
LABEL_COLUMNS: tuple[str, str, str] = ("run", "index", "class")
HDF5_SUFFIXES = frozenset({".h5", ".hdf5", ".hdf", ".cxi", ".nxs"})
PROGRESS_MIN_FRAMES = 1000  # a tqdm bar (stderr) above this many frames, unless told
READ_BLOCK_BYTES = 64 * 2**20  # most bytes (file dtype) read by one HDF5 call
_CHUNK_CACHE_BYTES = 64 * 2**20
_INT_RE = re.compile(r"[+-]?\d+")
_MAX_LISTED = 20

PathLike = str | os.PathLike[str]

# --- runs ---------------------------------------------------------------------------------


def _load_filter_plugins() -> None:
    with contextlib.suppress(ImportError):  # registers bitshuffle, LZ4, Blosc... for HDF5
        import hdf5plugin  # noqa: F401


def _open_h5(path: PathLike, what: str) -> h5py.File:
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


def _describe_3d(f: h5py.File) -> list[str]:
    """``"name (N, H, W) dtype"`` of every 3-D dataset in ``f`` (at most _MAX_LISTED + 1)."""
    found: list[str] = []

    def visit(name: str, obj: Any) -> Any:
        if isinstance(obj, h5py.Dataset) and obj.ndim == 3:
            found.append(f"{name} {obj.shape} {obj.dtype}")
        return True if len(found) > _MAX_LISTED else None

    with contextlib.suppress(Exception):  # a damaged file still gets its message
        f.visititems(visit)
    return found


def _datasets_hint(f: h5py.File) -> str:
    found = _describe_3d(f)
    if not found:
        return "the file has no 3-D datasets"
    more = ", ..." if len(found) > _MAX_LISTED else ""
    return "3-D datasets in the file: " + ", ".join(found[:_MAX_LISTED]) + more


def list_frame_datasets(path: PathLike) -> list[str]:
    """``"name (N, H, W) dtype"`` of the 3-D datasets of an HDF5 file (first 21)."""
    with _open_h5(path, "run file") as f:
        return _describe_3d(f)


@dataclass(frozen=True)
class RunInfo:
    """What a run was read from (for provenance and geometry checks)."""

    path: Path
    dataset: str
    shape: tuple[int, int, int]
    dtype: np.dtype
    attrs: dict[str, Any]


class RunSource:
    """An open ``(N, H, W)`` frames dataset; nothing is read until asked. Context manager."""

    def __init__(self, path: Path, dataset: str, file: h5py.File, dset: h5py.Dataset) -> None:
        self.path = path
        self.dataset = dataset
        self.shape: tuple[int, int, int] = tuple(int(n) for n in dset.shape)  # type: ignore[assignment]
        self.dtype: np.dtype = dset.dtype
        self.chunks: tuple[int, ...] | None = dset.chunks
        self._file: h5py.File | None = file
        self._dset = dset

    @property
    def name(self) -> str:
        """File name, the usual ``run`` of labels."""
        return self.path.name

    @property
    def n_frames(self) -> int:
        return self.shape[0]

    @property
    def frame_shape(self) -> tuple[int, int]:
        return self.shape[1], self.shape[2]

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def closed(self) -> bool:
        return self._file is None

    @property
    def dset(self) -> h5py.Dataset:
        if self._file is None:
            raise InputDataError(f"{self.path}: run is closed")
        return self._dset

    @property
    def attrs(self) -> dict[str, Any]:
        """Attributes of the dataset (bytes decoded; unreadable ones left out)."""
        out: dict[str, Any] = {}
        for key in self.dset.attrs:
            with contextlib.suppress(Exception):
                out[key] = _plain(self.dset.attrs[key])
        return out

    def info(self) -> RunInfo:
        return RunInfo(self.path, self.dataset, self.shape, self.dtype, self.attrs)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> RunSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = " closed" if self.closed else ""
        return f"<RunSource {self.path}:{self.dataset} {self.shape} {self.dtype}{state}>"


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OS":
            return [_plain(v) for v in value.tolist()]
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def open_run(
    path: PathLike, dataset: str, *, frame_shape: tuple[int, int] | None = None
) -> RunSource:
    """Open the ``(N, H, W)`` integer/float ``dataset`` of an HDF5/CXI file, lazily.

    ``frame_shape``: the ``(H, W)`` expected, checked. Raises InputDataError naming the file
    (and listing its 3-D datasets when ``dataset`` is wrong).
    """
    p = Path(path)
    f = _open_h5(p, "run file")
    try:
        try:
            obj = f.get(dataset)
        except (KeyError, OSError, ValueError, TypeError, RuntimeError) as exc:
            raise InputDataError(
                f"{p}: cannot open dataset {dataset!r} ({exc}); {_datasets_hint(f)}"
            ) from exc
        if obj is None:
            raise InputDataError(f"{p}: no dataset {dataset!r}; {_datasets_hint(f)}")
        if not isinstance(obj, h5py.Dataset):
            raise InputDataError(f"{p}: {dataset!r} is a group, not a dataset; {_datasets_hint(f)}")
        if obj.ndim != 3:
            raise InputDataError(
                f"{p}: dataset {dataset!r} has shape {obj.shape} ({obj.ndim}-D); frames must "
                f"be (N, H, W); {_datasets_hint(f)}"
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
        return RunSource(p, dataset, f, obj)
    except BaseException:
        f.close()
        raise


class RunGroup(Sequence[RunSource]):
    """Several open runs with the same frame shape; closes them all. Context manager."""

    def __init__(self, sources: Sequence[RunSource]) -> None:
        self.sources = tuple(sources)

    def __getitem__(self, k):  # type: ignore[no-untyped-def]
        return self.sources[k]

    def __len__(self) -> int:
        return len(self.sources)

    @property
    def n_frames(self) -> int:
        return sum(s.n_frames for s in self.sources)

    @property
    def frame_shape(self) -> tuple[int, int] | None:
        return self.sources[0].frame_shape if self.sources else None

    def close(self) -> None:
        for s in self.sources:
            s.close()

    def __enter__(self) -> RunGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_runs(
    runs: Iterable[tuple[PathLike, str]], *, frame_shape: tuple[int, int] | None = None
) -> RunGroup:
    """Open ``(path, dataset)`` pairs; their frame shapes must agree (and be ``frame_shape``).

    The same file and dataset twice is an error. On any error the runs opened are closed.
    """
    sources: list[RunSource] = []
    seen: dict[tuple[str, str], Path] = {}
    try:
        for path, dataset in runs:
            src = open_run(path, dataset, frame_shape=frame_shape)
            sources.append(src)
            key = (str(src.path.resolve()), dataset.strip("/"))
            if key in seen:
                raise InputDataError(f"{src.path}:{dataset} is given twice")
            seen[key] = src.path
            first = sources[0]
            if src.frame_shape != first.frame_shape:
                raise InputDataError(
                    f"{src.path}:{dataset} has frames of {src.frame_shape} pixels but "
                    f"{first.path}:{first.dataset} has {first.frame_shape}"
                )
    except BaseException:
        for s in sources:
            s.close()
        raise
    return RunGroup(sources)


def _progress(total: int, progress: bool | None, desc: str):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    show = total > PROGRESS_MIN_FRAMES if progress is None else progress
    return tqdm(total=total, unit="frame", desc=desc, file=sys.stderr, disable=not show)


def _block_frames(src: RunSource) -> int:
    frame_bytes = max(1, src.shape[1] * src.shape[2] * src.dtype.itemsize)
    return max(1, READ_BLOCK_BYTES // frame_bytes)


def _segments(u: np.ndarray, chunk_rows: int, block: int) -> Iterator[tuple[int, int]]:
    """Split sorted unique frame numbers into ``[i, j)`` runs read by one slice each:
    neighbours join when consecutive or in the same storage chunk, up to ``block`` frames."""
    i = 0
    n = len(u)
    while i < n:
        j = i + 1
        while (
            j < n
            and u[j] - u[i] < block
            and (u[j] - u[j - 1] == 1 or u[j] // chunk_rows == u[j - 1] // chunk_rows)
        ):
            j += 1
        yield i, j
        i = j


def _fill(src: RunSource, idx: np.ndarray, out: np.ndarray, bar: Any = None) -> None:
    """``out[k] = frame idx[k]`` as float32; reads sorted, chunk by chunk (idx checked)."""
    if len(idx) == 0:
        return
    dset = src.dset
    order = np.argsort(idx, kind="stable")
    sidx = idx[order]
    first = np.ones(len(sidx), bool)
    first[1:] = sidx[1:] != sidx[:-1]
    u = sidx[first]
    starts = np.flatnonzero(first)  # where each unique frame's run in sidx begins
    ends = np.append(starts[1:], len(sidx))
    chunk_rows = int(src.chunks[0]) if src.chunks else 1
    direct = src.dtype == np.float32 and out.flags.c_contiguous
    for i, j in _segments(u, chunk_rows, _block_frames(src)):
        lo, hi = int(u[i]), int(u[j - 1]) + 1
        a, b = int(starts[i]), int(ends[j - 1])  # rows of sidx served by this read
        pos = order[a:b]
        try:
            dense = b - a == j - i == hi - lo  # no gaps, no repeats
            if dense and bool(np.all(np.diff(pos) == 1)):
                p0 = int(pos[0])
                if direct:
                    dset.read_direct(out, np.s_[lo:hi], np.s_[p0 : p0 + b - a])
                else:
                    out[p0 : p0 + b - a] = dset[lo:hi]
            else:
                out[pos] = dset[lo:hi][sidx[a:b] - lo]
        except OSError as exc:
            raise InputDataError(
                f"{src.path}:{src.dataset}: cannot read frames {lo}..{hi - 1} ({exc}); the "
                "file may be truncated or damaged, or compressed with a filter that is not "
                "installed (hdf5plugin)"
            ) from exc
        if bar is not None:
            bar.update(b - a)


def _check_indices(src: RunSource, indices: Any) -> np.ndarray:
    idx = np.asarray(indices)
    if idx.size == 0:
        return np.zeros(0, np.int64)
    if idx.ndim != 1 or idx.dtype.kind not in "iu":
        raise InputDataError(f"{src.path}:{src.dataset}: frame indices must be 1-D integers")
    idx = idx.astype(np.int64)
    bad = np.flatnonzero((idx < 0) | (idx >= src.n_frames))
    if len(bad):
        raise InputDataError(
            f"{src.path}:{src.dataset}: frame index {int(idx[bad[0]])} is out of range; "
            f"the dataset has {src.n_frames} frames (0..{src.n_frames - 1})"
        )
    return idx


def read_frames(
    source: RunSource, indices: Sequence[int] | np.ndarray, *, progress: bool | None = None
) -> np.ndarray:
    """Frames ``indices`` (any order, repeats allowed) as ``(K, H, W)`` float32, in that
    order. Reads sorted, one slice per storage chunk / run of neighbours, then reorders.
    ``progress``: tqdm bar on stderr (default: above PROGRESS_MIN_FRAMES frames)."""
    idx = _check_indices(source, indices)
    out = np.empty((len(idx), *source.frame_shape), np.float32)
    with _progress(len(idx), progress, source.name) as bar:
        _fill(source, idx, out, bar)
    return out


def iter_frames(
    source: RunSource,
    chunk: int = 256,
    *,
    start: int = 0,
    stop: int | None = None,
    progress: bool | None = False,
) -> Iterator[tuple[int, np.ndarray]]:
    """``(first_index, frames)`` for consecutive blocks of at most ``chunk`` frames
    (``(k, H, W)`` float32, a fresh array each time) of frames ``start .. stop-1``."""
    if chunk < 1:
        raise ConfigError(f"chunk must be >= 1, got {chunk}")
    n = source.n_frames
    stop = n if stop is None else stop
    if not 0 <= start <= stop <= n:
        raise InputDataError(
            f"{source.path}:{source.dataset}: frames {start}..{stop - 1} are not within "
            f"the {n} frames of the dataset"
        )
    with _progress(stop - start, progress, source.name) as bar:
        for a in range(start, stop, chunk):
            b = min(a + chunk, stop)
            out = np.empty((b - a, *source.frame_shape), np.float32)
            _fill(source, np.arange(a, b, dtype=np.int64), out, bar)
            yield a, out


# --- labels -------------------------------------------------------------------------------


def _str_array(values: Any) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind == "U":
        return arr
    return np.array([str(v) for v in arr.tolist()], dtype=str) if arr.size else np.zeros(0, str)


def _order_classes(names: Iterable[str]) -> tuple[str, ...]:
    present = set(names)
    first = tuple(c for c in DEFAULT_CLASS_ORDER if c in present)
    return first + tuple(sorted(present - set(DEFAULT_CLASS_ORDER)))


@dataclass(frozen=True)
class LabelTable:
    """Class labels of frames: row ``k`` says frame ``index[k]`` of run ``run[k]`` is
    ``label[k]``. ``(run, index)`` pairs are unique; ``extra`` holds further columns."""

    run: np.ndarray  # (n,) str
    index: np.ndarray  # (n,) int64, >= 0
    label: np.ndarray  # (n,) str, non-empty
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        run, label = _str_array(self.run), _str_array(self.label)
        raw = np.asarray(self.index)
        if raw.size and raw.dtype.kind not in "iu":
            raise ValueError(f"LabelTable index must be integers, got dtype {raw.dtype}")
        index = raw.astype(np.int64) if raw.size else np.zeros(0, np.int64)
        extra = {str(k): np.asarray(v) for k, v in self.extra.items()}
        n = len(run)
        for name, arr in (("index", index), ("label", label), *extra.items()):
            if arr.ndim != 1 or len(arr) != n:
                raise ValueError(f"LabelTable column {name!r} has shape {arr.shape}, want ({n},)")
        clash = set(extra) & set(LABEL_COLUMNS)
        if clash:
            raise ValueError(f"extra columns may not be named {sorted(clash)}")
        if n and int(index.min()) < 0:
            raise ValueError(f"negative frame index {int(index.min())}")
        if n and (min(map(len, run.tolist())) == 0 or min(map(len, label.tolist())) == 0):
            raise ValueError("empty run or class name")
        keys = set(zip(run.tolist(), index.tolist(), strict=True))
        if len(keys) != n:
            raise ValueError("duplicate (run, index) pairs; use merge_labels to combine tables")
        object.__setattr__(self, "run", run)
        object.__setattr__(self, "index", index)
        object.__setattr__(self, "label", label)
        object.__setattr__(self, "extra", extra)

    @classmethod
    def empty(cls) -> LabelTable:
        return cls(np.zeros(0, str), np.zeros(0, np.int64), np.zeros(0, str))

    def __len__(self) -> int:
        return len(self.run)

    def classes(self) -> tuple[str, ...]:
        """Classes present: single, multiple, empty, other first (if present), then sorted."""
        return _order_classes(self.label.tolist())

    def runs(self) -> tuple[str, ...]:
        """Run names in order of first appearance."""
        return tuple(dict.fromkeys(self.run.tolist()))

    def counts(self) -> dict[str, int]:
        """Labels per class, in ``classes()`` order."""
        names, n = np.unique(self.label, return_counts=True)
        got = dict(zip(names.tolist(), n.tolist(), strict=True))
        return {c: got[c] for c in self.classes()}

    def take(self, rows: np.ndarray) -> LabelTable:
        """Rows by boolean mask or row numbers."""
        return LabelTable(
            self.run[rows],
            self.index[rows],
            self.label[rows],
            {k: v[rows] for k, v in self.extra.items()},
        )

    def select(
        self, run: str | Iterable[str] | None = None, label: str | Iterable[str] | None = None
    ) -> LabelTable:
        """Rows of the given run(s) and/or class(es) (exact names)."""
        mask = np.ones(len(self), bool)
        for col, want in ((self.run, run), (self.label, label)):
            if want is not None:
                names = [want] if isinstance(want, str) else list(want)
                mask &= np.isin(col, np.asarray(names, dtype=str))
        return self.take(mask)

    def records(self) -> list[dict[str, Any]]:
        """One dict per row: run, index, class, then the extra columns (NaN -> None)."""
        cols = {k: v.tolist() for k, v in self.extra.items()}
        out = []
        for k, (r, i, c) in enumerate(
            zip(self.run.tolist(), self.index.tolist(), self.label.tolist(), strict=True)
        ):
            rec: dict[str, Any] = {"run": r, "index": i, "class": c}
            for name, values in cols.items():
                v = values[k]
                rec[name] = None if isinstance(v, float) and not math.isfinite(v) else v
            out.append(rec)
        return out


def _column(values: Sequence[Any]) -> np.ndarray:
    """A column from parsed values: int64 if all integers, float64 if all numbers or empty
    (NaN), otherwise str (empty: "")."""

    def empty(v: Any) -> bool:
        return v is None or (isinstance(v, str) and not v.strip())

    def as_int(v: Any) -> int | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, int | np.integer):
            return int(v)
        if isinstance(v, str) and _INT_RE.fullmatch(v.strip()):
            return int(v)
        return None

    def as_float(v: Any) -> float | None:
        if isinstance(v, bool):
            return None
        if isinstance(v, int | float | np.integer | np.floating):
            return float(v)
        if isinstance(v, str):
            try:
                return float(v)
            except ValueError:
                return None
        return None

    vals = list(values)
    full = [v for v in vals if not empty(v)]
    if full:
        ints = [as_int(v) for v in vals]
        if all(i is not None and -(2**63) <= i < 2**63 for i in ints):
            return np.array(ints, np.int64)
        floats = [math.nan if empty(v) else as_float(v) for v in vals]
        if all(x is not None for x in floats):
            return np.array(floats, np.float64)
    return np.array(["" if empty(v) else str(v) for v in vals], dtype=str)


class _Rows:
    """Collects validated rows of one labels file; errors say where."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.run: list[str] = []
        self.index: list[int] = []
        self.label: list[str] = []
        self.extra: list[dict[str, Any]] = []
        self.seen: dict[tuple[str, int], tuple[str, str]] = {}

    def fail(self, where: str, what: str) -> InputDataError:
        return InputDataError(f"{self.path}: {where}: {what}")

    def add(self, where: str, run: Any, index: Any, label: Any, extra: Mapping[str, Any]) -> None:
        r = _text(run)
        c = _text(label)
        if not r:
            raise self.fail(where, "empty run")
        if isinstance(index, bool) or not (
            isinstance(index, int | np.integer)
            or (isinstance(index, str) and _INT_RE.fullmatch(index.strip()))
        ):
            raise self.fail(where, f"index {index!r} is not an integer")
        i = int(index)
        if i < 0:
            raise self.fail(where, f"negative index {i}")
        if i >= 2**63:
            raise self.fail(where, f"index {i} is too large")
        if not c:
            raise self.fail(where, f"empty class for run {r!r} index {i}")
        prev = self.seen.get((r, i))
        if prev is not None:
            if prev[0] != c:
                raise self.fail(
                    where,
                    f"run {r!r} index {i} is labelled {c!r} here but {prev[0]!r} at {prev[1]} "
                    "(conflicting duplicate)",
                )
            return
        self.seen[(r, i)] = (c, where)
        self.run.append(r)
        self.index.append(i)
        self.label.append(c)
        self.extra.append(dict(extra))

    def table(self) -> LabelTable:
        names = list(dict.fromkeys(k for row in self.extra for k in row))
        extra = {k: _column([row.get(k) for row in self.extra]) for k in names}
        return LabelTable(
            np.array(self.run, dtype=str),
            np.array(self.index, np.int64),
            np.array(self.label, dtype=str),
            extra,
        )


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return str(value).strip()


def _read_text(path: Path) -> str:
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            return fh.read()
    except FileNotFoundError:
        raise InputDataError(f"{path}: labels file does not exist") from None
    except IsADirectoryError:
        raise InputDataError(f"{path}: labels file is a directory") from None
    except UnicodeDecodeError as exc:
        raise InputDataError(f"{path}: labels file is not UTF-8 text ({exc.reason})") from exc
    except OSError as exc:
        raise InputDataError(f"{path}: cannot read labels file ({exc.strerror})") from exc


def _read_csv(path: Path, text: str) -> LabelTable:
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader, None)
        if header is None:
            raise InputDataError(f"{path}: empty labels file; want a header 'run,index,class'")
        names = [h.strip() for h in header]
        lower = [h.lower() for h in names]
        missing = [c for c in LABEL_COLUMNS if c not in lower]
        if missing:
            raise InputDataError(
                f"{path}: line 1: header lacks column(s) {', '.join(missing)}; want "
                f"'run,index,class[,...]', got {','.join(header)!r}"
            )
        dups = sorted({h for h in names if h and names.count(h) > 1})
        if dups:
            raise InputDataError(f"{path}: line 1: duplicate column(s) {dups}")
        col = {c: lower.index(c) for c in LABEL_COLUMNS}
        extra_cols = [
            (k, h) for k, h in enumerate(names) if h and k not in col.values()
        ]  # unnamed columns are ignored
        need = max(col.values()) + 1
        rows = _Rows(path)
        for row in reader:
            line = reader.line_num
            if not any(cell.strip() for cell in row):
                continue
            if len(row) > len(header):
                raise InputDataError(
                    f"{path}: line {line}: {len(row)} fields, header has {len(header)}"
                )
            if len(row) < need:
                raise InputDataError(
                    f"{path}: line {line}: {len(row)} fields, too few for columns run, index, class"
                )
            extra = {h: (row[k] if k < len(row) else "") for k, h in extra_cols}
            rows.add(f"line {line}", row[col["run"]], row[col["index"]], row[col["class"]], extra)
    except csv.Error as exc:
        raise InputDataError(f"{path}: line {reader.line_num}: malformed CSV ({exc})") from exc
    return rows.table()


def _read_json(path: Path, text: str) -> LabelTable:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputDataError(
            f"{path}: line {exc.lineno}: invalid JSON ({exc.msg}, column {exc.colno})"
        ) from exc
    if isinstance(doc, dict):
        if "labels" not in doc:
            raise InputDataError(f"{path}: JSON object without a 'labels' list")
        doc = doc["labels"]
    if not isinstance(doc, list):
        raise InputDataError(
            f"{path}: JSON must be a list of {{run, index, class}} objects or {{'labels': [...]}}"
        )
    rows = _Rows(path)
    for k, entry in enumerate(doc):
        where = f"entry {k}"
        if not isinstance(entry, dict):
            raise rows.fail(where, f"expected an object with run, index, class, got {entry!r}")
        missing = [c for c in LABEL_COLUMNS if c not in entry]
        if missing:
            raise rows.fail(where, f"lacks key(s) {', '.join(missing)}")
        extra = {str(key): v for key, v in entry.items() if key not in LABEL_COLUMNS}
        for key, v in extra.items():
            if isinstance(v, dict | list):
                raise rows.fail(where, f"value of {key!r} must be a string or number")
        rows.add(where, entry["run"], entry["index"], entry["class"], extra)
    return rows.table()


def _h5_strings(dset: h5py.Dataset, where: str) -> list[str]:
    if dset.dtype.kind in "SUO":
        try:
            return [str(v) for v in dset.asstr()[()].tolist()]
        except (TypeError, ValueError, UnicodeDecodeError) as exc:
            raise InputDataError(f"{where}: cannot read as text ({exc})") from exc
    if dset.dtype.kind in "iu":
        return [str(v) for v in dset[()].tolist()]
    raise InputDataError(f"{where}: dtype {dset.dtype}; want strings")


def _h5_classes_attr(*objs: Any) -> list[str] | None:
    for obj in objs:
        if "classes" in obj.attrs:
            raw = _plain(obj.attrs["classes"])
            if isinstance(raw, str):
                try:
                    raw = json.loads(raw)
                except json.JSONDecodeError:
                    raw = [s.strip() for s in raw.split(",")]
            if isinstance(raw, list) and all(isinstance(c, str) for c in raw):
                return [c.strip() for c in raw]
            raise InputDataError(
                f"{obj.file.filename}:{obj.name}: attribute 'classes' is not a list of class names"
            )
    return None


def _read_h5_labels(path: Path, group: str) -> LabelTable:
    with _open_h5(path, "labels file") as f:
        g = f.get(group)
        if not isinstance(g, h5py.Group):
            raise InputDataError(f"{path}: no group {group!r} for labels")
        members = sorted(g.keys())
        datasets = {k: g[k] for k in members if isinstance(g.get(k), h5py.Dataset)}
        rows = _Rows(path)
        try:
            if any(c in datasets for c in LABEL_COLUMNS):
                missing = [c for c in LABEL_COLUMNS if c not in datasets]
                if missing:
                    raise InputDataError(
                        f"{path}: group {g.name!r} lacks dataset(s) {', '.join(missing)} "
                        "(want run, index, class)"
                    )
                cols = {c: datasets[c] for c in LABEL_COLUMNS}
                n = cols["run"].shape[0] if cols["run"].ndim == 1 else -1
                for d in cols.values():
                    if d.ndim != 1 or d.shape[0] != n:
                        raise InputDataError(
                            f"{path}:{d.name}: shape {d.shape}; run, index and class must be "
                            "1-D of the same length"
                        )
                if cols["index"].dtype.kind not in "iu":
                    raise InputDataError(
                        f"{path}:{cols['index'].name}: dtype {cols['index'].dtype}; want integers"
                    )
                run = _h5_strings(cols["run"], f"{path}:{cols['run'].name}")
                label = _h5_strings(cols["class"], f"{path}:{cols['class'].name}")
                index = cols["index"][()].tolist()
                extras = {}
                for k, d in datasets.items():
                    if k in LABEL_COLUMNS or d.ndim != 1 or d.shape[0] != n:
                        continue
                    if d.dtype.kind in "SUO":
                        extras[k] = _h5_strings(d, f"{path}:{d.name}")
                    elif d.dtype.kind in "iufb":
                        extras[k] = d[()].tolist()
                listed = _plain(g.attrs.get("columns", []))
                if isinstance(listed, list):  # the order write_labels used
                    extras = {k: extras[k] for k in listed if k in extras} | extras
                for k in range(n):
                    extra = {name: vals[k] for name, vals in extras.items()}
                    rows.add(f"row {k} of {g.name}", run[k], index[k], label[k], extra)
                return rows.table()
            name = "labels" if "labels" in datasets else "label" if "label" in datasets else None
            if name is None:
                raise InputDataError(
                    f"{path}: group {g.name!r} has neither datasets run, index, class nor a "
                    f"'labels' dataset (members: {', '.join(members) or 'none'})"
                )
            d = datasets[name]
            if d.ndim != 1:
                raise InputDataError(f"{path}:{d.name}: shape {d.shape}; want (N,)")
            run_name = _text(_plain(d.attrs.get("run", g.attrs.get("run", "")))) or path.name
            if d.dtype.kind in "iu":
                classes = _h5_classes_attr(d, g)
                if classes is None:
                    raise InputDataError(
                        f"{path}:{d.name}: integer labels need a 'classes' attribute (names)"
                    )
                values = d[()].astype(np.int64)
                for k, v in enumerate(values.tolist()):
                    if v < 0:
                        continue  # unlabelled
                    if v >= len(classes):
                        raise rows.fail(
                            f"{d.name}[{k}]", f"class {v} is not in 0..{len(classes) - 1}"
                        )
                    rows.add(f"{d.name}[{k}]", run_name, k, classes[v], {})
            elif d.dtype.kind in "SUO":
                for k, v in enumerate(_h5_strings(d, f"{path}:{d.name}")):
                    if v.strip():
                        rows.add(f"{d.name}[{k}]", run_name, k, v, {})
            else:
                raise InputDataError(
                    f"{path}:{d.name}: dtype {d.dtype}; want class names or integer classes"
                )
            return rows.table()
        except OSError as exc:
            raise InputDataError(f"{path}: cannot read labels in {group!r} ({exc})") from exc


def _format_of(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix in (".csv", ".json"):
        return suffix[1:]
    return ""


def read_labels(path: PathLike, *, group: str = "/") -> LabelTable:
    """Read a CSV, JSON or HDF5 labels file (see the module docstring; format by suffix,
    else sniffed). ``group``: where the labels are in an HDF5 file."""
    p = Path(path)
    kind = _format_of(p)
    if kind == "hdf5" or (not kind and p.is_file() and h5py.is_hdf5(p)):
        return _read_h5_labels(p, group)
    text = _read_text(p)
    if kind == "json" or (not kind and text.lstrip()[:1] in ("[", "{")):
        return _read_json(p, text)
    if "\x00" in text:
        raise InputDataError(f"{p}: labels file contains NUL bytes; not a CSV text file")
    return _read_csv(p, text)


def merge_labels(old: LabelTable, new: LabelTable) -> LabelTable:
    """``old`` updated by ``new``: a ``(run, index)`` in both takes ``new``'s class and its
    extra columns (columns only ``old`` has keep their values); old rows stay in place, new
    ones follow in their order. Column types: str if either side is str, else float if
    values are missing or either is float, else int."""
    pos = {k: n for n, k in enumerate(zip(old.run.tolist(), old.index.tolist(), strict=True))}
    run, index, label = old.run.tolist(), old.index.tolist(), old.label.tolist()
    names = list(dict.fromkeys([*old.extra, *new.extra]))
    cols: dict[str, list[Any]] = {
        k: old.extra[k].tolist() if k in old.extra else [None] * len(old) for k in names
    }
    new_cols = {k: v.tolist() for k, v in new.extra.items()}
    for m, key in enumerate(zip(new.run.tolist(), new.index.tolist(), strict=True)):
        n = pos.get(key)
        if n is None:
            n = len(run)
            pos[key] = n
            run.append(key[0])
            index.append(key[1])
            label.append(str(new.label[m]))
            for k in names:
                cols[k].append(None)
        else:
            label[n] = str(new.label[m])
        for k, values in new_cols.items():
            cols[k][n] = values[m]
    extra = {}
    for k in names:
        kinds = {t.extra[k].dtype.kind for t in (old, new) if k in t.extra}
        values = cols[k]
        if "U" in kinds:
            extra[k] = np.array(["" if v is None else str(v) for v in values], dtype=str)
        elif "f" in kinds or "b" in kinds or any(v is None for v in values):
            extra[k] = np.array([math.nan if v is None else v for v in values], np.float64)
        else:
            extra[k] = np.array(values, np.int64)
    return LabelTable(
        np.array(run, dtype=str), np.array(index, np.int64), np.array(label, str), extra
    )


def _csv_cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return str(v)


def write_labels(path: PathLike, table: LabelTable, *, group: str = "/") -> Path:
    """Write ``table`` as CSV (``run,index,class,extra...``), JSON (``{"labels": [...]}``)
    or HDF5 (datasets run, index, class, extra... in ``group`` of a new file), chosen by the
    suffix. Atomic: a temporary file beside ``path`` is renamed over it when complete."""
    p = Path(path)
    kind = _format_of(p)
    if not kind:
        raise OutputError(f"{p}: labels file must end in .csv, .json or .h5")
    if not p.parent.is_dir():
        raise OutputError(f"{p}: directory {p.parent} does not exist")
    if kind == "hdf5" and p.is_file() and h5py.is_hdf5(p):
        with _open_h5(p, "labels file") as f:
            if _describe_3d(f):
                raise OutputError(f"{p} holds frames; write labels to a file of their own")
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        if kind == "hdf5":
            _write_h5_labels(tmp, table, group)
        else:
            with open(tmp, "x", encoding="utf-8", newline="") as fh:
                if kind == "csv":
                    w = csv.writer(fh, lineterminator="\n")
                    w.writerow([*LABEL_COLUMNS, *table.extra])
                    for rec in table.records():
                        w.writerow([_csv_cell(v) if v is not None else "" for v in rec.values()])
                else:
                    json.dump({"labels": table.records()}, fh, indent=1, allow_nan=False)
                    fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
        if p.exists():
            with contextlib.suppress(OSError):
                os.chmod(tmp, p.stat().st_mode & 0o777)
        os.replace(tmp, p)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if isinstance(exc, OSError):
            raise OutputError(f"{p}: cannot write labels ({exc})") from exc
        raise
    return p


def _write_h5_labels(path: Path, table: LabelTable, group: str) -> None:
    text = h5py.string_dtype("utf-8")
    with h5py.File(path, "w-") as f:
        g = f.require_group(group) if group.strip("/") else f
        g.create_dataset("run", data=table.run.astype(object), dtype=text)
        g.create_dataset("index", data=table.index)
        g.create_dataset("class", data=table.label.astype(object), dtype=text)
        g.attrs["columns"] = [*LABEL_COLUMNS, *table.extra]
        for k, v in table.extra.items():
            if v.dtype.kind == "U":
                g.create_dataset(k, data=v.astype(object), dtype=text)
            else:
                g.create_dataset(k, data=v)


# --- labelled frames ------------------------------------------------------------------------


@dataclass(frozen=True)
class Labelled:
    """Labelled frames from several runs, in the order of the runs given, then by index."""

    frames: np.ndarray  # (N, H, W) float32
    y: np.ndarray  # (N,) int64, index into classes
    classes: tuple[str, ...]
    run: np.ndarray  # (N,) str, the labels' run names
    index: np.ndarray  # (N,) int64, frame index within the run
    extra: dict[str, np.ndarray] = field(default_factory=dict)  # labels' extra columns
    sources: dict[str, RunInfo] = field(default_factory=dict)  # run name -> file read

    def __len__(self) -> int:
        return len(self.y)

    def counts(self) -> dict[str, int]:
        """Frames per class, in ``classes`` order (zeros included)."""
        n = np.bincount(self.y, minlength=len(self.classes))
        return {c: int(n[k]) for k, c in enumerate(self.classes)}


def match_run(name: str, paths: Sequence[PathLike]) -> int | None:
    """Position in ``paths`` of the run a label's ``run`` names (full path, then file name,
    then stem; the first step with a match decides); None if none. Ambiguous: InputDataError."""
    ps = [Path(p) for p in paths]
    resolved = [p.resolve() for p in ps]
    target = Path(name).resolve() if ("/" in name or os.sep in name) else None
    steps = (
        [k for k, p in enumerate(ps) if name == str(p) or resolved[k] == target],
        [k for k, p in enumerate(ps) if name == p.name],
        [k for k, p in enumerate(ps) if name == p.stem],
    )
    for hits in steps:
        if len(hits) > 1:
            files = ", ".join(str(ps[k]) for k in hits)
            raise InputDataError(f"labels run {name!r} is ambiguous: it matches {files}")
        if hits:
            return hits[0]
    return None


def _check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    out = tuple(classes)
    if not out or any(not isinstance(c, str) or not c.strip() for c in out):
        raise ConfigError(f"classes must be non-empty names, got {list(out)}")
    if len(set(out)) != len(out):
        raise ConfigError(f"classes contain duplicates: {list(out)}")
    return out


def load_labelled(
    runs: Sequence[tuple[PathLike, str]],
    labels: LabelTable,
    classes: Sequence[str] | None = None,
    *,
    frame_shape: tuple[int, int] | None = None,
    progress: bool | None = None,
) -> Labelled:
    """Read every labelled frame of ``runs`` (``(path, dataset)`` pairs) as float32 with its
    integer class. Each labelled run must match one file (see ``match_run``); runs without
    labels are skipped. ``classes``: the class order (default: ``labels.classes()``); labels
    outside it are an error. Frames are read in blocks, with a tqdm bar on stderr above
    PROGRESS_MIN_FRAMES frames (``progress`` forces it on/off)."""
    if len(labels) == 0:
        raise InputDataError("no labels to load")
    order = _check_classes(classes) if classes is not None else labels.classes()
    unknown = sorted(set(labels.label.tolist()) - set(order))
    if unknown:
        counts = labels.counts()
        listed = ", ".join(f"{c!r} ({counts[c]} labels)" for c in unknown)
        raise InputDataError(f"labels use classes {listed} not in the classes {list(order)}")
    paths = [Path(p) for p, _ in runs]
    names = labels.runs()
    where: dict[str, int] = {}
    missing = []
    for name in names:
        k = match_run(name, paths)
        if k is None:
            missing.append(name)
        else:
            where[name] = k
    if missing:
        n = labels.select(run=missing[0])
        given = ", ".join(p.name for p in paths) or "none"
        raise InputDataError(
            f"labels name run(s) {', '.join(repr(m) for m in missing[:10])} "
            f"({len(n)} labels for {missing[0]!r}), not among the runs given ({given})"
        )
    by_run: dict[int, str] = {}
    for name, k in where.items():
        if k in by_run:
            raise InputDataError(
                f"labels name run {paths[k]} both as {by_run[k]!r} and {name!r}; use one name"
            )
        by_run[k] = name
    class_of = {c: i for i, c in enumerate(order)}
    with open_runs(runs, frame_shape=frame_shape) as group:
        plan = []
        for k, src in enumerate(group):
            name = by_run.get(k)
            if name is None:
                continue
            rows = np.flatnonzero(labels.run == name)
            rows = rows[np.argsort(labels.index[rows], kind="stable")]
            idx = labels.index[rows]
            if len(idx) and int(idx[-1]) >= src.n_frames:
                raise InputDataError(
                    f"labels for run {name!r} name frame {int(idx[-1])}, but "
                    f"{src.path}:{src.dataset} has {src.n_frames} frames (0..{src.n_frames - 1})"
                )
            plan.append((src, name, rows, idx))
        total = sum(len(r) for _, _, r, _ in plan)
        shape = group.frame_shape or (0, 0)
        try:
            frames = np.empty((total, *shape), np.float32)
        except MemoryError as exc:
            raise InputDataError(
                f"not enough memory for {total} frames of {shape} float32 "
                f"({total * shape[0] * shape[1] * 4 / 1e9:.1f} GB)"
            ) from exc
        offset = 0
        with _progress(total, progress, "read labelled frames") as bar:
            for src, _, _, idx in plan:
                _fill(src, idx, frames[offset : offset + len(idx)], bar)
                offset += len(idx)
        sources = {name: src.info() for src, name, _, _ in plan}
    rows = np.concatenate([r for _, _, r, _ in plan]) if plan else np.zeros(0, np.int64)
    y = np.array([class_of[c] for c in labels.label[rows].tolist()], np.int64)
    return Labelled(
        frames=frames,
        y=y,
        classes=order,
        run=labels.run[rows],
        index=labels.index[rows],
        extra={k: v[rows] for k, v in labels.extra.items()},
        sources=sources,
    )
