"""The command line explains itself and rejects bad input with one clear line."""

from __future__ import annotations

import subprocess
import sys

import pytest

from processor.cli.main import build_parser

SUBCOMMANDS = [
    [], ["dev"], ["dev", "up"], ["dev", "down"], ["dev", "status"], ["dev", "env"], ["worker"],
    ["topics"], ["topics", "create"], ["demo"], ["monitor"], ["status"], ["slo"], ["slo", "rules"],
    ["slo", "dashboard"], ["dlq"], ["dlq", "list"], ["dlq", "replay"], ["bench"], ["chaos"],
    ["chaos", "run"],
]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "processor", *args], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.mark.parametrize("words", SUBCOMMANDS, ids=lambda w: " ".join(w) or "processor")
def test_every_command_has_help(words: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args([*words, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: processor")
    assert len(out.splitlines()) > 3


def test_bad_setting_value_exits_nonzero_with_one_line() -> None:
    result = run("topics", "create", "topologies.orders", "--bootstrap-servers", "not-a-server")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "processor: error: KAFKA_BOOTSTRAP_SERVERS: 'not-a-server' is not host:port (port 1-65535)"
    ]


def test_bad_environment_value_exits_nonzero_with_one_line() -> None:
    import os

    result = run("worker", "topologies.orders", env={**os.environ, "PROCESSOR_METRICS_PORT": "http"})
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "processor: error: PROCESSOR_METRICS_PORT: 'http' is not a port number (0-65535, 0 disables)"
    )


def test_unknown_topology_module_is_a_clear_error() -> None:
    result = run("topics", "create", "topologies.nope")
    assert result.returncode == 2
    assert "cannot import topology module 'topologies.nope'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bad_port_flag_is_rejected_by_the_parser() -> None:
    result = run("dev", "up", "--kafka-port", "70000")
    assert result.returncode == 2
    assert "is not a port number" in result.stderr.splitlines()[-1]
