from __future__ import annotations

import pytest
from redis.asyncio.connection import Connection, UnixDomainSocketConnection
from redis.exceptions import DataError

from processor.runtime.redis_client import HiredisPackedConnection, connect

COMMANDS: list[tuple[object, ...]] = [
    ("EVALSHA", "a" * 40, 2, "processor:dedup:g:e-1", "processor:dedup:g:é-2", "w/1", 30000, 1.5, b"\x00\xff|r"),
    ("SET", b"k", b"v" * 70_000, "EX", 86400),  # past redis-py's buffer cut-off: it chunks, hiredis does not
    ("CONFIG GET", "maxmemory"),  # a command name of two words is sent as two arguments
    ("SET", memoryview(b"key"), bytearray(b"value")),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_packs_the_bytes_redis_py_packs(args: tuple[object, ...]) -> None:
    ours = b"".join(HiredisPackedConnection().pack_command(*args))
    theirs = b"".join(bytes(chunk) for chunk in Connection().pack_command(*args))
    assert ours == theirs


def test_refuses_what_redis_py_refuses() -> None:
    with pytest.raises(DataError):
        HiredisPackedConnection().pack_command("SET", "k", None)


def test_only_plain_tcp_urls_get_the_hiredis_packer() -> None:
    assert connect("redis://127.0.0.1:6379/0").connection_pool.connection_class is HiredisPackedConnection
    unix = connect("unix:///tmp/redis.sock").connection_pool.connection_class
    assert unix is UnixDomainSocketConnection
    assert connect("rediss://127.0.0.1:6380/0").connection_pool.connection_class is not HiredisPackedConnection
