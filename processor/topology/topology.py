"""Topologies: what a user writes. Handlers, their topics, retry policies and breakers, as plain values.

A topology module declares ``topology = Topology("name")`` and decorates handlers with
``@topology.handler(...)``. Nothing here touches Kafka or Redis; the worker turns these values into running
consumer groups (one Faust app per handler).
"""

from __future__ import annotations

import functools
import importlib
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from processor.errors import ConfigError
from processor.runtime.breaker import BreakerConfig
from processor.topology.policy import BudgetPolicy, Defer, LowerConcurrency
from processor.topology.retry import Retry
from processor.topology.slo import SLO

if TYPE_CHECKING:
    from processor.config import Settings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True, slots=True)
class Output:
    """One record a handler wants produced; ``key`` defaults to the key of the event being handled."""

    topic: str
    value: Mapping[str, Any]
    key: str | bytes | None = None


@dataclass(frozen=True, slots=True)
class Context:
    """What a handler knows about the event in hand."""

    topology: str
    handler: str
    event_id: str
    topic: str
    partition: int
    offset: int
    attempt: int
    key: bytes | None
    headers: Mapping[str, bytes]
    dependencies: Mapping[str, Any]

    def dependency(self, name: str) -> Any:
        """The instance the topology's ``@topology.dependency(name)`` factory made for this worker."""
        try:
            return self.dependencies[name]
        except KeyError:
            raise ConfigError(f"handler {self.handler}: no dependency {name!r} is declared") from None

    @property
    def idempotency_key(self) -> str:
        """Pass this to downstream calls so a rerun after a crash cannot repeat their side effect."""
        return f"{self.topology}:{self.handler}:{self.event_id}"


HandlerFunc = Callable[[dict[str, Any], Context], Awaitable[Sequence[Output] | None]]
DependencyFactory = Callable[["Settings"], Any]
Priority = Literal["normal", "low"]


@dataclass(frozen=True)
class HandlerSpec:
    """One handler as declared: its function and everything the worker needs to run it."""

    name: str
    func: HandlerFunc
    source: str
    schema: str | None
    event_id: str
    retry: Retry
    outputs: tuple[str, ...]
    breaker: str | None
    timeout_seconds: float
    concurrency: int
    priority: Priority = "normal"  # "low": a BudgetPolicy may Defer it while a budget burns

    @functools.cached_property
    def retry_topics(self) -> tuple[str, ...]:
        # Built once: the pipeline reads them for every record it routes or traces.
        return tuple(f"{self.source}.{self.name}.retry.{name}" for name in self.retry.tier_names())

    @property
    def dlq_topic(self) -> str:
        return f"{self.source}.{self.name}.dlq"


@dataclass
class Topology:
    """A named set of handlers; the module-level object a worker loads.

    ``schemas_dir`` holds ``<schema>.json`` files; ``max_event_bytes`` bounds an input record;
    ``dedup_ttl_seconds`` is how long a processed event id is remembered, ``dedup_peak_rate`` the events/s
    per handler its memory is laid out for (processor.runtime.dedup); ``claim_lease_seconds`` how long
    a dead worker's claims keep its in-flight events from another processor (a live worker renews its
    claims while their batch runs, so this is the take-over time after a crash, not a limit on handlers);
    ``redact`` names event fields (at any depth) that never appear in logs.
    """

    name: str
    schemas_dir: Path = field(default_factory=lambda: Path("schemas"))
    max_event_bytes: int = 1_048_576
    dedup_ttl_seconds: int = 7 * 24 * 3600
    dedup_peak_rate: float = 100.0
    # The same as the consumer group's session timeout (processor.runtime.worker): a crashed worker's events are
    # free about when its partitions move.
    claim_lease_seconds: float = 10.0
    partitions: int | None = None
    breakers: Mapping[str, BreakerConfig] = field(default_factory=dict)
    handlers: list[HandlerSpec] = field(default_factory=list)
    dependencies: dict[str, DependencyFactory] = field(default_factory=dict)
    slos: Sequence[SLO] = ()
    budget_policies: Sequence[BudgetPolicy] = ()
    redact: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ConfigError(f"topology name {self.name!r} may hold only letters, digits, '.', '_', '-'")
        if self.dedup_ttl_seconds <= 0 or self.dedup_peak_rate <= 0:
            raise ConfigError(f"topology {self.name}: dedup_ttl_seconds and dedup_peak_rate must be above 0")
        if self.claim_lease_seconds <= 0:
            raise ConfigError(f"topology {self.name}: claim_lease_seconds must be above 0")
        self.schemas_dir = Path(self.schemas_dir)

    def handler(
        self,
        *,
        source: str,
        schema: str | None = None,
        event_id: str = "event_id",
        retry: Retry | None = None,
        outputs: Sequence[str] = (),
        breaker: str | None = None,
        timeout_seconds: float = 10.0,
        concurrency: int = 1,
        name: str | None = None,
        priority: Priority = "normal",
    ) -> Callable[[HandlerFunc], HandlerFunc]:
        """Register ``func`` as a handler of ``source``; see the README for every argument."""

        def register(func: HandlerFunc) -> HandlerFunc:
            spec = HandlerSpec(
                name=name or func.__name__, func=func, source=source, schema=schema, event_id=event_id,
                retry=retry or Retry(), outputs=tuple(outputs), breaker=breaker,
                timeout_seconds=timeout_seconds, concurrency=concurrency, priority=priority,
            )
            self._check(spec)
            self.handlers.append(spec)
            return func

        return register

    def dependency(self, name: str) -> Callable[[DependencyFactory], DependencyFactory]:
        """Register a factory that builds a shared client (``factory(settings)``) once per worker;
        handlers get it with ``ctx.dependency(name)``."""

        def register(factory: DependencyFactory) -> DependencyFactory:
            if name in self.dependencies:
                raise ConfigError(f"dependency {name!r} is declared twice in topology {self.name!r}")
            self.dependencies[name] = factory
            return factory

        return register

    def _check(self, spec: HandlerSpec) -> None:
        for topic in (spec.source, *spec.outputs):
            if not _NAME.match(topic):
                raise ConfigError(f"handler {spec.name}: topic {topic!r} is not a valid topic name")
        if not _NAME.match(spec.name):
            raise ConfigError(f"handler name {spec.name!r} may hold only letters, digits, '.', '_', '-'")
        if any(h.name == spec.name for h in self.handlers):
            raise ConfigError(f"handler {spec.name!r} is declared twice in topology {self.name!r}")
        if spec.breaker is not None and spec.breaker not in self.breakers:
            raise ConfigError(f"handler {spec.name}: breaker {spec.breaker!r} is not in Topology(breakers=...)")
        if spec.concurrency < 1:
            raise ConfigError(f"handler {spec.name}: concurrency must be >= 1")

    def check_policies(self) -> None:
        """Raise ConfigError, in one line, for a BudgetPolicy that names what is not there (run once every
        handler is registered)."""
        slos = {slo.name: slo for slo in self.slos}
        for policy in self.budget_policies:
            slo = slos.get(policy.slo)
            if slo is None:
                raise ConfigError(f"BudgetPolicy: topology {self.name!r} has no SLO {policy.slo!r}")
            for action in policy.then:
                if isinstance(action, LowerConcurrency):
                    spec = self.get(action.handler)
                    if action.to >= spec.concurrency:
                        raise ConfigError(f"BudgetPolicy({policy.slo!r}): LowerConcurrency({spec.name!r}, "
                                          f"{action.to}) is not below its concurrency {spec.concurrency}")
                elif isinstance(action, Defer):
                    spec = self.get(action.handler)
                    if spec.priority != "low":
                        raise ConfigError(f"BudgetPolicy({policy.slo!r}): Defer({spec.name!r}) needs the handler "
                                          "declared with priority='low'")
                    # Deferring grows the very lag the SLO measures: the burn would never fall to undo it.
                    if slo.sli == "lag" and slo.handler in (None, spec.name):
                        raise ConfigError(f"BudgetPolicy({policy.slo!r}): Defer({spec.name!r}) would grow the lag "
                                          "this lag SLO measures; defer a handler it does not cover")

    def get(self, handler: str) -> HandlerSpec:
        for spec in self.handlers:
            if spec.name == handler:
                return spec
        names = ", ".join(h.name for h in self.handlers)
        raise ConfigError(f"topology {self.name!r} has no handler {handler!r} (it has: {names})")

    def group(self, handler: str) -> str:
        """The consumer group of one handler: each handler commits its own offsets."""
        return f"{self.name}.{handler}"

    def topics(self) -> list[str]:
        """Every topic the topology reads or writes, each once, in declaration order."""
        names: dict[str, None] = {}
        for spec in self.handlers:
            for topic in (spec.source, *spec.outputs, *spec.retry_topics, spec.dlq_topic):
                names.setdefault(topic, None)
        return list(names)


def load_topology(module_name: str) -> Topology:
    """Import ``module_name`` and return its ``topology`` attribute."""
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        raise ConfigError(f"cannot import topology module {module_name!r}: {exc}") from None
    topology = getattr(module, "topology", None)
    if not isinstance(topology, Topology):
        raise ConfigError(f"module {module_name!r} has no `topology = Topology(...)` object")
    if not topology.handlers:
        raise ConfigError(f"topology {topology.name!r} in {module_name!r} declares no handlers")
    names = [slo.name for slo in topology.slos]
    if len(set(names)) != len(names):
        raise ConfigError(f"topology {topology.name!r} declares an SLO name twice: {names}")
    for slo in topology.slos:
        if slo.handler is not None:
            topology.get(slo.handler)  # raises ConfigError naming the handlers there are
    return topology
