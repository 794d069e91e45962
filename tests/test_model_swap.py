"""Hot model swap: validated off the hot path, switched between batches, no frame lost."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from pathlib import Path

import h5py
import numpy as np
import pytest

from streamer.config import load_config
from streamer.pipeline import Pipeline
from streamer.readback import read_run
from streamer.replay import ReplayConfig, ReplayServer
from tests.helpers_stream import running_pipeline, wait_for_line
from tests.procs import command, free_endpoint
from tests.tiny_bundle import make_tiny_bundle

N, K = 300, 5


@pytest.fixture(scope="module")
def run_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("run") / "run.h5"
    rng = np.random.default_rng(3)
    frames = rng.poisson(rng.choice([0.001, 0.05], size=(N, 1, 1)), size=(N, 260, 257))
    with h5py.File(path, "w") as f:
        f["data"] = frames.astype(np.float32)
    return path


def wait_until(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_swap_mid_run_loses_nothing_and_records_versions(run_file: Path, tmp_path: Path) -> None:
    v1 = make_tiny_bundle(tmp_path / "v1", version="1")
    v2 = make_tiny_bundle(tmp_path / "v2", version="2")
    bad = make_tiny_bundle(tmp_path / "bad", version="3")
    (bad / "model.onnx").write_bytes((bad / "model.onnx").read_bytes()[:-10])
    wrong_shape = make_tiny_bundle(tmp_path / "small", shape=(64, 64), version="4")
    out = tmp_path / "out"
    with ReplayServer(
        ReplayConfig(
            path=run_file,
            dataset="data",
            endpoint="tcp://127.0.0.1:0",
            frames_per_message=K,
            rate=600,
        )
    ) as replay:
        cfg = load_config(
            None,
            {
                "model": str(v1),
                "feed.endpoint": replay.endpoint,
                "output.dir": str(out),
                "output.min_free_bytes": 0,
                "engine.max_batch": 16,
                "pipeline.max_delay_s": 0.01,
            },
        )
        pipeline = Pipeline(cfg)

        def classified() -> float:
            return pipeline.metrics.value("hitstream_frames_classified_total")

        with running_pipeline(pipeline) as run:
            wait_until(lambda: classified() >= 60)
            refused = pipeline.swapper.request(bad)
            assert not refused.ok and "corrupted" in refused.message and refused.model == "tiny:1"
            refused = pipeline.swapper.request(wrong_shape)
            assert not refused.ok and "differ from the running" in refused.message
            at_swap = classified()
            ok = pipeline.swapper.request(v2)
            assert ok.ok and ok.model == "tiny:2"
            summary = run.wait(60)
    assert at_swap < N, "the swap must happen mid-run for this test to mean anything"
    assert summary.frames_classified == N and summary.model == "tiny:2"
    assert pipeline.metrics.value("hitstream_model_swaps_total", result="refused") == 2
    assert pipeline.metrics.value("hitstream_model_swaps_total", result="ok") == 1
    tables = read_run(out, "run")
    index = (tables.train_id.astype(np.int64) - 1) * K + tables.pulse_id.astype(np.int64)
    assert sorted(index.tolist()) == list(range(N))
    versions = np.array(tables.model_versions(tables.frames))
    order = np.argsort(index)
    in_order = versions[order]
    assert set(in_order) == {"tiny:1", "tiny:2"}
    switch = int(np.argmax(in_order == "tiny:2"))
    assert (in_order[:switch] == "tiny:1").all() and (in_order[switch:] == "tiny:2").all()


def test_swap_over_http_and_by_watching_the_model_path(run_file: Path, tmp_path: Path) -> None:
    live = tmp_path / "current"
    make_tiny_bundle(live, version="1")
    endpoint = free_endpoint()
    with (
        command(
            "streamer",
            "serve",
            "--model",
            live,
            "--endpoint",
            endpoint,
            "--out",
            tmp_path / "out",
            "--metrics-port",
            "0",
            "--set",
            "output.min_free_bytes=0",
            "--set",
            "pipeline.model_watch_s=0.1",
        ) as serve,
        command(
            "streamer",
            "replay",
            run_file,
            "--dataset",
            "data",
            "--endpoint",
            endpoint,
            "-k",
            "2",
            "--rate",
            "100",
        ) as replay,
    ):
        url = wait_for_line(serve, "streamer ready", 60).split("metrics ", 1)[1].strip()
        base = url.rsplit("/", 1)[0]
        wait_for_line(replay, "ready", 60)

        def post(path: str) -> tuple[int, dict]:
            req = urllib.request.Request(
                f"{base}/model",
                data=json.dumps({"path": str(path)}).encode(),
                method="POST",
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=30) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        code, answer = post(tmp_path / "missing")
        assert code == 409 and "does not exist" in answer["message"]
        code, answer = post(make_tiny_bundle(tmp_path / "v2", version="2"))
        assert code == 200 and answer["model"] == "tiny:2"
        # an operator installs a new bundle by renaming a complete directory into place
        staged = make_tiny_bundle(tmp_path / "staged", version="3")
        os.rename(live, tmp_path / "old")
        os.rename(staged, live)

        def model_version() -> str:
            text = urllib.request.urlopen(url, timeout=5).read().decode()
            line = next(x for x in text.splitlines() if x.startswith("hitstream_model_info"))
            return line.split('version="')[1].split('"')[0]

        wait_until(lambda: model_version() == "3")
        serve.terminate()
        assert serve.wait(timeout=60) == 0
