"""Dedup's writes that wait for replicas: a script, then ``WAIT`` on the same connection (REDIS_WAIT_REPLICAS).

Replication is asynchronous (processor.runtime.dedup says what a lost write costs). ``WAIT n timeout``
returns once ``n`` replicas have every write its own connection made, so it goes in one pipeline with the
script (a script may not call it); on Redis Cluster both go to the node that serves the script's slot.
A master whose replicas do not answer within the timeout (one lost, or none left after a failover) is not
waited on for ``SHORT_WAIT_SECONDS``: otherwise every write would cost the whole timeout. That is logged,
and a failover in that time may lose writes again.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from redis.asyncio import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError

from processor.runtime.redis_client import RedisClient

log = logging.getLogger(__name__)
SHORT_WAIT_SECONDS = 10


class ReplicatedWrites:
    """Runs dedup's state-changing scripts, each followed by ``WAIT`` when ``replicas`` > 0."""

    def __init__(self, client: RedisClient, replicas: int, timeout_ms: int) -> None:
        self._redis = client
        self._replicas = replicas
        self._timeout_ms = timeout_ms
        self._short_until: dict[str, float] = {}  # per node: no WAIT until then, after one fell short

    async def run(self, script: AsyncScript, keys: list[str], args: list[str | int | bytes]) -> Any:
        """``script(keys, args)``'s reply, once ``replicas`` replicas have its writes (or the wait fell short)."""
        if not self._replicas:
            return await script(keys=keys, args=args)
        route: dict[str, Any] = {}
        node = ""
        if isinstance(self._redis, RedisCluster):
            await self._redis.initialize()  # the slot map, loaded by a client's first command (a no-op after)
            route["target_nodes"] = self._redis.get_node_from_key(keys[0])
            node = route["target_nodes"].name
        if self._short_until.get(node, 0.0) > time.monotonic():
            return await script(keys=keys, args=args)
        while True:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
                pipe.execute_command("WAIT", self._replicas, self._timeout_ms, **route)
                result, acked = await pipe.execute(raise_on_error=False)
            if not isinstance(result, NoScriptError):
                break
            # A promoted replica (or a restarted Redis) starts with no scripts: load it there and run again.
            await self._redis.script_load(script.script)
        for reply in (result, acked):
            if isinstance(reply, Exception):
                raise reply
        if acked < self._replicas:
            self._short_until[node] = time.monotonic() + SHORT_WAIT_SECONDS
            log.warning("WAIT: %d of %d replicas of Redis %s had a dedup write within %d ms; not waiting for "
                        "them for %d s (a failover meanwhile may lose writes)",
                        acked, self._replicas, node or "master", self._timeout_ms, SHORT_WAIT_SECONDS)
        return result
