"""Karabo bridge 2.2 serializer (streamer.protocol) and message decoding (streamer.decode)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from karabo_bridge import serializer as kb

from hitstream.errors import ConfigError, MessageError
from streamer.decode import (
    END_OF_RUN_SOURCE,
    Decoder,
    SourceSpec,
    decode_message,
    end_of_run_message,
    finite_frames,
    timestamp_metadata,
)
from streamer.protocol import DEFAULT_LIMITS, Limits, deserialize, serialize
from streamer.types import EndOfRun

pack = msgpack.Packer(use_bin_type=True).pack
SRC = "SPB_DET/CAL/TEST"

ARRAYS = [
    np.arange(60, dtype=np.float32).reshape(3, 4, 5),
    np.arange(6, dtype=np.uint16).reshape(2, 3),
    np.array([True, False, True]),
    np.arange(5, dtype=np.int64) - 2,
    np.array([1 + 2j, 3 - 4j], dtype=np.complex64),
    np.arange(12, dtype=np.float16).reshape(3, 4).T,  # not C-contiguous
    np.arange(6, dtype=">u2"),  # big-endian
    np.zeros((0, 5, 5), dtype=np.float64),
    np.array(7.5, dtype=np.float32),  # 0-d
]


def _message(arrays: dict[str, np.ndarray], **values) -> tuple[dict, dict]:
    data = {SRC: {**values, **arrays}}
    return data, {SRC: timestamp_metadata(SRC, 1234, 1_700_000_000.25)}


def _parts_with_header(**header) -> list[bytes]:
    base = {"source": SRC, "content": "array", "path": "a", "dtype": "float32", "shape": [2]}
    base.update(header)
    return [
        pack({"source": SRC, "content": "msgpack", "metadata": {}}),
        pack({}),
        pack(base),
        np.zeros(2, np.float32).tobytes(),
    ]


def _reason(parts, limits: Limits = DEFAULT_LIMITS) -> str:
    with pytest.raises(MessageError) as info:
        deserialize(parts, limits=limits)
    return info.value.reason


# ----------------------------------------------------------------------- round trips


@pytest.mark.parametrize("array", ARRAYS, ids=lambda a: f"{a.dtype}{a.shape}")
def test_round_trip_arrays(array):
    data, meta = _message({"image.data": array}, n=3, name="x", lst=[1, 2], nested={"a": 1.5})
    got, got_meta = deserialize(serialize(data, meta))
    out = got[SRC]["image.data"]
    assert out.dtype == array.dtype and out.shape == array.shape
    np.testing.assert_array_equal(out, array)
    assert got[SRC]["n"] == 3 and got[SRC]["lst"] == [1, 2] and got[SRC]["nested"] == {"a": 1.5}
    assert got_meta == meta


def test_serialize_is_zero_copy_for_contiguous_arrays():
    array = np.arange(1000, dtype=np.float32)
    parts = serialize({SRC: {"image.data": array}})
    assert np.shares_memory(np.frombuffer(parts[-1], np.uint8), array)
    assert len(parts) == 4


def test_serialize_sorts_sources_and_converts_numpy_scalars():
    data = {"b": {"x": np.float32(2.5)}, "a": {"y": np.int16(3)}}
    parts = serialize(data)
    headers = [msgpack.unpackb(parts[i]) for i in (0, 2)]
    assert [h["source"] for h in headers] == ["a", "b"]
    got, meta = deserialize(parts)
    assert got == {"a": {"y": 3}, "b": {"x": 2.5}}
    assert meta == {"a": {"source": "a"}, "b": {"source": "b"}}


def test_serialize_rejects_unknown_version():
    with pytest.raises(ValueError, match=r"1\.0"):
        serialize({SRC: {}}, protocol_version="1.0")


def test_deserialize_reads_karabo_bridge_serializer_output():
    array = np.arange(24, dtype=np.uint16).reshape(2, 3, 4)
    data, meta = _message({"image.data": array}, flag=True, text="abc")
    got, got_meta = deserialize(kb.serialize(data, meta, protocol_version="2.2"))
    np.testing.assert_array_equal(got[SRC]["image.data"], array)
    assert got[SRC]["flag"] is True and got[SRC]["text"] == "abc"
    assert got_meta == meta


def test_karabo_bridge_deserializer_reads_ours():
    array = np.linspace(0, 1, 30, dtype=np.float32).reshape(3, 10)
    data, meta = _message({"image.data": array}, count=4)
    got, got_meta = kb.deserialize([bytes(p) for p in serialize(data, meta)])
    np.testing.assert_array_equal(got[SRC]["image.data"], array)
    assert got[SRC]["count"] == 4
    assert got_meta == meta


# ------------------------------------------------------------------------ rejections


def test_rejects_random_bytes_and_wrong_part_counts():
    rng = np.random.default_rng(1)
    noise = rng.integers(0, 256, 200, dtype=np.uint8).tobytes()
    assert _reason([noise]) == "parts"
    assert _reason([]) == "parts"
    good = _parts_with_header()
    assert _reason(good[:3]) == "parts"
    assert _reason([b"\xc1", b"\x80"]) == "msgpack"  # 0xc1 is never valid msgpack
    assert _reason([noise, noise]) in {"msgpack", "header"}
    assert _reason([pack([1, 2]), pack({})]) == "header"  # header is not a map


@pytest.mark.parametrize(
    ("header", "reason"),
    [
        ({"dtype": "O"}, "dtype"),
        ({"dtype": "object"}, "dtype"),
        ({"dtype": "not-a-dtype"}, "dtype"),
        ({"dtype": "V8"}, "dtype"),
        ({"dtype": "i4,f4"}, "dtype"),
        ({"dtype": 5}, "dtype"),
        ({"shape": [3]}, "shape"),  # 12 bytes, buffer has 8
        ({"shape": [-2]}, "shape"),
        ({"shape": "2"}, "shape"),
        ({"shape": [1] * 9 + [2]}, "shape"),  # more dims than max_dims
        ({"content": "pickle"}, "header"),
        ({"path": 3}, "header"),
        ({"source": "other"}, "header"),  # array before its source's msgpack part
    ],
)
def test_rejects_bad_array_headers(header, reason):
    assert _reason(_parts_with_header(**header)) == reason


def test_rejects_oversize_messages_and_too_many_parts():
    parts = serialize({SRC: {"a": np.zeros(1000, np.float32), "b": np.zeros(1, np.uint8)}})
    assert _reason(parts, Limits(max_array_bytes=1000)) == "size"
    assert _reason(parts, Limits(max_message_bytes=2000)) == "size"
    assert _reason(parts, Limits(max_parts=4)) == "parts"
    assert _reason(parts, Limits(max_msgpack_bytes=8)) == "size"
    big_string = [pack({"source": SRC, "content": "msgpack"}), pack({"s": "x" * 100})]
    assert _reason(big_string, Limits(max_str_len=50)) == "msgpack"
    deserialize(parts, limits=Limits(max_array_bytes=4000, max_parts=6))  # at the limits: fine


def test_rejects_duplicate_sources():
    one = serialize({SRC: {"x": 1}})
    assert _reason(one + one) == "header"


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=6))
def test_arbitrary_bytes_only_ever_raise_message_error(parts):
    try:
        deserialize(parts)
    except MessageError as exc:
        assert exc.reason in {"parts", "size", "msgpack", "header", "dtype", "shape"}


# --------------------------------------------------------------------------- decoding


def _decode(array, spec=None, extra=None, meta=None, now=5.0):
    data = {SRC: {"image.data": array, **(extra or {})}}
    if meta is None:
        meta = {SRC: timestamp_metadata(SRC, 77, 1000.5)}
    return decode_message(data, meta, spec or SourceSpec(), now=now)


def test_decode_pulses_h_w_uint16_to_float32():
    frames = np.arange(3 * 4 * 5, dtype=np.uint16).reshape(3, 4, 5)
    out = _decode(frames, extra={"image.pulseId": np.array([10, 11, 12], np.uint64)})
    b = out.batch
    assert out.end is None and out.rejected == {}
    assert b.frames.dtype == np.float32 and b.frames.shape == (3, 4, 5)
    assert b.frames.flags.c_contiguous
    np.testing.assert_array_equal(b.frames, frames.astype(np.float32))
    assert b.train_id.dtype == np.uint64 and b.train_id.tolist() == [77] * 3
    assert b.pulse_id.dtype == np.uint32 and b.pulse_id.tolist() == [10, 11, 12]
    assert b.timestamp.tolist() == [1000.5] * 3
    assert b.received.shape == (3,) and np.all(b.received > 0)


def test_decode_float32_is_zero_copy():
    frames = np.ones((2, 4, 5), np.float32)
    assert np.shares_memory(_decode(frames).batch.frames, frames)


def test_decode_single_frame_h_w():
    frame = np.arange(20, dtype=np.float64).reshape(4, 5)
    b = _decode(frame, SourceSpec(axis_order="H,W", frame_shape=(4, 5))).batch
    assert b.frames.shape == (1, 4, 5) and b.pulse_id.tolist() == [0]
    np.testing.assert_array_equal(b.frames[0], frame)


def test_decode_modules_fs_ss_pulses_stacks_modules_vertically():
    # live AGIPD order: (modules, fs, ss, pulses)
    a = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    b = _decode(a, SourceSpec(axis_order="modules,fs,ss,pulses")).batch
    assert b.frames.shape == (5, 2 * 4, 3)
    for p in range(5):
        expected = np.concatenate([a[0, :, :, p].T, a[1, :, :, p].T])
        np.testing.assert_array_equal(b.frames[p], expected)


def test_decode_drops_and_counts_nonfinite_frames():
    frames = np.ones((5, 4, 4), np.float32)
    frames[1, 2, 2] = np.nan
    frames[3, 0, 0] = np.inf
    out = _decode(frames)
    assert out.rejected == {"nonfinite": 2}
    assert out.batch.pulse_id.tolist() == [0, 2, 4]
    assert len(out.batch) == 3 and np.isfinite(out.batch.frames).all()


def test_decode_all_nonfinite_gives_no_batch():
    out = _decode(np.full((2, 3, 3), np.nan, np.float32))
    assert out.batch is None and out.rejected == {"nonfinite": 2}


def test_decode_float64_out_of_float32_range_is_nonfinite():
    frames = np.ones((2, 3, 3))
    frames[0, 0, 0] = 1e300
    assert _decode(frames).rejected == {"nonfinite": 1}


def test_decode_end_of_run_round_trip():
    end = EndOfRun(run="r0042", frames=100, trains=4)
    data, meta = deserialize(serialize(*end_of_run_message(end, 12.0)))
    out = decode_message(data, meta, SourceSpec(), now=0.0)
    assert out.end == end and out.batch is None
    assert meta[END_OF_RUN_SOURCE]["timestamp"] == 12.0


def test_decode_ids_fallbacks():
    frames = np.ones((2, 3, 3), np.float32)
    meta_without_tid = {SRC: {"source": SRC}}
    # extra-data serve-files style: 'metadata' dict among the source's keys
    b = _decode(frames, extra={"metadata": {"timestamp.tid": 9}}, meta=meta_without_tid).batch
    assert b.train_id.tolist() == [9, 9]
    assert b.timestamp.tolist() == [5.0, 5.0]  # no timestamp: `now`
    b = _decode(frames, extra={"trainId": 10, "image.pulseId": [1, 2, 3]}, meta={}).batch
    assert b.train_id.tolist() == [10, 10]
    assert b.pulse_id.tolist() == [0, 1]  # wrong-length pulse ids: arange
    meta_sec_frac = {
        SRC: {"timestamp.tid": 1, "timestamp.sec": "20", "timestamp.frac": "5" + "0" * 17}
    }
    assert _decode(frames, meta=meta_sec_frac).batch.timestamp.tolist() == [20.5, 20.5]


@pytest.mark.parametrize(
    ("array", "spec", "extra", "reason"),
    [
        (np.ones((1, 2, 2)), SourceSpec(source="nope"), None, "source"),
        (np.ones((1, 2, 2)), SourceSpec(key="other"), None, "source"),
        (np.ones((1, 2, 2)), SourceSpec(source=SRC, key="other"), None, "key"),
        (np.ones((1, 2, 2)), SourceSpec(frame_shape=(3, 3)), None, "shape"),
        (np.ones((2, 2)), SourceSpec(), None, "shape"),  # ndim != len(axis order)
        (np.ones((1, 2, 2), np.complex64), SourceSpec(), None, "dtype"),
        (np.ones((1, 2, 2), bool), SourceSpec(), None, "dtype"),
        ([1, 2], SourceSpec(source=SRC), None, "key"),  # not an array
    ],
)
def test_decode_rejections(array, spec, extra, reason):
    with pytest.raises(MessageError) as info:
        _decode(array, spec, extra)
    assert info.value.reason == reason


def test_decode_rejects_missing_or_bad_train_id():
    with pytest.raises(MessageError) as info:
        _decode(np.ones((1, 2, 2)), meta={SRC: {"source": SRC}})
    assert info.value.reason == "trainid"
    with pytest.raises(MessageError) as info:
        _decode(np.ones((1, 2, 2)), meta={SRC: {"timestamp.tid": -1}})
    assert info.value.reason == "trainid"


def test_decode_picks_first_source_with_key():
    data = {
        "a/ctrl": {"value": 1},
        "b/det": {"image.data": np.ones((1, 2, 2), np.float32)},
        "c/det": {"image.data": np.zeros((1, 2, 2), np.float32)},
    }
    meta = {s: {"timestamp.tid": 3} for s in data}
    out = decode_message(data, meta, SourceSpec(), now=0.0)
    assert out.batch.frames.sum() == 4.0


def test_decoder_pins_the_first_frame_shape():
    dec = Decoder()
    meta = {SRC: {"timestamp.tid": 1}}
    dec.decode({SRC: {"image.data": np.ones((1, 4, 4))}}, meta)
    assert dec.spec.frame_shape == (4, 4)
    with pytest.raises(MessageError, match="expected"):
        dec.decode({SRC: {"image.data": np.ones((1, 4, 5))}}, meta)


@pytest.mark.parametrize("order", ["pulses,H", "pulses,H,H,W", "pulses,x,W", "H,W,modules,bad"])
def test_bad_axis_orders_are_config_errors(order):
    with pytest.raises(ConfigError):
        SourceSpec(axis_order=order)


def test_finite_frames_is_exact():
    frames = np.zeros((6, 8, 9), np.float32)
    frames[0, 1, 1] = np.nan
    frames[1, 2, 2] = -np.inf
    frames[2, :, :] = 3e38  # finite, but its float32 sum overflows
    frames[3, 0, 0], frames[3, 0, 1] = np.inf, -np.inf  # sum is NaN
    frames[4, 7, 8] = np.nan  # last pixel
    assert finite_frames(frames).tolist() == [False, False, True, False, False, True]
    assert finite_frames(np.zeros((0, 3, 3), np.float32)).shape == (0,)
