"""Small typed objects that the pipeline stages pass to each other."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hitstream.background import BackgroundSnapshot


@dataclass
class FrameBatch:
    """Frames in arrival order with their identities.

    A frame is identified by ``(train_id, pulse_id)``; ``timestamp`` is seconds since the
    epoch (from the feed's metadata when present, else the arrival time) and ``received``
    is the monotonic clock reading when the message arrived (for latency).
    """

    # (B, H, W) float32, C-contiguous; from a decoder with ``detector_view`` a (B, modules,
    # ss, fs) view of the message (any dtype) that the pipeline maps onto the grid first
    frames: np.ndarray
    train_id: np.ndarray  # (B,) uint64
    pulse_id: np.ndarray  # (B,) uint32
    timestamp: np.ndarray  # (B,) float64
    received: np.ndarray  # (B,) float64, time.monotonic()

    def __len__(self) -> int:
        return int(self.frames.shape[0])

    @staticmethod
    def concat(batches: list[FrameBatch]) -> FrameBatch:
        if len(batches) == 1:
            return batches[0]
        return FrameBatch(
            frames=np.concatenate([b.frames for b in batches]),
            train_id=np.concatenate([b.train_id for b in batches]),
            pulse_id=np.concatenate([b.pulse_id for b in batches]),
            timestamp=np.concatenate([b.timestamp for b in batches]),
            received=np.concatenate([b.received for b in batches]),
        )


@dataclass
class ResultBatch:
    """What the engine decided for every frame of a batch."""

    batch: FrameBatch
    probabilities: np.ndarray  # (B, C) float32
    label: np.ndarray  # (B,) int16, index into ``classes``
    template_distance: np.ndarray  # (B,) float32, NaN when the model has none
    keep: np.ndarray  # (B,) bool, frame goes to the kept data
    model_version: str
    classes: tuple[str, ...]
    extras: dict[str, np.ndarray] = field(default_factory=dict)
    # the run background the batch was classified with (None: no estimate, e.g. disabled)
    background: BackgroundSnapshot | None = None

    def __len__(self) -> int:
        return len(self.batch)


@dataclass(frozen=True)
class EndOfRun:
    """The feed said the run is over (``frames`` and ``trains`` as the sender counted)."""

    run: str
    frames: int
    trains: int
