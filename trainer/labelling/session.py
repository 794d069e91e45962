"""The labelling session of ``trainer label``: frames of several runs, their order, labels
and the model's guesses (no HTTP; :mod:`trainer.labelling.server` serves it).

:func:`open_session` opens the runs, reads the labels file (resume), scores every frame once
(template distance with :mod:`trainer.templates.rank`, and/or the bundle's ONNX model with
onnxruntime) and returns a :class:`LabelSession`: the frames in display order, their
labels and the model's guesses. Every label change is written to the labels file at once
(:func:`hitstream.labels.write_labels`: temporary file + ``os.replace``), in the format its
suffix names (CSV, JSON, HDF5), keeping the labels of runs and frames not shown. Pictures
are drawn by :mod:`hitstream.render` (the streamer's live page draws frames the same way):
the central ``crop`` region, masked by the detector geometry, hot pixels marked. What the
page should not have asked for raises :class:`hitstream.http_base.BadRequest` (the server
answers 400) and changes nothing. No TensorFlow: numpy, h5py and onnxruntime only.
"""

from __future__ import annotations

import logging
import math
import secrets
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from hitstream.errors import ConfigError, InputDataError
from hitstream.geometry import FRAME_SHAPE, DetectorGeometry
from hitstream.h5input import HDF5_SUFFIXES, describe_3d, open_h5
from hitstream.http_base import BadRequest
from hitstream.labels import (
    DEFAULT_CLASS_ORDER,
    LabelTable,
    merge_labels,
    read_labels,
    write_labels,
)
from hitstream.render import frame_masks, render_png
from trainer.data.ingest import (
    RunGroup,
    check_run_units,
    iter_frames,
    match_run,
    open_runs,
    read_frames,
)

log = logging.getLogger(__name__)

ORDERS: tuple[str, ...] = ("template", "uncertainty", "proposed", "index")
LABEL_SUFFIXES = frozenset({".csv", ".json", *HDF5_SUFFIXES})
DEFAULT_PAGE_SIZE = 24
DEFAULT_CROP = 128  # pictures show the central CROP x CROP pixels (low q, where photons are)
PNG_CACHE_FRAMES = 512  # rendered pictures kept (about 10-40 kB each)
TEMPLATES_FILE = "templates.h5"  # the bank inside a bundle (trainer.model.export.TEMPLATES_FILE)


# --- ordering -----------------------------------------------------------------------------


def uncertainty(probabilities: np.ndarray) -> np.ndarray:
    """``1 - max probability`` per frame: 0 for a sure model, ``1 - 1/C`` for a guess."""
    p = np.asarray(probabilities, np.float64)
    return (1.0 - p.max(axis=1)).astype(np.float32)


def order_frames(
    mode: str,
    n: int,
    *,
    distance: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
) -> np.ndarray:
    """Frame ids ``0..n-1`` in display order: ``template`` by distance ascending (unscored,
    NaN, last), ``uncertainty`` most uncertain first, ``proposed`` as
    :func:`trainer.labelling.proposals.propose` ranks them (uncertain and random frames in
    turn, the predicted classes in balance), ``index`` as read; ties by id."""
    ids = np.arange(n, dtype=np.int64)
    if mode == "index":
        return ids
    if mode == "template":
        if distance is None:
            raise ConfigError("ordering by template distance needs a template bank")
        d = np.asarray(distance, np.float64)
        return np.lexsort((ids, np.where(np.isnan(d), np.inf, d), np.isnan(d)))
    if mode == "uncertainty":
        if probabilities is None:
            raise ConfigError("ordering by uncertainty needs a model (--model)")
        return np.lexsort((ids, -uncertainty(probabilities).astype(np.float64)))
    if mode == "proposed":
        if probabilities is None:
            raise ConfigError("proposing frames needs a model (--model)")
        from trainer.labelling.proposals import propose

        return propose(probabilities, n)
    raise ConfigError(f"unknown order {mode!r}; choose from {', '.join(ORDERS)}")


# --- scoring ------------------------------------------------------------------------------


def _bar(total: int, desc: str, progress: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=desc, file=sys.stderr, disable=not progress)


def _novelty(
    bundle: Any,
    probabilities: np.ndarray | None,
    backgrounds: Sequence[np.ndarray] | None,
    group: RunGroup,
) -> dict[str, Any] | None:
    """How far the runs are from the model's training data (:mod:`hitstream.novelty`); a
    warning is logged when they look unlike it."""
    from hitstream.novelty import NoveltyMonitor

    if probabilities is None:
        return None
    monitor = NoveltyMonitor(
        bundle.manifest.get("novelty"), bundle.classes, window=max(1, len(probabilities))
    )
    level = None
    if backgrounds:
        valid = bundle.geometry.valid_pixels()
        level = max(float(m[valid].mean()) for m in backgrounds if m.shape == valid.shape)
    monitor.observe(probabilities, level)
    report = monitor.report()
    if report.warning():
        log.warning("%s: %s", ", ".join(s.name for s in group), report.warning())
    return report.as_dict()


def run_backgrounds(group: RunGroup) -> list[np.ndarray]:
    """Each run's background estimate (:mod:`trainer.data.backgrounds`), as the streamer
    would make it: what the model and the template distance take off."""
    from trainer.data.backgrounds import run_background

    return [run_background(src).map for src in group]


def template_distances(
    group: RunGroup,
    bank: Any,
    *,
    progress: bool = True,
    backgrounds: Sequence[np.ndarray] | None = None,
) -> np.ndarray:
    """Template distance of every frame of ``group`` (runs concatenated), scored with
    :func:`trainer.templates.rank.score_frames` (above each run's background when
    ``backgrounds`` are given); like ``trainer rank``, the bank's own frames are left out
    (NaN)."""
    from trainer.templates.rank import prefetch, score_frames

    if tuple(bank.geometry.shape) != group.frame_shape:
        raise ConfigError(
            f"the template bank is for frames of {tuple(bank.geometry.shape)} pixels, the runs "
            f"have {group.frame_shape}"
        )
    matcher = bank.matcher()
    out = np.full(group.n_frames, np.nan, np.float32)
    offsets = np.cumsum([0, *(s.n_frames for s in group)])[:-1]
    with _bar(group.n_frames, "template distance", progress) as bar:
        for k, (src, offset) in enumerate(zip(group, offsets.tolist(), strict=True)):
            mine = [k for k, r in enumerate(bank.source_run) if r and match_run(r, [src.path]) == 0]
            exclude = np.asarray(bank.source_index[mine], np.int64)
            if len(np.setdiff1d(np.arange(src.n_frames), exclude)) == 0:
                bar.update(src.n_frames)
                continue
            with prefetch(iter_frames(src, 256)) as blocks:
                bg = backgrounds[k] if backgrounds is not None else None
                r = score_frames(matcher, _counting(blocks, bar), exclude, bg)
            out[offset + r.index] = r.distance
    return out


def _counting(blocks: Any, bar: Any) -> Any:
    """``blocks`` passed through, counted on the progress bar."""
    for start, frames in blocks:
        yield start, frames
        bar.update(len(frames))


def model_probabilities(
    group: RunGroup,
    bundle: Any,
    *,
    progress: bool = True,
    backgrounds: Sequence[np.ndarray] | None = None,
    threads: int = 0,
) -> np.ndarray:
    """``(N, C)`` class probabilities of every frame of ``group`` from the bundle's ONNX
    graph (onnxruntime, CPU, ``threads`` threads; 0: one per core); a bundle that takes the
    run's background gets each run's estimate from ``backgrounds``."""
    from streamer.engine import Engine, EngineConfig

    if bundle.frame_shape != group.frame_shape:
        raise ConfigError(
            f"model {bundle.path} takes frames of {bundle.frame_shape} pixels, the runs have "
            f"{group.frame_shape}"
        )
    engine = Engine(bundle, EngineConfig(provider="cpu", intra_op_threads=threads))
    parts = []
    with _bar(group.n_frames, f"model {bundle.label}", progress) as bar:
        for k, src in enumerate(group):
            bg = backgrounds[k] if backgrounds is not None else None
            for _, frames in iter_frames(src, engine.max_batch):
                p = engine.infer(frames, background=bg)["probabilities"]
                parts.append(np.asarray(p, np.float32))
                bar.update(len(frames))
    if not parts:
        return np.zeros((0, len(bundle.classes)), np.float32)
    return np.concatenate(parts)


# --- labels file --------------------------------------------------------------------------


def check_labels_path(path: Path, runs: Sequence[Path] = ()) -> None:
    """Fail early (before scoring) when ``path`` cannot be the labels file."""
    if path.suffix.lower() not in LABEL_SUFFIXES:
        raise ConfigError(f"{path}: labels file must end in .csv, .json or .h5")
    if path.is_dir():
        raise ConfigError(f"{path}: labels file is a directory")
    if not path.parent.is_dir():
        raise ConfigError(f"{path}: directory {path.parent} does not exist")
    if any(path.resolve() == Path(r).resolve() for r in runs):
        raise ConfigError(f"{path} is one of the runs; write labels to a file of their own")
    if path.suffix.lower() in HDF5_SUFFIXES and path.is_file() and h5py.is_hdf5(path):
        with open_h5(path, "labels file") as f:
            if describe_3d(f):
                raise ConfigError(f"{path} holds frames; write labels to a file of their own")


def load_labels_file(path: Path) -> LabelTable:
    """The labels in ``path`` (resume), or an empty table when it does not exist yet."""
    return read_labels(path) if path.exists() else LabelTable.empty()


def _run_names(table: LabelTable, paths: Sequence[Path]) -> list[str]:
    """The ``run`` name of each run in the labels: the one ``table`` already uses for it,
    else the file name (the full path where two runs share a file name)."""
    found: dict[int, str] = {}
    for name in table.runs():
        k = match_run(name, paths)
        if k is None:
            continue
        if k in found:
            raise InputDataError(
                f"the labels name run {paths[k]} both as {found[k]!r} and {name!r}; use one name"
            )
        found[k] = name
    files = [p.name for p in paths]
    return [
        found.get(k, files[k] if files.count(files[k]) == 1 else str(p))
        for k, p in enumerate(paths)
    ]


def _geometry(group: RunGroup, *candidates: DetectorGeometry | None) -> DetectorGeometry | None:
    """The detector geometry for the mask: the run's ``geometry`` attribute, else the first
    candidate (the bundle's or the bank's) of the frames' shape, else the default geometry
    when the frames have its shape; None: no mask."""
    shape = group.frame_shape
    if len(group) and group[0].attrs.get("geometry") is not None:
        return group[0].info().geometry
    for g in candidates:
        if g is not None and tuple(g.shape) == shape:
            return g
    return DetectorGeometry() if shape == FRAME_SHAPE else None


def _coarsen(bundle: Any) -> int:
    """The model's extra 2x2 summing before its hot-pixel cap (1 without a model)."""
    pre = bundle.manifest.get("preprocessing") if bundle is not None else None
    value = pre.get("coarsen", 1) if isinstance(pre, dict) else 1
    return max(1, int(value)) if isinstance(value, int | float) else 1


class LabelSession:
    """Frames of several runs in display order, their labels (saved on every change) and
    the model's guesses. Frame ids are positions in the runs as given, concatenated.
    Thread-safe; closes ``group`` on :meth:`close`."""

    def __init__(
        self,
        group: RunGroup,
        labels_path: Path,
        *,
        table: LabelTable | None = None,
        classes: Sequence[str] = DEFAULT_CLASS_ORDER,
        order: str = "index",
        distance: np.ndarray | None = None,
        probabilities: np.ndarray | None = None,
        model_classes: Sequence[str] = (),
        model_name: str = "",
        geometry: DetectorGeometry | None = None,
        coarsen: int = 1,
        page_size: int = DEFAULT_PAGE_SIZE,
        crop: int = DEFAULT_CROP,
        novelty: dict[str, Any] | None = None,
        backgrounds: Sequence[np.ndarray] | None = None,
    ) -> None:
        self.classes = check_classes(classes)
        self.backgrounds = backgrounds  # each run's estimate, as the model was fed
        self.novelty = novelty  # how far the runs are from the model's training data
        if crop < 0:
            raise ConfigError(f"crop must be >= 0 (0: whole frames), got {crop}")
        self.crop = crop
        if page_size < 1:
            raise ConfigError(f"page size must be >= 1, got {page_size}")
        self.group = group
        self.labels_path = Path(labels_path)
        self.table = load_labels_file(self.labels_path) if table is None else table
        self.paths = [s.path for s in group]
        self.run_names = _run_names(self.table, self.paths)
        self.display_runs = [s.name for s in group]
        self.sizes = np.array([s.n_frames for s in group], np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.sizes)]).astype(np.int64)
        self.n_frames = int(self.offsets[-1])
        if self.n_frames == 0:
            raise InputDataError("the runs have no frames")
        self.order_mode = order
        self.distance = distance
        self.probabilities = probabilities
        self.uncertainty = uncertainty(probabilities) if probabilities is not None else None
        self.model_classes = tuple(model_classes)
        self.model_name = model_name
        self.order = order_frames(
            order, self.n_frames, distance=distance, probabilities=probabilities
        )
        self.position = np.empty(self.n_frames, np.int64)
        self.position[self.order] = np.arange(self.n_frames)
        self.order_version = 0  # +1 each time a refit reorders the frames
        self.page_size = page_size
        self.geometry = geometry  # the mask and the hot-pixel marks (None: neither)
        self.coarsen = coarsen
        self.token = secrets.token_hex(6)  # names this session's pictures (browser caching)
        self.labels = np.full(self.n_frames, "", dtype=object)
        self._lock = threading.Lock()
        self._io_lock = threading.Lock()
        self._png: OrderedDict[tuple[int, bool], bytes] = OrderedDict()
        self._fill_labels()

    def _fill_labels(self) -> None:
        ignored = 0
        for k, name in enumerate(self.run_names):
            rows = np.flatnonzero(self.table.run == name)
            idx = self.table.index[rows]
            inside = idx < self.sizes[k]
            ignored += int((~inside).sum())
            self.labels[self.offsets[k] + idx[inside]] = self.table.label[rows[inside]]
        if ignored:
            log.warning(
                "%s: %d labels name frames past the end of their run", self.labels_path, ignored
            )

    # -- lookups -------------------------------------------------------------------------

    @property
    def n_pages(self) -> int:
        return max(1, -(-self.n_frames // self.page_size))

    def check_id(self, frame: Any) -> int:
        """``frame`` as a valid frame id; BadRequest otherwise."""
        if isinstance(frame, bool) or not isinstance(frame, int | np.integer):
            raise BadRequest(f"frame id must be an integer, got {frame!r}")
        if not 0 <= int(frame) < self.n_frames:
            raise BadRequest(f"unknown frame {int(frame)}; ids are 0..{self.n_frames - 1}")
        return int(frame)

    def locate(self, frame: int) -> tuple[int, int]:
        """``(run position, frame index)`` of a frame id."""
        k = int(np.searchsorted(self.offsets, self.check_id(frame), side="right") - 1)
        return k, frame - int(self.offsets[k])

    def frame_id(self, run: str, index: int) -> int:
        """The id of frame ``index`` of the run named ``run`` (labels name or file name)."""
        names = [*self.run_names, *self.display_runs]
        if run not in names:
            raise BadRequest(f"unknown run {run!r}")
        k = names.index(run) % len(self.run_names)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < self.sizes[k]:
            raise BadRequest(f"run {run!r} has no frame {index!r}")
        return int(self.offsets[k]) + index

    def n_labelled(self) -> int:
        """Frames of these runs that carry a label."""
        with self._lock:
            return int(np.count_nonzero(self.labels != ""))

    def labels_table(self) -> LabelTable:
        """The labels file's table as it is now (it is replaced, never changed in place)."""
        with self._lock:
            return self.table

    def counts(self) -> dict[str, int]:
        """Labels in the file per class: the page's classes first (zeros included)."""
        got = self.table.counts()
        return {c: got.get(c, 0) for c in self.classes} | {
            c: n for c, n in got.items() if c not in self.classes
        }

    def first_unlabelled_page(self) -> int:
        """The first page (display order) holding an unlabelled frame; 0 if none."""
        empty = np.flatnonzero(self.labels[self.order] == "")
        return int(empty[0]) // self.page_size if len(empty) else 0

    def describe(self, frame: int) -> dict[str, Any]:
        """What the page shows of one frame."""
        k, i = self.locate(frame)
        out: dict[str, Any] = {
            "id": frame,
            "run": self.display_runs[k],
            "index": i,
            "label": self.labels[frame],
            "position": int(self.position[frame]),
        }
        if self.distance is not None:
            d = float(self.distance[frame])
            out["distance"] = None if math.isnan(d) else round(d, 4)
        if self.probabilities is not None and self.uncertainty is not None:
            p = self.probabilities[frame]
            best = int(np.argmax(p))
            out["guess"] = self.model_classes[best] if best < len(self.model_classes) else str(best)
            out["guess_p"] = round(float(p[best]), 4)
            out["uncertainty"] = round(float(self.uncertainty[frame]), 4)
        return out

    def page(self, number: int) -> dict[str, Any]:
        """The frames of page ``number`` (display order)."""
        if isinstance(number, bool) or not isinstance(number, int):
            raise BadRequest(f"page must be an integer, got {number!r}")
        if not 0 <= number < self.n_pages:
            raise BadRequest(f"no page {number}; pages are 0..{self.n_pages - 1}")
        ids = self.order[number * self.page_size : (number + 1) * self.page_size]
        with self._lock:
            frames = [self.describe(int(i)) for i in ids]
        return {"page": number, "n_pages": self.n_pages, "frames": frames}

    def state(self) -> dict[str, Any]:
        """What the page needs once: classes, counts, runs, order, where to start."""
        with self._lock:
            return {
                "classes": list(self.classes),
                "counts": self.counts(),
                "labelled": int(np.count_nonzero(self.labels != "")),
                "n_frames": self.n_frames,
                "n_pages": self.n_pages,
                "page_size": self.page_size,
                "first_unlabelled_page": self.first_unlabelled_page(),
                "order": self.order_mode,
                "order_version": self.order_version,
                "runs": [
                    {"name": d, "frames": int(n)}
                    for d, n in zip(self.display_runs, self.sizes.tolist(), strict=True)
                ],
                "model": self.model_name or None,
                "novelty": self.novelty,
                "labels_file": str(self.labels_path),
                "token": self.token,
                "crop": self.crop,
            }

    # -- changes -------------------------------------------------------------------------

    def set_label(self, frame: Any, label: str | None) -> dict[str, Any]:
        """Label frame ``frame`` (None or "" clears) and save the labels file at once
        (atomically). Returns the frame's description and the new counts."""
        frame = self.check_id(frame)
        if label is not None and not isinstance(label, str):
            raise BadRequest(f"class must be a string or null, got {label!r}")
        label = label or None
        if label is not None and label not in self.classes:
            raise BadRequest(f"unknown class {label!r}; classes are {', '.join(self.classes)}")
        k, i = self.locate(frame)
        name = self.run_names[k]
        with self._lock:
            if (self.labels[frame] or None) != label:
                here = (self.table.run == name) & (self.table.index == i)
                if label is None:
                    table = self.table.take(~here)
                else:
                    one = LabelTable(np.array([name]), np.array([i], np.int64), np.array([label]))
                    table = merge_labels(self.table, one)
                write_labels(self.labels_path, table)  # OutputError: nothing changes
                self.table = table
                self.labels[frame] = label or ""
            return {**self.describe(frame), "counts": self.counts()}

    def update_model(self, probabilities: np.ndarray, classes: Sequence[str], name: str) -> None:
        """A refitted model's guesses for every frame. In an order by the model
        (``uncertainty``, ``proposed``) the labelled frames keep the front, as they were,
        and the unlabelled ones follow in the new model's order."""
        p = np.asarray(probabilities, np.float32)
        if p.shape != (self.n_frames, len(classes)):
            raise ValueError(f"probabilities {p.shape}, expected ({self.n_frames}, {len(classes)})")
        by_model = self.order_mode in ("uncertainty", "proposed")
        # ordered outside the lock: labelling goes on meanwhile (proposing takes ~0.1 s)
        fresh = order_frames(self.order_mode, self.n_frames, probabilities=p) if by_model else None
        u = uncertainty(p)
        with self._lock:
            self.probabilities, self.uncertainty = p, u
            self.model_classes, self.model_name = tuple(classes), name
            if fresh is not None:
                done = self.labels[self.order] != ""
                todo = fresh[self.labels[fresh] == ""]
                self.order = np.concatenate([self.order[done], todo]).astype(np.int64)
                self.position[self.order] = np.arange(self.n_frames)
            self.order_version += 1

    # -- pictures ------------------------------------------------------------------------

    def png(self, frame: int, full: bool = False) -> bytes:
        """The frame's central ``crop`` region (``full``: all of it) as PNG
        (:mod:`hitstream.render`: masked by the geometry, the hot pixels of the whole frame
        marked, ``coarsen`` as the model's preprocessing); rendered once, then cached (up to
        PNG_CACHE_FRAMES pictures)."""
        from trainer.templates.rank import central_crop

        frame = self.check_id(frame)
        key = (frame, full or not self.crop)
        with self._lock:
            cached = self._png.get(key)
            if cached is not None:
                self._png.move_to_end(key)
                return cached
        k, i = self.locate(frame)
        with self._io_lock:
            x = read_frames(self.group[k], [i], progress=False)[0]
        valid, hot = frame_masks(x, self.geometry, coarsen=self.coarsen)  # on the whole frame
        if not key[1]:
            x = central_crop(x, self.crop)
            valid = None if valid is None else central_crop(valid, self.crop)
            hot = None if hot is None else central_crop(hot, self.crop)
        data = render_png(x, valid, hot)
        with self._lock:
            self._png[key] = data
            while len(self._png) > PNG_CACHE_FRAMES:
                self._png.popitem(last=False)
        return data

    def close(self) -> None:
        with self._io_lock:  # not while a picture's frame is being read
            self.group.close()


def check_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """Class names: non-empty, unique, without commas."""
    out = tuple(str(c).strip() for c in classes)
    if not out or any(not c or "," in c for c in out):
        raise ConfigError(f"classes must be non-empty names, got {list(classes)}")
    if len(set(out)) != len(out):
        raise ConfigError(f"classes contain duplicates: {list(out)}")
    return out


def open_session(
    runs: Sequence[str | Path],
    dataset: str,
    labels_path: str | Path,
    *,
    model: str | Path | None = None,
    bank: str | Path | None = None,
    order: str | None = None,
    classes: Sequence[str] = DEFAULT_CLASS_ORDER,
    page_size: int = DEFAULT_PAGE_SIZE,
    crop: int = DEFAULT_CROP,
    progress: bool = True,
    photon_unit: float = 1.0,
) -> LabelSession:
    """Open the runs, read the labels file, score every frame once, and return the session.
    ``photon_unit``: see :func:`trainer.data.ingest.open_run` (the scores need photons).

    ``bank``: a template bank file; without it, the bank inside the ``model`` bundle
    (``templates.h5``) if there is one. ``order``: ``template`` / ``uncertainty`` /
    ``index``; default template when there is a bank, else uncertainty when there is a
    model, else index. Template distances are computed when ordering by them or when
    ``bank`` is given; the model runs whenever given (its guesses are shown)."""
    from hitstream.bundle import load_bundle
    from trainer.templates.bank import load_bank

    cls = check_classes(classes)
    if order is not None and order not in ORDERS:
        raise ConfigError(f"unknown order {order!r}; choose from {', '.join(ORDERS)}")
    if page_size < 1:
        raise ConfigError(f"page size must be >= 1, got {page_size}")
    if not runs:
        raise ConfigError("no runs given")
    paths = [Path(r) for r in runs]
    lpath = Path(labels_path)
    check_labels_path(lpath, paths)
    table = load_labels_file(lpath)
    bundle = load_bundle(model) if model is not None else None
    bank_path = Path(bank) if bank is not None else None
    if bank_path is None and bundle is not None and (bundle.path / TEMPLATES_FILE).is_file():
        bank_path = bundle.path / TEMPLATES_FILE
    if order is None:
        order = "template" if bank_path else "uncertainty" if bundle else "index"
    if order == "template" and bank_path is None:
        raise ConfigError("--order template needs --bank or a --model bundle with templates.h5")
    if order == "uncertainty" and bundle is None:
        raise ConfigError("--order uncertainty needs --model")
    the_bank = load_bank(bank_path) if bank_path and (order == "template" or bank) else None
    group = open_runs([(p, dataset) for p in paths], photon_unit=photon_unit)
    try:
        _run_names(table, paths)  # ambiguous run names fail before the scoring
        if group.n_frames == 0:
            raise InputDataError(f"{', '.join(map(str, paths))}: no frames in {dataset!r}")
        for src in group:
            check_run_units(src)
        bgs = run_backgrounds(group) if (the_bank or bundle) else None
        distance = (
            template_distances(group, the_bank, progress=progress, backgrounds=bgs)
            if the_bank
            else None
        )
        probs = (
            model_probabilities(group, bundle, progress=progress, backgrounds=bgs)
            if bundle
            else None
        )
        novelty = _novelty(bundle, probs, bgs, group) if bundle is not None else None
        geometry = _geometry(
            group,
            bundle.geometry if bundle else None,
            the_bank.geometry if the_bank else None,
        )
        return LabelSession(
            group,
            lpath,
            table=table,
            classes=cls,
            order=order,
            distance=distance,
            probabilities=probs,
            novelty=novelty,
            backgrounds=bgs,
            model_classes=bundle.classes if bundle else (),
            model_name=bundle.label if bundle else "",
            geometry=geometry,
            coarsen=_coarsen(bundle),
            page_size=page_size,
            crop=crop,
        )
    except BaseException:
        group.close()
        raise
