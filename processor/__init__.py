"""processor: a Kafka stream processor with SRE built in.

Write a topology module with ``Topology`` and ``@topology.handler``; run it with ``processor worker``.
"""

from processor.config import Secret, Settings
from processor.errors import (
    ConfigError,
    DependencyUnavailable,
    FatalError,
    HandlerError,
    InvalidEvent,
    ProcessorError,
    RetryableError,
    StackError,
)
from processor.runtime.breaker import BreakerConfig, BreakerState
from processor.topology.policy import BudgetPolicy, Defer, LowerConcurrency, StretchBackoff
from processor.topology.retry import Retry
from processor.topology.slo import SLO
from processor.topology.topology import Context, HandlerSpec, Output, Topology, load_topology

__all__ = [
    "SLO",
    "BreakerConfig",
    "BreakerState",
    "BudgetPolicy",
    "ConfigError",
    "Context",
    "Defer",
    "DependencyUnavailable",
    "FatalError",
    "HandlerError",
    "HandlerSpec",
    "InvalidEvent",
    "LowerConcurrency",
    "Output",
    "ProcessorError",
    "Retry",
    "RetryableError",
    "Secret",
    "Settings",
    "StackError",
    "StretchBackoff",
    "Topology",
    "load_topology",
]
