"""The labelling page of ``trainer label``: frames as a grid of pictures, a class per click.

:func:`open_session` opens the runs, reads the labels file (resume), scores every frame once
(template distance with :mod:`trainer.templates.rank`, and/or the bundle's ONNX model with
onnxruntime) and returns a :class:`LabelSession`: the frames in display order, their
labels and the model's guesses. Every label change is written to the labels file at once
(:func:`hitstream.labels.write_labels`: temporary file + ``os.replace``), in the format its
suffix names (CSV, JSON, HDF5), keeping the labels of runs and frames not shown.
:class:`LabelServer` serves the session on localhost (stdlib ``ThreadingHTTPServer``)::

    GET  /                       the page (trainer.labelling.page)
    GET  /api/state              classes, counts, runs, order, first page with unlabelled frames
    GET  /api/page?page=K        the frames of page K (id, run, index, label, guess, scores)
    GET  /frame/<token>/<id>.png the central region of a frame as PNG (``-full.png``: all of
                                 it): log scale, masked and NaN/Inf pixels in teal
    POST /api/label              {"id": 7, "class": "single"} (null or "" clears) -> counts

Bad requests (unknown frame or class, malformed JSON) are answered with 400 and change
nothing. POSTs must be ``application/json`` and come from the page's own origin, and the
Host header must name the server: another web site open in the same browser cannot
change labels. No TensorFlow: numpy, h5py and onnxruntime only.
"""

from __future__ import annotations

import io
import json
import logging
import math
import secrets
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import h5py
import numpy as np

from hitstream.errors import ConfigError, InputDataError, OutputError
from hitstream.geometry import FRAME_SHAPE, DetectorGeometry
from hitstream.h5input import HDF5_SUFFIXES, describe_3d, open_h5
from hitstream.labels import (
    DEFAULT_CLASS_ORDER,
    LabelTable,
    merge_labels,
    read_labels,
    write_labels,
)
from streamer.http_server import send_body, threaded_server
from trainer.data.ingest import (
    RunGroup,
    check_run_units,
    iter_frames,
    match_run,
    open_runs,
    read_frames,
)

log = logging.getLogger(__name__)

ORDERS: tuple[str, ...] = ("template", "uncertainty", "index")
LABEL_SUFFIXES = frozenset({".csv", ".json", *HDF5_SUFFIXES})
DEFAULT_PAGE_SIZE = 24
DEFAULT_CROP = 128  # pictures show the central CROP x CROP pixels (low q, where photons are)
PNG_CACHE_FRAMES = 512  # rendered pictures kept (about 30-60 kB each)
MIN_VMAX_PHOTONS = 5.0  # the colour scale tops out at >= this many photons (empty frames stay dark)
VMAX_PERCENTILE = 99.9
MASK_RGB = (0, 150, 136)  # teal: masked (hole, gap) and NaN/Inf pixels, not in the colour map
MAX_POST_BYTES = 4096
TEMPLATES_FILE = "templates.h5"  # the bank inside a bundle (trainer.model.export.TEMPLATES_FILE)

# magma at 0, 1/8, ..., 1 (matplotlib), interpolated to 255 levels; index 255 is the mask
_MAGMA = np.array(
    [
        (0, 0, 4),
        (28, 16, 68),
        (79, 18, 123),
        (129, 37, 129),
        (181, 54, 122),
        (229, 80, 100),
        (251, 135, 97),
        (254, 194, 135),
        (252, 253, 191),
    ],
    np.float64,
)


def _palette() -> bytes:
    t = np.linspace(0, 1, 255)
    knots = np.linspace(0, 1, len(_MAGMA))
    rgb = np.stack([np.interp(t, knots, _MAGMA[:, c]) for c in range(3)], axis=1)
    pal = np.vstack([np.round(rgb), np.array(MASK_RGB, np.float64)[None]]).astype(np.uint8)
    return pal.tobytes()


PALETTE = _palette()


class BadRequest(ValueError):
    """A request the page should not have sent: answered with 400, nothing changes."""


# --- pictures -----------------------------------------------------------------------------


def frame_levels(frame: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``(H, W)`` uint8 colour levels: ``log1p`` of the photon counts (negatives 0) scaled
    to 0..254 up to the frame's 99.9th percentile (at least ``log1p(MIN_VMAX_PHOTONS)``);
    255 where ``valid`` is False or the value is NaN/Inf."""
    x = np.asarray(frame, np.float32)
    bad = ~np.isfinite(x)
    if valid is not None:
        bad |= ~valid
    v = np.log1p(np.clip(np.where(bad, 0.0, x), 0.0, None))
    good = v[~bad]
    top = float(np.percentile(good, VMAX_PERCENTILE)) if good.size else 0.0
    vmax = max(top, math.log1p(MIN_VMAX_PHOTONS))
    out = np.minimum(v * (254.0 / vmax) + 0.5, 254.0).astype(np.uint8)
    out[bad] = 255
    return out


def encode_png(levels: np.ndarray, palette: bytes = PALETTE) -> bytes:
    """A palette PNG (8 bits per pixel) of ``(H, W)`` uint8 ``levels`` (Pillow)."""
    from PIL import Image

    img = Image.fromarray(np.ascontiguousarray(levels, np.uint8))
    img.putpalette(palette)  # an "L" image becomes "P" with this palette
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def render_png(frame: np.ndarray, valid: np.ndarray | None = None) -> bytes:
    """A frame as PNG: log scale, masked and invalid pixels in ``MASK_RGB``."""
    return encode_png(frame_levels(frame, valid))


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
    NaN, last), ``uncertainty`` most uncertain first, ``index`` as read; ties by id."""
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
    raise ConfigError(f"unknown order {mode!r}; choose from {', '.join(ORDERS)}")


# --- scoring ------------------------------------------------------------------------------


def _bar(total: int, desc: str, progress: bool):  # type: ignore[no-untyped-def]
    from tqdm import tqdm

    return tqdm(total=total, unit="frame", desc=desc, file=sys.stderr, disable=not progress)


def template_distances(group: RunGroup, bank: Any, *, progress: bool = True) -> np.ndarray:
    """Template distance of every frame of ``group`` (runs concatenated), scored with
    :func:`trainer.templates.rank.score_frames`; like ``trainer rank``, the bank's own
    frames are left out (NaN)."""
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
        for src, offset in zip(group, offsets.tolist(), strict=True):
            mine = [k for k, r in enumerate(bank.source_run) if r and match_run(r, [src.path]) == 0]
            exclude = np.asarray(bank.source_index[mine], np.int64)
            if len(np.setdiff1d(np.arange(src.n_frames), exclude)) == 0:
                bar.update(src.n_frames)
                continue
            with prefetch(iter_frames(src, 256)) as blocks:
                r = score_frames(matcher, _counting(blocks, bar), exclude)
            out[offset + r.index] = r.distance
    return out


def _counting(blocks: Any, bar: Any) -> Any:
    """``blocks`` passed through, counted on the progress bar."""
    for start, frames in blocks:
        yield start, frames
        bar.update(len(frames))


def model_probabilities(group: RunGroup, bundle: Any, *, progress: bool = True) -> np.ndarray:
    """``(N, C)`` class probabilities of every frame of ``group`` from the bundle's ONNX
    graph (onnxruntime, CPU)."""
    from streamer.engine import Engine, EngineConfig

    if bundle.frame_shape != group.frame_shape:
        raise ConfigError(
            f"model {bundle.path} takes frames of {bundle.frame_shape} pixels, the runs have "
            f"{group.frame_shape}"
        )
    engine = Engine(bundle, EngineConfig(provider="cpu"))
    parts = []
    with _bar(group.n_frames, f"model {bundle.label}", progress) as bar:
        for src in group:
            for _, frames in iter_frames(src, engine.max_batch):
                parts.append(np.asarray(engine.infer(frames)["probabilities"], np.float32))
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
        page_size: int = DEFAULT_PAGE_SIZE,
        crop: int = DEFAULT_CROP,
    ) -> None:
        self.classes = check_classes(classes)
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
        self.page_size = page_size
        self.valid = geometry.valid_pixels() if geometry is not None else None
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
                "runs": [
                    {"name": d, "frames": int(n)}
                    for d, n in zip(self.display_runs, self.sizes.tolist(), strict=True)
                ],
                "model": self.model_name or None,
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

    # -- pictures ------------------------------------------------------------------------

    def png(self, frame: int, full: bool = False) -> bytes:
        """The frame's central ``crop`` region (``full``: all of it) as PNG; rendered once,
        then cached (up to PNG_CACHE_FRAMES pictures)."""
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
        valid = self.valid
        if not key[1]:
            x = central_crop(x, self.crop)
            valid = None if valid is None else central_crop(valid, self.crop)
        data = render_png(x, valid)
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
        distance = template_distances(group, the_bank, progress=progress) if the_bank else None
        probs = model_probabilities(group, bundle, progress=progress) if bundle else None
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
            model_classes=bundle.classes if bundle else (),
            model_name=bundle.label if bundle else "",
            geometry=geometry,
            page_size=page_size,
            crop=crop,
        )
    except BaseException:
        group.close()
        raise


# --- the server ---------------------------------------------------------------------------


def _json(code: int, obj: Any) -> tuple[int, str, bytes]:
    return code, "application/json", json.dumps(obj, allow_nan=False).encode()


def _error(code: int, message: str) -> tuple[int, str, bytes]:
    return _json(code, {"error": message})


class LabelServer:
    """Serves a :class:`LabelSession` on ``host:port`` (0: any free port) in a daemon
    thread. Context manager; :meth:`stop` also closes the session."""

    def __init__(self, session: LabelSession, host: str = "127.0.0.1", port: int = 0) -> None:
        self.session = session
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms stall)

            def do_GET(self) -> None:
                self._answer(lambda: server.get(self.path, self.headers))

            def do_POST(self) -> None:
                def make() -> tuple[int, str, bytes]:
                    try:
                        length = int(self.headers.get("Content-Length") or 0)
                    except ValueError:
                        length = -1
                    if not 0 <= length <= MAX_POST_BYTES:
                        self.close_connection = True
                        return _error(413, f"body must be 0..{MAX_POST_BYTES} bytes")
                    body = self.rfile.read(length)
                    return server.post(self.path, self.headers, body)

                self._answer(make)

            def _answer(self, make: Any) -> None:
                try:
                    code, ctype, body = make()
                except Exception as exc:  # never let one request take the page down
                    log.exception("label page: error serving %s", self.path)
                    code, ctype, body = _error(500, f"{type(exc).__name__}: {exc}")
                cacheable = code == 200 and ctype == "image/png"
                send_body(self, code, ctype, body, "max-age=86400" if cacheable else "no-store")

            def log_message(self, format: str, *args: Any) -> None:
                log.debug("http: " + format, *args)

        self._httpd, self._thread = threaded_server(host, port, _Handler, "label-http")
        self.host = str(self._httpd.server_address[0])
        self.loopback = self.host in ("127.0.0.1", "::1", "localhost") or self.host.startswith(
            "127."
        )

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def _host_ok(self, headers: Any) -> bool:
        """Loopback servers answer only to their own names (no DNS rebinding)."""
        if not self.loopback:
            return True
        host = str(headers.get("Host") or "")
        names = {self.host, "localhost", "127.0.0.1", "[::1]", f"[{self.host}]"}
        return host in {f"{n}:{self.port}" for n in names}

    def get(self, target: str, headers: Any) -> tuple[int, str, bytes]:
        """Answer a GET: ``(status, content type, body)``."""
        from trainer.labelling.page import PAGE_HTML

        if not self._host_ok(headers):
            return _error(403, "unexpected Host header")
        path, _, query = target.partition("?")
        s = self.session
        try:
            if path in ("/", "/index.html"):
                return 200, "text/html; charset=utf-8", PAGE_HTML.encode()
            if path == "/favicon.ico":
                return 204, "image/x-icon", b""
            if path == "/api/state":
                return _json(200, s.state())
            if path == "/api/page":
                values = parse_qs(query).get("page", ["0"])
                try:
                    number = int(values[0])
                except ValueError:
                    raise BadRequest(f"page must be an integer, got {values[0]!r}") from None
                return _json(200, s.page(number))
            parts = path.split("/")
            if len(parts) == 4 and parts[1] == "frame" and parts[3].endswith(".png"):
                if parts[2] != s.token:
                    return _error(404, "picture of another session; reload the page")
                stem = parts[3][: -len(".png")]
                full = stem.endswith("-full")
                stem = stem.removesuffix("-full")
                if not stem.isdigit():
                    return _error(404, f"no frame {stem!r}")
                return 200, "image/png", s.png(int(stem), full)
        except BadRequest as exc:
            return _error(400, str(exc))
        return _error(404, f"not found: {path}")

    def post(self, target: str, headers: Any, body: bytes) -> tuple[int, str, bytes]:
        """Answer a POST (only ``/api/label``)."""
        if not self._host_ok(headers):
            return _error(403, "unexpected Host header")
        path = target.partition("?")[0]
        if path != "/api/label":
            return _error(404, f"not found: {path}")
        ctype = str(headers.get("Content-Type") or "").split(";")[0].strip().lower()
        if ctype != "application/json":
            return _error(415, "send JSON (Content-Type: application/json)")
        origin = headers.get("Origin")
        if origin is not None and origin != f"http://{headers.get('Host')}":
            return _error(403, f"requests from {origin} may not change labels")
        try:
            try:
                msg = json.loads(body.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BadRequest(f"malformed JSON ({exc})") from None
            if not isinstance(msg, dict) or "class" not in msg:
                raise BadRequest('want {"id": N, "class": NAME or null}')
            if "id" in msg:
                frame = msg["id"]
            elif "run" in msg and "index" in msg:
                frame = self.session.frame_id(msg["run"], msg["index"])
            else:
                raise BadRequest('want {"id": N, "class": ...} or {"run", "index", "class"}')
            return _json(200, self.session.set_label(frame, msg["class"]))
        except BadRequest as exc:
            return _error(400, str(exc))
        except OutputError as exc:  # the labels file cannot be written: nothing changed
            log.error("%s", exc)
            return _error(500, f"not saved: {exc}")

    def start(self) -> LabelServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self.session.close()

    def __enter__(self) -> LabelServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
