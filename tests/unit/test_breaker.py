from __future__ import annotations

import asyncio

import pytest

from processor.errors import ConfigError
from processor.runtime.breaker import Breaker, BreakerConfig, BreakerState


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make(config: BreakerConfig, clock: FakeClock | None = None) -> tuple[Breaker, FakeClock, list[BreakerState]]:
    clock = clock or FakeClock()
    changes: list[BreakerState] = []
    breaker = Breaker("dep", config, clock=clock, on_change=lambda name, state: changes.append(state))
    return breaker, clock, changes


def calls(breaker: Breaker, outcomes: str) -> None:
    """Record one call per character: 'x' failed, '.' succeeded."""
    for c in outcomes:
        assert breaker.allow()
        breaker.record(c == ".")


def state(breaker: Breaker) -> BreakerState:
    return breaker.state


CONFIG = BreakerConfig(failure_rate=0.5, window_calls=10, window_seconds=30.0, min_calls=4, open_seconds=5.0,
                       half_open_probes=2)


def open_breaker(breaker: Breaker) -> None:
    calls(breaker, "xxxx")
    assert state(breaker) is BreakerState.OPEN


def test_stays_closed_below_min_calls_even_if_all_fail() -> None:
    breaker, _, changes = make(CONFIG)
    calls(breaker, "xxx")
    assert state(breaker) is BreakerState.CLOSED
    assert changes == []


def test_opens_at_the_failure_rate_once_min_calls_reached() -> None:
    breaker, _, changes = make(CONFIG)
    calls(breaker, ".x.")
    assert state(breaker) is BreakerState.CLOSED
    breaker.record(False)  # 2 of 4 failed = 0.5
    assert state(breaker) is BreakerState.OPEN
    assert changes == [BreakerState.OPEN]
    assert not breaker.allow()


def test_stays_closed_below_the_failure_rate() -> None:
    breaker, _, _ = make(CONFIG)
    calls(breaker, "..x..x..x.")  # 3 of 10
    assert state(breaker) is BreakerState.CLOSED


def test_old_calls_fall_out_of_the_count_window() -> None:
    breaker, _, _ = make(CONFIG)
    calls(breaker, "..........")
    calls(breaker, "xxxx")
    # the last 10 calls: 6 ok, 4 failed -> 0.4
    assert state(breaker) is BreakerState.CLOSED
    calls(breaker, "x")
    # the last 10 calls: 5 ok, 5 failed -> 0.5 (counting all 15 calls would give 0.33)
    assert state(breaker) is BreakerState.OPEN


def test_old_calls_fall_out_of_the_time_window() -> None:
    breaker, clock, _ = make(CONFIG)
    calls(breaker, "xx")
    clock.advance(31.0)
    calls(breaker, ".x..")  # 1 of the 4 recent calls failed; the 2 old failures are gone
    assert state(breaker) is BreakerState.CLOSED


def test_calls_inside_the_time_window_count() -> None:
    breaker, clock, _ = make(CONFIG)
    calls(breaker, "xx")
    clock.advance(29.0)
    calls(breaker, ".")
    calls(breaker, "x")  # 3 failures out of 4, all within 30 s
    assert state(breaker) is BreakerState.OPEN


def test_open_turns_half_open_after_open_seconds() -> None:
    breaker, clock, changes = make(CONFIG)
    open_breaker(breaker)
    clock.advance(4.9)
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    clock.advance(0.1)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN]


def test_half_open_admits_only_the_probe_count_at_once() -> None:
    breaker, clock, _ = make(CONFIG)
    open_breaker(breaker)
    clock.advance(5.0)
    assert breaker.allow()
    assert breaker.allow()
    assert not breaker.allow()  # two probes out
    breaker.record(True)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert breaker.allow()  # a slot came back
    assert not breaker.allow()


def test_a_failed_probe_reopens() -> None:
    breaker, clock, changes = make(CONFIG)
    open_breaker(breaker)
    clock.advance(5.0)
    assert breaker.allow()
    breaker.record(False)
    assert state(breaker) is BreakerState.OPEN
    assert not breaker.allow()
    clock.advance(4.0)
    assert state(breaker) is BreakerState.OPEN  # open_seconds count from the reopening
    clock.advance(1.0)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.OPEN, BreakerState.HALF_OPEN]


def test_enough_successful_probes_close_and_reset_the_window() -> None:
    breaker, clock, changes = make(CONFIG)
    open_breaker(breaker)
    clock.advance(5.0)
    assert breaker.allow()
    assert breaker.allow()
    breaker.record(True)
    assert state(breaker) is BreakerState.HALF_OPEN
    breaker.record(True)
    assert state(breaker) is BreakerState.CLOSED
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN, BreakerState.CLOSED]
    calls(breaker, "xxx")  # the failures from before the opening no longer count
    assert state(breaker) is BreakerState.CLOSED


def test_reopened_breaker_needs_all_probes_again() -> None:
    breaker, clock, _ = make(CONFIG)
    open_breaker(breaker)
    clock.advance(5.0)
    calls(breaker, ".")  # one good probe
    calls(breaker, "x")  # then a failed one: open again
    clock.advance(5.0)
    calls(breaker, ".")
    assert state(breaker) is BreakerState.HALF_OPEN  # the earlier good probe does not count
    calls(breaker, ".")
    assert state(breaker) is BreakerState.CLOSED


def test_outcome_reported_while_open_is_ignored() -> None:
    breaker, clock, changes = make(CONFIG)
    open_breaker(breaker)
    breaker.record(True)
    breaker.record(False)
    assert state(breaker) is BreakerState.OPEN
    clock.advance(5.0)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert changes == [BreakerState.OPEN, BreakerState.HALF_OPEN]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"failure_rate": 0.0},
        {"failure_rate": 1.5},
        {"open_seconds": 0},
        {"window_seconds": -1},
        {"min_calls": 0},
        {"half_open_probes": 0},
        {"window_calls": 5, "min_calls": 6},
    ],
)
def test_bad_config_is_rejected(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigError):
        BreakerConfig(**kwargs)  # type: ignore[arg-type]


async def test_wait_until_allowed_returns_once_half_open() -> None:
    config = BreakerConfig(min_calls=2, window_calls=2, open_seconds=0.2, half_open_probes=1)
    breaker = Breaker("dep", config)
    breaker.record(False)
    breaker.record(False)
    assert state(breaker) is BreakerState.OPEN
    await asyncio.wait_for(breaker.wait_until_allowed(), timeout=5.0)
    assert state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allow()  # the waiter holds the only probe slot


async def test_wait_until_allowed_returns_at_once_when_closed() -> None:
    breaker = Breaker("dep", BreakerConfig())
    await asyncio.wait_for(breaker.wait_until_allowed(), timeout=1.0)
    assert state(breaker) is BreakerState.CLOSED
