"""The reference topology: an e-commerce flow.

``OrderCreated`` events on ``orders`` fan out to three handlers, each its own consumer group with its own
retry tiers and dead-letter topic:

- ``reserve_inventory`` -> ``inventory.reserved``
- ``charge_payment``    -> ``payments.captured``, or ``payments.declined`` (a business outcome, not an error)
- ``notify_shipping``   -> ``shipping.requested``

The downstream services are simulations (``processor.dev.simulate``) whose failure rate and latency are
injected with ``PROCESSOR_SIM_<SERVICE>_FAILURE_RATE`` / ``_LATENCY_MS``; the payment gateway sits behind
a circuit breaker.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from processor import SLO, BreakerConfig, Context, Output, Retry, Settings, Topology
from processor.dev.simulate import SimulatedService

topology = Topology(
    "orders",
    schemas_dir=Path(__file__).resolve().parent.parent / "schemas",
    redact=("payment_token", "shipping_address"),
    slos=(
        SLO("processing-latency", sli="latency", objective=0.999, threshold="500ms", window="30d",
            description="99.9% of events are processed within 500 ms"),
        SLO("delivery", sli="delivery", objective=0.999, window="30d",
            description="99.9% of events are delivered, not dead-lettered"),
        SLO("lag", sli="lag", objective=0.99, threshold="30s", window="30d",
            description="consumer lag stays under 30 s 99% of the time"),
    ),
    breakers={"payment-gateway": BreakerConfig(failure_rate=0.5, window_calls=20, min_calls=10, open_seconds=3)},
)

DECLINED_TOKEN_PREFIX = "tok_declined"


def _now_ms() -> int:
    return int(time.time() * 1000)


def _service(name: str) -> Any:
    def build(settings: Settings) -> SimulatedService:
        return SimulatedService(name, aioredis.Redis.from_url(settings.redis_url.reveal()))

    topology.dependency(name)(build)
    return build


_service("inventory")
_service("payment-gateway")
_service("shipping")


@topology.handler(
    source="orders", schema="order_created", retry=Retry(delays=("1s", "5s", "30s")), concurrency=16,
    outputs=("inventory.reserved",),
)
async def reserve_inventory(event: dict[str, Any], ctx: Context) -> list[Output]:
    await ctx.dependency("inventory").call(ctx.idempotency_key)
    reservations = [{"sku": i["sku"], "quantity": i["quantity"]} for i in event["items"]]
    return [Output("inventory.reserved", {
        "event_id": ctx.event_id, "order_id": event["order_id"], "reservations": reservations,
        "reserved_at_ms": _now_ms(),
    })]


@topology.handler(
    source="orders", schema="order_created", retry=Retry(delays=("1s", "5s", "30s")), concurrency=16,
    outputs=("payments.captured", "payments.declined"), breaker="payment-gateway",
)
async def charge_payment(event: dict[str, Any], ctx: Context) -> list[Output]:
    if event["payment_token"].startswith(DECLINED_TOKEN_PREFIX):
        # A declined card is an answer, not a failure: it is an output, never a retry.
        return [Output("payments.declined", {
            "event_id": ctx.event_id, "order_id": event["order_id"], "reason": "card_declined",
            "declined_at_ms": _now_ms(),
        })]
    await ctx.dependency("payment-gateway").call(ctx.idempotency_key)
    return [Output("payments.captured", {
        "event_id": ctx.event_id, "order_id": event["order_id"], "amount_cents": event["total_cents"],
        "currency": event["currency"], "captured_at_ms": _now_ms(),
    })]


@topology.handler(
    source="orders", schema="order_created", retry=Retry(delays=("1s", "5s", "30s")), concurrency=16,
    outputs=("shipping.requested",),
)
async def notify_shipping(event: dict[str, Any], ctx: Context) -> list[Output]:
    await ctx.dependency("shipping").call(ctx.idempotency_key)
    return [Output("shipping.requested", {
        "event_id": ctx.event_id, "order_id": event["order_id"],
        "shipping_address": event.get("shipping_address", ""), "items": event["items"],
        "requested_at_ms": _now_ms(),
    })]
