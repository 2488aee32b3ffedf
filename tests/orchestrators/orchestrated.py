"""A small real pipeline for the orchestrator tests: NDJSON events -> local stage -> SQLite target."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy as sa

EVENTS_PER_HOUR = 4
FIRST_DAY = datetime(2026, 1, 1, tzinfo=UTC)

CONFIG = """\
[pipeline]
name = "orders"
timezone = "{timezone}"
granularity = "1h"
start = "2026-01-01"
end = "{end}"

[state]
url = "sqlite:///{folder}/state.db"

[concurrency]
retry_backoff = "0s"
max_retries = 1

[source]
type = "files"
path = "{folder}/source"
time_field = "timestamp"

[stage]
type = "local"
url = "{folder}/stage"

[target]
type = "sql"
url = "sqlite:///{folder}/target.db"
table = "events"
time_field = "timestamp"
"""


def write_pipeline(folder: Path, days: int = 2, timezone: str = "UTC", broken: bool = False) -> Path:
    """Events every 15 minutes over `days` local days from 2026-01-01, and their config.

    `broken` adds a line that is not JSON, so that every batch fails to extract.
    """
    source = folder / "source"
    source.mkdir(parents=True)
    with (source / "events.ndjson").open("w", encoding="utf-8") as out:
        # UTC-based hours cover every local day of zones within +-12 h of UTC.
        start = FIRST_DAY - timedelta(hours=12)
        for index in range((days * 24 + 24) * EVENTS_PER_HOUR):
            moment = start + timedelta(minutes=60 // EVENTS_PER_HOUR * index)
            out.write(json.dumps({"id": index, "timestamp": moment.isoformat()}) + "\n")
        if broken:
            out.write("this line is not JSON\n")
    end = (FIRST_DAY + timedelta(days=days)).date().isoformat()
    config = folder / "pipestate.toml"
    config.write_text(CONFIG.format(timezone=timezone, end=end, folder=folder), encoding="utf-8")
    return config


def statuses(config: Path) -> dict[str, int]:
    """The pipeline's rows by status."""
    engine = sa.create_engine(f"sqlite:///{config.parent / 'state.db'}")
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT pipeline_status, COUNT(*) FROM pipeline_state GROUP BY pipeline_status")
        ).all()
    engine.dispose()
    return {str(status): int(count) for status, count in rows}


def target_count(config: Path, where: str = "1 = 1") -> int:
    engine = sa.create_engine(f"sqlite:///{config.parent / 'target.db'}")
    with engine.connect() as conn:
        count = int(conn.execute(sa.text(f"SELECT COUNT(*) FROM events WHERE {where}")).scalar_one())
    engine.dispose()
    return count
