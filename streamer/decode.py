"""Turn a deserialized bridge message ``(data, metadata)`` into a :class:`FrameBatch`.

Frames sit under one source and key (default key ``image.data``). The array's axes are
named by :attr:`SourceSpec.axis_order`, e.g. ``"pulses,H,W"`` (files, our replay),
``"H,W"`` (one frame per message) or ``"modules,fs,ss,pulses"`` (live AGIPD). Axis names:
``pulses`` (alias ``frames``), ``modules``, ``H`` (alias ``ss``, slow scan = rows),
``W`` (alias ``fs``, fast scan = columns), ``data_gain`` (raw AGIPD from files, e.g.
``"pulses,data_gain,ss,fs"`` as extra-data names it: entry 0 is the ADC data and is kept,
entry 1 the gain bits and is dropped). Modules are stacked vertically, module 0 on top
(``(M, H, W) -> (M*H, W)``); with a detector configured (``SourceSpec.detector_view``) the
frames stay a ``(P, M, ss, fs)`` view of the message for :class:`hitstream.qgrid.Resampler`,
which places the modules by their geometry. One source per module: ``SourceSpec.source``
with a ``*`` where the module number is (``"DET/*CH0:xtdf"``); the modules are assembled in
module order and a missing one is NaN (masked by the map) and reported.

Frames become float32; a frame holding NaN or Inf is dropped and counted under
``rejected['nonfinite']`` while the other frames of the message pass (with a detector,
NaN pixels are bad pixels of corrected data and the map masks them instead). Message-level
faults raise :class:`~hitstream.errors.MessageError` with reason ``source``, ``key``,
``shape``, ``dtype``, ``trainid`` or ``endofrun``.

The end of a run is our own marker: a message whose source is :data:`END_OF_RUN_SOURCE`
with data ``{"run": str, "frames": int, "trains": int}`` (see :func:`end_of_run_message`).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

from hitstream.errors import ConfigError, MessageError
from streamer.types import EndOfRun, FrameBatch

END_OF_RUN_SOURCE = "hitstream/end_of_run"

#: Rejection reasons raised by :func:`decode_message` (besides per-frame ``nonfinite``).
REASONS: tuple[str, ...] = ("source", "key", "shape", "dtype", "trainid", "endofrun")

_AXIS_ALIASES = {
    "pulses": "pulses",
    "frames": "pulses",
    "modules": "modules",
    "h": "H",
    "ss": "H",
    "w": "W",
    "fs": "W",
    "data_gain": "data_gain",
}
_FRAME_KINDS = "iuf"  # integer, unsigned, float; bool and complex are rejected


@dataclass(frozen=True)
class SourceSpec:
    """Where frames sit in a message and how their axes are ordered.

    ``source=None`` takes the first source (sorted by name) that carries ``key``.
    ``frame_shape=None`` accepts any frame shape (:class:`Decoder` then pins the first
    one it sees); otherwise frames of another shape are rejected with reason ``shape``.
    """

    source: str | None = None
    key: str = "image.data"
    axis_order: str = "pulses,H,W"
    frame_shape: tuple[int, int] | None = None
    pulse_key: str = "image.pulseId"
    # True (a detector map follows): frames stay a (P, modules, ss, fs) view of the message's
    # array in its dtype, NaN/Inf pixels pass (the map masks them)
    detector_view: bool = False
    modules: int = 0  # with a module pattern as source: the detector's modules (0: as seen)

    def __post_init__(self) -> None:
        parse_axis_order(self.axis_order)  # fail early on a bad spec
        if is_module_pattern(self.source):
            _module_pattern(str(self.source))


@dataclass(frozen=True)
class Decoded:
    """One decoded message: a batch of good frames, or the end of the run.

    ``rejected`` counts frames dropped from this message by reason (``nonfinite``).
    ``batch`` is None when the message held no good frame or was an end marker.
    """

    batch: FrameBatch | None
    rejected: dict[str, int] = field(default_factory=dict)
    end: EndOfRun | None = None
    source: str = ""  # the source the frames were read from
    ignored: tuple[str, ...] = ()  # other sources that carry an array under the same key
    missing_modules: tuple[int, ...] = ()  # one source per module: modules not in the message


@lru_cache(maxsize=64)
def parse_axis_order(axis_order: str) -> tuple[str, ...]:
    """Canonical axis names (``pulses``, ``modules``, ``H``, ``W``) of an axis-order string.

    >>> parse_axis_order("modules,fs,ss,pulses")
    ('modules', 'W', 'H', 'pulses')
    """
    names = tuple(a.strip() for a in axis_order.split(","))
    canon = []
    for name in names:
        c = _AXIS_ALIASES.get(name.lower())
        if c is None:
            raise ConfigError(
                f"unknown axis {name!r} in axis order {axis_order!r}; "
                "use pulses/frames, modules, H/ss, W/fs, data_gain"
            )
        canon.append(c)
    if len(set(canon)) != len(canon) or "H" not in canon or "W" not in canon:
        raise ConfigError(
            f"axis order {axis_order!r} needs one H (ss) and one W (fs) axis, "
            "at most one pulses, one modules and one data_gain axis"
        )
    return tuple(canon)


def to_frames(array: np.ndarray, axis_order: str) -> np.ndarray:
    """``(P, H', W)`` float32 C-contiguous frames from an array with named axes.

    No copy when the array is already float32, C-contiguous and in ``pulses,H,W`` order
    (the result is then a view and may be read-only). Modules stack vertically; of a
    ``data_gain`` axis only entry 0 (the data) is kept.
    """
    arr = frames_view(array, axis_order)
    p, m, h, w = arr.shape
    with np.errstate(over="ignore", invalid="ignore"):  # out of range -> inf -> rejected
        frames = np.ascontiguousarray(arr, dtype=np.float32)
    return frames.reshape(p, m * h, w)


def frames_view(array: np.ndarray, axis_order: str) -> np.ndarray:
    """A ``(P, M, H, W)`` view of an array with named axes (no copy, any dtype): pulses
    and modules of size 1 where the array has none, ``data_gain`` entry 0 only."""
    axes = parse_axis_order(axis_order)
    if array.ndim != len(axes):
        raise MessageError(
            "shape", f"array of shape {array.shape} does not match axis order {axis_order!r}"
        )
    if array.dtype.kind not in _FRAME_KINDS:
        raise MessageError("dtype", f"frames of dtype {array.dtype} (need int or float)")
    if "data_gain" in axes:
        g = axes.index("data_gain")
        if array.shape[g] < 1:
            raise MessageError("shape", f"array of shape {array.shape} has an empty data_gain axis")
        array = array[(slice(None),) * g + (0,)]
        axes = axes[:g] + axes[g + 1 :]
    order = [axes.index(a) for a in ("pulses", "modules", "H", "W") if a in axes]
    arr = array.transpose(order) if order != list(range(array.ndim)) else array
    if "pulses" not in axes:
        arr = arr[np.newaxis]
    if "modules" not in axes:
        arr = arr[:, np.newaxis]
    return arr


def finite_frames(frames: np.ndarray) -> np.ndarray:
    """``(B,)`` bool: which float32 frames hold no NaN/Inf.

    One SIMD sum per frame screens the batch (NaN and Inf propagate into the sum; einsum
    rather than BLAS, whose threads thrash on a busy machine); only frames whose sum is
    not finite are checked pixel by pixel, since a float32 sum of large finite values can
    overflow.
    """
    b = frames.shape[0]
    with np.errstate(over="ignore", invalid="ignore"):
        good = np.isfinite(np.einsum("ij->i", frames.reshape(b, math.prod(frames.shape[1:]))))
    for i in np.flatnonzero(~good):
        good[i] = bool(np.isfinite(frames[i]).all())
    return good


def _as_train_id(value: Any, where: str) -> int:
    if isinstance(value, np.integer):
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**64:
        raise MessageError("trainid", f"{where}: train id {value!r:.40} is not a uint64")
    return value


def _train_id(source: str, values: dict, meta: dict) -> int:
    if "timestamp.tid" in meta:
        return _as_train_id(meta["timestamp.tid"], f"metadata of {source!r}")
    inner = values.get("metadata")
    if isinstance(inner, dict) and "timestamp.tid" in inner:
        return _as_train_id(inner["timestamp.tid"], f"data {source!r}/metadata")
    if "trainId" in values:
        return _as_train_id(values["trainId"], f"data {source!r}/trainId")
    raise MessageError("trainid", f"no train id for source {source!r} (timestamp.tid)")


def _timestamp(meta: dict, now: float) -> float:
    ts = meta.get("timestamp")
    if isinstance(ts, int | float) and not isinstance(ts, bool) and math.isfinite(ts):
        return float(ts)
    sec, frac = meta.get("timestamp.sec"), meta.get("timestamp.frac")
    if isinstance(sec, str) and isinstance(frac, str) and _digits(sec, 12) and _digits(frac, None):
        return int(sec) + int(frac[:18].ljust(18, "0")) * 1e-18  # ASCII only: int("²") fails
    return now


def _digits(text: Any, max_len: int | None) -> bool:
    """``text`` is a non-empty string of ASCII digits (at most ``max_len`` of them)."""
    return (
        isinstance(text, str)
        and (max_len is None or len(text) <= max_len)
        and text.isascii()
        and text.isdigit()
    )


def _pulse_ids(values: dict, key: str, n: int) -> np.ndarray:
    ids = values.get(key)
    if ids is not None:
        try:
            ids = np.asarray(ids)
        except (TypeError, ValueError, OverflowError):  # ragged or odd lists: ignore
            ids = None
        if (
            ids is not None
            and ids.size == n
            and ids.dtype.kind in "iu"
            and (n == 0 or (ids.min() >= 0 and ids.max() < 2**32))
        ):
            return ids.reshape(n).astype(np.uint32)
    return np.arange(n, dtype=np.uint32)


def _find_source(data: dict[str, dict[str, Any]], spec: SourceSpec) -> str:
    if spec.source is not None:
        if spec.source not in data:
            raise MessageError(
                "source", f"source {spec.source!r} not in message (has {sorted(data)[:8]})"
            )
        return spec.source
    for src in sorted(data):
        if spec.key in data[src]:
            return src
    raise MessageError("source", f"no source carries key {spec.key!r} (has {sorted(data)[:8]})")


@lru_cache(maxsize=16)
def _module_pattern(pattern: str) -> re.Pattern[str]:
    """``"DET/*CH0:xtdf"`` -> a regex whose one group is the module number at the ``*``."""
    if pattern.count("*") != 1:
        raise ConfigError(f"feed.source pattern {pattern!r} needs exactly one '*' (the module)")
    head, tail = pattern.split("*")
    return re.compile(re.escape(head) + r"(\d+)" + re.escape(tail))


def is_module_pattern(source: str | None) -> bool:
    """A ``feed.source`` with a ``*``: one source per module, the ``*`` its number."""
    return source is not None and "*" in source


def _module_sources(data: dict[str, dict[str, Any]], spec: SourceSpec) -> dict[int, str]:
    """Module number -> source, of the sources that match the pattern and carry the key."""
    assert spec.source is not None
    pattern = _module_pattern(spec.source)
    found: dict[int, str] = {}
    for src in sorted(data):
        match = pattern.fullmatch(src)
        if match and isinstance(_get(data[src], spec.key), np.ndarray):
            found[int(match.group(1))] = src
    if not found:
        raise MessageError(
            "source", f"no source matches {spec.source!r} with key {spec.key!r} "
            f"(has {sorted(data)[:8]})",
        )  # fmt: skip
    return found


def _assemble_modules(
    data: dict[str, dict[str, Any]], spec: SourceSpec
) -> tuple[np.ndarray, str, tuple[int, ...]]:
    """One frame per pulse from one source per module: ``(P, modules * ss, fs)`` float32
    (one copy), the first module's source (ids come from it) and the missing modules (their
    pixels are NaN, masked later)."""
    sources = _module_sources(data, spec)
    n = spec.modules or (max(sources) + 1)
    if max(sources) >= n:
        raise MessageError(
            "shape", f"module {max(sources)} of {spec.source!r}: the detector has {n}"
        )
    views = {m: frames_view(data[s][spec.key], spec.axis_order) for m, s in sources.items()}
    shapes = {v.shape for v in views.values()}
    if len(shapes) != 1 or next(iter(shapes))[1] != 1:
        raise MessageError("shape", f"module arrays of {spec.source!r} differ: {sorted(shapes)}")
    p, _, h, w = next(iter(shapes))
    out = np.full((p, n, h, w), np.nan, np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        for m, v in views.items():
            out[:, m] = v[:, 0]
    missing = tuple(m for m in range(n) if m not in sources)
    return out.reshape(p, n * h, w), sources[min(sources)], missing


def _end_of_run(values: dict) -> EndOfRun:
    run, frames, trains = values.get("run"), values.get("frames"), values.get("trains")
    if not (isinstance(run, str) and isinstance(frames, int) and isinstance(trains, int)):
        raise MessageError("endofrun", f"bad end-of-run marker {values!r:.120}")
    return EndOfRun(run=run, frames=frames, trains=trains)


def decode_message(
    data: dict[str, dict[str, Any]],
    metadata: dict[str, dict[str, Any]],
    spec: SourceSpec,
    *,
    now: float,
) -> Decoded:
    """Decode one message; ``now`` (epoch seconds) stands in for a missing timestamp.

    Frame ids: train id from ``metadata[src]['timestamp.tid']`` (else
    ``data[src]['metadata']['timestamp.tid']`` as extra-data sends, else
    ``data[src]['trainId']``); pulse ids from ``spec.pulse_key`` when it has one integer
    per frame, else ``0..P-1``. ``received`` is ``time.monotonic()`` at decode.
    """
    if END_OF_RUN_SOURCE in data:
        return Decoded(batch=None, end=_end_of_run(data[END_OF_RUN_SOURCE]))
    missing: tuple[int, ...] = ()
    if is_module_pattern(spec.source):
        frames, source, missing = _assemble_modules(data, spec)
        values = data[source]
        array = values[spec.key]
        used = set(_module_sources(data, spec).values())
    else:
        source = _find_source(data, spec)
        values = data[source]
        array = values.get(spec.key)
        if array is None:
            arrays = sorted(k for k, v in values.items() if isinstance(v, np.ndarray))[:8]
            raise MessageError(
                "key", f"source {source!r} has no key {spec.key!r} (its array keys: {arrays})"
            )
        if not isinstance(array, np.ndarray):
            raise MessageError("key", f"{source!r}/{spec.key!r} is not an array")
        if spec.detector_view:  # no copy: the map reads only the pixels it needs
            frames = frames_view(array, spec.axis_order)
        else:
            frames = to_frames(array, spec.axis_order)
        used = {source}
    shape = frames.shape[1:]
    if frames.ndim == 4:  # (P, M, ss, fs) view: compare as modules stacked
        shape = (shape[0] * shape[1], shape[2])
    if spec.frame_shape is not None and shape != tuple(spec.frame_shape):
        raise MessageError(
            "shape", f"{source!r}/{spec.key!r}: frames {shape}, expected {spec.frame_shape}"
        )
    meta = metadata.get(source) or {}
    train_id = _train_id(source, values, meta)
    n = frames.shape[0]
    pulse_id = _pulse_ids(values, spec.pulse_key, n)
    rejected: dict[str, int] = {}
    if array.dtype.kind == "f" and n and not spec.detector_view:
        good = finite_frames(frames)
        if not good.all():
            rejected["nonfinite"] = int(n - np.count_nonzero(good))
            frames, pulse_id = frames[good], pulse_id[good]
            n = frames.shape[0]
    ignored = tuple(
        s for s in sorted(data) if s not in used and isinstance(_get(data[s], spec.key), np.ndarray)
    )
    if n == 0:
        return Decoded(batch=None, rejected=rejected, source=source, ignored=ignored)
    batch = FrameBatch(
        frames=frames,
        train_id=np.full(n, train_id, dtype=np.uint64),
        pulse_id=pulse_id,
        timestamp=np.full(n, _timestamp(meta, now), dtype=np.float64),
        received=np.full(n, time.monotonic(), dtype=np.float64),
    )
    return Decoded(
        batch=batch, rejected=rejected, source=source, ignored=ignored, missing_modules=missing
    )


def _get(values: Any, key: str) -> Any:
    return values.get(key) if isinstance(values, dict) else None


class Decoder:
    """:func:`decode_message` with a pinned frame shape: the first batch fixes it when
    ``spec.frame_shape`` is None, later messages of another shape are rejected."""

    def __init__(self, spec: SourceSpec = SourceSpec()) -> None:
        self.spec = spec

    def decode(
        self,
        data: dict[str, dict[str, Any]],
        metadata: dict[str, dict[str, Any]],
        *,
        now: float | None = None,
    ) -> Decoded:
        out = decode_message(data, metadata, self.spec, now=time.time() if now is None else now)
        if out.batch is not None and self.spec.frame_shape is None:
            h, w = out.batch.frames.shape[1:]
            self.spec = replace(self.spec, frame_shape=(int(h), int(w)))
        return out


def timestamp_metadata(source: str, train_id: int | None, now: float) -> dict[str, Any]:
    """Karabo-style metadata for ``source`` at epoch time ``now``."""
    sec = math.floor(now)
    meta: dict[str, Any] = {
        "source": source,
        "timestamp": now,
        "timestamp.sec": str(sec),
        "timestamp.frac": str(min(round((now - sec) * 1e18), 10**18 - 1)).zfill(18),
    }
    if train_id is not None:
        meta["timestamp.tid"] = int(train_id)
    return meta


def end_of_run_message(
    end: EndOfRun, now: float
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """``(data, metadata)`` of our end-of-run marker message."""
    values = {"run": end.run, "frames": int(end.frames), "trains": int(end.trains)}
    return (
        {END_OF_RUN_SOURCE: values},
        {END_OF_RUN_SOURCE: timestamp_metadata(END_OF_RUN_SOURCE, None, now)},
    )
