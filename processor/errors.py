"""Every exception processor raises or routes on.

The tree::

    ProcessorError                  base of everything below; ``retryable`` says what the router does
    ├── ConfigError                 a bad setting, flag or topology; the CLI prints it on one line, exits 2
    ├── StackError                  the embedded broker or Redis could not be started, reached or stopped
    ├── DependencyUnavailable       a dependency (Redis, the broker) is down; the worker waits, never drops
    └── HandlerError                raised by user handlers to steer failure routing
        ├── RetryableError          retryable = True: next retry tier, then the DLQ
        └── FatalError              retryable = False: straight to the dead-letter topic
            └── InvalidEvent        undecodable, schema-invalid, oversized or id-less input

The router decides by the ``retryable`` class attribute, never by matching message text. Exceptions
that are not ``ProcessorError``s are classified by the handler's retry policy.
"""

from __future__ import annotations


class ProcessorError(Exception):
    """Base class of every processor exception."""

    retryable: bool = False


class ConfigError(ProcessorError):
    """A setting, CLI argument or topology declaration is wrong; the message says which and why."""


class StackError(ProcessorError):
    """A server of the embedded stack failed to start, answer or stop."""


class DependencyUnavailable(ProcessorError):
    """A dependency is unreachable; callers wait and retry instead of dropping work."""

    retryable = True


class HandlerError(ProcessorError):
    """Raised by handlers to tell the router what to do with the event."""


class RetryableError(HandlerError):
    """A transient failure: the event goes to the next retry tier."""

    retryable = True


class FatalError(HandlerError):
    """A permanent failure: the event goes to the dead-letter topic at once."""

    retryable = False


class InvalidEvent(FatalError):
    """The input cannot be processed at all (bad JSON, schema violation, no id, too large)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
