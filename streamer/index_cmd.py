"""``streamer index OUT RUN``: recover a run's orphan ``.part`` files, rebuild its run index.

Orphans are the files a killed streamer left unfinished (:mod:`streamer.recovery`); the
parts of a worker that a running streamer holds are left alone. Then the run index
(:func:`streamer.run_index.build_run_index`) is written again over the finished files
and checked. Prints a short report; exit status 0, 1 when the index misses a source
file, 2 on an error (no file of the run, an unreadable finished file).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import h5py

from hitstream.errors import InputDataError
from streamer.recovery import RecoveryReport, recover_orphans
from streamer.run_index import build_run_index, check_index

HELP = "recover a run's orphan .part files (left by a killed streamer) and rebuild its index"
log = logging.getLogger("streamer.index")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", type=Path, metavar="OUT", help="output directory of the run")
    p.add_argument("run", metavar="RUN", help="run name (file prefix)")
    p.add_argument(
        "--worker",
        help="only this worker's files: recover its parts, write <run>_<worker>_index.h5",
    )
    p.add_argument(
        "--no-recover", action="store_true", help="leave .part files alone; only rebuild"
    )


def _report_lines(report: RecoveryReport) -> list[str]:
    lines = [
        f"recovered {len(report.recovered)} file(s), {report.frames} frames ({report.kept} kept)"
    ]
    for f in report.recovered:
        name = f.path.name if f.path is not None else "-"
        lines.append(f"  {f.part.name} -> {name}: {f.frames} frames, {f.kept} kept")
    if report.deleted:
        lines.append(
            f"deleted {len(report.deleted)} part(s) (finished already or without a frame): "
            + ", ".join(p.name for p in report.deleted)
        )
    for f in report.corrupt:
        lines.append(f"UNREADABLE {f.part.name}: kept as {f.path.name if f.path else '?'}")
    for f in report.conflicts:
        lines.append(f"CONFLICT {f.part.name}: left as it is ({f.detail})")
    for f in report.skipped:
        lines.append(f"skipped {f.part.name}: a running streamer writes it")
    return lines


def run(args: argparse.Namespace) -> int:
    out: Path = args.out
    if not out.is_dir():
        raise InputDataError(f"{out}: no such directory")
    if not args.no_recover:
        for line in _report_lines(recover_orphans(out, args.run, args.worker)):
            print(line, flush=True)
    index = build_run_index(out, args.run, worker=args.worker)
    with h5py.File(index, "r") as f:
        n_files = len(f["entry_1/files"])
        frames = int(f["entry_1/file_frames"][-1])
        kept = int(f["entry_1/file_kept"][-1])
    missing = check_index(index)
    print(f"index {index}: {n_files} file(s), {frames} frames, {kept} kept", flush=True)
    if missing:
        print(f"MISSING sources of the index: {', '.join(missing)}", flush=True)
        return 1
    print("index complete: every source file is there", flush=True)
    return 0
