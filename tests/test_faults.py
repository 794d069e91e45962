"""Faults around a running streamer: producer restarts, SIGKILL, a full disk, a slow disk,
a corrupted model. Real processes, sockets, files and (where allowed) a real tmpfs."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import psutil
import pytest
import zmq

from hitstream.bundle import write_manifest
from streamer.config import load_config
from streamer.cxi_layout import DATA_PATH, FRAMES_GROUP, KEPT_GROUP
from streamer.decode import END_OF_RUN_SOURCE
from streamer.pipeline import Pipeline, RunSummary
from streamer.protocol import serialize
from streamer.readback import list_run_files, read_run
from streamer.replay import ReplayConfig, ReplayServer
from tests.helpers_stream import wait_for_line
from tests.procs import command, free_endpoint
from tests.tiny_bundle import make_tiny_bundle

K = 4  # frames per message
N = 160  # frames in the run file


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """N bright noisy frames: all 'single' for the tiny model, so all kept."""
    path = tmp_path_factory.mktemp("run") / "run.h5"
    frames = np.random.default_rng(5).poisson(0.5, (N, 260, 257)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("entry_1/data_1/data", data=frames, chunks=(1, 260, 257))
    return path


def frame_ids(first: int, stop: int) -> list[tuple[int, int]]:
    """(train_id, pulse_id) of frames first..stop-1 as the replay numbers them."""
    return [(1 + j // K, j % K) for j in range(first, stop)]


def written_ids(out: Path, run: str, include_part: bool = False) -> list[tuple[int, int]]:
    t = read_run(out, run, include_part=include_part)
    return sorted(zip(t.train_id.tolist(), t.pulse_id.tolist(), strict=True))


def config(bundle: Path, endpoint: str, out: Path, **extra: object) -> Any:
    return load_config(None, {
        "model": str(bundle), "feed.endpoint": endpoint, "output.dir": str(out),
        "output.run": "r", "output.min_free_bytes": 0, "engine.max_batch": 8, **extra,
    })  # fmt: skip


@contextmanager
def running(cfg: Any) -> Iterator[tuple[Pipeline, dict[str, RunSummary], threading.Thread]]:
    """A pipeline running in a thread; however the block ends, it is asked to stop, joined,
    and must have ended (a failing test ends instead of hanging on a live pipeline)."""
    pipeline = Pipeline(cfg)
    result: dict[str, RunSummary] = {}
    t = threading.Thread(
        target=lambda: result.update(s=pipeline.run()), name="pipeline", daemon=True
    )
    t.start()
    try:
        yield pipeline, result, t
    finally:
        pipeline.stop()
        t.join(60)
        assert not t.is_alive(), "the pipeline did not stop within 60 s of stop()"


def wait_until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def received(pipeline: Pipeline) -> int:
    return int(pipeline.metrics.value("hitstream_frames_received_total"))


def feed_connections(endpoint: str) -> list[Any]:
    """This process's open TCP connections to ``endpoint``'s port: the streamer's feed socket
    (a replay server in this process holds that port as its local address, not remote)."""
    port = int(endpoint.rsplit(":", 1)[1])
    return [
        c
        for c in psutil.Process().net_connections("tcp")
        if c.raddr
        and c.raddr.port == port
        and c.status in (psutil.CONN_ESTABLISHED, psutil.CONN_CLOSE_WAIT)
    ]


def req_resets_since(caplog: pytest.LogCaptureFixture, since: float) -> int:
    """How many times the feed's REQ socket gave up an unanswered request and was made
    afresh (its debug record) after ``since`` (time.time())."""
    return sum(
        1
        for r in list(caplog.records)
        if r.name == "streamer.feed"
        and r.created >= since
        and "reconnecting with a new REQ socket" in r.getMessage()
    )


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- a. the producer disappears and comes back --------------------------------------------


@pytest.mark.parametrize("feed_mode", ["REQ", "PULL"])
def test_producer_restart_every_frame_arrives_exactly_once(
    tiny: Path, run_file: Path, tmp_path: Path, feed_mode: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The producer serves the first half and goes away (socket closed, port free); a new
    one on the same endpoint serves the rest with continuing train ids. The streamer
    (REQ: fresh socket after feed.reconnect_s; PULL: ZeroMQ reconnects) gets every frame
    exactly once, sees no train gap and stops at the second producer's end marker."""
    endpoint = free_endpoint()
    out = tmp_path / "out"
    half = N // 2
    server_mode = "REP" if feed_mode == "REQ" else "PUSH"
    cfg = config(tiny, endpoint, out, **{"feed.mode": feed_mode, "feed.reconnect_s": 0.5})

    def replay(**kw: Any) -> ReplayConfig:
        return ReplayConfig(path=run_file, endpoint=endpoint, mode=server_mode,
                            frames_per_message=K, linger_s=0.3, **kw)  # fmt: skip

    caplog.set_level(logging.DEBUG, logger="streamer.feed")
    with running(cfg) as (pipeline, result, t):
        with ReplayServer(replay(stop=half, end_marker=False)) as first:
            first.join(60)
        gone = time.time()  # the first producer has closed its socket
        wait_until(lambda: received(pipeline) >= half, 60, "the first half")
        wait_until(lambda: not feed_connections(endpoint), 30, "the streamer to see it gone")
        if feed_mode == "REQ":  # REQ gives up its unanswered request before the restart
            wait_until(
                lambda: req_resets_since(caplog, gone) > 0, 30, "a fresh REQ socket (reconnect_s)"
            )
        assert t.is_alive() and received(pipeline) == half
        with ReplayServer(replay(start=half, first_train_id=1 + half // K)) as second:
            second.join(60)
        t.join(60)
        assert not t.is_alive()
    s = result["s"]
    assert s.error is None, s.error
    assert s.frames_received == s.frames_classified == N
    assert not s.dropped and not s.rejected, (s.dropped, s.rejected)
    assert s.end_of_run is not None and s.end_of_run["frames"] == N - half
    assert written_ids(out, "r") == frame_ids(0, N)


# -- b. SIGKILL mid-run, then a restart on the same output -------------------------------


def _check_finished_file(path: Path) -> int:
    """A finished file opens normally and its tables are consistent; returns its rows."""
    with h5py.File(path, "r") as f:
        frames = {c: f[FRAMES_GROUP][c].shape[0] for c in f[FRAMES_GROUP]}
        kept = {c: f[KEPT_GROUP][c].shape[0] for c in f[KEPT_GROUP]}
        assert len(set(frames.values())) == 1, (path.name, frames)
        assert set(kept.values()) == {f[DATA_PATH].shape[0]}, (path.name, kept)
        assert f["entry_1/end_time"][()], f"{path.name}: no end_time"
        return next(iter(frames.values()))


def test_sigkill_leaves_consistent_files_and_a_restart_continues(
    tiny: Path, run_file: Path, tmp_path: Path
) -> None:
    """``streamer serve`` is killed (SIGKILL) with 6 files finished and a 7th open. Every
    finished file opens and is consistent, the ``.part`` opens as an SWMR reader with all
    it had flushed (the 4 frames after the last rotation), and a new ``streamer serve`` on
    the same directory and run first finishes that ``.part`` (recovery: the 4 frames, under
    its own name) and then continues with new sequence numbers, leaving the finished files
    byte-for-byte alone: in the end every frame is in a finished file exactly once."""
    out = tmp_path / "out"
    first_stop = 100  # 6 files of 16 frames, then 4 frames in the open file
    serve_args = (
        "streamer", "serve", "--model", tiny, "--out", out, "--run", "kill",
        "--metrics-port", "0", "--batch", "8",
        "--set", "output.min_free_bytes=0", "--set", "output.max_frames=16",
        "--set", "output.flush_every_s=0.2",
    )  # fmt: skip

    endpoint = free_endpoint()
    replay = ReplayConfig(path=run_file, endpoint=endpoint, frames_per_message=K, rate=400,
                          stop=first_stop, end_marker=False)  # fmt: skip
    with command(*serve_args, "--endpoint", endpoint) as serve, ReplayServer(replay) as server:
        ready = wait_for_line(serve, "streamer ready", 60)
        assert "http://127.0.0.1:" in ready
        server.join(60)
        wait_until(
            lambda: (
                len(list_run_files(out, "kill")) == 6
                and len(written_ids(out, "kill", include_part=True)) == first_stop
            ),
            60,
            "6 finished files and the 7th flushed",
        )
        # the default metrics address is loopback only: nothing else listens
        listening = [
            c.laddr for c in psutil.Process(serve.pid).net_connections("inet")
            if c.status == psutil.CONN_LISTEN
        ]  # fmt: skip
        assert listening and all(a.ip == "127.0.0.1" for a in listening), listening
        os.kill(serve.pid, signal.SIGKILL)
        assert serve.wait(timeout=30) == -signal.SIGKILL

    finished = list_run_files(out, "kill")
    parts = [p for p in list_run_files(out, "kill", include_part=True) if p not in finished]
    assert [p.name for p in parts] == ["kill_w0_0006.cxi.part"]
    assert sum(_check_finished_file(p) for p in finished) == 96
    assert written_ids(out, "kill") == frame_ids(0, 96)
    with h5py.File(parts[0], "r", libver="latest", swmr=True) as f:
        assert f[FRAMES_GROUP]["train_id"].shape[0] == 4
        assert f[DATA_PATH].shape[0] == 4
    assert written_ids(out, "kill", include_part=True) == frame_ids(0, first_stop)
    before = {p.name: sha256(p) for p in [*finished, *parts]}

    endpoint = free_endpoint()
    replay = ReplayConfig(path=run_file, endpoint=endpoint, frames_per_message=K,
                          start=first_stop, first_train_id=1 + first_stop // K)  # fmt: skip
    with command(*serve_args, "--endpoint", endpoint) as serve, ReplayServer(replay) as server:
        wait_for_line(serve, "streamer ready", 60)
        assert serve.wait(timeout=60) == 0, serve.stderr.read()
        server.join(30)
    assert {p.name: sha256(out / p.name) for p in finished} == {
        p.name: before[p.name] for p in finished
    }
    recovered = out / "kill_w0_0006.cxi"
    assert not parts[0].exists() and _check_finished_file(recovered) == 4
    new = [p for p in list_run_files(out, "kill") if p.name not in before and p != recovered]
    assert new and all(int(p.name.split("_")[2][:4]) > 6 for p in new), new
    assert not list(out.glob("*.part"))
    assert written_ids(out, "kill") == frame_ids(0, N)  # finished files: each frame once


# -- c. the disk fills up -----------------------------------------------------------------


@contextmanager
def small_tmpfs(path: Path, size: str = "8m") -> Iterator[str | None]:
    """Mount a tmpfs of ``size`` on ``path``; yields None, or why it could not be mounted."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                           capture_output=True, text=True)  # fmt: skip
    except OSError as exc:  # no mount command
        yield str(exc)
        return
    if r.returncode != 0:
        yield (r.stderr or r.stdout or f"mount exited {r.returncode}").strip()
        return
    try:
        yield None
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def test_real_enospc_pauses_output_and_ends_with_a_clear_error(
    tiny: Path, run_file: Path, tmp_path: Path
) -> None:
    """``streamer serve`` writing uncompressed frames to an 8 MiB tmpfs with the free-space
    guard off (output.min_free_bytes=0) hits the real ENOSPC in HDF5. It does not crash
    (HDF5 would segfault closing the failed file, so it is abandoned as last flushed): the
    output pauses, every frame is still classified to the end of the run, and it ends with
    exit code 1, "disk full" in the log and the summary, no traceback, every finished file
    intact and readable, and every classified frame's label on disk or counted lost."""
    out = tmp_path / "tmpfs"
    with small_tmpfs(out) as refused:
        if refused is not None:
            _disk_guard_fallback(tiny, tmp_path)
            pytest.skip(
                f"tmpfs mount refused ({refused}): the real ENOSPC path was NOT tested; "
                "only the output.min_free_bytes guard was (and passed)"
            )
        endpoint = free_endpoint()
        replay = ReplayConfig(path=run_file, endpoint=endpoint, frames_per_message=K)
        with (
            command(
                "streamer", "serve", "--model", tiny, "--endpoint", endpoint, "--out", out,
                "--run", "full", "--metrics-port", "-1", "--batch", "8",
                "--set", "output.min_free_bytes=0", "--set", "output.max_frames=8",
                "--set", "output.compression='none'",
            ) as serve,
            ReplayServer(replay),
        ):  # fmt: skip
            code = serve.wait(timeout=120)
            stdout, stderr = serve.stdout.read(), serve.stderr.read()
        assert code == 1, f"exit code {code}\n{stderr[-3000:]}"
        assert "Traceback" not in stderr, stderr[-3000:]
        assert "disk full" in stderr
        summary = json.loads(stdout.split("summary ", 1)[1].splitlines()[0])
        assert "disk full" in summary["error"], summary["error"]
        finished = list_run_files(out, "full")
        assert finished, "some files should have been finished before the disk filled"
        rows = sum(_check_finished_file(p) for p in finished)
        tables = read_run(out, "full")
        assert len(tables.train_id) == rows == len(set(written_ids(out, "full")))
        assert rows < summary["frames_classified"]  # the rest could not be written
        acc = summary["accounting"]
        assert acc["balanced"] and acc["classified"] == summary["frames_classified"]
        assert acc["labels_on_disk"] + acc["labels_unrecorded"] == acc["classified"], acc
        assert acc["labels_on_disk"] >= rows


def _disk_guard_fallback(tiny: Path, tmp_path: Path) -> None:
    """Without a tmpfs: the min_free_bytes guard stops the run cleanly (files intact)."""
    endpoint = free_endpoint()
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.bind(endpoint)
    out = tmp_path / "guard"
    cfg = config(tiny, endpoint, out, **{"feed.mode": "PULL", "output.min_free_bytes": 1 << 62})
    with running(cfg) as (_, result, t):
        frames = np.ones((K, 260, 257), np.float32)
        for tid in range(1, 4):
            push.send_multipart(
                serialize({"d": {"image.data": frames}}, {"d": {"timestamp.tid": tid}})
            )
        push.send_multipart(serialize({END_OF_RUN_SOURCE: {"run": "r", "frames": 0, "trains": 0}}))
        t.join(60)
    push.close(linger=0)
    s = result["s"]
    assert s.error is not None and "free" in s.error, f"fallback (no tmpfs): {s.error}"
    assert not list(out.glob("*.part")), "fallback (no tmpfs): a .part file was left"


# -- d. a slow disk -----------------------------------------------------------------------


def _slow_disk_config(bundle: Path, endpoint: str, out: Path, mode: str) -> Any:
    """gzip on noisy frames, flushed after every batch, short queues: the writer is slow."""
    return config(bundle, endpoint, out, **{
        "feed.mode": "PULL", "feed.hwm": 1, "pipeline.mode": mode, "pipeline.queue_size": 1,
        "engine.max_batch": K, "output.compression": "gzip", "output.flush_every_s": 0.0,
        "output.max_frames": 400,
    })  # fmt: skip


def _push_socket(endpoint: str) -> zmq.Socket:
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.SNDHWM, 1)
    push.setsockopt(zmq.SNDBUF, 1 << 16)  # small kernel buffer: back-pressure shows quickly
    push.setsockopt(zmq.LINGER, 0)
    push.bind(endpoint)
    return push


def test_slow_disk_lossless_pushes_back_on_the_producer(tiny: Path, tmp_path: Path) -> None:
    """Lossless mode with a slow writer: the producer's sends block (back-pressure through
    the queues and the socket), and still every frame is written exactly once."""
    endpoint = free_endpoint()
    out = tmp_path / "out"
    push = _push_socket(endpoint)
    noise = np.random.default_rng(0).random((K, 260, 257), dtype=np.float32)
    messages = 60
    blocked = 0
    with running(_slow_disk_config(tiny, endpoint, out, "lossless")) as (pipeline, result, t):
        push.send_multipart(serialize({"d": {"image.data": noise}}, {"d": {"timestamp.tid": 1}}))
        wait_until(lambda: received(pipeline) == K, 30, "the first message")  # connected
        for tid in range(2, messages + 1):
            parts = serialize({"d": {"image.data": noise}}, {"d": {"timestamp.tid": tid}})
            while True:
                try:
                    push.send_multipart(parts, flags=zmq.NOBLOCK, copy=False)
                    break
                except zmq.Again:  # the streamer is not taking more: wait
                    blocked += 1
                    push.poll(100, zmq.POLLOUT)
        push.send_multipart(serialize({END_OF_RUN_SOURCE: {"run": "r", "frames": 0, "trains": 0}}))
        t.join(120)
    push.close(linger=0)
    s = result["s"]
    assert s.error is None, s.error
    assert blocked > 0, "the producer never had to wait: no back-pressure"
    assert not s.dropped, s.dropped
    assert s.frames_classified == messages * K
    assert written_ids(out, "r") == [(tid, p) for tid in range(1, messages + 1) for p in range(K)]


def test_slow_disk_live_drops_and_counts_with_bounded_memory(tiny: Path, tmp_path: Path) -> None:
    """Live mode with a slow writer: the feed is never held up, frames that find no room
    are dropped and counted (classified + dropped = sent), what was classified is
    written, and memory stays bounded although ~320 MB went through."""
    endpoint = free_endpoint()
    out = tmp_path / "out"
    push = _push_socket(endpoint)
    noise = np.random.default_rng(0).random((K, 260, 257), dtype=np.float32)
    messages = 300
    proc = psutil.Process()
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], proc.memory_info().rss)

    with running(_slow_disk_config(tiny, endpoint, out, "live")) as (pipeline, result, t):
        pipeline.ready.wait(30)
        base = proc.memory_info().rss
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        for tid in range(1, messages + 1):
            push.send_multipart(serialize({"d": {"image.data": noise}},
                                          {"d": {"timestamp.tid": tid}}), copy=False)  # fmt: skip
        push.send_multipart(serialize({END_OF_RUN_SOURCE: {"run": "r", "frames": 0, "trains": 0}}))
        t.join(120)
        done.set()
        sampler.join()
    push.close(linger=0)
    s = result["s"]
    sent = messages * K
    overflow = s.dropped.get("queue_full", 0) + s.dropped.get("no_buffer", 0)
    assert s.error is None, s.error
    assert s.frames_received == sent
    assert overflow > 0, "the slow writer should have made the live queues overflow"
    assert "train_gap" not in s.missed
    assert s.frames_classified + overflow == sent, s.dropped
    assert s.accounting["balanced"], s.accounting
    assert len(written_ids(out, "r")) == s.frames_classified
    grown = peak[0] - base
    assert grown < 100 << 20, f"memory grew by {grown >> 20} MiB while {sent} frames arrived"


# -- e. a corrupted model bundle ----------------------------------------------------------


@pytest.mark.parametrize("manifest_updated", [True, False])
def test_corrupted_model_is_refused_at_startup_naming_the_file(
    tmp_path: Path, manifest_updated: bool
) -> None:
    """A truncated model.onnx: with its sha256 in the manifest updated onnxruntime cannot
    load it (reported as a bundle error), without the update the checksum catches it. The
    CLI exits 2 with a message naming the file, before touching any feed or output."""
    bundle = make_tiny_bundle(tmp_path / "broken")
    model = bundle / "model.onnx"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    if manifest_updated:
        manifest = json.loads((bundle / "manifest.json").read_text())
        write_manifest(bundle, {k: v for k, v in manifest.items() if k != "files"})
    out = tmp_path / "out"
    with command("streamer", "serve", "--model", bundle, "--out", out, "--metrics-port", "-1",
                 "--endpoint", free_endpoint()) as p:  # fmt: skip
        assert p.wait(timeout=60) == 2
        err = p.stderr.read()
    assert str(model) in err or str(model.resolve()) in err, err
    assert ("onnxruntime cannot load" if manifest_updated else "corrupted: sha256") in err, err
    assert "Traceback" not in err and not out.exists()
