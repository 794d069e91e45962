"""Inference engine: one onnxruntime session over a model bundle.

CPU: a plain session with tuned thread counts. GPU (the production path): the CUDA (or
TensorRT) execution provider and plain ``session.run`` on batches staged in a pool of host
buffers (page-locked when onnxruntime offers host-accessible memory for the provider; the
pool says which it got), with ``pipeline.inference_threads`` threads so one batch's
host→device copy can overlap another's compute. IO binding (``engine.io_binding``) is
optional and off by default: binding host inputs and outputs was 2-4x slower end to end on
an H200 (bench/gpu_profile.sh). Which provider really runs is read back from the session
(``get_providers`` after creation), logged and exported as a metric:
``get_available_providers`` lists CUDA even on hosts where it cannot load.

Graph inputs: ``frames`` (B, H, W) float32 and, only when the manifest declares it
(``"background"``, :attr:`hitstream.bundle.Bundle.background_input`), the run's background
(1, H, W) float32. Both are divided by ``engine.photon_unit`` before the graph, which
expects photons; an input the manifest does not declare, or a declared one the graph lacks,
refuses the bundle.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from hitstream.bundle import Bundle
from hitstream.errors import BundleError, ConfigError, InputDataError

log = logging.getLogger(__name__)

PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
PROVIDER_CHOICES = ("auto", *PROVIDERS)
AUTO_BATCH_CPU = 64
AUTO_BATCH_GPU = 1024
SHORT_NAMES = {
    "CPUExecutionProvider": "CPU",
    "CUDAExecutionProvider": "CUDA",
    "TensorrtExecutionProvider": "TensorRT",
}


@dataclass(frozen=True)
class EngineConfig:
    """How to run the model.

    ``provider``: ``auto`` (CUDA when it loads, else CPU), ``cuda``, ``tensorrt`` or ``cpu``.
    A requested GPU provider that does not load falls back to the CPU with a warning,
    unless ``require_gpu`` is set, which makes it an error.
    """

    provider: str = "auto"
    device_id: int = 0
    require_gpu: bool = False
    intra_op_threads: int = 0  # 0: onnxruntime's default (one per core)
    inter_op_threads: int = 1
    max_batch: int = 0  # 0: auto (64 on the CPU, where caches favour small batches; 1024 on GPU)
    pinned_buffers: int = 4  # staging buffers in the pool (pinned on GPU)
    # GPU only. Off by default: measured on an H200 (bench/gpu_profile.sh), binding the
    # host batch and host outputs was 2-4x slower end to end than plain session.run
    io_binding: bool = False
    # one photon in the feed's units (ADU, keV, ...): frames are divided by it before the
    # graph, which expects photons; the files keep the feed's values
    photon_unit: float = 1.0

    def __post_init__(self) -> None:
        if self.provider not in PROVIDER_CHOICES:
            raise ConfigError(
                f"engine.provider {self.provider!r} is not one of {', '.join(PROVIDER_CHOICES)}"
            )
        if not (math.isfinite(self.photon_unit) and self.photon_unit > 0):
            raise ConfigError(f"engine.photon_unit must be > 0, got {self.photon_unit}")
        if self.max_batch < 0 or self.pinned_buffers < 2:
            raise ConfigError("engine.max_batch must be ≥ 0 and engine.pinned_buffers ≥ 2")


def _import_ort() -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise ConfigError(
            "onnxruntime is not installed: pip install 'hitstream[cpu]' (or [gpu] on CUDA hosts)"
        ) from exc
    return ort


class BufferPool:
    """A fixed set of (max_batch, H, W) float32 staging buffers.

    The batcher fills a buffer, the engine reads it, then it is released for reuse: no
    per-batch allocation, and on GPU the buffers are pinned so host→device copies run at
    full speed. ``acquire`` blocks while all buffers are in use, which bounds memory.
    """

    def __init__(self, buffers: list[np.ndarray], handles: list[Any] | None = None) -> None:
        self._buffers = buffers
        self._handles = handles or [None] * len(buffers)
        self.pinned = handles is not None  # page-locked memory from onnxruntime
        self._free: queue.Queue[int] = queue.Queue()
        for i in range(len(buffers)):
            self._free.put(i)

    @property
    def size(self) -> int:
        return len(self._buffers)

    def acquire(self, timeout: float | None = None) -> tuple[int, np.ndarray]:
        i = self._free.get(timeout=timeout)
        return i, self._buffers[i]

    def release(self, index: int) -> None:
        self._free.put(index)

    def handle(self, index: int) -> Any:
        return self._handles[index]

    def available(self) -> int:
        return self._free.qsize()

    def touch(self) -> None:
        """Write every buffer once, so their pages are resident from the start: memory is
        at its steady level at start-up, not after the first full batch."""
        for b in self._buffers:
            b.fill(0.0)


class Engine:
    """Runs a bundle's ONNX graph on batches of raw frames."""

    def __init__(self, bundle: Bundle, config: EngineConfig | None = None) -> None:
        self.bundle = bundle
        self.config = config or EngineConfig()
        ort = _import_ort()
        self._ort = ort
        self.session = self._create_session(ort)
        self.providers: list[str] = list(self.session.get_providers())
        self.provider = SHORT_NAMES.get(self.providers[0], self.providers[0])
        self.on_gpu = self.provider in ("CUDA", "TensorRT")
        self.input_name = bundle.input_name
        self.background_name = bundle.background_input  # None: the graph takes no background
        self._check_inputs({i.name: list(i.shape) for i in self.session.get_inputs()})
        h, w = bundle.frame_shape
        self._zero_background = np.zeros((1, h, w), np.float32)
        self._last_background: tuple[np.ndarray, np.ndarray] | None = None  # (given, fed)
        self.max_batch = self.config.max_batch or (
            AUTO_BATCH_GPU if self.on_gpu else AUTO_BATCH_CPU
        )
        self.output_names = [o.name for o in self.session.get_outputs()]
        if "probabilities" not in self.output_names:
            raise BundleError(f"{bundle.model_path}: graph has no 'probabilities' output")
        self._local = threading.local()
        log.info(
            "engine: model %s on %s (providers %s), batch ≤ %d",
            bundle.label,
            self.provider,
            self.providers,
            self.max_batch,
        )

    # -- setup -------------------------------------------------------------------------

    def _check_inputs(self, inputs: dict[str, list[Any]]) -> None:
        """The graph's inputs are exactly the manifest's (frames, and the background when it
        declares one), each (batch, H, W) of the frame shape."""
        where = self.bundle.model_path
        declared = [self.input_name] + ([self.background_name] if self.background_name else [])
        extra = [n for n in inputs if n not in declared]
        if extra:
            hint = (
                " (a run-background input needs the manifest's 'background' key)"
                if len(inputs) > 1 and self.input_name in inputs
                else ""
            )
            raise BundleError(
                f"{where}: graph input(s) {', '.join(map(repr, extra))} not declared in the "
                f"manifest (it declares {', '.join(map(repr, declared))}){hint}"
            )
        for name in declared:
            if name not in inputs:
                what = "background input" if name == self.background_name else "input"
                raise BundleError(
                    f"{where}: the manifest's {what} {name!r} is not an input of the graph "
                    f"(its inputs: {', '.join(map(repr, inputs))})"
                )
            shape = inputs[name]
            if len(shape) != 3 or tuple(shape[1:]) != self.bundle.frame_shape:
                raise BundleError(
                    f"{where}: graph input {name!r} of shape {shape} does not match the "
                    f"manifest's frame shape {self.bundle.frame_shape}"
                )

    def _provider_list(self, ort: Any) -> list[Any]:
        cfg = self.config
        wanted = cfg.provider
        available = set(ort.get_available_providers())
        if wanted == "auto":
            wanted = "cuda" if "CUDAExecutionProvider" in available else "cpu"
        names = [p for p in PROVIDERS[wanted] if p in available]
        if wanted != "cpu" and hasattr(ort, "preload_dlls"):
            try:  # CUDA/cuDNN from pip packages are found only after this call
                ort.preload_dlls()
            except Exception as exc:
                log.warning("onnxruntime.preload_dlls failed: %s", exc)
        options = {"device_id": cfg.device_id}
        return [(n, options) if n != "CPUExecutionProvider" else n for n in names] or [
            "CPUExecutionProvider"
        ]

    def _create_session(self, ort: Any) -> Any:
        so = ort.SessionOptions()
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.config.intra_op_threads > 0:
            so.intra_op_num_threads = self.config.intra_op_threads
        so.inter_op_num_threads = max(1, self.config.inter_op_threads)
        so.log_severity_level = 3
        # idle pool threads must not spin: the receiver and writer need the cores
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.add_session_config_entry("session.inter_op.allow_spinning", "0")
        path = self.bundle.model_path
        try:
            session = ort.InferenceSession(
                os.fspath(path), sess_options=so, providers=self._provider_list(ort)
            )
        except Exception as exc:  # onnxruntime raises its own (Fail, InvalidGraph, ...)
            raise BundleError(f"onnxruntime cannot load {path}: {exc}") from exc
        actual = session.get_providers()
        if self.config.provider in ("cuda", "tensorrt") and actual[0] == "CPUExecutionProvider":
            msg = (
                f"engine.provider={self.config.provider} requested but onnxruntime runs on the "
                "CPU (is onnxruntime-gpu installed and CUDA 13 / cuDNN 9 loadable?)"
            )
            if self.config.require_gpu:
                raise ConfigError(msg)
            log.warning("%s", msg)
        return session

    def create_pool(self) -> BufferPool:
        """Staging buffers for this engine's batches (pinned host memory on GPU)."""
        h, w = self.bundle.frame_shape
        shape = (self.max_batch, h, w)
        n = self.config.pinned_buffers
        if self.on_gpu:
            mem_info = self._pinned_memory_info()
            if mem_info is not None:
                try:
                    vals = [
                        self._ort.OrtValue.ortvalue_from_shape_and_type(
                            shape, np.float32, memory_info=mem_info
                        )
                        for _ in range(n)
                    ]
                    log.info("engine: %d pinned staging buffers of %s", n, shape)
                    return BufferPool([v.numpy() for v in vals], vals)
                except Exception as exc:
                    log.warning("engine: pinned buffers unavailable (%s); using pageable", exc)
        return BufferPool([np.zeros(shape, np.float32) for _ in range(n)])

    def _pinned_memory_info(self) -> Any:
        ort = self._ort
        get_devices = getattr(ort, "get_ep_devices", None)
        mem_type = getattr(ort, "OrtDeviceMemoryType", None)
        if get_devices is None or mem_type is None:
            return None
        for dev in get_devices():
            if dev.ep_name == self.providers[0]:
                return dev.memory_info(mem_type.HOST_ACCESSIBLE)
        return None

    # -- inference ---------------------------------------------------------------------

    @property
    def takes_background(self) -> bool:
        """True when the graph takes the run's background as its second input."""
        return self.background_name is not None

    def infer(
        self, frames: np.ndarray, background: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """Run the graph on (B, H, W) float32 frames; returns every named output on the host.

        ``background``: the run's (H, W) background in the frames' units (both are divided by
        ``photon_unit``); fed as (1, H, W) to a graph that takes one (zeros when None),
        ignored by one that does not."""
        if frames.dtype != np.float32 or not frames.flags.c_contiguous:
            frames = np.ascontiguousarray(frames, dtype=np.float32)
        if self.config.photon_unit != 1.0:  # a new array: the caller's frames are written out
            frames = frames * np.float32(1.0 / self.config.photon_unit)
        feed = {self.input_name: frames}
        if self.background_name is not None:
            feed[self.background_name] = self._background_input(background)
        if self.on_gpu and self.config.io_binding:
            return self._infer_bound(feed)
        outs = self.session.run(None, feed)
        return dict(zip(self.output_names, outs, strict=True))

    def _background_input(self, background: np.ndarray | None) -> np.ndarray:
        """(1, H, W) float32 photons; converted once per map (the last one is remembered)."""
        if background is None:
            return self._zero_background
        last = self._last_background  # one read: other inference threads may replace it
        if last is not None and last[0] is background:
            return last[1]
        b = np.asarray(background, np.float32)
        if b.shape != self._zero_background.shape[1:]:
            raise InputDataError(
                f"background of shape {b.shape}, expected {self._zero_background.shape[1:]}"
            )
        fed = np.ascontiguousarray(b[None] * np.float32(1.0 / self.config.photon_unit))
        self._last_background = (background, fed)
        return fed

    def _infer_bound(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        binding = getattr(self._local, "binding", None)
        if binding is None:
            binding = self.session.io_binding()
            self._local.binding = binding
        for name, value in feed.items():
            binding.bind_cpu_input(name, value)
        for name in self.output_names:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outs = binding.copy_outputs_to_cpu()
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        return dict(zip(self.output_names, outs, strict=True))

    def warm_up(self) -> None:
        """One inference at ``max_batch``: onnxruntime's memory arena grows to the largest
        batch and keeps it, so it does so now rather than at the first burst of the run."""
        h, w = self.bundle.frame_shape
        self.infer(np.zeros((self.max_batch, h, w), np.float32))

    def self_test(self) -> dict[str, np.ndarray]:
        """A test inference on zeros: shapes and finiteness of every output are checked;
        a graph that takes a background is run without one (zeros) and with a flat one."""
        h, w = self.bundle.frame_shape
        zeros = np.zeros((2, h, w), np.float32)
        out = self._checked(self.infer(zeros), "zeros")
        if self.takes_background:
            flat = np.full((h, w), 0.01 * self.config.photon_unit, np.float32)
            self._checked(self.infer(zeros, flat), "zeros with a flat background")
        return out

    def _checked(self, out: dict[str, np.ndarray], what: str) -> dict[str, np.ndarray]:
        probs = out["probabilities"]
        if probs.shape != (2, len(self.bundle.classes)):
            raise BundleError(
                f"{self.bundle.model_path}: probabilities have shape {probs.shape}, expected "
                f"(2, {len(self.bundle.classes)}) for classes {list(self.bundle.classes)}"
            )
        if not np.isfinite(probs).all():
            raise BundleError(
                f"{self.bundle.model_path}: test inference on {what} gave non-finite output"
            )
        return out
