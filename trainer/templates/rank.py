"""Rank the frames of a run by their distance to a template bank (the seed's step 4, fast).

Every frame is scored against the bank (:mod:`trainer.templates.bank`), read in chunks; the
result is sorted ascending (the front of the list is most likely clean single hits) and
written as CSV, with picture grids of the best and the worst frames (log scale, central
region) so that a person can accept or reject quickly, and optionally the top K as a
labels CSV (``run,index,class`` with class ``single``) to start training from.
:func:`rank_to_files` does all of it for ``trainer rank``.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import queue
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from hitstream.errors import ConfigError, InputDataError, OutputError
from trainer.templates.bank import TemplateBank
from trainer.templates.matching import BruteForceMatcher, PolarMatcher

log = logging.getLogger(__name__)

RANKING_HEADER: tuple[str, ...] = ("index", "distance", "best_template", "angle_deg")


@dataclass
class Ranking:
    """Scores of frames ``index`` (run order); :meth:`order` sorts them."""

    index: np.ndarray  # (N,) int64 frame index in the run
    distance: np.ndarray  # (N,) float32
    best_template: np.ndarray  # (N,) int32
    angle_deg: np.ndarray  # (N,) float32

    def __len__(self) -> int:
        return len(self.index)

    def order(self) -> np.ndarray:
        """Positions sorted by distance, ascending (ties: by frame index)."""
        return np.lexsort((self.index, self.distance))

    def sorted(self) -> Ranking:
        o = self.order()
        return Ranking(self.index[o], self.distance[o], self.best_template[o], self.angle_deg[o])


def score_frames(
    matcher: PolarMatcher | BruteForceMatcher,
    blocks: Iterable[tuple[int, np.ndarray]],
    exclude: Sequence[int] | np.ndarray = (),
    background: np.ndarray | None = None,
) -> Ranking:
    """Score ``(first_index, frames)`` blocks (e.g. :func:`trainer.data.ingest.iter_frames`),
    leaving out the frame indices in ``exclude`` (e.g. the bank's own templates); with the
    run's ``background`` map the polar matcher compares what stands above it."""
    skip = np.asarray(exclude, np.int64)
    idx, dist, best, ang = [], [], [], []
    for start, frames in blocks:
        i = np.arange(start, start + len(frames), dtype=np.int64)
        keep = ~np.isin(i, skip)
        if not keep.any():
            continue
        x = frames[keep] if not keep.all() else frames
        if background is not None and isinstance(matcher, PolarMatcher):
            r = matcher.match(x, background=background)
        else:
            r = matcher.match(x)
        idx.append(i[keep])
        dist.append(r.distance)
        best.append(r.index)
        ang.append(r.angle_deg)
    if not idx:
        raise InputDataError("no frames to rank")
    return Ranking(*(np.concatenate(v) for v in (idx, dist, best, ang)))


def rank_run(
    path: str | Path,
    dataset: str,
    bank: TemplateBank,
    *,
    chunk: int = 256,
    progress: bool = True,
    include_templates: bool = False,
    photon_unit: float = 1.0,
    background: bool = True,
) -> Ranking:
    """Score every frame of ``path:dataset`` against ``bank`` (chunked, tqdm on stderr).

    Like the seed, the frames the bank was built from are left out when the bank names
    this run as their source (``include_templates`` keeps them: distance 0). Frames are
    read in photons (``photon_unit``: see :func:`trainer.data.ingest.open_run`); a warning is
    logged when a sample of them does not look like photon counts. ``background``: the
    run's own background is estimated first (:mod:`trainer.data.backgrounds`, as the streamer
    does) and taken off before matching (polar banks)."""
    from trainer.data.backgrounds import run_background
    from trainer.data.ingest import check_run_units, iter_frames, match_run, open_run

    matcher = bank.matcher()
    exclude = np.zeros(0, np.int64)
    if not include_templates:
        mine = [k for k, r in enumerate(bank.source_run) if r and match_run(r, [path]) == 0]
        exclude = bank.source_index[mine]
    shape = tuple(bank.geometry.shape)
    with open_run(path, dataset, frame_shape=shape, photon_unit=photon_unit) as src:
        if src.n_frames == 0:
            raise InputDataError(f"{path}:{dataset}: no frames")
        check_run_units(src)
        bg = run_background(src).map if background and bank.mode == "polar" else None
        with prefetch(iter_frames(src, chunk, progress=progress)) as blocks:
            return score_frames(matcher, blocks, exclude, bg)


_DONE = object()


@contextlib.contextmanager
def prefetch(items: Iterable, depth: int = 2) -> Iterator[Iterator]:
    """Iterate ``items`` in a background thread, ``depth`` ahead (HDF5 decompression
    overlaps the scoring). Errors of the producer are raised in the consumer; leaving the
    context stops and joins the thread."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(_DONE)
        except BaseException as exc:  # handed to the consumer
            put(exc)

    def consume() -> Iterator:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item

    thread = threading.Thread(target=work, name="rank-prefetch", daemon=True)
    thread.start()
    try:
        yield consume()
    finally:
        stop.set()
        thread.join()


def write_ranking_csv(path: str | Path, ranking: Ranking) -> Path:
    """The ranking sorted by distance: ``index,distance,best_template,angle_deg``."""
    p = Path(path)
    s = ranking.sorted()
    try:
        with open(p, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(RANKING_HEADER)
            for i, d, t, a in zip(
                s.index.tolist(),
                s.distance.tolist(),
                s.best_template.tolist(),
                s.angle_deg.tolist(),
                strict=True,
            ):
                w.writerow((i, f"{d:.6g}", t, f"{a:.2f}"))
    except OSError as exc:
        raise OutputError(f"{p}: cannot write ranking ({exc.strerror})") from exc
    return p


def read_ranking_csv(path: str | Path) -> Ranking:
    """Read what :func:`write_ranking_csv` wrote (in file order)."""
    p = Path(path)
    with open(p, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    if not rows or tuple(rows[0]) != RANKING_HEADER:
        raise InputDataError(f"{p}: header must be {','.join(RANKING_HEADER)}")
    cols = list(zip(*rows[1:], strict=True)) if len(rows) > 1 else [(), (), (), ()]
    return Ranking(
        np.asarray(cols[0], np.int64),
        np.asarray(cols[1], np.float32),
        np.asarray(cols[2], np.int32),
        np.asarray(cols[3], np.float32),
    )


def write_top_labels(path: str | Path, ranking: Ranking, run: str, top: int) -> Path:
    """The ``top`` best frames as a labels CSV (``run,index,class``, class ``single``)."""
    p = Path(path)
    best = ranking.sorted().index[: max(0, top)]
    try:
        with open(p, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh, lineterminator="\n")
            w.writerow(("run", "index", "class"))
            for i in best.tolist():
                w.writerow((run, i, "single"))
    except OSError as exc:
        raise OutputError(f"{p}: cannot write labels ({exc.strerror})") from exc
    return p


def central_crop(frames: np.ndarray, size: int = 128) -> np.ndarray:
    """The central ``size``×``size`` region (low q, where the photons are)."""
    h, w = frames.shape[-2:]
    a, b = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return frames[..., a : a + size, b : b + size]


def grid_png(
    path: str | Path,
    frames: np.ndarray,
    labels: Sequence[str],
    title: str,
    crop: int = 128,
) -> Path:
    """A picture grid of frames (log1p photon counts, central region), one label each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(frames)
    if n == 0:
        raise OutputError(f"{path}: no frames for a picture grid")
    cols = min(n, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.75 * rows + 0.4), squeeze=False)
    imgs = np.log1p(np.maximum(central_crop(np.asarray(frames, np.float32), crop), 0))
    vmax = float(np.percentile(imgs, 99.9)) or 1.0
    for k, ax in enumerate(axes.ravel()):
        ax.set_axis_off()
        if k < n:
            ax.imshow(imgs[k], cmap="magma", vmin=0, vmax=vmax, interpolation="nearest")
            ax.set_title(labels[k], fontsize=6, pad=1.5)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(pad=0.3, rect=(0, 0, 1, 1 - 0.35 / fig.get_figheight()))
    p = Path(path)
    try:
        fig.savefig(p, dpi=110)
    except OSError as exc:
        raise OutputError(f"{p}: cannot write picture ({exc.strerror})") from exc
    finally:
        plt.close(fig)
    return p


def ranking_grids(
    out_dir: Path,
    path: str | Path,
    dataset: str,
    ranking: Ranking,
    top: int,
) -> list[Path]:
    """``best.png`` and ``worst.png``: the ``top`` frames at each end of the ranking."""
    from trainer.data.ingest import open_run, read_frames

    s = ranking.sorted()
    k = min(top, len(s))
    out = []
    with open_run(path, dataset) as src:
        for name, sel, what in (
            ("best", slice(0, k), "smallest"),
            ("worst", slice(len(s) - k, len(s)), "largest"),
        ):
            idx = s.index[sel]
            frames = read_frames(src, idx, progress=False)
            labels = [
                f"#{i} d={d:.3f} t{t}"
                for i, d, t in zip(
                    idx.tolist(),
                    s.distance[sel].tolist(),
                    s.best_template[sel].tolist(),
                    strict=True,
                )
            ]
            title = f"{Path(path).name}: {k} frames with the {what} template distance"
            out.append(grid_png(out_dir / f"{name}.png", frames, labels, title))
    return out


def rank_to_files(
    path: Path,
    dataset: str,
    bank_path: Path,
    out: Path | None = None,
    *,
    top: int = 64,
    chunk: int = 256,
    labels_out: Path | None = None,
    run_name: str | None = None,
    png: bool = True,
    include_templates: bool = False,
    photon_unit: float = 1.0,
) -> list[Path]:
    """Rank every frame of ``path:dataset`` against the bank at ``bank_path`` and write
    ``ranking.csv`` (and, with ``png``, the picture grids) into ``out`` [``./<stem>_rank``],
    and the ``top`` best frames as labels to ``labels_out`` when given (``run`` column:
    ``run_name`` [the file name]). Returns the files written."""
    from trainer.templates.bank import load_bank

    if top < 1 or chunk < 1:
        raise ConfigError("--top and --chunk must be >= 1")
    out = out or Path(f"{path.stem}_rank")
    bank = load_bank(bank_path)
    t0 = time.perf_counter()
    ranking = rank_run(
        path,
        dataset,
        bank,
        chunk=chunk,
        progress=True,
        include_templates=include_templates,
        photon_unit=photon_unit,
    )
    dt = time.perf_counter() - t0
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"{out}: cannot create the output directory ({exc.strerror})") from exc
    written = [write_ranking_csv(out / "ranking.csv", ranking)]
    if png:
        written += ranking_grids(out, path, dataset, ranking, top)
    if labels_out:
        written.append(write_top_labels(labels_out, ranking, run_name or path.name, top))
    log.info(
        "%d frames ranked against %d templates (%s) in %.1f s (%.0f frames/s)",
        len(ranking),
        len(bank),
        bank.mode,
        dt,
        len(ranking) / max(dt, 1e-9),
    )
    return written
