"""processor: a Kafka stream processor with SRE built in.

Write a topology module with ``Topology`` and ``@topology.handler``; run it with ``processor worker``.
"""

from processor.breaker import BreakerConfig, BreakerState
from processor.config import Secret, Settings, SimulationSettings
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
from processor.retry import Retry
from processor.simulate import DownstreamError, SimulatedService, set_outage
from processor.slo import SLO
from processor.topology import Context, HandlerSpec, Output, Topology, load_topology

__all__ = [
    "SLO",
    "BreakerConfig",
    "BreakerState",
    "ConfigError",
    "Context",
    "DependencyUnavailable",
    "DownstreamError",
    "FatalError",
    "HandlerError",
    "HandlerSpec",
    "InvalidEvent",
    "Output",
    "ProcessorError",
    "Retry",
    "RetryableError",
    "Secret",
    "Settings",
    "SimulatedService",
    "SimulationSettings",
    "StackError",
    "Topology",
    "load_topology",
    "set_outage",
]
