"""Hot model swap: validated off the hot path, switched between batches, no frame lost."""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from hitstream.errors import ConfigError
from streamer.config import load_config
from streamer.http_server import StatusServer
from streamer.model_swap import model_roots, parse_swap_body, resolve_within
from streamer.pipeline import Pipeline
from streamer.readback import read_run
from streamer.replay import ReplayConfig, ReplayServer
from streamer.serve import _install_signal_handlers, status_server
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


def wait_until(cond: Callable[[], bool], timeout: float = 30.0) -> None:
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

        def post(path: str | Path) -> tuple[int, dict]:
            return post_model(base, path)

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


# -- POST /model: bundles under the model roots only ---------------------------------------


def post_model(server: StatusServer | str, path: str | Path) -> tuple[int, dict]:
    """``POST /model {"path": ...}`` over HTTP (to a server or its base URL), as an
    operator's curl would send it."""
    base = server if isinstance(server, str) else server.url
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


def swaps(pipeline: Pipeline, result: str) -> float:
    return pipeline.metrics.value("hitstream_model_swaps_total", result=result)


def test_post_model_takes_bundles_under_the_model_roots_only(tmp_path: Path) -> None:
    """Default roots: the configured model's store. Paths that leave it once resolved (a
    symlink, ``..``, ``..`` through a symlink) are refused with 403 naming the roots and
    counted; a path inside (also through a symlink inside) is swapped in."""
    store = tmp_path / "store"
    v1 = make_tiny_bundle(store / "v1", version="1")
    make_tiny_bundle(store / "v2", version="2")
    evil = make_tiny_bundle(tmp_path / "elsewhere" / "evil", version="666")
    (tmp_path / "elsewhere" / "sub").mkdir()
    (store / "link").symlink_to(evil, target_is_directory=True)
    (store / "hop").symlink_to(tmp_path / "elsewhere" / "sub", target_is_directory=True)
    (store / "current").symlink_to(store / "v2", target_is_directory=True)
    cfg = load_config(
        None, {"model": str(v1), "output.dir": str(tmp_path / "out"), "metrics.port": 0}
    )
    pipeline = Pipeline(cfg)
    server = status_server(pipeline)
    assert server is not None
    with server:
        escapes: list[str | Path] = [
            evil,  # a valid bundle, elsewhere
            store / "link",  # a symlink out of the store
            store / "v1" / ".." / ".." / "elsewhere" / "evil",  # `..` out of the store
            store / "hop" / ".." / "evil",  # lexically in the store; really not
            "/",
        ]
        for path in escapes:
            code, answer = post_model(server, path)
            assert code == 403, (path, answer)
            assert answer["allowed_roots"] == [str(store.resolve())] and not answer["ok"]
            assert answer["model"] == "tiny:1"
        assert swaps(pipeline, "refused") == len(escapes) and swaps(pipeline, "ok") == 0
        assert pipeline.model.version == "tiny:1"

        code, answer = post_model(server, store / "nothing-here")  # inside, not a bundle
        assert code == 409 and "allowed_roots" not in answer
        assert swaps(pipeline, "refused") == len(escapes) + 1
        code, answer = post_model(server, store / "current")  # a symlink inside the store
        assert (code, answer["model"]) == (200, "tiny:2")
        code, answer = post_model(server, store / "v2" / ".." / "v1")
        assert (code, answer["model"]) == (200, "tiny:1")
    assert swaps(pipeline, "ok") == 2


def test_configured_model_roots_and_reloads_of_the_configured_path(tmp_path: Path) -> None:
    """``metrics.model_roots`` replaces the default: the configured model's own store is
    then refused over HTTP, while SIGHUP (the real handler) still reloads the configured
    path. ``model_roots = []`` refuses every path."""
    v1 = make_tiny_bundle(tmp_path / "store" / "v1", version="1")
    other = make_tiny_bundle(tmp_path / "approved" / "v5", version="5")
    cfg = load_config(
        None,
        {
            "model": str(v1),
            "output.dir": str(tmp_path / "out"),
            "metrics.port": 0,
            "metrics.model_roots": [str(tmp_path / "approved")],
        },
    )
    pipeline = Pipeline(cfg)
    server = status_server(pipeline)
    assert server is not None
    with server:
        code, answer = post_model(server, v1)
        assert code == 403 and answer["allowed_roots"] == [str((tmp_path / "approved").resolve())]
        code, answer = post_model(server, other)
        assert (code, answer["model"]) == (200, "tiny:5")
    restore = _install_signal_handlers(pipeline)
    try:
        os.kill(os.getpid(), signal.SIGHUP)  # reload the configured model: tiny:1 again
        wait_until(lambda: pipeline.model.version == "tiny:1")
    finally:
        restore()
    assert swaps(pipeline, "ok") == 2 and swaps(pipeline, "refused") == 1

    nothing = Pipeline(
        load_config(
            None,
            {
                "model": str(v1),
                "output.dir": str(tmp_path / "o2"),
                "metrics.port": 0,
                "metrics.model_roots": [],
            },
        )
    )
    server = status_server(nothing)
    assert server is not None
    with server:
        code, answer = post_model(server, v1)
    assert code == 403 and answer["allowed_roots"] == [] and "none" in answer["message"]


def test_model_roots_resolution(tmp_path: Path) -> None:
    (tmp_path / "models" / "v1").mkdir(parents=True)
    (tmp_path / "models" / "current").symlink_to(tmp_path / "models" / "v1")
    # the store is where the configured path lies, not where its symlink points
    assert model_roots(tmp_path / "models" / "current", None) == ((tmp_path / "models").resolve(),)
    assert model_roots("m/x", None) == ((Path.cwd() / "m").resolve(),)
    assert model_roots("m/x", [tmp_path / "a" / ".." / "b"]) == ((tmp_path / "b").resolve(),)
    roots = model_roots(tmp_path / "models" / "v1", None)
    assert (
        resolve_within(tmp_path / "models" / "current", roots)
        == (tmp_path / "models" / "v1").resolve()
    )
    assert resolve_within(tmp_path / "models" / ".." / "models2", roots) is None
    loop = tmp_path / "models" / "loop"
    loop.symlink_to(loop)
    found = resolve_within(loop, roots)  # None, or the loop itself: loading then fails
    assert found is None or found.parent == roots[0]
    assert resolve_within(tmp_path / "models" / "a\0b", roots) is None
    for body in (b'{"path": "a\\u0000b"}', b'{"path": 5}', b'{"path": ""}', b"[]", b"\xff"):
        with pytest.raises(ConfigError):
            parse_swap_body(body)
    assert parse_swap_body(b'{"path": "models/v1"}') == Path("models/v1")
