"""The bookkeeping of ``streamer classify``: runs, chunks, markers, resume and clean-up.

Layout in the output directory ``OUT``:

* finished files ``<run>_<chunk>_<seq>.cxi`` (the live writer's names; the chunk id, e.g.
  ``c000012``, is the worker name), the run index ``<run>_index.h5``;
* ``.classify/<run>/<chunk>/``: where a chunk's files are written (staging);
* ``.classify/<run>/<chunk>.json``: the chunk's marker, written (atomically) once its files
  are finished: the model, the input range and each file's name and size, and ``state``:
  ``moving`` while the files go from staging into ``OUT``, ``done`` after.

A chunk is *done* when its marker says ``done`` for the same model, input and range, and
every file it names is in ``OUT`` with its size. A rerun skips done chunks, finishes the
moves of ``moving`` ones, and redoes the others after deleting their files, so a killed
job never leaves a file that belongs to no done chunk once it is rerun, and the run index
is built only when every chunk is done.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path
from typing import Any

from hitstream.errors import ConfigError
from streamer.cxi_layout import check_name, file_pattern
from streamer.readback import list_run_files
from streamer.run_index import index_name

STATE_DIR = ".classify"
CHUNK_ID = re.compile(r"c\d{6}")


def chunk_id(k: int) -> str:
    return f"c{k:06d}"


@dataclass(frozen=True)
class ChunkRange:
    """Frames ``start .. stop-1`` of the run's input, under worker name ``chunk``."""

    chunk: str
    start: int
    stop: int


def plan_chunks(n_frames: int, chunk_frames: int) -> list[ChunkRange]:
    """Consecutive ranges of at most ``chunk_frames`` frames covering ``0 .. n_frames-1``."""
    if chunk_frames < 1:
        raise ConfigError(f"--chunk-frames must be >= 1, got {chunk_frames}")
    return [
        ChunkRange(chunk_id(k), a, min(a + chunk_frames, n_frames))
        for k, a in enumerate(range(0, n_frames, chunk_frames))
    ]


class RunState:
    """The markers and files of one run in ``out`` (see the module docstring)."""

    def __init__(self, out: Path, run: str) -> None:
        check_name("run", run)
        self.out = Path(out)
        self.run = run
        self.dir = self.out / STATE_DIR / run

    def staging(self, chunk: str) -> Path:
        return self.dir / chunk

    def marker(self, chunk: str) -> Path:
        return self.dir / f"{chunk}.json"

    def read_marker(self, chunk: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.marker(chunk).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def write_marker(self, chunk: str, data: dict[str, Any]) -> None:
        """Atomically (a temporary file, fsync, rename)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self.marker(chunk)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(data, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def foreign_files(self) -> list[Path]:
        """Files of the run in ``out`` that no chunk wrote (e.g. the live streamer's)."""
        return [
            p
            for p in list_run_files(self.out, self.run, include_part=True)
            if not CHUNK_ID.fullmatch(str(file_pattern(self.run).fullmatch(p.name)["worker"]))  # type: ignore[index]
        ]

    def chunk_files(self, chunk: str) -> list[Path]:
        """The chunk's files in ``out`` (finished or not)."""
        return list_run_files(self.out, self.run, worker=chunk, include_part=True)

    def is_done(self, rng: ChunkRange, identity: dict[str, Any]) -> bool:
        """The chunk's marker says done for this model and input, and its files are there."""
        m = self.read_marker(rng.chunk)
        if m is None or m.get("state") != "done":
            return False
        if m.get("identity") != identity or [m.get("start"), m.get("stop")] != [
            rng.start,
            rng.stop,
        ]:
            return False
        return all(
            (self.out / f["name"]).is_file() and (self.out / f["name"]).stat().st_size == f["size"]
            for f in m.get("files", [])
        )

    def finish_moves(self, rng: ChunkRange, identity: dict[str, Any]) -> bool:
        """A chunk killed while its files moved into ``out``: finish; True if now done."""
        m = self.read_marker(rng.chunk)
        if m is None or m.get("state") != "moving" or m.get("identity") != identity:
            return False
        if [m.get("start"), m.get("stop")] != [rng.start, rng.stop]:
            return False
        for f in m.get("files", []):
            src = self.staging(rng.chunk) / f["name"]
            if src.exists():
                os.replace(src, self.out / f["name"])
        m["state"] = "done"
        self.write_marker(rng.chunk, m)
        shutil.rmtree(self.staging(rng.chunk), ignore_errors=True)
        return self.is_done(rng, identity)

    def reset_chunk(self, chunk: str) -> None:
        """Forget a chunk: its marker, staging directory and files in ``out``."""
        self.marker(chunk).unlink(missing_ok=True)
        shutil.rmtree(self.staging(chunk), ignore_errors=True)
        for p in self.chunk_files(chunk):
            p.unlink(missing_ok=True)

    def publish(self, rng: ChunkRange, identity: dict[str, Any], result: dict[str, Any]) -> None:
        """Move a classified chunk's finished files from staging into ``out``: marker
        ``moving`` first (so a kill half-way is finished by the next run), then ``done``."""
        files = result["files"]
        marker = {"state": "moving", "identity": identity, "start": rng.start,
                  "stop": rng.stop, "files": files, "result": result}  # fmt: skip
        self.write_marker(rng.chunk, marker)
        for f in files:
            os.replace(self.staging(rng.chunk) / f["name"], self.out / f["name"])
        marker["state"] = "done"
        self.write_marker(rng.chunk, marker)
        shutil.rmtree(self.staging(rng.chunk), ignore_errors=True)

    def results(self, chunks: list[ChunkRange]) -> list[dict[str, Any]]:
        """The recorded results of done chunks."""
        out = []
        for rng in chunks:
            m = self.read_marker(rng.chunk)
            if m is not None and m.get("state") == "done":
                out.append(m["result"])
        return out

    def clean_other_chunks(self, chunks: list[ChunkRange]) -> int:
        """Delete files and markers of chunk ids not in this plan (an earlier plan with
        another chunk size); returns how many files went."""
        keep = {c.chunk for c in chunks}
        gone = 0
        for p in list_run_files(self.out, self.run, include_part=True):
            m = file_pattern(self.run).fullmatch(p.name)
            w = m["worker"] if m else ""
            if CHUNK_ID.fullmatch(w) and w not in keep:
                p.unlink(missing_ok=True)
                gone += 1
        if self.dir.is_dir():
            for entry in self.dir.iterdir():
                name = entry.name.removesuffix(".json")
                if CHUNK_ID.fullmatch(name) and name not in keep:
                    if entry.is_dir():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
        return gone

    def remove_all(self) -> None:
        """``--force``: every chunk file, marker and the index of the run."""
        for p in list_run_files(self.out, self.run, include_part=True):
            m = file_pattern(self.run).fullmatch(p.name)
            if m and CHUNK_ID.fullmatch(m["worker"]):
                p.unlink(missing_ok=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        (self.out / index_name(self.run)).unlink(missing_ok=True)


def identity_of(model_label: str, source: Path, dataset: str, **settings: Any) -> dict[str, Any]:
    """What makes a chunk's result: the model, the input and the settings that change labels."""
    if source.is_dir():  # a run directory: its files' names, sizes and times
        from streamer.classify_euxfel import run_fingerprint

        size, mtime = 0, run_fingerprint(source)
    else:
        st = source.stat()
        size, mtime = st.st_size, str(st.st_mtime_ns)
    plain = {k: asdict(v) if is_dataclass(v) and not isinstance(v, type) else v
             for k, v in settings.items()}  # fmt: skip
    data = {
        "model": model_label,
        "source": str(source.resolve()),
        "source_size": size,
        "source_mtime_ns": mtime,
        "dataset": dataset,
        **plain,
    }
    return dict(json.loads(json.dumps(data, sort_keys=True, default=str)))  # as a marker holds it
