"""populate's reads and writes: candidate windows in chunks, their ranks, ids already held, new
windows in bulk (COPY, Arrow, executemany) and the superseding UPDATE."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Index,
    func,
    insert,
    select,
    update,
)
from sqlalchemy.engine import Connection

from ..errors import StateStoreError
from ..statuses import Status
from ..windows import read_instant
from . import bulk
from .schema import END_TIME, START_TIME

if TYPE_CHECKING:
    from .store import StateStore

# What the planner reads of each non-superseded row, in this order.
ACTIVE_COLUMNS = (
    "batch_id",
    START_TIME,
    END_TIME,
    "pipeline_status",
)

# What ranks overlapping windows: read only for the rows of an overlap.
RANK_COLUMNS = ("updated_at", "created_at", "lease_expires_at")

# A SQLite populate creating at least this many rows, more than the table holds,
# builds the secondary indexes after the inserts instead of during them.
_DEFER_INDEXES_AT = 50_000


class RowChanged(StateStoreError):
    """A row populate planned to change was changed by someone else meanwhile (a
    worker's claim, heartbeat or completion); nothing of the plan was written."""

    retryable = True


def ranks_read_apart(store: StateStore) -> bool:
    """Whether `candidate_chunks` leaves out `RANK_COLUMNS`, to be read with
    `rank_values` for the few rows that overlap. Only where a query may run
    while the scan is open: on DuckDB it would silently end the scan."""
    return store.backend.scan_allows_queries


def candidate_chunks(
    store: StateStore, conn: Connection, pipeline: str
) -> Generator[Sequence[Any], None, None]:
    """Every non-SUPERSEDED row of the pipeline, sorted by window, in chunks.

    Rows are `ACTIVE_COLUMNS` (plus `RANK_COLUMNS` unless `ranks_read_apart`)
    as the driver returns them: instants are text on SQLite, naive datetimes
    on DuckDB. The planner parses what it needs (one instant per row for a
    clean history, the rank columns only for overlapping windows), so no
    column type parses every value here.
    """
    columns = ACTIVE_COLUMNS if ranks_read_apart(store) else ACTIVE_COLUMNS + RANK_COLUMNS
    state = store.tables.state
    start = state.c.source_query_window_start_time
    end = state.c.source_query_window_end_time
    stmt = (
        select(*(store.raw_column(name) for name in columns))
        .where(state.c.pipeline_name == pipeline)
        .where(state.c.pipeline_status != Status.SUPERSEDED)
        .order_by(start, end, state.c.batch_id)
        .execution_options(yield_per=bulk.CHUNK)
    )
    return store.read_chunks(conn, stmt)


def rank_values(
    store: StateStore, conn: Connection, pipeline: str, batch_ids: Sequence[str]
) -> dict[str, tuple]:
    """`RANK_COLUMNS` of the given rows of the pipeline, raw, by batch_id."""
    state = store.tables.state
    found: dict[str, tuple] = {}
    for chunk in bulk.chunks(batch_ids, 500):
        stmt = select(state.c.batch_id, *(store.raw_column(name) for name in RANK_COLUMNS)).where(
            state.c.pipeline_name == pipeline, state.c.batch_id.in_(chunk)
        )
        found.update((row[0], tuple(row[1:])) for row in conn.execute(stmt))
    return found


def duplicate_ids(store: StateStore, conn: Connection, pipeline: str) -> dict[str, int]:
    """batch_ids of the pipeline that more than one row of the table holds
    (in any pipeline), with how many rows hold each."""
    if store.unique_ids(conn):
        return {}
    state = store.tables.state
    mine = select(state.c.batch_id).where(state.c.pipeline_name == pipeline)
    stmt = (
        select(state.c.batch_id, func.count())
        .where(state.c.batch_id.in_(mine))
        .group_by(state.c.batch_id)
        .having(func.count() > 1)
    )
    return {str(batch_id): int(count) for batch_id, count in conn.execute(stmt)}


def iter_candidates(store: StateStore, conn: Connection, pipeline: str) -> Iterator[tuple[Any, ...]]:
    """`candidate_chunks` row by row, with start and end parsed (aware UTC or None)."""
    chunks = candidate_chunks(store, conn, pipeline)
    try:
        for chunk in chunks:
            for row in chunk:
                yield (row[0], read_instant(row[1]), read_instant(row[2]), *row[3:])
    finally:
        chunks.close()


def inactive_ids(store: StateStore, conn: Connection, pipeline: str) -> set[str]:
    """batch_ids of this pipeline's SUPERSEDED rows (new ids must not reuse them)."""
    state = store.tables.state
    stmt = select(state.c.batch_id).where(
        state.c.pipeline_name == pipeline, state.c.pipeline_status == Status.SUPERSEDED
    )
    return set(conn.execute(stmt).scalars())


def has_rows(store: StateStore, conn: Connection) -> bool:
    """Whether the state table holds any row at all, of any pipeline."""
    state = store.tables.state
    return conn.execute(select(state.c.batch_id).limit(1)).first() is not None


def existing_ids(store: StateStore, conn: Connection, ids: Sequence[str]) -> set[str]:
    """Which of `ids` exist in the table already, in any pipeline."""
    state = store.tables.state
    found: set[str] = set()
    for chunk in bulk.chunks(ids, 500):
        found.update(conn.execute(select(state.c.batch_id).where(state.c.batch_id.in_(chunk))).scalars())
    return found


def insert_windows(
    store: StateStore,
    conn: Connection,
    columns: Sequence[str],
    constant: dict[str, Any],
    rows: list[tuple[Any, ...]],
    derived: dict[str, str] | None = None,
) -> int:
    """Insert new state rows: `constant` plus each tuple's values for `columns`,
    plus each `derived` column as its prefix followed by the row's batch_id
    (`columns` then starts with batch_id).

    Instants and dates in the tuples are as `instant_text` says (see
    RowBuilder). The way in is `bulk_path`: on SQLite the constants are
    rendered into the statement as literals and the derived ids computed
    by it, so sqlite3 binds only the values that change; PostgreSQL takes
    COPY, DuckDB an Arrow table; anything else SQLAlchemy's executemany,
    which batches the rows into multi-row INSERTs. All of them write in
    the caller's transaction.
    """
    derived = derived or {}
    if not rows:
        return 0
    path = store.bulk_path
    if path == "executemany":
        sql = sqlite_window_insert(store, conn, tuple(columns), constant, derived)
        conn.exec_driver_sql(sql, rows)
        return len(rows)
    if path == "arrow":
        return bulk.arrow_insert(store.tables.state, conn, tuple(columns), constant, rows, derived)
    if path == "copy":
        return bulk.copy_insert(store.tables.state, conn, tuple(columns), constant, rows, derived)
    names = tuple(columns)
    dicts = []
    for row in rows:
        values = constant | dict(zip(names, row, strict=True))
        for name, prefix in derived.items():
            values[name] = prefix + row[0]
        dicts.append(values)
    conn.execute(insert(store.tables.state), dicts)
    return len(rows)


def sqlite_window_insert(
    store: StateStore,
    conn: Connection,
    columns: tuple[str, ...],
    constant: dict[str, Any],
    derived: dict[str, str],
) -> str:
    """`bulk.sqlite_insert_sql`, built once per run (the key holds the run's constants)."""
    key = (columns, tuple(constant.items()), tuple(derived.items()))
    cached = store.insert_sql.get(key)
    if cached is None:
        cached = bulk.sqlite_insert_sql(store.tables.state, conn.dialect, columns, constant, derived)
        store.insert_sql = {key: cached}
    return cached


@contextmanager
def bulk_load(store: StateStore, conn: Connection, expected_rows: int) -> Iterator[None]:
    """Around the inserts of a populate that creates `expected_rows` rows.

    On SQLite a large load into a table that holds fewer rows drops the two
    secondary indexes and builds them again at the end (one sort instead of
    a B-tree insert per row and index), inside the same transaction: a
    failure rolls the indexes back with everything else.
    """
    defer: list[Index] = []
    if store.backend.defer_indexes and expected_rows >= _DEFER_INDEXES_AT:
        present = conn.execute(select(func.count()).select_from(store.tables.state)).scalar() or 0
        if expected_rows > present:
            defer = sorted(store.tables.state.indexes, key=lambda index: str(index.name))
    for index in defer:
        index.drop(conn)
    yield
    for index in defer:
        index.create(conn)


def release_log(store: StateStore) -> None:
    """After a large commit on SQLite: empty the write-ahead log, so later
    readers do not look pages up in a log of a gigabyte. Skipped (and left
    to SQLite's automatic checkpoints) when a reader holds it for 0.2 s."""
    if not store.backend.checkpoint_log:
        return
    with store.engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        assert raw is not None
        raw.execute("PRAGMA busy_timeout = 200")
        try:
            raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        finally:
            raw.execute(f"PRAGMA busy_timeout = {int(store.lock_timeout.total_seconds() * 1000)}")


def supersede(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    losers: Iterable[tuple[str, str, datetime | None, str, str]],
    *,
    now: datetime,
    run_id: str,
    by: str,
) -> int:
    """Mark `(batch_id, old_status, old_updated_at, superseded_by, reason)` rows SUPERSEDED.

    Each update applies only if the row is still what the plan saw: the same
    status and the same `updated_at` (every claim, heartbeat, step and
    completion moves it). Workers claim without the pipeline lock, so a row
    can change between populate's scan and this write; then RowChanged is
    raised, the caller's transaction rolls back and populate plans again.
    """
    state = store.tables.state
    changed = 0
    for batch_id, old_status, old_updated_at, winner, reason in losers:
        guard = [
            state.c.batch_id == batch_id,
            state.c.pipeline_name == pipeline,
            state.c.pipeline_status == old_status,
        ]
        if old_updated_at is not None:
            guard.append(store.instant(state.c.updated_at) == old_updated_at)
        result = conn.execute(
            update(state)
            .where(*guard)
            .values(
                pipeline_status=Status.SUPERSEDED,
                superseded_by=winner,
                superseded_at=now,
                supersede_reason=reason,
                populate_run_id=run_id,
                updated_at=now,
                updated_by=by,
            )
        )
        if result.rowcount != 1:
            raise RowChanged(f"batch {batch_id} changed after populate read it")
        changed += 1
    return changed
