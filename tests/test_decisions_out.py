"""Decisions out: each train's per-frame results, read live with ``karabo_bridge.Client``.

Real parts: our replay server, the pipeline with onnxruntime and the CXI writer, the
decisions socket on 127.0.0.1 and the official Karabo-bridge client.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import karabo_bridge
import numpy as np
import pytest

from hitstream.bundle import load_bundle
from hitstream.errors import ConfigError
from streamer.config import load_config
from streamer.decisions_out import DecisionPublisher, DecisionsConfig
from streamer.metrics import Metrics
from streamer.pipeline import Pipeline
from streamer.readback import read_run
from streamer.replay import ReplayConfig, ReplayServer
from tests.helpers_stream import running_pipeline, write_frames
from tests.procs import free_endpoint
from tests.tiny_bundle import make_tiny_bundle

N, PER = 96, 16  # frames, frames per train


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bundle(tmp_path_factory.mktemp("decisions") / "tiny")


def _pipeline(bundle: Path, tmp_path: Path, replay: ReplayServer, **decisions: object):
    overrides = {
        "model": str(bundle), "feed.endpoint": replay.endpoint, "feed.mode": "PULL",
        "output.dir": str(tmp_path / "out"), "output.run": "r", "output.min_free_bytes": 0,
        "metrics.port": -1, **{f"decisions.{k}": v for k, v in decisions.items()},
    }  # fmt: skip
    return Pipeline(load_config(None, overrides))


def _wait(condition, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)  # poll, bounded by the deadline


def test_karabo_client_reads_every_trains_decisions(bundle: Path, tmp_path: Path) -> None:
    write_frames(tmp_path / "r.h5", n=N, shape=(260, 257), dtype="float32")
    cfg = ReplayConfig(
        tmp_path / "r.h5", dataset="data", endpoint="tcp://127.0.0.1:0", mode="PUSH",
        frames_per_message=PER, first_train_id=500, linger_s=0.2,
    )  # fmt: skip
    with ReplayServer(cfg) as replay:
        pipeline = _pipeline(bundle, tmp_path, replay, endpoint=free_endpoint(), mode="PUB")
        assert pipeline.decisions is not None
        with karabo_bridge.Client(pipeline.decisions.endpoint, sock="SUB", timeout=20) as client:
            _wait(lambda: pipeline.decisions.poll_readers() >= 1)  # subscribed: nothing lost
            with running_pipeline(pipeline) as run:
                got = [client.next() for _ in range(N // PER)]
        summary = run.wait(0)
    tables = read_run(tmp_path / "out", "r").frames
    order = np.lexsort((tables.pulse_id, tables.train_id))
    src = "hitstream/decisions"
    tids = [meta[src]["timestamp.tid"] for _, meta in got]
    assert tids == list(range(500, 500 + N // PER))
    labels = np.concatenate([d[src]["label"] for d, _ in got])
    np.testing.assert_array_equal(labels, tables.label[order])
    probs = np.concatenate([d[src]["probabilities"] for d, _ in got])
    np.testing.assert_allclose(probs, tables.probabilities[order], rtol=1e-6)
    keep = np.concatenate([d[src]["keep"] for d, _ in got]).astype(bool)
    np.testing.assert_array_equal(keep, tables.kept[order])
    first = got[0][0][src]
    assert first["trainId"] == 500 and first["pulseId"].tolist() == list(range(PER))
    assert first["classes"] == list(load_bundle(bundle).classes)
    assert first["class_name"][0] == first["classes"][int(first["label"][0])]
    assert first["model_version"] == summary.model
    level = first["background_level"]
    assert isinstance(level, float) and (math.isnan(level) or level >= 0)
    assert summary.decisions["sent"] == N // PER and summary.decisions["dropped"] == 0


def test_no_reader_never_slows_the_classifier(bundle: Path, tmp_path: Path) -> None:
    """PUSH with nobody pulling: every frame is classified and written, every decision
    message is dropped and counted."""
    write_frames(tmp_path / "r.h5", n=N, shape=(260, 257), dtype="float32")
    cfg = ReplayConfig(
        tmp_path / "r.h5", dataset="data", endpoint="tcp://127.0.0.1:0", mode="PUSH",
        frames_per_message=PER, linger_s=0.2,
    )  # fmt: skip
    with ReplayServer(cfg) as replay:
        pipeline = _pipeline(bundle, tmp_path, replay, endpoint=free_endpoint(), mode="PUSH")
        with running_pipeline(pipeline) as run:
            _wait(lambda: pipeline.metrics.value("hitstream_frames_classified_total") >= N)
            _wait(lambda: pipeline.metrics.value("hitstream_decisions_dropped_total") >= N // PER)
        summary = run.wait(0)
    assert summary.frames_classified == N and summary.error is None
    assert summary.decisions["dropped"] == N // PER and summary.decisions["sent"] == 0


def test_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"decisions\.mode"):
        DecisionsConfig(mode="REP")
    with pytest.raises(ConfigError, match=r"decisions\.endpoint"):
        DecisionPublisher(DecisionsConfig(endpoint="tcp://not-an-address:x"), Metrics())
