"""Helpers for tests that run hitstream commands as real processes on loopback."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def free_endpoint() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@contextmanager
def command(*args: str | Path, cwd: Path | None = None) -> Iterator[subprocess.Popen[str]]:
    """Run ``python -m <args>``; terminate it on exit if still running."""
    proc = subprocess.Popen(
        [sys.executable, "-m", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
