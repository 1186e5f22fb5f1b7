"""`processor dev up | down | status`: the embedded stack in the background, tracked by a state file.

The state file (``.processor/dev.json`` by default) records what ``up`` started, so ``down`` stops
exactly that and nothing else, and a second ``up`` finds the running stack instead of starting another.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import orjson

from processor.dev.servers import ServerProcess, free_port, start_broker, start_redis
from processor.errors import StackError

STATE_FILE = "dev.json"


@dataclass(frozen=True)
class DevStack:
    """The broker and Redis of one `processor dev up`."""

    kafka: ServerProcess
    redis: ServerProcess

    def env(self) -> dict[str, str]:
        return {
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka.address,
            "REDIS_URL": f"redis://{self.redis.address}/0",
        }

    def shell_exports(self) -> str:
        """``export NAME=value`` lines that a shell can ``eval``."""
        return "".join(f"export {name}={value}\n" for name, value in self.env().items())

    def running(self) -> bool:
        return self.kafka.alive() and self.redis.alive()


def load(state_dir: Path) -> DevStack | None:
    """The stack recorded in ``state_dir``, or None when there is no readable record."""
    path = state_dir / STATE_FILE
    try:
        data = orjson.loads(path.read_bytes())
        return DevStack(kafka=ServerProcess(**data["kafka"]), redis=ServerProcess(**data["redis"]))
    except FileNotFoundError:
        return None
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise StackError(f"{path} is damaged ({exc}); stop the servers by hand and delete it") from None


def up(state_dir: Path, kafka_port: int | None, redis_port: int | None) -> tuple[DevStack, bool]:
    """Start the stack unless it already runs; returns it and whether this call started it."""
    current = load(state_dir)
    if current is not None:
        if current.running():
            return current, False
        # A half-dead stack (one server crashed or was killed): stop the rest and start afresh.
        down(state_dir)
    kafka = start_broker(kafka_port or free_port(), state_dir / "kafka.log")
    try:
        redis_server = start_redis(redis_port or free_port(), state_dir / "redis.log", state_dir / "redis")
    except BaseException:
        kafka.stop()
        raise
    stack = DevStack(kafka=kafka, redis=redis_server)
    (state_dir / STATE_FILE).write_bytes(
        orjson.dumps({"kafka": asdict(kafka), "redis": asdict(redis_server)}, option=orjson.OPT_INDENT_2)
    )
    return stack, True


def down(state_dir: Path) -> DevStack | None:
    """Stop what ``up`` recorded and forget it; returns what was recorded (None if nothing was)."""
    current = load(state_dir)
    if current is None:
        return None
    current.redis.stop()
    current.kafka.stop()
    (state_dir / STATE_FILE).unlink(missing_ok=True)
    return current
