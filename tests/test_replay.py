"""Replay server and feed client on real sockets (127.0.0.1, ephemeral ports)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import h5py
import karabo_bridge
import numpy as np
import pytest
import zmq
from karabo_bridge.server import SimServerInThread

from hitstream.errors import ConfigError, InputDataError
from streamer.cli import main as streamer_main
from streamer.decode import Decoder, SourceSpec
from streamer.feed import FeedClient
from streamer.protocol import serialize
from streamer.replay import DEFAULT_SOURCE, ReplayConfig, ReplayServer
from tests.helpers_stream import read_run, wait_for_line, write_frames

ANY_PORT = "tcp://127.0.0.1:0"
MODES = [("REP", "REQ"), ("PUSH", "PULL"), ("PUB", "SUB")]


@pytest.fixture
def run_file(tmp_path):
    path = tmp_path / "r0007.h5"
    frames = write_frames(path, n=100, shape=(16, 17), dtype="uint16")
    return path, frames


def _config(path, **kw) -> ReplayConfig:
    kw = {"dataset": "data", "endpoint": ANY_PORT, "linger_s": 0.2, **kw}
    return ReplayConfig(path, **kw)


def _check_frames(batch, frames, k, first_train_id=1):
    n = len(frames)
    j = np.arange(n)
    assert len(batch) == n
    np.testing.assert_array_equal(batch.train_id, first_train_id + j // k)
    np.testing.assert_array_equal(batch.pulse_id, j % k)
    np.testing.assert_array_equal(batch.frames, frames.astype(np.float32))


@pytest.mark.parametrize(("server_mode", "client_mode"), MODES)
def test_every_frame_arrives_once_in_order(run_file, server_mode, client_mode):
    path, frames = run_file
    server = ReplayServer(_config(path, mode=server_mode, frames_per_message=32, hwm=2))
    with server, FeedClient(server.endpoint, client_mode, timeout_s=10, hwm=2) as feed:
        batch, end, messages = read_run(feed, SourceSpec(frame_shape=(16, 17)))
    stats = server.join(10)
    _check_frames(batch, frames, k=32)
    assert messages == 4 and end.run == "r0007" and (end.frames, end.trains) == (100, 4)
    assert (stats.frames, stats.trains, stats.end_markers >= 1) == (100, 4, True)
    assert np.all(np.diff(batch.timestamp) >= 0)


def test_frame_range_repeat_dtype_and_train_ids(run_file):
    path, frames = run_file
    cfg = _config(
        path, start=10, stop=50, repeat=2, frames_per_message=8, first_train_id=1000,
        dtype="float32", source="my/det", key="frames",
    )  # fmt: skip
    server = ReplayServer(cfg)
    with server, FeedClient(server.endpoint, timeout_s=10) as feed:
        data, meta = feed.next()
        assert data["my/det"]["frames"].dtype == np.float32
        assert meta["my/det"]["timestamp.tid"] == 1000
        assert data["my/det"]["image.pulseId"].tolist() == list(range(8))
        first = Decoder(SourceSpec(key="frames")).decode(data, meta).batch
        batch, end, _ = read_run(feed, SourceSpec(key="frames"))
    selected = np.concatenate([frames[10:50], frames[10:50]])
    _check_frames(type(batch).concat([first, batch]), selected, k=8, first_train_id=1000)
    assert (end.frames, end.trains) == (80, 10)


def test_short_last_message(run_file):
    path, frames = run_file
    server = ReplayServer(_config(path, frames_per_message=7, mode="PUSH"))
    with server, FeedClient(server.endpoint, "PULL", timeout_s=10) as feed:
        batch, end, messages = read_run(feed)
    _check_frames(batch, frames, k=7)
    assert messages == end.trains == 15 and batch.pulse_id[-2:].tolist() == [0, 1]


def test_rate_is_respected(run_file):
    path, _ = run_file
    server = ReplayServer(_config(path, frames_per_message=10, rate=200.0))
    with server, FeedClient(server.endpoint, timeout_s=10) as feed:
        t0 = time.monotonic()
        batch, _, _ = read_run(feed)
        elapsed = time.monotonic() - t0
    assert len(batch) == 100 and elapsed >= 0.3  # 100 frames at 200/s: >= 0.45 s


def test_rep_answers_bad_requests_and_every_client_sees_the_end(run_file):
    path, _ = run_file
    server = ReplayServer(_config(path, frames_per_message=50, linger_s=1.0))
    ctx = zmq.Context()
    try:
        with server:
            raw = ctx.socket(zmq.REQ)
            raw.connect(server.endpoint)
            raw.send(b"hello")
            assert raw.poll(5000) and raw.recv().startswith(b"Error: bad request")
            raw.close(linger=0)
            with FeedClient(server.endpoint, timeout_s=10, context=ctx) as a:
                batch, _, _ = read_run(a)
            assert not ctx.closed  # a given context is not terminated
            with FeedClient(server.endpoint, timeout_s=10, context=ctx) as b:
                assert b.next()[0].keys() == {"hitstream/end_of_run"}
        stats = server.join(10)
        assert stats.bad_requests == 1 and stats.end_markers == 2 and len(batch) == 100
    finally:
        ctx.term()


def test_req_client_times_out_then_recovers_with_a_new_server(run_file):
    path, _ = run_file
    first = ReplayServer(_config(path, frames_per_message=10))
    endpoint = first.endpoint
    with FeedClient(endpoint, timeout_s=0.3) as feed:
        with first:
            feed.next()
        first.join(5)  # stopped mid-run: our next request goes nowhere
        with pytest.raises(TimeoutError, match=endpoint):
            feed.next()  # unanswered for timeout_s: the REQ socket is recreated
        second = ReplayServer(_config(path, endpoint=endpoint, frames_per_message=10))
        with second:
            _, meta = feed.next(timeout_s=10)
        assert meta[DEFAULT_SOURCE]["timestamp.tid"] == 1  # the new server's first train


def test_req_request_survives_short_receive_timeouts():
    ctx = zmq.Context()
    rep = ctx.socket(zmq.REP)
    rep.bind(ANY_PORT)
    try:
        with FeedClient(rep.LAST_ENDPOINT.decode(), timeout_s=30, context=ctx) as feed:
            for _ in range(3):  # a poll loop: nothing yet, the request stays out
                with pytest.raises(TimeoutError):
                    feed.recv_parts(timeout_s=0.02)
            assert rep.poll(5000) and rep.recv() == b"next"
            rep.send_multipart(serialize({"s": {"x": 1}}, {"s": {"timestamp.tid": 4}}))
            assert feed.next(timeout_s=5) == ({"s": {"x": 1}}, {"s": {"timestamp.tid": 4}})
            assert not rep.poll(100)  # exactly one request was sent for it
    finally:
        rep.close(linger=0)
        ctx.term()


def test_feed_client_config_errors():
    with pytest.raises(ConfigError, match="DEALER"):
        FeedClient(ANY_PORT, "DEALER")
    with pytest.raises(ConfigError, match="not-an-endpoint"):
        FeedClient("not-an-endpoint")


def test_input_errors(tmp_path, run_file):
    path, _ = run_file
    with h5py.File(path, "a") as f:
        f["flat"] = np.zeros((4, 5))
        f["text"] = np.array([[[b"ab"]]])
    with pytest.raises(InputDataError, match="does not exist"):
        ReplayServer(_config(tmp_path / "missing.h5"))
    with pytest.raises(InputDataError, match=r"no dataset 'nope'.*data \(100, 16, 17\)"):
        ReplayServer(_config(path, dataset="nope"))
    with pytest.raises(InputDataError, match="shape"):
        ReplayServer(_config(path, dataset="flat"))
    with pytest.raises(InputDataError, match="dtype"):
        ReplayServer(_config(path, dataset="text"))
    (tmp_path / "not.h5").write_bytes(b"not hdf5")
    with pytest.raises(InputDataError, match="HDF5"):
        ReplayServer(_config(tmp_path / "not.h5"))
    with pytest.raises(ConfigError, match="range"):
        ReplayServer(_config(path, start=50, stop=200))
    with pytest.raises(ConfigError):
        ReplayServer(_config(path, frames_per_message=0))


# ------------------------------------------------------------------------- interop


def test_karabo_bridge_client_reads_our_replay(run_file):
    path, frames = run_file
    server = ReplayServer(_config(path, frames_per_message=32))
    with server:
        client = karabo_bridge.Client(server.endpoint, sock="REQ", timeout=10)
        with client:
            for m in range(4):
                data, meta = client.next()
                got = data[DEFAULT_SOURCE]["image.data"]
                np.testing.assert_array_equal(got, frames[32 * m : 32 * (m + 1)])
                assert meta[DEFAULT_SOURCE]["timestamp.tid"] == 1 + m
                assert meta[DEFAULT_SOURCE]["source"] == DEFAULT_SOURCE
                assert isinstance(meta[DEFAULT_SOURCE]["timestamp"], float)
            data, _ = client.next()
            assert data["hitstream/end_of_run"] == {"run": "r0007", "frames": 100, "trains": 4}


def test_feed_client_reads_karabo_bridge_server():
    frames = np.random.default_rng(3).random((3, 5, 4, 6)).astype(np.float32)
    src = "SPB_DET/CAL/APPEND"
    with karabo_bridge.ServerInThread(ANY_PORT, sock="REP", protocol_version="2.2") as kbs:
        for t in range(3):
            meta = {src: {"source": src, "timestamp": 100.0 + t, "timestamp.tid": 500 + t}}
            kbs.feed({src: {"image.data": frames[t], "other": "x"}}, meta)
        with FeedClient(kbs.endpoint, timeout_s=10) as feed:
            dec = Decoder(SourceSpec(frame_shape=(4, 6)))
            for t in range(3):
                b = dec.decode(*feed.next()).batch
                np.testing.assert_array_equal(b.frames, frames[t])
                assert b.train_id.tolist() == [500 + t] * 5 and b.pulse_id.tolist() == [
                    0,
                    1,
                    2,
                    3,
                    4,
                ]
                assert b.timestamp[0] == 100.0 + t


def test_feed_client_reads_karabo_simulated_agipd_module():
    # live order for one module: (fs, ss, pulses), raw uint16
    with (
        SimServerInThread(
            ANY_PORT, sock="PUSH", detector="AGIPDModule", raw=True, debug=False
        ) as sim,
        FeedClient(sim.endpoint, "PULL", timeout_s=20) as feed,
    ):
        dec = Decoder(SourceSpec(axis_order="fs,ss,pulses", frame_shape=(512, 128)))
        tids = []
        for _ in range(2):
            data, meta = feed.next()
            b = dec.decode(data, meta).batch
            (raw,) = (v["image.data"] for v in data.values())
            assert b.frames.shape == (64, 512, 128)
            np.testing.assert_array_equal(b.frames[5], raw[:, :, 5].T)
            assert b.pulse_id.tolist() == list(range(64))
            tids.append(int(b.train_id[0]))
        assert tids[1] > tids[0]


# ---------------------------------------------------------------------------- CLI


def test_cli_replay_subprocess(run_file):
    path, frames = run_file
    cmd = [sys.executable, "-m", "streamer", "replay", str(path), "--dataset", "data"]
    cmd += ["--endpoint", ANY_PORT, "-k", "16", "--linger", "0.2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        endpoint = wait_for_line(proc, "ready").split()[-1]
        assert endpoint.startswith("tcp://127.0.0.1:")
        with FeedClient(endpoint, timeout_s=20) as feed:
            batch, end, messages = read_run(feed)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    _check_frames(batch, frames, k=16)
    assert messages == 7 and (end.frames, end.trains) == (100, 7)
    assert "100 frames, 7 trains" in out


def test_cli_errors_exit_2(tmp_path, capsys):
    missing = tmp_path / "missing.h5"
    assert streamer_main(["replay", str(missing), "--endpoint", ANY_PORT]) == 2
    assert f"{missing}: replay input does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        streamer_main(["replay", str(missing), "--mode", "DEALER"])
    assert info.value.code == 2


def test_push_end_markers_reach_every_pull_client(run_file):
    """PUSH skips clients whose queue is full: with one slow client, a fixed number of end
    markers can miss a client. Every client must still see the end, and all frames once."""
    path, frames = run_file
    n_clients = 3
    server = ReplayServer(_config(path, mode="PUSH", frames_per_message=4, hwm=1, drain_s=20))
    results: list[tuple[int, bool]] = [(0, False)] * n_clients

    def client(i: int) -> None:
        with FeedClient(server.endpoint, "PULL", timeout_s=15, hwm=1) as feed:
            got, ended = 0, False
            while not ended:
                data, meta = feed.next()
                out = Decoder(SourceSpec(frame_shape=(16, 17))).decode(data, meta)
                if out.end is not None:
                    ended = True
                elif out.batch is not None:
                    got += len(out.batch)
                    if i == 0:
                        time.sleep(0.05)  # the slow one
            results[i] = (got, ended)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(n_clients)]
    with server:
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    stats = server.join(30)
    assert not any(t.is_alive() for t in threads)
    assert all(ended for _, ended in results)
    assert sum(got for got, _ in results) == len(frames) == stats.frames
    assert n_clients <= stats.end_markers <= 50 * n_clients
