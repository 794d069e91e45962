"""The CXI file layout of the streamer's output and the names of its files: one contract for
the writer, the readers and the run index.

Layout of one file (CXI 1.6; ``N`` kept frames, ``M`` frames seen, ``C`` classes)::

    /cxi_version                                   int 160
    /entry_1                                       attrs: NX_class, run, worker, sequence,
                                                   classes, model (model of the first batch;
                                                   all in /entry_1/models), hitstream_version,
                                                   frame_shape, compression, geometry_*
                                                   (with a geometry), the ``attrs`` given
                                                   (ours win on a clash; dicts as JSON text)
    /entry_1/experiment_identifier                 str, the run name
    /entry_1/start_time, /entry_1/end_time         ISO 8601 UTC str (end_time "" until closed)
    /entry_1/models                                (K,) str "name:version", K grows on a swap
    /entry_1/instrument_1/detector_1/data          (N, H, W) float32, chunks (1, H, W),
                                                   compressed; attrs axes, and on the group
                                                   hole_radius_px, gap_rows (with geometry)
    /entry_1/instrument_1/detector_1/distance      m        (only with a geometry)
    /entry_1/instrument_1/detector_1/x_pixel_size  m        (only with a geometry)
    /entry_1/instrument_1/detector_1/y_pixel_size  m        (only with a geometry)
    /entry_1/instrument_1/source_1/energy          J, attr wavelength (m) (only with geometry)
    /entry_1/data_1/data                           soft link to detector_1/data
    /entry_1/result_1/{train_id (u8), pulse_id (u4), timestamp (f8, s), label (i2),
                       probabilities (N, C) f4, template_distance (f4),
                       model (i2, index into /entry_1/models),
                       background_level (f4, mean photons per valid pixel of the run
                       background the frame was classified with; NaN: none),
                       background_warm (bool, that background was warm),
                       background (i4, index into /entry_1/background/maps; -1: none)}
                                                   one row per kept frame
    /entry_1/frames/{same columns, kept (bool), kept_index (i8, row of the kept data or -1)}
                                                   one row per frame seen, in arrival order
    /entry_1/background/maps                       (K, H, W) float32, chunks (1, H, W),
                                                   compressed: each run-background snapshot
                                                   used in this file (expected photons per
                                                   pixel of an empty frame), appended the
                                                   first time a batch of the file uses it
    /entry_1/background/version                    (K,) i8, the snapshots' versions
    result_1 and frames carry attrs classes and description; 1-D columns are chunked by
    4096 rows and compressed like the data.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import h5py
import numpy as np

from hitstream.errors import ConfigError

CXI_VERSION = 160
DATA_PATH = "/entry_1/instrument_1/detector_1/data"
DATA_LINK = "/entry_1/data_1/data"
DETECTOR_GROUP = "/entry_1/instrument_1/detector_1"
SOURCE_GROUP = "/entry_1/instrument_1/source_1"
KEPT_GROUP = "/entry_1/result_1"
FRAMES_GROUP = "/entry_1/frames"
MODELS_PATH = "/entry_1/models"
BACKGROUND_GROUP = "/entry_1/background"
BACKGROUND_MAPS = "/entry_1/background/maps"
BACKGROUND_VERSION = "/entry_1/background/version"
FILE_SUFFIX = ".cxi"
PART_SUFFIX = ".part"
CORRUPT_SUFFIX = ".corrupt"  # an unreadable orphan part, kept aside by streamer.recovery
_CORRUPT_TAIL = re.compile(re.escape(CORRUPT_SUFFIX) + r"(-\d+)?$")

#: Columns of both tables (name -> dtype); ``probabilities`` is 2-D (rows, classes).
COLUMNS: dict[str, np.dtype] = {
    "train_id": np.dtype(np.uint64),
    "pulse_id": np.dtype(np.uint32),
    "timestamp": np.dtype(np.float64),
    "label": np.dtype(np.int16),
    "probabilities": np.dtype(np.float32),
    "template_distance": np.dtype(np.float32),
    "model": np.dtype(np.int16),
    "background_level": np.dtype(np.float32),
    "background_warm": np.dtype(np.bool_),
    "background": np.dtype(np.int32),
}
#: Columns files written before the run background lack (readers fill them: NaN, False, -1).
BACKGROUND_COLUMNS: dict[str, np.dtype] = {
    k: COLUMNS[k] for k in ("background_level", "background_warm", "background")
}
#: Columns only the all-frames table has.
FRAME_ONLY_COLUMNS: dict[str, np.dtype] = {
    "kept": np.dtype(np.bool_),
    "kept_index": np.dtype(np.int64),
}
TABLE_CHUNK = 4096
MODEL_STR_BYTES = 256
MODEL_DTYPE = h5py.string_dtype("utf-8", MODEL_STR_BYTES)
TIME_DTYPE = h5py.string_dtype("utf-8", 32)
_RUN_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}")
_WORKER_RE = re.compile(r"[A-Za-z0-9-][A-Za-z0-9.-]{0,99}")


def file_name(run: str, worker: str, seq: int) -> str:
    """Final name of file ``seq`` of a run and worker."""
    return f"{run}_{worker}_{seq:04d}{FILE_SUFFIX}"


def file_pattern(run: str, worker: str | None = None) -> re.Pattern[str]:
    """Regex of the run's file names (finished or ``.part``); groups ``worker``, ``seq``, ``part``.

    Worker names cannot contain ``_``, so run ``a`` never matches the files of run ``a_b``.
    """
    w = re.escape(worker) if worker is not None else r"[A-Za-z0-9.-]+"
    return re.compile(
        rf"{re.escape(run)}_(?P<worker>{w})_(?P<seq>\d{{4,}}){re.escape(FILE_SUFFIX)}"
        rf"(?P<part>{re.escape(PART_SUFFIX)})?"
    )


def check_name(kind: str, value: str) -> str:
    """Return ``value`` if it is a safe run/worker name, else raise :class:`ConfigError`.

    Run names: ``[A-Za-z0-9._-]``, 1-100 characters, no leading dot. Worker names: the same
    without ``_`` (it separates run, worker and sequence number in file names). Names are
    checked, not rewritten, so a file name always says exactly what was configured.
    """
    pattern = _WORKER_RE if kind == "worker" else _RUN_RE
    if not isinstance(value, str) or not pattern.fullmatch(value):
        allowed = "[A-Za-z0-9.-]" if kind == "worker" else "[A-Za-z0-9._-]"
        raise ConfigError(
            f"writer {kind} name {value!r}: use 1-100 characters of {allowed}, not starting "
            "with '.'"
        )
    return value


def next_sequence(out_dir: Path, run: str, worker: str) -> int:
    """One more than the highest sequence number of the run/worker in ``out_dir`` (0 if none)."""
    pattern = file_pattern(run, worker)
    seqs = [
        int(m["seq"])
        for entry in os.scandir(out_dir)  # a part kept aside as unreadable still has its number
        if (m := pattern.fullmatch(_CORRUPT_TAIL.sub("", entry.name))) is not None
    ]
    return max(seqs) + 1 if seqs else 0
