"""``trainer train``: train a CNN on labelled HDF5 runs and export a model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from trainer.commands.args import add_photon_unit

HELP = "train a CNN on labelled HDF5 runs (frames + labels CSV) and export a model bundle"
ARCHITECTURES = ("compact", "fast", "fine", "seed")  # trainer.model.cnn's, without importing keras


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, help="HDF5 files with frames (N, H, W)")
    p.add_argument("--dataset", default="data", help="frames dataset inside each file [data]")
    add_photon_unit(p)
    p.add_argument(
        "--labels",
        action="append",
        type=Path,
        metavar="FILE",
        help="labels CSV run,index,class, JSON or HDF5 (repeatable) [<stem>.labels.csv beside "
        "each run]",
    )
    p.add_argument("--classes", help="class order, comma separated [single,multiple,empty,other]")
    p.add_argument("--val-fraction", type=float, default=0.2, help="validation share [0.2]")
    p.add_argument("--arch", choices=ARCHITECTURES, default="fine", help="[fine]")
    p.add_argument("--epochs", type=int, default=30, help="at most this many epochs [30]")
    p.add_argument("--batch-size", type=int, default=64, help="[64]")
    p.add_argument("--learning-rate", type=float, default=2e-3, help="[2e-3]")
    p.add_argument("--seed", type=int, default=0, help="[0]")
    p.add_argument("--no-augment", action="store_true", help="no training augmentation")
    p.add_argument("--keep", default="single", help="classes to keep, comma separated [single]")
    p.add_argument(
        "--target-precision",
        type=float,
        default=0.97,
        help="threshold of the first kept class reaches this precision [0.97]",
    )
    p.add_argument(
        "--bank",
        type=Path,
        help="polar template bank (trainer templates): the graph also outputs template_distance",
    )
    p.add_argument("--out", type=Path, required=True, help="bundle directory, e.g. models/NAME")
    p.add_argument("--name", help="bundle name [the --out directory's name]")
    p.add_argument("--force", action="store_true", help="replace an existing bundle")


def run(args: argparse.Namespace) -> int:
    from trainer.model.train_bundle import TrainOptions, train_bundle

    options = TrainOptions(
        dataset=args.dataset,
        labels=args.labels,
        classes=[c.strip() for c in args.classes.split(",")] if args.classes else None,
        val_fraction=args.val_fraction,
        architecture=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        augment=not args.no_augment,
        keep=[c.strip() for c in args.keep.split(",") if c.strip()],
        target_precision=args.target_precision,
        photon_unit=args.photon_unit,
        bank=args.bank,
    )
    done = train_bundle(
        args.runs, args.out, options, name=args.name or args.out.name, force=args.force
    )
    print(done.summary_line())
    return 0
