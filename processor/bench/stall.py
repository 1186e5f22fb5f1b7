"""`processor bench`: telling a slow variant from a stuck one.

A fixed timeout cannot do both: on a host several times slower than usual a complete run takes minutes
longer, while a variant that stranded its last outputs used to wait the whole timeout out (issue 31). So a
variant fails as soon as it stops making progress: no first output ``START_SECONDS`` after its start (a
group join, on a slow host), or no new output for ``STALL_SECONDS`` after that; the run's overall timeout
only backs this up. The failure says what was seen: the outputs read and the variant's own count.
"""

from __future__ import annotations

from pathlib import Path

from processor.bench.proc import read_json
from processor.observability.scrape import scrape

START_SECONDS = 120.0
STALL_SECONDS = 30.0


class StallWatch:
    """Says when a count of progress (outputs seen, or records handled) has stopped moving."""

    def __init__(self, now: float, start_seconds: float = START_SECONDS, stall_seconds: float = STALL_SECONDS) -> None:
        self._start_seconds = start_seconds
        self._stall_seconds = stall_seconds
        self._started = now
        self._last = 0
        self._since = now

    def check(self, progress: int, now: float) -> str | None:
        """Record ``progress`` at ``now``; why the variant counts as stalled, or None while it is not."""
        if progress != self._last:
            self._last, self._since = progress, now
            return None
        if self._last == 0:
            waited = now - self._started
            return f"no progress {waited:.0f}s after its start" if waited > self._start_seconds else None
        quiet = now - self._since
        return f"no progress for {quiet:.0f}s, stuck at {self._last}" if quiet > self._stall_seconds else None


def progress_path(result_file: Path) -> Path:
    """Where a loop variant keeps its counts while it runs: beside its result."""
    return result_file.with_suffix(".progress")


def loop_count(progress_file: Path) -> int:
    """Records a loop variant has handled so far, from its progress file (0 before the first write)."""
    counts = read_json(progress_file)
    return int(str(counts["count"])) if counts is not None else 0


def own_count(progress_file: Path | None, metrics_url: str | None, topology: str | None) -> str:
    """The variant's own account of its progress, for a failure's message."""
    if progress_file is not None:
        counts = read_json(progress_file)
        if counts is None:
            return "it reported no count yet"
        text = f"it handled {counts['count']}, {counts['acked']} outputs acknowledged"
        failed = int(str(counts["failed_deliveries"]))
        return text + (f", {failed} deliveries failed (first: {counts['first_delivery_error']})" if failed else "")
    if metrics_url is not None and topology is not None:
        try:
            handled = scrape(metrics_url).value("processor_events_total", topology=topology)
        except OSError as exc:
            return f"its /metrics did not answer ({exc})"
        return f"its /metrics count {handled:.0f} events handled"
    return "it keeps no count"
