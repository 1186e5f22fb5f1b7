"""`processor demo`: the reference topology under a load with injected failures, then an account of it.

It starts a real worker process for ``topologies.orders`` (failures and an outage of the payment gateway
injected), produces OrderCreated events (some duplicated, some malformed), waits until every handler
has accounted for every event (processed, skipped as a duplicate, or dead-lettered), and prints a table
read from the worker's own ``/metrics``. Exit status 0 means every event is accounted for.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from confluent_kafka import Producer

from processor.config import Settings
from processor.dev.servers import free_port
from processor.dev.simulate import set_outage
from processor.errors import StackError
from processor.kafka.producer import client_config, ensure_topics
from processor.observability.budget import float_to_go_string
from processor.observability.scrape import Scrape, scrape
from processor.topology.topology import Topology, load_topology

TOPOLOGY = "topologies.orders"


@dataclass(frozen=True)
class DemoOptions:
    """How big and how hostile the demo run is."""

    events: int = 2000
    duplicates: int = 100
    malformed: int = 20
    failure_rate: float = 0.05
    outage_seconds: float = 4.0
    timeout_seconds: float = 120.0
    state_dir: Path = Path(".processor")


def order_created(rng: random.Random) -> dict[str, Any]:
    """One valid OrderCreated event; about 5% carry a card the gateway declines."""
    items: list[dict[str, Any]] = [
        {"sku": f"SKU-{rng.randrange(1000):04d}", "quantity": rng.randint(1, 3),
         "unit_price_cents": rng.randint(100, 10_000)}
        for _ in range(rng.randint(1, 3))
    ]
    token = "tok_declined_" if rng.random() < 0.05 else "tok_visa_"
    return {
        "event_id": str(uuid.uuid4()), "order_id": f"ord-{uuid.uuid4().hex[:12]}",
        "customer_id": f"cust-{rng.randrange(10_000)}", "items": items,
        "total_cents": sum(i["quantity"] * i["unit_price_cents"] for i in items), "currency": "EUR",
        "payment_token": token + uuid.uuid4().hex[:8], "shipping_address": "1 Demo Street",
        "created_at_ms": int(time.time() * 1000),
    }


def malformed(i: int) -> bytes:
    """Inputs every handler must dead-letter: broken JSON, a schema violation, no id."""
    kinds = [b'{"event_id": "broken', orjson.dumps({"event_id": f"bad-{i}", "order_id": 7}),
             orjson.dumps({"order_id": "no-id"}), b"\x00\xff garbage"]
    return kinds[i % len(kinds)]


def produce(settings: Settings, records: list[tuple[bytes | None, bytes]]) -> None:
    producer = Producer(client_config(settings, **{"enable.idempotence": True, "linger.ms": 5}))
    for key, value in records:
        producer.produce("orders", value=value, key=key)
        producer.poll(0)
    if producer.flush(30):
        raise StackError("the demo producer could not deliver every event within 30 s")


def _worker_env(settings: Settings, options: DemoOptions, metrics_port: int) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "REDIS_URL": settings.redis_url.reveal(),
        "PROCESSOR_METRICS_PORT": str(metrics_port),
        "PROCESSOR_SIM_FAILURE_RATE": str(options.failure_rate),
        "PROCESSOR_SIM_LATENCY_MS": "1",
    })
    return env


def _wait_for_metrics(url: str, proc: subprocess.Popen[bytes], timeout_seconds: float) -> None:
    deadline = time.monotonic() + timeout_seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise StackError(f"the demo worker exited with status {proc.returncode}")
        try:
            scrape(url)
            return
        except OSError:
            time.sleep(0.2)
    raise StackError(f"the demo worker did not serve {url} within {timeout_seconds:.0f}s")


def run_demo(settings: Settings, options: DemoOptions) -> int:
    """Run the demo against the broker and Redis in ``settings``; returns the exit status."""
    topology = load_topology(TOPOLOGY)
    handlers = [h.name for h in topology.handlers]
    ensure_topics(settings, topology.topics(), topology.partitions or settings.topic_partitions,
                  settings.topic_replication_factor)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    options.state_dir.mkdir(parents=True, exist_ok=True)
    log_path = options.state_dir / "demo-worker.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "processor", "worker", TOPOLOGY],
            env=_worker_env(settings, options, port), stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        _wait_for_metrics(url, proc, 60)
        before = scrape(url)
        rng = random.Random(7)
        events = [order_created(rng) for _ in range(options.events)]
        records = [(e["order_id"].encode(), orjson.dumps(e)) for e in events]
        records += [records[rng.randrange(len(records))] for _ in range(options.duplicates)]
        records += [(None, malformed(i)) for i in range(options.malformed)]
        rng.shuffle(records)
        print(f"demo: producing {len(records)} events ({options.events} orders, {options.duplicates} "
              f"duplicates, {options.malformed} malformed) to 'orders'; worker log: {log_path}")
        started = time.monotonic()
        produce(settings, records)
        if options.outage_seconds:
            # Take the gateway down while the handler is busy, so that its breaker has calls to count.
            _wait_progress(url, "charge_payment", len(records) // 4, before, started + options.timeout_seconds)
            asyncio.run(_outage(settings, options.outage_seconds))
        final = _wait_accounted(url, proc, handlers, len(records), before, started + options.timeout_seconds)
        elapsed = time.monotonic() - started
        slo_scrape = _after_next_monitor_pass(url)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    ok = _print_summary(final, before, handlers, len(records), elapsed)
    _print_slos(topology, slo_scrape, before)
    print(f"metrics were served at {url} while the worker ran (PROCESSOR_METRICS_PORT sets the port)")
    return 0 if ok else 1


async def _outage(settings: Settings, seconds: float) -> None:
    client = aioredis.Redis.from_url(settings.redis_url.reveal())
    print(f"demo: taking the payment gateway down for {seconds:.0f}s (its breaker should open)")
    await set_outage(client, "payment-gateway", True)
    await asyncio.sleep(seconds)
    await set_outage(client, "payment-gateway", False)
    await client.aclose()


def _wait_progress(url: str, handler: str, count: int, before: Scrape, deadline: float) -> None:
    while _accounted(scrape(url), before, handler) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def _accounted(s: Scrape, before: Scrape, handler: str) -> float:
    return sum(
        s.value("processor_events_total", handler=handler, outcome=o)
        - before.value("processor_events_total", handler=handler, outcome=o)
        for o in ("success", "duplicate", "dead_lettered", "invalid")
    )


def _wait_accounted(
    url: str, proc: subprocess.Popen[bytes], handlers: list[str], total: int, before: Scrape, deadline: float
) -> Scrape:
    while True:
        if proc.poll() is not None:
            raise StackError(f"the demo worker exited with status {proc.returncode} before the end of the run")
        current = scrape(url)
        if all(_accounted(current, before, h) >= total for h in handlers) or time.monotonic() > deadline:
            return current
        time.sleep(0.5)


def _after_next_monitor_pass(url: str, timeout_seconds: float = 15.0) -> Scrape:
    """A scrape taken after the monitor's next pass, so the SLO gauges include the whole run."""
    asked = time.time()
    deadline = time.monotonic() + timeout_seconds
    while True:
        current = scrape(url)
        if current.value("processor_monitor_last_run_timestamp_seconds") > asked or time.monotonic() > deadline:
            return current
        time.sleep(0.5)


def _print_slos(topology: Topology, s: Scrape, before: Scrape) -> None:
    def delta(name: str, **labels: str) -> float:
        return s.value(name, **labels) - before.value(name, **labels)

    print(f"\n{'SLO':<28}{'objective':>10}{'this run':>10}{'budget left':>13}{'burn 5m':>9}")
    for slo in topology.slos:
        label = slo.label(topology.name)
        remaining = s.value("processor_slo_error_budget_remaining_ratio", slo=label)
        if slo.sli == "latency":
            total = delta("processor_processing_seconds_count", topology=topology.name)
            within = delta("processor_processing_seconds_bucket", topology=topology.name,
                           le=float_to_go_string(slo.threshold_seconds))
            sli = within / total if total else 1.0
        elif slo.sli == "delivery":
            good = delta("processor_events_total", topology=topology.name, outcome="success")
            bad = delta("processor_events_total", topology=topology.name, outcome="dead_lettered")
            sli = good / (good + bad) if good + bad else 1.0
        else:
            sli = 1.0 - (1.0 - remaining) * slo.error_budget
        burn = s.value("processor_slo_burn_rate", slo=label, window=slo.burn_windows()[0].short)
        print(f"{label:<28}{slo.objective:>10.2%}{sli:>10.3%}{remaining:>13.1%}{burn:>8.2f}x")
    print("(budget left: over this worker's lifetime; `processor slo rules` gives Prometheus the 30-day view)")


def _print_summary(s: Scrape, before: Scrape, handlers: list[str], total: int, elapsed: float) -> bool:
    def delta(handler: str, outcome: str) -> int:
        return round(s.value("processor_events_total", handler=handler, outcome=outcome)
                     - before.value("processor_events_total", handler=handler, outcome=outcome))

    header = (f"{'handler':<20}{'in':>7}{'processed':>11}{'duplicates':>12}{'retried':>9}{'dead-lettered':>15}"
              f"{'p99 ms':>9}")
    print(header)
    print("-" * len(header))
    ok = True
    for handler in handlers:
        dead = delta(handler, "dead_lettered") + delta(handler, "invalid")
        p99 = s.quantile(0.99, "processor_processing_seconds", handler=handler) * 1000
        p99_text = "-" if math.isnan(p99) else f"{p99:.1f}"
        print(f"{handler:<20}{total:>7}{delta(handler, 'success'):>11}{delta(handler, 'duplicate'):>12}"
              f"{delta(handler, 'retried'):>9}{dead:>15}{p99_text:>9}")
        ok = ok and _accounted(s, before, handler) == total
    state = ["closed", "half-open", "open"][int(s.value("processor_circuit_state", breaker="payment-gateway"))]
    opened = round(s.value("processor_circuit_opened_total", breaker="payment-gateway")
                   - before.value("processor_circuit_opened_total", breaker="payment-gateway"))
    print(f"\nbreaker payment-gateway: opened {opened} time(s) during the run, now {state}")
    if ok:
        print(f"every event accounted for in {elapsed:.1f}s: processed, skipped as duplicate, or dead-lettered")
    else:
        print("NOT every event was accounted for before the timeout: see the worker log", file=sys.stderr)
    return ok
