"""``streamer classify RUN... --model M --out DIR``: re-classify archived runs on Dask.

A thin command over :func:`streamer.classify.classify_runs`: options take their defaults
from :class:`streamer.classify.ClassifyConfig`; ``--config`` reads ``[detector]``,
``[engine] photon_unit``, ``[output] keep_classes``/``compression``/``max_frames`` and, for
European XFEL run directories, ``[feed] source``/``key``/``axis_order`` (one source per
module) of a streamer config, so a run is read and written as the live streamer would.
Prints the Dask dashboard link, a progress bar, and a table per run; writes
``classify_report.json`` and ``.png`` into the output. Exit status 0, 1 when a run failed,
2 on bad input.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from hitstream.cli import add_option
from streamer.classify import BACKGROUND_MODES, ClassifyConfig

HELP = "re-classify archived HDF5/CXI runs with a bundle, in parallel on Dask (resumable)"
log = logging.getLogger("streamer.classify")


def add_arguments(p: argparse.ArgumentParser) -> None:
    c = ClassifyConfig
    p.add_argument(
        "runs", nargs="+", type=Path, metavar="RUN",
        help="HDF5/CXI files of frames, or European XFEL run directories (with --config)",
    )  # fmt: skip
    add_option(p, c, "model", "model bundle directory", type=Path)
    add_option(p, c, "out", "output directory (the live layout, one run per input)", type=Path)
    add_option(p, c, "dataset", "frames dataset in each file (default: its only 3-D one)")
    add_option(p, c, "chunk_frames", "frames per Dask task")
    add_option(p, c, "scheduler", "address of a running Dask scheduler (default: a local cluster)")
    add_option(p, c, "workers", "local cluster: worker processes (0: one per core)")
    add_option(p, c, "threads_per_worker", "local cluster: threads per worker")
    add_option(p, c, "frames_per_train", "frame identities: frames per train, as replayed")
    add_option(p, c, "first_train_id", "train id of each file's first frame")
    add_option(p, c, "photon_unit", "one photon in the file's units (ADU, keV; 1: photons)")
    add_option(p, c, "provider", "onnxruntime provider on the workers (auto: CUDA if present)")
    add_option(p, c, "max_batch", "frames per inference (0: auto)", flag="--batch")
    add_option(p, c, "background", f"the run's background: {' | '.join(BACKGROUND_MODES)}")
    add_option(p, c, "compare", "an output directory with earlier labels to compare", type=Path)
    p.add_argument("--force", action="store_true", help="redo runs classified before")
    p.add_argument("--config", type=Path, help="a streamer TOML config: detector, units, output")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    # Dask's own INFO lines are for its developers (read when distributed is imported)
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    from streamer.classify import classify_runs
    from streamer.classify_report import format_table, write_report
    from streamer.config import load_config

    extra: dict[str, object] = {}
    if args.config is not None:
        sc = load_config(args.config)
        extra = {
            "detector": sc.detector if sc.detector.enabled else None,
            "photon_unit": sc.engine.photon_unit,
            "keep_classes": tuple(sc.output.keep_classes) if sc.output.keep_classes else None,
            "compression": sc.output.compression,
            "max_frames": sc.output.max_frames,
        }
        if sc.feed.source is not None and "*" in sc.feed.source and sc.detector.enabled:
            from hitstream.detectors import load_detector
            from streamer.classify_euxfel import EuxfelSource

            extra["euxfel"] = EuxfelSource(
                source=sc.feed.source, key=sc.feed.key, axis_order=sc.feed.axis_order,
                modules=load_detector(sc.detector).data_shape[0],
            )  # fmt: skip
    given = {
        "model": args.model, "out": args.out, "dataset": args.dataset,
        "chunk_frames": args.chunk_frames, "scheduler": args.scheduler,
        "workers": args.workers, "threads_per_worker": args.threads_per_worker,
        "frames_per_train": args.frames_per_train, "first_train_id": args.first_train_id,
        "photon_unit": args.photon_unit, "provider": args.provider, "max_batch": args.batch,
        "background": args.background, "force": args.force, "compare": args.compare,
        "progress": not args.no_progress,
    }  # fmt: skip
    defaults = ClassifyConfig()
    for key, value in extra.items():  # the config file's, unless the command line says more
        if given.get(key, getattr(defaults, key)) == getattr(defaults, key):
            given[key] = value
    cfg = ClassifyConfig(**given)
    jobs = classify_runs(
        list(args.runs), cfg, on_start=lambda link: print(f"Dask dashboard: {link}", flush=True)
    )
    from hitstream.bundle import load_bundle

    rows, js, png = write_report(jobs, cfg.out, load_bundle(cfg.model).hit_classes)
    print(format_table(rows))
    print(f"report: {js} and {png}")
    return 1 if any(j.error for j in jobs) else 0
