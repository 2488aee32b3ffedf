"""`pipestate ARGS` in a process of its own with Snowflake replaced by fakesnow on files in DBPATH.

    python tests/integration/fakesnow_cli.py DBPATH [--die-at PATTERN] ARGS...

fakesnow patches the connector inside one process only, so a command-line test runs the real
`pipestate` entry point here, under `fakesnow.patch(db_path=DBPATH)` (DuckDB files, which the
next process opens again). `--die-at PATTERN`: SIGKILL this process while the first statement
whose text contains PATTERN runs (after fakesnow executed it, before it returned), so that
nothing after it, a COMMIT above all, happens: a mirror killed mid-COPY or mid-transaction.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings


def main() -> int:
    warnings.simplefilter("ignore")  # fakesnow's and DuckDB's own warnings are not under test here
    db_path, args = sys.argv[1], sys.argv[2:]
    pattern = None
    if args[:1] == ["--die-at"]:
        pattern, args = args[1], args[2:]
    import fakesnow
    import fakesnow.cursor

    if pattern is not None:
        real = fakesnow.cursor.FakeSnowflakeCursor.execute

        def execute(self, command, *rest, **kwargs):  # type: ignore[no-untyped-def]
            result = real(self, command, *rest, **kwargs)
            if pattern in str(command):
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        fakesnow.cursor.FakeSnowflakeCursor.execute = execute  # type: ignore[method-assign]

    from pipestate.cli import main as pipestate

    with fakesnow.patch(db_path=db_path):
        return pipestate(args)


if __name__ == "__main__":
    sys.exit(main())
