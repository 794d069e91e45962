"""Hot model swap: validate a new bundle off the hot path, switch it in between batches.

A candidate is checked in full before it can touch a frame: manifest and sha256 of every
file (:func:`hitstream.bundle.load_bundle`), the graph's input shape against the running
frame shape, the class list against the running one (the output files' tables are laid out
per class), and a test inference. A refused bundle is logged and counted; the running model
keeps going. Triggers: :meth:`ModelSwapper.request` (HTTP ``POST /model``, SIGHUP) and,
optionally, watching the configured bundle path for a new manifest.

A bundle that takes the run's background and one that does not may replace each other: the
estimate lives in the pipeline (:mod:`streamer.run_background`), goes on across a swap, and
each engine takes what its graph needs (the test inference runs both ways).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hitstream.bundle import MANIFEST, load_bundle, sha256_file
from hitstream.errors import BundleError, ConfigError, HitstreamError
from streamer.engine import Engine, EngineConfig
from streamer.metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SwapResult:
    ok: bool
    model: str
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "model": self.model, "message": self.message}


def validate_engine(
    path: Path, config: EngineConfig, *, frame_shape: tuple[int, int], classes: tuple[str, ...]
) -> Engine:
    """Load and fully check a bundle; raise :class:`BundleError` saying what is wrong."""
    bundle = load_bundle(path)
    if bundle.frame_shape != frame_shape:
        raise BundleError(
            f"{path}: input frames {bundle.frame_shape} differ from the running {frame_shape}"
        )
    if bundle.classes != classes:
        raise BundleError(
            f"{path}: classes {list(bundle.classes)} differ from the running {list(classes)}; "
            "restart the streamer to change classes"
        )
    engine = Engine(bundle, config)
    engine.self_test()
    return engine


class ModelSwapper:
    """Serialises swap requests and watches a bundle path (``watch_s`` > 0)."""

    def __init__(
        self,
        *,
        current: Callable[[], Engine],
        install: Callable[[Engine], None],
        config: EngineConfig,
        metrics: Metrics,
        watch_path: Path | None = None,
        watch_s: float = 0.0,
    ) -> None:
        self._current = current
        self._install = install
        self._config = config
        self._metrics = metrics
        self._lock = threading.Lock()
        self._watch_path = watch_path
        self._watch_s = watch_s
        self._stop = threading.Event()
        self._seen = self._manifest_digest()
        self._thread: threading.Thread | None = None

    def request(self, path: str | Path) -> SwapResult:
        """Validate ``path`` and, if it passes, switch to it before the next batch."""
        with self._lock:
            running = self._current()
            try:
                engine = validate_engine(
                    Path(path),
                    self._config,
                    frame_shape=running.bundle.frame_shape,
                    classes=running.bundle.classes,
                )
            except (HitstreamError, OSError) as exc:
                self._metrics.model_swaps.labels(result="refused").inc()
                log.error("model swap refused, keeping %s: %s", running.bundle.label, exc)
                return SwapResult(False, running.bundle.label, str(exc))
            self._install(engine)
            self._metrics.model_swaps.labels(result="ok").inc()
            log.info("model swap: %s → %s", running.bundle.label, engine.bundle.label)
            return SwapResult(True, engine.bundle.label, f"switched from {running.bundle.label}")

    # -- watching ------------------------------------------------------------------------

    def start(self) -> ModelSwapper:
        if self._watch_path is not None and self._watch_s > 0:
            self._thread = threading.Thread(target=self._watch, name="model-watch", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _manifest_digest(self) -> str | None:
        if self._watch_path is None:
            return None
        try:
            return sha256_file(self._watch_path / MANIFEST)
        except OSError:
            return None

    def _watch(self) -> None:
        while not self._stop.wait(self._watch_s):
            digest = self._manifest_digest()
            if digest is None or digest == self._seen:
                continue
            self._seen = digest
            assert self._watch_path is not None
            log.info("model watch: %s changed", self._watch_path / MANIFEST)
            self.request(self._watch_path)


def parse_swap_body(body: bytes) -> Path:
    """``{"path": "..."}`` from an HTTP request body."""
    import json

    try:
        data = json.loads(body.decode("utf-8"))
        return Path(data["path"])
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError('expected a JSON body {"path": "<bundle directory>"}') from exc
