"""Static checks of docker-compose.kafka.yml and the config files it mounts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml  # type: ignore[import-untyped, unused-ignore]

from processor.dev import kraft

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.kafka.yml"


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def _services() -> dict[str, Any]:
    services: dict[str, Any] = _load(COMPOSE)["services"]
    return services


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: str(value) for key, value in env.items()}


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Map container target -> host source for the service's volumes."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes") or []:
        if isinstance(volume, dict):
            mounts[volume["target"]] = volume.get("source", "")
        else:
            source, target = volume.split(":")[:2]
            mounts[target] = source
    return mounts


def _host_port(mapping: Any) -> str | None:
    if isinstance(mapping, dict):
        published = mapping.get("published")
        return None if published is None else str(published)
    parts = str(mapping).split("/")[0].split(":")
    return parts[-2] if len(parts) >= 2 else None


def test_services_and_kafka_kraft() -> None:
    services = _services()
    assert {"kafka", "redis", "prometheus", "grafana", "worker"} <= services.keys()
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka")
    roles = _env(kafka)["KAFKA_PROCESS_ROLES"].split(",")
    assert {"broker", "controller"} <= {role.strip() for role in roles}


# Per node, not per cluster: the compose file's container addresses differ from loopback ports by design.
_NODE_SPECIFIC = {"node.id", "controller.quorum.voters", "listeners", "advertised.listeners",
                  "listener.security.protocol.map", "log.dirs"}


def _kafka_properties(env: dict[str, str]) -> dict[str, str]:
    # The apache/kafka image's rule: drop KAFKA_, lower-case, `_` becomes `.`.
    prefix = "KAFKA_"
    return {key[len(prefix):].lower().replace("_", "."): value for key, value in env.items() if key.startswith(prefix)}


def test_kafka_version_matches_the_pom_and_the_dev_cluster() -> None:
    image = _services()["kafka"]["image"]
    pom = (ROOT / "processor" / "dev" / "kafka.pom.xml").read_text(encoding="utf-8")
    assert f"<kafka.version>{kraft.KAFKA_VERSION}</kafka.version>" in pom
    assert image == f"apache/kafka:{kraft.KAFKA_VERSION}"


def test_kafka_settings_match_a_one_node_dev_cluster(tmp_path: Path) -> None:
    node = kraft.Node(node_id=1, port=9092, controller_port=9093)
    expected = kraft.server_properties(kraft.Cluster(tmp_path, "id", (node,)), node)
    compose = _kafka_properties(_env(_services()["kafka"]))
    shared = {key: value for key, value in expected.items() if key not in _NODE_SPECIFIC}
    assert {key: compose.get(key) for key in shared} == shared
    assert compose["controller.quorum.voters"] == "1@kafka:9093"
    listeners = dict(item.split("://") for item in compose["listeners"].split(","))
    advertised = dict(item.split("://") for item in compose["advertised.listeners"].split(","))
    protocols = dict(item.split(":") for item in compose["listener.security.protocol.map"].split(","))
    assert set(advertised) | {compose["controller.listener.names"]} == set(listeners) == set(protocols)
    assert compose["inter.broker.listener.name"] in advertised
    assert advertised["EXTERNAL"] == "localhost:29092"
    assert "29092:29092" in _services()["kafka"]["ports"]


def test_bind_mount_sources_exist() -> None:
    sources = [s for svc in _services().values() for s in _mounts(svc).values()]
    relative = [source for source in sources if source.startswith("./")]
    assert relative, "expected bind mounts of repository files"
    missing = [source for source in relative if not (ROOT / source).exists()]
    assert not missing, f"bind-mount sources missing from the repo: {missing}"


def test_host_ports_unique_and_worker_scalable() -> None:
    services = _services()
    ports = [_host_port(p) for svc in services.values() for p in svc.get("ports") or []]
    published = [port for port in ports if port is not None]
    assert published
    assert len(published) == len(set(published)), published
    worker = services["worker"]
    assert not worker.get("ports"), "worker must not map host ports (it is scaled)"
    env = _env(worker)
    assert env.get("KAFKA_BOOTSTRAP_SERVERS")
    assert env.get("REDIS_URL")


def test_prometheus_config_scrapes_workers() -> None:
    mounts = _mounts(_services()["prometheus"])
    config = _load(ROOT / mounts["/etc/prometheus/prometheus.yml"])
    worker_jobs = [
        job
        for job in config["scrape_configs"]
        for sd in job.get("dns_sd_configs") or []
        if "worker" in sd.get("names", [])
    ]
    assert worker_jobs, "no dns_sd scrape job for the worker service"
    rules_dir = next(t for t in mounts if t.startswith("/etc/prometheus/rules"))
    assert config["rule_files"]
    assert all(str(rule).startswith(rules_dir) for rule in config["rule_files"])


def test_grafana_provisioning_parses() -> None:
    mounts = _mounts(_services()["grafana"])
    provisioning = ROOT / mounts["/etc/grafana/provisioning"]
    docs = [_load(path) for path in sorted(provisioning.rglob("*.yml"))]
    assert docs
    assert all(doc.get("apiVersion") == 1 for doc in docs)
    datasources = [ds for doc in docs for ds in doc.get("datasources") or []]
    assert any(ds["url"] == "http://prometheus:9090" for ds in datasources)
    paths = [p["options"]["path"] for doc in docs for p in doc.get("providers") or []]
    assert paths
    assert all(path in mounts for path in paths), paths
