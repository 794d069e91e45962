"""Rolling CXI writer, run index and readback, on real HDF5 files in tmp_path."""

from __future__ import annotations

import dataclasses
import os
import select
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import h5py
import hdf5plugin
import numpy as np
import pytest

from hitstream.background import BackgroundSnapshot
from hitstream.compression import COMPRESSIONS
from hitstream.errors import ConfigError, DiskFullError, InputDataError, OutputError
from hitstream.geometry import FRAME_SHAPE, DetectorGeometry
from streamer.cxi_layout import (
    CXI_VERSION,
    DATA_LINK,
    DATA_PATH,
    FRAMES_GROUP,
    KEPT_GROUP,
    MODELS_PATH,
)
from streamer.readback import iter_kept_frames, list_run_files, read_kept_frames, read_run
from streamer.run_index import build_run_index, check_index, index_name
from streamer.types import FrameBatch, ResultBatch
from streamer.writer import RollingWriter, WriterConfig

CLASSES = ("empty", "single", "multiple")
SHAPE = (16, 12)


def make_result(
    rng: np.random.Generator,
    train: int,
    n: int = 16,
    *,
    keep_frac: float = 0.3,
    shape: tuple[int, int] = SHAPE,
    model: str = "seed:1",
) -> ResultBatch:
    """A batch of random frames of one train; about ``keep_frac`` of them kept."""
    probs = rng.dirichlet(np.ones(len(CLASSES)), size=n).astype(np.float32)
    batch = FrameBatch(
        frames=rng.normal(100.0, 30.0, size=(n, *shape)).astype(np.float32),
        train_id=np.full(n, train, dtype=np.uint64),
        pulse_id=np.arange(n, dtype=np.uint32),
        timestamp=1.7e9 + train * 0.1 + np.arange(n) * 1e-6,
        received=np.zeros(n),
    )
    dist = rng.random(n).astype(np.float32)
    dist[::5] = np.nan
    return ResultBatch(
        batch=batch,
        probabilities=probs,
        label=probs.argmax(axis=1).astype(np.int16),
        template_distance=dist,
        keep=rng.random(n) < keep_frac,
        model_version=model,
        classes=CLASSES,
    )


def write_run(cfg: WriterConfig, results: list[ResultBatch], **kw) -> RollingWriter:
    with RollingWriter(cfg, classes=CLASSES, frame_shape=SHAPE, **kw) as w:
        for r in results:
            w.write(r)
    return w


def concat(results: list[ResultBatch], attr: str) -> np.ndarray:
    if attr.startswith("batch."):
        return np.concatenate([getattr(r.batch, attr[6:]) for r in results])
    return np.concatenate([getattr(r, attr) for r in results])


def filter_ids(ds: h5py.Dataset) -> list[int]:
    dcpl = ds.id.get_create_plist()
    return [dcpl.get_filter(i)[0] for i in range(dcpl.get_nfilters())]


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_rotation_round_trip_and_layout(tmp_path: Path, compression: str) -> None:
    rng = np.random.default_rng(1)
    results = [make_result(rng, t) for t in range(10)]
    cfg = WriterConfig(tmp_path, run="r7", worker="w0", max_frames=7, compression=compression)
    w = write_run(cfg, results, geometry=DetectorGeometry(), attrs={"note": {"a": 1}})

    keep = concat(results, "keep")
    n_files = -(-int(keep.sum()) // 7)
    names = [f"r7_w0_{i:04d}.cxi" for i in range(n_files)]
    assert sorted(p.name for p in tmp_path.iterdir()) == names
    assert [p.name for p in w.files_closed] == names
    assert w.frames_seen == 160 and w.frames_kept == keep.sum()
    assert w.current_path is None and w.bytes_written == sum(
        p.stat().st_size for p in w.files_closed
    )

    t = read_run(tmp_path, "r7")
    ids = list(zip(t.frames.train_id.tolist(), t.frames.pulse_id.tolist(), strict=True))
    assert len(ids) == 160 and len(set(ids)) == 160
    np.testing.assert_array_equal(t.frames.train_id, concat(results, "batch.train_id"))
    np.testing.assert_array_equal(t.frames.kept, keep)
    np.testing.assert_array_equal(t.frames.label, concat(results, "label"))
    np.testing.assert_array_equal(t.frames.probabilities, concat(results, "probabilities"))
    np.testing.assert_array_equal(t.frames.timestamp, concat(results, "batch.timestamp"))
    np.testing.assert_array_equal(
        t.frames.template_distance, concat(results, "template_distance")
    )  # NaNs compare equal here
    np.testing.assert_array_equal(t.frames.kept_index[keep], np.arange(keep.sum()))
    assert (t.frames.kept_index[~keep] == -1).all()
    np.testing.assert_array_equal(t.kept.probabilities, concat(results, "probabilities")[keep])
    np.testing.assert_array_equal(t.kept.pulse_id, concat(results, "batch.pulse_id")[keep])
    assert t.models == ("seed:1",) and t.classes == CLASSES
    assert np.diff(t.file_kept).tolist() == [7] * (n_files - 1) + [keep.sum() - 7 * (n_files - 1)]

    frames = np.concatenate([b for _, b in iter_kept_frames(tmp_path, "r7", block=3)])
    np.testing.assert_array_equal(frames, concat(results, "batch.frames")[keep])  # lossless
    pick = [5, 0, 5, len(frames) - 1]
    np.testing.assert_array_equal(read_kept_frames(tmp_path, "r7", pick), frames[pick])

    with h5py.File(w.files_closed[0], "r") as f:
        assert f["cxi_version"][()] == CXI_VERSION == 160
        data = f[DATA_PATH]
        assert data.shape == (7, *SHAPE) and data.chunks == (1, *SHAPE)
        assert data.dtype == np.float32
        assert f.get(DATA_LINK, getlink=True).path == DATA_PATH
        np.testing.assert_array_equal(f[DATA_LINK][:], data[:])
        expected_filter = {
            "bitshuffle-lz4": hdf5plugin.BSHUF_ID,
            "lz4": hdf5plugin.LZ4_ID,
            "zstd": hdf5plugin.ZSTD_ID,
            "gzip": h5py.h5z.FILTER_DEFLATE,
            "lzf": h5py.h5z.FILTER_LZF,
        }.get(compression)
        ids = filter_ids(data) + filter_ids(f[FRAMES_GROUP]["probabilities"])
        assert (expected_filter in ids) if expected_filter else ids == []
        entry = f["entry_1"]
        assert entry.attrs["run"] == "r7" and entry.attrs["model"] == "seed:1"
        assert list(entry.attrs["classes"]) == list(CLASSES)
        assert list(f[KEPT_GROUP].attrs["classes"]) == list(CLASSES)
        assert entry.attrs["note"] == '{"a": 1}'
        assert entry["end_time"][()].decode().endswith("Z")
        assert f["entry_1/instrument_1/detector_1/distance"][()] == pytest.approx(0.586)
        energy = f["entry_1/instrument_1/source_1/energy"]
        assert energy[()] == pytest.approx(6.62607015e-34 * 299792458 / 7.75e-10)
        assert f[MODELS_PATH][()].tolist() == [b"seed:1"]


def test_full_frame_shape_and_all_kept(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    results = [make_result(rng, t, n=4, keep_frac=1.0, shape=FRAME_SHAPE) for t in range(3)]
    cfg = WriterConfig(tmp_path, max_frames=5)
    with RollingWriter(cfg, classes=CLASSES, frame_shape=FRAME_SHAPE) as w:
        for r in results:
            w.write(r)
    assert [p.name for p in w.files_closed] == [
        "run_w0_0000.cxi",
        "run_w0_0001.cxi",
        "run_w0_0002.cxi",
    ]
    with h5py.File(w.files_closed[0], "r") as f:
        assert f[DATA_PATH].chunks == (1, *FRAME_SHAPE)
    frames = np.concatenate([b for _, b in iter_kept_frames(tmp_path, "run")])
    np.testing.assert_array_equal(frames, concat(results, "batch.frames"))


def test_rotation_by_bytes_and_seconds(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    w = write_run(
        WriterConfig(tmp_path / "b", max_bytes=1), [make_result(rng, t) for t in range(3)]
    )
    assert len(w.files_closed) == 3  # every batch overshoots 1 byte
    w = write_run(
        WriterConfig(tmp_path / "s", max_seconds=0), [make_result(rng, t) for t in range(2)]
    )
    assert len(w.files_closed) == 2
    # No kept frame at all: the file still holds every frame's decision.
    w = write_run(WriterConfig(tmp_path / "n"), [make_result(rng, 0, keep_frac=0.0)])
    t = read_run(tmp_path / "n", "run")
    assert len(t.frames) == 16 and len(t.kept) == 0 and not t.frames.kept.any()
    assert read_kept_frames(tmp_path / "n", "run", []).shape == (0, *SHAPE)


def test_model_swap_inside_a_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    results = [make_result(rng, 0, model="seed:1"), make_result(rng, 1, model="seed:2")]
    results.append(make_result(rng, 2, model="seed:1"))
    w = write_run(WriterConfig(tmp_path), results)
    assert len(w.files_closed) == 1
    with h5py.File(w.files_closed[0], "r") as f:
        assert f[MODELS_PATH][()].tolist() == [b"seed:1", b"seed:2"]
    t = read_run(tmp_path, "run")
    assert t.models == ("seed:1", "seed:2")
    assert (
        t.model_versions(t.frames).tolist() == ["seed:1"] * 16 + ["seed:2"] * 16 + ["seed:1"] * 16
    )
    assert set(t.model_versions(t.kept)) <= {"seed:1", "seed:2"}


def test_restart_continues_sequence(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    cfg = WriterConfig(tmp_path, run="r", worker="a", max_frames=3)
    first = write_run(cfg, [make_result(rng, t, keep_frac=1.0, n=3) for t in range(2)])
    stamp = {p: p.stat().st_mtime_ns for p in first.files_closed}
    second = write_run(cfg, [make_result(rng, t, keep_frac=1.0, n=3) for t in range(2, 4)])
    assert [p.name for p in first.files_closed] == ["r_a_0000.cxi", "r_a_0001.cxi"]
    assert [p.name for p in second.files_closed] == ["r_a_0002.cxi", "r_a_0003.cxi"]
    assert {p: p.stat().st_mtime_ns for p in first.files_closed} == stamp
    other = write_run(dataclasses.replace(cfg, worker="b"), [make_result(rng, 9)])
    assert [p.name for p in other.files_closed] == ["r_b_0000.cxi"]
    assert (
        read_run(tmp_path, "r", worker="a").frames.train_id.tolist()
        == np.repeat(np.arange(4), 3).tolist()
    )
    # A run whose name starts like another's does not pick up its files.
    assert list_run_files(tmp_path, "r_a") == []


@pytest.mark.parametrize("run", ["../x", "a/b", ".hidden", "", "x" * 101, "a b", "/abs"])
def test_unsafe_run_names_rejected(tmp_path: Path, run: str) -> None:
    with pytest.raises(ConfigError, match="run name"):
        WriterConfig(tmp_path, run=run)
    with pytest.raises(ConfigError):
        build_run_index(tmp_path, run)


@pytest.mark.parametrize("worker", ["../x", "w_1", ".w", ""])
def test_unsafe_worker_names_rejected(tmp_path: Path, worker: str) -> None:
    with pytest.raises(ConfigError, match="worker name"):
        WriterConfig(tmp_path, worker=worker)


def test_bad_config_and_batches(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="compression"):
        WriterConfig(tmp_path, compression="lzma")
    with pytest.raises(ConfigError, match="max_frames"):
        WriterConfig(tmp_path, max_frames=0)
    rng = np.random.default_rng(6)
    with RollingWriter(WriterConfig(tmp_path), classes=CLASSES, frame_shape=(8, 8)) as w:
        with pytest.raises(OutputError, match=r"shape \(16, 16, 12\)"):
            w.write(make_result(rng, 0))
        other = dataclasses.replace(make_result(rng, 0, shape=(8, 8)), classes=("a", "b", "c"))
        with pytest.raises(OutputError, match="classes"):
            w.write(other)
        assert w.frames_seen == 0
    with pytest.raises(OutputError, match="closed"):
        w.write(make_result(rng, 0, shape=(8, 8)))
    assert list(tmp_path.iterdir()) == []


def test_disk_full_guard(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    huge = shutil.disk_usage(tmp_path).free * 1000
    w = RollingWriter(
        WriterConfig(tmp_path, min_free_bytes=huge), classes=CLASSES, frame_shape=SHAPE
    )
    with pytest.raises(DiskFullError, match="min_free_bytes"):
        w.write(make_result(rng, 0))
    assert list(tmp_path.iterdir()) == []
    # The open file is finished cleanly before the error.
    w = RollingWriter(WriterConfig(tmp_path, min_free_bytes=1), classes=CLASSES, frame_shape=SHAPE)
    w.write(make_result(rng, 1))
    w.config = dataclasses.replace(w.config, min_free_bytes=huge)
    with pytest.raises(DiskFullError, match=r"run_w0_0000\.cxi"):
        w.flush()
    assert w.current_path is None and [p.name for p in tmp_path.iterdir()] == ["run_w0_0000.cxi"]
    assert len(read_run(tmp_path, "run").frames) == 16


def test_run_index_matches_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(8)
    run_dir = tmp_path / "out"
    for worker, trains in (("w1", range(0, 4)), ("w0", range(4, 9))):
        cfg = WriterConfig(run_dir, run="r", worker=worker, max_frames=6)
        write_run(cfg, [make_result(rng, t, model=f"m:{worker}") for t in trains])
    # A file still being written is not indexed.
    open_writer = RollingWriter(
        WriterConfig(run_dir, run="r", worker="w2"), classes=CLASSES, frame_shape=SHAPE
    )
    open_writer.write(make_result(rng, 99))
    open_writer.flush()
    path = build_run_index(run_dir, "r")
    assert path.name == index_name("r") == "r_index.h5"
    assert sorted(p.name for p in run_dir.iterdir() if p.suffix == ".tmp") == []
    t = read_run(run_dir, "r")
    assert 99 not in t.frames.train_id
    assert t.files[0].name.startswith("r_w0_")  # ordered by worker then sequence
    frames = np.concatenate([b for _, b in iter_kept_frames(run_dir, "r")])
    open_writer.close()

    moved = tmp_path / "moved"
    run_dir.rename(moved)
    monkeypatch.chdir(tmp_path)  # relative sources resolve against the index, not the cwd
    with h5py.File(moved / path.name, "r") as f:
        assert f["cxi_version"][()] == 160
        assert f[DATA_PATH].is_virtual and f[DATA_PATH].shape == frames.shape
        np.testing.assert_array_equal(f[DATA_LINK][:], frames)
        for name in (
            "train_id",
            "pulse_id",
            "label",
            "probabilities",
            "template_distance",
            "kept",
            "kept_index",
            "model",
            "file",
            "timestamp",
        ):
            np.testing.assert_array_equal(f[FRAMES_GROUP][name][:], getattr(t.frames, name))
        for name in ("train_id", "probabilities", "model", "file"):
            np.testing.assert_array_equal(f[KEPT_GROUP][name][:], getattr(t.kept, name))
        assert f[FRAMES_GROUP]["train_id"].is_virtual
        assert [m.decode() for m in f[MODELS_PATH][()]] == list(t.models) == ["m:w0", "m:w1"]
        assert [n.decode() for n in f["entry_1/files"][()]] == [p.name for p in t.files]
        np.testing.assert_array_equal(f["entry_1/file_kept"][()], t.file_kept)
    assert check_index(moved / path.name) == []

    one = build_run_index(moved, "r", worker="w1")
    assert one.name == "r_w1_index.h5"
    with h5py.File(one, "r") as f:
        assert set(f[FRAMES_GROUP]["train_id"][:]) == {0, 1, 2, 3}
    with pytest.raises(InputDataError, match="no files"):
        build_run_index(moved, "nothing")


def snapshot(version: int, level: float, warm: bool) -> BackgroundSnapshot:
    """A run-background snapshot (a map with a gradient, so that rows can be told apart)."""
    m = (np.linspace(0.5, 1.5, SHAPE[0] * SHAPE[1]).reshape(SHAPE) * level).astype(np.float32)
    m.setflags(write=False)
    return BackgroundSnapshot(m, version, float(m.mean()), warm, 10.0 * version)


def test_background_columns_and_maps_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(12)
    s1, s2, s3 = snapshot(1, 0.1, False), snapshot(2, 0.2, True), snapshot(5, 0.3, True)
    used = [s1, s1, s2, None, s3, s3, s3, s2]  # what each batch was classified with
    results = []
    for t, snap in enumerate(used):
        r = make_result(rng, t)
        r.background = snap
        results.append(r)
    w = write_run(WriterConfig(tmp_path, run="b", max_frames=9), results)
    assert len(w.files_closed) >= 3
    t = read_run(tmp_path, "b")
    rows = np.repeat(np.arange(len(used)), 16)
    f = t.frames
    level = np.array([np.nan if s is None else s.level for s in used], np.float32)
    np.testing.assert_array_equal(f.background_level, level[rows])
    warm = np.array([s is not None and s.warm for s in used])
    np.testing.assert_array_equal(f.background_warm, warm[rows])
    none = np.array([s is None for s in used])[rows]
    assert (f.background[none] == -1).all() and (f.background[~none] >= 0).all()
    version = np.array([-1 if s is None else s.version for s in used])[rows]
    np.testing.assert_array_equal(t.background_versions[f.background[~none]], version[~none])
    maps = t.background_maps(f.background[~none])
    by_version = {s.version: s.map for s in (s1, s2, s3)}
    for m, v in zip(maps, version[~none], strict=True):
        np.testing.assert_array_equal(m, by_version[v])
    # each file holds each snapshot it uses once, in the order of first use
    for i, path in enumerate(t.files):
        with h5py.File(path) as h5:
            versions = h5["entry_1/background/version"][()].tolist()
            assert len(set(versions)) == len(versions)
            assert h5["entry_1/background/maps"].shape == (len(versions), *SHAPE)
            lo, hi = t.file_frames[i], t.file_frames[i + 1]
            seen = [v for v in dict.fromkeys(version[lo:hi].tolist()) if v >= 0]
            assert versions == seen
    np.testing.assert_array_equal(t.kept.background, f.background[f.kept])
    np.testing.assert_array_equal(t.kept.background_level, f.background_level[f.kept])

    # the run index presents them as one run
    with h5py.File(build_run_index(tmp_path, "b")) as idx:
        for name in ("background", "background_level", "background_warm"):
            np.testing.assert_array_equal(idx[FRAMES_GROUP][name][:], getattr(f, name))
            np.testing.assert_array_equal(idx[KEPT_GROUP][name][:], getattr(t.kept, name))
        np.testing.assert_array_equal(idx["entry_1/background/maps"][:], t.background_maps())
        np.testing.assert_array_equal(idx["entry_1/background/version"][:], t.background_versions)

    # files written before the run background still read: NaN, False, -1 and no maps
    for path in w.files_closed:
        with h5py.File(path, "a") as h5:
            del h5["entry_1/background"]
            for group in (FRAMES_GROUP, KEPT_GROUP):
                for name in ("background", "background_level", "background_warm"):
                    del h5[group][name]
    old = read_run(tmp_path, "b")
    np.testing.assert_array_equal(old.frames.label, f.label)
    assert np.isnan(old.frames.background_level).all() and not old.frames.background_warm.any()
    assert (old.frames.background == -1).all() and (old.kept.background == -1).all()
    assert len(old.background_versions) == 0 and old.background_maps().shape == (0, *SHAPE)
    with h5py.File(build_run_index(tmp_path, "b")) as idx:
        assert (idx[FRAMES_GROUP]["background"][:] == -1).all()
        assert idx["entry_1/background/maps"].shape == (0, *SHAPE)


CHILD = r"""
import sys
from pathlib import Path
import numpy as np
from streamer.types import FrameBatch, ResultBatch
from streamer.writer import RollingWriter, WriterConfig

CLASSES = ("empty", "single", "multiple")
cfg = WriterConfig(Path(sys.argv[1]), run="k", max_frames=20, flush_every_s=3600.0)
w = RollingWriter(cfg, classes=CLASSES, frame_shape=(16, 12))
for line in sys.stdin:
    cmd, *arg = line.split()
    if cmd == "write":
        t, n = int(arg[0]), int(arg[1])
        pulse = np.arange(n, dtype=np.uint32)
        frames = (t * 1000.0 + pulse[:, None, None] + np.zeros((n, 16, 12))).astype(np.float32)
        probs = np.full((n, 3), 1 / 3, np.float32)
        batch = FrameBatch(frames, np.full(n, t, np.uint64), pulse, np.zeros(n), np.zeros(n))
        w.write(ResultBatch(batch, probs, np.zeros(n, np.int16), np.zeros(n, np.float32),
                            np.ones(n, bool), "m:1", CLASSES))
    elif cmd == "flush":
        w.flush()
    print("ok", w.current_path, flush=True)
"""


class Child:
    """A writer in a subprocess, driven line by line over stdin."""

    def __init__(self, tmp_path: Path) -> None:
        script = tmp_path / "child.py"
        script.write_text(CHILD)
        self.proc = subprocess.Popen(
            [sys.executable, str(script), str(tmp_path / "out")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def send(self, line: str) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 60)
        assert ready, f"child did not answer {line!r}"
        answer = self.proc.stdout.readline()
        assert answer.startswith("ok"), answer
        return answer.split()[1]

    def kill(self) -> None:
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)


def check_frames(data: np.ndarray, train: np.ndarray, pulse: np.ndarray) -> None:
    expected = train.astype(np.float32) * 1000 + pulse
    np.testing.assert_array_equal(data, np.broadcast_to(expected[:, None, None], data.shape))


def test_swmr_reader_and_killed_writer(tmp_path: Path) -> None:
    child = Child(tmp_path)
    try:
        child.send("write 0 8")
        child.send("write 1 8")
        part = Path(child.send("write 2 8"))  # 20 frames finished file 0000, 4 went to 0001
        assert part.name == "k_w0_0001.cxi.part"
        child.send("flush")
        with h5py.File(part, "r", libver="latest", swmr=True) as f:
            data = f[DATA_PATH]
            assert data.shape[0] == 4
            child.send("write 3 8")
            child.send("flush")
            data.refresh()
            assert data.shape[0] == 12
            table = f[KEPT_GROUP]
            for name in ("train_id", "pulse_id"):
                table[name].refresh()
            check_frames(data[:], table["train_id"][:], table["pulse_id"][:])
        live = read_run(tmp_path / "out", "k", include_part=True)
        assert len(live.frames) == 32
        child.send("write 4 4")  # written, not flushed
    finally:
        child.kill()
    assert child.proc.returncode == -signal.SIGKILL

    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["k_w0_0000.cxi", "k_w0_0001.cxi.part"]
    with h5py.File(out / "k_w0_0000.cxi", "r") as f:  # finished file intact
        assert f[DATA_PATH].shape[0] == 20
        check_frames(f[DATA_PATH][:], f[KEPT_GROUP]["train_id"][:], f[KEPT_GROUP]["pulse_id"][:])
    t = read_run(out, "k", include_part=True)
    assert 32 <= len(t.frames) <= 36 and len(t.kept) == len(t.frames)
    frames = np.concatenate([b for _, b in iter_kept_frames(out, "k", include_part=True)])
    check_frames(frames, t.kept.train_id, t.kept.pulse_id)
    assert len(read_run(out, "k").frames) == 20  # finished files only

    # A restarted writer continues after the stale .part and never touches it.
    size = (out / "k_w0_0001.cxi.part").stat().st_size
    rng = np.random.default_rng(9)
    w = write_run(WriterConfig(out, run="k"), [make_result(rng, 5)])
    assert [p.name for p in w.files_closed] == ["k_w0_0002.cxi"]
    assert (out / "k_w0_0001.cxi.part").stat().st_size == size


def test_unreadable_files(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    write_run(WriterConfig(tmp_path), [make_result(rng, 0)])
    (tmp_path / "run_w0_0001.cxi.part").write_bytes(b"not hdf5")  # a writer died at once
    t = read_run(tmp_path, "run", include_part=True)
    assert [p.name for p in t.files] == ["run_w0_0000.cxi"]
    np.testing.assert_array_equal(t.train_id, t.frames.train_id)
    assert len(list(iter_kept_frames(tmp_path, "run", include_part=True))) == 1
    (tmp_path / "run_w0_0002.cxi").write_bytes(b"not hdf5")
    with pytest.raises(InputDataError, match=r"run_w0_0002\.cxi"):
        read_run(tmp_path, "run")
    with pytest.raises(InputDataError, match=r"run_w0_0002\.cxi"):
        read_kept_frames(tmp_path, "run", [0])


def test_unstorable_attribute(tmp_path: Path) -> None:
    w = RollingWriter(
        WriterConfig(tmp_path), classes=CLASSES, frame_shape=SHAPE, attrs={"bad": None}
    )
    with pytest.raises(ConfigError, match="'bad'"):
        w.write(make_result(np.random.default_rng(11), 0))
    assert list(tmp_path.iterdir()) == []
