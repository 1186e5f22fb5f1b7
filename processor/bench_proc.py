"""What `processor bench` reads from /proc, and the small files its variant processes leave behind.

Each variant process writes a *mark* when it consumes its first record (wall clock and its own CPU ticks
then), and the loop variants a *result* when they are done. Both are written to a temporary name and
renamed, so the bench never reads half a file.
"""

from __future__ import annotations

import os
import time
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
