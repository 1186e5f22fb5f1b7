"""Retry policies: which failures retry, how long each tier waits, and what a retried record carries.

A policy has tiers; tier ``i`` has its own topic ``<source>.<handler>.retry.<name>`` and a delay. After the
last tier an event goes to the dead-letter topic.
"""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass

from processor.errors import ConfigError, ProcessorError

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)(ms|s|m|h)$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``"500ms"``, ``"10s"``, ``"5m"``, ``"1h"`` -> seconds."""
    match = _DURATION.match(text.strip())
    if not match:
        raise ConfigError(f"duration {text!r} is not a number followed by ms, s, m or h")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """The shortest exact spelling: 0.5 -> ``500ms``, 10 -> ``10s``, 120 -> ``2m``."""
    for unit in ("h", "m", "s"):
        size = _UNIT_SECONDS[unit]
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    return f"{round(seconds * 1000)}ms"


@dataclass(frozen=True)
class Retry:
    """A retry policy: fixed ``delays`` per tier, ``jitter`` as a +/- fraction, and what is retryable.

    ``retry_on`` lists the exception classes that are retried; a ``ProcessorError`` decides by its own
    ``retryable`` attribute instead. ``Retry.exponential(...)`` builds the delays from a base, factor and
    cap.
    """

    delays: tuple[str, ...] = ("1s", "10s", "60s")
    jitter: float = 0.0
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        for delay in self.delays:
            if parse_duration(delay) <= 0:
                raise ConfigError(f"retry delay {delay!r} must be > 0")
        if not 0.0 <= self.jitter < 1.0:
            raise ConfigError(f"retry jitter {self.jitter} must be in [0, 1)")
        if len(set(self.tier_names())) != len(self.delays):
            raise ConfigError(f"retry delays {self.delays} name the same tier twice")

    @classmethod
    def exponential(
        cls, base: str = "1s", factor: float = 2.0, cap: str = "5m", tiers: int = 5, jitter: float = 0.2
    ) -> Retry:
        """Delays base, base*factor, ... capped at ``cap``; tiers whose capped delay repeats are merged."""
        if factor < 1.0 or tiers < 1:
            raise ConfigError("exponential retry needs factor >= 1 and tiers >= 1")
        first, limit = parse_duration(base), parse_duration(cap)
        seconds: list[float] = []
        for i in range(tiers):
            delay = min(first * factor**i, limit)
            if delay not in seconds:
                seconds.append(delay)
        return cls(delays=tuple(format_duration(s) for s in seconds), jitter=jitter)

    def tier_names(self) -> tuple[str, ...]:
        return self._tier_names

    @functools.cached_property
    def _tier_names(self) -> tuple[str, ...]:
        # Once per policy: the failure and tracing paths read these per event (parsing them every time took
        # about 6% of a traced worker's CPU).
        return tuple(format_duration(parse_duration(d)) for d in self.delays)

    def delay_seconds(self, tier: int, rng: random.Random | None = None) -> float:
        """The wait before tier ``tier`` runs, with jitter applied."""
        delay = parse_duration(self.delays[tier])
        if self.jitter:
            delay *= 1.0 + (rng or random).uniform(-self.jitter, self.jitter)
        return delay

    def is_retryable(self, exc: BaseException) -> bool:
        if isinstance(exc, ProcessorError):
            return exc.retryable
        return isinstance(exc, self.retry_on)
