"""processor.runtime.heap against this process's own C library (no mock: glibc on Debian, where the tests
and workers run)."""

from __future__ import annotations

import platform

from processor.bench.proc import rss_kb
from processor.runtime import heap

GLIBC = platform.libc_ver()[0] == "glibc"


def test_trim_hands_the_pages_of_freed_chunks_back_to_the_os() -> None:
    # 8 KB blocks come from malloc's heap (not mmap); keeping every tenth (and the last) leaves the freed
    # ones between live chunks, where free() never returns them: only a trim does.
    blocks = [bytearray(8192) for _ in range(6000)]
    kept = blocks[::10] + blocks[-1:]
    del blocks
    before = rss_kb() / 1024
    assert heap.trim() is GLIBC
    after = rss_kb() / 1024
    if GLIBC:
        assert before - after > 10, (before, after)
    assert kept  # alive until here


def test_arenas_are_limited_where_the_c_library_allows_it() -> None:
    assert heap.limit_arenas(2) is GLIBC
