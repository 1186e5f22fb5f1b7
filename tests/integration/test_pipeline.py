"""Pipeline.run against the real Redis of the test backend; the broker is replaced at the Sink seam by a
recorder that accepts records or refuses them the way the broker would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis

from processor.dev.servers import free_port, start_redis
from processor.errors import FatalError
from processor.observability.metrics import Metrics
from processor.runtime import headers as h
from processor.runtime import redis_client
from processor.runtime.breaker import Breaker, BreakerConfig, BreakerState
from processor.runtime.decode import Decoder
from processor.runtime.dedup import Claim, Dedup
from processor.runtime.handling import Handling
from processor.runtime.pipeline import Pipeline
from processor.runtime.records import DeliveryError, InRecord, OutRecord, pack_outputs
from processor.runtime.routing import FATAL_ERROR, OUTPUT_REJECTED, RETRIES_EXHAUSTED
from processor.runtime.scope import HandlerScope
from processor.topology.retry import Retry
from processor.topology.topology import Context, Output, Topology
from tests.conftest import Backend

NOW = 1_700_000_000.0
NOW_MS = int(NOW * 1000)


class FakeSink:
    """The transport seam: records what it accepts; refuses chosen topics for good, or a few times."""

    def __init__(self, refuse: dict[str, str] | None = None, transient: dict[str, int] | None = None) -> None:
        self.refuse = refuse or {}
        self.transient = dict(transient or {})
        self.sent: list[OutRecord] = []
        self.calls = 0

    async def send(self, records: Sequence[OutRecord]) -> list[DeliveryError | None]:
        self.calls += 1
        errors: list[DeliveryError | None] = []
        for record in records:
            if record.topic in self.refuse:
                errors.append(DeliveryError(self.refuse[record.topic], retryable=False))
            elif self.transient.get(record.topic, 0) > 0:
                self.transient[record.topic] -= 1
                errors.append(DeliveryError("leader not available", retryable=True))
            else:
                self.sent.append(record)
                errors.append(None)
        return errors

    def to(self, topic: str) -> list[OutRecord]:
        return [r for r in self.sent if r.topic == topic]


@dataclass
class Harness:
    pipeline: Pipeline
    sink: FakeSink
    dedup: Dedup
    redis: aioredis.Redis
    metrics: Metrics
    calls: list[str]
    group: str
    dependency_events: list[tuple[str, bool]] = field(default_factory=list)

    def count(self, outcome: str) -> float:
        labels = {"topology": self.pipeline.scope.topology, "handler": "handle", "outcome": outcome}
        return self.metrics.registry.get_sample_value("processor_events_total", labels) or 0.0

    def dead_letters(self, reason: str) -> float:
        labels = {"topology": self.pipeline.scope.topology, "handler": "handle", "reason": reason}
        return self.metrics.registry.get_sample_value("processor_dead_letters_total", labels) or 0.0

    async def state(self, event_id: str) -> bytes | None:
        return await self.dedup.state(event_id)


async def handle(event: dict[str, Any], ctx: Context) -> list[Output]:
    action = event.get("action", "ok")
    calls: list[str] = ctx.dependency("calls")
    calls.append(ctx.event_id)
    if action == "fail":
        raise ValueError(f"boom {ctx.event_id}")
    if action == "fatal":
        raise FatalError("negative amount")
    if action == "slow":
        await asyncio.sleep(event["sleep"])
    if action == "track":
        await ctx.dependency("track")(ctx.partition)
    if action == "pause_redis_writes":
        await ctx.dependency("pause_redis_writes")()
    if action == "undeclared":
        return [Output("elsewhere", {"id": ctx.event_id})]
    return [Output("out", {"id": ctx.event_id, "attempt": ctx.attempt})]


@asynccontextmanager
async def harness(
    backend: Backend, unique: str, sink: FakeSink | None = None, timeout_seconds: float = 10.0,
    lease_seconds: float = 30.0, dependencies: dict[str, Any] | None = None,
) -> AsyncIterator[Harness]:
    topology = Topology(unique)
    topology.handler(source="orders", outputs=("out",), retry=Retry(delays=("1s", "10s")),
                     timeout_seconds=timeout_seconds)(handle)
    spec = topology.get("handle")
    group = topology.group("handle")
    client = redis_client.connect(backend.redis_url)  # the worker's client (commands packed by hiredis)
    dedup = Dedup(client, group=group, owner="worker-1", lease_seconds=lease_seconds, ttl_seconds=3600)
    metrics = Metrics()
    calls: list[str] = []
    sink = sink or FakeSink()
    events: list[tuple[str, bool]] = []
    scope = HandlerScope(unique, spec, group, metrics, clock=lambda: NOW)
    pipeline = Pipeline(
        scope, decoder=Decoder(None, "event_id", 1_000_000), dedup=dedup, sink=sink,
        handling=Handling(scope, dependencies={"calls": calls, **(dependencies or {})}),
        on_dependency=lambda name, up: events.append((name, up)),
    )
    try:
        yield Harness(pipeline, sink, dedup, client, metrics, calls, group, events)
    finally:
        await client.aclose()


def record(event_id: str | None, offset: int = 0, action: str = "ok", **extra: Any) -> InRecord:
    body: dict[str, Any] = {"action": action, **extra}
    if event_id is not None:
        body["event_id"] = event_id
    return InRecord("orders", 2, offset, NOW_MS - 5000, b"key-1", orjson.dumps(body), {"traceparent": b"00-abc"})


def as_input(out: OutRecord, offset: int) -> InRecord:
    """A routed record as the consumer of its topic would see it."""
    return InRecord(out.topic, 0, offset, NOW_MS, out.key, out.value, dict(out.headers))


async def test_success_produces_outputs_marks_done_and_skips_a_second_copy(backend: Backend, unique: str) -> None:
    async with harness(backend, unique) as hx:
        await hx.pipeline.run([record("e1", offset=4)])
        (out,) = hx.sink.sent
        assert out.topic == "out"
        assert orjson.loads(out.value or b"") == {"id": "e1", "attempt": 1}
        assert out.key == b"key-1"
        hdrs = dict(out.headers)
        assert hdrs[h.EVENT_ID] == b"e1"
        assert hdrs["traceparent"] == b"00-abc"
        assert await hx.state("e1") == b"d"
        assert hx.count("success") == 1

        await hx.pipeline.run([record("e1", offset=4)])
        assert hx.calls == ["e1"]
        assert len(hx.sink.sent) == 1
        assert hx.count("duplicate") == 1
        assert hx.count("success") == 1


async def test_in_batch_duplicates_run_once(backend: Backend, unique: str) -> None:
    async with harness(backend, unique) as hx:
        await hx.pipeline.run([record("a", 0), record("b", 1), record("a", 2), record("a", 3)])
        assert hx.calls == ["a", "b"]
        assert [orjson.loads(r.value or b"")["id"] for r in hx.sink.to("out")] == ["a", "b"]
        assert hx.count("duplicate") == 2
        assert hx.count("success") == 2


async def test_partitions_in_one_batch_run_side_by_side_each_one_event_at_a_time(
    backend: Backend, unique: str
) -> None:
    running: dict[int, int] = {}
    most = {"all": 0, 2: 0, 3: 0}

    async def track(partition: int) -> None:
        running[partition] = running.get(partition, 0) + 1
        most[partition] = max(most[partition], running[partition])
        most["all"] = max(most["all"], sum(running.values()))
        await asyncio.sleep(0.05)
        running[partition] -= 1

    async with harness(backend, unique, dependencies={"track": track}) as hx:
        records = [replace(record(f"p{p}-{o}", o, "track"), partition=p) for p in (2, 3) for o in range(3)]
        await hx.pipeline.run(records)
        # concurrency 1 is per partition, as when each partition's records were a batch of their own
        assert most == {"all": 2, 2: 1, 3: 1}
        assert hx.calls == ["p2-0", "p3-0", "p2-1", "p3-1", "p2-2", "p3-2"]
        assert hx.count("success") == 6


async def test_invalid_record_goes_to_the_dlq_without_running(backend: Backend, unique: str) -> None:
    async with harness(backend, unique) as hx:
        await hx.pipeline.run([record(None, 0)])
        assert hx.calls == []
        (dlq,) = hx.sink.sent
        assert dlq.topic == "orders.handle.dlq"
        assert dict(dlq.headers)[h.REASON] == b"missing_event_id"
        assert hx.count("invalid") == 1


async def test_retryable_failure_goes_to_the_first_tier_with_headers(backend: Backend, unique: str) -> None:
    async with harness(backend, unique) as hx:
        source = record("e1", offset=9, action="fail")
        await hx.pipeline.run([source])
        (retry,) = hx.sink.sent
        assert retry.topic == "orders.handle.retry.1s"
        assert retry.value == source.value
        assert retry.key == source.key
        hdrs = dict(retry.headers)
        assert hdrs[h.ATTEMPTS] == b"1"
        assert int(hdrs[h.DUE_AT_MS]) == NOW_MS + 1000
        assert int(hdrs[h.FAILED_AT_MS]) == NOW_MS
        assert hdrs[h.REASON] == b"retry"
        assert hdrs[h.EVENT_ID] == b"e1"
        assert hdrs[h.ORIG_TOPIC] == b"orders"
        assert hdrs[h.ORIG_PARTITION] == b"2"
        assert hdrs[h.ORIG_OFFSET] == b"9"
        assert int(hdrs[h.ORIG_TIMESTAMP_MS]) == NOW_MS - 5000
        assert hdrs[h.EXC_CLASS] == b"builtins.ValueError"
        assert hdrs[h.EXC_MESSAGE] == b"boom e1"
        stack = hdrs[h.EXC_STACK].decode()
        assert "ValueError: boom e1" in stack
        assert "in handle" in stack
        assert hdrs["traceparent"] == b"00-abc"
        assert hdrs[h.HANDLER] == b"handle"
        assert hdrs[h.GROUP] == hx.group.encode()
        assert await hx.state("e1") is None  # the claim was released for the retry copy
        assert hx.count("retried") == 1
        assert hx.count("success") == 0

        # the retry copy claims the event again and runs as attempt 2
        await hx.pipeline.run([replace(as_input(retry, 0), value=orjson.dumps({"event_id": "e1"}))])
        out = hx.sink.to("out")
        assert [orjson.loads(r.value or b"") for r in out] == [{"id": "e1", "attempt": 2}]
        assert await hx.state("e1") == b"d"


async def test_a_call_past_its_timeout_is_retried_and_the_batch_goes_on(backend: Backend, unique: str) -> None:
    async with harness(backend, unique, timeout_seconds=0.3) as hx:
        # e1 and e3 take a little less than the timeout each: together more than it, and still on time.
        await hx.pipeline.run([
            record("e1", 0, "slow", sleep=0.2), record("e2", 1, "slow", sleep=30), record("e3", 2, "slow", sleep=0.2),
        ])
        (retry,) = hx.sink.to("orders.handle.retry.1s")
        assert dict(retry.headers)[h.EXC_CLASS] == b"builtins.TimeoutError"
        assert dict(retry.headers)[h.EVENT_ID] == b"e2"
        assert sorted(orjson.loads(r.value or b"")["id"] for r in hx.sink.to("out")) == ["e1", "e3"]
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_last_tier_failure_goes_to_the_dlq_as_retries_exhausted(backend: Backend, unique: str) -> None:
    async with harness(backend, unique) as hx:
        await hx.pipeline.run([record("e1", offset=3, action="fail")])
        (tier1,) = hx.sink.sent
        await hx.pipeline.run([as_input(tier1, 0)])
        tier2 = hx.sink.sent[-1]
        assert tier2.topic == "orders.handle.retry.10s"
        assert dict(tier2.headers)[h.ATTEMPTS] == b"2"
        assert int(dict(tier2.headers)[h.DUE_AT_MS]) == NOW_MS + 10_000
        await hx.pipeline.run([as_input(tier2, 0)])
        dlq = hx.sink.sent[-1]
        assert dlq.topic == "orders.handle.dlq"
        hdrs = dict(dlq.headers)
        assert hdrs[h.REASON] == RETRIES_EXHAUSTED.encode()
        assert hdrs[h.ATTEMPTS] == b"3"
        assert h.DUE_AT_MS not in hdrs
        assert hdrs[h.ORIG_TOPIC] == b"orders"  # the origin survives every tier
        assert hdrs[h.ORIG_OFFSET] == b"3"
        assert hx.calls == ["e1", "e1", "e1"]
        assert hx.count("retried") == 2
        assert hx.count("dead_lettered") == 1
        assert hx.dead_letters(RETRIES_EXHAUSTED) == 1


async def test_fatal_error_goes_straight_to_the_dlq(backend: Backend, unique: str) -> None:
    async with harness(backend, unique) as hx:
        await hx.pipeline.run([record("e1", action="fatal")])
        (dlq,) = hx.sink.sent
        assert dlq.topic == "orders.handle.dlq"
        hdrs = dict(dlq.headers)
        assert hdrs[h.REASON] == FATAL_ERROR.encode()
        assert hdrs[h.ATTEMPTS] == b"1"
        assert hdrs[h.EXC_CLASS] == b"processor.errors.FatalError"
        assert hdrs[h.EXC_MESSAGE] == b"negative amount"
        assert hx.count("retried") == 0
        assert hx.dead_letters(FATAL_ERROR) == 1


async def test_undeclared_output_topic_is_fatal(backend: Backend, unique: str) -> None:
    async with harness(backend, unique) as hx:
        await hx.pipeline.run([record("e1", action="undeclared")])
        assert hx.sink.to("elsewhere") == []
        (dlq,) = hx.sink.sent
        assert dlq.topic == "orders.handle.dlq"
        hdrs = dict(dlq.headers)
        assert hdrs[h.REASON] == FATAL_ERROR.encode()
        assert b"'elsewhere' is not declared" in hdrs[h.EXC_MESSAGE]
        assert hx.count("success") == 0


async def test_output_refused_for_good_dead_letters_the_event(backend: Backend, unique: str) -> None:
    sink = FakeSink(refuse={"out": "message too large"})
    async with harness(backend, unique, sink) as hx:
        await hx.pipeline.run([record("e1", offset=5), record("e2", offset=6, action="fatal")])
        assert hx.sink.to("out") == []
        dlqs = hx.sink.to("orders.handle.dlq")
        reasons = sorted(dict(r.headers)[h.REASON] for r in dlqs)
        assert reasons == [FATAL_ERROR.encode(), OUTPUT_REJECTED.encode()]
        rejected = next(r for r in dlqs if dict(r.headers)[h.REASON] == OUTPUT_REJECTED.encode())
        hdrs = dict(rejected.headers)
        assert hdrs[h.EVENT_ID] == b"e1"
        assert hdrs[h.ORIG_OFFSET] == b"5"
        assert b"message too large" in hdrs[h.EXC_MESSAGE]
        assert await hx.state("e1") is None  # not done: a replay from the DLQ runs it again
        assert hx.count("success") == 0
        assert hx.dead_letters(OUTPUT_REJECTED) == 1


async def test_transient_delivery_error_is_sent_again_until_accepted(backend: Backend, unique: str) -> None:
    sink = FakeSink(transient={"out": 2})
    async with harness(backend, unique, sink) as hx:
        await asyncio.wait_for(hx.pipeline.run([record("e1")]), timeout=30)
        assert len(hx.sink.to("out")) == 1
        assert hx.sink.calls == 3
        assert hx.calls == ["e1"]  # sent again, not handled again
        assert hx.dependency_events[0] == ("kafka", False)
        assert hx.dependency_events[-1] == ("kafka", True)
        assert hx.dependency_events.count(("kafka", True)) == 1
        assert await hx.state("e1") == b"d"
        assert hx.count("success") == 1
        assert hx.count("dead_lettered") == 0


async def test_outputs_are_produced_while_their_results_are_stored(
    backend: Backend, unique: str, tmp_path: Path
) -> None:
    # A redis-server of its own: the handler pauses its writes, which would stall every other test's.
    server = start_redis(free_port(), tmp_path / "own-redis.log", tmp_path / "own-redis")
    own = replace(backend, redis_url=f"redis://{server.address}/0")
    observer = aioredis.Redis.from_url(own.redis_url)
    states_at_send: list[bytes | None] = []

    async def pause_writes() -> None:
        # Reads go on; the store script (a write) waits out the pause in Redis.
        await observer.execute_command("CLIENT", "PAUSE", 1000, "WRITE")

    class Observing(FakeSink):
        async def send(self, records: Sequence[OutRecord]) -> list[DeliveryError | None]:
            states_at_send.append(await observer.get(hx.dedup.key("e1")))
            return await super().send(records)

    try:
        async with harness(own, unique, Observing(), dependencies={"pause_redis_writes": pause_writes}) as hx:
            await asyncio.wait_for(hx.pipeline.run([record("e1", action="pause_redis_writes")]), timeout=10)
            # Produced while the results were not stored yet (the event still claimed), not after the store.
            assert [(s or b"")[:2] for s in states_at_send] == [b"c|"]
            assert len(hx.sink.to("out")) == 1
            assert await hx.state("e1") == b"d"  # marked done once both had finished
            assert hx.count("success") == 1
    finally:
        await observer.aclose()
        server.stop()


async def test_stored_result_is_produced_without_running_the_handler(backend: Backend, unique: str) -> None:
    async with harness(backend, unique) as hx:
        # A worker that claimed e1, ran the handler and stored its outputs, then died before producing.
        crashed = Dedup(hx.redis, group=hx.group, owner="worker-0", lease_seconds=0.05, ttl_seconds=3600)
        token = crashed.new_token()
        (claim,) = await crashed.claim(["e1"], token)
        assert claim.status is Claim.CLAIMED
        stored = OutRecord("out", b'{"id": "e1", "from": "crashed"}', b"key-1", [(h.EVENT_ID, b"e1")])
        await crashed.store_results([("e1", pack_outputs([stored]))], token)
        assert (await hx.state("e1") or b"").startswith(b"r|")

        async def lease_expired() -> None:
            while True:
                value = await hx.state("e1") or b""
                deadline = int(value.split(b"|")[2])
                seconds, micros = await hx.redis.time()
                if seconds * 1000 + micros // 1000 > deadline:
                    return
                await asyncio.sleep(0.02)

        await asyncio.wait_for(lease_expired(), timeout=5)
        await hx.pipeline.run([record("e1")])
        assert hx.calls == []
        (out,) = hx.sink.sent
        assert out == stored
        assert await hx.state("e1") == b"d"
        assert hx.count("success") == 1


async def test_a_batch_running_past_the_lease_keeps_its_claim(backend: Backend, unique: str) -> None:
    async with harness(backend, unique, lease_seconds=0.3) as hx:
        other = Dedup(hx.redis, group=hx.group, owner="worker-2", lease_seconds=0.3, ttl_seconds=3600)
        run = asyncio.create_task(hx.pipeline.run([record("e1", action="slow", sleep=1.5)]))
        for _ in range(500):  # until the pipeline holds the claim
            if (await hx.state("e1") or b"").startswith(b"c|"):
                break
            await asyncio.sleep(0.01)
        seen = []
        while not run.done():  # five leases: without renewal the claim would expire in the first
            (result,) = await other.claim(["e1"], other.new_token())
            seen.append(result.status)
            await asyncio.sleep(0.05)
        await run
        assert len(seen) > 10
        assert set(seen[:-1]) == {Claim.BUSY}  # the last may see the done-mark
        assert hx.calls == ["e1"]
        assert await hx.state("e1") == b"d"


async def test_claims_stop_at_the_first_busy_id_in_sorted_order(backend: Backend, unique: str) -> None:
    async with harness(backend, unique) as hx:
        holder = Dedup(hx.redis, group=hx.group, owner="worker-2", lease_seconds=30, ttl_seconds=3600)
        await holder.claim(["e2"], holder.new_token())
        results = await hx.dedup.claim(["e3", "e2", "e1"], hx.dedup.new_token())
        assert [r.status for r in results] == [Claim.BUSY, Claim.BUSY, Claim.CLAIMED]
        assert await hx.state("e3") is None  # after the busy e2: not claimed while this batch waits


async def test_batches_waiting_for_each_others_events_do_not_deadlock(backend: Backend, unique: str) -> None:
    async with harness(backend, unique) as hx:
        # e2 is held elsewhere (a batch from before a rebalance); the first batch claims e1 and waits for e2.
        holder = Dedup(hx.redis, group=hx.group, owner="worker-2", lease_seconds=30, ttl_seconds=3600)
        held = holder.new_token()
        await holder.claim(["e2"], held)
        first = asyncio.create_task(hx.pipeline.run([record("e1", offset=0), record("e2", offset=1)]))
        for _ in range(500):  # until the first batch holds e1
            if (await hx.state("e1") or b"").startswith(b"c|"):
                break
            await asyncio.sleep(0.01)
        # e2 is freed, and a second batch with both events (the same partition after a rebalance) starts
        # before the first asks again: had it claimed e2 while waiting for e1, each would wait for the other.
        await holder.release(["e2"], held)
        second = asyncio.create_task(hx.pipeline.run([record("e2", offset=5), record("e1", offset=6)]))
        await asyncio.wait_for(asyncio.gather(first, second), timeout=20)
        assert sorted(hx.calls) == ["e1", "e2"]
        assert await hx.state("e1") == b"d"
        assert await hx.state("e2") == b"d"


async def test_renewal_extends_the_delivery_deadline_of_stored_results(backend: Backend, unique: str) -> None:
    async with harness(backend, unique) as hx:
        dedup = Dedup(hx.redis, group=hx.group, owner="worker-2", lease_seconds=0.3, ttl_seconds=3600)
        token = dedup.new_token()
        await dedup.claim(["e1", "e2"], token)
        await dedup.store_results([("e1", b"outputs")], token)
        async with dedup.holding(["e1", "e2", "e3"], token):
            await asyncio.sleep(1.0)
            seconds, micros = await hx.redis.time()
            value = await hx.state("e1") or b""
            assert int(value.split(b"|")[2]) > seconds * 1000 + micros // 1000  # the deadline moved on
            assert value.endswith(b"|outputs")
            assert await hx.redis.pttl(dedup.key("e2")) > 0  # the claim is still there
            assert await hx.state("e3") is None  # not ours: untouched
        await asyncio.sleep(0.5)
        assert await hx.state("e2") is None  # renewal stopped with the block: the lease ran out


class Partitions:
    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []

    def pause_all(self, reason: str) -> None:
        self.log.append(("pause", reason))

    def resume_all(self, reason: str) -> None:
        self.log.append(("resume", reason))


async def test_a_fatal_error_in_a_half_open_probe_frees_its_probe_slot(backend: Backend, unique: str) -> None:
    config = BreakerConfig(min_calls=1, window_calls=1, open_seconds=5.0, half_open_probes=1)
    clock = [100.0]
    breaker = Breaker("gw", config, clock=lambda: clock[0])
    breaker.record(False)
    clock[0] += 5.0
    assert breaker.state is BreakerState.HALF_OPEN
    topology = Topology(unique, breakers={"gw": config})
    topology.handler(source="orders", outputs=("out",), breaker="gw")(handle)
    client = aioredis.Redis.from_url(backend.redis_url)
    calls: list[str] = []
    sink = FakeSink()
    scope = HandlerScope(unique, topology.get("handle"), topology.group("handle"), Metrics(), clock=lambda: NOW)
    handling = Handling(scope, breaker=breaker, partitions=Partitions(), dependencies={"calls": calls})
    pipeline = Pipeline(
        scope, decoder=Decoder(None, "event_id", 1_000_000),
        dedup=Dedup(client, group=topology.group("handle"), owner="w", lease_seconds=30, ttl_seconds=3600),
        sink=sink, handling=handling,
    )
    try:
        # The first probe hits a bad event (FatalError: nothing to do with the dependency); the second event
        # must still get a probe slot instead of waiting for ever in a half-open breaker.
        await asyncio.wait_for(pipeline.run([record("bad", 0, action="fatal"), record("good", 1)]), timeout=5)
    finally:
        await client.aclose()
    assert calls == ["bad", "good"]
    assert [dict(r.headers)[h.EVENT_ID] for r in sink.to("out")] == [b"good"]
    assert [dict(r.headers)[h.REASON] for r in sink.to("orders.handle.dlq")] == [FATAL_ERROR.encode()]
