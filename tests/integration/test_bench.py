"""`processor bench` end to end on the test backend: every variant runs and handles each event once.

Speed is never asserted: the machine running the tests decides it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import orjson
import pytest

from processor import bench_report as br
from processor.bench import BenchOptions, bench_command
from tests.conftest import Backend

EVENTS = 2000


@pytest.mark.timeout(420)
def test_bench_runs_every_variant_over_every_event(
    backend: Backend, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "bench.json"
    options = BenchOptions(events=EVENTS, partitions=3, payload_bytes=200, json_path=out, state_dir=tmp_path)
    status = bench_command(options, environ=backend.env())
    table = capsys.readouterr().out
    document = orjson.loads(out.read_bytes())
    assert status == 0, table

    rows = {row["key"]: row for row in document["rows"]}
    assert list(rows) == list(br.ORDER)
    quix_installed = importlib.util.find_spec("quixstreams") is not None
    for key, row in rows.items():
        if key == br.QUIX and not quix_installed:
            assert row["status"] == br.SKIPPED
            assert "not installed" in row["note"]
            continue
        assert row["status"] == br.OK, (key, row["note"])
        assert row["events"] == row["distinct"] == EVENTS, key
        assert row["events_per_s"] > 0, key
        assert row["peak_rss_mb"] > 0, key
        assert row["cpu_seconds_per_1k"] is not None, key
        assert row["processing_p99_ms"] is not None, key
        if key != br.FAUST_CONSUME:  # the only variant with no output topic
            assert row["e2e_p99_ms"] is not None, key
    assert rows[br.PIPELINE]["processing_source"] == "histogram"
    assert set(document["ratios"]) == {"c/a", "c/b", "c/b0", "c/e"}
    assert document["ratios"]["c/a"] is not None
    assert document["options"] == {"events": EVENTS, "partitions": 3, "payload_bytes": 200}
    assert document["latency"] is None
    for key in rows:
        assert f"({key}) " in table
