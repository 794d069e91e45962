"""Give freed heap memory back to the operating system (glibc ``malloc_trim``).

The streamer frees large buffers (messages of tens of MB, decoded in one thread and released
in another) all the time; glibc keeps such memory in per-thread arenas, so RSS creeps up in
steps over hours although nothing leaks. :func:`trim_heap` asks glibc to return what is
free; elsewhere (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache
from typing import Any

log = logging.getLogger(__name__)


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        lib = ctypes.CDLL(name) if name else None
        return lib if lib is not None and hasattr(lib, "malloc_trim") else None
    except OSError:
        return None


def trim_heap() -> bool:
    """Return free heap memory to the OS; True when glibc did it."""
    lib = _libc()
    if lib is None:
        return False
    return bool(lib.malloc_trim(0))
