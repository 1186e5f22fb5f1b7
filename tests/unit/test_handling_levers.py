"""A budget policy's LowerConcurrency lever, as Handling applies it: at most ``to`` calls of the handler at
once per partition while it is set, the declared concurrency again once it is cleared."""

from __future__ import annotations

import asyncio
from typing import Any

from processor.observability.metrics import Metrics
from processor.runtime.handling import Handling
from processor.runtime.records import InRecord
from processor.runtime.scope import HandlerScope
from processor.runtime.work import Work
from processor.topology.topology import Context, Output, Topology


def _bed() -> tuple[Handling, HandlerScope, list[int]]:
    running, peaks = [0], []

    async def handle(event: dict[str, Any], ctx: Context) -> list[Output]:
        running[0] += 1
        peaks.append(running[0])
        await asyncio.sleep(0.01)
        running[0] -= 1
        return []

    topology = Topology("shop")
    topology.handler(source="orders", name="pay", concurrency=4)(handle)
    scope = HandlerScope("shop", topology.get("pay"), "shop.pay", Metrics())
    return Handling(scope), scope, peaks


def _works(n: int) -> list[Work]:
    return [Work(InRecord("orders", 0, offset, 0, None, b"{}", {}), {}, f"e{offset}") for offset in range(n)]


def test_lower_concurrency_caps_the_calls_at_once_until_cleared() -> None:
    handling, scope, peaks = _bed()
    asyncio.run(handling.run_all(_works(12)))
    assert max(peaks) == 4  # as declared
    peaks.clear()
    scope.levers.concurrency = 1  # the policy acts
    asyncio.run(handling.run_all(_works(12)))
    assert max(peaks) == 1
    peaks.clear()
    scope.levers.concurrency = None  # undone
    asyncio.run(handling.run_all(_works(12)))
    assert max(peaks) == 4
