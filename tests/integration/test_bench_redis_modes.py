"""`processor bench --redis-modes` on the test backend: (c) finishes on one Redis, on a local Redis Cluster and
on the cluster with WAIT, and reports the memory each left. Speed is never asserted."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.bench.command import BenchOptions
from processor.bench.redis_modes import measure_redis_modes, render
from tests.conftest import Backend

EVENTS = 1000


@pytest.mark.timeout(300)
def test_the_pipeline_runs_on_each_dedup_store(backend: Backend, tmp_path: Path) -> None:
    options = BenchOptions(events=EVENTS, partitions=3, state_dir=tmp_path)
    rows = measure_redis_modes(options, backend.env(), print)
    assert [row.label for row in rows] == ["one Redis", "Redis Cluster (3+3)", "Redis Cluster, WAIT 1"]
    for row in rows:
        assert row.events_per_s is not None, row
        assert row.events_per_s > 0, row
        assert row.bytes_per_event > 0, row  # the done-marks stay after the run
    table = render(rows, options)
    assert "1.00x" in table.splitlines()[2]
