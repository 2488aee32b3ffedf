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
    "TargetSchemaError",
    "TransientConnectorError",
    "UsageError",
    "WorkerStopped",
    "TRANSIENT_CODES",
    "TRANSIENT_MESSAGES",
    "retryable",
    "transient_reason",
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
    """The state database cannot be reached right now: the connection was lost or refused,
    or the server is starting up or shutting down (see TRANSIENT_CODES)."""

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


class TargetSchemaError(ConnectorError):
    """The batch's data does not fit the target's table (a type conflict, a reserved
    name, a value the column's type refuses): the same data fails the same way on
    every retry, so the batch is FAILED for good at once (`last_error_kind = terminal`)."""

    retryable = False


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


# Driver errors that mean "the database cannot be reached right now, try again": a restart,
# a failover, a refused or dropped connection. One table for every database: the error's
# code (PostgreSQL's SQLSTATE, a driver's error number, as text) -> what it means; then
# fragments of the message (lower case) for drivers that carry no code. Add rows here.
TRANSIENT_CODES: dict[str, str] = {
    "57P01": "the server is shutting down (admin_shutdown)",
    "57P02": "the server crashed (crash_shutdown)",
    "57P03": "the server is starting up or shutting down (cannot_connect_now)",
    "57P05": "the connection was idle too long (idle_session_timeout)",
    "08000": "connection exception",
    "08001": "the client could not connect",
    "08003": "the connection does not exist",
    "08004": "the server rejected the connection",
    "08006": "the connection failed",
    "53300": "too many connections",
}
TRANSIENT_MESSAGES: tuple[str, ...] = (
    "connection refused",
    "could not connect to server",
    "connection to server at",
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "server closed the connection unexpectedly",
    "terminating connection due to administrator command",
    "connection reset by peer",
    "connection timed out",
    "no route to host",
    "ssl syscall error: eof detected",
    "consuming input failed",
    # Snowflake: a full lock queue (000625), a lock timeout, a suspended or resuming warehouse.
    "000625",
    "number of waiters for this lock exceeds",
    "lock timeout",
    "lock wait timeout",
    "waiting for the lock",
    "is suspended",
    "is resuming",
    "being resumed",
)


def transient_reason(err: BaseException) -> str | None:
    """Why a driver error (or the one it wraps, SQLAlchemy's `orig`) is transient by the
    tables above, or None. Reads `sqlstate`, `pgcode` or `errno` and the message only."""
    seen: list[BaseException] = []
    current: BaseException | None = err
    while current is not None and len(seen) < 4:
        seen.append(current)
        current = getattr(current, "orig", None) or current.__cause__
    for error in seen:
        for attribute in ("sqlstate", "pgcode", "errno"):
            code = getattr(error, attribute, None)
            if code is not None and str(code) in TRANSIENT_CODES:
                return TRANSIENT_CODES[str(code)]
        message = str(error).lower()
        for fragment in TRANSIENT_MESSAGES:
            if fragment in message:
                return fragment
    return None
