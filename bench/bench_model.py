"""CPU throughput of the exported graphs (onnxruntime): seed CNN vs compact, same run.

Each graph is the full bundle graph, raw frames (B, 260, 257) → probabilities + photons
(preprocessing inside). Untrained weights (speed does not depend on them); the shipped
``models/default`` graph is timed too when present. One onnxruntime session per graph,
``intra_op_num_threads`` = ``--threads``, sequential execution, all optimisations. The
graphs are timed in turn, ``--repeats`` rounds of ``--seconds`` each, on the same
simulated frames; the table shows medians and the ratio to the seed CNN. A
preprocessing-only graph shows what the preprocessing costs on its own.

    .venv/bin/python bench/bench_model.py --batch 256 --threads 2

``--accuracy N`` (slow: the seed CNN trains ~10x slower) instead trains both architectures
on the same simulated run of N frames (validation: N/4 frames of another seed), with the
same TrainConfig (``--epochs``), and prints validation accuracy and the single-hit keep
precision/recall at the threshold chosen for precision 0.97.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def export_graphs(tmp: Path) -> dict[str, tuple[Path, int | None]]:
    """ONNX files of the preprocessing alone and of every architecture's whole graph."""
    import tensorflow as tf

    from hitstream.frame_kernel import input_shape
    from trainer.model import preprocess_graph as graph
    from trainer.model.cnn import (
        ARCHITECTURES,
        INPUT_COARSEN,
        build_model,
        count_macs,
        input_channels,
    )
    from trainer.model.export import convert_to_onnx
    from trainer.model.inference_graph import inference_function

    out: dict[str, tuple[Path, int | None]] = {}

    @tf.function(input_signature=[tf.TensorSpec([None, 260, 257], tf.float32, name="frames")])
    def pre(frames):
        images, photons = graph.preprocess(frames)  # outputs reduced: time the work only
        return {"level": tf.reduce_sum(images, axis=[1, 2, 3]), "photons": photons}

    convert_to_onnx(pre, tmp / "preprocess.onnx")
    out["preprocess only"] = (tmp / "preprocess.onnx", None)
    for arch in ARCHITECTURES:
        shape = (*input_shape(coarsen=INPUT_COARSEN[arch]), input_channels(arch))
        model = build_model(arch, shape, 4)
        path = tmp / f"{arch}.onnx"
        convert_to_onnx(inference_function(model), path)
        out[arch] = (path, count_macs(model))
    default = ROOT / "models" / "default"
    if (default / "model.onnx").is_file():
        import json

        macs = json.loads((default / "manifest.json").read_text())["model"].get("macs_per_frame")
        out["models/default"] = (default / "model.onnx", macs)
    return out


def compare_accuracy(n: int, epochs: int) -> None:
    """Train seed and compact on the same frames; print validation metrics side by side."""
    from hitstream.simulate import simulate_parallel
    from trainer.model.train import (
        TrainConfig,
        choose_threshold,
        classification_metrics,
        train_model,
    )

    x, y = simulate_parallel(n, 31, desc="train run")
    vx, vy = simulate_parallel(max(64, n // 4), 32, desc="validation run")
    classes = ["single", "multiple", "empty", "other"]
    rows = []
    for arch in ("seed", "compact"):
        cfg = TrainConfig(architecture=arch, epochs=epochs, seed=5)
        r = train_model(x, y, classes, vx, vy, cfg)
        t = choose_threshold(r.val_probabilities, vy, 0)
        m = classification_metrics(r.val_probabilities, vy, classes, {"single": t})
        k = m["keep"]["single"]
        rows.append(
            (
                arch,
                m["accuracy"],
                k["threshold"],
                k["precision"],
                k["recall"],
                r.seconds,
                r.best_epoch,
            )
        )
    print(f"{n} training / {len(vy)} validation frames, {epochs} epochs, same augmentation")
    print(
        f"{'arch':<8} {'val acc':>8} {'t single':>9} {'precision':>9} {'recall':>7} "
        f"{'train s':>8} {'best ep':>7}"
    )
    for arch, acc, t, p, rec, sec, best in rows:
        print(f"{arch:<8} {acc:>8.4f} {t:>9.3f} {p:>9.4f} {rec:>7.4f} {sec:>8.0f} {best:>7d}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=2.0, help="per graph and round")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--accuracy", type=int, metavar="N", help="compare accuracy instead")
    ap.add_argument("--epochs", type=int, default=12, help="with --accuracy [12]")
    args = ap.parse_args()
    if args.accuracy:
        compare_accuracy(args.accuracy, args.epochs)
        return

    import onnxruntime as ort

    from hitstream.simulate import simulate_run

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
