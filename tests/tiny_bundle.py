"""A tiny hand-built ONNX bundle for streamer tests that must not depend on training.

Graph: frames (B, H, W) → clip ≥ 0 → sum per frame (photons) → four logits that are affine
in log1p(photons) → softmax ``probabilities``; plus ``template_distance`` = photons / 1000.
So bright frames come out as 'single' and dark ones as 'empty': easy to predict in tests.

With ``background=True`` the graph takes the run's background as a second input,
``background`` (B or 1, H, W), and counts the photons above it instead:
photons = relu(Σ (frames − background)) per frame. A frame that is bright only because of
the run's background (a few thousand photons: 'single' for the plain graph) is 'empty' once
the background is subtracted; the manifest declares the input (``"background"``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from hitstream.bundle import write_manifest

CLASSES = ("single", "multiple", "empty", "other")
SLOPE = np.array([1.0, 0.2, -1.0, 0.0], np.float32)
OFFSET = np.array([-6.0, 0.0, 6.0, 0.5], np.float32)


def expected_probabilities(frames: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """What the tiny graph computes, in numpy (``background``: the background graph's)."""
    if background is None:
        photons = np.clip(frames, 0, None).sum(axis=(1, 2), dtype=np.float64)
    else:
        excess = (frames - background).sum(axis=(1, 2), dtype=np.float64)
        photons = np.clip(excess, 0, None)
    logits = np.log1p(photons)[:, None] * SLOPE + OFFSET
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def make_tiny_bundle(
    root: Path,
    shape: tuple[int, int] = (260, 257),
    version: str = "1",
    slow: int = 0,
    *,
    background: bool = False,
    declare_background: bool | None = None,
    background_level: tuple[float, float] = (0.0, 1.0),
) -> Path:
    """``slow`` > 0 adds a dead (H·W × slow) MatMul per frame: a deliberately slow model.
    ``background``: the graph takes the run's background (module docstring);
    ``declare_background`` (default: the same) says whether the manifest declares it, so
    that tests can build the two inconsistent bundles."""
    root.mkdir(parents=True, exist_ok=True)
    h, w = shape
    declare = background if declare_background is None else declare_background
    if background:  # photons above the background: relu of the frame's excess
        head = [
            helper.make_node("Sub", ["frames", "background"], ["excess"]),
            helper.make_node("ReduceSum", ["excess", "axes"], ["excess_k"], keepdims=1),
            helper.make_node("Relu", ["excess_k"], ["photons_k"]),
        ]
    else:
        head = [
            helper.make_node("Relu", ["frames"], ["pos"]),
            helper.make_node("ReduceSum", ["pos", "axes"], ["photons_k"], keepdims=1),
        ]
    nodes = [
        *head,
        helper.make_node("Reshape", ["photons_k", "col"], ["photons_raw"]),
        helper.make_node("Add", ["photons_raw", "dead"], ["photons"]),
        helper.make_node("Add", ["photons", "one"], ["p1"]),
        helper.make_node("Log", ["p1"], ["lp"]),
        helper.make_node("Mul", ["lp", "slope"], ["ls"]),
        helper.make_node("Add", ["ls", "offset"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
        helper.make_node("Reshape", ["photons", "flat"], ["ph_flat"]),
        helper.make_node("Div", ["ph_flat", "thousand"], ["template_distance"]),
    ]
    inits = [
        numpy_helper.from_array(np.array([1, 2], np.int64), "axes"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), "col"),
        numpy_helper.from_array(np.array([-1], np.int64), "flat"),
        numpy_helper.from_array(np.array(1.0, np.float32), "one"),
        numpy_helper.from_array(np.array(1000.0, np.float32), "thousand"),
        numpy_helper.from_array(SLOPE[None, :], "slope"),
        numpy_helper.from_array(OFFSET[None, :], "offset"),
    ]
    if slow:
        nodes[len(head) + 1 : len(head) + 1] = [
            helper.make_node("Reshape", ["frames", "rows"], ["flat_frames"]),
            helper.make_node("MatMul", ["flat_frames", "heavy"], ["busy"]),
            helper.make_node("ReduceSum", ["busy", "one_axis"], ["busy_sum"], keepdims=1),
            helper.make_node("Mul", ["busy_sum", "zero"], ["dead"]),
        ]
        inits += [
            numpy_helper.from_array(np.array([-1, h * w], np.int64), "rows"),
            numpy_helper.from_array(np.full((h * w, slow), 1e-9, np.float32), "heavy"),
            numpy_helper.from_array(np.array([1], np.int64), "one_axis"),
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
        ]
    else:
        inits.append(numpy_helper.from_array(np.zeros((1, 1), np.float32), "dead"))
    inputs = [helper.make_tensor_value_info("frames", TensorProto.FLOAT, ["batch", h, w])]
    if background:
        inputs.append(
            helper.make_tensor_value_info("background", TensorProto.FLOAT, ["bg_batch", h, w])
        )
    graph = helper.make_graph(
        nodes,
        "tiny",
        inputs,
        [
            helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("template_distance", TensorProto.FLOAT, ["batch"]),
        ],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, root / "model.onnx")
    extra = {}
    if declare:
        extra["background"] = {
            "input": "background",
            "shape": [None, h, w],
            "dtype": "float32",
            "unit": "photons per pixel",
            "description": "the run's background: expected photons per pixel of an empty frame",
            "training_range": {"level": list(background_level)},
        }
    write_manifest(
        root,
        {
            "name": "tiny-bg" if background else "tiny",
            "version": version,
            "classes": list(CLASSES),
            "hit_classes": ["single", "multiple", "other"],
            "keep_classes": ["single"],
            "thresholds": {"single": 0.5},
            "input": {"name": "frames", "shape": [None, h, w], "dtype": "float32"},
            "outputs": {
                "probabilities": {"shape": [None, 4], "dtype": "float32"},
                "template_distance": {"shape": [None], "dtype": "float32"},
            },
            "training": {"note": "hand-built test graph"},
            "metrics": {},
            "software": {"onnx": onnx.__version__},
            **extra,
        },
    )
    return root
