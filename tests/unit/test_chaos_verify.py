"""The chaos verifier: units from inputs, per-handler accounting from records read back, side effects from
the services' ledgers, recovery time; and the metrics arithmetic over recorded scrapes."""

from __future__ import annotations

import math

import orjson

from processor.chaos.metrics import crash_tolerance, ever, increase, max_lag, total, window_quantile
from processor.chaos.read import Ledger
from processor.chaos.record import Sample, Series
from processor.chaos.verify import Unit, account, account_effects, recovery_seconds, steady_bound, units_of
from processor.chaos.workload import INPUT_HEADER, PROCESS, Input
from processor.observability.scrape import Scrape
from processor.runtime import headers as h
from processor.runtime.records import InRecord
from processor.topology.topology import load_topology

RUN = "run1"
SPEC = load_topology("topologies.orders").get("charge_payment")


def output(event_id: str, at: float = 10.0, header: str | None = None) -> InRecord:
    return InRecord("payments.captured", 0, 0, int(at * 1000), None, orjson.dumps({"event_id": event_id}),
                  {h.EVENT_ID: (header or event_id).encode()})


def dead(uid_header: str, value: str, reason: str, at: float = 10.0) -> InRecord:
    headers = {uid_header: value.encode(), h.REASON: reason.encode()}
    return InRecord(SPEC.dlq_topic, 0, 0, int(at * 1000), None, b"x", headers)


def units(*specs: tuple[str, str]) -> dict[str, Unit]:
    return {uid: Unit(uid, expect, "order", 1.0) for uid, expect in specs}


def test_units_merge_copies_of_an_event_and_keep_id_less_inputs_apart() -> None:
    inputs = [Input("run1-i0", "run1-e0", "order", b"k", b"{}"), Input("run1-d0", "run1-e0", "duplicate", b"k", b"{}"),
              Input("run1-bad", None, "garbage", None, b"\xff", expect="invalid_json"),
              Input("run1-never", "run1-e9", "order", b"k", b"{}")]
    got = units_of(inputs, {"run1-i0": 5.0, "run1-d0": 3.0, "run1-bad": 4.0})
    assert set(got) == {"run1-e0", "run1-bad"}  # never produced: not a unit
    assert got["run1-e0"].produced_at == 3.0
    assert got["run1-bad"].expect == "invalid_json"


def test_account_finds_lost_repeated_and_wrongly_dead_lettered_units() -> None:
    want = units(("run1-e0", PROCESS), ("run1-e1", PROCESS), ("run1-e2", PROCESS), ("run1-bad", "invalid_json"),
                 ("run1-bad2", "schema_violation"))
    records = [
        output("run1-e0"), output("run1-e0", header="other"),  # repeated, and once without its id header
        dead(h.EVENT_ID, "run1-e1", "retries_exhausted"),  # a valid event may end in the DLQ
        dead(INPUT_HEADER, "run1-bad", "invalid_json"),
        dead(INPUT_HEADER, "run1-bad2", "invalid_json"),  # the wrong reason
        InRecord(SPEC.retry_topics[0], 0, 0, 0, None, b"", {h.EVENT_ID: b"run1-e1"}),
        output("otherrun-e5"),  # another run's output is not ours
    ]
    got = account(SPEC, want, records, RUN)
    assert got.lost == ("run1-e2",)
    assert got.repeated == {"run1-e0": 2}
    assert got.bad_headers == 1
    assert got.processed == 1
    assert got.dead_lettered == 3
    assert got.retries == 1
    assert got.retried == {"run1-e1"}
    assert len(got.unexpected) == 1
    assert "run1-bad2" in got.unexpected[0]
    assert got.done_at["run1-e0"] == 10.0


def test_effects_tell_duplicates_and_explained_re_runs() -> None:
    want = units(("run1-e0", PROCESS), ("run1-e1", PROCESS))
    accounted = account(SPEC, want, [output("run1-e0"), output("run1-e1"),
                                     InRecord(SPEC.retry_topics[0], 0, 0, 0, None, b"", {h.EVENT_ID: b"run1-e1"})], RUN)
    ledger = Ledger(completed={"run1-e0": 2, "run1-e1": 2}, effects={"run1-e0": 1, "run1-e1": 1, "run1-e7": 2})
    got = account_effects("charge_payment", ledger, accounted, crash=False)
    assert got.duplicated == 1
    assert got.without_output == ("run1-e7",)
    assert got.reruns == 2
    assert got.unexplained_reruns == ("run1-e0",)
    assert account_effects("charge_payment", ledger, accounted, crash=True).unexplained_reruns == ()


def test_recovery_is_the_last_slow_unit_after_the_heal() -> None:
    want = {f"u{i}": Unit(f"u{i}", PROCESS, "order", float(i)) for i in range(5)}
    done = [{"u0": 0.2, "u1": 1.2, "u2": 9.0, "u3": 9.5, "u4": 4.3}]
    assert steady_bound(done, want, before=2.0) == 1.0  # p99 of 0.2 s x 3 < the 1 s floor
    assert recovery_seconds(done, want, healed_at=5.0, bound_seconds=1.0) == 4.5
    assert recovery_seconds(done, want, healed_at=9.6, bound_seconds=1.0) == 0.0


def series(name: str, points: list[tuple[float, dict[str, dict[tuple[tuple[str, str], ...], float]]]],
           killed: bool = False) -> Series:
    return Series(name, "worker", name, 0.0, [Sample(at, Scrape(s)) for at, s in points], killed=killed)


def events(n: float) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    labels = (("handler", "a"), ("outcome", "success"))
    return {"processor_events_total": {labels: n}}


def test_counts_sum_each_process_and_killed_ones_give_slack() -> None:
    one = series("one", [(0, events(0)), (1, events(10)), (2, events(20)), (3, events(30)), (4, events(40))],
                 killed=True)
    two = series("two", [(3, events(0)), (5, events(7))])
    assert total([one, two], "processor_events_total", handler="a") == 47
    assert increase([one, two], 2.0, 5.0, "processor_events_total") == 20 + 7
    # the killed one did 10/s: about 30 events in its last 3 s are uncertain
    assert crash_tolerance([one, two], "a") == 31
    assert ever([one, two], lambda s: s.value("processor_events_total") >= 40) == 4


def test_window_quantile_and_max_lag() -> None:
    def histogram(fast: float, slow: float) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
        return {"processor_processing_seconds_bucket": {(("le", "0.1"),): fast, (("le", "1.0"),): fast + slow,
                                                        (("le", "+Inf"),): fast + slow}}

    proc = series("p", [(0, histogram(0, 0)), (10, histogram(100, 0)), (20, histogram(100, 100))])
    assert window_quantile([proc], 0.5, 0, 10, "processor_processing_seconds") == 0.05
    assert window_quantile([proc], 0.5, 10, 20, "processor_processing_seconds") == 0.55
    assert math.isnan(window_quantile([proc], 0.5, 20, 30, "processor_processing_seconds"))
    lag = {"processor_consumer_lag_messages": {(("group", "g"), ("partition", "0"), ("topic", "orders")): 5.0,
                                               (("group", "g"), ("partition", "1"), ("topic", "orders")): 7.0,
                                               (("group", "g"), ("partition", "0"), ("topic", "retry")): 90.0},
           "processor_consumer_lag_seconds": {(("group", "g"), ("partition", "1"), ("topic", "orders")): 3.5}}
    peak = max_lag([series("m", [(1, {}), (2, lag)])], {"orders"})
    assert (peak.messages, peak.messages_at, peak.seconds) == (12.0, 2, 3.5)
