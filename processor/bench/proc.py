"""What `processor bench` reads from /proc, and the small files its variant processes leave behind.

Each variant process writes a *mark* when it consumes its first record (wall clock and its own CPU ticks
then), and the loop variants a *result* when they are done. Both are written to a temporary name and
renamed, so the bench never reads half a file.

The latency run also reads how busy the machine's CPUs were, and how long the worker's main thread ran
and waited for one (``cpu_contention``): on a machine shared with the broker, Redis and the load, those
waits are part of every event's latency, and a main thread that ran most of the run had little to spare
(Python runs the worker's pipeline on that one thread); the report should say when either was so. It
also samples the CPU of each process on the cores through the run (``CpuSampler``): the worker, the
bench's own broker and Redis, and the bench's load. Tansu's cost per fetch grows with the batches a
partition holds, so the same load costs it more at the end of a run than at the start.

And every run times the CPU itself (``SpeedProbe``): a process of its own runs the same pure-Python loop
twice a second and records the CPU time it took. On the shared KVM host this was built on, that time
flipped between about 3.9 and 6.6 ms from one second to the next, on an idle machine as under load (the
host's other guests, not ours): a variant's maximum and a paced run's latency depend on which of the two
its seconds met, and the report says which.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")


def parse_cpu_ticks(stat: str) -> int:
    """utime + stime (fields 14 and 15 of ``/proc/<pid>/stat``), in clock ticks."""
    # The command name (field 2) may hold spaces and parentheses: count fields after its last ")".
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])


def parse_status_kb(status: str, name: str) -> int:
    """A kB line of ``/proc/<pid>/status``: VmHWM is the peak resident set size, VmRSS the current one."""
    for line in status.splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    raise ValueError(f"no {name} line in the status text")


def cpu_ticks(pid: int | str = "self") -> int:
    """User + system CPU of ``pid`` (every thread) so far, in clock ticks."""
    return parse_cpu_ticks(Path(f"/proc/{pid}/stat").read_text())


def peak_rss_kb(pid: int | str = "self") -> int:
    return parse_status_kb(Path(f"/proc/{pid}/status").read_text(), "VmHWM")


def rss_kb(pid: int | str = "self") -> int:
    return parse_status_kb(Path(f"/proc/{pid}/status").read_text(), "VmRSS")


def parse_schedstat(text: str) -> tuple[int, int]:
    """(ns spent on a CPU, ns spent runnable but waiting for one) from ``/proc/<pid>/task/<tid>/schedstat``."""
    run_ns, wait_ns, _ = text.split()
    return int(run_ns), int(wait_ns)


def parse_machine_cpu(stat: str) -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU together, from the first line of ``/proc/stat``."""
    # user nice system idle iowait irq softirq steal; guest time is counted in user and nice already.
    ticks = [int(f) for f in stat.splitlines()[0].split()[1:9]]
    total = sum(ticks)
    return total - ticks[3] - ticks[4], total


@dataclass(frozen=True)
class CpuSnapshot:
    """The machine's CPU ticks and how long a process's main thread has run and waited for a CPU, at one moment."""

    wall_ns: int
    machine: tuple[int, int] | None  # (busy, total) ticks
    main_thread_wait_ns: int | None
    main_thread_run_ns: int | None


@dataclass(frozen=True)
class CpuContention:
    """Between two snapshots, as shares of the time between them (None where unknown): of the machine's CPU
    time, how much was busy; of the wall time, how much the main thread waited for a CPU and ran on one."""

    busy: float | None
    waited: float | None
    ran: float | None


def cpu_snapshot(pid: int) -> CpuSnapshot:
    """Where Linux keeps no such count (no ``/proc``, no schedstat), that part is None. "The machine" is every
    CPU ``/proc/stat`` lists: in a container limited by a CPU quota rather than by its CPUs, the host's."""
    try:
        machine: tuple[int, int] | None = parse_machine_cpu(Path("/proc/stat").read_text())
    except (OSError, ValueError, IndexError):
        machine = None
    ran: int | None
    wait: int | None
    try:
        ran, wait = parse_schedstat(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text())
    except (OSError, ValueError):
        ran = wait = None
    return CpuSnapshot(time.monotonic_ns(), machine, wait, ran)


def cpu_contention(before: CpuSnapshot, after: CpuSnapshot) -> CpuContention:
    """What the machine's CPUs and the process's main thread did between two snapshots."""
    busy = None
    if before.machine is not None and after.machine is not None and after.machine[1] > before.machine[1]:
        busy = (after.machine[0] - before.machine[0]) / (after.machine[1] - before.machine[1])
    wall = after.wall_ns - before.wall_ns

    def share(then: int | None, now: int | None) -> float | None:
        return None if then is None or now is None or wall <= 0 else (now - then) / wall

    return CpuContention(busy, share(before.main_thread_wait_ns, after.main_thread_wait_ns),
                         share(before.main_thread_run_ns, after.main_thread_run_ns))


class CpuSampler:
    """A process's CPU ticks against the wall clock, read at most every ``every_seconds`` when ``sample`` is
    called: enough to tell its CPU share over any part of a run several samples long (``cpu_share_between``)."""

    def __init__(self, pid: int, every_seconds: float = 0.25) -> None:
        self.pid = pid
        self.every_seconds = every_seconds
        self.samples: list[tuple[float, int]] = []  # (time.time(), ticks)

    def sample(self) -> None:
        now = time.time()
        if self.samples and now - self.samples[-1][0] < self.every_seconds:
            return
        # A process that is gone leaves its samples so far: they still say what it used while it ran.
        with contextlib.suppress(OSError, ValueError):
            self.samples.append((now, cpu_ticks(self.pid)))


def cpu_share_between(samples: Sequence[tuple[float, int]], start: float, end: float) -> float | None:
    """The share of one core used between wall times ``start`` and ``end``, from the first and last sample
    inside; None with fewer than two there."""
    inside = [s for s in samples if start <= s[0] <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return (inside[-1][1] - inside[0][1]) / CLOCK_TICKS_PER_SECOND / (inside[-1][0] - inside[0][0])


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` atomically (a reader sees all of it or no file)."""
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(orjson.dumps(document))
    partial.replace(path)


def read_json(path: Path) -> dict[str, Any] | None:
    """The document at ``path``, or None while there is none."""
    try:
        loaded = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return loaded


def write_mark(path: Path) -> None:
    """Record "first record consumed now": the wall clock and this process's CPU ticks so far."""
    write_json(path, {"wall": time.time(), "cpu_ticks": cpu_ticks()})


# The probe's loop: about 2-3.5 ms of CPU here, twice a second (0.5% of a core, taken from what it measures).
_PROBE = """
import sys, time
out = open(sys.argv[1], "a", buffering=1)
while True:
    began = time.process_time()
    total = 0
    for i in range(50_000):
        total += i * i % 7
    out.write(f"{time.time() * 1000:.0f} {(time.process_time() - began) * 1000:.3f}\\n")
    time.sleep(0.5)
"""


class SpeedProbe:
    """The CPU's speed while a run lasts: see the module docstring. ``samples`` once stopped."""

    def __init__(self, path: Path) -> None:
        self._path = path
        path.unlink(missing_ok=True)
        self._proc = subprocess.Popen([sys.executable, "-c", _PROBE, str(path)], stdin=subprocess.DEVNULL)
        self._samples: list[tuple[float, float]] | None = None

    def stop(self) -> list[tuple[float, float]]:
        """Stop the probe (again: the same answer); (wall ms, the loop's CPU ms) of every time it ran."""
        if self._samples is None:
            self._proc.kill()
            self._proc.wait()
            try:
                self._samples = parse_probe(self._path.read_text())
            except FileNotFoundError:
                self._samples = []
        return self._samples


def parse_probe(text: str) -> list[tuple[float, float]]:
    """The probe's lines, "wall_ms cpu_ms" each; a last line cut short by the kill is left out."""
    samples = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2:
            with contextlib.suppress(ValueError):
                samples.append((float(fields[0]), float(fields[1])))
    return samples
