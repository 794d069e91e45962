"""``trainer evaluate``: metrics of a bundle's ONNX graph on labelled frames."""

from __future__ import annotations

import argparse
from pathlib import Path

from hitstream.cli import add_option
from trainer.commands.args import add_labelled_runs

HELP = "evaluate a model bundle's ONNX graph on labelled frames (metrics JSON + plots)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainer.model.evaluate import evaluate_bundle

    p.add_argument("--model", type=Path, required=True, help="model bundle directory")
    add_labelled_runs(p, evaluate_bundle)
    p.add_argument("--out", type=Path, help="directory for metrics.json and the PNGs")
    add_option(p, evaluate_bundle, "positive", "class scored vs the rest")
    add_option(p, evaluate_bundle, "bins", "calibration bins")
    add_option(p, evaluate_bundle, "batch", "frames per inference call")
    add_option(p, evaluate_bundle, "threads", "onnxruntime threads", shown="{}: default")


def run(args: argparse.Namespace) -> int:
    from trainer.model.evaluate import METRICS_FILE, evaluate_bundle, summary_lines

    m = evaluate_bundle(
        args.model,
        [(p, args.dataset) for p in args.data],
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
