"""``trainer finetune``: adapt a bundle's CNN to newly labelled frames.

See :mod:`trainer.model.finetune` for what is trained, exported and measured.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hitstream.cli import add_option
from trainer.commands.args import add_labelled_runs
from trainer.model.finetune import AUTO_EPOCHS, AUTO_FRAME_VISITS
from trainer.model.unlabelled import UnlabelledConfig

HELP = "fine-tune a bundle's CNN on new labelled frames; before/after metrics on a holdout"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from trainer.model.finetune import finetune_bundle

    p.add_argument("--model", type=Path, required=True, help="source bundle (with model.keras)")
    add_labelled_runs(p, finetune_bundle)
    p.add_argument("--out", type=Path, required=True, help="new bundle directory")
    p.add_argument("--name", help="bundle name [the --out directory's name]")
    p.add_argument(
        "--epochs",
        type=int,
        help=f"[auto: {AUTO_FRAME_VISITS} frame visits, within {AUTO_EPOCHS[0]}–{AUTO_EPOCHS[1]}]",
    )
    add_option(p, finetune_bundle, "learning_rate", "constant")
    add_option(p, finetune_bundle, "batch_size")
    add_option(p, finetune_bundle, "holdout_fraction", "held-out share per class")
    add_option(p, finetune_bundle, "seed", "split and training seed")
    p.add_argument("--no-augment", action="store_true", help="no training augmentation")
    p.add_argument(
        "--target-precision", type=float,
        help="choose the kept class's threshold on the held-out labels for this precision "
        "(reported with 95 %% intervals; default: keep the source bundle's)",
    )  # fmt: skip
    u = p.add_argument_group("the runs' unlabelled frames (trainer.model.unlabelled)")
    add_option(u, UnlabelledConfig, "frames", "unlabelled frames used (0: none)",
               flag="--unlabelled")  # fmt: skip
    add_option(u, UnlabelledConfig, "threshold", "pseudo-label frames this sure",
               flag="--pseudo-threshold")  # fmt: skip
    u.add_argument("--no-adapt-batch-norm", action="store_true",
                   help="keep the training runs' batch-norm statistics")  # fmt: skip
    u.add_argument("--pseudo-labels", action="store_true",
                   help="a self-training round on confident pseudo-labels (off: it cost accuracy "
                   "where measured)")  # fmt: skip
    p.add_argument("--force", action="store_true", help="replace an existing bundle")


def run(args: argparse.Namespace) -> int:
    from trainer.model.finetune import finetune_bundle, summary_lines

    report = finetune_bundle(
        args.model,
        [(p, args.dataset) for p in args.data],
        args.labels,
        args.out,
        name=args.name,
        epochs=args.epochs,
        learning_rate=args.learning_rate,
        batch_size=args.batch_size,
        holdout_fraction=args.holdout_fraction,
        seed=args.seed,
        augment=not args.no_augment,
        force=args.force,
        photon_unit=args.photon_unit,
        target_precision=args.target_precision,
        unlabelled=UnlabelledConfig(
            frames=args.unlabelled,
            threshold=args.pseudo_threshold,
            adapt_batch_norm=not args.no_adapt_batch_norm,
            pseudo_labels=args.pseudo_labels,
        ),
    )
    print("\n".join(summary_lines(report, args.out)), flush=True)
    return 0
