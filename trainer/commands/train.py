"""``trainer train``: train a CNN on labelled HDF5 runs and export a model bundle."""

from __future__ import annotations

import argparse
from pathlib import Path

from hitstream.cli import default_of, show_default
from hitstream.labels import DEFAULT_CLASS_ORDER
from trainer.commands.args import add_photon_unit
from trainer.model.inputs import ARCHITECTURES
from trainer.model.train_bundle import TrainOptions

HELP = "train a CNN on labelled HDF5 runs (frames + labels CSV) and export a model bundle"


def add_arguments(p: argparse.ArgumentParser) -> None:
    def d(name: str) -> str:
        """The default of TrainOptions' field ``name`` as the help text shows it."""
        return show_default(default_of(TrainOptions, name))

    p.add_argument("runs", nargs="+", type=Path, help="HDF5 files with frames (N, H, W)")
    p.add_argument(
        "--dataset",
        default=default_of(TrainOptions, "dataset"),
        help=f"frames dataset inside each file [{d('dataset')}]",
    )
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
    p.add_argument(
        "--val-fraction",
        type=float,
        default=default_of(TrainOptions, "val_fraction"),
        help=f"validation share [{d('val_fraction')}]",
    )
    p.add_argument(
        "--arch",
        choices=ARCHITECTURES,
        default=default_of(TrainOptions, "architecture"),
        help=f"[{d('architecture')}]",
    )
    p.add_argument(
        "--epochs",
        type=int,
        default=default_of(TrainOptions, "epochs"),
        help=f"at most this many epochs [{d('epochs')}]",
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=default_of(TrainOptions, "batch_size"),
        help=f"[{d('batch_size')}]",
    )
    p.add_argument(
        "--learning-rate",
        type=float,
        default=default_of(TrainOptions, "learning_rate"),
        help=f"[{d('learning_rate')}]",
    )
    p.add_argument(
        "--seed", type=int, default=default_of(TrainOptions, "seed"), help=f"[{d('seed')}]"
    )
    p.add_argument("--no-augment", action="store_true", help="no training augmentation")
    p.add_argument(
        "--keep",
        default=d("keep"),
        help=f"classes to keep, comma separated [{d('keep')}]",
    )
    p.add_argument(
        "--target-precision",
        type=float,
        default=default_of(TrainOptions, "target_precision"),
        help=f"threshold of the first kept class reaches this precision [{d('target_precision')}]",
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
