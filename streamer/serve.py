"""``streamer serve``: classify a Karabo-bridge feed and write rolling CXI files."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hitstream.errors import ConfigError
from hitstream.http_base import read_token
from streamer.config import (
    FEED_MODES,
    PIPELINE_MODES,
    default_of,
    load_config,
    parse_override,
    to_dict,
)
from streamer.engine import PROVIDER_CHOICES
from streamer.http_server import StatusServer
from streamer.metrics import Metrics
from streamer.model_swap import model_roots, parse_swap_body
from streamer.pipeline import Pipeline, RunSummary

HELP = "classify frames from a ZeroMQ (Karabo bridge 2.2) feed and write rolling CXI files"
log = logging.getLogger("streamer.serve")

# command-line flag -> dotted config key
FLAG_KEYS = {
    "model": "model",
    "endpoint": "feed.endpoint",
    "feed_mode": "feed.mode",
    "source": "feed.source",
    "key": "feed.key",
    "mode": "pipeline.mode",
    "out": "output.dir",
    "run": "output.run",
    "worker": "output.worker",
    "provider": "engine.provider",
    "batch": "engine.max_batch",
    "threads": "engine.intra_op_threads",
    "metrics_host": "metrics.host",
    "metrics_port": "metrics.port",
    "idle_timeout": "pipeline.idle_timeout_s",
}


# command-line flag -> help text; the default shown comes from the config dataclasses
FLAG_HELP = {
    "model": "model bundle directory",
    "endpoint": "feed endpoint, e.g. tcp://127.0.0.1:45000",
    "feed_mode": "ZeroMQ pattern",
    "source": "Karabo source name (None: the first source with the key)",
    "key": "array key of the frames",
    "mode": "overload policy",
    "out": "output directory",
    "run": "run name (file prefix)",
    "worker": "worker name (file infix)",
    "provider": "onnxruntime provider",
    "batch": "max frames per inference batch (0: auto)",
    "threads": "onnxruntime intra-op threads (0: one per core)",
    "metrics_host": "address of the metrics endpoint",
    "metrics_port": "metrics port (0: any free, -1: off)",
    "idle_timeout": "stop after this many idle seconds (0: never)",
}
FLAG_CHOICES = {"feed_mode": FEED_MODES, "mode": PIPELINE_MODES, "provider": PROVIDER_CHOICES}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML config file (see deploy/streamer.toml)")
    for flag, key in FLAG_KEYS.items():
        default = default_of(key)
        convert: Callable[[str], Any] = type(default) if isinstance(default, int | float) else str
        p.add_argument(
            "--" + flag.replace("_", "-"),
            type=convert,
            choices=FLAG_CHOICES.get(flag),
            help=f"{FLAG_HELP[flag]} [{key} = {default}]",
        )
    p.add_argument(
        "--keep-running", action="store_true", help="do not stop at the feed's end-of-run marker"
    )
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override any config key (repeatable)",
    )
    p.add_argument("--summary-json", type=Path, help="also write the run summary here")


def run(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {
        key: getattr(args, flag)
        for flag, key in FLAG_KEYS.items()
        if getattr(args, flag) is not None
    }
    if args.keep_running:
        overrides["pipeline.stop_at_end"] = False
    for item in args.set:
        k, v = parse_override(item)
        overrides[k] = v
    config = load_config(args.config, overrides)
    log.debug("config: %s", json.dumps(to_dict(config)))
    metrics = Metrics()
    pipeline = Pipeline(config, metrics=metrics)
    server = status_server(pipeline)
    if server is not None:
        server.start()
    stop_signals = _install_signal_handlers(pipeline)
    try:
        summary = _run_with_ready_line(pipeline, server)
    finally:
        stop_signals()
        if server is not None:
            server.stop()
    _report(summary, args.summary_json)
    return 1 if summary.error else 0


def status_server(pipeline: Pipeline) -> StatusServer | None:
    """The HTTP endpoint of ``streamer serve`` for ``pipeline`` (None with metrics.port -1),
    every route registered, not started: metrics, readiness, status, the live view and
    ``POST /model`` (bundles under the model roots only; beyond loopback with the token)."""
    m = pipeline.config.metrics
    if m.port < 0:
        return None
    roots = model_roots(pipeline.config.model, m.model_roots)
    server = StatusServer(pipeline.metrics, m.host, m.port, token=read_token(m.token_file))
    server.status = pipeline.status
    server.not_ready = pipeline.not_ready_reason
    server.post_route("/model", lambda body: _swap_answer(pipeline, body, roots))
    log.info("POST /model takes bundles under %s", ", ".join(map(str, roots)) or "no directory")
    if pipeline.live is not None:
        for path, handler in pipeline.live.routes().items():
            server.route(path, handler)
    return server


def _run_with_ready_line(pipeline: Pipeline, server: StatusServer | None) -> RunSummary:
    def announce() -> None:
        if pipeline.ready.wait():
            if server is not None:
                server.ready.set()
            where = f" metrics {server.url}/metrics" if server else ""
            print(f"streamer ready{where}", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    return pipeline.run()


def _swap_answer(
    pipeline: Pipeline, body: bytes, roots: tuple[Path, ...]
) -> tuple[int, str, bytes]:
    """``POST /model {"path": ...}``: validate and switch. 400: a malformed body; 403: the
    path lies outside ``roots`` (the answer names them); 409: the bundle was refused."""
    try:
        result = pipeline.swapper.request(parse_swap_body(body), roots=roots)
    except ConfigError as exc:
        return 400, "application/json", json.dumps({"ok": False, "message": str(exc)}).encode()
    status = 200 if result.ok else 403 if result.allowed_roots is not None else 409
    return status, "application/json", json.dumps(result.as_dict()).encode()


def _install_signal_handlers(pipeline: Pipeline) -> Any:
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        log.info("signal %d: finishing batches and closing files", signum)
        pipeline.stop()

    def reload(signum: int, _frame: Any) -> None:
        log.info("SIGHUP: reloading the model from %s", pipeline.config.model)
        threading.Thread(
            target=pipeline.swapper.request, args=(pipeline.config.model,), daemon=True
        ).start()

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
    previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, reload)

    def restore() -> None:
        for sig, h in previous.items():
            signal.signal(sig, h)

    return restore


def _report(summary: RunSummary, path: Path | None) -> None:
    d = summary.as_dict()
    text = json.dumps(d, default=str)
    print(f"summary {text}", flush=True)
    if path is not None:
        path.write_text(json.dumps(d, indent=2, default=str) + "\n", encoding="utf-8")
    if summary.error:
        print(f"streamer: finished with errors: {summary.error}", file=sys.stderr)
