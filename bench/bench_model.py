"""CPU throughput of the exported graphs (onnxruntime): seed CNN vs compact, same run.

Each graph is the full bundle graph, raw frames (B, 260, 257) → probabilities + photons
(preprocessing inside). Untrained weights (speed does not depend on them); the shipped
``models/default`` graph is timed too when present. One onnxruntime session per graph,
``intra_op_num_threads`` = ``--threads``, sequential execution, all optimisations. The
graphs are timed in turn, ``--repeats`` rounds of ``--seconds`` each, on the same
simulated frames; the table shows medians and the ratio to the seed CNN. A
preprocessing-only graph shows what the preprocessing costs on its own.

    .venv/bin/python bench/bench_model.py --batch 256 --threads 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def export_graphs(tmp: Path) -> dict[str, tuple[Path, int | None]]:
    """ONNX files of the preprocessing alone, the seed CNN and the compact CNN."""
    import tensorflow as tf

    from trainer import graph
    from trainer.cnn import build_model, count_macs
    from trainer.export import convert_to_onnx
    from trainer.preprocess import CHANNELS, binned_shape

    out: dict[str, tuple[Path, int | None]] = {}

    @tf.function(input_signature=[tf.TensorSpec([None, 260, 257], tf.float32, name="frames")])
    def pre(frames):
        images, photons = graph.preprocess(frames)
        return {"images": images, "photons": photons}

    convert_to_onnx(pre, tmp / "preprocess.onnx")
    out["preprocess only"] = (tmp / "preprocess.onnx", None)
    for arch in ("seed", "compact"):
        model = build_model(arch, (*binned_shape(), len(CHANNELS)), 4)
        path = tmp / f"{arch}.onnx"
        convert_to_onnx(graph.inference_function(model), path)
        out[arch] = (path, count_macs(model))
    default = ROOT / "models" / "default"
    if (default / "model.onnx").is_file():
        import json

        macs = json.loads((default / "manifest.json").read_text())["model"].get("macs_per_frame")
        out["models/default"] = (default / "model.onnx", macs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0, help="per graph and round")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import onnxruntime as ort

    from trainer.simulate import simulate_run

    frames = simulate_run(min(args.batch, 64), seed=99).frames
    frames = np.ascontiguousarray(np.resize(frames, (args.batch, *frames.shape[1:])))
    with tempfile.TemporaryDirectory() as tmp:
        graphs = export_graphs(Path(tmp))
        sessions = {}
        for name, (path, _) in graphs.items():
            so = ort.SessionOptions()
            so.intra_op_num_threads = args.threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            sessions[name] = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        load0 = os.getloadavg()[0]
        rates: dict[str, list[float]] = {n: [] for n in sessions}
        for s in sessions.values():  # warm up
            s.run(None, {"frames": frames})
        for _ in range(args.repeats):
            for name, s in sessions.items():
                n, t0 = 0, time.perf_counter()
                while (dt := time.perf_counter() - t0) < args.seconds or n == 0:
                    s.run(None, {"frames": frames})
                    n += 1
                rates[name].append(n * args.batch / dt)
        load1 = os.getloadavg()[0]
    seed = float(np.median(rates["seed"]))
    print(
        f"onnxruntime {ort.__version__} CPU, batch {args.batch}, intra-op threads "
        f"{args.threads}, {args.repeats} x {args.seconds:.0f} s per graph; load average "
        f"{load0:.1f} -> {load1:.1f} on {os.cpu_count()} CPUs"
    )
    print(
        f"{'graph':<16} {'MACs/frame':>11} {'ms/batch':>9} {'frames/s':>9} {'min..max':>15} "
        f"{'x seed':>7}"
    )
    for name, r in rates.items():
        macs = graphs[name][1]
        med = float(np.median(r))
        print(
            f"{name:<16} {macs / 1e6 if macs else 0:>10.1f}M {1e3 * args.batch / med:>9.1f} "
            f"{med:>9.0f} {min(r):>7.0f}..{max(r):<7.0f} {med / seed:>7.2f}"
        )


if __name__ == "__main__":
    main()
