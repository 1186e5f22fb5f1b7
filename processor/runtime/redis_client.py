"""The worker's Redis client: redis-py's asyncio client, its commands packed by hiredis.

The dedup scripts take a key (and, storing results, a value) per event of a batch: packing them was about
a tenth of a worker's event loop at a fixed 8 000 events/s (py-spy), when redis-py's asyncio connection
packed in Python, an argument at a time. Since redis-py 8.2 it packs with hiredis when hiredis is installed
(we install it for its reply parser), but encodes each argument in Python first; hiredis encodes the
str, bytes and numbers our commands hold itself, to the same bytes. A claim-sized command of 320
arguments, best of three: 62 µs here, 185 µs through redis-py 8.2's packer, 222 µs in Python.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import Connection
from redis.connection import HiredisRespSerializer
from redis.utils import HIREDIS_AVAILABLE

from processor.errors import ConfigError


class HiredisPackedConnection(Connection):
    """An asyncio connection whose commands hiredis packs and encodes, with no Python pass over the arguments."""

    _packer = HiredisRespSerializer()  # type: ignore[no-untyped-call]  # no fallback, no encoder: see above

    def pack_command(self, *args: Any) -> list[bytes]:
        return self._packer.pack(*args)  # type: ignore[no-any-return]


RedisClient = aioredis.Redis | aioredis.RedisCluster


def connect(url: str, mode: str = "single", **options: Any) -> RedisClient:
    """A client for ``url``; plain ``redis://`` connections to one Redis pack their commands with hiredis.
    (TLS and Unix socket URLs choose their own connection class, and keep redis-py's packer; so does the
    cluster client, which opens its own connections per node.)"""
    if mode == "cluster":
        return aioredis.RedisCluster.from_url(url, **options)
    if HIREDIS_AVAILABLE and url.startswith("redis://"):
        options.setdefault("connection_class", HiredisPackedConnection)
    return aioredis.Redis.from_url(url, **options)


def check_mode(url: str, mode: str) -> None:
    """Raise ConfigError, in one line, when ``url`` and ``mode`` (REDIS_MODE) cannot work together: a cluster
    node without REDIS_MODE=cluster (the dedup scripts would fail on keys of other slots), REDIS_MODE=cluster
    on a plain Redis, or a cluster that does not serve every slot. Unreachable is not refused: the worker
    waits for Redis as it runs."""
    client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=2)
    try:
        enabled = client.info("cluster").get("cluster_enabled") in (1, "1")
        state = client.cluster("INFO").get("cluster_state") if enabled else None
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return
    finally:
        client.close()
    where = urlsplit(url)  # never the password
    node = f"REDIS_URL {where.hostname}:{where.port or 6379}"
    if enabled and mode != "cluster":
        raise ConfigError(f"{node} is a Redis Cluster node: set REDIS_MODE=cluster")
    if not enabled and mode == "cluster":
        raise ConfigError(f"{node} is not a Redis Cluster node: unset REDIS_MODE, or point REDIS_URL at a cluster")
    if enabled and state != "ok":
        raise ConfigError(f"{node}: the cluster's state is {state}, not ok: some hash slots have no master")
