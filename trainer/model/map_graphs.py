"""The graphs of the detector map on the GPU (:mod:`streamer.map_graph`), built with onnx.

The streamer does not import onnx (the training stack): it loads the graphs shipped in
``streamer/graphs/``, which :func:`write_map_graphs` writes (``python -m
trainer.model.map_graphs``); a test checks that the shipped ones are these.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from streamer.map_graph import DTYPES, GRAPH_DIR, graph_name

OPSET = 17


def map_graph(pulses_first: bool, dtype: np.dtype) -> bytes:
    """The graph: ``pixels`` (B, P) or (P, B) of ``dtype``, ``index`` (G, K) int64 and
    ``weight`` (G, K) float32 -> ``grid`` (B, G) float32."""
    from onnx import TensorProto, helper

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


def write_map_graphs(directory: Path = GRAPH_DIR) -> list[Path]:
    """Every graph the streamer loads, into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for pulses_first in (True, False):
        for dtype in DTYPES:
            path = directory / graph_name(pulses_first, dtype)
            path.write_bytes(map_graph(pulses_first, dtype))
            paths.append(path)
    return paths


if __name__ == "__main__":
    for p in write_map_graphs(Path(sys.argv[1]) if len(sys.argv) > 1 else GRAPH_DIR):
        print(p)
