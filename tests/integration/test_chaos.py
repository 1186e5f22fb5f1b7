"""The bounded subset of the chaos experiments (``processor chaos run quick``): a downstream slower than the
latency objective (which must page, then clear), a replica SIGKILLed mid-stream (no page), and poison messages.
None of them faults a server, so they run on the suite's backend (by default its 3-broker Kafka cluster,
replication factor 3); each bounds its own time and stops every process it started. `make chaos` runs the
whole set, each on a cluster of its own.

One test runs them one after another, marked ``solo``: they judge latency SLOs and lag, so `make test` runs
them in a pytest session of their own after the parallel one. Run beside the other tests, the two CPUs
they shared took poison-messages' p99 processing past the 500 ms objective (a page that said nothing
about the fault). The xdist group keeps them off the demo's topics when run with ``-n`` anyway."""

from __future__ import annotations

from pathlib import Path

import pytest

from processor.chaos.experiments import by_name
from processor.chaos.report import table, write_report
from processor.chaos.run import RunOptions, run_experiment
from processor.chaos.stack import Endpoints
from tests.conftest import Backend

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.solo
@pytest.mark.xdist_group("orders")
@pytest.mark.timeout(sum(e.time_limit for e in by_name("quick")) + 60)
def test_quick_chaos_experiments(tmp_path: Path, backend: Backend) -> None:
    servers = Endpoints(backend.bootstrap_servers, backend.redis_url, external=True,
                        replication_factor=backend.replication_factor)
    options = RunOptions(report_dir=tmp_path, cwd=REPO, external=servers)
    outcomes = [run_experiment(e, options) for e in by_name("quick")]
    report, _ = write_report(outcomes, tmp_path / "report.md", {"topology": "topologies.orders"})
    failed = [f"{o.experiment}: {c.name}: {c.detail}" for o in outcomes for c in o.checks if not c.ok]
    assert all(o.passed for o in outcomes), f"{table(outcomes)}\n" + "\n".join(failed) + f"\nreport: {report}"
    assert sum(o.lost for o in outcomes) == 0
    assert sum(o.duplicated_effects for o in outcomes) == 0
