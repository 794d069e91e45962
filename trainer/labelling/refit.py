"""Refit while labelling: ``trainer finetune`` on the labels so far, then new guesses.

:class:`Refitter` runs, in a thread of the labelling server, what a person would run by
hand between two batches of labels:

1. the labels file as it is now is copied (labelling goes on meanwhile);
2. ``trainer finetune`` fine-tunes the session's bundle on it, in a child process at a
   lower priority (``nice``), so that TensorFlow neither enters the server's process nor
   takes the cores from the page; its output goes to ``refit-K.log`` beside the bundle;
3. the new bundle's ONNX graph scores every frame of the runs again (onnxruntime, one
   thread, the runs opened anew: pictures keep being drawn), and the session takes the new
   guesses: the frames not labelled yet are ordered again by them
   (:meth:`trainer.labelling.session.LabelSession.update_model`).

A refit starts every ``every`` labels (counted from the last refit's start) or when asked
(the page's button). Each refit's before/after accuracy on the labels finetune held out
(with a 95 % Wilson interval) is kept in :meth:`Refitter.state`: the page shows the
accuracy move as labels come. The latest bundle (``refit-K/``) is a checked bundle, ready
for ``POST /model``; ``history.json`` beside them keeps the accuracies for a later session
on the same labels. A failed refit leaves the guesses as they were and says why.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hitstream.labels import write_labels
from trainer.labelling.session import LabelSession, model_probabilities
from trainer.model.threshold_choice import wilson

log = logging.getLogger(__name__)

MIN_LABELS = 20  # fewer labels give finetune nothing to hold out
LOG_TAIL = 600  # characters of a failed refit's log shown on the page
HISTORY_FILE = "history.json"  # the refits so far, shown again by a later session


@dataclass(frozen=True)
class RefitConfig:
    """What a refit fine-tunes and where its bundles go."""

    model: Path  # the session's bundle (with model.keras)
    runs: tuple[Path, ...]
    dataset: str
    workdir: Path  # refit-K/ bundles and refit-K.log files
    photon_unit: float = 1.0
    every: int = 50  # labels between automatic refits (0: on request only)
    finetune_args: tuple[str, ...] = ()  # more options for trainer finetune (e.g. --epochs)
    nice: int = 10  # the child's lower priority


def unavailable_reason(model: Path | None) -> str | None:
    """Why a session with this ``--model`` cannot refit (None: it can)."""
    if model is None:
        return "no --model to fine-tune"
    if not (Path(model) / "model.keras").is_file():
        return f"{model} has no model.keras to fine-tune"
    return None


class Refitter:
    """Refits of a :class:`LabelSession`'s model in a background thread (one at a time)."""

    def __init__(self, session: LabelSession, config: RefitConfig) -> None:
        self.session = session
        self.config = config
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._child: subprocess.Popen[bytes] | None = None
        self._closed = False
        self._started_at_labels = session.n_labelled()
        self._started: float | None = None
        self._reason = ""
        self._error: str | None = None
        self._history: list[dict[str, Any]] = _read_history(config.workdir)
        self._count = _last_refit(config.workdir)  # numbers go on from an earlier session

    # -- what the page sees ----------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        with self._lock:
            running = self._thread is not None and self._thread.is_alive()
            every = self.config.every
            return {
                "available": True,
                "running": running,
                "reason": self._reason if running else None,
                "elapsed_s": round(time.monotonic() - self._started, 1)
                if running and self._started is not None
                else None,
                "every": every,
                "next_at": self._started_at_labels + every if every > 0 else None,
                "min_labels": MIN_LABELS,
                "error": self._error,
                "history": list(self._history),
            }

    # -- starting --------------------------------------------------------------------------

    def on_label(self) -> bool:
        """After a label: start a refit when ``every`` more labels came since the last."""
        every = self.config.every
        n = self.session.n_labelled()
        if every <= 0 or n < max(MIN_LABELS, self._started_at_labels + every):
            return False
        return self.request(f"every {every} labels")

    def request(self, reason: str = "asked") -> bool:
        """Start a refit now unless one runs or there are too few labels; True if started."""
        n = self.session.n_labelled()
        with self._lock:
            if self._closed or (self._thread is not None and self._thread.is_alive()):
                return False
            if n < MIN_LABELS:
                self._error = f"{n} labels: a refit needs at least {MIN_LABELS}"
                return False
            self._count += 1
            self._started_at_labels, self._started, self._reason = n, time.monotonic(), reason
            self._error = None
            self._thread = threading.Thread(
                target=self._run, args=(self._count,), name="label-refit", daemon=True
            )
            self._thread.start()
        log.info("refit %d started (%s, %d labels)", self._count, reason, n)
        return True

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the running refit (tests, the command's exit); True when none runs."""
        t = self._thread
        if t is not None:
            t.join(timeout)
        return t is None or not t.is_alive()

    def close(self) -> None:
        """Stop: a running child is terminated, the thread joined."""
        with self._lock:
            self._closed = True
            child = self._child
        if child is not None and child.poll() is None:
            child.terminate()
        self.wait(30)

    # -- the refit -------------------------------------------------------------------------

    def _run(self, k: int) -> None:
        t0 = time.monotonic()
        cfg = self.config
        out = cfg.workdir / f"refit-{k}"
        logfile = cfg.workdir / f"refit-{k}.log"
        try:
            cfg.workdir.mkdir(parents=True, exist_ok=True)
            labels = cfg.workdir / f"refit-{k}.labels.csv"
            table = self.session.labels_table()
            # the file may hold labels of runs not open here: finetune gets these runs' only
            table = table.take(np.isin(table.run, self.session.run_names))
            write_labels(labels, table)
            self._finetune(labels, out, logfile)
            report = json.loads((out / "finetune.json").read_text(encoding="utf-8"))
            probs, bundle = self._score(out)
            self.session.update_model(probs, bundle.classes, bundle.label)
            entry = _history_entry(report, len(table.label), time.monotonic() - t0, out)
            with self._lock:
                self._history.append(entry)
                history = list(self._history)
            _write_history(cfg.workdir, history)
            log.info(
                "refit %d: %d labels, held-out accuracy %.3f -> %.3f (%d frames), %.0f s",
                k, entry["labels"], entry["before"], entry["after"], entry["holdout"],
                entry["seconds"],
            )  # fmt: skip
        except Exception as exc:  # shown on the page; the guesses stay as they were
            msg = str(exc)
            if logfile.is_file():
                tail = logfile.read_text(encoding="utf-8", errors="replace")[-LOG_TAIL:]
                msg += f" (log {logfile}: ...{tail.strip()})"
            with self._lock:
                self._error = f"refit {k} failed: {msg}"
            log.error("refit %d failed: %s", k, msg)
            shutil.rmtree(out, ignore_errors=True)

    def _finetune(self, labels: Path, out: Path, logfile: Path) -> None:
        cfg = self.config
        cmd = [sys.executable, "-m", "trainer", "finetune", "--model", str(cfg.model)]
        for run in cfg.runs:
            cmd += ["--data", str(run)]
        cmd += ["--dataset", cfg.dataset, "--labels", str(labels), "--out", str(out)]
        cmd += ["--photon-unit", repr(cfg.photon_unit), "--force", *cfg.finetune_args]
        if cfg.nice > 0 and shutil.which("nice"):
            cmd = ["nice", "-n", str(cfg.nice), *cmd]
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONUNBUFFERED": "1"}
        with open(logfile, "wb") as log_out:
            with self._lock:
                if self._closed:
                    raise RuntimeError("the labelling session was closed")
                child = self._child = subprocess.Popen(
                    cmd, stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
                    env=env,
                )  # fmt: skip
            rc = child.wait()
        with self._lock:
            self._child = None
        if rc != 0:
            raise RuntimeError(f"trainer finetune ended with status {rc}")

    def _score(self, out: Path) -> tuple[Any, Any]:
        from hitstream.bundle import load_bundle
        from trainer.data.ingest import open_runs

        bundle = load_bundle(out, verify=True)
        cfg = self.config
        group = open_runs([(p, cfg.dataset) for p in cfg.runs], photon_unit=cfg.photon_unit)
        with group:
            probs = model_probabilities(
                group, bundle, progress=False, backgrounds=self.session.backgrounds, threads=1
            )
        return probs, bundle


def _history_entry(
    report: dict[str, Any], labels: int, seconds: float, out: Path
) -> dict[str, Any]:
    """One refit as the page shows it: accuracies before/after on finetune's holdout."""
    n = int(report["holdout"]["frames"])
    after = float(report["after"]["accuracy"])
    lo, hi = wilson(round(after * n), n)
    return {
        "labels": labels,
        "holdout": n,
        "before": round(float(report["before"]["accuracy"]), 4),
        "after": round(after, 4),
        "after_ci95": [round(lo, 4), round(hi, 4)],
        "model": f"{report['bundle']['name']}:{report['bundle']['version']}",
        "bundle": str(out),
        "seconds": round(seconds, 1),
    }


def _read_history(workdir: Path) -> list[dict[str, Any]]:
    """The refits of earlier sessions on the same labels (``history.json``; [] when none or
    unreadable: it is only shown)."""
    try:
        data = json.loads((workdir / HISTORY_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, list):
        return []
    return [e for e in data if isinstance(e, dict) and {"labels", "after", "before"} <= set(e)]


def _write_history(workdir: Path, history: list[dict[str, Any]]) -> None:
    tmp = workdir / f".{HISTORY_FILE}.tmp"
    try:
        tmp.write_text(json.dumps(history, indent=1) + "\n", encoding="utf-8")
        os.replace(tmp, workdir / HISTORY_FILE)
    except OSError as exc:  # the page still shows it; only the next session would not
        log.warning("refit history not saved: %s", exc)


def _last_refit(workdir: Path) -> int:
    """The highest K of the ``refit-K`` bundles and logs already in ``workdir`` (0: none)."""
    found = [0]
    if workdir.is_dir():
        for p in workdir.iterdir():
            stem = p.name.removeprefix("refit-").removesuffix(".log")
            if p.name.startswith("refit-") and stem.isdigit():
                found.append(int(stem))
    return max(found)


def refit_workdir(labels_path: Path) -> Path:
    """Where a session's refits go: beside its labels file."""
    p = Path(labels_path)
    return p.parent / f"{p.stem}.refits"
