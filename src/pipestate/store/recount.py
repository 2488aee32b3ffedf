"""The state table's side of `reconcile`: the windows whose target rows are recounted."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection

from ..statuses import Status
from .schema import END_TIME, START_TIME
from .store import StateStore

__all__ = ["batches_by_id", "windows_to_reconcile"]


def windows_to_reconcile(
    store: StateStore, conn: Connection, pipeline: str, start: datetime | None, end: datetime | None
) -> Sequence[Any]:
    """(batch_id, status, start, end, source_record_count, target_record_count) of the
    pipeline's active windows that start in [start, end), oldest first."""
    c = store.tables.state.c
    stmt = select(
        c.batch_id,
        c.pipeline_status,
        c[START_TIME],
        c[END_TIME],
        c.source_record_count,
        c.target_record_count,
    ).where(c.pipeline_name == pipeline, c.pipeline_status != Status.SUPERSEDED, c[END_TIME] > c[START_TIME])
    if start is not None:
        stmt = stmt.where(c[START_TIME] >= start)
    if end is not None:
        stmt = stmt.where(c[START_TIME] < end)
    return conn.execute(stmt.order_by(c[START_TIME])).all()


def batches_by_id(
    store: StateStore, conn: Connection, pipeline: str, batch_ids: Sequence[str]
) -> dict[str, Any]:
    """(batch_id, status, start, end) of those of these ids the pipeline holds (any status)."""
    c = store.tables.state.c
    found: dict[str, Any] = {}
    for low in range(0, len(batch_ids), 500):
        stmt = select(c.batch_id, c.pipeline_status, c[START_TIME], c[END_TIME]).where(
            c.pipeline_name == pipeline, c.batch_id.in_(list(batch_ids[low : low + 500]))
        )
        found.update((row.batch_id, row) for row in conn.execute(stmt))
    return found
