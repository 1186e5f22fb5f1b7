"""Chaos experiments: the experiments. Each is a few lines: a hypothesis in words, a fault, a workload, the
pages it should raise (or none), and the checks that show its fault really happened.

Sizes and times are chosen for a 3-node Kafka cluster on two cores: a three-handler worker takes ~20 s to
join its groups, a crashed replica's in-flight claims wait out the 10 s claim lease, and the slowest retry tier of
``topologies.orders`` is 30 s. ``quick`` marks the bounded subset ``make test`` runs.
"""

from __future__ import annotations

from collections.abc import Callable

from processor.chaos.broker_faults import KillBroker, PauseBroker, RestartBroker, RollingBrokerRestart
from processor.chaos.faults import (
    DependencyOutage,
    KillReplica,
    Pause,
    PoisonMix,
    RedisRestart,
    RollingRestart,
    ScaleOutIn,
    StopConsumers,
    WorkerEnv,
)
from processor.chaos.metrics import ever, window_quantile
from processor.chaos.model import Check, CheckResult, Experiment, Observed
from processor.observability.scrape import Scrape

LAG_STOP = "ProcessorConsumerLagStop"
LAG_BURN = "ProcessorLagBudgetBurn"
LATENCY_BURN = "ProcessorLatencyBudgetBurn"
FAILOVER = (
    "ProcessorLatencyBudgetBurn is tolerated here: produce requests to a partition whose leader is gone wait "
    "for the new leader's election (and acks=all for the in-sync replicas), so the batches in flight then "
    "take seconds, past the 500 ms objective; with the SLO windows shrunk to minutes that burst pages."
)
CATCH_UP = (
    "ProcessorLatencyBudgetBurn is tolerated here: events in flight during the outage count it in their "
    "processing time, and the backlog is then processed in batches of up to 500 whose events each count the "
    "rest of their batch (processor_processing_seconds ends when the batch's outputs are acknowledged). With "
    "the SLO windows shrunk to minutes that burst is not diluted as an hour of traffic would dilute it."
)


def seen(name: str, test: Callable[[Scrape], bool], workers_only: bool = True) -> Check:
    """A check that ``test`` held in some scrape (of a worker, or of any process)."""

    def check(obs: Observed) -> CheckResult:
        at = ever(obs.workers() if workers_only else obs.series, test)
        return CheckResult(name, at is not None, f"first seen {at - obs.started_at:.1f}s after the first scrape"
                           if at is not None else "never seen")

    return check


def retried(obs: Observed) -> CheckResult:
    n = sum(a.retries for a in obs.accounts)
    return CheckResult("the injected failures were retried", n > 0, f"{n} records sent to retry tiers")


def no_dead_letters(handler: str) -> Check:
    def check(obs: Observed) -> CheckResult:
        n = obs.account(handler).dlq_entries
        return CheckResult(f"nothing of {handler} burned into its DLQ", n == 0, f"{n} DLQ entries")

    return check


def slower_during_fault(at_least_ms: float) -> Check:
    def check(obs: Observed) -> CheckResult:
        injects = [m.at for m in obs.timeline if m.kind == "inject"]
        heals = [m.at for m in obs.timeline if m.kind == "heal"]
        if not injects or not heals:
            return CheckResult("the injected latency shows in p99", False, "no fault window on the timeline")
        p99 = window_quantile(obs.workers(), 0.99, min(injects), max(heals), "processor_processing_seconds") * 1000
        return CheckResult("the injected latency shows in p99", p99 >= at_least_ms,
                           f"p99 {p99:.0f} ms during the fault (>= {at_least_ms:.0f} ms expected)")

    return check


def acted_then_undone(action: str) -> Check:
    """A check that a budget policy's ``action`` came into force on a worker and was undone by its last scrape."""

    def check(obs: Observed) -> CheckResult:
        def active(s: Scrape) -> bool:
            return s.value("processor_budget_policy_active", action=action) > 0

        at = ever(obs.workers(), active)
        last = [s.samples[-1].scrape for s in obs.workers() if s.samples and not s.killed]
        undone = bool(last) and not any(active(scrape) for scrape in last)
        detail = "never acted" if at is None else (
            f"acted {at - obs.started_at:.1f}s after the first scrape; "
            + ("undone by the end" if undone else "still in force at the end"))
        return CheckResult(f"the budget policy's {action} acted and was undone", at is not None and undone, detail)

    return check


def joined(name: str) -> Check:
    def check(obs: Observed) -> CheckResult:
        held = max((x.scrape.value("processor_assigned_partitions") for s in obs.workers() if s.name == name
                    for x in s.samples), default=0.0)
        return CheckResult(f"{name} held partitions", held > 0, f"at most {held:.0f} partitions")

    return check


def redis_down(s: Scrape) -> bool:
    return "processor_dependency_up" in s.samples and s.value("processor_dependency_up", dependency="redis") == 0


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(
        "handler-exceptions",
        "inventory and shipping calls fail 20% of the time, payment 2%: retry tiers absorb them; each event is "
        "processed or, after every tier failed, dead-lettered, once; no page",
        WorkerEnv(env={"PROCESSOR_SIM_INVENTORY_FAILURE_RATE": "0.2", "PROCESSOR_SIM_SHIPPING_FAILURE_RATE": "0.2",
                       "PROCESSOR_SIM_PAYMENT_GATEWAY_FAILURE_RATE": "0.02"},
                  text="inventory and shipping fail 20% of calls, the payment gateway 2%"),
        drain_seconds=90.0, checks=(retried,),
        notes=("The payment gateway fails less: its breaker opens at 50% of at least 10 calls, which random "
               "failures reach by chance now and then at 10% and more; the events it then holds are an outage, "
               "not the exceptions this experiment is about (dependency-outage is that experiment).",),
    ),
    Experiment(
        "handler-latency",
        "the payment gateway answers in 600 ms, above the 500 ms latency objective: nothing is lost, the "
        "latency SLO burns and pages, and the page clears once the load has passed",
        WorkerEnv(env={"PROCESSOR_SIM_PAYMENT_GATEWAY_LATENCY_MS": "600"}, text="payment gateway latency 600 ms"),
        events=1000, duration=10.0, pages=frozenset({LATENCY_BURN}), checks=(slower_during_fault(600.0),), quick=True,
    ),
    Experiment(
        "sigkill-replica",
        "a replica killed mid-stream and replaced: its partitions move, its in-flight events run again after "
        "the 10 s claim lease with their side effects once (idempotency keys); no page",
        KillReplica(at=4.0, restart_after=1.0), quick=True,
        # 10 ms calls: the killed replica most likely has handlers mid-call (the crash window is exercised),
        # while a backlog batch of 500 at concurrency 16 still takes under the 500 ms objective.
        worker_env={"PROCESSOR_SIM_LATENCY_MS": "10"},
    ),
    Experiment(
        "rolling-restart",
        "every replica replaced in turn (SIGTERM, graceful): in-flight batches finish and commit, nothing is "
        "lost or repeated; no page but the catch-up's latency burn (see the note)",
        RollingRestart(at=3.0), events=3000, duration=60.0, time_limit=360.0,
        may_page=frozenset({LATENCY_BURN}), notes=(CATCH_UP,),
    ),
    Experiment(
        "redis-restart",
        "Redis stopped for 5 s and started again with its append-only file: workers wait (never skip dedup), "
        "then go on with every claim and done-mark intact; no page but the catch-up's latency burn (see the note)",
        RedisRestart(at=5.0, down=5.0), persistent_redis=True, may_page=frozenset({LATENCY_BURN}),
        checks=(seen("workers reported Redis down", redis_down),),
        notes=(CATCH_UP, "Redis runs with --appendonly yes --appendfsync always here: a restarted Redis without "
               "persistence comes back without the dedup state (and the services' ledgers), which is a "
               "deployment error (dedup lasts as long as Redis keeps its done-marks), not an outage to ride out.",),
    ),
    Experiment(
        "redis-pause",
        "Redis frozen (SIGSTOP) for 35 s, longer than the 10 s claim lease: workers report it down and wait; "
        "afterwards nothing is lost and no side effect happens twice; no page but the catch-up's latency burn",
        Pause(service="redis", at=5.0, seconds=35.0), events=2250, duration=45.0, time_limit=360.0,
        may_page=frozenset({LATENCY_BURN}), notes=(CATCH_UP,),
        checks=(seen("workers reported Redis down", redis_down),),
    ),
    Experiment(
        "broker-pause",
        "every broker frozen (SIGSTOP) for 8 s: producers and consumers wait and resume; no page",
        Pause(service="kafka", at=5.0, seconds=8.0),
    ),
    Experiment(
        "broker-leader-kill",
        "the broker leading the source's partition 0 is SIGKILLed under load and started again 10 s later: "
        "leadership moves to an in-sync replica, producers and consumers follow it; nothing acknowledged is "
        "lost, no side effect happens twice; no page but the failover's latency burn",
        KillBroker(target="leader", at=5.0, restart_after=10.0), events=2000, duration=25.0, time_limit=360.0,
        may_page=frozenset({LATENCY_BURN}), notes=(FAILOVER,),
    ),
    Experiment(
        "broker-restart",
        "the source partition's leader stopped (controlled shutdown) and started 10 s later on its durable "
        "log: it catches up from its own log and rejoins the in-sync set; nothing lost or repeated",
        RestartBroker(at=5.0, down=10.0), events=2000, duration=25.0, time_limit=360.0,
        may_page=frozenset({LATENCY_BURN}), notes=(FAILOVER,),
    ),
    Experiment(
        "broker-rolling-restart",
        "every broker restarted in turn (controlled shutdown, start, back in sync, next), as an upgrade does: "
        "the cluster keeps taking writes throughout; nothing lost or repeated",
        RollingBrokerRestart(at=3.0), events=4000, duration=80.0, time_limit=480.0,
        may_page=frozenset({LATENCY_BURN}), notes=(FAILOVER,),
    ),
    Experiment(
        "broker-leader-pause",
        "the source partition's leader frozen (SIGSTOP) for 15 s, past the 9 s broker session timeout: the "
        "controller fences it and moves its leaderships; on SIGCONT it rejoins as a follower; nothing lost "
        "or repeated",
        PauseBroker(at=5.0, seconds=15.0), events=2000, duration=25.0, time_limit=360.0,
        may_page=frozenset({LATENCY_BURN}), notes=(FAILOVER,),
    ),
    Experiment(
        "controller-failover",
        "the active KRaft controller is SIGKILLed under load: the other two voters elect a new one, metadata "
        "and group coordination carry on, and the old controller rejoins as a follower; nothing lost or "
        "repeated",
        KillBroker(target="controller", at=5.0, restart_after=10.0), events=2000, duration=25.0,
        time_limit=360.0, may_page=frozenset({LATENCY_BURN}), notes=(FAILOVER,),
    ),
    Experiment(
        "dependency-outage",
        "the payment gateway fails every call for 50 s: its breaker opens and charge_payment's partitions "
        "pause instead of burning events into retries and the DLQ; its lag passes the 30 s objective, which "
        "pages (lag burn); after recovery the backlog drains and the page clears",
        DependencyOutage(service="payment-gateway", at=4.0, seconds=50.0), events=1000, duration=10.0,
        pages=frozenset({LAG_BURN}), may_page=frozenset({LATENCY_BURN}),
        checks=(seen("the breaker opened", lambda s: s.value("processor_circuit_opened_total",
                                                               breaker="payment-gateway") > 0),
                seen("partitions paused by the breaker", lambda s: s.value(
                    "processor_paused_partitions", handler="charge_payment", reason="breaker") > 0),
                no_dead_letters("charge_payment")),
    ),
    Experiment(
        "budget-policy",
        "the payment gateway answers 600 ms slower for 20 s under a steady load: the latency SLO burns and "
        "pages, and the budget policy of topologies.orders_guarded acts (retries 4x later, charge_payment at 4 "
        "calls at once, notify_shipping deferred); once the last minute is healthy it is undone and "
        "notify_shipping catches up; nothing lost; the page clears",
        DependencyOutage(service="payment-gateway", at=5.0, seconds=20.0, slow_ms=600),
        topology="topologies.orders_guarded", events=3000, duration=100.0, drain_seconds=120.0, time_limit=480.0,
        pages=frozenset({LATENCY_BURN}), may_page=frozenset({LAG_BURN}),
        notes=("ProcessorLagBudgetBurn is tolerated here: the deferral is the policy's trade. notify_shipping, "
               "deferred for about a minute under the steady load, holds some 2000 events past the 30 s lag "
               "objective of the topology-wide lag SLO, which pages until they drain. A deployment that "
               "defers a handler gives it a lag SLO of its own, as loose as its users allow.",),
        checks=(seen("notify_shipping deferred by the policy", lambda s: s.value(
                    "processor_paused_partitions", handler="notify_shipping", reason="budget") > 0),
                acted_then_undone("defer:notify_shipping"), acted_then_undone("stretch_backoff")),
    ),
    Experiment(
        "stalled-partition",
        "each replica's first partition silently stops being fetched (a failpoint pauses it behind its queues' "
        "back, and again at every resume) while events arrive on it: the worker reports it stalled, seeks it, "
        "then leaves and rejoins its group, and the partition is consumed again; nothing lost or repeated",
        WorkerEnv(env={"PROCESSOR_FAILPOINT_STALL": "sticky", "PROCESSOR_STALL_SECONDS": "5"},
                  text="PROCESSOR_FAILPOINT_STALL=sticky: a partition's fetch stops 5 s after it is assigned"),
        events=1500, duration=30.0, time_limit=360.0,
        checks=(seen("a partition was reported stalled", lambda s: s.value("processor_stalled_partitions") > 0),
                seen("the worker sought it", lambda s: s.value("processor_stall_recoveries_total", action="seek") > 0),
                seen("the worker rejoined its group",
                     lambda s: s.value("processor_stall_recoveries_total", action="rejoin") > 0)),
    ),
    Experiment(
        "poison-messages",
        "malformed JSON, schema violations, wrong types, unknown fields, binary garbage, null values, missing "
        "ids are dead-lettered with their reason; huge and key-less orders and one event id on two partitions "
        "are processed once; no page",
        PoisonMix(), events=600, duration=6.0, duplicates=50, poison=True, quick=True,
    ),
    Experiment(
        "oversized-message",
        "an order above max_event_bytes (1 MiB) is dead-lettered as oversized and the orders behind it on "
        "its partition are processed",
        PoisonMix(text="one order of 1.1 MB (above max_event_bytes) among ordinary ones"), events=500, duration=5.0,
        oversized=1, drain_seconds=30.0,
        notes=("The dead letter of an input above the producer's message.max.bytes cannot carry the whole "
               "record: it keeps a prefix and the original size (processor.kafka.producer). Before that, "
               "produce() raised and the partition's task died silently, stalling everything behind the record.",),
    ),
    Experiment(
        "scale-out-in",
        "a third replica joins while events flow, takes partitions, and leaves again (SIGTERM): nothing is "
        "lost or repeated; no page",
        ScaleOutIn(at=3.0, hold=5.0), events=2000, duration=40.0, replicas=2, time_limit=360.0,
        checks=(joined("worker-3"),),
    ),
    Experiment(
        "stop-consumers",
        "every replica stopped for 100 s while events keep arriving: the lag monitor rates the groups STOP and "
        "that page fires, as does the lag SLO's burn; after the restart the backlog drains and both clear",
        StopConsumers(at=5.0, seconds=100.0), events=2600, duration=130.0, time_limit=480.0,
        pages=frozenset({LAG_STOP, LAG_BURN}), may_page=frozenset({LATENCY_BURN}), notes=(CATCH_UP,),
        checks=(seen("the monitor rated a group STOP", lambda s: s.value("processor_consumer_lag_status",
                                                                        status="STOP") > 0, workers_only=False),),
    ),
)


def by_name(name: str) -> list[Experiment]:
    """``all``, ``quick`` (the ``make test`` subset) or one experiment's name."""
    if name == "all":
        return list(EXPERIMENTS)
    if name == "quick":
        return [e for e in EXPERIMENTS if e.quick]
    chosen = [e for e in EXPERIMENTS if e.name == name]
    if not chosen:
        raise KeyError(name)
    return chosen
