"""The audit table `<table>_events`: events appended in bulk, and the CREATED events of a populate."""

from __future__ import annotations

import json
from collections.abc import Iterable
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    String,
    Table,
    insert,
    literal,
    select,
)
from sqlalchemy.engine import Connection

from ..statuses import Status
from . import bulk

if TYPE_CHECKING:
    from .store import StateStore


def _driver_params(
    conn: Connection, table: Table, keys: tuple[str, ...], chunk: list[dict[str, Any]]
) -> tuple[str, list[Any]]:
    """The compiled INSERT for `keys` and the chunk's rows as driver parameters.

    Raises KeyError when a row lacks one of `keys` (the caller falls back).
    """
    sql, positional, order, getter, processors = _compiled_insert(table, keys, conn.dialect)
    # Timestamps repeat from row to row (a window's start is the previous end,
    # created_at/updated_at are one `now`): convert each distinct value once,
    # sharing one memo among the columns of one type.
    shared: dict[type, dict[Any, Any]] = {}
    memos: list[dict[Any, Any]] = [shared.setdefault(kind, {}) for _, _, kind in processors]
    values: list[Any] = []
    for row in chunk:
        picked = getter(row)
        row_values = list(picked) if len(order) > 1 else [picked]
        for (index, processor, _), memo in zip(processors, memos, strict=True):
            value = row_values[index]
            try:
                row_values[index] = memo[value]
            except KeyError:
                row_values[index] = memo[value] = processor(value)
            except TypeError:  # unhashable (a dict for a JSON column): no memo
                row_values[index] = processor(value)
        values.append(row_values)
    if positional:
        params: list[Any] = [tuple(row_values) for row_values in values]
    else:
        params = [dict(zip(order, row_values, strict=True)) for row_values in values]
    return sql, params


def _compiled_insert(
    table: Table, keys: tuple[str, ...], dialect: Any
) -> tuple[str, bool, list[str], Any, list[Any]]:
    """The INSERT for `keys`, compiled once: the runner writes one audit event per step, and
    compiling the statement again each time was a third of the cost of writing it."""
    compiled = insert(table).compile(dialect=dialect, column_keys=list(keys), for_executemany=True)
    order = list(compiled.positiontup) if compiled.positional and compiled.positiontup else list(keys)
    processors = [
        (index, processor, type(table.c[name].type))
        for index, name in enumerate(order)
        if (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
    ]
    return compiled.string, bool(compiled.positional), order, itemgetter(*order), processors


def _details_json(details: Any, encoded: dict[Any, str]) -> str:
    """`details` as sorted-key JSON, memoized for flat dicts of hashable values."""
    try:
        key = tuple(sorted(details.items())) if isinstance(details, dict) else None
        if key is not None and key in encoded:
            return encoded[key]
    except TypeError:  # unhashable or unorderable values
        key = None
    text = json.dumps(details, default=str, sort_keys=True)
    if key is not None and len(encoded) < 1024:
        encoded[key] = text
    return text


def insert_created_events(store: StateStore, conn: Connection, pipeline: str, run_id: str, actor: str) -> int:
    """One CREATED event per row that populate run `run_id` inserted, in one
    INSERT ... SELECT (details: the same JSON text insert_events writes)."""
    state, events = store.tables.state, store.tables.events
    details = (
        literal('{"record_origin": "', String())
        + state.c.record_origin
        + literal(f'", "run_id": "{run_id}"}}', String())
    )
    rows = (
        select(
            state.c.batch_id,
            state.c.pipeline_name,
            literal("CREATED", String()),
            literal(actor, String()),
            state.c.created_at,
            literal(Status.PENDING.value, String()),
            details,
        )
        .where(
            state.c.pipeline_name == pipeline,
            state.c.populate_run_id == run_id,
            state.c.pipeline_status == Status.PENDING,
        )
        .order_by(state.c.source_query_window_start_time)
    )
    columns = [
        "batch_id",
        "pipeline_name",
        "event_type",
        "worker_id",
        "event_time",
        "new_status",
        "details",
    ]
    result = conn.execute(insert(events).from_select(columns, rows))
    return int(result.rowcount or 0)


def insert_events(store: StateStore, conn: Connection, events: Iterable[dict[str, Any]]) -> int:
    count = 0
    encoded: dict[Any, str] = {}  # populate's CREATED events share their details
    for chunk in bulk.chunks(events):
        for event in chunk:
            details = event.get("details")
            if details is not None and not isinstance(details, str):
                event["details"] = _details_json(details, encoded)
        count += bulk_insert(store, conn, store.tables.events, chunk)
    return count


def bulk_insert(store: StateStore, conn: Connection, table: Table, rows: Iterable[dict[str, Any]]) -> int:
    # On SQLite, SQLAlchemy's executemany spends ~50 us per 65-column row
    # building and type-processing parameters; here the INSERT is compiled once
    # per chunk, each column's bind processor (the same one SQLAlchemy would
    # apply) is run directly, and sqlite3 gets plain tuples. Other databases
    # keep SQLAlchemy's path: its "insertmanyvalues" batching into multi-row
    # INSERTs is what makes PostgreSQL and DuckDB fast (their drivers'
    # executemany is 5x and 20x slower). Rows with differing keys fall back too.
    count = 0
    for chunk in bulk.chunks(rows):
        keys = tuple(chunk[0])
        if not store.backend.driver_executemany:
            conn.execute(insert(table), chunk)
            count += len(chunk)
            continue
        try:
            # Same length and every key present: the same columns in every row.
            if not all(len(row) == len(keys) for row in chunk):
                raise KeyError(keys)
            sql, params = _driver_params(conn, table, keys, chunk)
        except KeyError:
            conn.execute(insert(table), chunk)
        else:
            conn.exec_driver_sql(sql, params)
        count += len(chunk)
    return count
