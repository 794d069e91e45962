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


SIM_CSV = """run,index,class,n_particles,radius_nm,subclass
r1.h5,0,single,1,31.50,
r1.h5,1,other,0,0.00,rod
r1.h5,2,empty,0,0.00,
"""


def test_csv_columns_and_extras(tmp_path):
    p = tmp_path / "l.csv"
    p.write_text(SIM_CSV)
    t = read_labels(p)
    assert t.run.tolist() == ["r1.h5"] * 3 and t.index.dtype == np.int64
    assert t.index.tolist() == [0, 1, 2] and t.label.tolist() == ["single", "other", "empty"]
    assert list(t.extra) == ["n_particles", "radius_nm", "subclass"]
    assert t.extra["n_particles"].dtype == np.int64
    assert t.extra["radius_nm"].tolist() == [31.5, 0.0, 0.0]
    assert t.extra["subclass"].tolist() == ["", "rod", ""]
    # any column order, BOM, blank lines, quoting, spaces, a missing float cell
    p.write_bytes(
        '\ufeffclass, Index ,run,score\n"single",4,"a, b.h5",0.5\n\n empty ,2,c.h5,\n'.encode()
    )
    t = read_labels(p)
    assert t.run.tolist() == ["a, b.h5", "c.h5"] and t.label.tolist() == ["single", "empty"]
    assert t.index.tolist() == [4, 2]
    assert t.extra["score"][0] == 0.5 and np.isnan(t.extra["score"][1])
    p.write_text("run,index,class,label\na,1,empty,was single\n")
    assert read_labels(p).extra["label"].tolist() == ["was single"]


def test_label_table_methods():
    t = table([("b", 1, "zeta"), ("a", 0, "empty"), ("a", 3, "single"), ("b", 0, "alpha")])
    t = merge_labels(t, table([("a", 9, "single")]))
    assert t.classes() == ("single", "empty", "alpha", "zeta")
    assert t.counts() == {"single": 2, "empty": 1, "alpha": 1, "zeta": 1}
    assert t.runs() == ("b", "a")
    assert t.select(run="a").index.tolist() == [0, 3, 9]
    assert t.select(run=["b"], label=("zeta", "single")).index.tolist() == [1]
    assert len(t.select(run="zzz")) == 0 and LabelTable.empty().classes() == ()
    with pytest.raises(ValueError, match="duplicate"):
        table([("a", 0, "single"), ("a", 0, "single")])
    with pytest.raises(ValueError, match="negative"):
        table([("a", -1, "single")])


def test_default_class_order_is_the_simulators():
    from trainer.simulate import SIM_CLASSES

    assert DEFAULT_CLASS_ORDER == SIM_CLASSES


@pytest.mark.parametrize("suffix", [".csv", ".json", ".h5"])
def test_round_trip(tmp_path, suffix):
    t = table(
        [("r1.h5", 3, "single"), ("r 2.cxi", 0, "other"), ("r1.h5", 1, 'ñ,"q"')],
        n=np.array([1, 0, 2], np.int64),
        radius=np.array([31.25, np.nan, 1e-7]),
        kind=np.array(["", "rod", "x"], str),
    )
    path = write_labels(tmp_path / f"labels{suffix}", t)
    back = read_labels(path)
    for name in ("run", "index", "label"):
        np.testing.assert_array_equal(getattr(back, name), getattr(t, name))
    assert list(back.extra) == ["n", "radius", "kind"]
    for k, v in t.extra.items():
        assert back.extra[k].dtype.kind == v.dtype.kind
        np.testing.assert_array_equal(back.extra[k], v)
    assert [f.name for f in tmp_path.iterdir()] == [f"labels{suffix}"]  # no temp file left
    # overwrite in place (atomic rename), keeps a valid file
    write_labels(path, t.select(run="r1.h5"))
    assert len(read_labels(path)) == 2


def test_json_forms(tmp_path):
    p = tmp_path / "l.json"
    p.write_text(json.dumps([{"run": 7, "index": 2, "class": "single", "note": "x"}]))
    t = read_labels(p)
    assert (t.run.tolist(), t.index.tolist(), t.extra["note"].tolist()) == (["7"], [2], ["x"])
    p.write_text(json.dumps({"labels": [{"run": "a", "index": "3", "class": "empty"}]}))
    assert read_labels(p).index.tolist() == [3]
    sniffed = tmp_path / "labels.txt"  # no known suffix: sniffed
    sniffed.write_text(p.read_text())
    assert read_labels(sniffed).label.tolist() == ["empty"]
    sniffed.write_text("run,index,class\na,1,other\n")
    assert read_labels(sniffed).label.tolist() == ["other"]


def test_hdf5_labels_forms(tmp_path):
    text = h5py.string_dtype()
    p = tmp_path / "labels.h5"
    with h5py.File(p, "w") as f:
        g = f.create_group("labels_v1")
        g.create_dataset("run", data=["a.h5", "b.h5"], dtype=text)
        g.create_dataset("index", data=np.array([4, 0], "u4"))
        g.create_dataset("class", data=np.array([b"single", b"empty"]))  # fixed-length bytes
        g.create_dataset("score", data=[0.5, 0.25])
        g.create_dataset("other_length", data=[1, 2, 3])
    t = read_labels(p, group="labels_v1")
    assert t.run.tolist() == ["a.h5", "b.h5"] and t.label.tolist() == ["single", "empty"]
    assert list(t.extra) == ["score"] and t.extra["score"].tolist() == [0.5, 0.25]
    # one dataset aligned with a run's frames: names ("" = unlabelled) ...
    q = tmp_path / "r0005.cxi"
    with h5py.File(q, "w") as f:
        f.create_dataset("labels", data=["single", "", "other"], dtype=text)
        r = f.create_group("entry_1/result_1")  # ... or integer classes, as streamer writes
        r.attrs["classes"] = ["single", "multiple", "empty", "other"]
        r.attrs["run"] = "r0005"
        r.create_dataset("label", data=np.array([2, -1, 0, 3], "i2"))
    t = read_labels(q)
    assert (t.run.tolist(), t.index.tolist()) == (["r0005.cxi"] * 2, [0, 2])
    assert t.label.tolist() == ["single", "other"]
    t = read_labels(q, group="/entry_1/result_1")
    assert (t.run.tolist(), t.index.tolist()) == (["r0005"] * 3, [0, 2, 3])
    assert t.label.tolist() == ["empty", "single", "other"]


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("", r"l\.csv: empty labels file"),
        ("run,frame,class\na,1,x\n", r"l\.csv: line 1: header lacks column\(s\) index"),
        ("run,index\n", r"l\.csv: line 1: header lacks column\(s\) class"),
        ("run,index,class\na,1,x\nb,-2,x\n", r"l\.csv: line 3: negative index -2"),
        ("run,index,class\na,1.5,x\n", r"l\.csv: line 2: index '1\.5' is not an integer"),
        ("run,index,class\na,,x\n", r"l\.csv: line 2: index '' is not an integer"),
        ("run,index,class\na,1, \n", r"l\.csv: line 2: empty class for run 'a' index 1"),
        ("run,index,class\n,1,x\n", r"l\.csv: line 2: empty run"),
        ("run,index,class\na,1\n", r"l\.csv: line 2: 2 fields, too few"),
        ("run,index,class\na,1,x,y\n", r"l\.csv: line 2: 4 fields, header has 3"),
        ("run,run,index,class\n", r"duplicate column\(s\) \['run'\]"),
        (
            "run,index,class\na,1,single\nb,1,empty\na,1,single\na,1,empty\n",
            r"l\.csv: line 5: run 'a' index 1 is labelled 'empty' here but 'single' at line 2",
        ),
    ],
)
def test_csv_errors(tmp_path, text, match):
    p = tmp_path / "l.csv"
    p.write_text(text)
    with pytest.raises(InputDataError, match=match):
        read_labels(p)


@pytest.mark.parametrize(
    ("doc", "match"),
    [
        ("{not json", r"l\.json: line 1: invalid JSON"),
        ('{"rows": []}', "JSON object without a 'labels' list"),
        ('"x"', "JSON must be a list"),
        ('[{"run": "a", "index": 1}]', r"l\.json: entry 0: lacks key\(s\) class"),
        ('[{"run": "a", "index": 1, "class": "x"}, 3]', "entry 1: expected an object"),
        ('[{"run": "a", "index": 2.0, "class": "x"}]', "entry 0: index 2.0 is not an integer"),
        ('[{"run": "a", "index": true, "class": "x"}]', "entry 0: index True is not an integer"),
        ('[{"run": "a", "index": -1, "class": "x"}]', "entry 0: negative index -1"),
        ('{"labels": [{"run": "a", "index": 1, "class": ""}]}', "entry 0: empty class"),
        ('[{"run": "a", "index": 0, "class": "x", "m": [1]}]', "entry 0: value of 'm' must"),
        (
            '[{"run": "a", "index": 0, "class": "x"}, {"run": "a", "index": 0, "class": "y"}]',
            "entry 1: run 'a' index 0 is labelled 'y' here but 'x' at entry 0",
        ),
    ],
)
def test_json_errors(tmp_path, doc, match):
    p = tmp_path / "l.json"
    p.write_text(doc)
    with pytest.raises(InputDataError, match=match):
        read_labels(p)


def test_hdf5_label_errors(tmp_path):
    p = tmp_path / "l.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("run", data=["a"], dtype=h5py.string_dtype())
        f.create_dataset("index", data=[-1])
        f.create_dataset("class", data=["x"], dtype=h5py.string_dtype())
        g = f.create_group("g")
        g.create_dataset("run", data=["a"], dtype=h5py.string_dtype())
        g.create_dataset("index", data=[0.5])
        f.create_group("empty_group")
        f.create_dataset("ints/labels", data=[0, 1])
        f.create_dataset("bad/labels", data=[0, 5]).attrs["classes"] = '["x", "y"]'
    with pytest.raises(InputDataError, match=r"l\.h5: row 0 of /: negative index -1"):
        read_labels(p)
    with pytest.raises(InputDataError, match=r"group '/g' lacks dataset\(s\) class"):
        read_labels(p, group="g")
    with pytest.raises(InputDataError, match="has neither datasets run, index, class nor"):
        read_labels(p, group="empty_group")
    with pytest.raises(InputDataError, match="no group 'nope'"):
        read_labels(p, group="nope")
    with pytest.raises(InputDataError, match="integer labels need a 'classes' attribute"):
        read_labels(p, group="ints")
    with pytest.raises(InputDataError, match=r"/bad/labels\[1\]: class 5 is not in 0\.\.1"):
        read_labels(p, group="bad")


def test_unreadable_label_files(tmp_path):
    with pytest.raises(InputDataError, match=r"x\.csv: labels file does not exist"):
        read_labels(tmp_path / "x.csv")
    bad = tmp_path / "x.csv"
    bad.write_bytes(b"run,index,class\na,1,\xff\xfe\n")
    with pytest.raises(InputDataError, match=r"x\.csv: labels file is not UTF-8"):
        read_labels(bad)
    fake = tmp_path / "x.h5"
    fake.write_text("run,index,class\n")
    with pytest.raises(InputDataError, match=r"x\.h5: not an HDF5 file"):
        read_labels(fake)


def test_write_labels_errors(tmp_path):
    t = table([("a", 0, "single")])
    with pytest.raises(OutputError, match=r"must end in \.csv, \.json or \.h5"):
        write_labels(tmp_path / "l.txt", t)
    with pytest.raises(OutputError, match="does not exist"):
        write_labels(tmp_path / "no" / "l.csv", t)
    run = write_h5(tmp_path / "run.h5", frames_of(2, 1, "uint16"))
    with pytest.raises(OutputError, match=r"run\.h5 holds frames; write labels to a file"):
        write_labels(run, t)
    with open_run(run, "data") as src:
        assert src.n_frames == 2


def test_merge_labels_new_overrides_old():
    old = table(
        [("a", 0, "single"), ("a", 1, "empty"), ("b", 5, "other")],
        photons=np.array([10.0, 20.0, 30.0]),
        n=np.array([1, 0, 2]),
    )
    new = table(
        [("b", 5, "multiple"), ("c", 2, "single"), ("a", 0, "single")],
        note=np.array(["relabelled", "new", "same"], str),
        n=np.array([3, 1, 1]),
    )
    m = merge_labels(old, new)
    assert list(zip(m.run.tolist(), m.index.tolist(), m.label.tolist(), strict=True)) == [
        ("a", 0, "single"),
        ("a", 1, "empty"),
        ("b", 5, "multiple"),
        ("c", 2, "single"),
    ]
    assert m.extra["n"].tolist() == [1, 0, 3, 1] and m.extra["n"].dtype == np.int64
    np.testing.assert_array_equal(m.extra["photons"], [10.0, 20.0, 30.0, np.nan])
    assert m.extra["note"].tolist() == ["same", "", "relabelled", "new"]
    assert merge_labels(m, LabelTable.empty()).label.tolist() == m.label.tolist()
    assert len(merge_labels(LabelTable.empty(), new)) == 3
    # resume: merged, written, read back, merged again
    again = merge_labels(m, table([("a", 1, "other")]))
    assert again.select(run="a").label.tolist() == ["single", "other"]
    assert len(old) == 3 and old.label.tolist()[2] == "other"  # inputs unchanged


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
    from trainer.simulate import simulate_run, write_run

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
