"""PostgreSQL's own time for the statements of an observing command or a dry run.

    python bench/pg_server.py CONFIG.toml status|dry-run|metrics|report

Runs the command's library call once, records every SELECT it sent, then runs
each again under EXPLAIN (ANALYZE) and prints the server's execution time of
each and their sum: the database's share beside the client's CPU time that
bench/observe.py reports.
"""

from __future__ import annotations

import json
import sys

from sqlalchemy import event


def main() -> None:
    from pipestate.manager import PipelineStateManager

    config, what = sys.argv[1], sys.argv[2]
    manager = PipelineStateManager(config)
    engine = manager.store.engine
    sent: list[tuple[str, object]] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # noqa: ANN001, ARG001
        if statement.lstrip().upper().startswith(("SELECT", "WITH")):
            sent.append((statement, parameters))

    event.listen(engine, "before_cursor_execute", record)
    calls = {
        "status": manager.status_and_calendar,
        "dry-run": lambda: manager.populate_pipeline_batches(dry_run=True),
        "metrics": manager.alert_data,
        "report": lambda: (manager.validate(), manager.report_data()),
    }
    calls[what]()
    event.remove(engine, "before_cursor_execute", record)
    total = 0.0
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        for statement, parameters in sent:
            with raw.cursor() as cursor:
                cursor.execute("EXPLAIN (ANALYZE, TIMING OFF, FORMAT JSON) " + statement, parameters)
                plan = cursor.fetchone()[0]
            ms = float((plan[0] if isinstance(plan, list) else json.loads(plan)[0])["Execution Time"])
            total += ms
            print(f"{ms:9.1f} ms  {' '.join(statement.split())[:110]}")
        raw.rollback()
    print(f"{total:9.1f} ms  server execution time of {len(sent)} statements ({what})")
    manager.close()


if __name__ == "__main__":
    main()
