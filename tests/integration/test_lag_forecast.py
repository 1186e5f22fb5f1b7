"""The lag forecast against a real consumer that falls behind: a backlog its handler needs a minute for.

The backlog's records are all as old as each other, so its lag (the oldest unread record's age) grows one
second a second until it is drained: the monitor forecasts the 120 s threshold at what is left of it, and
`processor status` shows it.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, Backend
from tests.support import bed_worker, event, produce

THRESHOLD = 120.0


def test_a_consumer_falling_behind_gets_a_forecast_of_its_lag_slo_threshold(
    backend: Backend, unique: str, tmp_path: Path,
) -> None:
    group, source = f"{unique}.a", f"{unique}.in"
    worker = bed_worker(backend.env(), unique, tmp_path, partitions="3", latency_ms="100",
                        lag_slo=f"{THRESHOLD:.0f}s").start()
    try:
        worker.wait_assigned(["a"], minimum=3)
        produce(backend.bootstrap_servers, source, [event(f"e{i}", i) for i in range(1500)])  # ~50 s of work
        seen: dict[str, float] = {}

        def forecast_shown() -> bool:
            samples = worker.metrics().samples
            ahead = samples.get("processor_lag_forecast_seconds", {}).get((("group", group), ("until", "threshold")))
            lags = [v for k, v in samples.get("processor_consumer_lag_seconds", {}).items()
                    if dict(k)["group"] == group and dict(k)["topic"] == source]
            if ahead is None or math.isinf(ahead) or not lags or max(lags) < 5:
                return False
            seen.update(ahead=ahead, lag=max(lags))
            return True

        worker.wait_for(forecast_shown, 60, "a finite forecast of the lag SLO's threshold")
        # Growing a second a second: the threshold is what is left of it away (the samples are 5 s apart,
        # so the two numbers may be up to a pass apart).
        assert abs(seen["ahead"] + seen["lag"] - THRESHOLD) < 15, seen
        shown = subprocess.run(
            [sys.executable, "-m", "processor", "status", "tests.topologies.testbed", "--metrics-url", worker.url,
             "--once", "--json"], capture_output=True, text=True, timeout=120, cwd=REPO,
            env={**os.environ, **backend.env(), "TESTBED_NAME": unique, "TESTBED_LAG_SLO": f"{THRESHOLD:.0f}s"},
        )
        assert shown.returncode == 0, shown.stderr
        forecasts = json.loads(shown.stdout)["forecasts"]
        assert 0 < forecasts[group]["threshold"] < THRESHOLD, forecasts
        assert forecasts[group]["drain"] is None, forecasts  # growing: never drained at this trend (null)
    finally:
        worker.stop()
