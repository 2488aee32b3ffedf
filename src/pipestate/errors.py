"""The exception root of pipestate and what each failure means for the caller."""

from __future__ import annotations


class PipestateError(Exception):
    """Base of every error pipestate raises on purpose.

    `exit_code` is what the command line exits with; `retryable` says whether
    trying the same thing again later can succeed (a lock, a network blip).
    """

    exit_code = 1
    retryable = False


class ConfigError(PipestateError):
    """The configuration or a command-line argument is wrong; nothing was written."""

    exit_code = 2


class UsageError(ConfigError):
    """A command-line argument is wrong."""


class StateStoreError(PipestateError):
    """The state database refused or failed an operation."""

    exit_code = 3


class StoreBusyError(StateStoreError):
    """Another process holds the database (DuckDB's single writer, a lock timeout)."""

    retryable = True


class SchemaError(StateStoreError):
    """The state table is missing columns or has a schema version we cannot use."""


class BatchNotFound(PipestateError):
    """No batch with that id exists for this pipeline."""

    exit_code = 3


class LeaseLost(PipestateError):
    """The caller's claim is not the batch's current one; nothing was changed."""

    exit_code = 4
