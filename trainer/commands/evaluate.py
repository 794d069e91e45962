"""``trainer evaluate``: metrics of a bundle's ONNX graph on labelled frames."""

from __future__ import annotations

import argparse
from pathlib import Path

from hitstream.cli import default_of
from trainer.commands.args import add_labelled_runs

HELP = "evaluate a model bundle's ONNX graph on labelled frames (metrics JSON + plots)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainer.model.evaluate import evaluate_bundle

    def d(name: str) -> object:
        return default_of(evaluate_bundle, name)

    p.add_argument("--model", type=Path, required=True, help="model bundle directory")
    add_labelled_runs(p, evaluate_bundle)
    p.add_argument("--out", type=Path, help="directory for metrics.json and the PNGs")
    p.add_argument(
        "--positive", default=d("positive"), help=f"class scored vs the rest [{d('positive')}]"
    )
    p.add_argument("--bins", type=int, default=d("bins"), help=f"calibration bins [{d('bins')}]")
    p.add_argument(
        "--batch", type=int, default=d("batch"), help=f"frames per inference call [{d('batch')}]"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=d("threads"),
        help=f"onnxruntime threads [{d('threads')}: default]",
    )


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
