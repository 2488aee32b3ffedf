"""`pipestate demo`: the whole pipeline on the embedded defaults, in one command.

Generates a few days of synthetic events as NDJSON files, writes a config
(files source, local stage directory, DuckDB target, SQLite state table), runs
it, and checks that every event reached the target exactly once. Nothing leaves
the demo directory.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from ..manager import PipelineStateManager
from ..statuses import Status
from ..windows import day_bounds, zone
from .runner import RunResult, run_pipeline

__all__ = ["DemoResult", "DemoSetup", "run_demo", "write_demo", "verify_demo"]

# With --inject-failures, how many more runs may pick up the batches that failed.
_RETRY_RUNS = 20

DEMO_TIMEZONE = "America/New_York"


@dataclass(frozen=True)
class DemoSetup:
    directory: Path
    config_path: Path
    events: int
    first_day: date
    last_day: date


def _config(directory: Path, first_day: date, end_day: date) -> str:
    absolute = directory.resolve()
    return f'''\
# Written by `pipestate demo`. Point [source], [stage] and [target] at real
# systems (see docs/connectors.md) and this same file runs production.

[pipeline]
name = "demo_events"
timezone = "{DEMO_TIMEZONE}"
granularity = "1h"
start = "{first_day.isoformat()}"
end = "{end_day.isoformat()}"

[state]
url = "sqlite:///{absolute / "state.db"}"

[concurrency]
lease = "30s"
max_retries = 10
retry_backoff = "0s"

[source]
type = "files"
path = "{absolute / "source"}"
time_field = "timestamp"

[stage]
type = "local"
url = "{absolute / "stage"}"

[target]
type = "sql"
url = "duckdb:///{absolute / "target.duckdb"}"
table = "events"
time_field = "timestamp"
'''


def write_demo(directory: Path, days: int = 3, events_per_hour: int = 120, seed: int = 7) -> DemoSetup:
    """Create (or recreate) the demo directory: events, config; returns what it made."""
    if directory.exists():
        made = ("source", "stage", "state.db", "state.db-wal", "state.db-shm", "target.duckdb")
        for name in (*made, "target.duckdb.wal", "pipestate.toml"):
            path = directory / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
    (directory / "source").mkdir(parents=True, exist_ok=True)
    tz = zone(DEMO_TIMEZONE)
    today = datetime.now(UTC).astimezone(tz).date()
    first_day, end_day = today - timedelta(days=days), today
    generator = random.Random(seed)
    count = 0
    day = first_day
    while day < end_day:
        start, end = day_bounds(day, tz)
        hours = int((end - start).total_seconds() // 3600)
        with (directory / "source" / f"events-{day.isoformat()}.ndjson").open("w", encoding="utf-8") as out:
            for _ in range(hours * events_per_hour):
                offset = generator.randrange(int((end - start).total_seconds() * 1e6))
                moment = start + timedelta(microseconds=offset)
                count += 1
                record = {
                    "id": count,
                    "timestamp": moment.isoformat().replace("+00:00", "Z"),
                    "user": f"user-{generator.randrange(500)}",
                    "action": generator.choice(["view", "click", "buy", "refund"]),
                    "amount": round(generator.uniform(1, 250), 2),
                }
                out.write(json.dumps(record) + "\n")
        day += timedelta(days=1)
    config_path = directory / "pipestate.toml"
    config_path.write_text(_config(directory, first_day, end_day), encoding="utf-8")
    return DemoSetup(directory, config_path, count, first_day, end_day - timedelta(days=1))


def verify_demo(target_url: str, table: str = "events") -> tuple[int, int]:
    """(rows, distinct event ids) in the demo's target table: equal means no duplicates."""
    import sqlalchemy as sa

    engine = sa.create_engine(target_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()
            distinct = conn.execute(sa.text(f"SELECT count(DISTINCT id) FROM {table}")).scalar_one()
    finally:
        engine.dispose()
    return int(rows), int(distinct)


@dataclass
class DemoResult:
    """What `run_demo` did: the runs, the status counts after, and the target's rows."""

    setup: DemoSetup
    run: RunResult
    counts: dict[str, int]
    rows: int
    distinct: int

    @property
    def verdict(self) -> str:
        return "exactly once" if self.rows == self.distinct == self.setup.events else "MISMATCH"


def run_demo(
    setup: DemoSetup,
    workers: int = 1,
    inject_failures: float = 0.0,
    progress: Callable[[dict[str, int]], None] | None = None,
) -> DemoResult:
    """Run the demo's pipeline until every batch is done, then count the target's rows.

    With `inject_failures` the demo's retries wait for nothing (backoff 0s), so
    it runs again, up to a bound, while any batch is FAILED or PENDING.
    """
    with PipelineStateManager(setup.config_path) as manager:
        result = run_pipeline(manager, workers=workers, inject_failures=inject_failures, progress=progress)
        if inject_failures:
            for _ in range(_RETRY_RUNS):
                counts = manager.counts()
                if not counts.get(Status.FAILED) and not counts.get(Status.PENDING):
                    break
                more = run_pipeline(
                    manager, workers=workers, inject_failures=inject_failures, progress=progress
                )
                result.summary.completed += more.summary.completed
                result.summary.failed += more.summary.failed
        counts = manager.counts()
        target_url = str(manager.config.target["url"])
    rows, distinct = verify_demo(target_url)
    return DemoResult(setup, result, counts, rows, distinct)
