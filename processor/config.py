"""Settings: one frozen object built from CLI flags > environment > defaults.

This is the only module that reads the environment. Every value is checked here, so a bad one fails at
start with one line that names the setting and says what is wrong.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, get_args
from urllib.parse import urlsplit

from processor.errors import ConfigError

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
RedisMode = Literal["single", "cluster"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
TracesExporter = Literal["otlp", "console", "none"]
TracesSampler = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]


class Secret:
    """A string that never shows itself in ``repr``, ``str`` or logs; ``reveal()`` gives the value."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('**********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def _text(name: str, raw: str) -> str:
    if not raw.strip():
        raise ConfigError(f"{name}: must not be empty")
    return raw.strip()


def _bootstrap(name: str, raw: str) -> str:
    servers = [s.strip() for s in raw.split(",") if s.strip()]
    if not servers:
        raise ConfigError(f"{name}: must list at least one host:port")
    for server in servers:
        host, sep, port = server.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{name}: {server!r} is not host:port (port 1-65535)")
    return ",".join(servers)


def _redis_url(name: str, raw: str) -> Secret:
    parts = urlsplit(raw.strip())
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(f"{name}: must start with redis://, rediss:// or unix://")
    if parts.scheme != "unix" and not parts.hostname:
        raise ConfigError(f"{name}: has no host (expected redis://HOST:PORT/DB)")
    try:
        parts.port  # noqa: B018 - urlsplit validates the port lazily
    except ValueError:
        raise ConfigError(f"{name}: the port is not a number in 1-65535") from None
    # The URL may carry a password, so it is kept as a Secret.
    return Secret(raw.strip())


def _port(name: str, raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) > 65535:
        raise ConfigError(f"{name}: {raw!r} is not a port number (0-65535, 0 disables)")
    return int(raw)


def _positive_int(name: str, raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) < 1:
        raise ConfigError(f"{name}: {raw!r} is not a whole number >= 1")
    return int(raw)


def _replicas(name: str, raw: str) -> int:
    if not raw.strip().isdigit() or int(raw) > 5:
        raise ConfigError(f"{name}: {raw!r} must be a whole number of replicas in 0-5 (0: do not wait)")
    return int(raw)


def _wait_ms(name: str, raw: str) -> int:
    # Below the worker's Redis socket timeout (5 s, processor.runtime.worker), or the wait reads as Redis down.
    if not raw.strip().isdigit() or not 1 <= int(raw) <= 4000:
        raise ConfigError(f"{name}: {raw!r} must be a whole number of ms in 1-4000")
    return int(raw)


def _stall_seconds(name: str, raw: str) -> int:
    # ProcessorPartitionStalled pages 2 minutes after a stall is found: the seek (at once) and the rejoin
    # (a window later, plus up to a third of one to the next check) must both come, and work, before it.
    if not raw.strip().isdigit() or not 1 <= int(raw) <= 60:
        raise ConfigError(f"{name}: {raw!r} must be a whole number of seconds in 1-60")
    return int(raw)


def _ratio(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise ConfigError(f"{name}: {raw!r} must be between 0 and 1")
    return value


def _choice(options: tuple[str, ...], *, upper: bool) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in options:
            raise ConfigError(f"{name}: {raw!r} is not one of {', '.join(options)}")
        return value

    return parse


def _instance_id(name: str, raw: str) -> str:
    # Kafka's own rule for group.instance.id (the broker refuses anything else, much later and less clearly).
    value = raw.strip()
    if len(value) > 249 or not value or any(not (c.isascii() and (c.isalnum() or c in "._-")) for c in value):
        raise ConfigError(f"{name}: {raw!r} must be 1-249 characters of a-z, A-Z, 0-9, '.', '_', '-'")
    return value


def _session_timeout(name: str, raw: str) -> int:
    # Faust heartbeats every second; the broker's group.min.session.timeout.ms is 6000 by default.
    if not raw.strip().isdigit() or not 6000 <= int(raw) <= 1_800_000:
        raise ConfigError(f"{name}: {raw!r} must be a whole number of ms in 6000-1800000")
    return int(raw)


def _secret(name: str, raw: str) -> Secret:
    return Secret(raw)


def _existing_file(name: str, raw: str) -> str:
    if not os.path.isfile(raw):
        raise ConfigError(f"{name}: no such file {raw!r}")
    return raw


def _setting(env: str, parse: Callable[[str, str], Any], default: Any = None, *, secret: bool = False) -> Any:
    return field(default=default, repr=not secret, metadata={"env": env, "parse": parse})


@dataclass(frozen=True)
class Settings:
    """Everything a worker, the CLI and the tools need to know about their environment."""

    kafka_bootstrap_servers: str = _setting("KAFKA_BOOTSTRAP_SERVERS", _bootstrap, "127.0.0.1:9092")
    redis_url: Secret = _setting("REDIS_URL", _redis_url, Secret("redis://127.0.0.1:6379/0"))
    # cluster: REDIS_URL names any node of a Redis Cluster, and dedup spreads each group over hash slots.
    redis_mode: RedisMode = _setting("REDIS_MODE", _choice(get_args(RedisMode), upper=False), "single")
    # WAIT after each dedup write for this many replicas (at most REDIS_WAIT_TIMEOUT_MS): a master's failover
    # then loses no claim or done-mark, at a replica round trip per call (processor.runtime.dedup; README).
    redis_wait_replicas: int = _setting("REDIS_WAIT_REPLICAS", _replicas, 0)
    redis_wait_timeout_ms: int = _setting("REDIS_WAIT_TIMEOUT_MS", _wait_ms, 1000)
    # A partition with records to read and none delivered for this long is stalled, and healed
    # (processor.runtime.stall).
    stall_seconds: int = _setting("PROCESSOR_STALL_SECONDS", _stall_seconds, 30)
    # Fault injection for tests and the chaos lab: a worker's first partition stops being fetched 5 s after
    # it is assigned, behind its queues' back; sticky: paused again whenever resumed, until a new assignment.
    failpoint_stall: str | None = _setting("PROCESSOR_FAILPOINT_STALL", _choice(("once", "sticky"), upper=False))
    metrics_port: int = _setting("PROCESSOR_METRICS_PORT", _port, 9100)
    metrics_host: str = _setting("PROCESSOR_METRICS_HOST", _text, "127.0.0.1")
    log_level: LogLevel = _setting("PROCESSOR_LOG_LEVEL", _choice(get_args(LogLevel), upper=True), "INFO")
    topic_partitions: int = _setting("PROCESSOR_TOPIC_PARTITIONS", _positive_int, 3)
    topic_replication_factor: int = _setting("PROCESSOR_TOPIC_REPLICATION_FACTOR", _positive_int, 1)
    # Real Kafka answers a waiting fetch when records arrive, so this only bounds an idle consumer's requests
    # (10/s at 100); the embedded broker holds an empty fetch for half of it (see processor.kafka.consumer).
    kafka_fetch_max_wait_ms: int = _setting("KAFKA_FETCH_MAX_WAIT_MS", _positive_int, 100)
    # Static membership (KIP-345): a replica that comes back under the same id within the session timeout
    # gets its partitions back without a rebalance. Unique per replica (a StatefulSet pod name); not for the
    # embedded broker, whose static membership livelocks after a kill.
    group_instance_id: str | None = _setting("PROCESSOR_GROUP_INSTANCE_ID", _instance_id)
    # How long the group waits for a silent member: the time to notice a dead replica, and with static
    # membership the time a restart may take without a rebalance.
    kafka_session_timeout_ms: int = _setting("KAFKA_SESSION_TIMEOUT_MS", _session_timeout, 10_000)
    # glibc's own variable, read here so that a worker's cap (processor.runtime.heap) is the one the user set.
    malloc_arena_max: int = _setting("MALLOC_ARENA_MAX", _positive_int, 2)
    kafka_security_protocol: SecurityProtocol = _setting(
        "KAFKA_SECURITY_PROTOCOL", _choice(get_args(SecurityProtocol), upper=True), "PLAINTEXT"
    )
    kafka_sasl_mechanism: SaslMechanism | None = _setting(
        "KAFKA_SASL_MECHANISM", _choice(get_args(SaslMechanism), upper=True)
    )
    kafka_sasl_username: str | None = _setting("KAFKA_SASL_USERNAME", _text)
    kafka_sasl_password: Secret | None = _setting("KAFKA_SASL_PASSWORD", _secret, secret=True)
    kafka_ssl_ca_location: str | None = _setting("KAFKA_SSL_CA_LOCATION", _existing_file)
    otel_service_name: str = _setting("OTEL_SERVICE_NAME", _text, "processor")
    otel_traces_exporter: TracesExporter | None = _setting(
        "OTEL_TRACES_EXPORTER", _choice(get_args(TracesExporter), upper=False)
    )
    otel_exporter_otlp_endpoint: str | None = _setting("OTEL_EXPORTER_OTLP_ENDPOINT", _text)
    otel_exporter_otlp_headers: Secret | None = _setting(
        "OTEL_EXPORTER_OTLP_HEADERS", _secret, secret=True
    )
    otel_traces_sampler: TracesSampler = _setting(
        "OTEL_TRACES_SAMPLER", _choice(get_args(TracesSampler), upper=False), "parentbased_always_on"
    )
    otel_traces_sampler_arg: float = _setting("OTEL_TRACES_SAMPLER_ARG", _ratio, 1.0)

    def __post_init__(self) -> None:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        if sasl and not (self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password):
            raise ConfigError(
                "KAFKA_SECURITY_PROTOCOL: SASL needs KAFKA_SASL_MECHANISM, KAFKA_SASL_USERNAME and "
                "KAFKA_SASL_PASSWORD"
            )

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, str | None] | None = None
    ) -> Settings:
        """Build settings; ``overrides`` (CLI flags, keyed by environment name) win over ``environ``."""
        env = dict(os.environ if environ is None else environ)
        env.update({k: v for k, v in (overrides or {}).items() if v is not None})
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = env.get(f.metadata["env"])
            if raw is not None and raw != "":
                values[f.name] = f.metadata["parse"](f.metadata["env"], raw)
        return cls(**values)

    @property
    def traces_exporter(self) -> TracesExporter:
        """The exporter in force: an explicit choice, else OTLP when an endpoint is set, else none."""
        if self.otel_traces_exporter is not None:
            return self.otel_traces_exporter
        return "otlp" if self.otel_exporter_otlp_endpoint else "none"

    def kafka_client_config(self) -> dict[str, str | int | float | bool]:
        """Connection and security settings in librdkafka (confluent-kafka) spelling."""
        config: dict[str, str | int | float | bool] = {
            "bootstrap.servers": self.kafka_bootstrap_servers,
            "security.protocol": self.kafka_security_protocol,
        }
        if self.kafka_sasl_mechanism:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism
        if self.kafka_sasl_username:
            config["sasl.username"] = self.kafka_sasl_username
        if self.kafka_sasl_password:
            config["sasl.password"] = self.kafka_sasl_password.reveal()
        if self.kafka_ssl_ca_location:
            config["ssl.ca.location"] = self.kafka_ssl_ca_location
        return config


@dataclass(frozen=True)
class SimulationSettings:
    """Injected behaviour of one simulated downstream service (demo, tests, chaos).

    Read from ``PROCESSOR_SIM_<SERVICE>_FAILURE_RATE`` and ``PROCESSOR_SIM_<SERVICE>_LATENCY_MS``
    (service name upper-cased, ``-`` as ``_``), falling back to ``PROCESSOR_SIM_FAILURE_RATE`` and
    ``PROCESSOR_SIM_LATENCY_MS``.
    """

    failure_rate: float = 0.0
    latency_ms: float = 0.0

    @classmethod
    def load(cls, service: str, environ: Mapping[str, str] | None = None) -> SimulationSettings:
        env = os.environ if environ is None else environ
        prefix = "PROCESSOR_SIM_" + service.upper().replace("-", "_") + "_"
        values: dict[str, float] = {}
        for attr, suffix, parse in (("failure_rate", "FAILURE_RATE", _ratio), ("latency_ms", "LATENCY_MS", _ms)):
            for name in (prefix + suffix, "PROCESSOR_SIM_" + suffix):
                if env.get(name):
                    values[attr] = parse(name, env[name])
                    break
        return cls(**values)


def _ms(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: {raw!r} is not a number of milliseconds") from None
    if value < 0:
        raise ConfigError(f"{name}: {raw!r} must be >= 0")
    return value
