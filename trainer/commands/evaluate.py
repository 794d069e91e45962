"""``trainer evaluate``: metrics of a bundle's ONNX graph on labelled frames."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

from trainer.commands.args import add_labelled_runs

HELP = "evaluate a model bundle's ONNX graph on labelled frames (metrics JSON + plots)"
METRICS_FILE = "metrics.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", type=Path, required=True, help="model bundle directory")
    add_labelled_runs(p)
    p.add_argument("--out", type=Path, help="directory for metrics.json and the PNGs")
    p.add_argument("--positive", default="single", help="class scored vs the rest [single]")
    p.add_argument("--bins", type=int, default=10, help="calibration bins [10]")
    p.add_argument("--batch", type=int, default=128, help="frames per inference call [128]")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime threads [0: default]")


def jsonable(x: Any) -> Any:
    """Plain JSON: NaN and ±Inf become null, numpy scalars Python numbers."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, str):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def evaluate_bundle(
    model: Path,
    runs: list[tuple[Path, str]],
    labels: Path,
    out: Path | None = None,
    positive: str = "single",
    bins: int = 10,
    batch: int = 128,
    threads: int = 0,
    progress: bool = True,
    photon_unit: float = 1.0,
) -> dict[str, Any]:
    """Run the bundle's graph over the labelled frames and compute (and write) metrics."""
    from hitstream.bundle import load_bundle
    from hitstream.labels import read_labels
    from trainer.data.ingest import load_labelled
    from trainer.model.evaluate import evaluate_outputs, run_graph, write_plots

    bundle = load_bundle(model, verify=True)
    data = load_labelled(
        runs,
        read_labels(labels),
        bundle.classes,
        frame_shape=bundle.frame_shape,
        photon_unit=photon_unit,
        progress=progress,
    )
    t0 = time.perf_counter()
    outputs = run_graph(bundle.model_path, data.frames, bundle.input_name, batch, threads, progress)
    seconds = time.perf_counter() - t0
    metrics = evaluate_outputs(outputs, data.y, bundle.classes, bundle.thresholds, positive, bins)
    metrics = jsonable(
        {
            "bundle": {"path": str(model), "name": bundle.name, "version": bundle.version},
            "data": {
                "runs": [str(p) for p, _ in runs],
                "dataset": runs[0][1],
                "labels": str(labels),
                "counts": data.counts(),
            },
            "inference_seconds": round(seconds, 3),
            **metrics,
        }
    )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        write_plots(out, metrics, bundle.classes)
    return metrics


def summary_lines(m: dict[str, Any]) -> list[str]:
    """A short human summary of :func:`evaluate_bundle`'s metrics."""

    def f(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}"

    pos = m["positive_class"]
    lines = [
        f"{m['bundle']['name']}:{m['bundle']['version']} on {m['frames']} frames "
        f"{m['data']['counts']}: accuracy {f(m['accuracy'])}"
    ]
    for c, k in m.get("keep", {}).items():
        lines.append(
            f"  {c} kept at p>={k['threshold']:.3f}: precision {f(k['precision'])}, "
            f"recall {f(k['recall'])}"
        )
    for name, key in (("CNN p(" + pos + ")", "cnn"), ("template distance", "templates")):
        if key in m:
            b = m[key]
            lines.append(
                f"  {pos} vs rest by {name}: ROC AUC {f(b['roc_auc'])}, AP "
                f"{f(b['average_precision'])}, best F1 {f(b['best_f1']['f1'])} at "
                f"{b['best_f1']['threshold']:.4g} (precision {f(b['best_f1']['precision'])}, "
                f"recall {f(b['best_f1']['recall'])})"
            )
    lines.append(f"  calibration: ECE {f(m['calibration']['ece'])}")
    return lines


def run(args: argparse.Namespace) -> int:
    runs = [(p, args.dataset) for p in args.data]
    m = evaluate_bundle(
        args.model,
        runs,
        args.labels,
        args.out,
        args.positive,
        args.bins,
        args.batch,
        args.threads,
        photon_unit=args.photon_unit,
    )
    print("\n".join(summary_lines(m)), flush=True)
    if args.out is not None:
        print(f"wrote {args.out / METRICS_FILE} and plots", flush=True)
    return 0
