"""European XFEL run directories for ``streamer classify``: trains read with EXtra-data and
decoded exactly as the live streamer decodes a Karabo-bridge message of them.

EXtra-data yields each train as ``{source: {key: array, 'metadata': {...}}}``, the
structure ``karabo-bridge-serve-files`` sends; :func:`streamer.decode.decode_message` turns
it into frames ``(pulses, modules, ss, fs)`` (one source per module with a ``*`` in the
source name, as ``feed.source``), real train and pulse ids, and the detector map
(:mod:`streamer.detector_map`) puts them on the model's grid. A chunk is a range of trains.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.errors import InputDataError, MessageError
from streamer.decode import SourceSpec, decode_message, is_module_pattern


@dataclass(frozen=True)
class EuxfelSource:
    """Which frames of a run directory: as the live ``[feed]`` section names them."""

    source: str  # e.g. "SPB_DET_AGIPD1M-1/DET/*CH0:xtdf" (one source per module)
    key: str = "image.data"
    axis_order: str = "pulses,data_gain,ss,fs"
    modules: int = 0  # the detector's modules (0: as found)

    def spec(self) -> SourceSpec:
        return SourceSpec(
            source=self.source, key=self.key, axis_order=self.axis_order,
            detector_view=True, modules=self.modules,
        )  # fmt: skip

    def glob(self) -> str:
        """The EXtra-data selection pattern of the source (``*`` for the module number)."""
        return self.source


def _selection(run_dir: Path, src: EuxfelSource) -> Any:
    from extra_data import RunDirectory

    try:
        run = RunDirectory(str(run_dir))
    except Exception as exc:  # EXtra-data raises several kinds for a directory that is no run
        raise InputDataError(f"{run_dir}: not a European XFEL run directory ({exc})") from exc
    pulse_key = src.spec().pulse_key
    keys = [(src.glob(), src.key)]
    sel = run.select(keys)
    if not sel.all_sources:
        raise InputDataError(
            f"{run_dir}: no source matches {src.source!r} with key {src.key!r} "
            f"(sources: {sorted(run.all_sources)[:6]}...)"
        )
    with_pulses = [(s, pulse_key) for s in sel.all_sources if pulse_key in run[s].keys()]  # noqa: SIM118
    return run.select(keys + with_pulses) if with_pulses else sel


def describe_run(run_dir: Path, src: EuxfelSource) -> tuple[int, int]:
    """(trains, frames per train of the first source) of a run directory."""
    sel = _selection(run_dir, src)
    first = sorted(sel.all_sources)[0]
    counts = np.asarray(sel[first, src.key].data_counts(labelled=False))
    per_train = int(counts.max()) if len(counts) else 0
    return len(sel.train_ids), per_train


def run_fingerprint(run_dir: Path) -> str:
    """Names, sizes and times of the run's files: changes when the run does."""
    h = hashlib.sha256()
    for p in sorted(Path(run_dir).glob("*.h5")):
        st = p.stat()
        h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]


class TrainReader:
    """Trains ``start .. stop-1`` (by index) of a run directory, decoded as live; counts
    the trains the live decoder would refuse (``trains_refused``, skipped) and the frames it
    refuses inside a train (``frames_refused``)."""

    def __init__(self, run_dir: Path, src: EuxfelSource, start: int, stop: int) -> None:
        self.run_dir, self.src, self.start, self.stop = Path(run_dir), src, start, stop
        self.trains_refused = 0
        self.frames_refused = 0
        if not is_module_pattern(src.source):
            raise InputDataError(f"source {src.source!r}: give one source per module with a '*'")

    def __iter__(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """``(frames (P, modules, ss, fs), train_id, pulse_id)`` per train."""
        from extra_data import by_index

        spec = self.src.spec()
        sel = _selection(self.run_dir, self.src).select_trains(by_index[self.start : self.stop])
        for _tid, data in sel.trains(require_all=False):
            try:
                decoded = decode_message(data, {}, spec, now=time.time())
            except MessageError:
                self.trains_refused += 1
                continue
            self.frames_refused += sum(decoded.rejected.values())
            fb = decoded.batch
            if fb is not None and len(fb):
                yield fb.frames, fb.train_id, fb.pulse_id
