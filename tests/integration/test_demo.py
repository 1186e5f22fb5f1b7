"""`processor demo` end to end, against the test backend."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Backend


# The chaos quick subset runs the same topology, on the same topics and groups: never at the same time.
@pytest.mark.xdist_group("orders")
def test_demo_accounts_for_every_event(backend: Backend, tmp_path: Path) -> None:
    env = {**os.environ, **backend.env()}
    result = subprocess.run(
        [sys.executable, "-m", "processor", "demo", "--events", "120", "--duplicates", "6", "--malformed", "4",
         "--state-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240, env=env, cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr + (tmp_path / "demo-worker.log").read_text()[-3000:]
    rows = {line.split()[0]: line.split() for line in result.stdout.splitlines()
            if line.split() and line.split()[0] in ("reserve_inventory", "charge_payment", "notify_shipping")}
    assert set(rows) == {"reserve_inventory", "charge_payment", "notify_shipping"}
    for name, cells in rows.items():
        total, processed, duplicates, _retried, dead = (int(c) for c in cells[1:6])
        assert total == 130, name
        # The 4 malformed events are dead-lettered; an order may join them if it failed every retry tier.
        assert processed + duplicates + dead == 130, name
        assert dead >= 4, name
        assert processed >= 115, name
        assert float(cells[6]) > 0, name
    assert "every event accounted for" in result.stdout
