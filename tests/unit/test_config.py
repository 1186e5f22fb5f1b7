from __future__ import annotations

from pathlib import Path

import pytest

from processor.config import Secret, Settings, SimulationSettings
from processor.errors import ConfigError
from processor.topology.topology import Topology


def test_defaults_without_environment() -> None:
    settings = Settings.load(environ={})
    assert settings.kafka_bootstrap_servers == "127.0.0.1:9092"
    assert settings.redis_url.reveal() == "redis://127.0.0.1:6379/0"
    assert settings.metrics_port == 9100
    assert settings.metrics_host == "127.0.0.1"
    assert settings.traces_exporter == "none"
    assert settings.kafka_fetch_max_wait_ms == 100
    assert settings.malloc_arena_max == 2


def test_flags_override_environment_which_overrides_defaults() -> None:
    env = {"KAFKA_BOOTSTRAP_SERVERS": "a:1", "PROCESSOR_METRICS_PORT": "9200", "REDIS_URL": "redis://r:1/2"}
    settings = Settings.load(environ=env, overrides={"KAFKA_BOOTSTRAP_SERVERS": "b:2", "REDIS_URL": None})
    assert settings.kafka_bootstrap_servers == "b:2"
    assert settings.metrics_port == 9200
    assert settings.redis_url.reveal() == "redis://r:1/2"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"KAFKA_BOOTSTRAP_SERVERS": "nohost"}, "KAFKA_BOOTSTRAP_SERVERS: 'nohost' is not host:port"),
        ({"KAFKA_BOOTSTRAP_SERVERS": "h:99999"}, "KAFKA_BOOTSTRAP_SERVERS: 'h:99999' is not host:port"),
        ({"REDIS_URL": "http://x"}, "REDIS_URL: must start with redis://"),
        ({"PROCESSOR_METRICS_PORT": "abc"}, "PROCESSOR_METRICS_PORT: 'abc' is not a port number"),
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "KAFKA_SECURITY_PROTOCOL: 'TLS' is not one of"),
        ({"KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "KAFKA_SECURITY_PROTOCOL: SASL needs"),
        ({"KAFKA_SSL_CA_LOCATION": "/no/such/ca.pem"}, "KAFKA_SSL_CA_LOCATION: no such file"),
        ({"OTEL_TRACES_SAMPLER_ARG": "2"}, "OTEL_TRACES_SAMPLER_ARG: '2' must be between 0 and 1"),
        ({"PROCESSOR_LOG_LEVEL": "loud"}, "PROCESSOR_LOG_LEVEL: 'loud' is not one of"),
        ({"KAFKA_FETCH_MAX_WAIT_MS": "0"}, "KAFKA_FETCH_MAX_WAIT_MS: '0' is not a whole number >= 1"),
        ({"PROCESSOR_GROUP_INSTANCE_ID": "pod 1"}, "PROCESSOR_GROUP_INSTANCE_ID: 'pod 1' must be 1-249 characters"),
        ({"PROCESSOR_GROUP_INSTANCE_ID": "x" * 250}, f"PROCESSOR_GROUP_INSTANCE_ID: '{'x' * 250}' must be 1-249"),
        ({"KAFKA_SESSION_TIMEOUT_MS": "3000"}, "KAFKA_SESSION_TIMEOUT_MS: '3000' must be a whole number of ms"),
        ({"MALLOC_ARENA_MAX": "many"}, "MALLOC_ARENA_MAX: 'many' is not a whole number >= 1"),
        ({"PROCESSOR_STALL_SECONDS": "90"}, "PROCESSOR_STALL_SECONDS: '90' must be a whole number of seconds in 1-60"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Settings.load(environ=env)
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value)


def test_secrets_never_show_in_repr(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    env = {
        "KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-512",
        "KAFKA_SASL_USERNAME": "svc", "KAFKA_SASL_PASSWORD": "hunter2-kafka",
        "REDIS_URL": "redis://:hunter2-redis@cache:6379/0", "KAFKA_SSL_CA_LOCATION": str(ca),
        "OTEL_EXPORTER_OTLP_HEADERS": "authorization=Bearer hunter2-otel",
    }
    settings = Settings.load(environ=env)
    text = repr(settings) + str(settings)
    assert "hunter2" not in text
    assert settings.kafka_sasl_password == Secret("hunter2-kafka")
    assert settings.kafka_client_config()["sasl.password"] == "hunter2-kafka"
    assert settings.kafka_client_config()["security.protocol"] == "SASL_SSL"


def test_settings_are_frozen() -> None:
    settings = Settings.load(environ={})
    with pytest.raises(AttributeError):
        settings.metrics_port = 1  # type: ignore[misc]


def test_otlp_is_the_exporter_when_an_endpoint_is_set() -> None:
    assert Settings.load(environ={"OTEL_EXPORTER_OTLP_ENDPOINT": "http://c:4317"}).traces_exporter == "otlp"
    assert Settings.load(environ={"OTEL_TRACES_EXPORTER": "console"}).traces_exporter == "console"


def test_simulation_settings_per_service_then_global() -> None:
    env = {"PROCESSOR_SIM_FAILURE_RATE": "0.1", "PROCESSOR_SIM_PAYMENT_GATEWAY_FAILURE_RATE": "0.5",
           "PROCESSOR_SIM_LATENCY_MS": "3"}
    assert SimulationSettings.load("payment-gateway", env) == SimulationSettings(0.5, 3.0)
    assert SimulationSettings.load("inventory", env) == SimulationSettings(0.1, 3.0)
    with pytest.raises(ConfigError, match="PROCESSOR_SIM_LATENCY_MS"):
        SimulationSettings.load("inventory", {"PROCESSOR_SIM_LATENCY_MS": "-1"})


@pytest.mark.parametrize("lease", [0.0, -1.0])
def test_a_claim_lease_must_be_above_zero(lease: float) -> None:
    with pytest.raises(ConfigError, match="claim_lease_seconds must be above 0"):
        Topology("t", claim_lease_seconds=lease)


def test_a_handler_timeout_may_exceed_the_claim_lease() -> None:
    # Leases are renewed while a batch runs (processor.runtime.dedup): the lease bounds take-over, not handlers.
    topology = Topology("t", claim_lease_seconds=5.0)

    @topology.handler(source="in", timeout_seconds=60.0)
    async def slow(event: object, ctx: object) -> list[object]:
        return []

    assert topology.get("slow").timeout_seconds == 60.0
