"""Helpers for the end-to-end run tests, importable by spawned worker processes.

`SlowFilesSource` is the files source with a pause per batch (so a test can
kill a worker mid-batch) and a log of every extract (so a test can see that a
retried batch did not extract again).
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import sqlalchemy as sa

from pipestate.connectors.files import FilesOptions, FilesSource
from pipestate.connectors.protocols import BatchContext

# `[concurrency] claim_batch` of the configs `config` writes: the run tests set it to run
# every exactly-once test for single windows and for runs of windows.
CLAIM_BATCH = 1


class SlowOptions(FilesOptions):
    type: Literal["files", "run_support:SlowFilesSource"] = "files"  # type: ignore[assignment]
    delay: float = 0.0
    extract_log: str | None = None


class SlowFilesSource(FilesSource):
    Options = SlowOptions

    def __init__(self, options: SlowOptions) -> None:
        super().__init__(options)
        self.delay = options.delay
        self.extract_log = options.extract_log

    def extract(self, batch: BatchContext) -> Iterator[dict[str, Any]]:
        if self.extract_log:
            with open(self.extract_log, "a", encoding="utf-8") as log:
                log.write(f"{batch.batch_id} {os.getpid()}\n")
        if self.delay:
            time.sleep(self.delay)
        yield from super().extract(batch)


def write_events(directory: Path, start: datetime, hours: int, per_hour: int, seed: int = 1) -> int:
    """NDJSON events spread over `hours` from `start`, some exactly on hour boundaries."""
    directory.mkdir(parents=True, exist_ok=True)
    generator = random.Random(seed)
    count = 0
    with (directory / "events.ndjson").open("w", encoding="utf-8") as out:
        for hour in range(hours):
            base = start + timedelta(hours=hour)
            moments = [base] + [
                base + timedelta(microseconds=generator.randrange(3_600_000_000)) for _ in range(per_hour - 1)
            ]
            for moment in moments:
                count += 1
                out.write(json.dumps({"id": count, "timestamp": moment.isoformat()}) + "\n")
    return count


def config(
    tmp: Path, start: str, end: str, *, target_url: str, table: str = "events", **source: Any
) -> dict[str, Any]:
    return {
        "pipeline": {"name": "events", "timezone": "UTC", "granularity": "1h", "start": start, "end": end},
        "state": {"url": f"sqlite:///{tmp / 'state.db'}"},
        "concurrency": {"lease": "3s", "max_retries": 10, "retry_backoff": "0s", "claim_batch": CLAIM_BATCH},
        "source": {"type": "files", "path": str(tmp / "source"), "time_field": "timestamp", **source},
        "stage": {"type": "local", "url": str(tmp / "stage")},
        "target": {"type": "sql", "url": target_url, "table": table, "time_field": "timestamp"},
    }


def target_rows(
    target_url: str, state_url: str, table: str = "events"
) -> list[tuple[int, str, datetime, datetime, datetime]]:
    """(event id, batch id, event time, window start, window end) for every target row."""
    rows = []
    target = sa.create_engine(target_url)
    with target.connect() as conn:
        loaded = conn.execute(sa.text(f'SELECT pipestate_batch_id, id, "timestamp" FROM "{table}"')).all()
    target.dispose()
    state = sa.create_engine(state_url)
    with state.connect() as conn:
        windows = {
            batch_id: (_utc(start), _utc(end))
            for batch_id, start, end in conn.execute(
                sa.text(
                    "SELECT batch_id, source_query_window_start_time, source_query_window_end_time "
                    "FROM pipeline_state"
                )
            )
        }
    state.dispose()
    for batch_id, event_id, moment in loaded:
        start, end = windows[batch_id]
        rows.append((event_id, batch_id, _utc(moment), start, end))
    return rows


def _utc(value: Any) -> datetime:
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


class NoteOptions(FilesOptions):
    type: Literal["files", "run_support:NoteFilesSource"] = "files"  # type: ignore[assignment]
    odd_hour: int = 3


class NoteFilesSource(FilesSource):
    """The files source plus one record per window with a `note` field: text, except in the
    window starting at `odd_hour`, where it is a number (a type conflict in the target)."""

    Options = NoteOptions

    def extract(self, batch: BatchContext) -> Iterator[Any]:
        yield from super().extract(batch)
        odd = batch.start.hour == self.options.odd_hour  # type: ignore[attr-defined]
        yield {"id": -batch.start.hour - 1, "timestamp": batch.start, "note": 7 if odd else "x"}
