"""The streamer end to end on loopback: replay → serve → CXI files, metrics, shutdown."""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import onnxruntime as ort
import pytest
import zmq

from streamer.config import load_config
from streamer.decode import END_OF_RUN_SOURCE
from streamer.http_server import StatusServer
from streamer.metrics import Metrics
from streamer.pipeline import Pipeline
from streamer.protocol import serialize
from streamer.readback import list_run_files, read_kept_frames, read_run
from streamer.replay import ReplayConfig, ReplayServer
from tests.helpers_stream import running_pipeline, wait_for_line
from tests.procs import command, free_endpoint
from tests.tiny_bundle import make_tiny_bundle

K = 16  # frames per message


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small run of Poisson frames: about half bright ('single' for the tiny model)."""
    path = tmp_path_factory.mktemp("run") / "run.h5"
    rng = np.random.default_rng(1)
    lam = rng.choice([0.001, 0.05], size=(200, 1, 1))
    frames = rng.poisson(lam, size=(200, 260, 257)).astype(np.float32)
    with h5py.File(path, "w") as f:
        f.create_dataset("entry_1/data_1/data", data=frames, chunks=(1, 260, 257))
    return path


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("bundle") / "tiny")


def offline_decisions(bundle_path: Path, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Labels and keep flags computed without the streamer: onnxruntime on the bundle's
    graph, argmax, and the manifest's keep classes and thresholds read as plain JSON."""
    manifest = json.loads((bundle_path / "manifest.json").read_text())
    session = ort.InferenceSession(
        str(bundle_path / "model.onnx"), providers=["CPUExecutionProvider"]
    )
    (probs,) = session.run(["probabilities"], {manifest["input"]["name"]: frames})
    label = probs.argmax(axis=1)
    keep = np.zeros(len(frames), bool)
    for i, (lab, p) in enumerate(zip(label.tolist(), probs.tolist(), strict=True)):
        name = manifest["classes"][lab]
        threshold = manifest["thresholds"].get(name)  # no threshold: argmax alone decides
        keep[i] = name in manifest["keep_classes"] and (threshold is None or p[lab] >= threshold)
    return label, keep


def serve_config(bundle: Path, endpoint: str, out: Path, **extra: object) -> object:
    overrides = {
        "model": str(bundle),
        "feed.endpoint": endpoint,
        "output.dir": str(out),
        "output.run": "r1",
        "output.min_free_bytes": 0,
        "output.max_frames": 40,
        "engine.max_batch": 32,
        **extra,
    }
    return load_config(None, overrides)


def test_replay_to_pipeline_writes_every_frame_once_with_offline_labels(
    run_file: Path, tiny: Path, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    with h5py.File(run_file) as f:
        frames = f["entry_1/data_1/data"][()]
    with ReplayServer(
        ReplayConfig(path=run_file, endpoint="tcp://127.0.0.1:0", frames_per_message=K)
    ) as replay:
        metrics = Metrics()
        pipeline = Pipeline(serve_config(tiny, replay.endpoint, out), metrics=metrics)
        http = StatusServer(metrics, "127.0.0.1", 0).start()
        try:
            summary = pipeline.run()
            body = urllib.request.urlopen(f"{http.url}/metrics", timeout=5).read().decode()
        finally:
            http.stop()
        replay.join(timeout=30)

    assert summary.error is None and summary.frames_classified == 200
    assert summary.end_of_run == {"run": "run", "frames": 200, "trains": 200 // K + 1}
    # the run's background was estimated (the tiny bundle does not take it) and recorded
    assert summary.background["enabled"] and summary.background["version"] >= 1
    assert 0 < summary.latency["p50_ms"] <= summary.latency["p99_ms"]
    # metrics, scraped over HTTP
    assert "hitstream_frames_classified_total 200.0" in body
    assert "hitstream_background_level " in body and "hitstream_background_warm " in body
    assert 'hitstream_engine_info{provider="CPU"' in body
    assert 'hitstream_model_info{name="tiny"' in body
    # the files: finished names only, every frame exactly once, labels as computed offline
    assert not list(out.glob("*.part"))
    files = list_run_files(out, "r1")
    assert len(files) >= 2  # 40 kept frames per file -> rotated
    tables = read_run(out, "r1")
    index = (tables.train_id.astype(np.int64) - 1) * K + tables.pulse_id.astype(np.int64)
    assert sorted(index.tolist()) == list(range(200))
    label, keep = offline_decisions(tiny, frames)
    assert 0 < keep.sum() < len(frames), "the run should hold kept and dropped frames"
    assert set(label.tolist()) >= {0, 2}  # 'single' and 'empty' frames both occur
    np.testing.assert_array_equal(tables.label, label[index])
    np.testing.assert_array_equal(tables.frames.kept, keep[index])
    assert (tables.frames.background >= 0).all() and np.isfinite(
        tables.frames.background_level
    ).all()
    # kept pixels are the sent pixels, bit for bit
    kept_rows = np.flatnonzero(tables.frames.kept)
    got = read_kept_frames(out, "r1", tables.frames.kept_index[kept_rows[:5]])
    np.testing.assert_array_equal(got, frames[index[kept_rows[:5]]])
    # the run index presents all files as one dataset
    with h5py.File(summary.index) as idx:
        assert idx["entry_1/data_1/data"].shape == (int(keep.sum()), 260, 257)


def test_bad_messages_are_counted_and_good_frames_still_written(tiny: Path, tmp_path: Path) -> None:
    endpoint = free_endpoint()
    ctx = zmq.Context.instance()
    push = ctx.socket(zmq.PUSH)
    push.bind(endpoint)
    out = tmp_path / "out"
    cfg = serve_config(tiny, endpoint, out, **{"feed.mode": "PULL"})
    good = np.ones((4, 260, 257), np.float32)
    nan = good.copy()
    nan[1, 5, 5] = np.nan

    def msg(tid: int, arr: np.ndarray) -> list:
        meta = {"src": {"source": "src", "timestamp.tid": tid}}
        return serialize({"src": {"image.data": arr}}, meta)

    try:
        with running_pipeline(Pipeline(cfg)) as run:
            push.send_multipart(msg(1, good))
            push.send_multipart([b"\x00garbage"])
            push.send_multipart([b"\x81\xa1a\x01", b"\xc1"])  # bad msgpack
            push.send_multipart(msg(2, np.ones((4, 10, 10), np.float32)))  # wrong frame shape
            push.send_multipart(msg(3, nan))
            push.send_multipart(msg(4, good.astype(np.uint16)))
            end = {"run": "x", "frames": 16, "trains": 4}
            push.send_multipart(serialize({END_OF_RUN_SOURCE: end}))
            summary = run.wait(60)
    finally:
        push.close(linger=0)
    assert summary.frames_classified == 4 + 3 + 4
    assert summary.rejected == {"nonfinite": 1}  # a frame received and refused
    # whole messages refused: their frames were never received
    assert summary.messages_rejected == {"shape": 1, "parts": 1, "header": 1}
    # the balance, in frames, with no double counting, against the producer's count
    acc = summary.accounting
    assert acc["received"] == 12 == acc["classified"] + acc["rejected"] + acc["dropped"]
    assert acc["balanced"] and acc["in_flight"] == 0
    assert acc["producer_frames"] == 16 and acc["never_seen"] == 4  # the wrong-shape train
    assert acc["labels_on_disk"] == 11
    tables = read_run(out, "r1")
    assert sorted(set(tables.train_id.tolist())) == [1, 3, 4]


def test_serve_cli_sigterm_finishes_batches_and_closes_files(
    run_file: Path, tiny: Path, tmp_path: Path
) -> None:
    endpoint = free_endpoint()
    out = tmp_path / "out"
    summary_json = tmp_path / "summary.json"
    with (
        command(
            "streamer",
            "serve",
            "--model",
            tiny,
            "--endpoint",
            endpoint,
            "--out",
            out,
            "--run",
            "sig",
            "--metrics-port",
            "0",
            "--summary-json",
            summary_json,
            "--set",
            "output.min_free_bytes=0",
        ) as serve,
        command(
            "streamer", "replay", run_file, "--endpoint", endpoint, "-k", "4", "--rate", "200"
        ) as replay,
    ):
        ready = wait_for_line(serve, "streamer ready", 60)
        url = ready.split("metrics ", 1)[1].strip().rsplit("/", 1)[0]
        wait_for_line(replay, "ready", 60)
        with urllib.request.urlopen(f"{url}/ready", timeout=5) as r:
            assert r.status == 200

        # wait until frames flow, then stop the streamer mid-run
        def classified() -> float:
            text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
            line = [
                x for x in text.splitlines() if x.startswith("hitstream_frames_classified_total")
            ]
            return float(line[0].split()[-1]) if line else 0.0

        deadline = time.monotonic() + 60
        while classified() < 20:
            assert serve.poll() is None, "the streamer ended before 20 frames were classified"
            assert time.monotonic() < deadline, "fewer than 20 frames classified in 60 s"
            time.sleep(0.05)  # poll interval, bounded by the deadline
        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=60) == 0
    summary = json.loads(summary_json.read_text())
    assert 20 <= summary["frames_classified"] < 200
    assert set(summary["background"]) == {"enabled", "level", "warm", "frames", "version"}
    assert (out / "sig_w0_background.h5").is_file()  # saved at the end for a restart
    assert not list(out.glob("*.part"))
    tables = read_run(out, "sig")
    assert len(tables.train_id) == summary["frames_classified"] == summary["frames_received"]


def test_serve_refuses_a_missing_model_clearly(tmp_path: Path) -> None:
    with command("streamer", "serve", "--model", tmp_path / "nope", "--metrics-port", "-1") as p:
        assert p.wait(timeout=60) == 2
        err = p.stderr.read()
    assert "does not exist" in err and "nope" in err
