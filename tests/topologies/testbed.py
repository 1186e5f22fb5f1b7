"""A topology for integration tests, shaped by environment variables so one module serves every test.

- ``TESTBED_NAME``: topology name, and prefix of every topic (source ``<name>.in``)
- ``TESTBED_HANDLERS``: comma-separated handler names (fan-out), default ``a``; outputs ``<name>.<h>.out``
- ``TESTBED_RETRY``: comma-separated delays, default ``1s,2s``
- ``TESTBED_FAIL_ATTEMPTS``: every event fails its first N attempts (RuntimeError), default 0
- ``TESTBED_LATENCY_MS``: each call sleeps this long first, default 0, +/- ``TESTBED_JITTER_MS`` at random
- ``TESTBED_BLOCK_MS``: each call blocks the event loop this long first (``time.sleep``, as a synchronous
  client called from a handler would), default 0
- ``TESTBED_BREAKER``: ``1`` puts the handlers behind breaker ``dep`` (opens fast, half-opens after 2 s)
- ``TESTBED_MAX_BYTES``: size limit of an input event, default 2048
- ``TESTBED_PARTITIONS``: partitions of the topics the worker creates

While the Redis key ``testbed:<name>:broken`` exists every call (of the handlers in ``TESTBED_BREAKABLE``,
default all) fails with a RetryableError (a dependency that is down). ``TESTBED_POLICY=1`` gives handler ``a``
a delivery SLO and a BudgetPolicy that stretches its back-off 5x, lowers its concurrency and defers ``b``
(declared low priority, if there is one) while the SLO burns above 2x over a minute. Every call goes through a
SimulatedService named ``<name>-<handler>``, which records calls, completions and side effects per
idempotency key in Redis for the test to check.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from processor import (
    SLO,
    BreakerConfig,
    BudgetPolicy,
    Context,
    Defer,
    LowerConcurrency,
    Output,
    Retry,
    RetryableError,
    Settings,
    StretchBackoff,
    Topology,
)
from processor.dev.simulate import SimulatedService

NAME = os.environ["TESTBED_NAME"]
HANDLERS = [h for h in os.environ.get("TESTBED_HANDLERS", "a").split(",") if h]
FAIL_ATTEMPTS = int(os.environ.get("TESTBED_FAIL_ATTEMPTS", "0"))
LATENCY = float(os.environ.get("TESTBED_LATENCY_MS", "0")) / 1000
JITTER = float(os.environ.get("TESTBED_JITTER_MS", "0")) / 1000
BLOCK = float(os.environ.get("TESTBED_BLOCK_MS", "0")) / 1000
BREAKER = os.environ.get("TESTBED_BREAKER") == "1"
BREAKABLE = os.environ.get("TESTBED_BREAKABLE", ",".join(HANDLERS)).split(",")
POLICY = os.environ.get("TESTBED_POLICY") == "1"

topology = Topology(
    NAME,
    schemas_dir=Path(__file__).parent / "schemas",
    max_event_bytes=int(os.environ.get("TESTBED_MAX_BYTES", "2048")),
    partitions=int(os.environ["TESTBED_PARTITIONS"]) if os.environ.get("TESTBED_PARTITIONS") else None,
    claim_lease_seconds=float(os.environ.get("TESTBED_LEASE_SECONDS", "30")),
    # A lag SLO with this threshold (e.g. 120s): the monitor then forecasts the crossing of it.
    slos=(
        *((SLO("lag", sli="lag", objective=0.99, threshold=os.environ["TESTBED_LAG_SLO"]),)
          if os.environ.get("TESTBED_LAG_SLO") else ()),
        *((SLO("delivery", sli="delivery", objective=0.99, handler="a", min_events=20),) if POLICY else ()),
    ),
    budget_policies=(BudgetPolicy(slo="delivery", when_burn_above=2, window="1m", then=(
        StretchBackoff(5), LowerConcurrency("a", 1), *((Defer("b"),) if "b" in HANDLERS else ()))),) if POLICY else (),
    breakers={"dep": BreakerConfig(failure_rate=0.5, window_calls=10, min_calls=5, open_seconds=2,
                                   half_open_probes=1)} if BREAKER else {},
)


@topology.dependency("redis")
def _redis(settings: Settings) -> aioredis.Redis | aioredis.RedisCluster:
    # The ledger of calls and side effects may live apart from dedup's Redis: a test that kills a cluster
    # master must not lose the very records it counts with.
    if os.environ.get("TESTBED_LEDGER_URL"):
        return aioredis.Redis.from_url(os.environ["TESTBED_LEDGER_URL"])
    if settings.redis_mode == "cluster":
        return aioredis.RedisCluster.from_url(settings.redis_url.reveal())
    return aioredis.Redis.from_url(settings.redis_url.reveal())


def _make(handler: str) -> None:
    service: dict[str, SimulatedService] = {}

    async def handle(event: dict[str, Any], ctx: Context) -> list[Output]:
        client = ctx.dependency("redis")
        if handler not in service:
            service[handler] = SimulatedService(f"{NAME}-{handler}", client)
        due = ctx.headers.get("x-processor-due-at-ms", b"0").decode()
        await client.rpush(f"testbed:{NAME}:{handler}:attempts",
                           f"{ctx.event_id}|{ctx.attempt}|{due}|{int(time.time() * 1000)}")
        if BLOCK:
            time.sleep(BLOCK)  # noqa: ASYNC251 (the point: a handler that blocks the loop)
        if LATENCY or JITTER:
            await asyncio.sleep(max(0.0, LATENCY + random.uniform(-JITTER, JITTER)))
        if ctx.attempt <= FAIL_ATTEMPTS:
            raise RuntimeError(f"planned failure of attempt {ctx.attempt}")
        if handler in BREAKABLE and await client.exists(f"testbed:{NAME}:broken"):
            raise RetryableError("dependency is down")
        await service[handler].call(ctx.idempotency_key)
        return [Output(f"{NAME}.{handler}.out", {"event_id": ctx.event_id, "n": event["n"]})]

    handle.__name__ = handler
    topology.handler(
        source=f"{NAME}.in", schema="testbed_event",
        retry=Retry(delays=tuple(os.environ.get("TESTBED_RETRY", "1s,2s").split(","))),
        outputs=(f"{NAME}.{handler}.out",), breaker="dep" if BREAKER else None, name=handler,
        timeout_seconds=min(10.0, topology.claim_lease_seconds / 2),
        priority="low" if POLICY and handler == "b" else "normal",
        concurrency=4 if POLICY else 1,  # for LowerConcurrency to lower
    )(handle)


for _handler in HANDLERS:
    _make(_handler)
