"""Hot model swap: validate a new bundle off the hot path, switch it in between batches.

A candidate is checked in full before it can touch a frame: manifest and sha256 of every
file (:func:`hitstream.bundle.load_bundle`), the graph's input shape against the running
frame shape, the class list against the running one (the output files' tables are laid out
per class), and a test inference. A refused bundle is logged and counted; the running model
keeps going. Triggers: :meth:`ModelSwapper.request` (HTTP ``POST /model``, SIGHUP) and,
optionally, watching the configured bundle path for a new manifest.

``POST /model`` takes only bundles under the model roots (``metrics.model_roots``; by
default the directory that holds the configured model): the requested path, resolved
(symlinks followed, ``..`` collapsed), must lie under one of them, else the request is
refused and counted like any refused swap. SIGHUP and the watcher reload the configured
path itself and need no root.

A bundle that takes the run's background and one that does not may replace each other: the
estimate lives in the pipeline (:mod:`streamer.run_background`), goes on across a swap, and
each engine takes what its graph needs (the test inference runs both ways).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
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
    #: set when the path was refused for lying outside these (resolved) model roots
    allowed_roots: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "model": self.model, "message": self.message}
        if self.allowed_roots is not None:
            out["allowed_roots"] = list(self.allowed_roots)
        return out


def model_roots(model: str | Path, roots: Sequence[str | Path] | None) -> tuple[Path, ...]:
    """The directories ``POST /model`` takes bundles from, resolved: ``roots``, or (None)
    the directory holding the configured ``model`` (its model store: the parent of the
    path as configured, so a ``current`` symlink still names the store it lies in)."""
    chosen = [Path(model).absolute().parent] if roots is None else [Path(r) for r in roots]
    return tuple(r.resolve() for r in chosen)


def resolve_within(path: str | Path, roots: Sequence[Path]) -> Path | None:
    """``path`` resolved (symlinks followed, ``..`` collapsed) if that lies under one of
    ``roots`` (already resolved), else None (also for a path that cannot be resolved)."""
    try:
        real = Path(path).resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte
        return None
    return real if any(real.is_relative_to(r) for r in roots) else None


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
    engine.warm_up()  # its memory at the steady level before it takes the stream
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

    def request(self, path: str | Path, *, roots: Sequence[Path] | None = None) -> SwapResult:
        """Validate ``path`` and, if it passes, switch to it before the next batch.

        With ``roots`` (resolved directories, see :func:`model_roots`) the path must lie
        under one of them once resolved; the resolved path is what is loaded."""
        with self._lock:
            running = self._current()
            if roots is not None:
                inside = resolve_within(path, roots)
                if inside is None:
                    self._metrics.model_swaps.labels(result="refused").inc()
                    allowed = tuple(str(r) for r in roots)
                    message = (
                        f"{str(path)[:300]!r} is not under the model roots "
                        f"({', '.join(allowed) or 'none'}): not loaded"
                    )
                    log.warning("model swap refused, keeping %s: %s", running.bundle.label, message)
                    return SwapResult(False, running.bundle.label, message, allowed)
                path = inside
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
        path = data["path"]
    except (UnicodeDecodeError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError('expected a JSON body {"path": "<bundle directory>"}') from exc
    if not isinstance(path, str) or not path or "\0" in path:
        raise ConfigError('"path" must be a non-empty string (a bundle directory)')
    return Path(path)
