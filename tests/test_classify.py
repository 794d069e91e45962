"""``streamer classify``: archived runs on a real local Dask cluster (127.0.0.1, worker
processes), real HDF5 files and real onnxruntime sessions; a worker and the whole job
killed mid-way; labels identical to the live streamer's on the same frames."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import h5py
import numpy as np
import pytest

from hitstream.errors import ConfigError, InputDataError
from streamer.classify import ClassifyConfig, classify_runs
from streamer.classify_chunk import id_key
from streamer.classify_plan import RunState
from streamer.config import load_config
from streamer.pipeline import Pipeline
from streamer.readback import list_run_files, read_run
from streamer.replay import ReplayConfig, ReplayServer
from streamer.run_index import check_index
from tests.tiny_bundle import make_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]
K = 10  # frames per train


def make_run(path: Path, n: int, seed: int) -> Path:
    """Poisson frames on a flat background: about half bright ('single' for the tiny model)."""
    rng = np.random.default_rng(seed)
    lam = rng.choice([0.02, 0.03, 0.08], size=(n, 1, 1))
    with h5py.File(path, "w") as f:
        f.create_dataset(
            "data", data=rng.poisson(lam, size=(n, 260, 257)).astype(np.float32),
            chunks=(1, 260, 257),
        )  # fmt: skip
    return path


def wait_until(cond: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def done_chunks(out: Path) -> int:
    return sum(
        1 for m in (out / ".classify").glob("*/c*.json") if '"state": "done"' in m.read_text()
    )


def check_run(out: Path, run: str, n: int) -> None:
    """Every frame of the run once, in finished files the index covers; nothing else left."""
    t = read_run(out, run)
    key = id_key(t.frames.train_id, t.frames.pulse_id)
    assert len(key) == n and len(np.unique(key)) == n
    assert not [p for p in list_run_files(out, run, include_part=True) if p.suffix != ".cxi"]
    index = out / f"{run}_index.h5"
    assert check_index(index) == []
    with h5py.File(index) as f:
        assert f["entry_1/frames/label"].shape == (n,)
    assert not any((out / ".classify" / run).glob("c*/*")), "staging left behind"


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    d = tmp_path_factory.mktemp("runs")
    return [make_run(d / f"run{i}.h5", 160 + 40 * i, seed=i) for i in range(3)]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A local Dask cluster of 2 worker processes on 127.0.0.1."""
    from dask.distributed import LocalCluster

    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
        dashboard_address=None,
    ) as c:  # fmt: skip
        yield c.scheduler_address


def test_several_runs_resume_force_and_the_change_table(
    runs: list[Path], tiny: Path, cluster: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cfg = ClassifyConfig(model=tiny, out=out, chunk_frames=64, scheduler=cluster,
                         frames_per_train=K, progress=False)  # fmt: skip
    jobs = classify_runs(runs, cfg)
    assert [j.error for j in jobs] == [None] * 3
    for path, job in zip(runs, jobs, strict=True):
        n = 160 + 40 * runs.index(path)
        check_run(out, job.name, n)
        t = read_run(out, job.name)
        # frame identities as `streamer replay` numbers them, the model recorded per frame
        got = np.sort(id_key(t.frames.train_id, t.frames.pulse_id))
        np.testing.assert_array_equal(got, id_key(1 + np.arange(n) // K, np.arange(n) % K))
        assert set(t.model_versions(t.frames).tolist()) == {"tiny:1"}
        assert len(job.chunks) == -(-n // 64) and job.skipped == 0
    # a rerun skips everything, changes nothing
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.cxi")}
    again = classify_runs(runs, cfg)
    assert all(j.skipped == len(j.chunks) for j in again)
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.cxi")} == before
    # another model: redone, and compared with the labels the runs had
    other = make_tiny_bundle(tmp_path / "tiny-bg", version="2", background=True)
    from streamer.classify_report import write_report

    redo = classify_runs(runs, ClassifyConfig(**{**cfg.__dict__, "model": other}))
    rows, js, png = write_report(redo, out, ("single", "multiple"))
    for row, n in zip(rows, (160, 200, 240), strict=True):
        assert row["error"] is None and row["frames"] == n and row["compared_frames"] == n
        m = np.asarray(row["change_matrix"]["counts"])
        assert m.sum() == n and row["changed"] == n - np.trace(m)
    assert js.is_file() and png.stat().st_size > 1000
    t = read_run(out, redo[0].name)
    assert set(t.model_versions(t.frames).tolist()) == {"tiny-bg:2"}
    # --force redoes a run done with the same model
    forced = classify_runs(runs[:1], ClassifyConfig(**{**cfg.__dict__, "model": other,
                                                        "force": True}))  # fmt: skip
    assert forced[0].skipped == 0 and forced[0].error is None
    check_run(out, forced[0].name, 160)


def test_a_worker_killed_mid_job_loses_and_duplicates_nothing(
    runs: list[Path], tmp_path: Path
) -> None:
    from dask.distributed import Client, LocalCluster

    slow = make_tiny_bundle(tmp_path / "slow", slow=64)
    out = tmp_path / "out"
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                     dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        cfg = ClassifyConfig(model=slow, out=out, chunk_frames=20, frames_per_train=K,
                             scheduler=cluster.scheduler_address, progress=False)  # fmt: skip
        result: dict[str, object] = {}
        t = threading.Thread(target=lambda: result.update(jobs=classify_runs(runs, cfg)))
        t.start()
        wait_until(lambda: done_chunks(out) >= 3)
        pids = client.run(os.getpid)
        victim = sorted(pids.values())[0]
        os.kill(victim, signal.SIGKILL)
        killed_at = done_chunks(out)
        t.join(300)
        assert not t.is_alive()
    jobs = result["jobs"]
    total = sum(len(j.chunks) for j in jobs)  # type: ignore[attr-defined]
    assert killed_at < total, "the worker was killed after the job had finished"
    assert [j.error for j in jobs] == [None] * 3  # type: ignore[attr-defined]
    for job, n in zip(jobs, (160, 200, 240), strict=True):  # type: ignore[call-overload]
        check_run(out, job.name, n)


def test_a_killed_job_leaves_nothing_that_looks_finished_and_resumes(
    runs: list[Path], tmp_path: Path
) -> None:
    slow = make_tiny_bundle(tmp_path / "slow", slow=64)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "streamer", "classify", *map(str, runs), "--model", str(slow),
           "--out", str(out), "--chunk-frames", "20", "--workers", "1",
           "--frames-per-train", str(K), "--no-progress"]  # fmt: skip
    proc = subprocess.Popen(cmd, cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_until(lambda: done_chunks(out) >= 2, 120)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the job and its local cluster
        proc.wait(30)
    done_before = done_chunks(out)
    # every finished file in the output belongs to a chunk whose marker names it
    named = set()
    for run in ("run0", "run1", "run2"):
        st = RunState(out, run)
        for m in (out / ".classify" / run).glob("c*.json"):
            data = st.read_marker(m.stem)
            assert data is not None
            named |= {f["name"] for f in data["files"]}
    assert {p.name for p in out.glob("*.cxi")} <= named
    assert not list(out.glob("*_index.h5")), "no run was complete: no index yet"
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Dask dashboard: http://127.0.0.1:" in again.stdout
    skipped = sum(int(s.split("/")[0]) for s in again.stdout.split("ok (")[1:])
    assert skipped >= done_before >= 2
    for run, n in zip(("run0", "run1", "run2"), (160, 200, 240), strict=True):
        check_run(out, run, n)


def test_labels_identical_to_the_live_streamer(
    runs: list[Path], cluster: str, tmp_path: Path
) -> None:
    """The same frames, live (replayed into a running pipeline) and re-classified with the
    background each frame had live: the same label, keep and probabilities."""
    bundle = make_tiny_bundle(tmp_path / "bg", background=True)
    live = tmp_path / "live"
    with ReplayServer(ReplayConfig(path=runs[1], dataset="data", endpoint="tcp://127.0.0.1:0",
                                   frames_per_message=K)) as replay:  # fmt: skip
        cfg = load_config(None, {
            "model": str(bundle), "feed.endpoint": replay.endpoint, "output.dir": str(live),
            "output.run": "run1", "output.min_free_bytes": 0, "engine.max_batch": 16,
            "background.warmup_frames": 20, "background.publish_every_frames": 30,
            "background.warm_share": 1.0,  # every frame looked at: the map changes often
        })  # fmt: skip
        summary = Pipeline(cfg).run()
        replay.join(timeout=30)
    assert summary.error is None and summary.frames_classified == 200
    a = read_run(live, "run1")
    assert len(set(a.frames.background.tolist())) > 2, "the live background should change"
    out = tmp_path / "out"
    jobs = classify_runs([runs[1]], ClassifyConfig(
        model=bundle, out=out, chunk_frames=64, scheduler=cluster, frames_per_train=K,
        background=f"recorded:{live / 'run1_index.h5'}", progress=False,
    ))  # fmt: skip
    assert jobs[0].error is None
    b = read_run(out, "run1")
    ia, ib = (np.argsort(id_key(t.frames.train_id, t.frames.pulse_id)) for t in (a, b))
    np.testing.assert_array_equal(a.frames.label[ia], b.frames.label[ib])
    np.testing.assert_array_equal(a.frames.kept[ia], b.frames.kept[ib])
    np.testing.assert_allclose(a.frames.probabilities[ia], b.frames.probabilities[ib], atol=1e-6)
    np.testing.assert_allclose(a.frames.background_level[ia], b.frames.background_level[ib],
                               rtol=1e-5)  # fmt: skip


def test_the_run_background_sample_is_spread_and_part_of_the_identity(
    runs: list[Path], cluster: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run's background comes from at most BACKGROUND_SAMPLE frames in spans spread from its
    start to its end; chunks classified with another sample size are redone, not mixed."""
    from streamer import classify

    for n in (0, 150, 2000, 40_000, 1_000_000):
        spans = classify.sample_spans(n)
        sizes = [b - a for a, b in spans]
        assert all(0 <= a < b <= n for a, b in spans)
        assert all(b0 <= a1 for (_, b0), (a1, _) in itertools.pairwise(spans))
        assert sum(sizes) < classify.BACKGROUND_SAMPLE + classify.BACKGROUND_SPAN
        if n:
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert sum(sizes) >= min(n, classify.BACKGROUND_MIN_SAMPLE)
    assert (
        sum(b - a for a, b in classify.sample_spans(1_000_000)) >= 0.9 * classify.BACKGROUND_SAMPLE
    )
    bundle = make_tiny_bundle(tmp_path / "bg", background=True)
    cfg = ClassifyConfig(model=bundle, out=tmp_path / "out", chunk_frames=64, scheduler=cluster,
                         frames_per_train=K, progress=False)  # fmt: skip
    first = classify_runs(runs[:1], cfg)
    assert first[0].error is None and first[0].skipped == 0
    assert classify_runs(runs[:1], cfg)[0].skipped == len(first[0].chunks)
    monkeypatch.setattr(classify, "BACKGROUND_SAMPLE", classify.BACKGROUND_SAMPLE // 2)
    redone = classify_runs(runs[:1], cfg)
    assert redone[0].error is None and redone[0].skipped == 0
    check_run(cfg.out, redone[0].name, 160)


def test_refusals(runs: list[Path], tiny: Path, tmp_path: Path) -> None:
    """Two jobs on one output, files of another writer, a missing input: clear errors."""
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from streamer.worker_lock import WorkerLock; "
         f"l = WorkerLock({str(out)!r}, 'run0', 'classify'); print('held', flush=True); "
         "time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        cfg = ClassifyConfig(model=tiny, out=out, workers=1, progress=False)
        with pytest.raises(ConfigError, match="another"):
            classify_runs(runs[:1], cfg)
    finally:
        holder.kill()
        holder.wait()
    (out / "run0_w0_0000.cxi").write_bytes(b"")  # the live streamer's file of that run
    with pytest.raises(ConfigError, match="another writer"):
        classify_runs(runs[:1], ClassifyConfig(model=tiny, out=out, workers=1, progress=False))
    with pytest.raises(InputDataError, match="no such file"):
        classify_runs([tmp_path / "missing.h5"], cfg)


def test_a_european_xfel_run_directory(cluster: str, tmp_path: Path) -> None:
    """EXtra-data's mock SPB run (raw AGIPD, one file per module): every train decoded as
    the live streamer decodes a Karabo-bridge message of it, mapped onto the model's grid,
    with its real train and pulse ids."""
    import argparse

    from extra_data import RunDirectory, by_index
    from extra_data.tests.make_examples import make_spb_run

    from streamer.classify_cmd import add_arguments, run
    from streamer.classify_euxfel import EuxfelSource, TrainReader
    from streamer.decode import decode_message
    from tests.test_detectors import CLOSED_QUADS

    run_dir = tmp_path / "r0238"
    run_dir.mkdir()
    make_spb_run(str(run_dir), raw=True)
    bundle = make_tiny_bundle(tmp_path / "tiny")
    toml = tmp_path / "agipd.toml"
    source = "SPB_DET_AGIPD1M-1/DET/*CH0:xtdf"
    toml.write_text(
        f'[feed]\nsource = "{source}"\naxis_order = "pulses,data_gain,ss,fs"\n'
        f'[detector]\ngeometry = "AGIPD1M"\nquad_pos = {CLOSED_QUADS}\ndistance_m = 1.465\n'
        "photon_energy_ev = 6000.0\n",
        encoding="utf-8",
    )
    p = argparse.ArgumentParser()
    add_arguments(p)
    out = tmp_path / "out"
    args = p.parse_args([str(run_dir), "--model", str(bundle), "--out", str(out), "--config",
                         str(toml), "--scheduler", cluster, "--chunk-frames", "640",
                         "--no-progress"])  # fmt: skip
    assert run(args) == 0
    r = RunDirectory(str(run_dir))
    n_trains = len(r.train_ids)
    t = read_run(out, "r0238")
    assert len(t.frames.train_id) == n_trains * 64
    assert set(t.frames.train_id.tolist()) == {int(x) for x in r.train_ids}
    assert len(np.unique(id_key(t.frames.train_id, t.frames.pulse_id))) == n_trains * 64
    assert len({p.name.split("_")[1] for p in out.glob("r0238_c*.cxi")}) == -(-n_trains // 10)
    # the frames a chunk reads are the live decoder's frames of the same train
    src = EuxfelSource(source, modules=16)
    raw, train, _pulse = next(iter(TrainReader(run_dir, src, 3, 4)))
    sel = r.select([(source, "image.data"), (source, "image.pulseId")])
    tid, data = next(iter(sel.select_trains(by_index[3:4]).trains()))
    live = decode_message(data, {}, src.spec(), now=0.0).batch
    assert live is not None and int(train[0]) == int(tid)
    np.testing.assert_array_equal(np.asarray(raw), np.asarray(live.frames))
