"""`python -m pipestate`: the same as the `pipestate` command."""

from .cli import entry

entry()
