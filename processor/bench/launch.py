"""How `processor bench` starts its variant processes: the baseline loops and the processor's worker."""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

from processor.bench.loops import LoopSpec
from processor.bench.run import Launch, Run, child_env
from processor.dev.servers import free_port


def loop_launch(kind: str, key: str, label: str, run: Run, log_dir: Path, *, output: bool = True) -> Launch:
    """A baseline (``processor.bench.loops``) reading the run's source in group ``<run>.<key>``."""
    spec = LoopSpec(
        source=run.source, output=f"{run.run_id}.{key}.out" if output else "", group=f"{run.run_id}.{key}",
        events=run.events, mark_file=str(log_dir / f"{key}.mark"), result_file=str(log_dir / f"{key}.result"),
        state_dir=str(log_dir),
    )
    return Launch(
        key=key, label=label, argv=[sys.executable, "-m", "processor.bench.loops", kind, spec.to_json()],
        env=child_env(run.settings, {}), log=log_dir / f"{key}.log", mark=Path(spec.mark_file),
        output=spec.output or None, result=Path(spec.result_file),
    )


def worker_launch(
    key: str, label: str, run: Run, log_dir: Path, *, source: str, extra_env: Mapping[str, str] | None = None,
    note: str = "",
) -> Launch:
    """``processor worker processor.bench.topology`` as topology ``<run>-<key>`` (so its own consumer group
    and dedup keys), reading ``source`` and writing ``<run>.<key>.out``, with /metrics on a free port."""
    name = f"{run.run_id}-{key}"
    port = free_port()
    output = f"{run.run_id}.{key}.out"
    mark = log_dir / f"{key}.mark"
    env = child_env(run.settings, {
        "PROCESSOR_BENCH_NAME": name, "PROCESSOR_BENCH_SOURCE": source, "PROCESSOR_BENCH_OUTPUT": output,
        "PROCESSOR_BENCH_PARTITIONS": str(run.partitions), "PROCESSOR_BENCH_MARK_FILE": str(mark),
        "PROCESSOR_METRICS_PORT": str(port), "PROCESSOR_METRICS_HOST": "127.0.0.1", **run.worker_env,
        **(extra_env or {}),
    })
    return Launch(
        key=key, label=label, argv=[sys.executable, "-m", "processor", "worker", "processor.bench.topology"],
        env=env, log=log_dir / f"{key}.log", mark=mark, output=output,
        metrics_url=f"http://127.0.0.1:{port}/metrics", topology=name, note=note,
    )
