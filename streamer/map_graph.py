"""The detector map as a small onnxruntime graph: on the GPU with the CUDA provider.

``detector.map_on = "engine"`` (:mod:`streamer.detector_map`) runs the map of
:class:`hitstream.qgrid.Resampler` as a gather-multiply-sum graph on the engine's
providers instead of scipy on the host: with CUDA the train's pixels go to the GPU as they
arrived (no transposing copy: the graph gathers in the train's own memory order), and only
the grid's frames come back. The map itself (:meth:`Resampler.gather_table`) is bound to
the device once per map. NaN and infinite pixels (masked ones of corrected data) add
nothing, as on the host. Trains whose memory order is neither pulses-first nor pulses-last,
or of another dtype than float32/uint16, are mapped on the host.

The graph is built with the ``onnx`` package (the ``gpu`` and ``train`` extras).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from hitstream.errors import ConfigError
from hitstream.qgrid import Resampler

log = logging.getLogger(__name__)

OPSET = 17
DTYPES = {np.dtype(np.float32): 1, np.dtype(np.uint16): 4}  # onnx TensorProto element types


def map_graph(pulses_first: bool, dtype: np.dtype) -> bytes:
    """The graph: ``pixels`` (B, P) or (P, B) of ``dtype``, ``index`` (G, K) int64 and
    ``weight`` (G, K) float32 -> ``grid`` (B, G) float32."""
    try:
        from onnx import TensorProto, helper
    except ImportError as exc:
        raise ConfigError(
            "detector.map_on = 'engine' needs the onnx package (pip install 'hitstream[gpu]')"
        ) from exc
    f32 = TensorProto.FLOAT
    axis = 1 if pulses_first else 0
    nodes = [helper.make_node("Gather", ["pixels", "index"], ["g"], axis=axis)]
    src = "g"
    if DTYPES[np.dtype(dtype)] != f32:
        nodes.append(helper.make_node("Cast", ["g"], ["gf"], to=f32))
        src = "gf"
    nodes += [
        helper.make_node("IsNaN", [src], ["nan"]),
        helper.make_node("IsInf", [src], ["inf"]),
        helper.make_node("Or", ["nan", "inf"], ["bad"]),
        helper.make_node("Where", ["bad", "zero", src], ["clean"]),
    ]
    if pulses_first:  # (B, G, K) x (G, K), summed over K
        nodes += [
            helper.make_node("Mul", ["clean", "weight"], ["parts"]),
            helper.make_node("ReduceSum", ["parts", "axis_k"], ["grid"], keepdims=0),
        ]
        k_axis = 2
    else:  # (G, K, B) x (G, K, 1), summed over K, then (B, G)
        nodes += [
            helper.make_node("Unsqueeze", ["weight", "last"], ["w3"]),
            helper.make_node("Mul", ["clean", "w3"], ["parts"]),
            helper.make_node("ReduceSum", ["parts", "axis_k"], ["gb"], keepdims=0),
            helper.make_node("Transpose", ["gb"], ["grid"], perm=[1, 0]),
        ]
        k_axis = 1
    consts = [
        helper.make_tensor("zero", f32, [], [0.0]),
        helper.make_tensor("axis_k", TensorProto.INT64, [1], [k_axis]),
        helper.make_tensor("last", TensorProto.INT64, [1], [2]),
    ]
    shape = ["B", "P"] if pulses_first else ["P", "B"]
    graph = helper.make_graph(
        nodes,
        "detector_map",
        [
            helper.make_tensor_value_info("pixels", DTYPES[np.dtype(dtype)], shape),
            helper.make_tensor_value_info("index", TensorProto.INT64, ["G", "K"]),
            helper.make_tensor_value_info("weight", f32, ["G", "K"]),
        ],
        [helper.make_tensor_value_info("grid", f32, ["B", "G"])],
        initializer=consts,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def memory_layout(frames: np.ndarray) -> tuple[bool, tuple[int, int, int]] | None:
    """(pulses first?, the pixel axes in memory order) of a ``(B, modules, ss, fs)`` view
    whose buffer is contiguous with the pulses first or last; None otherwise."""
    if frames.ndim != 4:
        return None
    order = tuple(int(a) for a in np.argsort([-s for s in frames.strides], kind="stable"))
    if not frames.transpose(order).flags.c_contiguous or 0 not in (order[0], order[-1]):
        return None
    pixels = tuple(a - 1 for a in order if a != 0)
    return order[0] == 0, (pixels[0], pixels[1], pixels[2])


class GraphMap:
    """:class:`Resampler` ``__call__`` as an onnxruntime graph on ``providers``."""

    def __init__(self, resampler: Resampler, providers: list[str], device_id: int = 0) -> None:
        import onnxruntime as ort

        self.resampler = resampler
        cuda = "CUDAExecutionProvider" in providers
        self.providers: list[Any] = [
            ("CUDAExecutionProvider", {"device_id": device_id}) if p == "CUDAExecutionProvider"
            else p for p in providers
        ]  # fmt: skip
        self._ort = ort
        self._sessions: dict[tuple[bool, str], Any] = {}
        self._tables: dict[tuple[int, int, int], tuple[Any, Any]] = {}
        self.on_host = 0  # trains mapped on the host (layout or dtype the graph does not take)
        self._device = ("cuda", device_id) if cuda else ("cpu", 0)
        self._session(False, np.dtype(np.float32))  # a missing onnx package fails at start

    def _session(self, pulses_first: bool, dtype: np.dtype) -> Any:
        key = (pulses_first, np.dtype(dtype).str)
        if key not in self._sessions:
            so = self._ort.SessionOptions()
            so.log_severity_level = 3
            so.enable_cpu_mem_arena = False  # a train's intermediates are not kept around
            self._sessions[key] = self._ort.InferenceSession(
                map_graph(pulses_first, dtype), sess_options=so, providers=self.providers
            )
        return self._sessions[key]

    def _table(self, axes: tuple[int, int, int]) -> tuple[Any, Any]:
        if axes not in self._tables:  # bound to the device once per map and memory order
            index, weight = self.resampler.gather_table(axes)
            self._tables[axes] = (
                self._ort.OrtValue.ortvalue_from_numpy(index, *self._device),
                self._ort.OrtValue.ortvalue_from_numpy(weight, *self._device),
            )
        return self._tables[axes]

    def __call__(self, frames: np.ndarray) -> np.ndarray:
        r = self.resampler
        b = frames.shape[0]
        shape = r.detector.data_shape
        view = frames
        if frames.shape[1:] != shape and frames.flags.c_contiguous:
            view = frames.reshape(b, *shape)
        layout = memory_layout(view) if view.shape[1:] == shape else None
        if layout is None or view.dtype not in DTYPES:
            self.on_host += 1
            return r(frames)
        pulses_first, axes = layout
        order = (0, *(a + 1 for a in axes)) if pulses_first else (*(a + 1 for a in axes), 0)
        buffer = view.transpose(order).reshape((b, -1) if pulses_first else (-1, b))
        index, weight = self._table(axes)
        binding = self._session(pulses_first, view.dtype).io_binding()
        binding.bind_cpu_input("pixels", buffer)
        binding.bind_ortvalue_input("index", index)
        binding.bind_ortvalue_input("weight", weight)
        binding.bind_output("grid", "cpu")
        self._session(pulses_first, view.dtype).run_with_iobinding(binding)
        out = binding.copy_outputs_to_cpu()[0]
        return np.asarray(out, np.float32).reshape(b, *r.grid.shape)
