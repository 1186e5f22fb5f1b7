"""`processor bench`: a stalled variant fails fast with what it saw, and a loop variant reports done only
once every output's delivery has been reported."""

from __future__ import annotations

from pathlib import Path

from processor.bench.loops import LoopSpec, Tally
from processor.bench.proc import read_json, write_json
from processor.bench.stall import STALL_SECONDS, START_SECONDS, StallWatch, loop_count, own_count, progress_path


def test_progress_keeps_a_variant_alive_however_slow() -> None:
    watch = StallWatch(0.0)
    for second in range(1, 600):
        assert watch.check(second // 20, float(second)) is None  # one more output every 20 s


def test_no_new_output_for_the_stall_window_fails() -> None:
    watch = StallWatch(0.0)
    assert watch.check(10, 5.0) is None
    assert watch.check(10, 5.0 + STALL_SECONDS) is None
    assert watch.check(10, 5.0 + STALL_SECONDS + 1) == f"no progress for {STALL_SECONDS + 1:.0f}s, stuck at 10"
    assert watch.check(11, 5.0 + STALL_SECONDS + 2) is None  # moving again: the window restarts


def test_start_up_has_its_own_longer_allowance() -> None:
    watch = StallWatch(100.0)
    assert watch.check(0, 100.0 + STALL_SECONDS + 5) is None
    assert watch.check(0, 100.0 + START_SECONDS) is None
    assert watch.check(0, 101.0 + START_SECONDS) == f"no progress {START_SECONDS + 1:.0f}s after its start"


def spec(tmp_path: Path, events: int) -> LoopSpec:
    return LoopSpec(source="in", output="out", group="g", events=events, mark_file=str(tmp_path / "b.mark"),
                    result_file=str(tmp_path / "b.result"), state_dir=str(tmp_path))


def test_a_producing_loop_reports_done_only_after_its_last_delivery_report(tmp_path: Path) -> None:
    s = spec(tmp_path, 3)
    tally = Tally(s)
    for _ in range(3):
        tally.done(0.001)
    assert read_json(Path(s.result_file)) is None  # every record handled, two outputs still unacknowledged
    tally.delivered(None)
    tally.delivered("KafkaError{code=MSG_TIMED_OUT}")
    assert read_json(Path(s.result_file)) is None
    tally.delivered(None)
    result = read_json(Path(s.result_file))
    assert result is not None
    assert (result["count"], result["acked"], result["failed_deliveries"]) == (3, 2, 1)
    assert result["first_delivery_error"] == "KafkaError{code=MSG_TIMED_OUT}"


def test_a_consume_only_loop_reports_at_its_last_record(tmp_path: Path) -> None:
    s = spec(tmp_path, 2)
    tally = Tally(s, produces=False)
    tally.done(0.001)
    assert read_json(Path(s.result_file)) is None
    tally.done(0.001)
    assert read_json(Path(s.result_file)) is not None


def test_a_failure_quotes_the_variants_own_count(tmp_path: Path) -> None:
    progress = progress_path(tmp_path / "b.result")
    assert progress == tmp_path / "b.progress"
    assert loop_count(progress) == 0
    assert own_count(progress, None, None) == "it reported no count yet"
    write_json(progress, {"count": 50000, "acked": 49990, "failed_deliveries": 10, "first_delivery_error": "boom"})
    assert loop_count(progress) == 50000
    assert own_count(progress, None, None) == ("it handled 50000, 49990 outputs acknowledged, 10 deliveries failed "
                                               "(first: boom)")
    assert own_count(None, None, None) == "it keeps no count"
    assert own_count(None, "http://127.0.0.1:1/metrics", "t").startswith("its /metrics did not answer")
