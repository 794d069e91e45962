"""Tests of hitstream.labels: labels files (CSV/JSON/HDF5), LabelTable, merge, write."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from hitstream.errors import InputDataError, OutputError
from hitstream.labels import (
    DEFAULT_CLASS_ORDER,
    LabelTable,
    merge_labels,
    read_labels,
    write_labels,
)
from tests.ingest_helpers import frames_of, table, write_h5
from trainer.data.ingest import open_run

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
    from hitstream.simulate import SIM_CLASSES

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
