"""processor_event_loop_lag_seconds: a handler that blocks the worker's event loop shows as the loop's lag."""

from __future__ import annotations

from pathlib import Path

from processor.observability.scrape import Scrape
from tests.conftest import Backend
from tests.support import bed_worker, event, produce, read_topic

LAG = "processor_event_loop_lag_seconds"


def _late(scrape: Scrape, seconds: str) -> float:
    """Samples of the loop's lag above ``seconds`` (a bucket bound)."""
    return scrape.value(f"{LAG}_count") - scrape.value(f"{LAG}_bucket", le=seconds)


def test_a_handler_that_blocks_the_event_loop_shows_as_event_loop_lag(
    backend: Backend, unique: str, tmp_path: Path
) -> None:
    worker = bed_worker(backend.env(), unique, tmp_path, block_ms="300").start()
    try:
        worker.wait_assigned(["a"])
        # Sampled from the app's start, which can come after its partitions are assigned.
        worker.wait_for(lambda: worker.metrics().value(f"{LAG}_count") > 0, 10, "a first sample of the loop")
        before = worker.metrics()
        produce(backend.bootstrap_servers, f"{unique}.in", [event(f"e{i}", i) for i in range(3)])
        assert len(read_topic(backend.bootstrap_servers, f"{unique}.a.out", expect=3)) == 3
        after = worker.metrics()
        # Each call blocks for 300 ms: the 100 ms timer due during a block runs 200-300 ms late (or later,
        # when calls block one after another).
        assert _late(after, "0.2") - _late(before, "0.2") >= 1, after.samples.get(f"{LAG}_bucket")
    finally:
        worker.stop()
