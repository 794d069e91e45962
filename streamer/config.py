"""One typed configuration for ``streamer serve``: TOML file + command-line overrides.

Defaults live in the dataclasses below and nowhere else; unknown keys are errors. Example::

    model = "models/default"

    [feed]
    endpoint = "tcp://127.0.0.1:45000"
    mode = "REQ"            # REQ | PULL | SUB
    key = "image.data"

    [pipeline]
    mode = "lossless"       # lossless (back-pressure) | live (never block, count drops)

    [output]
    dir = "out"
    run = "run"

See ``deploy/streamer.toml`` for every key with its default.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hitstream.background import BackgroundConfig
from hitstream.detectors import DetectorConfig
from hitstream.errors import ConfigError
from streamer.decisions_out import DecisionsConfig
from streamer.engine import EngineConfig
from streamer.writer import WriterConfig

FEED_MODES = ("REQ", "PULL", "SUB")
PIPELINE_MODES = ("lossless", "live")


@dataclass(frozen=True)
class FeedConfig:
    """Where frames come from (a Karabo-bridge 2.2 server)."""

    endpoint: str = "tcp://127.0.0.1:45000"
    mode: str = "REQ"
    source: str | None = None  # None: the first source that carries ``key``
    key: str = "image.data"
    axis_order: str = "pulses,H,W"
    poll_s: float = 0.05  # receive timeout per poll; also bounds batching deadlines
    reconnect_s: float = 5.0  # REQ: no answer for this long -> new socket
    hwm: int = 64  # receive queue in messages, capped by max_queue_bytes (see queue_messages)
    prefetch: bool = True  # REQ: request message i+1 while decoding message i
    drain_s: float = 2.0  # on stop: wait this long for a reply already requested
    max_message_bytes: int = 2 << 30  # one train: AGIPD 1M × 352 pulses float32 is 1.48 GB
    max_queue_bytes: int = 4 << 30  # the receive queue's bound in bytes
    refuse_after: int = 8  # refused messages in a row (none accepted) -> the feed is refused
    silence_s: float = 10.0  # no frames for this long: the feed is silent (warning, not ready)
    curve_server_key: Path | None = None  # CurveZMQ: the server's public key file
    curve_secret_key: Path | None = None  # CurveZMQ: this client's secret key file

    def __post_init__(self) -> None:
        if self.mode not in FEED_MODES:
            raise ConfigError(f"feed.mode {self.mode!r} is not one of {', '.join(FEED_MODES)}")
        if (self.curve_server_key is None) != (self.curve_secret_key is None):
            raise ConfigError("feed.curve_server_key and feed.curve_secret_key go together")
        if self.max_message_bytes < 1 or self.max_queue_bytes < self.max_message_bytes:
            raise ConfigError(
                "feed.max_message_bytes must be ≥ 1 and feed.max_queue_bytes ≥ it "
                f"(got {self.max_message_bytes} and {self.max_queue_bytes})"
            )
        if self.hwm < 1 or self.refuse_after < 1:
            raise ConfigError("feed.hwm and feed.refuse_after must be ≥ 1")
        if self.silence_s <= 0:
            raise ConfigError(f"feed.silence_s={self.silence_s}: must be > 0")

    @property
    def queue_messages(self) -> int:
        """The receive high-water mark in messages: ``hwm``, capped so that a queue of
        messages at the size limit holds at most ``max_queue_bytes``."""
        return max(1, min(self.hwm, self.max_queue_bytes // self.max_message_bytes))


@dataclass(frozen=True)
class PipelineConfig:
    """How frames flow: batching, queues, overload policy."""

    mode: str = "lossless"
    max_delay_s: float = 0.01  # a partial batch waits at most this long
    queue_size: int = 4  # batches waiting for the engine / for the writer
    inference_threads: int = 1
    zero_copy_min: int = 16  # CPU: messages with ≥ this many frames are inferred in place
    stop_at_end: bool = True  # stop after the feed's end-of-run marker
    idle_timeout_s: float = 0.0  # > 0: stop after this long without frames
    model_watch_s: float = 0.0  # > 0: check the model path's manifest this often, swap on change

    def __post_init__(self) -> None:
        if self.mode not in PIPELINE_MODES:
            raise ConfigError(
                f"pipeline.mode {self.mode!r} is not one of {', '.join(PIPELINE_MODES)}"
            )
        if self.queue_size < 1 or self.inference_threads < 1:
            raise ConfigError("pipeline.queue_size and pipeline.inference_threads must be ≥ 1")


@dataclass(frozen=True)
class MetricsConfig:
    """HTTP endpoint for Prometheus, readiness, the live page and control (``POST /model``);
    port 0 picks a free one, -1 disables. Bound beyond loopback, control requests need the
    token of ``token_file`` (or ``$HITSTREAM_HTTP_TOKEN``); see :mod:`hitstream.http_base`."""

    host: str = "127.0.0.1"
    port: int = 9108
    token_file: Path | None = None
    # POST /model takes only bundles under these directories (None: the configured
    # model's parent directory, i.e. the model store it was taken from)
    model_roots: list[Path] | None = None


@dataclass(frozen=True)
class ViewConfig:
    """The live web page (``/live`` on the metrics server): a few frames per class, history."""

    enabled: bool = True
    frames_per_class: int = 4  # latest frames kept per class for the page
    history_s: int = 600  # seconds of 1 s bins behind the charts
    max_frames_per_s: float = 4.0  # frames copied for the page per second, all classes

    def __post_init__(self) -> None:
        if self.frames_per_class < 1 or self.history_s < 10 or self.max_frames_per_s <= 0:
            raise ConfigError(
                "view.frames_per_class must be ≥ 1, view.history_s ≥ 10 "
                "and view.max_frames_per_s > 0"
            )


@dataclass(frozen=True)
class ServeConfig:
    model: Path = Path("models/default")
    feed: FeedConfig = field(default_factory=FeedConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    output: WriterConfig = field(default_factory=WriterConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    view: ViewConfig = field(default_factory=ViewConfig)
    # the run's own background (hitstream.background), fed to bundles that take one
    background: BackgroundConfig = field(default_factory=BackgroundConfig)
    # a real detector's geometry: its frames are resampled onto the model's q grid
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    # the per-frame decisions published live (Karabo bridge) for downstream tools
    decisions: DecisionsConfig = field(default_factory=DecisionsConfig)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert a TOML value to a dataclass field type."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError("; ".join(errors))
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list, got {value!r}")
        return [_coerce(v, item, f"{where}[]") for v in value]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"[{where}] must be a table")
        return from_dict(tp, value, where)
    if tp is Path:
        if not isinstance(value, str | Path):
            raise ConfigError(f"{where} must be a path string, got {value!r}")
        return Path(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{where}: unsupported type {tp}")  # pragma: no cover


def from_dict(cls: Any, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from a dict, rejecting unknown keys."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        prefix = f"[{where}] " if where else ""
        raise ConfigError(
            f"{prefix}unknown key(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(sorted(names))}"
        )
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def load_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> ServeConfig:
    """Read a TOML file (or nothing) and apply dotted overrides like ``{"feed.mode": "PULL"}``."""
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            data = tomllib.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError as exc:
            raise ConfigError(f"config file {p} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {p} is not valid TOML: {exc}") from exc
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        node = data
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return from_dict(ServeConfig, data)


def parse_override(text: str) -> tuple[str, Any]:
    """``section.key=value`` with the value read as TOML (bare words become strings)."""
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set expects section.key=value, got {text!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key.strip(), value


def default_of(dotted: str, cls: Any = None) -> Any:
    """The default of a config key, e.g. ``default_of("feed.key")`` (for help texts)."""
    node: Any = cls if cls is not None else ServeConfig()
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def to_dict(config: Any) -> dict[str, Any]:
    """JSON-friendly dict of a config (for logs and the status page)."""
    out = dataclasses.asdict(config)

    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return fix(out)
