"""``trainer train``: train a CNN on labelled HDF5 runs and export a model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from hitstream.cli import add_option, show_default
from hitstream.labels import DEFAULT_CLASS_ORDER
from trainer.commands.args import add_photon_unit
from trainer.model.inputs import ARCHITECTURES
from trainer.model.train_bundle import TrainOptions

HELP = "train a CNN on labelled HDF5 runs (frames + labels CSV) and export a model bundle"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", type=Path, help="HDF5 files with frames (N, H, W)")
    add_option(p, TrainOptions, "dataset", "frames dataset inside each file")
    add_photon_unit(p, TrainOptions)
    p.add_argument(
        "--labels",
        action="append",
        type=Path,
        metavar="FILE",
        help="labels CSV run,index,class, JSON or HDF5 (repeatable) [<stem>.labels.csv beside "
        "each run]",
    )
    p.add_argument(
        "--classes",
        help="class order, comma separated [" + show_default(DEFAULT_CLASS_ORDER) + "]",
    )
    add_option(p, TrainOptions, "val_fraction", "validation share")
    add_option(p, TrainOptions, "architecture", flag="--arch", choices=ARCHITECTURES)
    add_option(p, TrainOptions, "epochs", "at most this many epochs")
    add_option(p, TrainOptions, "batch_size")
    add_option(p, TrainOptions, "learning_rate")
    add_option(p, TrainOptions, "seed")
    p.add_argument("--no-augment", action="store_true", help="no training augmentation")
    add_option(p, TrainOptions, "keep", "classes to keep, comma separated")
    add_option(
        p,
        TrainOptions,
        "target_precision",
        "threshold of the first kept class reaches this precision",
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
    from trainer.model.train_bundle import train_bundle

    options = TrainOptions(
        dataset=args.dataset,
        labels=args.labels,
        classes=tuple(c.strip() for c in args.classes.split(",")) if args.classes else None,
        val_fraction=args.val_fraction,
        architecture=args.arch,
        epochs=args.epochs,
        batch_size=args.batch_size,
        learning_rate=args.learning_rate,
        seed=args.seed,
        augment=not args.no_augment,
        keep=tuple(c.strip() for c in args.keep.split(",") if c.strip()),
        target_precision=args.target_precision,
        photon_unit=args.photon_unit,
        bank=args.bank,
    )
    done = train_bundle(
        args.runs, args.out, options, name=args.name or args.out.name, force=args.force
    )
    print(done.summary_line())
    return 0
