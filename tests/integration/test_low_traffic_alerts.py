"""The burn-rate pages' low-traffic gate on a real worker's series: five events with one dead-lettered (20%,
over the page's 14.4x of a 1% budget) page nobody, under the SLO's min_events (20); forty with ten
dead-lettered page. A worker of tests/topologies/testbed.py (handler ``a``, a 99% delivery SLO) is scraped
every second, as the chaos lab records a run, and its series go through the generated rules with promtool,
the SLO window shrunk to a day (pages on 2m/1m) as in processor.chaos.alerts."""

from __future__ import annotations

import contextlib
import importlib
import threading
import time
from pathlib import Path

import pytest
import redis

from processor.chaos.alerts import check_alerts
from processor.chaos.record import Sample, Series
from tests.conftest import Backend
from tests.support import WorkerProcess, bed_worker, event, produce

DELIVERY_BURN = "ProcessorDeliveryBudgetBurn"


def _dead_letters(worker: WorkerProcess) -> float:
    return worker.metrics().value("processor_events_total", handler="a", outcome="dead_lettered")


@pytest.mark.parametrize(("good", "bad", "pages"), [(4, 1, set()), (30, 10, {DELIVERY_BURN})],
                         ids=["5-events-no-page", "40-events-page"])
def test_a_burn_page_needs_min_events(backend: Backend, unique: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      good: int, bad: int, pages: set[str]) -> None:
    worker = bed_worker(backend.env(), unique, tmp_path, policy="1", retry="1s").start()
    ledger = redis.Redis.from_url(backend.redis_url)
    series = Series(f"worker-{unique}", "worker", f"127.0.0.1:{worker.port}", time.time())
    stop = threading.Event()

    def record() -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError):  # a scrape it missed is a gap, as Prometheus would see
                series.samples.append(Sample(time.time(), worker.metrics()))
            stop.wait(1.0)

    try:
        worker.wait_assigned(["a"])
        recorder = threading.Thread(target=record, daemon=True)
        t0 = time.time()
        recorder.start()
        time.sleep(2)
        produce(backend.bootstrap_servers, f"{unique}.in", [event(f"g{i}", i) for i in range(good)])
        worker.wait_for(lambda: worker.metrics().value("processor_events_total", handler="a", outcome="success")
                        == good, 30, "the good events")
        ledger.set(f"testbed:{unique}:broken", 1)
        produce(backend.bootstrap_servers, f"{unique}.in", [event(f"b{i}", i) for i in range(bad)])
        worker.wait_for(lambda: _dead_letters(worker) == bad, 60, "the dead letters")
        ledger.delete(f"testbed:{unique}:broken")
        time.sleep(3)
        stop.set()
        recorder.join()
        end = time.time()
    finally:
        ledger.close()
        worker.stop()
    monkeypatch.setenv("TESTBED_NAME", unique)
    monkeypatch.setenv("TESTBED_POLICY", "1")
    topology = importlib.reload(importlib.import_module("tests.topologies.testbed")).topology
    verdict = check_alerts(topology, [series], t0, end, tmp_path, pages=pages, may_page=())
    assert verdict.ok, verdict.detail
    assert {a for a, severity in verdict.fired if severity == "page"} == pages, verdict.fired
