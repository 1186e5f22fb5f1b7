"""Simulated downstream services for the reference topology, the demo, tests and chaos experiments.

A service honours idempotency keys the way real payment and shipping APIs do, and records in Redis every
call (``calls``), every successful call (``completed``) and every side effect (``effects``), so a verifier
can tell a handler that ran twice from a side effect that happened twice.
Failures and latency are injected by settings, and an outage can be switched on and off at run time from
any process (``set_outage``), which is how tests and chaos experiments take a dependency down.
"""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis

from processor.config import SimulationSettings
from processor.errors import RetryableError
from processor.runtime.redis_client import RedisClient


class DownstreamError(RetryableError):
    """The simulated service failed (injected failure or outage)."""


class SimulatedService:
    """One downstream dependency (``inventory``, ``payment-gateway``, ``shipping``)."""

    def __init__(
        self, name: str, client: RedisClient, settings: SimulationSettings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.name = name
        self._redis = client
        self._settings = settings or SimulationSettings.load(name)
        self._rng = rng or random.Random()

    def key(self, what: str) -> str:
        return f"sim:{self.name}:{what}"

    async def call(self, idempotency_key: str) -> bool:
        """Perform the side effect once per key; returns False when the key was already used."""
        if self._settings.latency_ms:
            await asyncio.sleep(self._settings.latency_ms / 1000)
        await self._redis.hincrby(self.key("calls"), idempotency_key, 1)
        raw = await self._redis.get(self.key("outage"))
        outage = raw.decode() if isinstance(raw, bytes) else raw
        if outage is not None and outage.startswith("slow:"):  # degraded, not down (set_outage's slow_ms)
            await asyncio.sleep(int(outage[5:]) / 1000)
        elif outage is not None:
            raise DownstreamError(f"{self.name} is unavailable (outage)")
        if self._rng.random() < self._settings.failure_rate:
            raise DownstreamError(f"{self.name} failed (injected failure)")
        await self._redis.hincrby(self.key("completed"), idempotency_key, 1)
        # The side effect itself happens once per idempotency key, however often it is asked for.
        return bool(await self._redis.hsetnx(self.key("effects"), idempotency_key, 1))


async def set_outage(client: aioredis.Redis, service: str, down: bool, slow_ms: int = 0) -> None:
    """Take a simulated service down (every call fails; with ``slow_ms``, every call takes that much longer
    instead) or bring it back, for every process at once."""
    key = f"sim:{service}:outage"
    if down:
        await client.set(key, f"slow:{slow_ms}" if slow_ms else 1)
    else:
        await client.delete(key)
