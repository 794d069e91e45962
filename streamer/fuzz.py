"""Malformed Karabo-bridge messages, and good ones with known ids, to fuzz a running streamer.

:class:`FuzzGenerator` yields :class:`Case` s from a seed: a bad message of a randomly chosen
kind (see :data:`BAD_KINDS`) with the rejection the streamer must count for it, or a good
message whose frames ``(train_id, pulse_id)`` must be written exactly once. Good messages
use consecutive train ids (no train gaps); bad ones never advance the count. The cases
assume a consumer configured with ``feed.source = SOURCE``, ``feed.key = KEY``, the
default axis order ``pulses,H,W``, frames of :data:`FRAME_SHAPE` and
``feed.max_message_bytes`` equal to the generator's ``max_message_bytes``: every part stays
within that limit (ZeroMQ would drop the connection otherwise), whole messages may not.

:func:`fuzz_pipeline` runs a :class:`streamer.pipeline.Pipeline` in a thread and sends it
N cases over a PUSH socket on 127.0.0.1; :class:`Tally` says what the streamer must report.
Used by ``tests/test_fuzz.py`` and ``bench/fuzz_streamer.py``; needs ``psutil`` (the dev
extra) for :func:`fuzz_pipeline` only.
"""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from streamer.decode import END_OF_RUN_SOURCE
from streamer.protocol import DEFAULT_LIMITS, message_nbytes, serialize

SOURCE = "det"
KEY = "image.data"
FRAME_SHAPE = (260, 257)
MAX_MESSAGE_BYTES = 2 << 20
_pack = msgpack.Packer(use_bin_type=True).pack


@dataclass(frozen=True)
class Case:
    """One message to send. ``reason`` None with ``rejected`` 1: any message-level reason."""

    kind: str
    parts: list[Any]
    reason: str | None = None
    rejected: int = 0
    good: list[tuple[int, int]] = field(default_factory=list)

    @property
    def bad(self) -> bool:
        return self.rejected > 0


def _array_part(path: str, dtype: Any, shape: Any, source: str = SOURCE) -> bytes:
    return _pack({"source": source, "content": "array", "path": path, "dtype": dtype,
                  "shape": shape})  # fmt: skip


def _head(source: str = SOURCE, meta: Any = None) -> bytes:
    return _pack({"source": source, "content": "msgpack", "metadata": meta or {"source": source}})


class FuzzGenerator:
    """Seeded stream of bad and good messages; ``good_every``: one good message in N."""

    def __init__(
        self, seed: int, *, max_message_bytes: int = MAX_MESSAGE_BYTES, good_every: int = 5
    ) -> None:
        self.rng = np.random.default_rng(seed)
        self.limit = max_message_bytes
        self.good_every = good_every
        self.tid = 1  # next good train id
        self.sent: Counter[str] = Counter()

    # -- helpers ------------------------------------------------------------------------

    def _meta(self, tid: int | None = None) -> dict[str, Any]:
        return {"source": SOURCE, "timestamp.tid": self.tid if tid is None else tid}

    def _frames(self, n: int, dtype: str = "float32") -> np.ndarray:
        value = self.rng.choice([0.0, 0.05, 1.0])
        return np.full((n, *FRAME_SHAPE), value, dtype=dtype)

    def _message(self, values: dict[str, Any], meta: dict[str, Any] | None = None) -> list:
        return serialize({SOURCE: values}, {SOURCE: meta or self._meta()})

    def _pick(self, options: list[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    @cached_property
    def _big_str(self) -> bytes:  # over msgpack's max_str_len, under the part limit
        return _pack({"s": "x" * (DEFAULT_LIMITS.max_str_len + 1)})

    @cached_property
    def _big_map(self) -> bytes:
        return _pack({f"k{i}": 0 for i in range(DEFAULT_LIMITS.max_map_len + 1)})

    @cached_property
    def _big_list(self) -> bytes:
        return _pack({"l": [0] * (DEFAULT_LIMITS.max_array_len + 1)})

    @cached_property
    def _half_limit(self) -> bytes:
        return bytes(self.limit // 2 + 4096 - (self.limit // 2 + 4096) % 8)

    # -- good messages ------------------------------------------------------------------

    def good(self) -> Case:
        """Frames with the next train id; sometimes odd but harmless metadata or ids."""
        rng = self.rng
        n = int(rng.integers(1, 4))
        frames = self._frames(n, self._pick(["float32", "uint16", "float64"]))
        values: dict[str, Any] = {KEY: frames}
        meta = self._meta()
        pulses = list(range(n))
        extra = int(rng.integers(6))
        if extra == 1:  # explicit pulse ids
            ids = np.arange(n, dtype=np.uint64) * 3 + 7
            values["image.pulseId"], pulses = ids, ids.tolist()
        elif extra == 2:  # unusable pulse ids: ragged, negative, out of range -> 0..n-1
            values["image.pulseId"] = self._pick([[1, [2]], [-1] * n, [2**40] * n, "ids"])
        elif extra == 3:  # hostile timestamps: non-ASCII digits, huge numbers
            meta["timestamp.sec"] = self._pick(["²", "9" * 5000, "1" * 400, "١٢"])
            meta["timestamp.frac"] = self._pick(["0", "²", "9" * 100])
        elif extra == 4:  # deep (but legal) nesting in the metadata
            deep: Any = 0
            for _ in range(1000):
                deep = [deep]
            meta["deep"] = deep
        elif extra == 5:  # other sources and keys around the frames
            values["image.mask"] = np.zeros((2, 2), np.uint8)
            parts = serialize(
                {SOURCE: values, "other/src": {KEY: np.zeros((1, 3, 3), np.float32)}},
                {SOURCE: meta, "other/src": {"source": "other/src"}},
            )
            return self._good_case("good", parts, pulses)
        return self._good_case("good", self._message(values, meta), pulses)

    def _good_case(self, kind: str, parts: list, pulses: list[int]) -> Case:
        tid = self.tid
        self.tid += 1
        return Case(kind, parts, good=[(tid, int(p)) for p in pulses])

    # -- bad messages -------------------------------------------------------------------

    def random_bytes(self) -> Case:
        rng = self.rng
        parts = [rng.bytes(int(rng.integers(0, 200))) for _ in range(int(rng.integers(1, 7)))]
        return Case("random_bytes", parts, None, 1)

    def part_count(self) -> Case:
        parts = self._message({KEY: self._frames(1)})
        choice = int(self.rng.integers(3))
        if choice == 0:
            parts = parts[:-1]
        elif choice == 1:
            parts = [*parts, b"extra"]
        else:
            parts = [b""]
        return Case("part_count", parts, "parts", 1)

    def too_many_parts(self) -> Case:
        n = DEFAULT_LIMITS.max_parts + 2 * int(self.rng.integers(1, 40))
        return Case("too_many_parts", [b"\x80"] * n, "parts", 1)

    def bad_msgpack(self) -> Case:
        junk = self._pick([b"\xc1", b"\x82\xa6source", b"\xdb\xff\xff\xff\xff", b"\x91" * 3])
        if self.rng.integers(2):
            return Case("bad_msgpack", [junk, _pack({})], "msgpack", 1)
        return Case("bad_msgpack", [_head(), junk], "msgpack", 1)

    def deep_msgpack(self) -> Case:
        depth = int(self.rng.integers(1100, 20_000))
        return Case("deep_msgpack", [b"\x91" * depth + b"\xc0", _pack({})], "msgpack", 1)

    def msgpack_limits(self) -> Case:
        payload = self._pick([self._big_str, self._big_map, self._big_list, _pack({1: 2})])
        return Case("msgpack_limits", [_head(), payload], "msgpack", 1)

    def header_types(self) -> Case:
        rng = self.rng
        choice = int(rng.integers(9))
        array = [_array_part(KEY, "float32", [1, 1, 1]), bytes(4)]
        if choice == 0:  # header not a map
            parts = [_pack(self._pick([[1, 2], 5, "det", None, b"x"])), _pack({})]
        elif choice == 1:  # source of the wrong type
            parts = [_pack({"source": self._pick([5, None, [SOURCE], b"det"]),
                            "content": "msgpack"}), _pack({})]  # fmt: skip
        elif choice == 2:  # unknown content
            parts = [_pack({"source": SOURCE, "content": self._pick(["pickle", None, 5, "npy"])}),
                     _pack({})]  # fmt: skip
        elif choice == 3:  # metadata not a map
            parts = [_head(meta=self._pick([[1], 5, "m"])), _pack({})]
        elif choice == 4:  # data part not a map
            parts = [_head(), _pack(self._pick([[1, 2], 5, "x", None]))]
        elif choice == 5:  # array before its source's msgpack part
            parts = array
        elif choice == 6:  # the same source twice
            parts = [_head(), _pack({}), _head(), _pack({})]
        elif choice == 7:  # the same key twice
            parts = [_head(), _pack({KEY: 1}), *array]
        else:  # array path of the wrong type
            parts = [_head(), _pack({}),
                     _pack({"source": SOURCE, "content": "array", "path": 5,
                            "dtype": "float32", "shape": [1]}), bytes(4)]  # fmt: skip
        return Case("header_types", parts, "header", 1)

    def bad_dtype(self) -> Case:
        dtype = self._pick(["object", "O", "U8", "S4", "V8", "M8[ns]", "f4,f4", "float32 ", "",
                            5, None, ["f4"], "x" * 100, "float128", "int128"])  # fmt: skip
        parts = [_head(), _pack({}), _array_part(KEY, dtype, [1, 2, 2]), bytes(16)]
        return Case("bad_dtype", parts, "dtype", 1)

    def frame_dtype(self) -> Case:
        dtype = self._pick(["complex64", "bool"])
        return Case("frame_dtype", self._message({KEY: self._frames(1, dtype)}), "dtype", 1)

    def bad_shape(self) -> Case:
        shape = self._pick([5, "260", {"a": 1}, None, [1.5, 2], [True, 2, 2], [-1, 2, 2],
                            [1] * 9, [[1], 2]])  # fmt: skip
        parts = [_head(), _pack({}), _array_part(KEY, "float32", shape), bytes(16)]
        return Case("bad_shape", parts, "shape", 1)

    def buffer_mismatch(self) -> Case:
        n = int(self.rng.integers(1, 4))
        off = int(self.rng.choice([-1, 1])) * int(self.rng.integers(1, 9))
        nbytes = n * 4 * 4 * 4 + off
        parts = [_head(meta=self._meta()), _pack({}),
                 _array_part(KEY, "float32", [n, 4, 4]), bytes(nbytes)]  # fmt: skip
        return Case("buffer_mismatch", parts, "shape", 1)

    def huge_shape(self) -> Case:
        shape = self._pick([[2**40, *FRAME_SHAPE], [2**31, 2**31, 2**31], [2**62] * 8])
        parts = [_head(meta=self._meta()), _pack({}),
                 _array_part(KEY, "float64", shape), bytes(16)]  # fmt: skip
        return Case("huge_shape", parts, "size", 1)

    def oversize(self) -> Case:
        half = self._half_limit  # two parts of > limit/2: the message is over the limit
        parts = [_head(meta=self._meta()), _pack({}),
                 _array_part(KEY, "uint8", [len(half)]), half,
                 _array_part("image.more", "uint8", [len(half)]), half]  # fmt: skip
        return Case("oversize", parts, "size", 1)

    def wrong_frame_shape(self) -> Case:
        shape = self._pick([(1, 100, 100), (2, FRAME_SHAPE[1], FRAME_SHAPE[0]), FRAME_SHAPE,
                            (1, 1, *FRAME_SHAPE), (2, 0, 0), (3, FRAME_SHAPE[0], 0),
                            (1, 0, FRAME_SHAPE[1])])  # fmt: skip
        return Case(
            "wrong_frame_shape", self._message({KEY: np.zeros(shape, np.float32)}), "shape", 1
        )

    def empty(self) -> Case:
        frames = np.zeros((0, *FRAME_SHAPE), self._pick(["float32", "uint16"]))
        return Case("empty", self._message({KEY: frames}), "empty", 1)

    def foreign_source(self) -> Case:
        src = self._pick(["other/src", "DET", "det ", END_OF_RUN_SOURCE + "x"])
        parts = serialize({src: {KEY: self._frames(1)}}, {src: {"source": src}})
        return Case("foreign_source", parts, "source", 1)

    def wrong_key(self) -> Case:
        value = self._pick([None, 5, "x", [1, 2], {"a": 1}])
        values = {"image.mask": np.zeros((1, 2, 2), np.float32)}
        if value is not None:
            values[KEY] = value
        return Case("wrong_key", self._message(values), "key", 1)

    def bad_train_id(self) -> Case:
        meta: dict[str, Any] = {"source": SOURCE}
        tid = self._pick([None, -1, "12", 1.5, True, [1]])
        if tid is not None:
            meta["timestamp.tid"] = tid
        return Case("bad_train_id", self._message({KEY: self._frames(1)}, meta), "trainid", 1)

    def bad_end_of_run(self) -> Case:
        values = self._pick([{}, {"run": 5, "frames": 1, "trains": 1},
                             {"run": "r", "frames": "1", "trains": 1}, {"run": "r"}])  # fmt: skip
        parts = serialize({END_OF_RUN_SOURCE: values})
        return Case("bad_end_of_run", parts, "endofrun", 1)

    def nonfinite(self) -> Case:
        """Frames holding NaN/Inf (or float64 beyond float32): counted per frame."""
        rng = self.rng
        n = int(rng.integers(1, 4))
        frames = self._frames(n, self._pick(["float32", "float64"]))
        bad = rng.random(n) < 0.5
        if not bad.any():
            bad[int(rng.integers(n))] = True
        for i in np.flatnonzero(bad):
            y, x = int(rng.integers(FRAME_SHAPE[0])), int(rng.integers(FRAME_SHAPE[1]))
            big = 1e300 if frames.dtype == np.float64 else np.inf
            frames[i, y, x] = self._pick([np.nan, np.inf, -np.inf, big])
        parts = self._message({KEY: frames})
        k = int(bad.sum())
        if k == n:  # nothing passes: no train id used
            return Case("nonfinite", parts, "nonfinite", k)
        tid = self.tid
        self.tid += 1
        good = [(tid, int(p)) for p in np.flatnonzero(~bad)]
        return Case("nonfinite", parts, "nonfinite", k, good)

    # -- the stream ---------------------------------------------------------------------

    def case(self, index: int) -> Case:
        """Message ``index`` of the stream: good every ``good_every``-th, else a random kind."""
        if index % self.good_every == self.good_every - 1:
            c = self.good()
        else:
            c = BAD_KINDS[int(self.rng.integers(len(BAD_KINDS)))](self)
        self.sent[c.kind] += 1
        return c

    def cases(self, n: int) -> Iterator[Case]:
        for i in range(n):
            yield self.case(i)


BAD_KINDS: list[Callable[[FuzzGenerator], Case]] = [
    FuzzGenerator.random_bytes,
    FuzzGenerator.part_count,
    FuzzGenerator.too_many_parts,
    FuzzGenerator.bad_msgpack,
    FuzzGenerator.deep_msgpack,
    FuzzGenerator.msgpack_limits,
    FuzzGenerator.header_types,
    FuzzGenerator.bad_dtype,
    FuzzGenerator.frame_dtype,
    FuzzGenerator.bad_shape,
    FuzzGenerator.buffer_mismatch,
    FuzzGenerator.huge_shape,
    FuzzGenerator.oversize,
    FuzzGenerator.wrong_frame_shape,
    FuzzGenerator.empty,
    FuzzGenerator.foreign_source,
    FuzzGenerator.wrong_key,
    FuzzGenerator.bad_train_id,
    FuzzGenerator.bad_end_of_run,
    FuzzGenerator.nonfinite,
]


@dataclass
class Tally:
    """What the streamer should report for the cases sent."""

    messages: int = 0
    bad_messages: int = 0
    rejections: int = 0  # messages, or frames for 'nonfinite'
    by_reason: Counter[str] = field(default_factory=Counter)  # known reasons only
    any_reason: int = 0  # rejections whose reason is not predicted (random bytes)
    good: list[tuple[int, int]] = field(default_factory=list)

    def add(self, case: Case) -> None:
        self.messages += 1
        self.bad_messages += case.bad
        self.rejections += case.rejected
        if case.reason is None:
            self.any_reason += case.rejected
        else:
            self.by_reason[case.reason] += case.rejected
        self.good.extend(case.good)

    def check(self, rejected: dict[str, float]) -> list[str]:
        """Differences between the streamer's rejection counts and these (empty: all agree)."""
        got = {k: int(v) for k, v in rejected.items() if v}
        problems = []
        if sum(got.values()) != self.rejections:
            problems.append(f"{sum(got.values())} rejections counted, {self.rejections} expected")
        for reason, n in self.by_reason.items():
            if not n <= got.get(reason, 0) <= n + self.any_reason:
                problems.append(f"{reason}: {got.get(reason, 0)} counted, {n} expected")
        for reason in set(got) - set(self.by_reason):
            if got[reason] > self.any_reason:
                problems.append(f"{reason}: {got[reason]} counted, none expected")
        if "internal" in got:
            problems.append(f"{got['internal']} messages broke the decoder (reason 'internal')")
        return problems


# -- a running streamer under fuzz ---------------------------------------------------------


def _free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@dataclass
class FuzzRun:
    """What :func:`fuzz_pipeline` saw."""

    summary: Any  # streamer.pipeline.RunSummary
    tally: Tally
    sent: Counter[str]
    alive_before_end: bool  # the pipeline thread was running when the end marker went out
    elapsed_s: float
    bytes_sent: int
    rss_start: int  # bytes, after the pipeline started
    rss_warm: int  # bytes, after the first 10 % of the messages
    rss_peak: int  # bytes, highest seen while messages flowed


def fuzz_pipeline(
    bundle: Path,
    out_dir: Path,
    n_messages: int,
    seed: int,
    *,
    progress: Callable[[int], None] | None = None,
    timeout_s: float = 120.0,
) -> FuzzRun:
    """Send ``n_messages`` fuzz cases through a running :class:`Pipeline` (PULL, in a thread,
    fed by a PUSH socket on 127.0.0.1), then the end marker; return what happened."""
    import psutil
    import zmq

    from streamer.config import load_config
    from streamer.pipeline import Pipeline

    endpoint = _free_endpoint()
    ctx = zmq.Context()
    push = ctx.socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDHWM, 8)  # keep this (sending) side's queue out of the memory figures
    push.setsockopt(zmq.SNDTIMEO, round(timeout_s * 1000))  # a stuck consumer fails the run
    push.bind(endpoint)
    cfg = load_config(None, {
        "model": str(bundle), "feed.endpoint": endpoint, "feed.mode": "PULL",
        "feed.source": SOURCE, "feed.key": KEY, "feed.max_message_bytes": MAX_MESSAGE_BYTES,
        "output.dir": str(out_dir), "output.run": "fuzz", "output.min_free_bytes": 0,
        "output.max_frames": 500, "engine.max_batch": 16,
    })  # fmt: skip
    pipeline = Pipeline(cfg)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(s=pipeline.run()), name="fuzzed")
    thread.start()
    proc = psutil.Process()
    rss_start = rss_warm = rss_peak = proc.memory_info().rss
    gen = FuzzGenerator(seed, max_message_bytes=MAX_MESSAGE_BYTES)
    tally = Tally()
    nbytes = 0
    t0 = time.monotonic()
    try:
        for i, case in enumerate(gen.cases(n_messages)):
            tally.add(case)
            nbytes += message_nbytes(case.parts)
            push.send_multipart(case.parts, copy=False)
            if i % 100 == 99:
                rss_peak = max(rss_peak, proc.memory_info().rss)
                if i < n_messages // 10:
                    rss_warm = rss_peak
                if progress is not None:
                    progress(100)
        deadline = time.monotonic() + timeout_s
        while (
            pipeline.metrics.value("hitstream_messages_received_total") < n_messages
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)
        rss_peak = max(rss_peak, proc.memory_info().rss)
        alive = thread.is_alive()
        push.send_multipart(serialize({END_OF_RUN_SOURCE: {"run": "fuzz", "frames": 0,
                                                           "trains": 0}}))  # fmt: skip
        thread.join(timeout_s)
    finally:
        if thread.is_alive():
            pipeline.stop()
            thread.join(30)
        push.close(linger=0)
        ctx.term()
    return FuzzRun(
        summary=result.get("s"),
        tally=tally,
        sent=gen.sent,
        alive_before_end=alive,
        elapsed_s=time.monotonic() - t0,
        bytes_sent=nbytes,
        rss_start=rss_start,
        rss_warm=rss_warm,
        rss_peak=rss_peak,
    )
