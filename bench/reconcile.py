"""How long `reconcile` takes for N COMPLETED windows on SQLite (state table and target).

    python bench/reconcile.py                    # 10,000 hourly windows, 10 rows each
    python bench/reconcile.py --windows 50000 --rows 4 --repeat 5

Builds the state table with populate, marks every window COMPLETED with its target count,
writes the target table in bulk (as the sql target lays it out), then times
`PipelineStateManager.reconcile()`: one read of the state table and one grouped query on
the target. Prints the median of `--repeat` rounds; the goal is <= 2 s for 10,000 windows.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

from pipestate.config import Config
from pipestate.manager import PipelineStateManager


def build(folder: Path, windows: int, rows: int) -> Config:
    start = datetime(2020, 1, 1, tzinfo=UTC)  # all of it over, for any --windows up to ~50,000
    end = start + timedelta(hours=windows)
    target_url = f"sqlite:///{folder / 'target.db'}"
    config = Config.from_dict(
        {
            "pipeline": {
                "name": "bench",
                "granularity": "1h",
                "start": start.isoformat(),
                "end": end.isoformat(),
            },
            "state": {"url": f"sqlite:///{folder / 'state.db'}"},
            "source": {"type": "files", "path": str(folder)},
            "target": {"type": "sql", "url": target_url, "table": "events", "time_field": "timestamp"},
        }
    )
    with PipelineStateManager(config) as manager:
        manager.populate_pipeline_batches()
        state = manager.store.tables.state
        with manager.store.engine.begin() as conn:
            conn.execute(sa.update(state).values(pipeline_status="COMPLETED", target_record_count=rows))
            ids = conn.execute(
                sa.select(state.c.batch_id).order_by(state.c.source_query_window_start_time)
            ).all()
    target = sa.create_engine(target_url)
    with target.begin() as conn:
        conn.exec_driver_sql(
            "CREATE TABLE events (pipestate_batch_id VARCHAR(255) NOT NULL, "
            'pipestate_loaded_at DATETIME NOT NULL, "timestamp" DATETIME, id INTEGER)'
        )
        conn.exec_driver_sql('CREATE INDEX ix_events_batch ON events ("pipestate_batch_id")')
        loaded = "2026-06-01 00:00:00.000000"
        values = []
        for hour, (batch_id,) in enumerate(ids):
            for n in range(rows):
                moment = start + timedelta(hours=hour, minutes=n)
                text = moment.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
                values.append((batch_id, loaded, text, hour * rows + n))
        conn.exec_driver_sql("INSERT INTO events VALUES (?, ?, ?, ?)", values)
    target.dispose()
    return config


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--windows", type=int, default=10_000)
    parser.add_argument("--rows", type=int, default=10, help="target rows per window")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        config = build(Path(folder), args.windows, args.rows)
        seconds = []
        with PipelineStateManager(config) as manager:
            for _ in range(args.repeat):
                began = time.perf_counter()
                report = manager.reconcile()
                seconds.append(time.perf_counter() - began)
                if not report.ok or report.completed != args.windows:
                    print(f"unexpected: {report.to_dict()['counts']}", file=sys.stderr)
                    return 1
    median = statistics.median(seconds)
    print(
        f"reconcile: {args.windows:,} COMPLETED windows, {args.windows * args.rows:,} target rows on SQLite: "
        f"median {median:.3f} s of {args.repeat} ({', '.join(f'{s:.3f}' for s in seconds)})"
    )
    return 0 if median <= 2.0 or args.windows > 10_000 else 1


if __name__ == "__main__":
    sys.exit(main())
