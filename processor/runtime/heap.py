"""The C heap of a worker: fewer glibc arenas, and their freed pages handed back to the operating system.

A worker's RSS rose 60-120 MB/h in soaks, and none of it was in use: at 2 000 events/s, glibc's heaps grew
from 21 to 38 MB in six minutes while the memory allocated on them stayed at about 18 MB, as did the Python
objects and, after the first 90 s, pymalloc's arenas. The rest was freed chunks glibc kept. Records, fetch and
delivery buffers are allocated by one thread and freed by another (then the consumer thread, the event loop,
the delivery thread, librdkafka's own), and glibc gives each thread an arena of its own, up to 8 per core, each
fragmenting by itself. Two arenas (``MALLOC_ARENA_MAX``, 2 by default: processor.config) and
``malloc_trim(0)`` every ``TRIM_INTERVAL_SECONDS`` (0.2-9 ms, off the event loop) held the RSS at 97-101 MB
from the second minute of a five-minute soak to its end, 90-93 MB just after each trim; 97 to 109 MB without
them (a ten-minute soak: +34 MB/h after its warm-up, against +87 MB/h before).

Both are glibc's; with another C library (musl, macOS) these functions do nothing and say so.
"""

from __future__ import annotations

import ctypes
from typing import Any

TRIM_INTERVAL_SECONDS = 30.0
_M_ARENA_MAX = -8  # mallopt's parameter number for the arena limit (glibc's malloc.h)


def _libc() -> Any:
    # The symbols of this process itself: the C library it runs on, with no search for one by name.
    libc = ctypes.CDLL(None)
    if not (hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim")):
        return None
    libc.malloc_trim.argtypes = [ctypes.c_size_t]
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return libc


_LIBC = _libc()


def limit_arenas(arenas: int) -> bool:
    """Cap glibc's malloc arenas; call before the worker starts its threads. False where it cannot."""
    return _LIBC is not None and bool(_LIBC.mallopt(_M_ARENA_MAX, arenas))


def trim() -> bool:
    """Return the C heap's free pages to the OS (it blocks: run it in a thread). False where it cannot."""
    if _LIBC is None:
        return False
    _LIBC.malloc_trim(0)
    return True
