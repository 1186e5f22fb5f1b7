"""CallTimer: one timer for a run of calls, each call still limited to its own start plus the limit."""

from __future__ import annotations

import asyncio

import pytest

from processor.runtime.timeouts import CallTimer


async def test_calls_on_time_return_their_value_and_close_leaves_no_timer() -> None:
    timer = CallTimer(0.5)
    assert [await timer.run(asyncio.sleep(0.01, result=n)) for n in range(3)] == [0, 1, 2]
    timer.close()
    await asyncio.sleep(0.6)  # a timer left behind would cancel this task now
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_a_slow_call_times_out_at_its_own_start_plus_the_limit() -> None:
    loop = asyncio.get_running_loop()
    timer = CallTimer(0.2)
    for _ in range(3):  # quick calls that, together, outlast the first call's deadline
        await timer.run(asyncio.sleep(0.08))
    started = loop.time()
    with pytest.raises(TimeoutError):
        await timer.run(asyncio.sleep(10))
    assert loop.time() - started >= 0.2
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    assert await timer.run(asyncio.sleep(0, result="next")) == "next"  # usable after a timeout
    timer.close()


async def test_an_idle_gap_between_calls_does_not_cut_the_next_call_short() -> None:
    loop = asyncio.get_running_loop()
    timer = CallTimer(0.2)
    await timer.run(asyncio.sleep(0))
    await asyncio.sleep(0.15)  # the timer armed by the first call fires during the next one
    started = loop.time()
    assert await timer.run(asyncio.sleep(0.1, result="ok")) == "ok"
    assert loop.time() - started >= 0.1
    timer.close()


async def test_a_cancel_from_outside_stays_a_cancel() -> None:
    async def calls() -> None:
        timer = CallTimer(5.0)
        try:
            await timer.run(asyncio.sleep(10))
        finally:
            timer.close()

    task = asyncio.create_task(calls())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_call_that_swallows_the_cancel_returns_and_leaves_no_cancel_pending() -> None:
    async def stubborn() -> str:
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            return "swallowed"
        return "slept"

    timer = CallTimer(0.05)
    assert await timer.run(stubborn()) == "swallowed"
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0.1)  # and it is not cancelled later either
    timer.close()
