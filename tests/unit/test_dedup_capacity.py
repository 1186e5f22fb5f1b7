"""The dedup memory model of `processor dedup capacity` (pure arithmetic over the measured constants)."""

from __future__ import annotations

import pytest

from processor.ops.dedup_capacity import (
    ENTRY_BYTES,
    HASHTABLE_BYTES,
    LISTPACK_MAX,
    Capacity,
    describe,
)
from processor.runtime.done_marks import DONE_BUCKETS, DONE_PER_HASH, DoneMarks

WEEK = 7 * 86400


def test_a_layout_sized_for_its_rate_fills_its_hashes_to_the_target() -> None:
    c = Capacity(rate=1000, window_seconds=WEEK, handlers=3, peak_rate=1000)
    assert c.ids == pytest.approx(1000 * WEEK * (1 + 1 / DONE_BUCKETS) * 3)
    assert c.ids_per_hash == pytest.approx(DONE_PER_HASH, rel=0.01)
    assert ENTRY_BYTES < c.bytes_per_id < 20
    assert c.bytes == pytest.approx(c.ids * c.bytes_per_id)
    assert "warning" not in describe(c)


def test_a_layout_sized_for_too_little_warns_and_counts_hashtables() -> None:
    c = Capacity(rate=1000, window_seconds=WEEK, handlers=1, peak_rate=100)
    assert c.ids_per_hash > LISTPACK_MAX
    assert c.bytes_per_id == HASHTABLE_BYTES
    assert "set dedup_peak_rate to at least 1000" in describe(c)


def test_an_idle_handler_pays_the_hash_overhead_per_id() -> None:
    busy = Capacity(rate=100, window_seconds=WEEK, handlers=1, peak_rate=100)
    idle = Capacity(rate=1, window_seconds=WEEK, handlers=1, peak_rate=100)
    assert idle.bytes_per_id > busy.bytes_per_id


def test_buckets_cover_the_ttl() -> None:
    for ttl in (1, 7, 3600, WEEK, WEEK + 1):
        marks = DoneMarks("g", ttl, 10.0)
        assert marks.bucket_seconds * DONE_BUCKETS >= ttl
        assert marks.hashes_per_bucket >= 1
