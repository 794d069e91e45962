"""Recovery of the ``.part`` files a killed writer leaves (streamer.recovery), the worker
lock (streamer.worker_lock), read_run's orphan warning and ``streamer index``.

Writers are real processes (a RollingWriter driven over stdin, SIGKILLed); files are real
HDF5 files.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import hdf5plugin  # noqa: F401 - the writer's LZ4 filter
import numpy as np
import pytest

from hitstream.errors import ConfigError
from streamer.cxi_layout import DATA_PATH, FRAMES_GROUP, KEPT_GROUP
from streamer.readback import (
    OrphanFilesWarning,
    iter_kept_frames,
    list_run_files,
    read_run,
)
from streamer.recovery import find_orphans, recover_orphans, recover_part
from streamer.run_index import build_run_index, check_index
from streamer.worker_lock import WorkerLock, held_here, is_locked, lock_path

RUN = "rec"

WRITER = r"""
import sys
from pathlib import Path
import numpy as np
from hitstream.background import BackgroundSnapshot
from streamer.types import FrameBatch, ResultBatch
from streamer.writer import RollingWriter, WriterConfig

CLASSES = ("empty", "single", "multiple")
H, W = 16, 12
out, run, worker, max_frames = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
cfg = WriterConfig(Path(out), run=run, worker=worker, max_frames=max_frames,
                   flush_every_s=3600.0, min_free_bytes=0)
w = RollingWriter(cfg, classes=CLASSES, frame_shape=(H, W))


def snapshot(version):
    m = np.full((H, W), 0.1 * version, np.float32)
    return BackgroundSnapshot(m, version, float(m.mean()), version > 1, 10.0 * version)


for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "write":  # write TRAIN N MODEL BACKGROUND_VERSION (-1: none)
        t, n, model, bg = int(arg[0]), int(arg[1]), arg[2], int(arg[3])
        pulse = np.arange(n, dtype=np.uint32)
        frames = (t * 1000.0 + pulse[:, None, None] + np.zeros((n, H, W))).astype(np.float32)
        probs = np.zeros((n, 3), np.float32)
        probs[np.arange(n), (t + pulse) % 3] = 1.0
        batch = FrameBatch(frames, np.full(n, t, np.uint64), pulse,
                           1.7e9 + t + pulse * 1e-3, np.zeros(n))
        w.write(ResultBatch(batch, probs, ((t + pulse) % 3).astype(np.int16),
                            np.full(n, 0.5, np.float32), pulse % 2 == 0, model, CLASSES,
                            background=None if bg < 0 else snapshot(bg)))
    elif cmd == "flush":
        w.flush()
    print("ok", w.current_path, flush=True)
w.close()  # at the end of the input
"""

HOLDER = r"""
import sys
from pathlib import Path
from streamer.worker_lock import WorkerLock
lock = WorkerLock(Path(sys.argv[1]), sys.argv[2], sys.argv[3])
print("locked", flush=True)
sys.stdin.read()
"""


class Child:
    """A Python script in a subprocess, driven line by line over stdin."""

    def __init__(self, tmp_path: Path, code: str, *args: str | Path) -> None:
        script = tmp_path / f"child-{abs(hash(code))}.py"
        script.write_text(code)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), *map(str, args)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def line(self, timeout_s: float = 60.0) -> str:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        assert ready, "child did not answer"
        return self.proc.stdout.readline()

    def send(self, line: str) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        answer = self.line()
        assert answer.startswith("ok"), answer
        return answer.split()[1]

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def writer(tmp_path: Path, out: Path, worker: str = "w0", max_frames: int = 10_000) -> Child:
    return Child(tmp_path, WRITER, out, RUN, worker, str(max_frames))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def killed_run(tmp_path: Path, out: Path) -> tuple[Path, int]:
    """A writer that finished one file (0000: 40 frames, 20 kept), flushed 32 frames into
    0001 (a model swap and two background snapshots in it), wrote 5 more frames with a new
    model and map without flushing, and was SIGKILLed. Returns the part and the frames
    flushed to it."""
    child = writer(tmp_path, out, max_frames=20)  # every other frame is kept
    try:
        for t in range(5):
            child.send(f"write {t} 8 m:1 1")
        part = Path(child.send("write 5 8 m:1 1"))  # 0000 finished; 0001 open
        assert part.name == f"{RUN}_w0_0001.cxi.part"
        child.send("write 6 8 m:2 2")
        child.send("write 7 8 m:2 -1")
        child.send("write 8 8 m:2 2")
        child.send("flush")
        child.send("write 9 5 m:3 3")  # written, not flushed
    finally:
        child.kill()
    assert child.proc.returncode == -signal.SIGKILL
    return part, 32


def ids(t: object) -> list[tuple[int, int]]:
    return list(zip(t.train_id.tolist(), t.pulse_id.tolist(), strict=True))  # type: ignore[attr-defined]


def layout(path: Path) -> dict[str, tuple]:
    """Every object of a file: groups with their attr names, datasets with type, chunks,
    filters and max shape (rows left out), soft links with their target. The attrs that
    say a file was recovered are left out."""
    out: dict[str, tuple] = {}
    with h5py.File(path, "r") as f:

        def visit(name: str, link: object) -> None:
            if isinstance(link, h5py.SoftLink):
                out[name] = ("link", link.path)
                return
            obj = f[name]
            attrs = tuple(sorted(a for a in obj.attrs if not a.startswith("recovered_")))
            if isinstance(obj, h5py.Dataset):
                dcpl = obj.id.get_create_plist()
                filters = tuple(dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters()))
                out[name] = (obj.dtype.str, obj.shape[1:], obj.chunks, obj.maxshape, filters,
                             attrs)  # fmt: skip
            else:
                out[name] = ("group", attrs)

        f.visititems_links(visit)
    return out


def test_killed_writer_recovered_as_a_swmr_reader_saw_it(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part, flushed = killed_run(tmp_path, out)
    seen = read_run(out, RUN, include_part=True)  # a SWMR reader of the dead part
    seen_frames = np.concatenate([b for _, b in iter_kept_frames(out, RUN, include_part=True)])
    n_part = len(seen.frames) - 40
    assert flushed <= n_part <= flushed + 5, n_part
    assert len(seen.kept) == len(seen_frames) == int(seen.frames.kept.sum())
    before_finished = sha256(out / f"{RUN}_w0_0000.cxi")

    report = recover_orphans(out, RUN)

    assert [f.outcome for f in report.files] == ["recovered"]
    rec = report.recovered[0]
    assert rec.part == part and rec.path == out / f"{RUN}_w0_0001.cxi"
    assert (rec.frames, rec.kept) == (n_part, len(seen.kept) - 20)
    assert report.frames == n_part and report.changed
    assert not part.exists() and find_orphans(out, RUN) == []
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == [
        f"{RUN}_w0_0000.cxi",
        f"{RUN}_w0_0001.cxi",
    ]
    assert sha256(out / f"{RUN}_w0_0000.cxi") == before_finished  # finished file untouched

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no orphan left to warn about
        t = read_run(out, RUN)
    assert ids(t) == ids(seen) and len(set(ids(t))) == len(t.frames)  # nothing lost or doubled
    for name in ("label", "probabilities", "kept", "kept_index", "background_level",
                 "background_warm", "background", "timestamp"):  # fmt: skip
        np.testing.assert_array_equal(getattr(t.frames, name), getattr(seen.frames, name))
        if name not in ("kept", "kept_index"):
            np.testing.assert_array_equal(getattr(t.kept, name), getattr(seen.kept, name))
    assert list(t.model_versions(t.frames)) == list(seen.model_versions(seen.frames))
    np.testing.assert_array_equal(t.background_versions, seen.background_versions)
    kept = np.concatenate([b for _, b in iter_kept_frames(out, RUN)])
    np.testing.assert_array_equal(kept, seen_frames)
    expected = t.kept.train_id * 1000.0 + t.kept.pulse_id
    np.testing.assert_array_equal(kept, np.broadcast_to(expected[:, None, None], kept.shape))

    # a finished file in every respect: same layout as the writer's, every row dataset cut
    # to the same rows, an end time, and where it came from
    assert layout(rec.path) == layout(out / f"{RUN}_w0_0000.cxi")
    with h5py.File(rec.path, "r") as f, h5py.File(out / f"{RUN}_w0_0000.cxi", "r") as g:
        for key in ("classes", "frame_shape", "compression", "worker", "model"):
            np.testing.assert_array_equal(f["entry_1"].attrs[key], g["entry_1"].attrs[key])
        assert {f[FRAMES_GROUP][c].shape[0] for c in f[FRAMES_GROUP]} == {n_part}
        assert {f[KEPT_GROUP][c].shape[0] for c in f[KEPT_GROUP]} == {rec.kept}
        assert f[DATA_PATH].shape[0] == rec.kept
        assert f["entry_1/end_time"][()].decode().endswith("Z")
        entry = f["entry_1"].attrs
        assert entry["recovered_from"] == part.name
        assert entry["recovered_frames"] == n_part
        assert str(entry["recovered_at"]).endswith("Z")
        assert entry["sequence"] == 1 and entry["run"] == RUN
        models = [m.decode() for m in f["entry_1/models"][()]]
        assert models == ["m:1", "m:2", "m:3"][: len(models)]
        assert len(models) > f[FRAMES_GROUP]["model"][:].max() >= 1
        versions = f["entry_1/background/version"][:]
        assert f["entry_1/background/maps"].shape[0] == len(versions)
        assert list(versions[:2]) == [1, 2]
        assert len(versions) > f[FRAMES_GROUP]["background"][:].max() >= 1

    index = build_run_index(out, RUN)
    assert check_index(index) == []
    with h5py.File(index, "r") as f:
        assert f[FRAMES_GROUP]["train_id"].shape[0] == len(t.frames)
        assert f[DATA_PATH].shape[0] == len(t.kept)
        np.testing.assert_array_equal(f[FRAMES_GROUP]["pulse_id"][:], t.pulse_id)

    # a restarted writer continues after the recovered file
    child = writer(tmp_path, out)
    try:
        child.send("write 9 4 m:3 -1")
    finally:
        child.proc.stdin.close()  # type: ignore[union-attr]  # ends the loop: closes the file
        child.proc.wait(timeout=60)
    assert [p.name for p in list_run_files(out, RUN)][-1] == f"{RUN}_w0_0002.cxi"
    assert len(read_run(out, RUN).frames) == len(t.frames) + 4


def test_leftover_part_and_stale_temporary_are_deleted(tmp_path: Path) -> None:
    """A recovery that died after its rename left the part: it goes, the file stays."""
    out = tmp_path / "out"
    part, _ = killed_run(tmp_path, out)
    copy = tmp_path / "part-copy"
    copy.write_bytes(part.read_bytes())
    first = recover_orphans(out, RUN).recovered[0]
    assert first.path is not None
    recovered = sha256(first.path)
    os.replace(copy, part)  # as if the recovery died between the rename and the delete
    stale = out / f".{RUN}_w0_0001.cxi.recover-99999.tmp"
    stale.write_bytes(b"half a file")

    report = recover_orphans(out, RUN)

    assert [(f.part, f.outcome) for f in report.files] == [(part, "leftover")]
    assert report.deleted == [part] and report.frames == 0
    assert not part.exists() and not stale.exists()
    assert sha256(first.path) == recovered
    assert recover_orphans(out, RUN).files == []  # nothing left to do


def test_empty_and_corrupt_parts(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A part killed before its first flush has no frame: deleted. Garbage named like a
    part is renamed .part.corrupt, kept as it was, and no longer an orphan."""
    out = tmp_path / "out"
    child = writer(tmp_path, out)
    try:
        empty = Path(child.send("write 0 4 m:1 -1"))  # opened, written, never flushed
    finally:
        child.kill()
    garbage = out / f"{RUN}_w1_0003.cxi.part"
    garbage.write_bytes(b"\x89HDF\r\n\x1a\n" + b"not really" * 100)
    assert find_orphans(out, RUN) == [empty, garbage]
    assert find_orphans(out, RUN, "w1") == [garbage]

    with caplog.at_level("INFO", logger="streamer.recovery"):
        report = recover_orphans(out, RUN)

    outcomes = {f.part.name: f.outcome for f in report.files}
    assert outcomes == {empty.name: "empty", garbage.name: "corrupt"}
    assert not empty.exists() and not garbage.exists()
    corrupt = out / f"{RUN}_w1_0003.cxi.part.corrupt"
    assert report.corrupt[0].path == corrupt
    assert corrupt.read_bytes().startswith(b"\x89HDF") and corrupt.stat().st_size == 1008
    assert any(r.levelname == "ERROR" and garbage.name in r.getMessage() for r in caplog.records)
    assert find_orphans(out, RUN) == [] and report.recovered == []
    assert report.as_dict()["corrupt"][0]["path"] == corrupt.name

    garbage.write_bytes(b"again")  # a second corrupt part of the same name keeps the first
    assert recover_part(garbage).path == out / f"{RUN}_w1_0003.cxi.part.corrupt-2"
    assert corrupt.stat().st_size == 1008


def test_worker_lock_refuses_a_second_writer_and_protects_its_part(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part, _ = killed_run(tmp_path, out)
    size = part.stat().st_size
    assert not is_locked(out, RUN, "w0")  # the killed writer's lock died with it
    holder = Child(tmp_path, HOLDER, out, RUN, "w0")
    try:
        assert holder.line().strip() == "locked"
        assert is_locked(out, RUN, "w0") and not is_locked(out, RUN, "w1")
        with pytest.raises(ConfigError) as err:
            WorkerLock(out, RUN, "w0")
        msg = str(err.value)
        assert f"another streamer is writing run {RUN} worker w0 in {out}" in msg
        assert f"(pid {holder.proc.pid} on " in msg

        report = recover_orphans(out, RUN)  # a live writer's part: never touched
        assert [f.outcome for f in report.files] == ["skipped"] and not report.changed
        assert recover_part(part).outcome == "skipped"
        assert part.stat().st_size == size
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a live writer's part is no orphan
            assert len(read_run(out, RUN).frames) == 40
    finally:
        holder.kill()
    assert holder.proc.returncode == -signal.SIGKILL
    assert not is_locked(out, RUN, "w0")  # released by the kernel with the process

    with WorkerLock(out, RUN, "w0") as lock:
        assert lock.held and held_here(out, RUN, "w0")
        assert not is_locked(out, RUN, "w0")  # held by this process: not another's
        with pytest.raises(ConfigError, match=f"pid {os.getpid()} on "):
            WorkerLock(out, RUN, "w0")  # one writer per worker, in this process too
        assert recover_orphans(out, RUN, "w0").recovered[0].part == part  # ours: recovered
    assert not lock.held and not held_here(out, RUN, "w0")
    assert lock_path(out, RUN, "w0").name == f".{RUN}_w0.lock"
    assert lock_path(out, RUN, "w0").read_text().split()[0] == str(os.getpid())
    with WorkerLock(out, RUN, "w0"):  # free again
        pass


def test_read_run_warns_about_orphans(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part, _ = killed_run(tmp_path, out)
    with pytest.warns(OrphanFilesWarning, match=r"streamer index .* rec") as caught:
        t = read_run(out, RUN)
    assert len(t.frames) == 40
    assert part.name in str(caught[0].message) and caught[0].filename == __file__
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(read_run(out, RUN, include_part=True).frames) > 40  # read, no warning


def run_index_command(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streamer", "index", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_index_command_recovers_and_rebuilds(tmp_path: Path) -> None:
    out = tmp_path / "out"
    part, _ = killed_run(tmp_path, out)
    seen = read_run(out, RUN, include_part=True)

    only = run_index_command(out, RUN, "--no-recover")
    assert only.returncode == 0, only.stderr
    assert "index" in only.stdout and "1 file(s), 40 frames" in only.stdout
    assert part.exists() and "OrphanFilesWarning" in only.stderr

    done = run_index_command(out, RUN)
    assert done.returncode == 0, done.stderr
    n = len(seen.frames)
    assert f"recovered 1 file(s), {n - 40} frames ({len(seen.kept) - 20} kept)" in done.stdout
    assert f"2 file(s), {n} frames, {len(seen.kept)} kept" in done.stdout
    assert "index complete" in done.stdout
    assert not part.exists()
    with h5py.File(out / f"{RUN}_index.h5", "r") as f:
        assert f[FRAMES_GROUP]["train_id"].shape[0] == n
        assert [x.decode() for x in f["entry_1/files"][()]] == [
            f"{RUN}_w0_0000.cxi",
            f"{RUN}_w0_0001.cxi",
        ]

    again = run_index_command(out, RUN, "--worker", "w0")
    assert again.returncode == 0 and "recovered 0 file(s)" in again.stdout, again.stderr
    assert (out / f"{RUN}_w0_index.h5").exists()

    (tmp_path / "empty-dir").mkdir()
    none = run_index_command(tmp_path / "empty-dir", RUN)
    assert none.returncode == 2 and "no files of run" in none.stderr, none.stderr
