"""Class labels of frames from CSV/JSON/HDF5 files, robustly: read, write, merge.

``read_labels(path)`` reads one of

- CSV with a header naming ``run``, ``index`` and ``class`` (any order, extra columns
  kept: numeric-looking columns become int64/float64, empty cells NaN, others str);
  the simulator's ``<stem>.labels.csv`` is such a file;
- JSON: a list of ``{"run", "index", "class", ...}`` objects, or ``{"labels": [...]}``;
- HDF5 (``.h5 .hdf5 .hdf .cxi .nxs``), in a group (``group=``, default the root), either
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
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hitstream.errors import InputDataError, OutputError
from hitstream.h5input import HDF5_SUFFIXES, PathLike, describe_3d, open_h5, plain

DEFAULT_CLASS_ORDER: tuple[str, ...] = ("single", "multiple", "empty", "other")
LABEL_COLUMNS: tuple[str, str, str] = ("run", "index", "class")
_INT_RE = re.compile(r"[+-]?\d+")


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
            raw = plain(obj.attrs["classes"])
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
    with open_h5(path, "labels file") as f:
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
                listed = plain(g.attrs.get("columns", []))
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
            run_name = _text(plain(d.attrs.get("run", g.attrs.get("run", "")))) or path.name
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
        with open_h5(p, "labels file") as f:
            if describe_3d(f):
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
