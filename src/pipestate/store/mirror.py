"""The source side of `pipestate mirror`: what changed since a mark, read in bulk, and digests.

On PostgreSQL the mark is commit-ordered: a mirror reads in one REPEATABLE READ snapshot, and
its mark is that snapshot (`xmin:xmax:in-progress xids`, pg_current_snapshot()). Every
transaction below the snapshot's xmin had ended when it was taken, so its rows were seen. The
next mirror reads the rows whose last writer (the row's `xmin`) is at or past that xmin: a slow
transaction that stamped an early `updated_at` but committed after the mirror was running then,
so its xid is at or past the mark's xmin and its rows are read next time, whatever their
timestamps or ids say. The rows of transactions between the xmin and the commit of the last
read are read again (an overlap the copy absorbs: the same values, events kept once by id);
a transaction left open for long anywhere in the cluster holds the xmin back and widens it.
Elsewhere (SQLite, DuckDB, Snowflake as the state table) there is no such marker: every
mirror copies the whole scope, which is exact, not incremental.

Digests: a row's canonical text (columns in name order, joined by ASCII's unit separator, NULL
as its record separator; instants as UTC microseconds; floats as rounded millionths; dates as
days since 1970-01-01; text as stored), its MD5's first 15 hex digits as a number, summed:
order-independent, one aggregate query per side.
"""

from __future__ import annotations

import hashlib
import json
import math
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa
from sqlalchemy import Date, Float, Integer, delete, func, insert, inspect, select, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError

from ..errors import StoreBusyError
from .types import UTCDateTime

if TYPE_CHECKING:
    from .store import StateStore

__all__ = [
    "MirrorSource",
    "Snapshot",
    "columns_of",
    "read_changes",
    "digest",
    "row_hashes",
    "mirror_lock",
    "record_mirror",
    "recorded_mirrors",
    "rows_behind",
]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# The row text's column separator and NULL: ASCII's unit and record separators, control
# characters pipestate never writes (a text holding them could make two rows' texts alike).
SEPARATOR = "\x1f"
NULL_MARK = "\x1e"
_XID_SPAN = 1 << 32
# Beyond this many transactions since the mark, a 32-bit xmin could wrap: read everything.
_MAX_SPAN = 1 << 31


@dataclass(frozen=True)
class Snapshot:
    """Where a mirror's read stands: `mark` is where the next one starts (None: no marks here)."""

    mark: str | None
    horizon: int | None  # PostgreSQL: the snapshot's xmax (no visible xid is at or above it)


@dataclass(frozen=True)
class MirrorSource:
    """The columns of the state table and its events table as the database has them."""

    state: list[tuple[str, str]]
    events: list[tuple[str, str]]

    def signature(self) -> str:
        text = json.dumps([self.state, self.events])
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _kind_of_type(column_type: Any) -> str:
    if isinstance(column_type, UTCDateTime):
        return "instant"
    if isinstance(column_type, Date):
        return "date"
    if isinstance(column_type, Float):
        return "float"
    if isinstance(column_type, Integer):
        return "int"
    return "text"


_PG_KINDS = {
    "timestamp with time zone": "instant",
    "timestamp without time zone": "instant",
    "integer": "int",
    "bigint": "int",
    "smallint": "int",
    "double precision": "float",
    "real": "float",
    "date": "date",
    "boolean": "bool",
}


def columns_of(store: StateStore, conn: Connection) -> MirrorSource:
    """The state and events tables' columns with their kinds; a column another tool added is
    copied too (as text when its type is not one pipestate writes)."""
    tables = store.tables
    result = []
    for table in (tables.state, tables.events):
        if store.backend.commit_order_marks:
            rows = conn.execute(
                text(
                    "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = "
                    "coalesce(:schema, current_schema()) AND table_name = :table ORDER BY ordinal_position"
                ),
                {"schema": table.schema, "table": table.name},
            ).all()
            result.append([(str(name), _PG_KINDS.get(str(kind), "text")) for name, kind in rows])
            continue
        probe = conn.exec_driver_sql(
            f"SELECT * FROM {conn.dialect.identifier_preparer.format_table(table)} WHERE 1 = 0"
        )
        present = [str(name).lower() for name in probe.keys()]  # noqa: SIM118 - the columns, not rows
        probe.close()
        known = {column.name: _kind_of_type(column.type) for column in table.columns}
        result.append([(name, known.get(name, "text")) for name in present])
    return MirrorSource(result[0], result[1])


# -- the snapshot and the changed rows ----------------------------------------------------


def begin_snapshot(store: StateStore, conn: Connection) -> Snapshot:
    """Make the transaction one snapshot (call first in it) and say where it stands."""
    if not store.backend.commit_order_marks:
        return Snapshot(None, None)
    conn.exec_driver_sql("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    taken, xmax = conn.exec_driver_sql(
        "SELECT s::text, pg_snapshot_xmax(s)::text FROM pg_current_snapshot() AS s"
    ).one()
    return Snapshot(str(taken), int(xmax))


def _parse(mark: str) -> tuple[int, int, list[int]] | None:
    """A stored mark `xmin:xmax:xip,...` (PostgreSQL's snapshot text), or None if it is not one."""
    try:
        xmin, xmax, xip = mark.split(":")
        return int(xmin), int(xmax), [int(x) for x in xip.split(",") if x]
    except ValueError:
        return None


def incremental(snapshot: Snapshot, since: str | None) -> bool:
    """Whether the rows written since the mark `since` can be told apart in `snapshot`."""
    if snapshot.mark is None or snapshot.horizon is None or since is None:
        return False
    previous = _parse(since)
    if previous is None:
        return False
    xmin, xmax, _ = previous
    # A mark ahead of the database (a restored or another database) or so far behind that a
    # 32-bit xmin could have wrapped: read everything.
    return xmax <= snapshot.horizon and snapshot.horizon - xmin < _MAX_SPAN


def _xid_condition(since: str, horizon: int) -> str:
    """The rows the snapshot `since` may not have seen: written by a transaction at or past its
    xmin. Not only those in its in-progress list: that list names top-level transactions, and
    a row written under a savepoint carries the subtransaction's xid, which it does not name.
    A row's xmin is 32 bits: it is placed below `horizon` by its distance
    d = (horizon - xmin) mod 2**32, and compared by that distance."""
    previous = _parse(since)
    assert previous is not None
    xmin = previous[0]
    distance = f"(({horizon % _XID_SPAN} - xmin::text::bigint + {_XID_SPAN}) % {_XID_SPAN})"
    return f"{distance} <= {horizon - xmin}"


def read_changes(
    store: StateStore,
    conn: Connection,
    source: MirrorSource,
    pipeline: str | None,
    snapshot: Snapshot,
    since: str | None,
) -> tuple[pa.Table, pa.Table]:
    """The state rows and events of `pipeline` (None: all) written since the mark `since` (all
    of them when not `incremental`), as Arrow tables with the kinds' types."""
    changed_since = since if since is not None and incremental(snapshot, since) else None
    out = []
    for table, columns in ((store.tables.state, source.state), (store.tables.events, source.events)):
        if store.backend.commit_order_marks and store.engine.dialect.driver == "psycopg":
            out.append(_pg_copy(conn, table, columns, pipeline, changed_since, snapshot.horizon))
        else:
            out.append(_generic_read(conn, table, columns, pipeline))
    return out[0], out[1]


def _arrow_type(kind: str) -> pa.DataType:
    return {
        "instant": pa.timestamp("us", tz="UTC"),
        "int": pa.int64(),
        "float": pa.float64(),
        "date": pa.date32(),
        "text": pa.string(),
        "bool": pa.bool_(),
    }[kind]


def _pg_copy(
    conn: Connection,
    table: Any,
    columns: Sequence[tuple[str, str]],
    pipeline: str | None,
    since: str | None,
    horizon: int | None,
) -> pa.Table:
    """PostgreSQL: COPY (SELECT ...) TO STDOUT as CSV, parsed by Arrow (columns, not dicts)."""
    import pyarrow.csv as pacsv

    preparer = conn.dialect.identifier_preparer
    selects = []
    csv_types: dict[str, pa.DataType] = {}
    for name, kind in columns:
        column = preparer.quote(name)
        if kind == "instant":
            selects.append(f"(extract(epoch FROM {column}) * 1000000)::bigint")
            csv_types[name] = pa.int64()
        elif kind == "text":
            selects.append(f"{column}::text")
            csv_types[name] = pa.string()
        else:
            selects.append(column)
            csv_types[name] = _arrow_type(kind)
    where = []
    if pipeline is not None:
        where.append(f"pipeline_name = {_pg_literal(pipeline)}")
    if since is not None and horizon is not None:
        where.append(_xid_condition(since, horizon))
    sql = f"SELECT {', '.join(selects)} FROM {preparer.format_table(table)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    raw = conn.connection.driver_connection
    assert raw is not None
    with tempfile.TemporaryFile() as spool:
        with raw.cursor() as cursor, cursor.copy(f"COPY ({sql}) TO STDOUT WITH (FORMAT csv)") as copy:
            for chunk in copy:
                spool.write(chunk)
        if spool.tell() == 0:
            return pa.table({name: pa.array([], _arrow_type(kind)) for name, kind in columns})
        spool.seek(0)
        parsed = pacsv.read_csv(
            spool,
            read_options=pacsv.ReadOptions(column_names=[name for name, _ in columns], block_size=1 << 24),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(
                column_types=csv_types,
                null_values=[""],
                strings_can_be_null=True,
                quoted_strings_can_be_null=False,
                true_values=["t"],
                false_values=["f"],
            ),
        )
    arrays = []
    for name, kind in columns:
        array = parsed.column(name)
        if kind == "instant":
            array = array.cast(pa.timestamp("us", tz="UTC"))
        arrays.append(array)
    return pa.Table.from_arrays(arrays, names=[name for name, _ in columns])


def _pg_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _generic_read(
    conn: Connection, table: Any, columns: Sequence[tuple[str, str]], pipeline: str | None
) -> pa.Table:
    """Any other database: the rows through SQLAlchemy's types, a chunk at a time."""
    values: dict[str, list[Any]] = {name: [] for name, _ in columns}
    for chunk in _chunks(conn, table, columns, pipeline):
        for row in chunk:
            for (name, kind), value in zip(columns, row, strict=True):
                values[name].append(_python_value(kind, value))
    return pa.Table.from_arrays(
        [pa.array(values[name], _arrow_type(kind)) for name, kind in columns],
        names=[name for name, _ in columns],
    )


def _chunks(
    conn: Connection, table: Any, columns: Sequence[tuple[str, str]], pipeline: str | None
) -> Iterator[Sequence[Any]]:
    known = {column.name: column for column in table.columns}
    picked = [
        known[name] if name in known else text(conn.dialect.identifier_preparer.quote(name))
        for name, _ in columns
    ]
    stmt = select(*picked).select_from(table)
    if pipeline is not None:
        stmt = stmt.where(table.c.pipeline_name == pipeline)
    result = conn.execution_options(stream_results=True).execute(stmt)
    while chunk := result.fetchmany(10_000):
        yield chunk


def _python_value(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "instant":
        if isinstance(value, str):
            value = datetime.fromisoformat(value)
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if kind == "date" and isinstance(value, str):
        return date.fromisoformat(value)
    if kind == "text" and not isinstance(value, str):
        return json.dumps(value) if isinstance(value, dict | list) else str(value)
    if kind == "int":
        return int(value)
    if kind == "float":
        return float(value)
    return value


# -- digests -----------------------------------------------------------------------------


def _pg_canonical(conn: Connection, name: str, kind: str) -> str:
    column = conn.dialect.identifier_preparer.quote(name)
    value = {
        "instant": f"(extract(epoch FROM {column}) * 1000000)::bigint::text",
        "int": f"{column}::text",
        "float": f"floor({column} * 1000000 + 0.5)::bigint::text",
        "date": f"({column} - DATE '1970-01-01')::text",
        "text": f"{column}::text",
        "bool": f"CASE WHEN {column} THEN '1' ELSE '0' END",
    }[kind]
    return f"coalesce({value}, chr(30))"


def canonical_text(columns: Sequence[tuple[str, str]], row: Sequence[Any]) -> str:
    """A row's canonical text, in Python (for databases without MD5 in SQL)."""
    pieces = []
    for (_, kind), value in sorted(zip(columns, row, strict=True), key=lambda pair: pair[0]):
        if value is None:
            pieces.append(NULL_MARK)
            continue
        value = _python_value(kind, value)
        if kind == "instant":
            delta = value - _EPOCH
            piece = str((delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds)
        elif kind == "float":
            piece = str(math.floor(value * 1_000_000 + 0.5))
        elif kind == "date":
            piece = str((value - date(1970, 1, 1)).days)
        elif kind == "bool":
            piece = "1" if value else "0"
        else:
            piece = str(value)
        pieces.append(piece)
    return SEPARATOR.join(pieces)


def hash60(row_text: str) -> int:
    return int(hashlib.md5(row_text.encode()).hexdigest()[:15], 16)


def digest(
    store: StateStore, conn: Connection, table: Any, columns: Sequence[tuple[str, str]], pipeline: str | None
) -> tuple[int, int]:
    """(rows, sum of the rows' 60-bit hashes) of `table` in scope: one aggregate query on
    PostgreSQL, one pass over the rows elsewhere."""
    if store.backend.commit_order_marks:
        row_text = " || chr(31) || ".join(_pg_canonical(conn, name, kind) for name, kind in sorted(columns))
        where = "" if pipeline is None else " WHERE pipeline_name = :pipeline"
        count, total = conn.execute(
            text(
                "SELECT count(*), coalesce(sum(('x' || "
                f"substr(md5({row_text}), 1, 15))::bit(60)::bigint), 0) "
                f"FROM {conn.dialect.identifier_preparer.format_table(table)}{where}"
            ),
            {} if pipeline is None else {"pipeline": pipeline},
        ).one()
        return int(count), int(total)
    count = total = 0
    for chunk in _chunks(conn, table, columns, pipeline):
        for row in chunk:
            count += 1
            total += hash60(canonical_text(columns, row))
    return count, total


def row_hashes(
    store: StateStore,
    conn: Connection,
    table: Any,
    key: str,
    columns: Sequence[tuple[str, str]],
    pipeline: str | None,
) -> dict[str, int]:
    """Each row's key and hash: the finer comparison once the digests differ."""
    names = [name for name, _ in columns]
    index = names.index(key)
    found = {}
    for chunk in _chunks(conn, table, columns, pipeline):
        for row in chunk:
            found[str(row[index])] = hash60(canonical_text(columns, row))
    return found


# -- the lock and the record -------------------------------------------------------------


@contextmanager
def mirror_lock(store: StateStore) -> Iterator[None]:
    """One mirror of this state table at a time: a PostgreSQL advisory lock held by a session
    of its own for the mirror's length; a second mirror waits up to the lock timeout, then
    StoreBusyError. Elsewhere nothing here: the mark's compare-and-set keeps mirrors apart."""
    if not store.backend.commit_order_marks:
        yield
        return
    key = f"pipestate mirror {store.tables.state.fullname}"
    try:
        conn = store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
    except DBAPIError as err:
        raise store.translate(err) from err
    with conn:
        try:
            conn.execute(text("SELECT pg_advisory_lock(hashtext(:key))"), {"key": key})
        except DBAPIError as err:
            translated = store.translate(err)
            if isinstance(translated, StoreBusyError):
                raise StoreBusyError(
                    f"another mirror of {store.tables.state.name} is running; waited "
                    f"{int(store.lock_timeout.total_seconds())}s ([concurrency] lock_timeout)"
                ) from err
            raise translated from err
        try:
            yield
        finally:
            conn.execute(text("SELECT pg_advisory_unlock(hashtext(:key))"), {"key": key})


def record_mirror(store: StateStore, scope: str, details: dict[str, Any]) -> None:
    """Note the mirror's mark and time in the meta table (row `mirror:<scope>`), for metrics:
    the mark itself lives in Snowflake beside the copy; this is a reading aid."""
    meta = store.tables.meta
    name = f"mirror:{scope}"
    with store.transaction(write=True) as conn:
        now = store.now(conn)
        conn.execute(delete(meta).where(meta.c.name == name))
        conn.execute(
            insert(meta).values(name=name, value=json.dumps(details, sort_keys=True), updated_at=now)
        )


def recorded_mirrors(store: StateStore, conn: Connection) -> dict[str, dict[str, Any]]:
    """scope -> what `record_mirror` noted (with `at`, the meta row's time)."""
    meta = store.tables.meta
    if not inspect(conn).has_table(meta.name, schema=meta.schema):
        return {}  # another tool's table before init-db: no meta table, so no mirror either
    rows = conn.execute(
        select(meta.c.name, meta.c.value, meta.c.updated_at).where(meta.c.name.like("mirror:%"))
    )
    found = {}
    for name, value, updated_at in rows:
        try:
            details = json.loads(value or "{}")
        except ValueError:
            continue
        details["at"] = updated_at
        found[str(name)[len("mirror:") :]] = details
    return found


def rows_behind(
    store: StateStore, conn: Connection, pipeline: str | None, mark: str | None, since: datetime
) -> int:
    """State rows of the scope written since the mirror: by commit order on PostgreSQL (those
    above the mark, which includes the few read twice), else by `updated_at` after it."""
    state = store.tables.state
    if store.backend.commit_order_marks and mark is not None:
        horizon = int(
            conn.exec_driver_sql("SELECT pg_snapshot_xmax(pg_current_snapshot())::text").scalar_one()
        )
        where = [] if pipeline is None else [f"pipeline_name = {_pg_literal(pipeline)}"]
        if incremental(Snapshot(mark, horizon), mark):
            where.append(_xid_condition(mark, horizon))
        sql = f"SELECT count(*) FROM {conn.dialect.identifier_preparer.format_table(state)}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        return int(conn.execute(text(sql)).scalar_one())
    stmt = select(func.count()).select_from(state).where(state.c.updated_at > since)
    if pipeline is not None:
        stmt = stmt.where(state.c.pipeline_name == pipeline)
    return int(conn.execute(stmt).scalar_one())
