"""Bad input: the decoder only ever refuses with a reason, and a running streamer survives it.

The larger run (10,000+ messages, rejection counts by reason) is ``bench/fuzz_streamer.py``.
"""

from __future__ import annotations

import contextlib
import math
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hitstream.errors import MessageError
from streamer.decode import SourceSpec, decode_message
from streamer.fuzz import (
    FRAME_SHAPE,
    MAX_MESSAGE_BYTES,
    SOURCE,
    FuzzGenerator,
    Tally,
    fuzz_pipeline,
)
from streamer.protocol import Limits, deserialize
from streamer.readback import read_run
from tests.tiny_bundle import make_tiny_bundle

# -- the decoder alone (hypothesis) -----------------------------------------------------

_pack = msgpack.Packer(use_bin_type=True).pack
_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text(max_size=12)
    | st.binary(max_size=12)
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
_digits = st.text(alphabet="0123456789²³¹١٢٣߀", min_size=1, max_size=30)
_metadata = st.fixed_dictionaries(
    {},
    optional={
        "source": _values,
        "timestamp": st.floats() | st.integers(-(2**63), 2**64 - 1) | _values,
        "timestamp.sec": _digits | _values,
        "timestamp.frac": _digits | _values,
        "timestamp.tid": st.integers(-10, 2**64 - 1) | _values,
    },
)
_DTYPE_NAMES = "float32 <f4 >f4 float64 float16 uint16 int8 uint64 bool complex64 object U4 f4,f4"
_dtypes = st.sampled_from([*_DTYPE_NAMES.split(), "M8[s]", "V4", ""]) | _values
_shapes = st.lists(st.integers(0, 4), max_size=5) | _values


@st.composite
def _array_pairs(draw: Any, source: str) -> list[bytes]:
    """An array header and its buffer: usually consistent, sometimes not."""
    dtype, shape = draw(_dtypes), draw(_shapes)
    path = draw(st.sampled_from(["image.data", "image.pulseId", "x"]) | _values)
    header = {"source": source, "content": "array", "dtype": dtype, "shape": shape, "path": path}
    nbytes = draw(st.integers(0, 64))
    if isinstance(shape, list) and all(type(n) is int for n in shape) and isinstance(dtype, str):
        with contextlib.suppress(TypeError, ValueError):
            nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    nbytes = max(0, min(nbytes + draw(st.sampled_from([0, 0, 0, -1, 1, 3])), 4096))
    if draw(st.booleans()):  # arbitrary bytes: NaN, Inf and denormals included
        buf = draw(st.binary(min_size=nbytes, max_size=nbytes))
    else:
        buf = np.full(nbytes, draw(st.sampled_from([0, 0x7F, 0xFF])), np.uint8).tobytes()
    return [_pack(header), buf]


_AXES = {"pulses": (0, 3), "modules": (1, 2), "data_gain": (0, 2)}  # size ranges


@st.composite
def _frames_part(draw: Any, axis_order: str, frame_shape: tuple[int, int] | None) -> list[bytes]:
    """A frames array for ``axis_order`` (usually of ``frame_shape``) with arbitrary bytes."""
    h, w = frame_shape or (draw(st.integers(0, 3)), draw(st.integers(0, 3)))
    sizes = {"H": h, "ss": h, "W": w, "fs": w}
    shape = [
        sizes.get(a) if a in sizes else draw(st.integers(*_AXES[a])) for a in axis_order.split(",")
    ]
    dtype = draw(st.sampled_from(["float32", ">f4", "float64", "float16", "uint16", "int8"]))
    nbytes = math.prod(shape) * np.dtype(dtype).itemsize
    buf = draw(st.binary(min_size=nbytes, max_size=nbytes))  # NaN, Inf, denormals included
    header = {"source": SOURCE, "content": "array", "path": "image.data", "dtype": dtype}
    return [_pack(header | {"shape": shape}), buf]


@st.composite
def _messages(draw: Any, axis_order: str, frame_shape: tuple[int, int] | None) -> list[bytes]:
    """Message parts: a near-valid message with hostile metadata (often one field broken),
    header/payload pairs of arbitrary fields, or raw bytes."""
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return draw(st.lists(st.binary(max_size=40), max_size=6))
    if kind >= 3:  # frames that decode, hostile ids and timestamps around them
        meta = draw(_metadata)
        if draw(st.integers(0, 3)):
            meta["timestamp.tid"] = draw(st.integers(0, 2**64 - 1))
        values = draw(st.fixed_dictionaries({}, optional={
            "image.pulseId": _values | st.lists(st.integers(-(2**63), 2**64 - 1), max_size=4),
            "trainId": _values,
            "metadata": _metadata,
        }))  # fmt: skip
        parts = [
            _pack({"source": SOURCE, "content": "msgpack", "metadata": meta}),
            _pack(values),
            *draw(_frames_part(axis_order, frame_shape)),
        ]
        if draw(st.integers(0, 3)) == 0:  # break one part
            i = draw(st.integers(0, len(parts) - 1))
            parts[i] = _pack(draw(_values)) if draw(st.booleans()) else parts[i][:-1]
        return parts
    parts = []
    for _ in range(draw(st.integers(1, 3))):
        source = draw(st.sampled_from([SOURCE, "other", "hitstream/end_of_run"]) | _values)
        header = {"source": source, "content": draw(st.sampled_from(["msgpack"]) | _values)}
        if draw(st.booleans()):
            header["metadata"] = draw(_metadata | _values)
        values = draw(st.fixed_dictionaries({}, optional={
            "image.pulseId": _values, "trainId": _values, "metadata": _metadata,
            "run": _values, "frames": _values, "trains": _values,
        }))  # fmt: skip
        parts += [_pack(header), _pack(values)]
        for _ in range(draw(st.integers(0, 2))):
            parts += draw(_array_pairs(source if isinstance(source, str) else SOURCE))
    return parts


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    axis_order=st.sampled_from(
        ["pulses,H,W", "H,W", "modules,fs,ss,pulses", "pulses,data_gain,ss,fs"]
    ),
    frame_shape=st.sampled_from([None, (2, 3)]),
    source=st.sampled_from([None, SOURCE]),
)
def test_decoder_refuses_only_with_a_reason(
    data: st.DataObject, axis_order: str, frame_shape: Any, source: Any
) -> None:
    """Whatever arrives, decoding returns or raises MessageError (never another exception:
    that would end a receiver). Found, and fixed: non-ASCII or huge timestamp digits
    (``int('²')``, int/float overflow) and ragged pulse-id lists (numpy ValueError)."""
    parts = data.draw(_messages(axis_order, frame_shape), label="parts")
    spec = SourceSpec(source=source, axis_order=axis_order, frame_shape=frame_shape)
    try:
        decoded = deserialize(parts, limits=Limits(max_message_bytes=1 << 16))
        out = decode_message(*decoded, spec, now=1.0)
    except MessageError as exc:
        assert exc.reason and exc.detail
        return
    if out.batch is not None:
        b = out.batch
        assert b.frames.dtype == np.float32 and len(b) > 0
        assert np.isfinite(b.frames).all() and np.isfinite(b.timestamp).all()
        assert b.pulse_id.dtype == np.uint32 and b.train_id.dtype == np.uint64


def test_fuzz_cases_are_refused_for_the_reason_they_claim() -> None:
    """The generator's bookkeeping is right (so the streamer's counts can be checked)."""
    spec = SourceSpec(source=SOURCE, frame_shape=FRAME_SHAPE)
    limits = Limits(max_message_bytes=MAX_MESSAGE_BYTES)
    gen, tally, got = FuzzGenerator(7), Tally(), Counter()
    written: list[tuple[int, int]] = []
    for case in gen.cases(1500):
        tally.add(case)
        try:
            out = decode_message(*deserialize(case.parts, limits=limits), spec, now=0.0)
        except MessageError as exc:
            reasons = {exc.reason: 1}
        else:
            assert out.end is None
            reasons = dict(out.rejected) or ({"empty": 1} if out.batch is None else {})
            if out.batch is not None:
                written += zip(
                    out.batch.train_id.tolist(), out.batch.pulse_id.tolist(), strict=True
                )
        expected = {case.reason: case.rejected} if case.bad else {}
        if case.bad and case.reason is None:
            assert sum(reasons.values()) == 1, (case.kind, reasons)
        else:
            assert reasons == expected, case.kind
        got.update(reasons)
    assert tally.check(got) == []
    assert written == tally.good
    assert len(gen.sent) == 21, gen.sent  # every kind (and good messages) came up


# -- a running streamer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def test_running_streamer_survives_fuzzed_input_and_writes_every_good_frame_once(
    tiny: Path, tmp_path: Path
) -> None:
    """2,000 messages (4 in 5 malformed, of 20 kinds) into a running PULL streamer: it never
    stops, counts every bad message (NaN frames one by one) under the predicted reason,
    classifies and writes each good frame exactly once, and its memory stays flat."""
    out = tmp_path / "out"
    run = fuzz_pipeline(tiny, out, n_messages=2000, seed=3, timeout_s=60)
    s = run.summary
    assert run.alive_before_end, "the streamer stopped before the end marker"
    assert s is not None and s.error is None, s and s.error
    assert s.end_of_run is not None
    assert run.tally.check(s.refusals()) == [], s.refusals()
    assert sum(s.refusals().values()) >= run.tally.bad_messages
    assert not s.dropped and not s.missed, (s.dropped, s.missed)  # lossless, no train gap
    # the balance holds to the frame: refused NaN frames were received, whole refused
    # messages were not
    acc = s.accounting
    assert acc["balanced"], acc
    assert acc["received"] == acc["classified"] + acc["rejected"] + acc["dropped"]
    assert acc["rejected"] == sum(s.rejected.values())
    assert acc["labels_on_disk"] == acc["classified"]
    good = sorted(run.tally.good)
    assert s.frames_classified == len(good)
    assert s.frames_received == len(good) + sum(s.rejected.values())  # NaN frames arrived
    tables = read_run(out, "fuzz")
    assert sorted(zip(tables.train_id.tolist(), tables.pulse_id.tolist(), strict=True)) == good
    grown = run.rss_peak - run.rss_start  # ~80 MiB: buffers and caches warming up
    assert grown < 200 << 20 < run.bytes_sent, f"memory grew by {grown >> 20} MiB"
