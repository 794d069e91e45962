"""The detector map as a small onnxruntime graph: on the GPU with the CUDA provider.

``detector.map_on = "engine"`` (:mod:`streamer.detector_map`) runs the map of
:class:`hitstream.qgrid.Resampler` as a gather-multiply-sum graph on the engine's
providers instead of scipy on the host: with CUDA the train's pixels go to the GPU as they
arrived (no transposing copy: the graph gathers in the train's own memory order), and only
the grid's frames come back. The map itself (:meth:`Resampler.gather_table`) is bound to
the device once per map. NaN and infinite pixels (masked ones of corrected data) add
nothing, as on the host. Trains whose memory order is neither pulses-first nor pulses-last,
or of another dtype than float32/uint16, are mapped on the host.

The graphs ship in ``streamer/graphs/`` (built by :mod:`trainer.model.map_graphs`: the
streamer does not import onnx).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.qgrid import Resampler

log = logging.getLogger(__name__)

DTYPES = {np.dtype(np.float32): 1, np.dtype(np.uint16): 4}  # onnx TensorProto element types
GRAPH_DIR = Path(__file__).resolve().parent / "graphs"


def graph_name(pulses_first: bool, dtype: np.dtype) -> str:
    """The shipped graph's file name: ``pixels`` (B, P) or (P, B) of ``dtype``, ``index``
    (G, K) int64 and ``weight`` (G, K) float32 -> ``grid`` (B, G) float32."""
    order = "pulses_first" if pulses_first else "pulses_last"
    return f"detector_map_{order}_{np.dtype(dtype).name}.onnx"


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
        self._session(False, np.dtype(np.float32))  # a missing graph fails at start

    def _session(self, pulses_first: bool, dtype: np.dtype) -> Any:
        key = (pulses_first, np.dtype(dtype).str)
        if key not in self._sessions:
            so = self._ort.SessionOptions()
            so.log_severity_level = 3
            so.enable_cpu_mem_arena = False  # a train's intermediates are not kept around
            self._sessions[key] = self._ort.InferenceSession(
                str(GRAPH_DIR / graph_name(pulses_first, dtype)),
                sess_options=so,
                providers=self.providers,
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
            if self.on_host == 0:
                log.info(
                    "detector map: frames %s %s in a memory order the graph does not take: "
                    "mapped on the host (counted in /status)", frames.shape, frames.dtype,
                )  # fmt: skip
            self.on_host += 1
            return r(frames)
        pulses_first, axes = layout
        order = (0, *(a + 1 for a in axes)) if pulses_first else (*(a + 1 for a in axes), 0)
        buffer = view.transpose(order).reshape((b, -1) if pulses_first else (-1, b))
        index, weight = self._table(axes)
        session = self._session(pulses_first, view.dtype)
        binding = session.io_binding()
        binding.bind_cpu_input("pixels", buffer)
        binding.bind_ortvalue_input("index", index)
        binding.bind_ortvalue_input("weight", weight)
        binding.bind_output("grid", "cpu")
        session.run_with_iobinding(binding)
        out = binding.copy_outputs_to_cpu()[0]
        return np.asarray(out, np.float32).reshape(b, *r.grid.shape)
