"""Chaos experiments: the verifier. Every input of the run accounted for, per handler, from what is on the
topics; side effects from the simulated services' ledgers; and the workers' own counts held against both.

The unit of account is the event id for a valid event (copies of it, same partition or not, are one
unit: dedup must process it once) and the input id for a record without a usable event id (each such
record must be dead-lettered on its own). Per handler a unit is accounted for by an output or a dead
letter. More than one is a repeat: allowed only where processor.runtime.dedup says outputs may repeat
(a worker killed in a crash window), and then every copy must carry the event id header.

Side effects: the services keep one ``effects`` entry per idempotency key, so a duplicated effect is an
entry above 1; ``completed`` counts successful calls, so an entry above 1 is a handler that ran again.
A re-run is explained by a retry of that event (an attempt that timed out after its call went through
is retried by design) or by a crash fault; anything else is a failure.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import orjson

from processor.chaos.read import Ledger
from processor.chaos.workload import INPUT_HEADER, PROCESS, Input
from processor.runtime import headers as h
from processor.runtime.records import InRecord
from processor.topology.topology import HandlerSpec


@dataclass(frozen=True)
class Unit:
    """Something every handler must account for exactly once."""

    uid: str
    expect: str
    kind: str
    produced_at: float  # the first copy's produce time (seconds since the epoch)


def units_of(inputs: Iterable[Input], produced_at: Mapping[str, float]) -> dict[str, Unit]:
    """The units of the inputs that were produced."""
    units: dict[str, Unit] = {}
    for record in inputs:
        at = produced_at.get(record.input_id)
        if at is None:
            continue
        uid = record.event_id or record.input_id
        first = units.get(uid)
        if first is None or at < first.produced_at:
            units[uid] = Unit(uid, record.expect, record.kind, at)
    return units


@dataclass(frozen=True)
class HandlerAccount:
    """How one handler accounted for the run's units."""

    handler: str
    units: int
    processed: int
    dead_lettered: int
    lost: tuple[str, ...]
    repeated: Mapping[str, int]  # uid -> outputs + dead letters, where above 1
    unexpected: tuple[str, ...]  # "uid: expected X, got Y"
    bad_headers: int  # outputs whose event id header is not their event id
    outputs: int
    dlq_entries: int
    retries: int
    retried: frozenset[str]
    done_at: Mapping[str, float]  # uid -> when its first output or dead letter was written (s)


def _ours(uid: str | None, run_id: str) -> bool:
    return uid is not None and uid.startswith(run_id + "-")


def _output_id(record: InRecord) -> str | None:
    try:
        value = orjson.loads(record.value or b"")
    except orjson.JSONDecodeError:
        return h.text(record.headers, h.EVENT_ID)
    event_id = value.get("event_id") if isinstance(value, dict) else None
    return str(event_id) if event_id is not None else h.text(record.headers, h.EVENT_ID)


def failure_uid(record: InRecord) -> str | None:
    """The unit of a retry or dead-letter record: its event id, else the input id it carries."""
    return h.text(record.headers, h.EVENT_ID) or h.text(record.headers, INPUT_HEADER)


def account(spec: HandlerSpec, units: Mapping[str, Unit], records: Sequence[InRecord], run_id: str) -> HandlerAccount:
    """Hold one handler's outputs, retries and dead letters against the units."""
    outputs, dead, retried = Counter[str](), Counter[str](), set[str]()
    reasons: dict[str, set[str]] = defaultdict(set)
    done_at: dict[str, float] = {}
    bad_headers = retries = 0
    for record in records:
        if record.topic in spec.outputs:
            uid = _output_id(record)
            if not _ours(uid, run_id) or uid is None:
                continue
            outputs[uid] += 1
            bad_headers += h.text(record.headers, h.EVENT_ID) != uid
        elif record.topic == spec.dlq_topic or record.topic in spec.retry_topics:
            uid = failure_uid(record)
            if not _ours(uid, run_id) or uid is None:
                continue
            if record.topic in spec.retry_topics:
                retries += 1
                retried.add(uid)
                continue
            dead[uid] += 1
            reasons[uid].add(h.text(record.headers, h.REASON) or "?")
        else:
            continue
        done_at[uid] = min(done_at.get(uid, math.inf), record.timestamp_ms / 1000)
    lost = tuple(sorted(u for u in units if outputs[u] + dead[u] == 0))
    repeated = {u: outputs[u] + dead[u] for u in units if outputs[u] + dead[u] > 1}
    unexpected = []
    for uid, unit in units.items():
        if unit.expect != PROCESS and (outputs[uid] or reasons[uid] - {unit.expect}):
            got = "an output" if outputs[uid] else ", ".join(sorted(reasons[uid]))
            unexpected.append(f"{uid} ({unit.kind}): expected dead letter {unit.expect}, got {got}")
    return HandlerAccount(
        handler=spec.name, units=len(units), processed=sum(1 for u in units if outputs[u]),
        dead_lettered=sum(1 for u in units if dead[u] and not outputs[u]), lost=lost, repeated=repeated,
        unexpected=tuple(unexpected), bad_headers=bad_headers, outputs=sum(outputs.values()),
        dlq_entries=sum(dead.values()), retries=retries, retried=frozenset(retried),
        done_at={u: t for u, t in done_at.items() if u in units},
    )


@dataclass(frozen=True)
class EffectsAccount:
    """One handler's side effects, from its service's ledger."""

    handler: str
    effects: int
    duplicated: int  # effects performed more than once for one key
    reruns: int  # event ids whose handler completed its call more than once
    unexplained_reruns: tuple[str, ...]  # re-runs with neither a retry nor a crash fault to explain them
    without_output: tuple[str, ...]  # effects of events the handler never output (lost or dead-lettered)


def account_effects(handler: str, ledger: Ledger, accounted: HandlerAccount, crash: bool) -> EffectsAccount:
    """Hold a handler's ledger against what the handler output."""
    reruns = sorted(e for e, n in ledger.completed.items() if n > 1)
    unexplained = tuple(e for e in reruns if e not in accounted.retried and not crash)
    processed = set(accounted.done_at) - set(accounted.lost)
    return EffectsAccount(
        handler=handler, effects=len(ledger.effects), duplicated=sum(max(0, n - 1) for n in ledger.effects.values()),
        reruns=len(reruns), unexplained_reruns=unexplained,
        without_output=tuple(sorted(e for e in ledger.effects if e not in processed)),
    )


def recovery_seconds(done_at: Iterable[Mapping[str, float]], units: Mapping[str, Unit], healed_at: float,
                     bound_seconds: float) -> float:
    """Seconds from the last heal until the last unit that took longer than ``bound_seconds`` (from its
    production to the last handler's output or dead letter) was done; 0 when none was slow after it."""
    finished: dict[str, float] = {}
    for per_handler in done_at:
        for uid, at in per_handler.items():
            finished[uid] = max(finished.get(uid, 0.0), at)
    slow = [at for uid, at in finished.items() if uid in units and at - units[uid].produced_at > bound_seconds]
    return max(0.0, max(slow, default=healed_at) - healed_at)


def steady_bound(done_at: Iterable[Mapping[str, float]], units: Mapping[str, Unit], before: float,
                 floor_seconds: float = 1.0) -> float:
    """The delay a unit may take in the steady state: 3 x the p99 delay of the units done before the fault
    began (``before``), and at least ``floor_seconds``."""
    finished: dict[str, float] = {}
    for per_handler in done_at:
        for uid, at in per_handler.items():
            finished[uid] = max(finished.get(uid, 0.0), at)
    delays = sorted(at - units[uid].produced_at for uid, at in finished.items() if uid in units and at < before)
    if not delays:
        return floor_seconds
    return max(floor_seconds, 3 * delays[min(len(delays) - 1, int(0.99 * len(delays)))])
