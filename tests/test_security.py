"""Security options and guards: no unsafe deserialisation, bounded messages, CurveZMQ,
loopback-only metrics, control beyond loopback only with the token, run names that cannot
leave the output directory."""

from __future__ import annotations

import argparse
import ast
import http.client
import json
import socket
import time
from pathlib import Path

import h5py
import numpy as np
import psutil
import pytest
import zmq

from hitstream.errors import ConfigError
from hitstream.http_base import TOKEN_ENV
from streamer.config import load_config
from streamer.decode import END_OF_RUN_SOURCE
from streamer.feed import FeedClient
from streamer.http_server import StatusServer
from streamer.metrics import Metrics
from streamer.pipeline import Pipeline
from streamer.protocol import serialize
from streamer.readback import read_run
from streamer.replay import ReplayConfig, ReplayServer, add_arguments, config_from_args
from streamer.security import create_keypair, curve_available
from streamer.serve import status_server
from tests.helpers_stream import read_run as read_feed
from tests.helpers_stream import running_pipeline
from tests.procs import command, free_endpoint
from tests.tiny_bundle import make_tiny_bundle

ROOT = Path(__file__).resolve().parents[1]

# -- static guard: nothing deserialises code-bearing formats ----------------------------

_BANNED_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve",
                   "joblib", "jsonpickle"}  # fmt: skip
_BANNED_BUILTINS = {"eval", "exec", "compile", "__import__"}
_BANNED_METHODS = {"read_pickle", "unsafe_load", "full_load"}  # pandas, PyYAML


def unsafe_uses(source: str, filename: str = "<src>") -> list[str]:
    """``file:line: what`` for each use of pickle-like modules, eval/exec, ``np.load(...,
    allow_pickle=True)``, ``yaml.load`` without a safe loader, ``torch.load``, Keras
    ``safe_mode=False`` or ``subprocess(..., shell=True)`` in a Python source."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        where = f"{filename}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names]
            if isinstance(node, ast.ImportFrom) and node.module:
                names.append(node.module)
            for name in names:
                if name.split(".")[0] in _BANNED_MODULES:
                    found.append(f"{where}: imports {name}")
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")
        owner = func.value.id if isinstance(func, ast.Attribute) and isinstance(
            func.value, ast.Name) else ""  # fmt: skip
        kw = {k.arg: k.value for k in node.keywords}
        if (isinstance(func, ast.Name) and name in _BANNED_BUILTINS) or name in _BANNED_METHODS:
            found.append(f"{where}: calls {name}()")
        pickle_kw = kw.get("allow_pickle", ast.Constant(False))
        if (
            name == "load"
            and owner in ("np", "numpy")
            and not (isinstance(pickle_kw, ast.Constant) and pickle_kw.value is False)
        ):
            found.append(f"{where}: np.load(allow_pickle=...)")
        if name in ("load", "load_all") and owner == "yaml":
            loader = ast.unparse(kw.get("Loader", ast.Constant(None)))
            if "Safe" not in loader:
                found.append(f"{where}: yaml.{name} without a safe Loader")
        if name == "load" and owner == "torch":
            found.append(f"{where}: torch.load")
        for key, bad in (("safe_mode", False), ("shell", True)):
            if key in kw and isinstance(kw[key], ast.Constant) and kw[key].value is bad:
                found.append(f"{where}: {name}({key}={bad})")
    return found


def test_static_guard_catches_what_it_looks_for() -> None:
    bad = """
import pickle
from dill import loads
import numpy as np, yaml, subprocess, torch
eval("1")
exec("x = 1")
np.load("f.npy", allow_pickle=True)
yaml.load(text)
yaml.load(text, Loader=yaml.Loader)
torch.load("m.pt")
keras.models.load_model("m.keras", safe_mode=False)
subprocess.run("ls", shell=True)
df = pd.read_pickle("f")
"""
    ok = """
import numpy as np, yaml, re
np.load("f.npy")
np.load("f.npy", allow_pickle=False)
yaml.safe_load(text)
yaml.load(text, Loader=yaml.SafeLoader)
re.compile("x")
"""
    assert len(unsafe_uses(bad)) == 11, unsafe_uses(bad)
    assert unsafe_uses(ok) == []


def test_no_unsafe_deserialisation_or_eval_in_the_source_tree() -> None:
    """pickle/eval/exec/np.load(allow_pickle)/yaml.load never touch data (static check of
    every Python file of the project)."""
    files = [p for d in ("streamer", "trainer", "bench", "tests") for p in (ROOT / d).rglob("*.py")]
    assert len(files) > 40
    found = [hit for p in files for hit in unsafe_uses(p.read_text(encoding="utf-8"), str(p))]
    assert found == []


# -- bounded message sizes --------------------------------------------------------------


def test_feed_socket_has_the_size_limit() -> None:
    with FeedClient(free_endpoint(), "PULL", max_message_bytes=12345) as feed:
        assert feed._socket is not None
        assert feed._socket.getsockopt(zmq.MAXMSGSIZE) == 12345
        assert feed.limits.max_message_bytes == 12345


def test_over_limit_message_is_refused_without_the_consumer_dying(tmp_path: Path) -> None:
    """A 2 MiB part to a streamer limited to 1 MiB: ZeroMQ refuses it and drops the
    connection for good (libzmq does not retry after a protocol error); the feed client
    notices, connects again and the drop is counted. The decoder never sees the message,
    the streamer runs on and frames sent afterwards are classified and written."""
    tiny = make_tiny_bundle(tmp_path / "tiny")
    endpoint = free_endpoint()
    push = zmq.Context.instance().socket(zmq.PUSH)
    push.setsockopt(zmq.LINGER, 0)
    push.setsockopt(zmq.SNDTIMEO, 10_000)  # a deaf consumer fails the test, not hangs it
    push.bind(endpoint)
    out = tmp_path / "out"
    cfg = load_config(None, {
        "model": str(tiny), "feed.endpoint": endpoint, "feed.mode": "PULL",
        "feed.max_message_bytes": 1 << 20, "output.dir": str(out), "output.min_free_bytes": 0,
    })  # fmt: skip
    pipeline = Pipeline(cfg)
    frame = np.ones((1, 260, 257), np.float32)

    def message(tid: int, frames: np.ndarray) -> list:
        return serialize({"d": {"image.data": frames}}, {"d": {"timestamp.tid": tid}})

    def frames_in() -> float:
        return pipeline.metrics.value("hitstream_frames_received_total")

    try:
        with running_pipeline(pipeline) as run:
            push.send_multipart(message(1, frame))  # connected and working
            deadline = time.monotonic() + 30
            while frames_in() < 1:
                assert time.monotonic() < deadline, "the first message never arrived"
                time.sleep(0.01)  # poll, bounded by the deadline
            push.send_multipart(message(2, np.ones((8, 260, 257), np.float32)))  # a 2.1 MB part
            tid = 2
            while frames_in() < 2:  # until connected again: a small frame every 0.1 s
                assert run.is_alive() and time.monotonic() < deadline, "no frame after the big one"
                tid += 1
                push.send_multipart(message(tid, frame))
                time.sleep(0.1)  # resend interval, bounded by the deadline
            end = {"run": "r", "frames": 0, "trains": 0}
            push.send_multipart(serialize({END_OF_RUN_SOURCE: end}))
            s = run.wait(60)
    finally:
        push.close(linger=0)
    assert s.error is None
    assert s.messages_rejected in ({"connection": 1}, {"size": 1}), s.messages_rejected
    tables = read_run(out, "run")
    assert 2 not in tables.train_id.tolist()  # the big message's frames never came through
    assert len(tables.train_id) == s.frames_classified >= 2


# -- CurveZMQ ---------------------------------------------------------------------------

needs_curve = pytest.mark.skipif(not curve_available(), reason="libzmq without CURVE")


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, Path]:
    """A server pair, an allowed client (its public key in clients/), an unknown client."""
    server_pub, server_secret = create_keypair(tmp_path / "server", "server")
    ok_pub, ok_secret = create_keypair(tmp_path / "clients", "streamer")
    _, intruder_secret = create_keypair(tmp_path / "elsewhere", "intruder")
    return {"server_pub": server_pub, "server_secret": server_secret, "clients": ok_pub.parent,
            "ok_secret": ok_secret, "intruder_secret": intruder_secret}  # fmt: skip


@pytest.fixture()
def small_run(tmp_path: Path) -> Path:
    path = tmp_path / "run.h5"
    with h5py.File(path, "w") as f:
        f["entry_1/data_1/data"] = np.ones((40, 260, 257), np.float32)
    return path


def _curve_replay(path: Path, keys: dict[str, Path], **kw: object) -> ReplayConfig:
    return ReplayConfig(path=path, endpoint="tcp://127.0.0.1:0", frames_per_message=4,
                        curve_secret_key=keys["server_secret"], curve_clients_dir=keys["clients"],
                        linger_s=0.3, **kw)  # fmt: skip


@needs_curve
def test_curve_server_serves_allowed_clients_only(small_run: Path, keys: dict[str, Path]) -> None:
    """An unknown key and a plain (unencrypted) client get nothing (they time out, again
    and again), while the allowed client, connected at the same time, gets every frame."""
    with ReplayServer(_curve_replay(small_run, keys)) as server:
        e = server.endpoint
        with (
            FeedClient(e, timeout_s=1.0, curve_server_key=keys["server_pub"],
                       curve_secret_key=keys["intruder_secret"]) as intruder,
            FeedClient(e, timeout_s=1.0) as plain,
        ):  # fmt: skip
            for client in (intruder, plain):
                with pytest.raises(TimeoutError):
                    client.next()
            with FeedClient(e, timeout_s=10, curve_server_key=keys["server_pub"],
                            curve_secret_key=keys["ok_secret"]) as allowed:  # fmt: skip
                frames, end, _ = read_feed(allowed)
        stats = server.join(30)
    assert frames is not None and len(frames) == 40 == end.frames == stats.frames


@needs_curve
def test_streamer_reads_a_curve_feed_configured_by_key_files(
    small_run: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    tiny = make_tiny_bundle(tmp_path / "tiny")
    with ReplayServer(_curve_replay(small_run, keys)) as server:
        cfg = load_config(None, {
            "model": str(tiny), "feed.endpoint": server.endpoint, "output.dir": str(tmp_path / "o"),
            "output.min_free_bytes": 0, "feed.curve_server_key": str(keys["server_pub"]),
            "feed.curve_secret_key": str(keys["ok_secret"]),
        })  # fmt: skip
        summary = Pipeline(cfg).run()
        server.join(30)
    assert summary.error is None and summary.frames_classified == 40


@needs_curve
def test_curve_configuration_errors_name_the_file(
    small_run: Path, keys: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="go together"):
        load_config(None, {"feed.curve_server_key": str(keys["server_pub"])})
    with pytest.raises(ConfigError, match=r"holds no secret key"):
        FeedClient(free_endpoint(), curve_server_key=keys["server_pub"],
                   curve_secret_key=keys["server_pub"])  # fmt: skip
    missing = tmp_path / "nope.key_secret"
    with pytest.raises(ConfigError, match=r"nope\.key_secret"):
        FeedClient(free_endpoint(), curve_server_key=keys["server_pub"], curve_secret_key=missing)
    with pytest.raises(ConfigError, match="needs the server's secret key"):
        ReplayServer(ReplayConfig(path=small_run, curve_clients_dir=keys["clients"]))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no public key"):
        ReplayServer(_curve_replay(small_run, keys | {"clients": tmp_path / "empty"}))


def test_replay_cli_takes_the_curve_options(tmp_path: Path) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["run.h5", "--curve-secret-key", "k/server.key_secret",
                              "--curve-clients-dir", "k/clients"])  # fmt: skip
    cfg = config_from_args(args)
    assert cfg.curve_secret_key == Path("k/server.key_secret")
    assert cfg.curve_clients_dir == Path("k/clients")
    text = (ROOT / "deploy" / "streamer.toml").read_text()
    assert "# curve_server_key" in text and "# curve_secret_key" in text


# -- metrics address and run names ------------------------------------------------------


def test_metrics_bind_to_loopback_by_default() -> None:
    cfg = load_config(None, {"metrics.port": 0})
    assert cfg.metrics.host == "127.0.0.1"
    server = StatusServer(Metrics(), cfg.metrics.host, cfg.metrics.port).start()
    try:
        assert server.url.startswith("http://127.0.0.1:")
        others = [
            a.address
            for addrs in psutil.net_if_addrs().values()
            for a in addrs
            if a.family == socket.AF_INET and not a.address.startswith("127.")
        ]
        for address in others:  # not reachable on the host's other addresses
            with pytest.raises(OSError), socket.create_connection((address, server.port), 2):
                pass
    finally:
        server.stop()


@pytest.mark.parametrize("flag", ["--run", "--worker"])
def test_names_cannot_escape_the_output_directory(tmp_path: Path, flag: str) -> None:
    tiny = make_tiny_bundle(tmp_path / "tiny")
    (tmp_path / "work").mkdir()
    out = tmp_path / "work" / "out"
    with command("streamer", "serve", "--model", tiny, "--out", out, flag, "../evil",
                 "--metrics-port", "-1", "--endpoint", free_endpoint()) as p:  # fmt: skip
        assert p.wait(timeout=60) == 2
        err = p.stderr.read()
    assert "name '../evil'" in err and "Traceback" not in err, err
    assert not list(tmp_path.rglob("*evil*"))
    assert not out.exists()


# -- the streamer's control endpoint beyond loopback -------------------------------------------


def _http(server: StatusServer, method: str, path: str, headers: dict[str, str] | None = None,
          body: bytes | None = None) -> int:  # fmt: skip
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:  # a name as seen from outside the host: the Host check is off beyond loopback
        h = {"Host": f"hitstream-0.example.org:{server.port}", **(headers or {})}
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        r.read()
        return r.status
    finally:
        conn.close()


@pytest.mark.parametrize("source", ["file", "env", "none"])
def test_streamer_control_beyond_loopback_needs_the_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, source: str
) -> None:
    """``streamer serve``'s endpoint judged as bound beyond loopback (tests bind loopback
    only): the read-only routes stay open; ``POST /model`` needs the token of
    ``metrics.token_file`` or ``$HITSTREAM_HTTP_TOKEN`` and, without either, is refused."""
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    v1 = make_tiny_bundle(tmp_path / "models" / "v1", version="1")
    v2 = make_tiny_bundle(tmp_path / "models" / "v2", version="2")
    overrides = {"model": str(v1), "output.dir": str(tmp_path / "out"), "metrics.port": 0}
    token = f"token-from-{source}"
    if source == "file":
        (tmp_path / "token").write_text(token + "\n")
        overrides["metrics.token_file"] = str(tmp_path / "token")
        monkeypatch.setenv(TOKEN_ENV, "the-file-wins")
    elif source == "env":
        monkeypatch.setenv(TOKEN_ENV, token)
    pipeline = Pipeline(load_config(None, overrides))
    server = status_server(pipeline)
    assert server is not None
    server.loopback = False
    server.ready.set()
    body = json.dumps({"path": str(v2)}).encode()
    as_json = {"Content-Type": "application/json"}
    with server:
        for path in ("/metrics", "/ready", "/healthz", "/status", "/live", "/live/data.json"):
            assert _http(server, "GET", path) == 200, path
        refused = 403 if source == "none" else 401
        wrong = ["", "Bearer wrong", token, f"Basic {token}", "Bearer ", f"Bearer {token}x"]
        for auth in [{"Authorization": a} if a else {} for a in wrong]:
            assert _http(server, "POST", "/model", as_json | auth, body) == refused, auth
        assert pipeline.model.version == "tiny:1"
        good = _http(server, "POST", "/model", as_json | {"Authorization": f"Bearer {token}"}, body)
    if source == "none":
        assert good == 403 and pipeline.model.version == "tiny:1"
    else:
        assert good == 200 and pipeline.model.version == "tiny:2"
    assert pipeline.metrics.value("hitstream_model_swaps_total", result="refused") == 0
