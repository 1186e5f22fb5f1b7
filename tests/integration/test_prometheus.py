"""A real Prometheus server scrapes a worker under load: the p99 it computes from the histogram with
`histogram_quantile` is within one bucket of the worker's own rolling p99."""

from __future__ import annotations

import bisect
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from pathlib import Path

from processor.dev.servers import free_port
from processor.observability.metrics import LATENCY_BUCKETS
from tests.conftest import Backend
from tests.support import bed_worker, event, produce

# Over every observation of the run (it is shorter than both this range and the rolling window's minute), so
# both numbers describe the same events and differ only by how each computes a quantile.
QUERY = 'histogram_quantile(0.99, sum by (le) (increase(processor_processing_seconds_bucket{handler="a"}[5m])))'


def bucket_index(seconds: float) -> int:
    """Index of the histogram bucket holding ``seconds`` (le semantics: bound >= value)."""
    return bisect.bisect_left(LATENCY_BUCKETS, seconds)


def promql(port: int, query: str) -> float | None:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": query})
    with urllib.request.urlopen(url, timeout=5) as response:
        result = json.load(response)["data"]["result"]
    if not result or result[0]["value"][1] in ("NaN", "+Inf"):
        return None
    return float(result[0]["value"][1])


def test_promql_p99_matches_the_rolling_p99(backend: Backend, unique: str, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs Debian's prometheus package"
    # Latency spread over several buckets: 5-60 ms per event, one at a time.
    worker = bed_worker(backend.env(), unique, tmp_path, latency_ms="25", jitter_ms="30").start()
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
        f"scrape_configs: [{{job_name: w, static_configs: [{{targets: ['127.0.0.1:{worker.port}']}}]}}]\n"
    )
    prom = subprocess.Popen(
        [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
         f"--web.listen-address=127.0.0.1:{prom_port}"],
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "prometheus.log").open("wb"),
    )
    stop = threading.Event()

    sent = [0]

    def load() -> None:
        n = 0
        while not stop.is_set():
            produce(backend.bootstrap_servers, f"{unique}.in", [event(f"p{n + i}") for i in range(5)])
            n += 5
            sent[0] = n
            time.sleep(0.1)

    feeder = threading.Thread(target=load, daemon=True)
    try:
        worker.wait_assigned(["a"])
        # Exported at zero before the first event (Metrics.declare_handler): increase() counts from a series'
        # first sample, and a histogram that first appeared with a batch in it left that batch out of the p99.
        counts = worker.metrics().samples.get("processor_processing_seconds_count", {})
        assert [dict(labels)["handler"] for labels in counts] == ["a"]
        assert list(counts.values()) == [0]
        feeder.start()
        # Ten seconds at 50/s, under what the worker does (40 ms a call) on real Kafka: at 100/s for 20 s its
        # backlog outlasted the rolling p99's minute, which then missed the first events PromQL counted.
        time.sleep(10)
        stop.set()
        feeder.join(10)
        # Let the worker finish the backlog, its monitor (every 5 s) recompute the rolling p99, and Prometheus
        # scrape the final counts.
        worker.wait_for(lambda: worker.metrics().value("processor_events_total", handler="a", outcome="success")
                        == sent[0], 60, "every produced event processed")
        time.sleep(6)
        deadline = time.monotonic() + 30
        matched = None
        while matched is None and time.monotonic() < deadline:
            try:
                promql_p99 = promql(prom_port, QUERY)
            except OSError:
                promql_p99 = None
            rolling = worker.metrics().value("processor_rolling_p99_seconds", handler="a", kind="processing")
            if promql_p99 is not None and rolling:
                matched = (promql_p99, rolling)
            else:
                time.sleep(1)
        log = (tmp_path / "prometheus.log").read_text()[-2000:]
        assert matched is not None, f"prometheus never returned a p99: {log}"
        promql_p99, rolling = matched
        assert abs(bucket_index(promql_p99) - bucket_index(rolling)) <= 1, (promql_p99, rolling)
    finally:
        stop.set()
        if feeder.is_alive():  # join() raises for a thread never started (a failure before the load)
            feeder.join(10)
        prom.terminate()
        prom.wait(10)
        worker.stop()
