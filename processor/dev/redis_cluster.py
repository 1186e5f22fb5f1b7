"""A local Redis Cluster: redis-server nodes in cluster mode on free ports, joined by `redis-cli --cluster create`.

Three masters and a replica each by default, the smallest cluster that survives a master's loss (its
replica is promoted once the others agree it failed, after ``cluster-node-timeout``).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import redis

from processor.dev.servers import ServerProcess, free_port, redis_binary, spawn, stop_all, wait_ready
from processor.errors import StackError

NODE_TIMEOUT_MS = 2000  # how long a master may be silent before its replica takes over


def _ask(address: str, question: Callable[[redis.Redis], bool]) -> bool:
    client = redis.Redis.from_url(f"redis://{address}/0", socket_connect_timeout=0.5, socket_timeout=0.5)
    try:
        return question(client)
    except redis.RedisError:
        return False
    finally:
        client.close()


def _answers(address: str) -> bool:
    return _ask(address, lambda client: bool(client.ping()))


def cluster_ok(address: str) -> bool:
    """True when the node at ``address`` sees every slot served (``cluster_state:ok``)."""
    return _ask(address, lambda client: client.cluster("INFO").get("cluster_state") == "ok")


def _synced(address: str) -> bool:
    # A master is synced as it is; a replica once its link to the master is up.
    def question(client: redis.Redis) -> bool:
        info = client.info("replication")
        return info.get("role") == "master" or info.get("master_link_status") == "up"
    return _ask(address, question)


def start_redis_cluster(workdir: Path, masters: int = 3, replicas: int = 1,
                        timeout_seconds: float = 60.0) -> list[ServerProcess]:
    """Start ``masters * (1 + replicas)`` nodes with their files in ``workdir``; returns when the cluster is ok."""
    cli = shutil.which("redis-cli")
    if cli is None:
        raise StackError("redis-cli is not on PATH: install it (Debian: apt-get install redis-tools)")
    nodes: list[ServerProcess] = []
    try:
        for n in range(masters * (1 + replicas)):
            port, node_dir = free_port(), workdir / f"node-{n}"
            node_dir.mkdir(parents=True, exist_ok=True)
            nodes.append(spawn(f"redis-cluster-{n}", [
                redis_binary(), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir),
                # The bus port is the client port + 10000 unless named: a free port above 55535 has none.
                "--cluster-enabled", "yes", "--cluster-port", str(free_port()), "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--save", "", "--appendonly", "no",
                # A replica cut off from its master may still be promoted (with what it has) when the master
                # dies: the slots stay served, and the failover tests can open a replication gap on purpose.
                "--cluster-replica-validity-factor", "0",
                # A replica's first sync waits 5 s by default for more replicas to share it: none will here.
                "--repl-diskless-sync-delay", "0",
            ], port, node_dir / "redis.log"))
        wait_ready(nodes, _answers)
        created = subprocess.run(
            [cli, "--cluster", "create", *(n.address for n in nodes), "--cluster-replicas", str(replicas),
             "--cluster-yes"], capture_output=True, text=True, timeout=timeout_seconds)
        if created.returncode != 0:
            raise StackError(f"redis-cli --cluster create failed: {(created.stdout + created.stderr)[-400:]}")
        deadline = time.monotonic() + timeout_seconds
        # Every slot served and every replica synced: before that a master's loss would promote an empty replica.
        while not all(cluster_ok(n.address) and _synced(n.address) for n in nodes):
            if time.monotonic() > deadline:
                raise StackError(f"the Redis Cluster was not ok and in sync within {timeout_seconds:.0f}s")
            time.sleep(0.2)
    except BaseException:
        stop_all(nodes)
        raise
    return nodes
