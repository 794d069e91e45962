"""One writer per run and worker: an exclusive ``flock`` on a hidden lock file beside the files.

``WorkerLock(out_dir, run, worker)`` locks ``<out_dir>/.<run>_<worker>.lock`` (created if
needed, never deleted: deleting a lock file lets two processes lock two different files)
and writes ``<pid> <host> <purpose>`` into it, so a refusal can name the holder. The kernel
releases the lock when the process ends, however it ends (SIGKILL included), so a lock is
never stale; a stopped or hung process still holds it. Locks are taken without waiting:
a second writer is refused with :class:`ConfigError`.

``flock`` works across processes on one host and on most network filesystems that
support it (NFS emulates it with byte-range locks); it is advisory, like every lock here:
the streamer, the recovery and the readers respect it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import threading
import time
from pathlib import Path
from types import TracebackType

from hitstream.errors import ConfigError
from streamer.cxi_layout import check_name

LOCK_SUFFIX = ".lock"
# a probe (:func:`is_locked`) holds a shared lock for microseconds: retry this long
_TAKE_RETRY_S = 0.2
_TAKE_POLL_S = 0.02

_held: dict[str, int] = {}  # lock files this process holds (resolved path -> count)
_held_guard = threading.Lock()


def lock_path(out_dir: Path, run: str, worker: str) -> Path:
    """The lock file of a run and worker (hidden: no reader takes it for a data file)."""
    check_name("run", run)
    check_name("worker", worker)
    return Path(out_dir) / f".{run}_{worker}{LOCK_SUFFIX}"


def _key(path: Path) -> str:
    return str(path.resolve())


def held_here(out_dir: Path, run: str, worker: str) -> bool:
    """True when a :class:`WorkerLock` of this process holds the run and worker."""
    with _held_guard:
        return _held.get(_key(lock_path(out_dir, run, worker)), 0) > 0


def _holder(fd: int) -> str:
    """``pid N on HOST`` (and what it does) as the holder wrote it, or ``unknown``."""
    try:
        text = os.pread(fd, 512, 0).decode("utf-8", "replace").split()
    except OSError:
        return "holder unknown"
    if len(text) < 2 or not text[0].isdigit():
        return "holder unknown"
    purpose = " ".join(text[2:])
    return f"pid {text[0]} on {text[1]}" + (f": {purpose}" if purpose else "")


class WorkerLock:
    """Exclusive lock of ``run``/``worker`` in ``out_dir`` for the life of this object.

    A context manager; :meth:`release` (idempotent) frees it early. Raises
    :class:`ConfigError` naming the holder when another process (or another
    ``WorkerLock`` of this one) holds it. ``purpose`` goes into the lock file.
    """

    def __init__(self, out_dir: Path, run: str, worker: str, *, purpose: str = "writing") -> None:
        self._fd: int | None = None
        self.path = lock_path(out_dir, run, worker)
        self.run, self.worker = run, worker
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            self._take(fd)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()} {socket.gethostname()} {purpose}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        with _held_guard:
            key = _key(self.path)
            _held[key] = _held.get(key, 0) + 1

    def _take(self, fd: int) -> None:
        deadline = time.monotonic() + _TAKE_RETRY_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    break
                time.sleep(_TAKE_POLL_S)
        raise ConfigError(
            f"another streamer is writing run {self.run} worker {self.worker} in "
            f"{self.path.parent} ({_holder(fd)}); stop it first, or use another "
            "output.worker or output.run"
        )

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Free the lock (the file stays). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        with _held_guard:
            key = _key(self.path)
            _held[key] -= 1
            if _held[key] <= 0:
                del _held[key]
        os.close(fd)  # closing the only descriptor releases the flock

    def __enter__(self) -> WorkerLock:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def is_locked(out_dir: Path, run: str, worker: str) -> bool:
    """True when another process holds the lock of ``run``/``worker`` (a writer is alive).

    A lock held by this process (:func:`held_here`) does not count. Probes with a shared
    lock released at once; it never creates the lock file.
    """
    if held_here(out_dir, run, worker):
        return False
    try:
        fd = os.open(lock_path(out_dir, run, worker), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also releases the probe's shared lock
    return False
