"""Tests of trainer.data.ingest (frames from HDF5/CXI runs, labelled frames) and
hitstream.h5input."""

from __future__ import annotations

import json
import os
import re

import h5py
import numpy as np
import pytest

from hitstream.errors import ConfigError, InputDataError
from hitstream.h5input import list_frame_datasets
from hitstream.labels import DEFAULT_CLASS_ORDER, LabelTable, read_labels
from tests.ingest_helpers import SHAPE, frames_of, table, write_h5
from trainer.data.ingest import (
    iter_frames,
    load_labelled,
    match_run,
    open_run,
    open_runs,
    read_frames,
)

# --- runs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "layout",
    [{}, {"chunks": (1, *SHAPE)}, {"chunks": (4, *SHAPE), "compression": "gzip"}],
    ids=["contiguous", "chunk1", "chunk4-gzip"],
)
@pytest.mark.parametrize("dtype", ["uint16", "int32", "float64", "float32", "float16"])
def test_read_frames_any_order_and_dtype(tmp_path, dtype, layout):
    data = frames_of(23, 1, dtype)
    path = write_h5(tmp_path / "r.h5", data, **layout)
    want = [22, 0, 5, 5, 9, 3, 4, 17, 16, 0, 8]
    with open_run(path, "data") as src:
        assert (src.shape, src.dtype, len(src), src.name) == ((23, *SHAPE), data.dtype, 23, "r.h5")
        got = read_frames(src, want)
        assert got.dtype == np.float32 and got.shape == (len(want), *SHAPE)
        np.testing.assert_array_equal(got, data[want].astype(np.float32))
        np.testing.assert_array_equal(read_frames(src, np.arange(23)), data.astype(np.float32))
        assert read_frames(src, []).shape == (0, *SHAPE)
        blocks = list(iter_frames(src, chunk=10))
        assert [a for a, _ in blocks] == [0, 10, 20]
        assert [len(b) for _, b in blocks] == [10, 10, 3]
        np.testing.assert_array_equal(np.concatenate([b for _, b in blocks]), data)
        part = list(iter_frames(src, chunk=4, start=3, stop=9))
        np.testing.assert_array_equal(np.concatenate([b for _, b in part]), data[3:9])
    assert src.closed


def test_read_frames_dense_and_sparse_blocks(tmp_path, monkeypatch):
    """Small read blocks: many segments, gaps, repeats, reversed order."""
    import trainer.data.ingest as ingest

    data = frames_of(200, 2, "float32")
    path = write_h5(tmp_path / "r.h5", data, chunks=(7, *SHAPE))
    monkeypatch.setattr(ingest, "READ_BLOCK_BYTES", 13 * 4 * SHAPE[0] * SHAPE[1])
    rng = np.random.default_rng(0)
    with open_run(path, "data") as src:
        for want in (
            np.arange(200)[::-1],
            rng.integers(0, 200, 300),
            np.r_[np.arange(10, 60), np.arange(100, 103), np.arange(30, 40)],
            np.sort(rng.choice(200, 40, replace=False)),
        ):
            np.testing.assert_array_equal(read_frames(src, want), data[want])


def test_cxi_soft_link_and_attrs(tmp_path):
    data = frames_of(4, 3, "uint16")
    path = tmp_path / "r0007.cxi"
    with h5py.File(path, "w") as f:
        d = f.create_dataset("entry_1/instrument_1/detector_1/data", data=data)
        d.attrs["geometry"] = json.dumps({"shape": list(SHAPE)})
        f["entry_1/data_1/data"] = h5py.SoftLink("/entry_1/instrument_1/detector_1/data")
    with open_run(path, "/entry_1/data_1/data", frame_shape=SHAPE) as src:
        np.testing.assert_array_equal(read_frames(src, [1]), data[[1]])
        assert json.loads(src.attrs["geometry"]) == {"shape": list(SHAPE)}
    assert list_frame_datasets(path) == ["entry_1/instrument_1/detector_1/data (4, 6, 5) uint16"]


def test_wrong_dataset_lists_3d_datasets(tmp_path):
    path = tmp_path / "amo.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("sel_p/patterns", shape=(30, 26, 25), dtype="f4")
        f.create_dataset("sel_p/ids", shape=(30,), dtype="i4")
        f.create_dataset("raw", shape=(3, 2, 2), dtype="u2")
    msg = r"amo\.h5: no dataset 'data'; 3-D datasets in the file: raw \(3, 2, 2\) uint16, "
    msg += re.escape("sel_p/patterns (30, 26, 25) float32")
    with pytest.raises(InputDataError, match=msg):
        open_run(path, "data")
    with pytest.raises(InputDataError, match="'sel_p' is a group, not a dataset; 3-D datasets"):
        open_run(path, "sel_p")
    with pytest.raises(InputDataError, match=r"'sel_p/ids' has shape \(30,\) \(1-D\)"):
        open_run(path, "sel_p/ids")
    with pytest.raises(InputDataError, match=r"frames of \(26, 25\) pixels, expected \(6, 5\)"):
        open_run(path, "sel_p/patterns", frame_shape=SHAPE)


def test_non_numeric_dtypes(tmp_path):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("text", data=np.array([[[b"a"]]]))
        f.create_dataset("cplx", shape=(2, 2, 2), dtype="c8")
        f.create_dataset("rec", shape=(2, 2, 2), dtype=[("a", "f4"), ("b", "i2")])
    for name in ("text", "cplx", "rec"):
        with pytest.raises(InputDataError, match=f"'{name}' has dtype .*not an integer or float"):
            open_run(path, name)


def test_unreadable_files(tmp_path):
    with pytest.raises(InputDataError, match=r"nope\.h5: run file does not exist"):
        open_run(tmp_path / "nope.h5", "data")
    with pytest.raises(InputDataError, match="run file is not a file"):
        open_run(tmp_path, "data")
    text = tmp_path / "notes.h5"
    text.write_text("run,index,class\n")
    with pytest.raises(InputDataError, match=r"notes\.h5: not an HDF5 file \(no HDF5 signature\)"):
        open_run(text, "data")
    whole = write_h5(tmp_path / "whole.h5", frames_of(50, 4, "float32"))
    cut = tmp_path / "cut.h5"
    raw = whole.read_bytes()
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputDataError, match=r"cut\.h5: truncated HDF5 file \(\d+ bytes on disk"):
        open_run(cut, "data")


def test_damaged_chunk_is_reported_on_read(tmp_path):
    data = frames_of(8, 5, "float32") + np.linspace(0, 1, SHAPE[1], dtype="f4")
    path = write_h5(tmp_path / "bad.h5", data, chunks=(2, *SHAPE), compression="gzip")
    with h5py.File(path, "r") as f:
        info = f["data"].id.get_chunk_info(1)  # frames 2, 3
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset)
        fh.write(b"\xff" * info.size)
    with open_run(path, "data") as src:
        np.testing.assert_array_equal(read_frames(src, [0, 1, 4]), data[[0, 1, 4]])
        with pytest.raises(InputDataError, match=r"bad\.h5:data: cannot read frames 3\.\.3"):
            read_frames(src, [3])


def test_indices_out_of_range(tmp_path):
    path = write_h5(tmp_path / "r.h5", frames_of(5, 6, "uint16"))
    with open_run(path, "data") as src:
        with pytest.raises(InputDataError, match=r"frame index 5 is out of range.*5 frames"):
            read_frames(src, [0, 5])
        with pytest.raises(InputDataError, match="frame index -1 is out of range"):
            read_frames(src, [-1])
        with pytest.raises(InputDataError, match=r"frames 2\.\.5 are not within"):
            list(iter_frames(src, start=2, stop=6))
        with pytest.raises(ConfigError, match="chunk must be >= 1"):
            list(iter_frames(src, chunk=0))
    with pytest.raises(InputDataError, match="run is closed"):
        read_frames(src, [0])


def test_open_runs_checks_shapes_and_duplicates(tmp_path):
    a = write_h5(tmp_path / "a.h5", frames_of(3, 1, "uint16"))
    b = write_h5(tmp_path / "b.h5", np.zeros((2, 4, 4), "f4"))
    c = write_h5(tmp_path / "c.h5", frames_of(4, 2, "int32"))
    with open_runs([(a, "data"), (c, "/data")]) as group:
        assert len(group) == 2 and group.n_frames == 7 and group.frame_shape == SHAPE
        first = group[0]
    assert first.closed
    with pytest.raises(InputDataError, match=r"b\.h5:data has frames of \(4, 4\) pixels but"):
        open_runs([(a, "data"), (b, "data")])
    with pytest.raises(InputDataError, match=r"a\.h5:/data is given twice"):
        open_runs([(a, "data"), (tmp_path / "." / "a.h5", "/data")])


# --- labelled frames ------------------------------------------------------------------------


@pytest.fixture
def three_runs(tmp_path):
    data = {
        "r1.h5": frames_of(10, 1, "uint16"),
        "r2.cxi": frames_of(7, 2, "float64"),
        "r3.h5": frames_of(12, 3, "int32"),
    }
    runs = []
    for k, (name, arr) in enumerate(data.items()):
        dataset = "entry_1/data_1/data" if name.endswith(".cxi") else "data"
        write_h5(tmp_path / name, arr, dataset, chunks=(k + 1, *SHAPE))
        runs.append((tmp_path / name, dataset))
    return runs, data


def test_load_labelled_several_runs(three_runs, capsys):
    runs, data = three_runs
    labels = table(
        [
            ("r3.h5", 11, "single"),
            ("r1.h5", 4, "empty"),
            ("r2", 6, "junk"),  # by stem
            ("r3.h5", 0, "multiple"),
            ("r1.h5", 2, "single"),
            (str(runs[1][0]), 1, "single"),  # by full path
        ],
        photons=np.arange(6.0),
    )
    with pytest.raises(InputDataError, match=r"labels name run .* both as 'r2' and"):
        load_labelled(runs, labels)
    labels = labels.take(np.arange(5))
    got = load_labelled(runs, labels, progress=True)
    assert "read labelled frames" in capsys.readouterr().err
    assert got.classes == ("single", "multiple", "empty", "junk")
    assert got.run.tolist() == ["r1.h5", "r1.h5", "r2", "r3.h5", "r3.h5"]
    assert got.index.tolist() == [2, 4, 6, 0, 11]
    assert got.y.tolist() == [0, 2, 3, 1, 0]
    assert got.extra["photons"].tolist() == [4.0, 1.0, 2.0, 3.0, 0.0]
    want = np.stack(
        [data[{"r2": "r2.cxi"}.get(r, r)][i] for r, i in zip(got.run, got.index, strict=True)]
    )
    assert got.frames.dtype == np.float32 and got.frames.shape == (5, *SHAPE)
    np.testing.assert_array_equal(got.frames, want)
    assert got.counts() == {"single": 2, "multiple": 1, "empty": 1, "junk": 1}
    assert got.sources["r2"].dtype == np.float64 and got.sources["r2"].path == runs[1][0]
    order = ("empty", "junk", "single", "multiple", "unused")
    assert load_labelled(runs, labels, classes=order).y.tolist() == [2, 0, 1, 3, 2]


def test_load_labelled_errors(three_runs, tmp_path):
    runs, _ = three_runs
    ok = table([("r1.h5", 0, "single")])
    with pytest.raises(InputDataError, match=r"classes 'junk' \(1 labels\) not in the classes"):
        load_labelled(runs, table([("r1.h5", 0, "junk")]), classes=DEFAULT_CLASS_ORDER)
    with pytest.raises(ConfigError, match="duplicates"):
        load_labelled(runs, ok, classes=["single", "single"])
    with pytest.raises(InputDataError, match=r"labels name run\(s\) 'r9\.h5' \(2 labels"):
        load_labelled(runs, table([("r9.h5", 0, "single"), ("r9.h5", 1, "single")]))
    with pytest.raises(
        InputDataError,
        match=r"labels for run 'r3\.h5' name frame 12, but .*r3\.h5:data has 12 frames",
    ):
        load_labelled(runs, table([("r3.h5", 12, "single"), ("r3.h5", 2, "single")]))
    other = tmp_path / "sub"
    other.mkdir()
    twin = write_h5(other / "r1.h5", frames_of(2, 9, "uint16"))
    with pytest.raises(InputDataError, match=r"labels run 'r1\.h5' is ambiguous: it matches"):
        load_labelled([*runs, (twin, "data")], ok)
    assert len(load_labelled([*runs, (twin, "data")], table([(str(twin), 1, "x")]))) == 1
    with pytest.raises(InputDataError, match="no labels"):
        load_labelled(runs, LabelTable.empty())


def test_match_run_rule(tmp_path):
    paths = [tmp_path / "a" / "r7.h5", tmp_path / "r7.cxi", tmp_path / "r8.h5"]
    assert match_run("r7.h5", paths) == 0
    assert match_run("r7.cxi", paths) == 1
    assert match_run(str(paths[1]), paths) == 1
    assert match_run("r8", paths) == 2
    assert match_run("r9", paths) is None
    with pytest.raises(InputDataError, match="'r7' is ambiguous"):
        match_run("r7", paths)


def test_simulated_run_and_labels(tmp_path):
    from hitstream.simulate import simulate_run, write_run

    run = simulate_run(12, seed=3)
    path = write_run(tmp_path / "sim.h5", run, chunk=5)
    labels = read_labels(tmp_path / "sim.labels.csv")
    want = {c: n for c, n in run.counts().items() if n}
    assert labels.counts() == want and labels.runs() == ("sim.h5",)
    assert {"n_particles", "photons", "subclass"} <= set(labels.extra)
    got = load_labelled([(path, "data")], labels)
    assert got.classes == tuple(want)
    np.testing.assert_array_equal(got.frames, run.frames)
    names = [run.classes[k] for k in run.labels]
    assert [got.classes[k] for k in got.y] == names
    assert got.extra["n_particles"].tolist() == run.params["n_particles"].tolist()


def test_big_read_shows_progress(tmp_path, capsys):
    n = 1100
    path = write_h5(tmp_path / "big.h5", np.ones((n, 2, 2), "u1"), chunks=(64, 2, 2))
    labels = table([("big.h5", i, "empty") for i in range(n)])
    got = load_labelled([(path, "data")], labels)
    assert got.frames.shape == (n, 2, 2) and float(got.frames.sum()) == 4 * n
    err = capsys.readouterr().err
    assert "1100/1100" in err
    with open_run(path, "data") as src:
        read_frames(src, np.arange(10))
    assert capsys.readouterr().err == ""
    assert os.listdir(tmp_path) == ["big.h5"]
