"""The `pipestate` command: parse, call the library, print. One module per group of commands;
importing them here registers them on the group."""

from . import mirror, observe, operator, plan, reconcile, run, setup, workers
from .app import cli, entry, main

__all__ = [
    "cli",
    "entry",
    "main",
    "mirror",
    "observe",
    "operator",
    "plan",
    "reconcile",
    "run",
    "setup",
    "workers",
]
