"""The reference topology's handlers produce events that match the schemas in schemas/."""

from __future__ import annotations

import asyncio
import random
from typing import Any

from processor.dev.demo import order_created
from processor.runtime.decode import compile_schema
from processor.topology.topology import Context
from topologies.orders import topology


class RecordingService:
    """Stands in for a simulated downstream: pure handler logic, no Redis."""

    def __init__(self) -> None:
        self.keys: list[str] = []

    async def call(self, idempotency_key: str) -> bool:
        self.keys.append(idempotency_key)
        return True


def context(handler: str, services: dict[str, Any]) -> Context:
    return Context(topology="orders", handler=handler, event_id="e-1", topic="orders", partition=0, offset=0,
                   attempt=1, key=None, headers={}, dependencies=services)


def test_every_handler_output_matches_its_schema() -> None:
    validate_input = compile_schema(topology.schemas_dir, "order_created")
    schema_of = {"inventory.reserved": "inventory_reserved", "payments.captured": "payment_captured",
                 "payments.declined": "payment_declined", "shipping.requested": "shipping_requested"}
    services = {name: RecordingService() for name in ("inventory", "payment-gateway", "shipping")}
    rng = random.Random(1)
    seen_topics = set()
    for _ in range(200):
        event = order_created(rng)
        validate_input(event)
        for spec in topology.handlers:
            outputs = asyncio.run(spec.func(dict(event), context(spec.name, services)))
            for output in outputs or ():
                assert output.topic in spec.outputs
                compile_schema(topology.schemas_dir, schema_of[output.topic])(dict(output.value))
                assert output.value["event_id"] == "e-1"
                seen_topics.add(output.topic)
    assert seen_topics == set(schema_of)
    assert services["payment-gateway"].keys[0] == "orders:charge_payment:e-1"


def test_topics_follow_the_naming_rules() -> None:
    topics = topology.topics()
    assert "orders.charge_payment.retry.5s" in topics
    assert "orders.charge_payment.dlq" in topics
    assert len(topics) == len(set(topics))
    assert [h.name for h in topology.handlers] == ["reserve_inventory", "charge_payment", "notify_shipping"]
