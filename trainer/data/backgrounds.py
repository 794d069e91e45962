"""The runs' own backgrounds for training and evaluation: the same estimate as the streamer.

A model that takes the run's background (:mod:`hitstream.frame_kernel` step 6) must see in
training what the streamer gives it live: the estimate of :mod:`hitstream.background` over
the run's frames (the core population of frame totals, i.e. its empty frames). For an
archived run that is :func:`hitstream.background.estimate_run_background` over (a sample of)
its frames, read twice in blocks (totals first, then the core frames). Maps are kept per
run (:class:`RunBackgrounds`): a map is as large as a frame.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from hitstream.background import BackgroundConfig, BackgroundSnapshot, estimate_run_background
from trainer.data.ingest import Labelled, RunSource, open_run, read_frames

SAMPLE_FRAMES = 4000  # frames of a run looked at, spread evenly (the streamer's halflife)
BLOCK_FRAMES = 256


@dataclass(frozen=True)
class RunBackgrounds:
    """The background maps of the runs the frames come from: frame ``i`` had the map
    ``maps[index[i]]`` (expected photons per pixel of an empty frame of its run). Kept per
    run, not per frame: a map is as large as a frame."""

    maps: np.ndarray  # (R, H, W) float32
    index: np.ndarray  # (N,) int, into maps

    def __post_init__(self) -> None:
        if self.maps.ndim != 3 or self.index.ndim != 1:
            raise ValueError(f"maps (R, H, W) and index (N,), got {self.maps.shape}, "
                             f"{self.index.shape}")  # fmt: skip
        if len(self.index) and (self.index.min() < 0 or self.index.max() >= len(self.maps)):
            raise ValueError("background index out of range of the maps")

    def take(self, rows: np.ndarray) -> RunBackgrounds:
        return RunBackgrounds(self.maps, self.index[rows])

    def of(self, rows: np.ndarray) -> np.ndarray:
        """(len(rows), H, W) maps of those frames."""
        return self.maps[self.index[rows]]

    @staticmethod
    def none(n: int, shape: tuple[int, ...]) -> RunBackgrounds:
        """No background: one zero map for all ``n`` frames."""
        return RunBackgrounds(np.zeros((1, *shape), np.float32), np.zeros(n, np.int64))


class _Blocks:
    """Re-iterable blocks of (a sample of) a run's frames, in photons."""

    def __init__(self, source: RunSource, sample: int) -> None:
        n = source.n_frames
        self.source = source
        self.index = np.unique(np.linspace(0, n - 1, min(n, sample)).round().astype(np.int64))

    def __iter__(self) -> Iterator[np.ndarray]:
        for a in range(0, len(self.index), BLOCK_FRAMES):
            yield read_frames(self.source, self.index[a : a + BLOCK_FRAMES])


def run_background(
    source: RunSource,
    config: BackgroundConfig | None = None,
    sample: int = SAMPLE_FRAMES,
) -> BackgroundSnapshot:
    """The background estimate of an open run (at most ``sample`` frames, spread evenly);
    masked with the run's detector geometry."""
    geometry = source.info().geometry
    return estimate_run_background(_Blocks(source, sample), config=config, geometry=geometry)


def backgrounds_of(
    sources: Sequence[RunSource], frame_run: Sequence[int], config: BackgroundConfig | None = None
) -> RunBackgrounds:
    """One map per run of ``sources``; frame ``i`` belongs to run ``frame_run[i]``."""
    maps = np.stack([run_background(s, config).map for s in sources]).astype(np.float32)
    return RunBackgrounds(maps, np.asarray(frame_run, np.int64))


def labelled_backgrounds(
    data: Labelled, photon_unit: float = 1.0, config: BackgroundConfig | None = None
) -> RunBackgrounds:
    """One background map per run the labelled frames came from (the whole run's estimate,
    not only its labelled frames), and each frame's run."""
    names = list(data.sources)
    maps = []
    for name in names:
        info = data.sources[name]
        with open_run(info.path, info.dataset, photon_unit=photon_unit) as src:
            maps.append(run_background(src, config).map)
    where = {n: k for k, n in enumerate(names)}
    index = np.array([where[r] for r in data.run.tolist()], np.int64)
    if not maps:
        h, w = data.frames.shape[1:]
        return RunBackgrounds(np.zeros((1, h, w), np.float32), index)
    return RunBackgrounds(np.stack(maps).astype(np.float32), index)
