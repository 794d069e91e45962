"""Karabo bridge protocol 2.2: one train as a ZeroMQ multipart message.

Wire format (European XFEL, ``karabo_bridge.serializer``), for each source in sorted
order::

    msgpack {'source': S, 'content': 'msgpack', 'metadata': {...}}   # header
    msgpack {key: value, ...}                                       # non-array values
    then for each array value:
    msgpack {'source': S, 'content': 'array', 'path': key,
             'dtype': 'float32', 'shape': [n, h, w]}                  # array header
    raw C-order bytes of the array                                  # buffer

Metadata keys: ``source``, ``timestamp`` (float seconds), ``timestamp.sec`` (str),
``timestamp.frac`` (str, attoseconds), ``timestamp.tid`` (train id).

This module is pure (no sockets). :func:`deserialize` treats its input as untrusted:
msgpack is decoded with ``raw=False`` and bounded sizes, only plain numeric dtypes are
accepted, buffer sizes must match ``shape`` x ``itemsize``, and the message size is
bounded by :class:`Limits`. Every failure raises :class:`~hitstream.errors.MessageError`
whose ``reason`` is one of :data:`REASONS` (a metric label).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
import numpy as np

from hitstream.errors import MessageError

PROTOCOL_VERSION = "2.2"
SUPPORTED_VERSIONS: tuple[str, ...] = ("2.2",)

#: Rejection reasons raised by :func:`deserialize` (stable metric labels).
REASONS: tuple[str, ...] = ("parts", "size", "msgpack", "header", "dtype", "shape")

#: Array dtypes accepted on the wire (any byte order).
ALLOWED_DTYPES: frozenset[np.dtype] = frozenset(
    np.dtype(name)
    for name in (
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
        "complex64",
        "complex128",
    )
)

_MAX_DTYPE_STR = 16


@dataclass(frozen=True)
class Limits:
    """Bounds applied to every received message (defaults fit a 1-Mpixel AGIPD train)."""

    max_parts: int = 1024  # 2 per source + 2 per array
    max_message_bytes: int = 4 << 30  # all parts together
    max_array_bytes: int = 2 << 30  # one array buffer
    max_msgpack_bytes: int = 16 << 20  # one header or data-dict part
    max_dims: int = 8
    max_str_len: int = 1 << 20
    max_bin_len: int = 16 << 20
    max_array_len: int = 1 << 20
    max_map_len: int = 1 << 16


DEFAULT_LIMITS = Limits()

# --------------------------------------------------------------------------- serialize


def _pack_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"cannot serialize {type(obj).__name__} in a msgpack value")


def _array_buffer(array: np.ndarray) -> memoryview:
    """Flat byte view of ``array`` (copies only when it is not C-contiguous)."""
    if not array.flags.c_contiguous:
        array = np.ascontiguousarray(array)
    return array.reshape(-1).view(np.uint8).data


def serialize(
    data: dict[str, dict[str, Any]],
    metadata: dict[str, dict[str, Any]] | None = None,
    protocol_version: str = PROTOCOL_VERSION,
) -> list[bytes | memoryview]:
    """Encode one train as a list of message parts (arrays are not copied when C-contiguous).

    ``data`` maps source name to ``{key: value}``; numpy arrays become array parts, numpy
    scalars become Python numbers, everything else must be msgpack-serializable.
    ``metadata`` maps source name to its metadata dict; when it is ``None`` (or lacks a
    source) the source's ``data[src]['metadata']`` is used, as karabo_bridge does, else
    ``{'source': src}``.

    >>> parts = serialize({"det": {"image.data": np.zeros((2, 3, 4), np.float32)}})
    >>> len(parts)
    4
    """
    if protocol_version not in SUPPORTED_VERSIONS:
        raise ValueError(
            f"unsupported protocol version {protocol_version!r}; supported: {SUPPORTED_VERSIONS}"
        )
    packer = msgpack.Packer(use_bin_type=True, default=_pack_default)
    parts: list[bytes | memoryview] = []
    for src, props in sorted(data.items()):
        meta = (metadata or {}).get(src)
        if meta is None:
            meta = props.get("metadata") or {"source": src}
        values: dict[str, Any] = {}
        arrays: list[tuple[str, np.ndarray]] = []
        for key, value in props.items():
            if isinstance(value, np.ndarray):
                arrays.append((key, value))
            elif isinstance(value, np.generic):
                values[key] = value.item()
            else:
                values[key] = value
        parts.append(packer.pack({"source": src, "content": "msgpack", "metadata": meta}))
        parts.append(packer.pack(values))
        for key, array in arrays:
            header = {
                "source": src,
                "content": "array",
                "path": key,
                "dtype": str(array.dtype),
                "shape": list(array.shape),
            }
            parts.append(packer.pack(header))
            parts.append(_array_buffer(array))
    return parts


# ------------------------------------------------------------------------- deserialize


def _buffer(part: Any) -> memoryview:
    """A byte view of a message part (zmq.Frame, bytes, bytearray or memoryview)."""
    buf = getattr(part, "buffer", part)  # zmq.Frame.buffer is a memoryview
    try:
        view = memoryview(buf)
    except TypeError as exc:
        raise MessageError("parts", f"message part of type {type(part).__name__}") from exc
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _unpack(buf: memoryview, limits: Limits, what: str) -> Any:
    if len(buf) > limits.max_msgpack_bytes:
        raise MessageError("size", f"{what} is {len(buf)} bytes (limit {limits.max_msgpack_bytes})")
    try:
        return msgpack.unpackb(
            buf,
            raw=False,
            strict_map_key=True,
            max_str_len=limits.max_str_len,
            max_bin_len=limits.max_bin_len,
            max_array_len=limits.max_array_len,
            max_map_len=limits.max_map_len,
            max_ext_len=0,
        )
    except Exception as exc:  # msgpack raises several unrelated exception types
        raise MessageError("msgpack", f"{what}: {type(exc).__name__}: {exc}") from exc


def parse_dtype(name: Any) -> np.dtype:
    """The numpy dtype for a wire dtype string, or MessageError('dtype')."""
    if not isinstance(name, str) or len(name) > _MAX_DTYPE_STR:
        raise MessageError("dtype", f"dtype must be a short string, got {name!r:.40}")
    try:
        dtype = np.dtype(name)
    except (TypeError, ValueError) as exc:
        raise MessageError("dtype", f"unknown dtype {name!r}") from exc
    if dtype.newbyteorder("=") not in ALLOWED_DTYPES:
        raise MessageError("dtype", f"dtype {name!r} is not a plain numeric dtype")
    return dtype


def _parse_shape(shape: Any, limits: Limits) -> tuple[int, ...]:
    if not isinstance(shape, list | tuple) or len(shape) > limits.max_dims:
        raise MessageError("shape", f"shape must be a list of <= {limits.max_dims} ints")
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
        raise MessageError("shape", f"shape {shape!r:.80} has non-integer or negative sizes")
    return tuple(shape)


def _require_str(header: dict, key: str) -> str:
    value = header.get(key)
    if not isinstance(value, str):
        raise MessageError("header", f"header field {key!r} must be a string")
    return value


def deserialize(
    parts: Sequence[Any], *, limits: Limits = DEFAULT_LIMITS
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]:
    """Decode one protocol-2.2 message into ``(data, metadata)``, both keyed by source.

    ``parts`` are zmq.Frame objects (received with ``copy=False``) or bytes-like objects.
    Arrays are read-only ``np.frombuffer`` views of the received parts (no copy).
    Raises MessageError with reason ``parts``, ``size``, ``msgpack``, ``header``,
    ``dtype`` or ``shape``.
    """
    n = len(parts)
    if n > limits.max_parts:
        raise MessageError("parts", f"{n} parts (limit {limits.max_parts})")
    if n < 2 or n % 2:
        raise MessageError(
            "parts", f"{n} parts; protocol 2.2 needs header/payload pairs (1.0 unsupported)"
        )
    views = [_buffer(p) for p in parts]
    total = sum(len(v) for v in views)
    if total > limits.max_message_bytes:
        raise MessageError("size", f"message is {total} bytes (limit {limits.max_message_bytes})")

    data: dict[str, dict[str, Any]] = {}
    meta: dict[str, dict[str, Any]] = {}
    for i in range(0, n, 2):
        header = _unpack(views[i], limits, f"header of part {i}")
        if not isinstance(header, dict):
            raise MessageError("header", f"part {i} is a {type(header).__name__}, not a map")
        source = _require_str(header, "source")
        content = header.get("content")
        payload = views[i + 1]
        if content == "msgpack":
            if source in data:
                raise MessageError("header", f"source {source!r} appears twice")
            values = _unpack(payload, limits, f"data of source {source!r}")
            src_meta = header.get("metadata", {})
            if not isinstance(values, dict) or not isinstance(src_meta, dict):
                raise MessageError("header", f"data/metadata of {source!r} must be maps")
            data[source] = values
            meta[source] = src_meta
        elif content == "array":
            if source not in data:
                raise MessageError("header", f"array for {source!r} before its msgpack part")
            path = _require_str(header, "path")
            if path in data[source]:
                raise MessageError("header", f"key {path!r} of {source!r} appears twice")
            dtype = parse_dtype(header.get("dtype"))
            shape = _parse_shape(header.get("shape"), limits)
            nbytes = math.prod(shape) * dtype.itemsize
            if nbytes > limits.max_array_bytes:
                raise MessageError(
                    "size", f"{source}/{path}: {nbytes} bytes (limit {limits.max_array_bytes})"
                )
            if nbytes != len(payload):
                raise MessageError(
                    "shape",
                    f"{source}/{path}: shape {list(shape)} x {dtype} needs {nbytes} bytes, "
                    f"buffer has {len(payload)}",
                )
            data[source][path] = np.frombuffer(payload, dtype=dtype).reshape(shape)
        else:
            raise MessageError("header", f"unknown content {content!r:.40} for {source!r}")
    return data, meta


def message_nbytes(parts: Sequence[Any]) -> int:
    """Total size of a message's parts in bytes."""
    return sum(len(_buffer(p)) for p in parts)
