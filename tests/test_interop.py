"""Interoperation with the facility's own tools on loopback (karabo-bridge 0.7, extra-data 1.25).

- karabo_bridge.Client reads our replay over PUSH→PULL and PUB→SUB (REQ: test_replay.py);
- karabo_bridge's simulated AGIPD 1M (corrected float32 and raw uint16, live axis order)
  feeds our Pipeline;
- ``karabo-bridge-serve-files`` streams a mock EuXFEL run made by extra-data's own test
  helper (raw AGIPD: a data/gain axis) into our Pipeline;
- ``streamer serve`` as a process, in live mode over SUB, fed by karabo_bridge.ServerInThread.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import h5py
import karabo_bridge
import numpy as np
import pytest
from extra_data import RunDirectory
from extra_data.tests.make_examples import make_spb_run
from karabo_bridge.server import SimServerInThread

from hitstream.errors import ConfigError, MessageError
from streamer.config import ServeConfig, load_config
from streamer.decode import end_of_run_message, parse_axis_order, to_frames
from streamer.pipeline import Pipeline, RunSummary
from streamer.readback import read_kept_frames, read_run
from streamer.replay import DEFAULT_SOURCE, ReplayConfig, ReplayServer
from streamer.types import EndOfRun
from tests.helpers_stream import running_pipeline, wait_for_line, write_frames
from tests.procs import command
from tests.tiny_bundle import make_tiny_bundle

ANY_PORT = "tcp://127.0.0.1:0"
AGIPD_PULSES, AGIPD_MODULES, AGIPD_SS, AGIPD_FS = 64, 16, 512, 128
SIM_FIRST_TRAIN = 10_000_000_000  # karabo_bridge.simulation.data_generator's first train id


def _config(bundle: Path, endpoint: str, out: Path, **extra: object) -> ServeConfig:
    overrides = {
        "model": str(bundle),
        "feed.endpoint": endpoint,
        "output.dir": str(out),
        "output.run": "r",
        "output.min_free_bytes": 0,
        "metrics.port": -1,
        **extra,
    }
    return load_config(None, overrides)


def _run_until(pipeline: Pipeline, frames: int, timeout_s: float) -> RunSummary:
    """Run ``pipeline`` in a thread; stop it once ``frames`` frames are classified."""
    with running_pipeline(pipeline) as run:  # stopped, joined and checked on the way out
        deadline = time.monotonic() + timeout_s
        while (
            pipeline.metrics.value("hitstream_frames_classified_total") < frames
            and run.is_alive()
            and time.monotonic() < deadline
        ):
            time.sleep(0.02)  # poll, bounded by the deadline
    return run.wait(0)


def _assert_clean(summary: RunSummary, *, live_source: bool = False) -> None:
    """No error, rejection or drop; a live source (the simulator drops trains nobody asked
    for in time) may leave train-id gaps, which must then be counted as such."""
    assert summary.error is None
    assert not any(summary.rejected.values()), summary.rejected
    assert not any(summary.dropped.values()), summary.dropped
    if not live_source:
        assert not any(summary.missed.values()), summary.missed
    assert summary.accounting["balanced"], summary.accounting
    assert summary.frames_received == summary.frames_classified


# ----------------------------------------------------- karabo_bridge.Client reads our replay


@pytest.mark.parametrize(("server_mode", "client_mode"), [("PUSH", "PULL"), ("PUB", "SUB")])
def test_karabo_client_reads_our_replay(tmp_path: Path, server_mode: str, client_mode: str):
    frames = write_frames(tmp_path / "r0042.h5", n=50, shape=(12, 9), dtype="uint16")
    cfg = ReplayConfig(
        tmp_path / "r0042.h5", dataset="data", endpoint=ANY_PORT, mode=server_mode,
        frames_per_message=16, first_train_id=7000, linger_s=0.2,
    )  # fmt: skip
    with (
        ReplayServer(cfg) as replay,
        karabo_bridge.Client(replay.endpoint, sock=client_mode, timeout=10) as client,
    ):
        got, tids = [], []
        for _ in range(10):
            data, meta = client.next()
            if "hitstream/end_of_run" in data:
                break
            assert meta[DEFAULT_SOURCE]["source"] == DEFAULT_SOURCE
            assert isinstance(meta[DEFAULT_SOURCE]["timestamp"], float)
            assert data[DEFAULT_SOURCE]["image.data"].dtype == np.uint16
            got.append(data[DEFAULT_SOURCE]["image.data"])
            tids.append(meta[DEFAULT_SOURCE]["timestamp.tid"])
            pulses = data[DEFAULT_SOURCE]["image.pulseId"]
            assert pulses.tolist() == list(range(len(got[-1])))
        else:
            raise AssertionError("no end-of-run marker")
        assert data["hitstream/end_of_run"] == {"run": "r0042", "frames": 50, "trains": 4}
    assert replay.join(10).frames == 50
    np.testing.assert_array_equal(np.concatenate(got), frames)
    assert tids == [7000, 7001, 7002, 7003]


# --------------------------------------------- karabo_bridge's simulated AGIPD → Pipeline


@pytest.fixture(scope="module")
def agipd_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Tiny model for the naively stacked AGIPD 1M frame: 16 modules of 512 × 128."""
    shape = (AGIPD_MODULES * AGIPD_SS, AGIPD_FS)
    return make_tiny_bundle(tmp_path_factory.mktemp("agipd") / "tiny", shape=shape)


def _recording(gen: Iterator[tuple[dict, dict]], record: dict[int, Any]) -> Iterator:
    """Pass the simulator's trains through, keeping a few pixels of each for the checks."""
    for data, meta in gen:
        ((src, values),) = data.items()
        arr = values["image.data"]
        record[meta[src]["timestamp.tid"]] = {
            "timestamp": meta[src]["timestamp"],
            "module5_pulse7": arr[5, :, :, 7].copy(),  # (fs, ss) of one module, one pulse
            "module0_pulse63": arr[0, :, :, 63].copy(),
            "dtype": arr.dtype,
        }
        yield data, meta


@pytest.mark.parametrize("raw", [False, True], ids=["corrected", "raw"])
def test_simulated_agipd_feeds_the_pipeline(agipd_bundle: Path, tmp_path: Path, raw: bool):
    trains = 2
    sim = SimServerInThread(
        ANY_PORT, sock="REP", detector="AGIPD", raw=raw, datagen="random",
        data_like="online", protocol_version="2.2", debug=False,
    )  # fmt: skip
    sent: dict[int, Any] = {}
    sim.data = _recording(sim.data, sent)
    cfg = _config(
        agipd_bundle, sim.endpoint, tmp_path / "out",
        **{"feed.mode": "REQ", "feed.key": "image.data",
           "feed.axis_order": "modules,fs,ss,pulses", "engine.max_batch": 32},
    )  # fmt: skip
    sim.start()
    try:
        summary = _run_until(Pipeline(cfg), trains * AGIPD_PULSES, timeout_s=60)
    finally:
        sim.stop()

    _assert_clean(summary, live_source=True)
    n_trains = summary.frames_received // AGIPD_PULSES
    assert summary.frames_received == n_trains * AGIPD_PULSES and n_trains >= trains
    (dtype,) = {v["dtype"] for v in sent.values()}
    assert dtype == (np.uint16 if raw else np.float32)
    tables = read_run(tmp_path / "out", "r")
    assert tables.frame_shape == (AGIPD_MODULES * AGIPD_SS, AGIPD_FS)
    assert len(tables.frames) == summary.frames_received
    # trains in the order the simulator made them, every pulse once, its timestamps
    order = np.lexsort((tables.pulse_id, tables.train_id))
    tids = np.unique(tables.train_id)
    assert len(tids) == n_trains and tids[0] >= SIM_FIRST_TRAIN
    missing = int(tids[-1] - tids[0] + 1) - n_trains
    assert summary.missed.get("train_gap", 0) == missing * AGIPD_PULSES
    np.testing.assert_array_equal(tables.train_id[order], np.repeat(tids, AGIPD_PULSES))
    np.testing.assert_array_equal(tables.pulse_id[order], np.tile(np.arange(64), n_trains))
    for tid in tids:
        ts = tables.timestamp[tables.train_id == tid]
        np.testing.assert_array_equal(ts, sent[int(tid)]["timestamp"])
    # flat noise of 1500-1600 is bright for the tiny model: every frame kept; the pixels
    # are the simulator's, modules stacked vertically, (fs, ss) transposed to (ss, fs)
    assert summary.frames_kept == summary.frames_received
    for tid in tids[:2]:
        for pulse, module, key in [(7, 5, "module5_pulse7"), (63, 0, "module0_pulse63")]:
            (row,) = np.flatnonzero((tables.train_id == tid) & (tables.pulse_id == pulse))
            (frame,) = read_kept_frames(tmp_path / "out", "r", [tables.frames.kept_index[row]])
            block = frame[module * AGIPD_SS : (module + 1) * AGIPD_SS]
            np.testing.assert_array_equal(block, sent[int(tid)][key].T.astype(np.float32))


# --------------------------------------- karabo-bridge-serve-files on a mock run → Pipeline

MODULE = 3
MODULE_SOURCE = f"SPB_DET_AGIPD1M-1/DET/{MODULE}CH0:xtdf"
BRIGHT_TRAIN, BRIGHT_PULSES = 10_005, (0, 9, 63)


@pytest.fixture(scope="module")
def spb_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """extra-data's mock SPB run (raw AGIPD, 64 trains × 64 frames of (2, 512, 128) uint16:
    data and gain, all zero) with a few bright frames written into one module.

    Returns the run directory, the bright frames' ADC data and their gain bits."""
    run = tmp_path_factory.mktemp("spb") / "r0238"
    run.mkdir()
    make_spb_run(str(run), raw=True)
    rng = np.random.default_rng(7)
    data = rng.poisson(1.0, (len(BRIGHT_PULSES), AGIPD_SS, AGIPD_FS)).astype(np.uint16)
    gain = np.full_like(data, 2)
    path = run / f"RAW-R0238-AGIPD{MODULE:02}-S00000.h5"
    with h5py.File(path, "r+") as f:
        image = f[f"INSTRUMENT/{MODULE_SOURCE}/image"]
        assert image["data"].shape == (64 * 64, 2, AGIPD_SS, AGIPD_FS)
        tids = image["trainId"][:, 0]
        rows = np.flatnonzero(tids == BRIGHT_TRAIN)[list(BRIGHT_PULSES)]
        for i, row in enumerate(rows):
            image["data"][row] = np.stack([data[i], gain[i]])
    return run, data, gain


def test_raw_agipd_data_gain_axis_keeps_the_adc_data() -> None:
    # raw AGIPD in files: (pulses, data/gain, ss, fs), as extra-data names the axes
    arr = np.arange(3 * 2 * 4 * 5, dtype=np.uint16).reshape(3, 2, 4, 5)
    np.testing.assert_array_equal(to_frames(arr, "pulses,data_gain,ss,fs"), arr[:, 0])
    with pytest.raises(MessageError, match="does not match axis order"):
        to_frames(arr[:, 0], "pulses,data_gain,ss,fs")
    with pytest.raises(ConfigError, match="data_gain"):
        parse_axis_order("pulses,data_gain,data_gain,ss,fs")


def test_serve_files_streams_a_mock_run_into_the_pipeline(spb_run, tmp_path: Path) -> None:
    run, bright, gain = spb_run
    run_tids = RunDirectory(str(run)).select(MODULE_SOURCE).train_ids
    assert len(run_tids) == 64
    out = tmp_path / "out"
    bundle = make_tiny_bundle(tmp_path / "tiny", shape=(AGIPD_SS, AGIPD_FS))
    tool = Path(sys.executable).with_name("karabo-bridge-serve-files")
    cmd = [str(tool), str(run), ANY_PORT, "--source", MODULE_SOURCE, "-z", "PUSH"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # its "started" line is a plain print
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        endpoint = wait_for_line(proc, "Streamer started on", 30).split()[-1]
        assert endpoint.startswith("tcp://127.0.0.1:")
        cfg = _config(
            bundle, endpoint, out,
            **{"feed.mode": "PULL", "feed.source": MODULE_SOURCE, "feed.key": "image.data",
               "feed.axis_order": "pulses,data_gain,ss,fs", "engine.max_batch": 64},
        )  # fmt: skip
        summary = _run_until(Pipeline(cfg), 64 * 64, timeout_s=50)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode == 0, stderr
    assert "Sent 64/64 trains" in stdout

    _assert_clean(summary)
    assert summary.frames_received == 64 * 64
    tables = read_run(out, "r")
    # the tool sends no timestamps (only source and train id): the receive time stands in
    assert np.all(np.abs(tables.timestamp - time.time()) < 600)
    # every frame of the run exactly once, with the run's train ids and the file's pulse ids
    pairs = tables.train_id.astype(np.int64) * 64 + tables.pulse_id
    expected = np.repeat(np.asarray(run_tids, np.int64), 64) * 64 + np.tile(np.arange(64), 64)
    np.testing.assert_array_equal(np.sort(pairs), expected)
    # only the bright frames are kept, with their ADC data (not the gain bits)
    kept = tables.frames.kept
    assert sorted(tables.pulse_id[kept].tolist()) == list(BRIGHT_PULSES)
    assert set(tables.train_id[kept].tolist()) == {BRIGHT_TRAIN}
    for i, pulse in enumerate(BRIGHT_PULSES):
        (row,) = np.flatnonzero(kept & (tables.pulse_id == pulse))
        (frame,) = read_kept_frames(out, "r", [tables.frames.kept_index[row]])
        np.testing.assert_array_equal(frame, bright[i].astype(np.float32))
        assert not np.array_equal(frame, gain[i])


# ------------------------------ streamer serve (live, SUB) ← karabo_bridge.ServerInThread PUB

SHAPE, PULSES = (32, 48), 4
LIVE_SOURCE = "SPB_DET_AGIPD1M-1/CAL/APPEND_CORRECTED"


def _live_train(tid: int) -> np.ndarray:
    """Frames of train ``tid``: pulses 0 and 2 bright (kept), 1 and 3 dark."""
    rng = np.random.default_rng(tid)
    frames = np.zeros((PULSES, *SHAPE), np.float32)
    frames[0::2] = rng.poisson(20.0, (2, *SHAPE))
    return frames


def _scrape(url: str) -> dict[str, float]:
    text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("hitstream_") and " " in line:
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def _received(url: str) -> float:
    return _scrape(url).get("hitstream_frames_received_total", 0.0)


def _wait_received(url: str, at_least: float, timeout_s: float) -> float:
    deadline = time.monotonic() + timeout_s
    while (n := _received(url)) < at_least and time.monotonic() < deadline:
        time.sleep(0.01)  # poll, bounded by the deadline
    return n


def test_serve_process_live_over_sub_from_karabo_pub(tmp_path: Path) -> None:
    bundle = make_tiny_bundle(tmp_path / "tiny", shape=SHAPE)
    out, summary_json = tmp_path / "out", tmp_path / "summary.json"
    sent: dict[int, np.ndarray] = {}
    with karabo_bridge.ServerInThread(ANY_PORT, sock="PUB", protocol_version="2.2") as kbs:

        def feed(tid: int) -> None:
            sent[tid] = _live_train(tid)
            meta = {LIVE_SOURCE: {"source": LIVE_SOURCE, "timestamp": time.time(),
                                  "timestamp.tid": tid}}  # fmt: skip
            kbs.feed({LIVE_SOURCE: {"image.data": sent[tid], "image.passport": ["x"]}}, meta)

        with command(
            "streamer", "serve", "--model", bundle, "--endpoint", kbs.endpoint,
            "--feed-mode", "SUB", "--mode", "live", "--source", LIVE_SOURCE,
            "--out", out, "--run", "live", "--metrics-port", "0",
            "--summary-json", summary_json, "--set", "output.min_free_bytes=0",
        ) as serve:  # fmt: skip
            url = wait_for_line(serve, "streamer ready", 60).split("metrics ", 1)[1]
            url = url.strip().rsplit("/", 1)[0]
            # the subscription takes a moment: send until the streamer sees frames
            tid = 500
            while _wait_received(url, 1, 0.2) == 0:
                assert tid < 600, "the streamer never received a frame over SUB"
                feed(tid)
                tid += 1
            # then train by train, each once the previous one has arrived
            first_live = tid
            for _ in range(20):
                n = _received(url)
                feed(tid)
                _wait_received(url, n + PULSES, 5)
                tid += 1
            # our end-of-run marker, through karabo's serializer, until the streamer stops
            end = end_of_run_message(EndOfRun(run="live", frames=0, trains=0), time.time())
            deadline = time.monotonic() + 30
            while serve.poll() is None and time.monotonic() < deadline:
                kbs.feed(*end)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    serve.wait(timeout=0.2)
            if serve.poll() is None:
                serve.send_signal(signal.SIGTERM)
            assert serve.wait(timeout=30) == 0, serve.stderr.read()

    summary = json.loads(summary_json.read_text())
    assert summary["error"] is None and summary["end_of_run"] is not None
    assert not any(summary["rejected"].values()), summary["rejected"]
    tables = read_run(out, "live")
    got = sorted(set(tables.train_id.tolist()))
    # consistency, whatever SUB lost at the start: every frame written once, trains whole
    assert len(tables.frames) == summary["frames_received"] == summary["frames_classified"]
    assert set(got) <= set(sent)
    assert len(tables.frames) == PULSES * len(got)
    pairs = tables.train_id.astype(np.int64) * PULSES + tables.pulse_id
    assert len(np.unique(pairs)) == len(pairs)
    gaps = (got[-1] - got[0] + 1 - len(got)) * PULSES
    assert summary["missed"].get("train_gap", 0) == gaps
    # the train-by-train part arrived (each train waited for the previous one)
    assert set(range(first_live, tid)) <= set(got)
    # kept frames are the bright pulses, pixel for pixel
    kept = tables.frames.kept
    assert sorted(set(tables.pulse_id[kept].tolist())) == [0, 2]
    assert np.count_nonzero(kept) == 2 * len(got)
    rows = np.flatnonzero(kept)[:6]
    frames = read_kept_frames(out, "live", tables.frames.kept_index[rows])
    for row, frame in zip(rows, frames, strict=True):
        expected = sent[int(tables.train_id[row])][int(tables.pulse_id[row])]
        np.testing.assert_array_equal(frame, expected)
