"""Tests of trainer.ingest: frames from HDF5/CXI runs, labels files, labelled frames."""

from __future__ import annotations

import json
import os
import re

import h5py
import numpy as np
import pytest

from streamer.errors import ConfigError, InputDataError, OutputError
from trainer.ingest import (
    DEFAULT_CLASS_ORDER,
    LabelTable,
    iter_frames,
    list_frame_datasets,
    load_labelled,
    match_run,
    merge_labels,
    open_run,
    open_runs,
    read_frames,
    read_labels,
    write_labels,
)

SHAPE = (6, 5)


def frames_of(n: int, seed: int, dtype: str) -> np.ndarray:
    """Distinct values per frame that every dtype holds exactly."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 1000, size=(n, *SHAPE)).astype(dtype)


def write_h5(path, data, dataset="data", **kw):
    with h5py.File(path, "w") as f:
        f.create_dataset(dataset, data=data, **kw)
    return path


def table(rows, **extra) -> LabelTable:
    run, index, label = zip(*rows, strict=True) if rows else ((), (), ())
    return LabelTable(np.array(run, str), np.array(index, np.int64), np.array(label, str), extra)


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
    import trainer.ingest as ingest

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
    with pytest.raises(InputDataError, match="nope.h5: run file does not exist"):
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
        with pytest.raises(InputDataError, match=r"bad\.h5:data: cannot read frames 2\.\.3"):
            read_frames(src, [3])


def test_indices_out_of_range(tmp_path):
    path = write_h5(tmp_path / "r.h5", frames_of(5, 6, "uint16"))
    with open_run(path, "data") as src:
        with pytest.raises(InputDataError, match=r"frame index 5 is out of range.*5 frames"):
            read_frames(src, [0, 5])
        with pytest.raises(InputDataError, match="frame index -1 is out of range"):
            read_frames(src, [-1])
        with pytest.raises(InputDataError, match="frames 2..5 are not within"):
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
