from __future__ import annotations

import pytest

from processor.observability.burrow import LagEvaluator, Sample, Status, evaluate, worst


def samples(*rows: tuple[int, int], members: int = 1) -> list[Sample]:
    return [Sample(committed, lag, members) for committed, lag in rows]


def feed(ev: LagEvaluator, group: str, topic: str, partition: int, rows: list[Sample]) -> None:
    for s in rows:
        ev.add(group, topic, partition, s)


def test_any_zero_lag_sample_is_ok_even_if_otherwise_stalled() -> None:
    assert evaluate(samples((10, 5), (10, 0), (10, 7))) == "OK"


def test_no_progress_with_members_is_stall() -> None:
    assert evaluate(samples((10, 5), (10, 6), (10, 8), members=2)) == "STALL"


def test_no_progress_without_members_is_stop() -> None:
    assert evaluate(samples((10, 5), (10, 6), (10, 8), members=0)) == "STOP"


def test_no_progress_with_constant_lag_is_still_stuck() -> None:
    assert evaluate(samples((10, 5), (10, 5), (10, 5), members=1)) == "STALL"


def test_status_uses_the_newest_sample_membership() -> None:
    rows = [Sample(10, 5, 3), Sample(10, 6, 3), Sample(10, 7, 0)]
    assert evaluate(rows) == "STOP"


def test_offsets_moving_and_lag_growing_at_every_sample_is_warn() -> None:
    assert evaluate(samples((10, 5), (12, 6), (15, 9), (20, 12))) == "WARN"


def test_lag_growing_with_one_dip_is_not_warn() -> None:
    assert evaluate(samples((10, 5), (12, 6), (15, 4), (20, 12))) == "OK"


def test_draining_is_ok() -> None:
    assert evaluate(samples((10, 50), (20, 40), (30, 30), (40, 20))) == "OK"


def test_too_few_samples_is_ok() -> None:
    ev = LagEvaluator(window=10, min_samples=3)
    feed(ev, "g", "t", 0, samples((10, 5), (10, 9), members=0))
    assert ev.partition_status("g", "t", 0) == "OK"
    ev.add("g", "t", 0, Sample(10, 12, 0))
    assert ev.partition_status("g", "t", 0) == "STOP"


def test_unknown_partition_and_group_are_ok() -> None:
    ev = LagEvaluator()
    assert ev.partition_status("g", "t", 0) == "OK"
    assert ev.group_status("nobody") == "OK"


def test_group_status_is_the_worst_partition() -> None:
    ev = LagEvaluator(window=5, min_samples=3)
    feed(ev, "g", "t", 0, samples((10, 5), (20, 3), (30, 1)))  # draining: OK
    feed(ev, "g", "t", 1, samples((10, 5), (12, 6), (14, 8)))  # growing: WARN
    feed(ev, "g", "t.retry.1s", 0, samples((10, 5), (10, 6), (10, 8), members=1))  # STALL
    feed(ev, "other", "t", 0, samples((10, 5), (10, 6), (10, 8), members=0))  # STOP, another group
    assert ev.partition_status("g", "t", 1) == "WARN"
    assert ev.group_status("g") == "STALL"
    assert ev.group_status("other") == "STOP"


def test_window_length_drops_old_samples() -> None:
    ev = LagEvaluator(window=3, min_samples=3)
    feed(ev, "g", "t", 0, samples((10, 0), (10, 4), (10, 5), members=1))
    assert ev.partition_status("g", "t", 0) == "OK"  # the zero-lag sample is still in the window
    ev.add("g", "t", 0, Sample(10, 6, 1))
    assert ev.partition_status("g", "t", 0) == "STALL"  # it fell out


def test_window_drop_lets_a_stall_recover() -> None:
    ev = LagEvaluator(window=3, min_samples=3)
    feed(ev, "g", "t", 0, samples((10, 5), (10, 6), (10, 7)))
    assert ev.partition_status("g", "t", 0) == "STALL"
    feed(ev, "g", "t", 0, samples((20, 6), (30, 5), (40, 4)))
    assert ev.partition_status("g", "t", 0) == "OK"


def test_forget_drops_the_group() -> None:
    ev = LagEvaluator(window=3, min_samples=3)
    feed(ev, "g", "t", 0, samples((10, 5), (10, 6), (10, 7), members=0))
    assert ev.group_status("g") == "STOP"
    ev.forget("g")
    assert ev.group_status("g") == "OK"


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [([], "OK"), (["OK", "WARN"], "WARN"), (["STOP", "STALL", "WARN"], "STOP"), (["ERR", "STOP"], "ERR")],
)
def test_worst_orders_by_severity(statuses: list[Status], expected: Status) -> None:
    assert worst(statuses) == expected
