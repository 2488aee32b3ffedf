"""Every exception pipestate raises, and whether trying again can help.

`retryable` is read where the decision is made (the worker):

- `True`, transient: the same call may succeed later (a lock timeout, DuckDB's
  single writer, a dropped connection, a network blip). A worker backs off and
  tries again.
- `False`, terminal: no retry can fix it (the configuration, a missing extra, the
  schema). A batch failing with one is FAILED for good at once, without spending
  its retries.
- `None`, unknown: a retry may or may not help; a failed batch is retried within
  `max_retries`, as any other exception of the caller's code is.
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ConfigError",
    "ConnectorError",
    "CountMismatch",
    "InjectedFailure",
    "LeaseLost",
    "PipestateError",
    "SchemaError",
    "StageChanged",
    "StateStoreError",
    "StoreBusyError",
    "StoreUnavailable",
    "TransientConnectorError",
    "UsageError",
    "WorkerStopped",
    "retryable",
]


class PipestateError(Exception):
    """Base of every error pipestate raises on purpose.

    `exit_code` is what the command line exits with; `retryable` says whether
    trying the same thing again later can succeed (see the module docstring).
    """

    exit_code: ClassVar[int] = 1
    retryable: ClassVar[bool | None] = None


class ConfigError(PipestateError):
    """The configuration or an argument is wrong; nothing was written."""

    exit_code = 2
    retryable = False


class UsageError(ConfigError):
    """An argument of a call (or of the command line) is wrong."""


class StateStoreError(PipestateError):
    """The state database refused or failed an operation."""

    exit_code = 3


class StoreBusyError(StateStoreError):
    """Another process holds the database (DuckDB's single writer, a lock timeout)."""

    retryable = True


class StoreUnavailable(StateStoreError):
    """The connection to the state database was lost during an operation."""

    retryable = True


class SchemaError(StateStoreError):
    """The state table is missing, lacks columns, or has a schema version we cannot use."""

    retryable = False


class LeaseLost(PipestateError):
    """The caller's claim is not the batch's current one; nothing was changed."""

    exit_code = 4
    retryable = False


class ConnectorError(PipestateError):
    """An outside system failed or returned something unusable during a step."""

    exit_code = 3


class TransientConnectorError(ConnectorError):
    """A failure that the same step may get past when retried (network, 5xx, throttling)."""

    retryable = True


class CountMismatch(ConnectorError):
    """Two steps disagree on how many records the batch has."""


class StageChanged(CountMismatch):
    """The staged data is not what the stage step recorded, and the caller asked for exactly
    that stage (`requeue --from-step target`): it is not loaded, and no retry will change it."""

    retryable = False


class InjectedFailure(ConnectorError):
    """A failure the demo injects on purpose to show retries working."""

    retryable = True


class WorkerStopped(Exception):
    """Raised inside the batch when a second stop signal asks to stop at once."""


class LeaseInDoubt(LeaseLost):
    """Raised inside the batch when no heartbeat reached the database before the
    lease ran out: another worker may hold the batch by now; nothing more is
    written for it."""


def retryable(err: BaseException) -> bool | None:
    """Whether retrying can get past `err`: its `retryable` answer (True, False or None
    for unknown). An exception that carries none is unknown, except a failed import:
    a missing optional package stays missing however often the batch is retried."""
    answer = getattr(err, "retryable", None)
    if answer is None and isinstance(err, ImportError):
        return False
    return answer if isinstance(answer, bool) else None
