"""The live consumer: receive → batch → infer → write, each stage in its own thread.

Stages talk through bounded queues. In ``lossless`` mode a full queue blocks the stage
before it, back to the feed (REQ stops asking, PUSH senders block): nothing is lost. In
``live`` mode the receiver never blocks: a batch that finds no room is dropped and
counted, and gaps in train ids are counted as dropped frames.

The run's background (:mod:`streamer.run_background`) is updated by the receiver with each
decoded batch before it is staged; each batch is classified with the snapshot published
last and records it (:attr:`ResultBatch.background`) for the files.
"""

from __future__ import annotations

import logging
import queue
import shutil
import threading
import time
from collections import Counter as Tally
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.bundle import load_bundle
from hitstream.errors import HitstreamError, MessageError
from hitstream.units import MIN_SIGNAL_PIXELS, estimate_photon_unit
from streamer.batcher import Batcher, StagedBatch
from streamer.config import ServeConfig, to_dict
from streamer.cxi_layout import file_name
from streamer.decision import decide, keep_mask_for, threshold_vector
from streamer.decisions_out import DecisionPublisher
from streamer.decode import SourceSpec, decode_message
from streamer.detector_map import DetectorMap
from streamer.engine import Engine
from streamer.feed import FeedClient
from streamer.feed_refusal import RefusalWatch
from streamer.feed_silence import FeedSilence
from streamer.heap import trim_heap
from streamer.live_view import LiveView
from streamer.metrics import Metrics
from streamer.model_swap import ModelSwapper
from streamer.output_guard import OutputGuard
from streamer.protocol import Limits, deserialize
from streamer.recovery import RecoveryReport, recover_orphans
from streamer.run_background import InUse, StreamBackground, state_path
from streamer.run_index import build_run_index
from streamer.run_novelty import RunNovelty
from streamer.run_summary import RunSummary, frame_accounting
from streamer.types import EndOfRun, ResultBatch
from streamer.worker_lock import WorkerLock
from streamer.writer import RollingWriter, WriterConfig

log = logging.getLogger(__name__)

_STOP = object()  # queue sentinel
UNITS_CHECK_FRAMES = 32  # frames of a batch looked at for the photon-unit check
HEAP_TRIM_S = 30.0  # return freed heap memory to the OS this often (streamer.heap)
UNITS_CHECK_TRIES = 50  # batches tried until one has enough lit pixels to tell


class _Model:
    """Engine plus the decision vectors derived from its bundle and the output config."""

    def __init__(self, engine: Engine, keep_classes: list[str] | None) -> None:
        self.engine = engine
        b = engine.bundle
        self.classes = b.classes
        self.keep_by_class = keep_mask_for(
            b.classes, keep_classes if keep_classes is not None else b.keep_classes
        )
        self.min_prob = threshold_vector(b.classes, b.thresholds)
        self.version = b.label

    def classify(self, staged: StagedBatch, background: InUse | None = None) -> ResultBatch:
        batch = staged.batch
        out = self.engine.infer(batch.frames, None if background is None else background.feed_map)
        probs = np.asarray(out["probabilities"], dtype=np.float32)
        label, keep = decide(probs, self.keep_by_class, self.min_prob)
        tdist = out.get("template_distance")
        n = len(batch)
        return ResultBatch(
            batch=batch,
            probabilities=probs,
            label=label,
            template_distance=(
                np.asarray(tdist, np.float32).reshape(n)
                if tdist is not None
                else np.full(n, np.nan, np.float32)
            ),
            keep=keep,
            model_version=self.version,
            classes=self.classes,
            background=None if background is None else background.snapshot,
        )


class Pipeline:
    """One streamer worker. ``run()`` blocks until the run ends or :meth:`stop` is called."""

    def __init__(self, config: ServeConfig, *, metrics: Metrics | None = None) -> None:
        self.config = config
        bundle = load_bundle(config.model)
        engine = Engine(bundle, config.engine)
        engine.self_test()
        self.metrics = metrics or Metrics()
        self.metrics.set_classes(bundle.classes, bundle.hit_classes)
        view = config.view
        self.live: LiveView | None = (
            LiveView(
                self.metrics,
                frames_per_class=view.frames_per_class,
                history_s=view.history_s,
                max_frames_per_s=view.max_frames_per_s,
            )
            if view.enabled
            else None
        )
        self._live_failed = False
        self._warnings: list[str] = self.live.warnings if self.live is not None else []
        out = config.output
        self.background = StreamBackground(
            config.background,
            shape=bundle.frame_shape,
            geometry=bundle.geometry,
            photon_unit=config.engine.photon_unit,
            path=state_path(out.dir, out.run, out.worker),
            run=out.run,
            metrics=self.metrics,
            warnings=self._warnings,
        )
        self.novelty = RunNovelty(self.metrics, self._warnings)
        self.silence = FeedSilence(self.metrics, config.feed.endpoint, config.feed.silence_s)
        self.detector_map: DetectorMap | None = (
            DetectorMap(config.detector, self._warnings, engine.providers, engine.config.device_id)
            if config.detector.enabled
            else None
        )
        det = self.detector_map.detector if self.detector_map is not None else None
        h, w = bundle.frame_shape
        self.refusal = RefusalWatch(
            self.metrics,
            self._warnings,
            after_messages=config.feed.refuse_after,
            expected=f"frames of {h}×{w} pixels",
        )
        self._install(engine)
        self.swapper = ModelSwapper(
            current=lambda: self.model.engine,
            install=self._install,
            config=config.engine,
            metrics=self.metrics,
            watch_path=Path(config.model),
            watch_s=config.pipeline.model_watch_s,
        )
        self.pool = engine.create_pool()
        self.pool.touch()  # memory at its steady level from the start (flat RSS in a soak)
        engine.warm_up()
        self.batcher = Batcher(
            self.pool,
            engine.max_batch,
            config.pipeline.max_delay_s,
            zero_copy_min=0 if engine.on_gpu else config.pipeline.zero_copy_min,
        )
        self.spec = SourceSpec(
            source=config.feed.source,
            key=config.feed.key,
            axis_order=config.feed.axis_order,
            frame_shape=(det.stacked_shape if det is not None else bundle.frame_shape),
            detector_view=det is not None,  # read by the map, NaN pixels masked
            modules=det.data_shape[0] if det is not None else 0,
        )
        self._missing_noted: set[tuple[int, ...]] = set()
        # one writer per run and worker; a killed predecessor's unfinished files first
        config.output.dir.mkdir(parents=True, exist_ok=True)
        self._lock = WorkerLock(out.dir, out.run, out.worker)
        self.recovered = self._recover()
        self.writer = self._make_writer(config.output)
        log.info(
            "output: %s, files from %s on",
            out.dir, file_name(out.run, out.worker, self.writer.next_sequence),
        )  # fmt: skip
        labels_dir = config.output.labels_dir
        self.output = OutputGuard(
            self.writer,
            self.metrics,
            backlog_frames=config.output.backlog_frames,
            retry_s=config.output.retry_s,
            labels_dir=labels_dir,
            fallback=(
                None
                if labels_dir is None
                else lambda: self._make_writer(replace(config.output, dir=labels_dir))
            ),
        )
        self.output.check_at_start()  # free space, before the service says it is ready
        if self.live is not None:
            self.live.alerts = self.alerts
        q = config.pipeline.queue_size
        self._infer_q: queue.Queue[Any] = queue.Queue(maxsize=q)
        self._write_q: queue.Queue[Any] = queue.Queue(maxsize=q)
        self._stop = threading.Event()
        self._done = threading.Event()
        self._threads: list[threading.Thread] = []
        self._errors: list[str] = []
        self._units_checked = False
        self._units_tries = 0
        self._writer_failed = False
        self._end: EndOfRun | None = None
        self._last_train: int | None = None
        self._reject_logged: Tally[str] = Tally()
        self._t0 = 0.0
        self._t_last = 0.0
        self._free_checked = -1.0  # monotonic time of the last free-space reading
        self.ready = threading.Event()
        self.decisions: DecisionPublisher | None = (
            DecisionPublisher(config.decisions, self.metrics) if config.decisions.endpoint else None
        )
        self._decisions_failed = False

    def _recover(self) -> RecoveryReport:
        """Finish the ``.part`` files a killed run of this worker left; index them."""
        out = self.config.output
        report = recover_orphans(out.dir, out.run, out.worker)
        if report.recovered:
            build_run_index(out.dir, out.run)
        for bad in report.corrupt:
            self._warnings.append(f"unreadable unfinished file kept aside: {bad.path or bad.part}")
        return report

    def _make_writer(self, cfg: WriterConfig) -> RollingWriter:
        engine = self.model.engine
        b = engine.bundle
        return RollingWriter(
            cfg,
            classes=b.classes,
            frame_shape=b.frame_shape,
            geometry=b.geometry,
            attrs={"model": b.label, "provider": engine.provider},
        )

    # -- control -------------------------------------------------------------------------

    def _install(self, engine: Engine) -> None:
        """Make ``engine`` label the next batch (assignment is atomic between batches)."""
        b = engine.bundle
        self.model = _Model(engine, self.config.output.keep_classes)
        self.metrics.model_info.info({"name": b.name, "version": b.version, "path": str(b.path)})
        self.metrics.engine_info.info(
            {"provider": engine.provider, "providers": ",".join(engine.providers)}
        )
        if self.live is not None:
            self.live.set_model(b)
        if self.detector_map is not None:
            self.detector_map.set_grid(b.geometry)
        self.background.set_model(b.label, b.background_range if engine.takes_background else None)
        self.novelty.set_model(b)
        if engine.takes_background and not self.config.background.enabled:
            msg = (
                f"model {b.label} takes the run's background but background.enabled is false: "
                "classifying without the run's background (zeros)"
            )
            log.warning("%s", msg)
            if msg not in self._warnings:
                self._warnings.append(msg)

    def _detector_status(self) -> dict[str, Any]:
        return self.detector_map.status() if self.detector_map is not None else {}

    def _release(self, pool_index: int) -> None:
        if pool_index >= 0:
            self.pool.release(pool_index)

    def stop(self) -> None:
        """Ask the pipeline to finish its batches, close its files and return from run()."""
        self._stop.set()

    def status(self) -> dict[str, Any]:
        return {
            "model": self.model.version,
            "provider": self.model.engine.provider,
            "frames_received": self.metrics.value("hitstream_frames_received_total"),
            "frames_classified": self.metrics.value("hitstream_frames_classified_total"),
            "per_class": dict(self.metrics.totals),
            "warnings": list(self._warnings),
            "background": self.background.status(),
            "novelty": self.novelty.status(),
            "feed": self.refusal.status(),
            "detector": self._detector_status(),
            "decisions": self._decisions_status(),
            "accounting": self.metrics.balance(),
            "feed_silence": self.silence.status(),
            "output": self.output.status(),
            "alerts": self.alerts(),
            "config": to_dict(self.config),
        }

    def not_ready_reason(self) -> str | None:
        """Why ``/ready`` says no although the process runs: the feed is refused, the feed
        has been silent for ``feed.silence_s`` (see :mod:`streamer.feed_silence`), or the
        output is paused (disk full)."""
        refusal = self.refusal.active
        if refusal is not None:
            return refusal.message
        silent = self.silence.reason()
        if silent is not None:
            return silent
        if self.output.paused is not None:
            return f"output paused: {self.output.paused}"
        return None

    def alerts(self) -> list[str]:
        """What is wrong right now (a banner on the live page; gone when it is over)."""
        refusal = self.refusal.active
        out = [
            refusal.message if refusal is not None else None,
            self.silence.reason(),
            self.output.alert(),
        ]
        return [a for a in out if a is not None]

    def run(self) -> RunSummary:
        lossless = self.config.pipeline.mode == "lossless"
        n_inf = self.config.pipeline.inference_threads
        self._threads = [
            threading.Thread(target=self._infer_loop, name=f"infer-{i}", daemon=True)
            for i in range(n_inf)
        ]
        self._threads.append(threading.Thread(target=self._write_loop, name="write", daemon=True))
        for t in self._threads:
            t.start()
        self.metrics.up.set(1)
        self.swapper.start()
        try:
            self._receive_loop(lossless)
        except Exception as exc:  # keep files consistent whatever happened
            log.exception("receiver failed")
            self._errors.append(f"receiver: {exc}")
        finally:
            staged = self.batcher.flush()
            if staged is not None:
                self._infer_q.put(staged)
            for _ in range(n_inf):
                self._infer_q.put(_STOP)
            for t in self._threads[:-1]:
                t.join()
            self._write_q.put(_STOP)
            self._threads[-1].join()
            self.background.close()
            if self.decisions is not None:
                self.decisions.close()
            self.swapper.stop()
            self.metrics.up.set(0)
        try:
            return self._summary()
        finally:
            self._lock.release()  # after the index: another worker process may start now

    # -- stages --------------------------------------------------------------------------

    def _receive_loop(self, lossless: bool) -> None:
        cfg = self.config
        limits = Limits(max_message_bytes=cfg.feed.max_message_bytes)
        idle = cfg.pipeline.idle_timeout_s
        with FeedClient(
            cfg.feed.endpoint,
            cfg.feed.mode,
            timeout_s=cfg.feed.reconnect_s,
            hwm=cfg.feed.queue_messages,
            max_message_bytes=cfg.feed.max_message_bytes,
            prefetch=cfg.feed.prefetch,
            curve_server_key=cfg.feed.curve_server_key,
            curve_secret_key=cfg.feed.curve_secret_key,
        ) as feed:
            self.silence.start()
            self.ready.set()
            log.info(
                "receiving from %s (%s, %s mode; queue of %d messages of at most %d bytes)",
                cfg.feed.endpoint,
                cfg.feed.mode,
                cfg.pipeline.mode,
                cfg.feed.queue_messages,
                cfg.feed.max_message_bytes,
            )
            last_activity = time.monotonic()
            dropped = 0
            while not self._stop.is_set():
                try:
                    parts = feed.recv_parts(timeout_s=cfg.feed.poll_s)
                except TimeoutError:
                    parts = None
                if feed.dropped_connections != dropped:  # ZeroMQ refused a message
                    n, dropped = feed.dropped_connections - dropped, feed.dropped_connections
                    self._count_reject(
                        "connection", n, "feed connection dropped by ZeroMQ", message=True
                    )
                    self.refusal.refused(
                        "connection",
                        f"ZeroMQ dropped the connection {n} time(s): a message part over "
                        f"feed.max_message_bytes = {cfg.feed.max_message_bytes}",
                        n,
                    )
                now = time.monotonic()
                self.silence.check(now)
                if parts is not None:
                    last_activity = now
                    if self._handle_message(parts, limits, lossless) and cfg.pipeline.stop_at_end:
                        break
                staged = self.batcher.due(now)
                if staged is not None:
                    self._enqueue(staged, lossless)
                if idle > 0 and now - last_activity > idle:
                    log.info("no frames for %.1f s: stopping", idle)
                    break
                self.metrics.queue_depth.labels(queue="infer").set(self._infer_q.qsize())
                self.metrics.queue_depth.labels(queue="write").set(self._write_q.qsize())
            self._drain(feed, limits, lossless)

    def _drain(self, feed: FeedClient, limits: Limits, lossless: bool) -> None:
        """Stopped with a request out (REQ): the server may already have sent that train,
        so take the reply rather than lose it."""
        if not feed.pending or self._end is not None:
            return
        feed.prefetch = False
        try:
            parts = feed.recv_parts(timeout_s=self.config.feed.drain_s)
        except TimeoutError:
            return
        self._handle_message(parts, limits, lossless)

    def _handle_message(self, parts: list[Any], limits: Limits, lossless: bool) -> bool:
        """Decode, count and stage one message; True when it was the end-of-run marker."""
        m = self.metrics
        m.messages_received.inc()
        try:
            data, meta = deserialize(parts, limits=limits)
            decoded = decode_message(data, meta, self.spec, now=time.time())
        except MessageError as exc:
            self._count_reject(exc.reason, 1, exc.detail, message=True)
            self.refusal.refused(exc.reason, exc.detail)
            return False
        except Exception as exc:  # a decoder bug must not end the run: count, log, go on
            if self._reject_logged["internal"] < 5:
                log.exception("message decoding failed unexpectedly")
            self._count_reject("internal", 1, f"{type(exc).__name__}: {exc}", message=True)
            return False
        n_refused = sum(decoded.rejected.values())
        if n_refused:  # frames received and refused: part of the balance
            m.frames_received.inc(n_refused)
        for reason, n in decoded.rejected.items():
            self._count_reject(reason, n, "frames refused inside a message")
        if decoded.ignored:
            self.refusal.ignored(decoded.ignored, decoded.source, self.spec.key)
        if decoded.missing_modules:
            self._note_missing(decoded.missing_modules)
        if decoded.end is not None:
            self._end = decoded.end
            self.silence.end_of_run()
            log.info(
                "end of run %r from the feed (%d frames sent)", decoded.end.run, decoded.end.frames
            )
            return True
        fb = decoded.batch
        if fb is None or len(fb) == 0:
            if not decoded.rejected:  # no frame at all: counted, so every message shows up
                self._count_reject("empty", 1, "message without frames", message=True)
            return False
        self.refusal.accepted()
        self.silence.frames()
        if self.detector_map is not None:  # a real detector: onto the model's q grid
            self.detector_map.observe(data)
            fb = replace(fb, frames=self.detector_map(fb.frames))
        m.frames_received.inc(len(fb))
        m.last_frame_time.set(time.time())
        self._check_gap(int(fb.train_id[0]), int(fb.train_id[-1]), len(fb))
        if self._t0 == 0.0:
            self._t0 = time.monotonic()
        self.background.observe(fb.frames)  # before staging: the batch gets an estimate
        ready, dropped = self.batcher.add(fb, block=lossless)
        if dropped:
            m.dropped("no_buffer", dropped)
        for staged in ready:
            self._enqueue(staged, lossless)
        return False

    def _note_missing(self, modules: tuple[int, ...]) -> None:
        """Modules absent from a train (one source per module): counted, warned once."""
        self.metrics.modules_missing.inc(len(modules))
        if modules in self._missing_noted or len(self._missing_noted) >= 8:
            return
        self._missing_noted.add(modules)
        msg = (
            f"module(s) {list(modules)} missing from trains of {self.spec.source!r}: their "
            "pixels are masked in those frames"
        )
        log.warning("%s", msg)
        self._warnings.append(msg)

    def _check_gap(self, first: int, last: int, n: int) -> None:
        prev = self._last_train
        if prev is not None and first > prev + 1:
            missing_trains = first - prev - 1
            per_train = max(1, n // max(1, last - first + 1))
            self.metrics.frames_missed.labels(reason="train_gap").inc(missing_trains * per_train)
        if prev is None or last > prev:
            self._last_train = last

    def _count_reject(self, reason: str, n: int, detail: str, *, message: bool = False) -> None:
        """Count ``n`` refused frames (or, with ``message``, messages) and log the first few."""
        if message:
            self.metrics.messages_rejected.labels(reason=reason).inc(n)
        else:
            self.metrics.rejected(reason, n)
        self._reject_logged[reason] += 1
        k = self._reject_logged[reason]
        if k <= 5 or k % 1000 == 0:
            log.warning("rejected (%s, #%d): %s", reason, k, detail)

    def _enqueue(self, staged: StagedBatch, lossless: bool) -> None:
        if lossless:
            self._infer_q.put(staged)
            return
        try:
            self._infer_q.put_nowait(staged)
        except queue.Full:
            self.metrics.dropped("queue_full", len(staged.batch))
            self._release(staged.pool_index)

    def _infer_loop(self) -> None:
        m = self.metrics
        while True:
            staged = self._infer_q.get()
            if staged is _STOP:
                return
            t = time.monotonic()
            try:
                result = self.model.classify(staged, self.background.current)
            except Exception as exc:  # a failing batch is counted, never fatal
                log.exception("inference failed on a batch of %d frames", len(staged.batch))
                m.rejected("inference", len(staged.batch))
                self._errors.append(f"inference: {exc}")
                self._release(staged.pool_index)
                continue
            done = time.monotonic()
            if not self._units_checked:
                self._check_units(staged.batch.frames)
            m.batch_latency.observe(done - t)
            m.batch_size.observe(len(staged.batch))
            m.observe_latencies(done - staged.batch.received)
            m.frames_classified.inc(len(staged.batch))
            m.observe_labels(result.label, done)
            self._write_q.put((result, staged.pool_index))

    def _check_units(self, frames: np.ndarray) -> None:
        """Once per run: warn when the frames do not look like photon counts in the
        configured ``engine.photon_unit`` (:mod:`hitstream.units`). Batches too dark to tell
        (small ones at a low rate) are passed over, up to UNITS_CHECK_TRIES of them."""
        estimate = estimate_photon_unit(frames[:UNITS_CHECK_FRAMES])
        self._units_tries += 1
        if estimate.signal_pixels < MIN_SIGNAL_PIXELS and self._units_tries < UNITS_CHECK_TRIES:
            return
        self._units_checked = True
        advice = estimate.advice(self.config.engine.photon_unit, "feed")
        if advice:
            log.warning("%s", advice)
            self._warnings.append(advice)

    def _write_loop(self) -> None:
        """Write each classified batch (or hold its labels while the output is paused: see
        :mod:`streamer.output_guard`); the live page, decisions out and the novelty monitor
        see every batch either way."""
        m, out = self.metrics, self.output
        files_before = 0
        trimmed = time.monotonic()
        while True:
            self._observe_free_disk()
            if time.monotonic() - trimmed >= HEAP_TRIM_S:  # RSS flat over a shift
                trim_heap()
                trimmed = time.monotonic()
            try:
                item = self._write_q.get(timeout=self.config.output.flush_every_s)
            except queue.Empty:
                self._guard(out.tick)
                continue
            if item is _STOP:
                break
            result, pool_index = item
            try:
                self._guard(lambda r=result: out.write(r))
                self._t_last = time.monotonic()
                self._observe_live(result)
                self._publish(result)
                self.novelty.observe(result)
            finally:
                self._release(pool_index)
            closed = len(self.writer.files_closed)
            if closed != files_before:
                m.files_rotated.inc(closed - files_before)
                files_before = closed
        self._guard(out.close)
        m.files_rotated.inc(len(self.writer.files_closed) - files_before)

    def _observe_live(self, result: ResultBatch) -> None:
        """Feed the live view (before the batch's buffer is released); its bugs only log."""
        if self.live is None:
            return
        try:
            self.live.observe(result)
        except Exception:
            if not self._live_failed:
                self._live_failed = True
                log.exception("live view failed (logged once; the run goes on)")

    def _publish(self, result: ResultBatch) -> None:
        """Send the batch's decisions out (never blocks); its bugs only log."""
        if self.decisions is None:
            return
        try:
            self.decisions.publish(result)
        except Exception:
            if not self._decisions_failed:
                self._decisions_failed = True
                log.exception("publishing decisions failed (logged once; the run goes on)")

    def _decisions_status(self) -> dict[str, Any]:
        d = self.decisions
        if d is None:
            return {}
        return {
            "endpoint": d.endpoint, "mode": d.config.mode, "readers": d.readers,
            "sent": d.sent, "dropped": d.dropped,
        }  # fmt: skip

    def _observe_free_disk(self) -> None:
        """Export the output filesystem's free bytes, at most once per second."""
        now = time.monotonic()
        if self._free_checked >= 0 and now - self._free_checked < 1.0:
            return
        self._free_checked = now
        try:
            self.metrics.free_disk_bytes.set(shutil.disk_usage(self.config.output.dir).free)
        except OSError as exc:  # the writer's disk guard reports real trouble
            log.debug("free space of %s: %s", self.config.output.dir, exc)

    def _guard(self, fn: Any) -> bool:
        """Run an output call. Output errors pause the output (:class:`OutputGuard`); what
        still escapes is a bug or an error outside it: log it, stop the run, report False."""
        try:
            fn()
            return True
        except (HitstreamError, OSError) as exc:
            log.error("writer: %s", exc)
            self._errors.append(f"writer: {exc}")
        except Exception as exc:  # unexpected: keep the traceback, still stop cleanly
            log.exception("writer failed")
            self._errors.append(f"writer: {type(exc).__name__}: {exc}")
        self._writer_failed = True
        self._stop.set()
        return False

    # -- summary -------------------------------------------------------------------------

    def _index_labels_dir(self) -> None:
        """Index the label files written to ``output.labels_dir`` during a full disk."""
        fb = self.output.fallback
        if fb is None or not fb.files_closed:
            return
        try:
            build_run_index(fb.config.dir, fb.config.run)
        except (HitstreamError, OSError) as exc:
            log.error("labels_dir index: %s", exc)

    def _summary(self) -> RunSummary:
        m = self.metrics
        cfg = self.config
        s = RunSummary(
            run=cfg.output.run, model=self.model.version, provider=self.model.engine.provider
        )
        s.frames_received = int(m.value("hitstream_frames_received_total"))
        s.frames_classified = int(m.value("hitstream_frames_classified_total"))
        s.frames_kept = int(m.value("hitstream_frames_kept_total"))
        s.rejected = m.rejected_by_reason()
        s.dropped = m.dropped_by_reason()
        s.messages_rejected = m.messages_rejected_by_reason()
        s.missed = m.missed_by_reason()
        s.per_class = dict(m.totals)
        hits = sum(v for c, v in s.per_class.items() if c in self.model.engine.bundle.hit_classes)
        s.hit_rate = hits / s.frames_classified if s.frames_classified else 0.0
        s.elapsed_s = max(0.0, (self._t_last or time.monotonic()) - self._t0) if self._t0 else 0.0
        s.frames_per_s = s.frames_classified / s.elapsed_s if s.elapsed_s > 0 else 0.0
        s.latency = m.latency_percentiles()
        s.files = [str(p) for p in self.writer.files_closed]
        if self._end is not None:
            s.end_of_run = {
                "run": self._end.run,
                "frames": self._end.frames,
                "trains": self._end.trains,
            }
        s.accounting = frame_accounting(self.metrics, self.output, self._end)
        s.output = self.output.status()
        if self.writer.files_closed or self.writer.frames_seen:
            try:  # every finished file of the run, also after a full disk
                s.index = str(build_run_index(cfg.output.dir, cfg.output.run))
            except (HitstreamError, OSError) as exc:
                log.error("run index: %s", exc)
                self._errors.append(f"index: {exc}")
        self._index_labels_dir()
        lost = s.accounting["kept_not_written"] + s.accounting["labels_unrecorded"]
        if self.output.pauses and lost:  # a pause that cost nothing is only a warning
            self._errors.append(
                f"output paused {self.output.pauses} time(s) (last: {self.output.last_reason}): "
                f"{s.accounting['kept_not_written']} kept frame(s) not written, "
                f"{s.accounting['labels_unrecorded']} label row(s) not recorded"
            )
        elif self.output.pauses:
            self._warnings.append(
                f"output paused {self.output.pauses} time(s) (last: {self.output.last_reason}); "
                "nothing was lost"
            )
        refused = self.refusal.end_error()
        if refused is not None:
            self._errors.append(f"feed: {refused}")
        s.error = "; ".join(self._errors) or None
        s.warnings = list(self._warnings)
        s.background = self.background.status()
        s.novelty = self.novelty.status()
        s.feed = self.refusal.status()
        s.detector = self._detector_status()
        s.decisions = self._decisions_status()
        s.recovered = self.recovered.as_dict() if self.recovered.changed else {}
        return s
